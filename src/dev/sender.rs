//! Sends the generated stream, signed by the simulator, to a webhook URL at a steady
//! rate, as Partner Center would: one POST per event, many in flight, each answer
//! recorded by the [`Tracker`].

use super::events::Generator;
use super::recovery::GiveUps;
use super::report::Tracker;
use super::simulator::Simulator;
use crate::partner_center::event::event_id;
use std::{sync::Arc, time::Duration};
use tokio::{sync::Semaphore, time::MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Requests in flight at most (Partner Center delivers concurrently too).
const MAX_IN_FLIGHT: usize = 256;

/// What to send.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// The webhook URL, e.g. `http://127.0.0.1:8080/webhooks/partner-center`.
    pub target: String,
    /// Events per second (at least 0.1).
    pub rate: f64,
    /// How many events; `None`: until `stop`.
    pub count: Option<u64>,
    /// Sign in `x-ms-signature` instead of `Authorization`.
    pub ms_signature_header: bool,
    /// Seed of the event stream (the same seed gives the same kinds of events).
    pub seed: u64,
    /// Time limit of one delivery (Partner Center's own is a few seconds).
    pub timeout: Duration,
    /// Deliveries Partner Center gives up on (`pcbridge dev --give-up-percent`): their
    /// changes are recorded, their webhooks not sent.
    pub give_ups: Option<Arc<GiveUps>>,
}

/// Sends until `count` events were sent or `stop` is cancelled, then waits for the
/// answers of those in flight.
pub async fn send(sim: &Simulator, tracker: Arc<Tracker>, options: &SendOptions, stop: CancellationToken) {
    let http = match reqwest::Client::builder().timeout(options.timeout).pool_max_idle_per_host(64).build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot build an HTTP client: {e}");
            return;
        }
    };
    let mut generator = Generator::new(options.seed);
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / options.rate.max(0.1)));
    // Behind schedule (a slow moment), catch up: the rate is an average over the run.
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut sent = 0u64;
    while options.count.is_none_or(|n| sent < n) {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let Ok(permit) = permits.clone().acquire_owned().await else { break };
        let sample = generator.next_sample();
        // Partner Center records the change whether or not the webhook gets through.
        sim.record_change(&sample.body);
        if options.give_ups.as_ref().is_some_and(|g| g.gives_up(sample.name, &sample.body)) {
            sent += 1;
            continue;
        }
        if let Some(correlation_id) = &sample.correlation_id {
            sim.expect_validation(correlation_id);
        }
        let headers = match sim.signed_headers(&sample.body, options.ms_signature_header) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("cannot sign an event: {e}");
                return;
            }
        };
        let id = event_id(&sample.body);
        tracker.sent(&id, sample.name);
        sent += 1;
        let mut request = http.post(&options.target).body(sample.body);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let tracker = tracker.clone();
        tokio::spawn(async move {
            match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let detail = if response.status().is_success() {
                        String::new()
                    } else {
                        response.text().await.unwrap_or_default().chars().take(200).collect()
                    };
                    tracker.answered(&id, status, detail.trim());
                }
                Err(e) => tracker.answered(&id, 0, &crate::partner_center::error_chain(&e)),
            }
            drop(permit);
        });
    }
    // Every permit back means every request was answered.
    let _ = permits.acquire_many(MAX_IN_FLIGHT as u32).await;
}

/// Prints the tracker's progress every `every` until `stop`.
pub async fn print_progress(tracker: Arc<Tracker>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => eprintln!("{}", tracker.progress()),
        }
    }
}
