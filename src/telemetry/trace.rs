//! Logs and traces. One global `tracing` subscriber writes the logs (text or JSON, on
//! stderr) and turns the product's spans into OpenTelemetry spans:
//!
//! - a `webhook` span per ingress request and an `event` span per event the worker
//!   handles, each carrying `event_id` and `event_name`, so every log line inside them
//!   has both (text: the span prefix; JSON: the `span` object);
//! - the ingress writes its span's W3C `traceparent` into the raw message, and the
//!   worker makes it the parent of its own span, so one trace id runs from the webhook
//!   request to the enriched message (docs/message-contract.md);
//! - spans are recorded as OpenTelemetry spans and exported over OTLP/HTTP only when
//!   the standard variables name an endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`);
//!   `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or `http/json`),
//!   `…_HEADERS`, `…_TIMEOUT`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//!   `OTEL_TRACES_SAMPLER` and `OTEL_BSP_*` apply as the specification says, and
//!   `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn export off. Without
//!   export no span is recorded (it would cost the ingress a quarter of its
//!   throughput), and the trace context still travels: each hop continues the incoming
//!   trace id with a span id of its own (`contract::headers::outgoing_traceparent`).

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use std::sync::OnceLock;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, filter::Targets, layer::SubscriberExt, util::SubscriberInitExt};

/// Output format of the logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStyle {
    Text,
    Json,
}

/// The process's tracer provider, kept so that [`flush`] can send the last spans at exit
/// (its batch processor exports from a thread of its own, every `OTEL_BSP_SCHEDULE_DELAY`).
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber once. `RUST_LOG`, when set, wins over `level` for the
/// logs; when traces are exported, spans are recorded whatever the log level. `service`
/// names the process in exported traces unless `OTEL_SERVICE_NAME` does.
pub fn init_tracing(style: LogStyle, level: &str, service: &str) {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let filter = EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(level))
            .unwrap_or_else(|_| EnvFilter::new("info"));
        let logs = match style {
            LogStyle::Json => tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_writer(std::io::stderr)
                .boxed(),
            LogStyle::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
        };
        // Spans become OpenTelemetry spans only when they are exported: recording them
        // costs the ingress a quarter of its throughput (docs/BENCHMARKS.md). Without
        // export the trace context still travels (contract::headers makes the ids).
        let endpoint = export_endpoint();
        let (provider, export_error) = match &endpoint {
            Some(_) => match exporting_provider(service) {
                Ok(p) => (Some(p), None),
                Err(e) => (None, Some(e)),
            },
            None => (None, None),
        };
        // Only the product's own spans (not the HTTP or broker clients' internals), at
        // info whatever the log level.
        let spans = provider.as_ref().map(|p| {
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer("pcbridge"))
                .with_filter(Targets::new().with_target("pcbridge", tracing::Level::INFO))
        });
        // A second subscriber (tests) is not an error worth reporting.
        let _ = tracing_subscriber::registry().with(logs.with_filter(filter)).with(spans).try_init();
        if let Some(provider) = provider {
            let _ = PROVIDER.set(provider);
        }
        match (endpoint, export_error) {
            (Some(_), Some(e)) => tracing::error!(error = %e, "OTLP trace export is off: the exporter cannot be built"),
            (Some(endpoint), None) => tracing::info!(endpoint, "exporting traces over OTLP/HTTP"),
            (None, _) => {}
        }
    });
}

/// The OTLP endpoint traces go to, when export is asked for.
fn export_endpoint() -> Option<String> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let is = |k: &str, value: &str| var(k).is_some_and(|v| v.trim().eq_ignore_ascii_case(value));
    if is("OTEL_SDK_DISABLED", "true") || is("OTEL_TRACES_EXPORTER", "none") {
        return None;
    }
    var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// A provider exporting in batches over OTLP/HTTP, configured by the `OTEL_*` variables.
fn exporting_provider(service: &str) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    // reqwest is built without a default crypto provider (see partner_center).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    // With JSON compiled in the exporter would default to it; the specification's
    // default is protobuf.
    if !set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") && !set("OTEL_EXPORTER_OTLP_PROTOCOL") {
        builder = builder.with_protocol(Protocol::HttpBinary);
    }
    let exporter = builder.build()?;
    Ok(SdkTracerProvider::builder().with_resource(resource(service)).with_batch_exporter(exporter).build())
}

/// `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` when set, else `service`.
fn resource(service: &str) -> Resource {
    let detected = Resource::builder().build();
    let unnamed = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_none_or(|v| v.as_str().starts_with("unknown_service"));
    if unnamed { Resource::builder().with_service_name(service.to_string()).build() } else { detected }
}

/// Sends the spans not exported yet and stops the exporter; call once, at exit.
pub async fn flush() {
    if let Some(provider) = PROVIDER.get().cloned() {
        // Both block until the exporter answers: off the async workers.
        let _ = tokio::task::spawn_blocking(move || {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        })
        .await;
    }
}

/// Makes the remote span `trace_id`/`span_id` (hex) the parent of `span`, which must
/// not have been entered yet. Ids that are not valid leave `span` a root.
pub fn set_remote_parent(span: &tracing::Span, trace_id: &str, span_id: &str, sampled: bool) {
    let (Ok(trace_id), Ok(span_id)) = (TraceId::from_hex(trace_id), SpanId::from_hex(span_id)) else { return };
    let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
    let remote = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    if remote.is_valid() {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
}

/// `(trace id, span id, sampled)` of the current span, in hex; `None` when spans are not
/// recorded (no subscriber, as in benchmarks).
pub fn current_span_ids() -> Option<(String, String, bool)> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| (sc.trace_id().to_string(), sc.span_id().to_string(), sc.is_sampled()))
}
