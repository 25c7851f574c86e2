//! The consuming back: reads raw events, enriches them ([`enrich`]), publishes the
//! enriched event or a dead letter ([`output`]), and acknowledges a delivery only after
//! that output was confirmed by the broker. It knows the broker only through
//! [`Consumer`] and [`Publisher`].
//!
//! Concurrency: up to `worker.concurrency` deliveries are enriched at once; deliveries
//! with the same key (the ResourceUri) are processed one at a time, in order, so events
//! about one resource keep their order while many resources proceed at once ([`run`]).

pub mod dedup;
pub mod enrich;
pub mod output;
pub mod retry;
mod start;

pub use start::{MissingCredentials, WorkerError, check_credentials, missing_credentials, sources, start, stems};

use crate::broker::{
    self, Consumer, Delivery, Message, Published, Publisher,
    ordered::{self, Slot},
};
use crate::config::Config;
use crate::contract::{
    destinations::Destinations,
    envelope::{error_kind, status},
    headers,
};
use crate::partner_center::{
    client::ApiClient,
    event::{Event, event_id},
    resource::Resolver,
};
use crate::shutdown::CancellationToken;
use crate::telemetry::{Metrics, worker_outcome};
use dedup::Dedup;
use enrich::{Enricher, Failure, RawEvent};
use output::Identity;
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tracing::Instrument;

/// Everything the chains share.
pub struct WorkerState {
    pub enricher: Enricher,
    pub publisher: Arc<dyn Publisher>,
    pub consumer: Arc<dyn Consumer>,
    pub destinations: Destinations,
    /// CloudEvents source for outputs whose raw message had none.
    pub source: String,
    /// Ids finished recently; guarded by a plain mutex (short, never held across await).
    pub dedup: Mutex<Dedup>,
    pub concurrency: usize,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the drain deadline passes: retries stop, and what is unfinished is
    /// left unacknowledged, to be delivered again.
    pub abandon: CancellationToken,
}

impl WorkerState {
    pub fn new(
        config: &Config,
        consumer: Arc<dyn Consumer>,
        publisher: Arc<dyn Publisher>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, WorkerError> {
        check_credentials(config)?;
        let pc = &config.partner_center;
        let enricher = Enricher {
            resolver: Resolver::new(&pc.api_hosts),
            client: ApiClient::new(config, metrics.clone())?,
            retry: retry::RetryPolicy::from_config(&config.worker),
            fraud_page_size: pc.fraud_page_size,
            fraud_max_pages: pc.fraud_max_pages,
            metrics: metrics.clone(),
        };
        Ok(Self {
            enricher,
            publisher,
            consumer,
            destinations: config.broker.destinations(),
            source: pc.base_url.clone(),
            dedup: Mutex::new(Dedup::new(
                Duration::from_secs(config.worker.dedup_window_secs),
                config.worker.dedup_max_entries,
            )),
            concurrency: config.worker.concurrency,
            metrics,
            abandon: CancellationToken::new(),
        })
    }
}

/// Consumes until `stop` is cancelled (or the consumer closes), then lets the chains
/// finish what they hold ([`crate::broker::ordered`]: one key at a time, in order).
///
/// A handler gives its slot back once the event is enriched: waiting for the broker's
/// confirm of the output is not API work, and holding the slot through it kept the
/// worker at 0.73 of `concurrency / API latency` on RabbitMQ, whose confirms take a few
/// milliseconds (docs/BENCHMARKS.md).
pub async fn run(state: Arc<WorkerState>, stop: CancellationToken) {
    let (consumer, concurrency) = (state.consumer.clone(), state.concurrency);
    ordered::run(consumer, concurrency, stop, move |d, slot| {
        let state = state.clone();
        async move { process(&state, d, slot).await }
    })
    .await;
}

/// Keeps `pcbridge_worker_in_flight_events` right however processing ends.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One delivery, start to acknowledgement, in an `event` span that carries the event's
/// id and name and continues the trace of the raw message's `traceparent` (the ingress
/// request). `slot` (one of `worker.concurrency`) is held only until the event is enriched.
async fn process(state: &WorkerState, d: Delivery, slot: Slot) {
    let who = identify(&d);
    let span = tracing::info_span!(
        "event",
        otel.kind = "consumer",
        event_id = %who.event_id,
        event_name = %who.event_name,
        destination = %d.destination,
    );
    headers::continue_trace(&span, d.header(headers::TRACEPARENT));
    process_in_span(state, d, who, slot).instrument(span).await
}

async fn process_in_span(state: &WorkerState, d: Delivery, who: Identity, slot: Slot) {
    state.metrics.worker_in_flight.inc();
    let in_flight = InFlight(&state.metrics.worker_in_flight);
    let duplicate = state.dedup.lock().unwrap_or_else(|p| p.into_inner()).contains(&who.event_id);
    if duplicate {
        tracing::info!("duplicate within the dedup window; not enriched again");
        state
            .metrics
            .worker_events
            .with_label_values(&[state.destinations.stem(&who.event_name), worker_outcome::DUPLICATE])
            .inc();
        state.consumer.ack(d.ack).await;
        return;
    }
    let raw = RawEvent { event_id: &who.event_id, received_at: &who.received_at, body: &d.body };
    let (message, outcome) = match state.enricher.enrich(raw, &state.abandon).await {
        Ok(e) => {
            let outcome = match e.status {
                status::NOT_APPLICABLE => worker_outcome::NOT_APPLICABLE,
                status::RESOURCE_GONE => worker_outcome::RESOURCE_GONE,
                _ => worker_outcome::ENRICHED,
            };
            (output::enriched(&d, &who, &e, &state.destinations, &state.source), outcome)
        }
        Err(Failure::DeadLetter { kind, reason, attempts }) => {
            tracing::warn!(kind, reason, attempts, "dead-lettering");
            state.metrics.dead_letters.with_label_values(&[kind]).inc();
            let m = output::dead_letter(&d, &who, kind, &reason, attempts, &state.destinations, &state.source);
            (m, worker_outcome::DEAD_LETTERED)
        }
        Err(Failure::Cancelled) => return,
    };
    drop((in_flight, slot));
    let (message, outcome) = match publish_until_confirmed(state, &message).await {
        Published::Confirmed => (message, outcome),
        Published::Abandoned => return,
        // The broker refused the enriched message itself (too large, say): it cannot go
        // where it belongs, so it becomes a dead letter — which is small, being the raw body.
        Published::Refused(reason) if outcome != worker_outcome::DEAD_LETTERED => {
            let kind = error_kind::PUBLISH_REFUSED;
            tracing::warn!(reason, "enriched message refused by the broker; dead-lettering");
            state.metrics.dead_letters.with_label_values(&[kind]).inc();
            let m = output::dead_letter(&d, &who, kind, &reason, 0, &state.destinations, &state.source);
            match publish_until_confirmed(state, &m).await {
                Published::Confirmed => (m, worker_outcome::DEAD_LETTERED),
                _ => return,
            }
        }
        Published::Refused(_) => return,
    };
    state.consumer.ack(d.ack).await;
    state.dedup.lock().unwrap_or_else(|p| p.into_inner()).insert(&who.event_id);
    state.metrics.worker_events.with_label_values(&[state.destinations.stem(&who.event_name), outcome]).inc();
    if let Ok(received) = OffsetDateTime::parse(&who.received_at, &Rfc3339) {
        let age = (OffsetDateTime::now_utc() - received).as_seconds_f64().max(0.0);
        state.metrics.worker_event_age.with_label_values(&[outcome]).observe(age);
    }
    tracing::info!(output = %message.destination, outcome, "event done");
}

/// The event id and name from the raw headers, or from the body when they are missing.
fn identify(d: &Delivery) -> Identity {
    let event_id = d.header(headers::EVENT_ID).map(str::to_string).unwrap_or_else(|| event_id(&d.body));
    let event_name = d
        .header(headers::EVENT_NAME)
        .map(str::to_string)
        .or_else(|| Event::parse(&d.body).ok().map(|e| e.name))
        .unwrap_or_else(|| crate::contract::destinations::UNRECOGNIZED.into());
    let received_at = d.header(headers::RECEIVED_AT).unwrap_or_default().to_string();
    Identity { event_id, event_name, received_at }
}

/// Publishes until confirmed, refused or abandoned ([`broker::publish_until_confirmed`]).
/// A refused dead letter is retried too: there is nowhere else for it to go, and
/// acknowledging it would lose the event.
async fn publish_until_confirmed(state: &WorkerState, message: &Message) -> Published {
    let may_refuse = message.destination != state.destinations.dead_letter();
    broker::publish_until_confirmed(state.publisher.as_ref(), message, may_refuse, &state.abandon).await
}
