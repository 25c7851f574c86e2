//! One receiver's pipeline: its deliveries in key order ([`crate::broker::ordered`]),
//! each sent until the receiver answers 2xx, or dead-lettered for that receiver once the
//! answer is permanent or the retry budget is spent, and acknowledged only then.

use super::send::{Answer, Receiver};
use crate::broker::{Consumer, Delivery, Message, Published, Publisher, ordered, publish_until_confirmed};
use crate::config::Config;
use crate::contract::{
    destinations::Destinations,
    envelope::error_kind,
    headers,
    outputs::{self, Failure, Identity},
};
use crate::partner_center::event::event_id;
use crate::shutdown::CancellationToken;
use crate::telemetry::{Metrics, metrics::forward_outcome};
use backon::{BackoffBuilder, ExponentialBuilder};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tracing::Instrument;

pub struct Pipeline {
    receiver: Receiver,
    pub consumer: Arc<dyn Consumer>,
    publisher: Arc<dyn Publisher>,
    destinations: Destinations,
    source: String,
    metrics: Arc<Metrics>,
    max_attempts: u32,
    max_elapsed: Duration,
    min_delay: Duration,
    max_delay: Duration,
    /// Cancelled when the drain deadline passes: retries stop, and what is unfinished is
    /// left unacknowledged, to be delivered again.
    pub abandon: CancellationToken,
}

/// How sending one event to the receiver ended.
enum Sent {
    Delivered,
    DeadLetter {
        kind: &'static str,
        reason: String,
        attempts: u32,
    },
    /// Shutting down past the deadline: the delivery stays unacknowledged.
    Abandoned,
}

impl Pipeline {
    pub fn new(
        config: &Config,
        receiver: Receiver,
        consumer: Arc<dyn Consumer>,
        publisher: Arc<dyn Publisher>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let f = &config.forward;
        Self {
            receiver,
            consumer,
            publisher,
            destinations: config.broker.destinations(),
            source: config.partner_center.base_url.clone(),
            metrics,
            max_attempts: f.max_attempts,
            max_elapsed: Duration::from_millis(f.max_retry_ms),
            min_delay: Duration::from_millis(f.retry_min_delay_ms),
            max_delay: Duration::from_millis(f.retry_max_delay_ms),
            abandon: CancellationToken::new(),
        }
    }

    /// Consumes until `stop`, then finishes what it holds.
    pub async fn run(self: Arc<Self>, concurrency: usize, stop: CancellationToken) {
        let consumer = self.consumer.clone();
        ordered::run(consumer, concurrency, stop, move |d, slot| {
            let pipeline = self.clone();
            async move { pipeline.handle(d, slot).await }
        })
        .await;
    }

    /// One delivery, to acknowledgement, in a `forward` span naming the receiver and
    /// its host (so does every line logged within).
    async fn handle(&self, d: Delivery, mut slot: ordered::Slot) {
        let event_id = d.header(headers::EVENT_ID).map_or_else(|| event_id(&d.body), str::to_string);
        let event_name = d.header(headers::EVENT_NAME).unwrap_or(crate::contract::destinations::UNRECOGNIZED);
        let span = tracing::info_span!(
            "forward",
            otel.kind = "producer",
            receiver = %self.receiver.name,
            host = %self.receiver.host,
            event_id = %event_id,
            event_name = %event_name,
        );
        headers::continue_trace(&span, d.header(headers::TRACEPARENT));
        let wanted = self.receiver.wants(event_name);
        let event_name = event_name.to_string();
        async {
            let outcome = if !wanted {
                // A shared destination (per-category, single) holds events this receiver
                // did not ask for.
                forward_outcome::SKIPPED
            } else {
                match self.send_until_done(&d, &mut slot).await {
                    Sent::Delivered => forward_outcome::DELIVERED,
                    Sent::Abandoned => return,
                    Sent::DeadLetter { kind, reason, attempts } => {
                        slot.release();
                        tracing::warn!(kind, reason, attempts, "dead-lettering for this receiver");
                        let received_at = d.header(headers::RECEIVED_AT).unwrap_or_default().to_string();
                        let who = Identity { event_id: event_id.clone(), event_name: event_name.clone(), received_at };
                        let message = self.dead_letter(&d, &who, &Failure { kind, reason: &reason, attempts });
                        // There is nowhere else for it to go: a refusal is retried too,
                        // as acknowledging without it would lose the event for this receiver.
                        match publish_until_confirmed(self.publisher.as_ref(), &message, false, &self.abandon).await {
                            Published::Confirmed => {}
                            Published::Abandoned | Published::Refused(_) => return,
                        }
                        forward_outcome::DEAD_LETTERED
                    }
                }
            };
            self.consumer.ack(d.ack).await;
            self.metrics.forward_events.with_label_values(&[&self.receiver.name, outcome]).inc();
            tracing::info!(outcome, "forwarded");
        }
        .instrument(span)
        .await
    }

    /// Sends until 2xx, a permanent answer, or the budget's end. The slot is given back
    /// while waiting between attempts, so a failing resource does not keep others out.
    async fn send_until_done(&self, d: &Delivery, slot: &mut ordered::Slot) -> Sent {
        let started = Instant::now();
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_jitter()
            .without_max_times()
            .build();
        let mut attempts = 0;
        loop {
            slot.acquire().await;
            attempts += 1;
            let Some(answer) = self.receiver.send(d).await else {
                return Sent::DeadLetter {
                    kind: error_kind::PERMANENT,
                    reason: "no Partner Center signature (a reconciled change): a receiver could not verify it".into(),
                    attempts: 0,
                };
            };
            self.metrics.forward_requests.with_label_values(&[&self.receiver.name, answer.result()]).inc();
            let (reason, after) = match answer {
                Answer::Delivered => return Sent::Delivered,
                Answer::Permanent { reason, .. } => {
                    return Sent::DeadLetter { kind: error_kind::PERMANENT, reason, attempts };
                }
                Answer::Retry { reason, after, .. } => (reason, after),
            };
            let backoff = delays.next().unwrap_or(self.max_delay);
            // The receiver's Retry-After is a floor; the budget is the ceiling.
            let delay = after.map_or(backoff, |a| a.max(backoff));
            if attempts >= self.max_attempts || started.elapsed() + delay > self.max_elapsed {
                let reason = format!("{reason} (attempt {attempts}, retry budget spent)");
                return Sent::DeadLetter { kind: error_kind::EXHAUSTED, reason, attempts };
            }
            tracing::info!(
                reason,
                attempt = attempts,
                delay_ms = delay.as_millis() as u64,
                "receiver did not take the event; retrying"
            );
            slot.release();
            tokio::select! {
                biased;
                () = self.abandon.cancelled() => return Sent::Abandoned,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// `{prefix}forward.{receiver}.dead-letter`: the raw body and headers, plus why, after
    /// how many attempts, and for which receiver.
    fn dead_letter(&self, d: &Delivery, who: &Identity, failure: &Failure<'_>) -> Message {
        let destination = self.destinations.forward_dead_letter(&self.receiver.name);
        let mut message = outputs::dead_letter(d, who, failure, destination, &self.source);
        message.headers.push((headers::RECEIVER.into(), self.receiver.name.clone()));
        message
    }
}
