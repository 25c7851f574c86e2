//! One trace from the webhook request to the enriched message: the real `pcbridge
//! ingress` and `pcbridge worker` binaries, exporting over OTLP/HTTP (configured only by
//! the standard `OTEL_*` variables) to an OTLP receiver in this test, on both brokers.
//! The ingress's `webhook` span continues the sender's trace, the worker's `event` span
//! is its child, and the enriched message's `traceparent` names the worker's span.

mod common;

use axum::{Router, extract::State, routing::post};
use common::{
    app::{broker_env, pcbridge_command, worker_config},
    bus::{Bus, on_both_brokers},
    net::closed_port,
    pc::Pc,
    pc_api::PcApi,
    wait,
};
use pcbridge::config::BrokerKind;
use serde_json::{Value, json};
use std::{
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

/// One span as the receiver got it.
#[derive(Clone, Debug)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<(String, String)>,
}

impl Span {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// An OTLP/HTTP receiver (`POST /v1/traces`, JSON encoding) that keeps every span.
struct Receiver {
    endpoint: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Receiver {
    async fn start() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new().route("/v1/traces", post(receive)).with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { endpoint, spans }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().expect("spans").clone()
    }
}

async fn receive(State(spans): State<Arc<Mutex<Vec<Span>>>>, body: String) -> axum::Json<Value> {
    let request: Value = serde_json::from_str(&body).expect("an OTLP/JSON export request");
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let value = |v: &Value| {
        v.get("stringValue")
            .or_else(|| v.get("intValue"))
            .or_else(|| v.get("boolValue"))
            .map_or(String::new(), |v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
    };
    let attributes = |v: &Value| -> Vec<(String, String)> {
        v.as_array().into_iter().flatten().map(|a| (text(&a["key"]), value(&a["value"]))).collect()
    };
    let mut got = Vec::new();
    for resource_spans in request["resourceSpans"].as_array().into_iter().flatten() {
        let resource = attributes(&resource_spans["resource"]["attributes"]);
        let service = resource.iter().find(|(k, _)| k == "service.name").map(|(_, v)| v.clone()).unwrap_or_default();
        for scope in resource_spans["scopeSpans"].as_array().into_iter().flatten() {
            for s in scope["spans"].as_array().into_iter().flatten() {
                got.push(Span {
                    service: service.clone(),
                    name: text(&s["name"]),
                    trace_id: text(&s["traceId"]),
                    span_id: text(&s["spanId"]),
                    parent_span_id: text(&s["parentSpanId"]),
                    attributes: attributes(&s["attributes"]),
                });
            }
        }
    }
    spans.lock().expect("spans").extend(got);
    axum::Json(json!({}))
}

/// A `pcbridge` process, killed if the test fails before stopping it.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `pcbridge {role}` exporting traces to `otlp`, its logs in the test's output.
fn start(role: &str, env: &[(&'static str, String)], otlp: &str) -> Running {
    let child = pcbridge_command()
        .arg(role)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn pcbridge");
    Running(Some(child))
}

/// SIGTERM, then the exit status (a role flushes its last spans before it exits).
async fn stop(mut running: Running) -> std::process::ExitStatus {
    let mut child = running.0.take().expect("running");
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    tokio::task::spawn_blocking(move || child.wait().expect("wait")).await.expect("join")
}

/// `(trace id, span id)` of a W3C `traceparent`.
fn trace_and_span(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "a traceparent: {traceparent}");
    (parts[1].to_string(), parts[2].to_string())
}

async fn one_trace_from_request_to_enriched_message(kind: BrokerKind) {
    pcbridge::partner_center::install_crypto_provider();
    let otlp = Receiver::start().await;
    let pc = Pc::new().await;
    let bus = Bus::new(kind).await;
    let api = PcApi::start().await;
    let config = worker_config(bus.config(&pc), &api);
    api.put("/v1.0/tenantRelationships/delegatedAdminRelationships/rel-1", json!({"id": "rel-1"}));

    let (port, ingress_admin, worker_admin) = (closed_port().await, closed_port().await, closed_port().await);
    let mut ingress_env = broker_env(&config);
    ingress_env.extend([
        ("PCBRIDGE_INGRESS__LISTEN", format!("127.0.0.1:{port}")),
        ("PCBRIDGE_ADMIN__LISTEN", format!("127.0.0.1:{ingress_admin}")),
        ("PCBRIDGE_SIGNATURE__TRUSTED_CERTIFICATE_URL_PREFIXES", format!("[\"{}\"]", pc.certs.prefix)),
        ("PCBRIDGE_SIGNATURE__EXTRA_TRUST_ANCHORS_FILE", pc.anchors_file.display().to_string()),
    ]);
    let mut worker_env = broker_env(&config);
    worker_env.extend(api.env());
    worker_env.push(("PCBRIDGE_ADMIN__LISTEN", format!("127.0.0.1:{worker_admin}")));
    let ingress = start("ingress", &ingress_env, &otlp.endpoint);
    let worker = start("worker", &worker_env, &otlp.endpoint);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    for admin in [ingress_admin, worker_admin] {
        let url = format!("http://127.0.0.1:{admin}/readyz");
        wait::until(&format!("{url} ready"), Duration::from_secs(30), async || {
            http.get(&url).send().await.is_ok_and(|r| r.status().is_success())
        })
        .await;
    }

    // The sender's own trace, which the ingress continues.
    let sender_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let body = serde_json::to_vec(&json!({
        "EventName": "granular-admin-relationship-approved",
        "ResourceUri": "https://partner.microsoft.com/granularAdminRelationships/rel-1",
    }))
    .expect("json");
    let mut request = http.post(format!("http://127.0.0.1:{port}/webhooks/partner-center")).body(body.clone());
    for (k, v) in pc.headers(&body) {
        request = request.header(k, v);
    }
    let answer = request.header("traceparent", format!("00-{sender_trace}-00f067aa0ba902b7-01")).send().await;
    let answer = answer.expect("POST").bytes().await.expect("answer");
    let answer: Value = serde_json::from_slice(&answer).expect("json answer");
    let event_id = answer["eventId"].as_str().expect("eventId").to_string();

    let enriched = bus
        .read(
            &format!("{}granular-admin-relationship-approved.enriched", config.broker.prefix),
            1,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(enriched.len(), 1, "the event came out enriched");
    let (trace, worker_span) = trace_and_span(enriched[0].headers.get("traceparent").expect("traceparent header"));
    assert_eq!(trace, sender_trace, "the enriched message continues the sender's trace");

    wait::until("both roles exported their span", Duration::from_secs(20), async || {
        let spans = otlp.spans();
        spans.iter().any(|s| s.name == "webhook") && spans.iter().any(|s| s.name == "event")
    })
    .await;
    let spans = otlp.spans();
    let webhook = spans.iter().find(|s| s.name == "webhook").expect("webhook span");
    let event = spans.iter().find(|s| s.name == "event").expect("event span");
    assert_eq!(webhook.service, "pcbridge-ingress");
    assert_eq!(event.service, "pcbridge-worker");
    assert_eq!(webhook.trace_id, sender_trace, "the ingress continues the sender's trace");
    assert_eq!(webhook.parent_span_id, "00f067aa0ba902b7", "the sender's span is the request's parent");
    assert_eq!(event.trace_id, sender_trace, "one trace id from the request to the worker");
    assert_eq!(event.parent_span_id, webhook.span_id, "the worker's span is a child of the request's");
    assert_eq!(event.span_id, worker_span, "the enriched message names the worker's span");
    for span in [webhook, event] {
        assert_eq!(span.attribute("event_id"), Some(event_id.as_str()), "{span:?}");
        assert_eq!(span.attribute("event_name"), Some("granular-admin-relationship-approved"), "{span:?}");
    }

    assert!(stop(worker).await.success(), "the worker exits cleanly");
    assert!(stop(ingress).await.success(), "the ingress exits cleanly");
    bus.cleanup(&config, &common::bus::output_queues(&config)).await;
}

on_both_brokers!(one_trace_from_request_to_enriched_message);
