//! Waiting for something observable (a readiness probe, a metric, a message) with a
//! deadline, instead of sleeping for a guessed time: the poll interval here is the only
//! pause, and it orders nothing.

use std::time::{Duration, Instant};

/// How often [`until`] looks again.
const POLL: Duration = Duration::from_millis(50);

/// Polls `check` until it holds and returns how long that took; fails the test, naming
/// `what`, if it does not hold `within`.
pub async fn until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(POLL).await;
    }
}
