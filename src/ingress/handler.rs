//! `POST /webhooks/partner-center`: verify → parse → publish → answer.
//!
//! The answer is 2xx only once the broker has confirmed the message; any failure on the
//! way is answered with the status of [`super::error::Rejection`], and nothing is
//! published for a refused request.

use super::{IngressState, error::Rejection, message};
use crate::partner_center::{
    certificate::CacheUse,
    event::{Event, event_id},
    signature::SignatureHeaders,
};
use crate::telemetry::outcome;
use axum::{
    Json,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use serde_json::json;
use std::sync::Arc;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

/// Keeps `pcbridge_ingress_in_flight_requests` right, however the request ends.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The webhook endpoint. Each request runs in a `webhook` span (a child of the
/// sender's `traceparent`, if any) that records the event's id and name once known;
/// the raw message carries that span's context on to the worker.
pub async fn receive(State(state): State<Arc<IngressState>>, headers: HeaderMap, body: Body) -> Response {
    let span = tracing::info_span!(
        "webhook",
        otel.kind = "server",
        event_id = tracing::field::Empty,
        event_name = tracing::field::Empty,
    );
    let incoming = headers.get(crate::contract::headers::TRACEPARENT).and_then(|v| v.to_str().ok());
    crate::contract::headers::continue_trace(&span, incoming);
    respond(state, headers, body).instrument(span).await
}

async fn respond(state: Arc<IngressState>, headers: HeaderMap, body: Body) -> Response {
    let metrics = &state.metrics;
    let _in_flight = InFlight::enter(&metrics.ingress_in_flight);
    let started = std::time::Instant::now();
    let observe = |outcome: &str| {
        metrics.ingress_request_duration.with_label_values(&[outcome]).observe(started.elapsed().as_secs_f64());
    };
    match accept(&state, &headers, body).await {
        Ok((event_id, destination, event_name)) => {
            metrics.ingress_requests.with_label_values(&[outcome::PUBLISHED]).inc();
            observe(outcome::PUBLISHED);
            metrics.ingress_events.with_label_values(&[&event_name]).inc();
            tracing::info!(destination, "event published");
            (StatusCode::OK, Json(json!({ "eventId": event_id, "destination": destination }))).into_response()
        }
        Err(rejection) => {
            metrics.ingress_requests.with_label_values(&[rejection.outcome()]).inc();
            observe(rejection.outcome());
            if let Rejection::Signature(e) = &rejection {
                metrics.verification_failures.with_label_values(&[e.reason()]).inc();
                if e.is_transient() {
                    metrics.certificate_fetches.with_label_values(&["unavailable"]).inc();
                }
            }
            if rejection.status().is_server_error() {
                tracing::warn!(error = %rejection, code = rejection.code(), "webhook not accepted (sender will retry)");
            } else {
                tracing::info!(error = %rejection, code = rejection.code(), "webhook refused");
            }
            rejection.into_response()
        }
    }
}

/// Returns `(event id, destination, event name or `unrecognized`)` of the published event.
async fn accept(state: &IngressState, headers: &HeaderMap, body: Body) -> Result<(String, String, String), Rejection> {
    if state.shutdown.is_cancelled() {
        return Err(Rejection::ShuttingDown);
    }
    let limit = state.max_body_bytes;
    let declared_length =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|n| n > limit as u64) {
        return Err(Rejection::TooLarge(limit));
    }
    let signature = SignatureHeaders::from_headers(headers)?;
    // Held until the answer: the body lives on in the published message until then.
    let _buffered = reserve_body(state, declared_length)?;
    let body = read_body(body, limit).await?;
    let verified = state.verifier.verify(&signature, &body).await?;
    match verified.cache {
        CacheUse::Hit => state.metrics.certificate_cache.with_label_values(&["hit"]).inc(),
        CacheUse::Miss | CacheUse::Refetch => {
            let label = if verified.cache == CacheUse::Miss { "miss" } else { "refetch" };
            state.metrics.certificate_cache.with_label_values(&[label]).inc();
            state.metrics.certificate_fetches.with_label_values(&["ok"]).inc();
        }
    }
    let event = Event::parse(&body)?;
    let id = event_id(&body);
    let span = tracing::Span::current();
    span.record("event_id", id.as_str());
    span.record("event_name", event.name.as_str());
    let received_at = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
    let incoming = headers.get(crate::contract::headers::TRACEPARENT).and_then(|v| v.to_str().ok());
    let traceparent = crate::contract::headers::outgoing_traceparent(incoming);
    let msg = message::raw_message(
        message::Accepted { event: &event, event_id: id, body, signature: &signature, received_at, traceparent },
        &state.destinations,
        &state.source,
    );
    match tokio::time::timeout(state.publish_timeout, state.publisher.publish(&msg)).await {
        // The metric label is the destination's stem, so an unsafe name cannot become
        // an unbounded label value.
        Ok(Ok(())) => {
            if let Some(recorder) = &state.delivered {
                recorder.record(message::change_key(&msg).to_string());
            }
            Ok((msg.id, msg.destination, state.destinations.stem(&event.name).to_string()))
        }
        Ok(Err(e)) => Err(Rejection::Broker(e)),
        Err(_) => Err(Rejection::Broker(crate::broker::PublishError::Timeout(state.publish_timeout))),
    }
}

/// Reserves the body's bytes in the shared budget: its Content-Length, or the whole
/// `max_body_bytes` when it declares none (chunked). Never waits: a full budget means
/// overload, answered 503 at once rather than queued.
fn reserve_body(state: &IngressState, declared_length: Option<u64>) -> Result<OwnedSemaphorePermit, Rejection> {
    let bytes = declared_length.map_or(state.max_body_bytes as u64, |n| n.max(1));
    let permits = u32::try_from(bytes).map_err(|_| Rejection::TooLarge(state.max_body_bytes))?;
    state.body_budget.clone().try_acquire_many_owned(permits).map_err(|_| Rejection::Overloaded)
}

/// Reads the whole body, refusing more than `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, Rejection> {
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes),
        Err(e) => {
            let inner = e.into_inner();
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(inner.as_ref());
            while let Some(s) = source {
                if s.is::<http_body_util::LengthLimitError>() {
                    return Err(Rejection::TooLarge(limit));
                }
                source = s.source();
            }
            Err(Rejection::BodyRead(inner.to_string()))
        }
    }
}
