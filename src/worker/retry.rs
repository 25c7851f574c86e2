//! The retry policy: what is retried, how long to wait, and when to give up. The error
//! class comes from [`crate::partner_center::client`]; this is the one place that acts
//! on it. Delays grow exponentially (backon) with full jitter; a server's Retry-After is
//! a floor. Each event has a budget of attempts per call and of total time.

use crate::config::WorkerConfig;
use crate::partner_center::client::{ErrorClass, FetchError};
use crate::shutdown::CancellationToken;
use backon::{BackoffBuilder, ExponentialBuilder};
use std::{
    future::Future,
    time::{Duration, Instant},
};

/// Why a call was given up.
#[derive(Debug, Clone)]
pub enum GiveUp {
    /// Retrying cannot help (4xx, unusable answer, missing credentials).
    Permanent(FetchError),
    /// Transient failures outlasted the attempts or the event's time budget.
    Exhausted(FetchError),
    /// Shutting down: the event is left unacknowledged and will be delivered again.
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub max_elapsed: Duration,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    pub fn from_config(w: &WorkerConfig) -> Self {
        Self {
            max_attempts: w.max_attempts,
            max_elapsed: Duration::from_millis(w.max_retry_ms),
            min_delay: Duration::from_millis(w.retry_min_delay_ms),
            max_delay: Duration::from_millis(w.retry_max_delay_ms),
        }
    }

    /// Runs `call` until it succeeds, fails permanently, or the budget runs out.
    /// `deadline` is the event's (shared by all its calls). `on_retry` sees each retry.
    /// Returns the result and the number of attempts made.
    pub async fn run<T, F, Fut>(
        &self,
        deadline: Instant,
        cancel: &CancellationToken,
        mut on_retry: impl FnMut(&FetchError, Duration),
        mut call: F,
    ) -> (Result<T, GiveUp>, u32)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, FetchError>>,
    {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .without_max_times()
            .build();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match call().await {
                Ok(v) => return (Ok(v), attempts),
                Err(e) => e,
            };
            let retry_after = match error.class {
                ErrorClass::Permanent => return (Err(GiveUp::Permanent(error)), attempts),
                ErrorClass::Transient { retry_after } => retry_after,
            };
            if attempts >= self.max_attempts {
                return (Err(GiveUp::Exhausted(error)), attempts);
            }
            let backoff = delays.next().unwrap_or(self.max_delay);
            let delay = full_jitter(backoff).max(retry_after.unwrap_or(Duration::ZERO));
            if Instant::now() + delay > deadline {
                return (Err(GiveUp::Exhausted(error)), attempts);
            }
            on_retry(&error, delay);
            tokio::select! {
                biased;
                () = cancel.cancelled() => return (Err(GiveUp::Cancelled), attempts),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// A uniformly random delay in `[0, d]` ("full jitter").
fn full_jitter(d: Duration) -> Duration {
    d.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            max_elapsed: Duration::from_secs(60),
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
        }
    }

    fn transient(retry_after: Option<Duration>) -> FetchError {
        FetchError { class: ErrorClass::Transient { retry_after }, status: Some(503), message: "busy".into() }
    }

    #[tokio::test]
    async fn retries_transient_until_success() {
        let calls = AtomicU32::new(0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let (r, attempts) = policy(5)
            .run(
                deadline,
                &CancellationToken::new(),
                |_, _| {},
                || async { if calls.fetch_add(1, Ordering::SeqCst) < 2 { Err(transient(None)) } else { Ok(7) } },
            )
            .await;
        assert_eq!((r.ok(), attempts), (Some(7), 3));
    }

    #[tokio::test]
    async fn permanent_is_not_retried_and_attempts_are_bounded() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let permanent = FetchError { class: ErrorClass::Permanent, status: Some(403), message: "no".into() };
        let (r, attempts) = policy(5)
            .run(deadline, &CancellationToken::new(), |_, _| {}, || async { Err::<(), _>(permanent.clone()) })
            .await;
        assert!(matches!(r, Err(GiveUp::Permanent(_))) && attempts == 1);
        let (r, attempts) = policy(4)
            .run(deadline, &CancellationToken::new(), |_, _| {}, || async { Err::<(), _>(transient(None)) })
            .await;
        assert!(matches!(r, Err(GiveUp::Exhausted(_))) && attempts == 4);
    }

    #[tokio::test]
    async fn retry_after_is_a_floor_and_the_deadline_a_ceiling() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut waits = Vec::new();
        let calls = AtomicU32::new(0);
        let (_, _) = policy(3)
            .run(
                deadline,
                &CancellationToken::new(),
                |_, d| waits.push(d),
                || async {
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        Err(transient(Some(Duration::from_millis(50))))
                    } else {
                        Ok(())
                    }
                },
            )
            .await;
        assert!(waits[0] >= Duration::from_millis(50), "{waits:?}");
        let soon = Instant::now() + Duration::from_millis(10);
        let (r, attempts) = policy(10)
            .run(
                soon,
                &CancellationToken::new(),
                |_, _| {},
                || async { Err::<(), _>(transient(Some(Duration::from_secs(1)))) },
            )
            .await;
        assert!(
            matches!(r, Err(GiveUp::Exhausted(_))) && attempts == 1,
            "a Retry-After past the budget gives up at once"
        );
    }

    #[tokio::test]
    async fn cancellation_stops_waiting() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let mut slow = policy(10);
        slow.min_delay = Duration::from_secs(30);
        slow.max_delay = Duration::from_secs(30);
        let deadline = Instant::now() + Duration::from_secs(600);
        let started = Instant::now();
        let (r, _) = slow.run(deadline, &cancel, |_, _| {}, || async { Err::<(), _>(transient(None)) }).await;
        assert!(matches!(r, Err(GiveUp::Cancelled)) && started.elapsed() < Duration::from_secs(1));
    }
}
