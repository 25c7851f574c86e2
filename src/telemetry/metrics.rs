//! Every metric name and label of the product, defined once here.
//!
//! Each role owns a [`Metrics`] with its own registry (rather than the process-global
//! one) so that several roles in one process — `pcbridge dev`, or the test suite — keep
//! separate counts. This module imports nothing else of the crate.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Outcomes of `POST /webhooks/partner-center`, the `outcome` label of
/// `pcbridge_ingress_requests_total`.
pub mod outcome {
    pub const PUBLISHED: &str = "published";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const TOO_LARGE: &str = "payload_too_large";
    pub const CERTIFICATE_UNAVAILABLE: &str = "certificate_unavailable";
    pub const BROKER_UNAVAILABLE: &str = "broker_unavailable";
    pub const SHUTTING_DOWN: &str = "shutting_down";
    /// Shed: the body budget (`ingress.max_buffered_body_bytes`) was spent.
    pub const OVERLOADED: &str = "overloaded";
}

/// Every metric the product exports.
pub struct Metrics {
    registry: Registry,
    /// Requests to the webhook endpoint by `outcome` (see [`outcome`]).
    pub ingress_requests: IntCounterVec,
    /// Published events by `event_name` (names are signed by Microsoft, so bounded).
    pub ingress_events: IntCounterVec,
    /// Signature verification failures by `reason`.
    pub verification_failures: IntCounterVec,
    /// Requests being handled right now.
    pub ingress_in_flight: IntGauge,
    /// Time from publish to broker confirm, by `broker` and `result` (ok / error).
    pub publish_duration: HistogramVec,
    /// Certificate cache lookups by `result`: hit, miss, refetch.
    pub certificate_cache: IntCounterVec,
    /// Certificate downloads by `result`: ok, or the failure reason.
    pub certificate_fetches: IntCounterVec,
    /// 1 while the role's broker connection is usable, by `broker`.
    pub broker_ready: IntGaugeVec,
    /// API request latency by `api` (partner_center, graph, fraud_events) and `status`.
    pub api_request_duration: HistogramVec,
    /// Entra ID token requests by `grant` and `result`.
    pub token_requests: IntCounterVec,
    /// Events finished by the worker, by `event_name` and `outcome` (see [`worker_outcome`]).
    pub worker_events: IntCounterVec,
    /// API call retries by `api`.
    pub worker_retries: IntCounterVec,
    /// Dead letters published, by `error_kind`.
    pub dead_letters: IntCounterVec,
    /// Events being enriched by the worker right now (at most `worker.concurrency`).
    pub worker_in_flight: IntGauge,
    /// Kafka consumer lag (high watermark − position) by `topic` and `partition`. A
    /// partition's series is removed when it is revoked, so a rebalance leaves no stale
    /// lag behind on the replica that lost it.
    pub consumer_lag: IntGaugeVec,
    /// Kafka partitions assigned to this consumer now. Readiness means the cluster
    /// answers; this says whether the group has given the replica work yet.
    pub consumer_assigned_partitions: IntGauge,
    /// Webhook request duration, first byte to answer, by `outcome` (see [`outcome`]).
    pub ingress_request_duration: HistogramVec,
    /// Age of an event when the worker finishes it (now − `pc-received-at`), by
    /// `outcome` (see [`worker_outcome`]): the end-to-end delay downstream sees.
    pub worker_event_age: HistogramVec,
    /// Change keys of delivered webhooks written to the change store by the ingress, by
    /// `result` (recorded, failed: retried with the next batch, dropped: the queue was
    /// full — reconciliation may then publish that change once more).
    pub change_keys: IntCounterVec,
    /// Changes found by reconciliation, by `source` (audit, gdap, …) and `outcome` (see
    /// [`reconcile_outcome`]).
    pub reconcile_changes: IntCounterVec,
    /// Audit records and list items reconciliation skipped, by `reason` (not-succeeded,
    /// unmapped, no-resource, unreadable).
    pub reconcile_skipped: IntCounterVec,
    /// Pages read by reconciliation, by `source`.
    pub reconcile_pages: IntCounterVec,
    /// Events `pcbridge forward` finished, by `receiver` (a configured name: the label set
    /// is bounded) and `outcome` (see [`forward_outcome`]).
    pub forward_events: IntCounterVec,
    /// Requests to receivers, by `receiver` and `result` (see [`forward_result`]).
    pub forward_requests: IntCounterVec,
    /// 1 while the last completed check found the webhook registration different from
    /// `[registration]` (or gone); 0 when it matched. A failed check leaves it as it was.
    pub registration_mismatch: IntGauge,
    /// Registration checks by `result`: match, mismatch, missing, failed.
    pub registration_checks: IntCounterVec,
    /// When the registration was last read (Unix seconds): an alert on its age catches a
    /// watcher that stopped checking.
    pub registration_last_check: IntGauge,
    /// Registrations put back by `register watch`, by `result` (restored, failed).
    pub registration_restores: IntCounterVec,
}

/// Outcomes of one event for one receiver, the `outcome` label of
/// `pcbridge_forward_events_total`.
pub mod forward_outcome {
    /// The receiver answered 2xx.
    pub const DELIVERED: &str = "delivered";
    /// Dead-lettered for this receiver (permanent answer or retry budget spent).
    pub const DEAD_LETTERED: &str = "dead_lettered";
    /// In a shared destination, an event the receiver does not want: acknowledged, not sent.
    pub const SKIPPED: &str = "skipped";
}

/// Results of one request to a receiver, the `result` label of
/// `pcbridge_forward_requests_total`.
pub mod forward_result {
    pub const SUCCESS: &str = "2xx";
    /// A redirect, never followed: permanent.
    pub const REDIRECT: &str = "3xx";
    pub const THROTTLED: &str = "429";
    /// Other 4xx: permanent, except 408.
    pub const CLIENT_ERROR: &str = "4xx";
    pub const SERVER_ERROR: &str = "5xx";
    pub const TIMEOUT: &str = "timeout";
    /// Connection refused or reset, TLS or DNS failure.
    pub const CONNECTION: &str = "connection";
}

/// Outcomes of one change found by reconciliation, the `outcome` label of
/// `pcbridge_reconcile_changes_total`.
pub mod reconcile_outcome {
    /// Not delivered before: published raw.
    pub const PUBLISHED: &str = "published";
    /// Already on the broker (by webhook or an earlier run).
    pub const DELIVERED: &str = "already_delivered";
    /// Another reconciler holds it right now.
    pub const CLAIMED_ELSEWHERE: &str = "claimed_elsewhere";
    /// `--dry-run`: would have been published.
    pub const MISSING: &str = "missing";
    /// The publish failed; the claim was given back for the next run.
    pub const FAILED: &str = "failed";
}

/// Outcomes of one event in the worker, the `outcome` label of `pcbridge_worker_events_total`.
pub mod worker_outcome {
    pub const ENRICHED: &str = "enriched";
    pub const NOT_APPLICABLE: &str = "not_applicable";
    pub const RESOURCE_GONE: &str = "resource_gone";
    pub const DEAD_LETTERED: &str = "dead_lettered";
    pub const DUPLICATE: &str = "duplicate";
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry.register(Box::new(c.clone())).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            c
        };
        let ingress_requests = counter("pcbridge_ingress_requests_total", "Webhook requests by outcome.", &["outcome"]);
        let ingress_events = counter(
            "pcbridge_ingress_events_total",
            "Events published by the ingress, by event name.",
            &["event_name"],
        );
        let verification_failures = counter(
            "pcbridge_signature_verification_failures_total",
            "Webhook signature verification failures by reason.",
            &["reason"],
        );
        let certificate_cache = counter(
            "pcbridge_certificate_cache_total",
            "Signing-certificate cache lookups by result (hit, miss, refetch).",
            &["result"],
        );
        let certificate_fetches =
            counter("pcbridge_certificate_fetches_total", "Signing-certificate downloads by result.", &["result"]);
        // The static names below cannot fail to register in a fresh registry.
        let ingress_in_flight = IntGauge::new("pcbridge_ingress_in_flight_requests", "Webhook requests being handled.")
            .unwrap_or_else(|e| panic!("{e}"));
        registry.register(Box::new(ingress_in_flight.clone())).unwrap_or_else(|e| panic!("{e}"));
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            let h = HistogramVec::new(opts, labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry.register(Box::new(h.clone())).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            h
        };
        let publish_duration = histogram(
            "pcbridge_publish_duration_seconds",
            "Time from publish to broker confirm.",
            &["broker", "result"],
            &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        );
        let broker_ready = IntGaugeVec::new(
            Opts::new("pcbridge_broker_ready", "1 while the broker connection is usable."),
            &["broker"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        registry.register(Box::new(broker_ready.clone())).unwrap_or_else(|e| panic!("{e}"));
        let api_request_duration = histogram(
            "pcbridge_api_request_duration_seconds",
            "Partner Center / Graph / fraud events API request latency by api and status.",
            &["api", "status"],
            &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
        );
        let token_requests = counter(
            "pcbridge_token_requests_total",
            "Entra ID token requests by grant and result.",
            &["grant", "result"],
        );
        let worker_events = counter(
            "pcbridge_worker_events_total",
            "Events finished by the worker, by event name and outcome.",
            &["event_name", "outcome"],
        );
        let worker_retries = counter("pcbridge_worker_retries_total", "API call retries by api.", &["api"]);
        let dead_letters =
            counter("pcbridge_dead_letters_total", "Dead letters published by error kind.", &["error_kind"]);
        let worker_in_flight = IntGauge::new(
            "pcbridge_worker_in_flight_events",
            "Events being enriched by the worker (at most worker.concurrency).",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        registry.register(Box::new(worker_in_flight.clone())).unwrap_or_else(|e| panic!("{e}"));
        let consumer_lag = IntGaugeVec::new(
            Opts::new("pcbridge_consumer_lag", "Kafka consumer lag in messages, by topic and partition."),
            &["topic", "partition"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        registry.register(Box::new(consumer_lag.clone())).unwrap_or_else(|e| panic!("{e}"));
        let consumer_assigned_partitions = IntGauge::new(
            "pcbridge_consumer_assigned_partitions",
            "Kafka partitions assigned to this consumer (0 until the group has formed).",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        registry.register(Box::new(consumer_assigned_partitions.clone())).unwrap_or_else(|e| panic!("{e}"));
        let ingress_request_duration = histogram(
            "pcbridge_ingress_request_duration_seconds",
            "Webhook request duration by outcome.",
            &["outcome"],
            &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        );
        let worker_event_age = histogram(
            "pcbridge_worker_event_age_seconds",
            "Age of an event (now - pc-received-at) when the worker finishes it, by outcome.",
            &["outcome"],
            &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0],
        );
        let change_keys = counter(
            "pcbridge_change_keys_total",
            "Change keys of delivered webhooks written to the change store, by result.",
            &["result"],
        );
        let reconcile_changes = counter(
            "pcbridge_reconcile_changes_total",
            "Changes found by reconciliation, by source and outcome.",
            &["source", "outcome"],
        );
        let reconcile_skipped = counter(
            "pcbridge_reconcile_skipped_total",
            "Audit records and list items skipped by reconciliation, by reason.",
            &["reason"],
        );
        let reconcile_pages =
            counter("pcbridge_reconcile_pages_total", "Pages read by reconciliation, by source.", &["source"]);
        let registration_checks =
            counter("pcbridge_registration_checks_total", "Webhook registration checks by result.", &["result"]);
        let registration_restores =
            counter("pcbridge_registration_restores_total", "Webhook registrations put back, by result.", &["result"]);
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry.register(Box::new(g.clone())).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            g
        };
        let registration_mismatch = gauge(
            "pcbridge_registration_mismatch",
            "1 while the webhook registration differs from the configured one (or is gone).",
        );
        let registration_last_check = gauge(
            "pcbridge_registration_last_check_timestamp_seconds",
            "When the webhook registration was last read, Unix seconds.",
        );
        let forward_events = counter(
            "pcbridge_forward_events_total",
            "Events finished by the forwarder, by receiver and outcome.",
            &["receiver", "outcome"],
        );
        let forward_requests = counter(
            "pcbridge_forward_requests_total",
            "Requests to forwarding receivers, by receiver and result.",
            &["receiver", "result"],
        );
        let build_info = IntGaugeVec::new(
            Opts::new("pcbridge_build_info", "Always 1; the labels name the running build."),
            &["version"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(build_info)).unwrap_or_else(|e| panic!("{e}"));
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds… (Linux).
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .unwrap_or_else(|e| panic!("{e}"));
        Self {
            registration_mismatch,
            registration_checks,
            registration_last_check,
            registration_restores,
            forward_events,
            forward_requests,
            change_keys,
            reconcile_changes,
            reconcile_skipped,
            reconcile_pages,
            consumer_assigned_partitions,
            ingress_request_duration,
            worker_event_age,
            registry,
            api_request_duration,
            token_requests,
            worker_events,
            worker_retries,
            dead_letters,
            worker_in_flight,
            consumer_lag,
            ingress_requests,
            ingress_events,
            verification_failures,
            ingress_in_flight,
            publish_duration,
            certificate_cache,
            certificate_fetches,
            broker_ready,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::new();
        m.ingress_requests.with_label_values(&[outcome::PUBLISHED]).inc();
        m.publish_duration.with_label_values(&["kafka", "ok"]).observe(0.001);
        let text = m.render();
        assert!(text.contains("pcbridge_ingress_requests_total{outcome=\"published\"} 1"), "{text}");
        assert!(text.contains("pcbridge_publish_duration_seconds_bucket"), "{text}");
        assert!(
            text.contains(&format!("pcbridge_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))),
            "{text}"
        );
        #[cfg(target_os = "linux")]
        for family in ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"] {
            assert!(text.contains(family), "{family} missing: {text}");
        }
    }
}
