//! The worker under API faults: what is retried, how long it waits, what is
//! dead-lettered, and what is never requested at all.

mod common;

use common::{
    app::{TestWorker, spawn_ingress, spawn_worker, worker_config},
    bus::{Bus, Received, on_both_brokers, output_queues},
    net,
    pc::Pc,
    pc_api::{self, PcApi, Reply},
    wait,
};
use pcbridge::config::BrokerKind;
use serde_json::{Value, json};
use std::{collections::HashMap, time::Duration};

const PC: &str = "https://api.partnercenter.microsoft.com";

fn event(name: &str, resource_uri: &str, n: u32) -> Vec<u8> {
    serde_json::to_vec(&json!({ "EventName": name, "ResourceUri": resource_uri, "AuditUri": null, "N": n })).unwrap()
}

async fn faults(kind: BrokerKind) {
    let pc = Pc::new().await;
    let bus = Bus::new(kind).await;
    let api = PcApi::start().await;
    let tripwire = net::Tripwire::start().await;
    let mut config = worker_config(bus.config(&pc), &api);
    config.partner_center.request_timeout_ms = 500;
    let app = spawn_ingress(config.clone()).await;

    let paths = [
        "/v1/customers/dupres",
        "/v1/customers/storm",
        "/v1/customers/fail500",
        "/v1/customers/deny403",
        "/v1/customers/bad400",
        "/v1/customers/slow",
    ];
    for p in paths {
        api.put(p, json!({ "id": p }));
    }
    api.script(
        "/v1/customers/storm",
        vec![Reply::RetryAfter(429, 1), Reply::RetryAfter(429, 1), Reply::RetryAfter(503, 1)],
    );
    api.script("/v1/customers/fail500", vec![Reply::Status(500); 10]);
    api.script("/v1/customers/deny403", vec![Reply::Status(403)]);
    api.script("/v1/customers/bad400", vec![Reply::Status(400)]);
    api.script("/v1/customers/slow", vec![Reply::Slow(Duration::from_millis(1_500)), Reply::Drop]);

    // (label, body)
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("storm", event("subscription-updated", &format!("{PC}/v1/customers/storm"), 1)),
        ("fail500", event("subscription-updated", &format!("{PC}/v1/customers/fail500"), 2)),
        ("deny403", event("subscription-updated", &format!("{PC}/v1/customers/deny403"), 3)),
        ("bad400", event("subscription-updated", &format!("{PC}/v1/customers/bad400"), 4)),
        ("gone", event("subscription-updated", &format!("{PC}/v1/customers/gone"), 5)),
        ("slow", event("subscription-updated", &format!("{PC}/v1/customers/slow"), 6)),
        ("tripwire", event("subscription-updated", &format!("http://{}/v1/customers/x", tripwire.addr), 7)),
        ("evil", event("referral-created", "https://evil.example/engagements/v1/referrals/r", 8)),
        (
            "gdap-elsewhere",
            event("granular-admin-relationship-approved", "https://partner.microsoft.com/not/a/relationship", 9),
        ),
        ("dup", event("referral-updated", &format!("{PC}/v1/customers/dupres"), 10)),
    ];
    let mut ids = HashMap::new();
    for (label, body) in &cases {
        let (status, json) = app.post(body.clone(), &pc.headers(body)).await;
        assert_eq!(status, 200, "{label}: {json}");
        ids.insert(json["eventId"].as_str().unwrap().to_string(), *label);
    }
    // The duplicate: Partner Center delivering the same event again.
    let dup = &cases.last().unwrap().1;
    assert_eq!(app.post(dup.clone(), &pc.headers(dup)).await.0, 200);

    let worker = spawn_worker(&config).await;
    let outputs = output_queues(&config);
    let got = bus.read_from(&outputs, cases.len(), Duration::from_secs(40)).await;
    let by_label: HashMap<&str, Vec<&Received>> = got.iter().fold(HashMap::new(), |mut m, r| {
        m.entry(ids[&r.headers["pc-event-id"]]).or_default().push(r);
        m
    });
    let one = |label: &str| -> &Received {
        let v = by_label.get(label).unwrap_or_else(|| panic!("{label}: no output"));
        assert_eq!(v.len(), 1, "{label}: exactly one output");
        v[0]
    };
    let envelope = |label: &str| -> Value {
        let m = one(label);
        assert!(m.destination.ends_with(".enriched"), "{label} went to {}: {:?}", m.destination, m.headers);
        serde_json::from_slice(&m.body).unwrap()
    };
    let dead = |label: &str, kind: &str, attempts: &str| {
        let m = one(label);
        assert!(m.destination.ends_with("dead-letter"), "{label} went to {}", m.destination);
        assert_eq!(m.headers["pc-error-kind"], kind, "{label}: {}", m.headers["pc-error"]);
        assert_eq!(m.headers["pc-attempts"], attempts, "{label}");
        assert!(!m.headers["pc-error"].is_empty() && !m.headers["pc-error"].contains('\n'));
        let body = &cases.iter().find(|(l, _)| *l == label).unwrap().1;
        assert_eq!(&m.body, body, "{label}: the raw body, unchanged");
        assert!(m.headers.contains_key("pc-signature"), "{label}: the raw headers are kept");
    };

    // 429/503 storm: Retry-After honoured (measured between attempts), then enriched.
    let env = envelope("storm");
    assert_eq!(
        (env["enrichment"]["status"].as_str(), env["enrichment"]["attempts"].as_u64()),
        (Some("enriched"), Some(4))
    );
    let storm = api.requests_to("/v1/customers/storm");
    let first_four: Vec<_> = storm.iter().take(4).collect();
    for pair in first_four.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(950), "Retry-After: 1 honoured, waited {gap:?}");
    }
    let request_ids: Vec<&String> = first_four.iter().map(|r| &r.headers["ms-requestid"]).collect();
    assert!(request_ids.windows(2).all(|w| w[0] == w[1]), "MS-RequestId stable across retries of one call");
    let correlation: std::collections::HashSet<&String> =
        first_four.iter().map(|r| &r.headers["ms-correlationid"]).collect();
    assert_eq!(correlation.len(), 4, "a new MS-CorrelationId per attempt");

    // 5xx: retried up to the budget, then dead-lettered.
    dead("fail500", "retries-exhausted", "4");
    assert_eq!(api.requests_to("/v1/customers/fail500").len(), 4);
    // 403 / 400: dead-lettered without a retry.
    dead("deny403", "permanent", "1");
    dead("bad400", "permanent", "1");
    assert_eq!(api.requests_to("/v1/customers/deny403").len(), 1);
    assert_eq!(api.requests_to("/v1/customers/bad400").len(), 1);
    // 404: a result.
    let env = envelope("gone");
    assert_eq!(env["enrichment"]["status"], "resource-gone");
    assert_eq!(env["resource"], Value::Null);
    // A timeout, then a dropped connection, then success.
    let env = envelope("slow");
    assert_eq!(
        (env["enrichment"]["status"].as_str(), env["enrichment"]["attempts"].as_u64()),
        (Some("enriched"), Some(3))
    );
    // Foreign hosts: dead-lettered, never contacted.
    dead("tripwire", "foreign-host", "0");
    dead("evil", "foreign-host", "0");
    dead("gdap-elsewhere", "unresolvable-uri", "0");
    assert_eq!(tripwire.connections(), 0, "no request to a host outside the allow-list");
    assert!(api.requests().iter().all(|r| !r.path.contains("referrals")), "evil.example's path never reached any host");
    // The duplicate delivery was not enriched twice.
    one("dup");
    // Tokens are cached: one per grant and scope.
    let tokens = api.token_requests();
    assert!(tokens.len() <= 2, "{tokens:?}");

    let metrics = worker.metrics.render();
    for line in [
        "pcbridge_dead_letters_total{error_kind=\"foreign-host\"} 2",
        "pcbridge_dead_letters_total{error_kind=\"permanent\"} 2",
        "pcbridge_dead_letters_total{error_kind=\"retries-exhausted\"} 1",
        "pcbridge_worker_events_total{event_name=\"referral-updated\",outcome=\"duplicate\"} 1",
        "pcbridge_worker_events_total{event_name=\"subscription-updated\",outcome=\"resource_gone\"} 1",
        "pcbridge_worker_in_flight_events 0",
    ] {
        assert!(metrics.contains(line), "missing {line:?}\n{metrics}");
    }
    assert!(!metrics.contains(pc_api::CLIENT_SECRET) && !metrics.contains(pc_api::REFRESH_TOKEN));

    worker.stop().await.expect("worker stops");
    let cfg = app.config.clone();
    app.stop().await.expect("ingress stops");
    bus.cleanup(&cfg, &outputs).await;
}

on_both_brokers!(faults);

/// The token endpoint failing for a while delays enrichment; it does not lose events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_failing_for_a_while() {
    let pc = Pc::new().await;
    let bus = Bus::new(BrokerKind::Rabbitmq).await;
    let api = PcApi::start().await;
    let mut config = worker_config(bus.config(&pc), &api);
    config.worker.max_attempts = 6;
    let app = spawn_ingress(config.clone()).await;
    api.put("/v1/customers/c1", json!({ "id": "c1" }));
    api.fail_token_endpoint(3);
    let body = event("subscription-updated", &format!("{PC}/v1/customers/c1"), 1);
    assert_eq!(app.post(body.clone(), &pc.headers(&body)).await.0, 200);
    let worker = spawn_worker(&config).await;
    let outputs = output_queues(&config);
    let got = bus.read_from(&outputs, 1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1);
    let env: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(
        (env["enrichment"]["status"].as_str(), env["enrichment"]["attempts"].as_u64()),
        (Some("enriched"), Some(4))
    );
    assert_eq!(api.token_requests().len(), 4, "three failures, then one token");
    assert_eq!(api.requests_to("/v1/customers/c1").len(), 1, "no API request without a token");
    assert!(
        worker
            .metrics
            .render()
            .contains("pcbridge_token_requests_total{grant=\"client_credentials\",result=\"error\"} 3")
    );
    worker.stop().await.expect("worker stops");
    let cfg = app.config.clone();
    app.stop().await.expect("ingress stops");
    bus.cleanup(&cfg, &outputs).await;
}

/// An enriched message the broker refuses (here: larger than the producer's
/// message.max.bytes) becomes a dead letter instead of blocking its lane forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_enriched_message_is_dead_lettered() {
    let pc = Pc::new().await;
    let bus = Bus::new(BrokerKind::Kafka).await;
    let api = PcApi::start().await;
    let config = worker_config(bus.config(&pc), &api);
    let app = spawn_ingress(config.clone()).await;
    api.put("/v1/customers/huge", json!({ "blob": "x".repeat(20_000) }));
    api.put("/v1/customers/small", json!({ "id": "small" }));
    let huge = event("subscription-updated", &format!("{PC}/v1/customers/huge"), 1);
    let small = event("subscription-updated", &format!("{PC}/v1/customers/small"), 2);
    for body in [&huge, &small] {
        assert_eq!(app.post(body.clone(), &pc.headers(body)).await.0, 200);
    }
    let mut worker_config = config.clone();
    worker_config.kafka.properties.insert("message.max.bytes".into(), "4000".into());
    let worker = spawn_worker(&worker_config).await;
    let outputs = output_queues(&config);
    let got = bus.read_from(&outputs, 2, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 2, "{:?}", got.iter().map(|m| &m.destination).collect::<Vec<_>>());
    let dead: Vec<&Received> = got.iter().filter(|m| m.destination.ends_with("dead-letter")).collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].headers["pc-error-kind"], "publish-refused");
    assert_eq!(dead[0].body, huge, "the raw event is kept");
    assert!(got.iter().any(|m| m.destination.ends_with(".enriched")), "the next event is not blocked");
    worker.stop().await.expect("worker stops");
    app.stop().await.expect("ingress stops");
}

/// Waits until the worker's `/readyz` answers `want`; how long that took.
async fn readyz_turns(worker: &TestWorker, want: u16, within: Duration) -> Duration {
    wait::until(&format!("the worker's /readyz answers {want}"), within, async || worker.readyz().await == want).await
}

/// `/readyz` on Kafka means "the cluster answers" (docs/http-interface.md): it turns 503 when the only
/// broker goes down and 200 again when it is back, although the consumer keeps its
/// partitions throughout (no rebalance happens to announce the recovery). It is ready
/// before the group's first assignment, which the broker delays by
/// `group.initial.rebalance.delay.ms` (3 s on the mock cluster, as on Kafka).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_readiness_follows_the_cluster() {
    let pc = Pc::new().await;
    let bus = Bus::new(BrokerKind::Kafka).await;
    let api = PcApi::start().await;
    let config = worker_config(bus.config(&pc), &api);
    let worker = spawn_worker(&config).await;
    let first = readyz_turns(&worker, 200, Duration::from_secs(10)).await;
    assert!(first < Duration::from_millis(2500), "ready once connected, not after the first assignment: {first:?}");

    let Bus::Kafka(mock) = &bus else { unreachable!() };
    mock.broker_down(1).expect("broker down");
    readyz_turns(&worker, 503, Duration::from_secs(10)).await;
    mock.broker_up(1).expect("broker up");
    readyz_turns(&worker, 200, Duration::from_secs(10)).await;
    worker.stop().await.expect("worker stops");
}
