//! `pcbridge forward` on both brokers, against three receivers on loopback: one
//! healthy, one answering 503 with `Retry-After` before 200, one always failing. Every
//! event reaches the first two (each verifiable against Partner Center's certificate),
//! the third's are dead-lettered for it alone while nothing else waits on it, `replay
//! --receiver` sends them to it alone, and a forwarder killed mid-forward loses nothing.

mod common;

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, response::IntoResponse, routing::post};
use common::{
    app::{WorkerProcess, broker_env, spawn_forwarder, spawn_ingress},
    bus::Bus,
    net,
    pc::Pc,
    wait,
};
use pcbridge::config::{BrokerKind, Config, ReceiverConfig};
use pcbridge::partner_center::signature::{SignatureHeaders, Verifier};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// How a stand-in receiver answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Healthy,
    /// 503 with `Retry-After: 1` the first time it sees an event, 200 after.
    Flaky,
    /// 500 with `Retry-After: 1`, always.
    Failing,
}

/// One request a receiver got.
#[derive(Clone, Debug)]
struct Hit {
    at: Instant,
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Hit {
    fn seq(&self) -> (String, u64) {
        let v: serde_json::Value = serde_json::from_slice(&self.body).expect("json");
        (v["ResourceUri"].as_str().unwrap_or_default().to_string(), v["Seq"].as_u64().unwrap_or(0))
    }
}

#[derive(Clone)]
struct Stand {
    mode: Arc<Mutex<Mode>>,
    delay: Duration,
    hits: Arc<Mutex<Vec<Hit>>>,
}

/// A receiver on loopback; its URL.
async fn receiver(mode: Mode, delay: Duration) -> (Stand, String) {
    let stand = Stand { mode: Arc::new(Mutex::new(mode)), delay, hits: Arc::default() };
    let app = Router::new().route("/hook", post(answer)).with_state(stand.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (stand, url)
}

async fn answer(State(s): State<Stand>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    tokio::time::sleep(s.delay).await;
    let mode = *s.mode.lock().expect("mode");
    let mut hits = s.hits.lock().expect("hits");
    let seen = hits.iter().any(|h| h.body == body);
    let status = match mode {
        Mode::Healthy => 200,
        Mode::Flaky if seen => 200,
        Mode::Flaky => 503,
        Mode::Failing => 500,
    };
    hits.push(Hit { at: Instant::now(), status, headers, body });
    let status = axum::http::StatusCode::from_u16(status).expect("status");
    (status, [("retry-after", if status.is_success() { "0" } else { "1" })], "")
}

impl Stand {
    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().expect("hits").clone()
    }

    /// Distinct bodies answered 2xx.
    fn delivered(&self) -> usize {
        let hits = self.hits();
        let mut bodies: Vec<&Bytes> = hits.iter().filter(|h| h.status == 200).map(|h| &h.body).collect();
        bodies.sort();
        bodies.dedup();
        bodies.len()
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().expect("mode") = mode;
    }
}

/// `resources` × `per_resource` numbered `subscription-updated` events, and one each of
/// `others`.
fn events(resources: usize, per_resource: u64, others: &[&str]) -> Vec<(String, Vec<u8>)> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut out = Vec::new();
    for seq in 1..=per_resource {
        for r in 0..resources {
            let body = format!(
                r#"{{"EventName":"subscription-updated","ResourceUri":"https://api.partnercenter.microsoft.com/v1/customers/c-{run}/subscriptions/s-{r}","ResourceName":"subscription","ResourceChangeUtcDate":"2026-12-04T10:00:00Z","Seq":{seq}}}"#
            );
            out.push(("subscription-updated".to_string(), body.into_bytes()));
        }
    }
    for name in others {
        let body = format!(
            r#"{{"EventName":"{name}","ResourceUri":"https://api.partnercenter.microsoft.com/engagements/v1/referrals/{run}","ResourceName":"referral","ResourceChangeUtcDate":"2026-12-04T10:00:00Z"}}"#
        );
        out.push((name.to_string(), body.into_bytes()));
    }
    out
}

fn receiver_config(url: &str, events: &[&str], signature_header: &str) -> ReceiverConfig {
    ReceiverConfig {
        url: url.to_string(),
        events: events.iter().map(|e| e.to_string()).collect(),
        timeout_ms: 5_000,
        signature_header: signature_header.to_string(),
        headers_file: String::new(),
    }
}

/// The forwarder settings of these tests: http on loopback, small retry budgets.
fn forwarding(config: &mut Config, receivers: &[(&str, ReceiverConfig)]) {
    config.forward.allow_http = true;
    config.forward.concurrency = 4;
    config.forward.max_attempts = 3;
    config.forward.retry_min_delay_ms = 50;
    config.forward.retry_max_delay_ms = 200;
    config.forward.max_retry_ms = 30_000;
    config.forward.group_id = format!("{}forward", config.broker.prefix);
    for (name, r) in receivers {
        config.forward.receivers.insert(name.to_string(), r.clone());
    }
}

/// The receivers' own destinations, created in the mock Kafka cluster.
fn create_receiver_topics(bus: &Bus, config: &Config) {
    let d = config.broker.destinations();
    let topics: Vec<String> =
        config.forward.receivers.keys().flat_map(|n| [d.forward(n), d.forward_dead_letter(n)]).collect();
    bus.create_topics(config, &topics);
}

/// Event bodies in the order each was first answered 2xx, by resource.
fn order_by_resource(hits: &[Hit]) -> BTreeMap<String, Vec<u64>> {
    let mut seen = Vec::new();
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for h in hits.iter().filter(|h| h.status == 200) {
        if seen.contains(&h.body) {
            continue;
        }
        seen.push(h.body.clone());
        let (resource, seq) = h.seq();
        if seq > 0 {
            out.entry(resource).or_default().push(seq);
        }
    }
    out
}

fn assert_in_order(who: &str, hits: &[Hit]) {
    for (resource, seqs) in order_by_resource(hits) {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{who}: {resource} out of order: {seqs:?}");
    }
}

async fn replay_receiver(config: &Config, name: &str) -> String {
    let mut cmd = common::app::pcbridge_command();
    cmd.args(["replay", "--receiver", name]).envs(broker_env(config));
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run")).await.expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "replay failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

async fn forwards_to_every_receiver(kind: BrokerKind) {
    let pc = Pc::new().await;
    let bus = Bus::new(kind).await;
    let (healthy, healthy_url) = receiver(Mode::Healthy, Duration::ZERO).await;
    let (flaky, flaky_url) = receiver(Mode::Flaky, Duration::ZERO).await;
    let (failing, failing_url) = receiver(Mode::Failing, Duration::ZERO).await;
    let mut config = bus.config(&pc);
    forwarding(
        &mut config,
        &[
            ("healthy", receiver_config(&healthy_url, &[], "authorization")),
            ("flaky", receiver_config(&flaky_url, &["subscription-updated"], "x-ms-signature")),
            ("failing", receiver_config(&failing_url, &[], "authorization")),
        ],
    );
    create_receiver_topics(&bus, &config);
    let d = config.broker.destinations();
    let app = spawn_ingress(config.clone()).await;
    let forwarder = spawn_forwarder(&config).await;

    let sent = events(4, 5, &["referral-created", "referral-updated"]);
    let subscription_events = sent.iter().filter(|(n, _)| n == "subscription-updated").count();
    for (name, body) in &sent {
        let (status, json) = app.post(body.clone(), &pc.headers(body)).await;
        assert_eq!(status, 200, "{name}: {json}");
    }
    let sent_at = Instant::now();
    wait::until("the healthy receiver has every event", Duration::from_secs(60), async || {
        healthy.delivered() == sent.len()
    })
    .await;
    wait::until("the flaky receiver has every subscription event", Duration::from_secs(60), async || {
        flaky.delivered() == subscription_events
    })
    .await;
    let dead = bus.peek(&d.forward_dead_letter("failing"), sent.len(), Duration::from_secs(60)).await;
    eprintln!(
        "{kind}: healthy {} requests, flaky {}, failing {}; {} dead letters for failing, {:?} after the posts",
        healthy.hits().len(),
        flaky.hits().len(),
        failing.hits().len(),
        dead.len(),
        sent_at.elapsed()
    );

    // Byte for byte, with Partner Center's headers, verifiable against its certificate.
    let verifier = Verifier::new(&config.signature).expect("verifier");
    let bodies: Vec<&[u8]> = sent.iter().map(|(_, b)| b.as_slice()).collect();
    for (who, stand, header) in [("healthy", &healthy, "authorization"), ("flaky", &flaky, "x-ms-signature")] {
        for hit in stand.hits() {
            assert!(bodies.contains(&hit.body.as_ref()), "{who}: a body that was not sent");
            let signature = hit.headers.get(header).and_then(|v| v.to_str().ok()).unwrap_or_default();
            assert_eq!(signature, pc.headers(&hit.body)[0].1, "{who}: the signature as Partner Center sent it");
            assert_eq!(hit.headers["x-ms-certificate-url"], pc.cert_url.as_str(), "{who}");
            assert_eq!(hit.headers["x-ms-signature-algorithm"], "rsa-sha256", "{who}");
            assert_eq!(hit.headers["content-type"], "application/json", "{who}");
            let parsed = SignatureHeaders::from_headers(&hit.headers).expect("signature headers");
            verifier.verify(&parsed, &hit.body).await.unwrap_or_else(|e| panic!("{who}: does not verify: {e}"));
        }
        assert_in_order(who, &stand.hits());
    }
    assert!(flaky.hits().iter().all(|h| h.seq().1 > 0), "the flaky receiver asked for subscription-updated only");
    // 503 then 200, not before its Retry-After.
    let flaky_hits = flaky.hits();
    for (i, first) in flaky_hits.iter().enumerate().filter(|(_, h)| h.status == 503) {
        let retry = flaky_hits[i + 1..].iter().find(|h| h.body == first.body).expect("retried");
        assert!(
            retry.at - first.at >= Duration::from_millis(950),
            "Retry-After: 1 honoured: {:?}",
            retry.at - first.at
        );
    }
    assert_eq!(flaky_hits.iter().filter(|h| h.status == 503).count(), subscription_events);

    // The failing receiver's events: dead-lettered for it alone, after 3 attempts each,
    // while the others were not held back.
    assert_eq!(dead.len(), sent.len(), "every event dead-lettered for the failing receiver");
    for m in &dead {
        assert_eq!(m.headers["pc-receiver"], "failing");
        assert_eq!(m.headers["pc-error-kind"], "retries-exhausted");
        assert_eq!(m.headers["pc-attempts"], "3");
        assert!(m.headers["pc-error"].contains("500"), "{}", m.headers["pc-error"]);
        assert!(bodies.contains(&m.body.as_slice()));
    }
    let failing_hits = failing.hits();
    assert_eq!(failing_hits.len(), 3 * sent.len(), "3 attempts per event");
    // Each receiver is measured from its own first request (on Kafka each joins its own
    // consumer group, not necessarily at the same moment): the healthy one took every
    // event in less time than the failing one needed to give up its first. Had the
    // healthy receiver waited on the failing one, its stream would have taken longer.
    let healthy_hits = healthy.hits();
    let healthy_span =
        healthy_hits.iter().map(|h| h.at).max().expect("hits") - healthy_hits.iter().map(|h| h.at).min().expect("hits");
    let failing_start = failing_hits.iter().map(|h| h.at).min().expect("hits");
    let first_give_up = {
        let mut third: Vec<Instant> = Vec::new();
        for (_, body) in &sent {
            let attempts: Vec<Instant> = failing_hits.iter().filter(|h| h.body == *body).map(|h| h.at).collect();
            third.push(attempts[2]);
        }
        third.into_iter().min().expect("attempts") - failing_start
    };
    eprintln!(
        "{kind}: the healthy receiver took every event in {healthy_span:?}; the failing one gave up its first after {first_give_up:?}"
    );
    assert!(healthy_span < first_give_up, "the healthy receiver was not held back by the failing one");
    for name in ["healthy", "flaky"] {
        assert!(
            bus.read(&d.forward_dead_letter(name), 1, Duration::from_secs(2)).await.is_empty(),
            "no dead letters for {name}"
        );
    }
    let metrics = forwarder.metrics.render();
    for line in [
        format!("pcbridge_forward_events_total{{outcome=\"delivered\",receiver=\"healthy\"}} {}", sent.len()),
        format!("pcbridge_forward_events_total{{outcome=\"dead_lettered\",receiver=\"failing\"}} {}", sent.len()),
        format!("pcbridge_forward_requests_total{{receiver=\"flaky\",result=\"5xx\"}} {subscription_events}"),
    ] {
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    if kind == BrokerKind::Rabbitmq {
        // The copies took nothing from the worker's queues.
        assert_eq!(bus.count_all(&config, &[]).await, sent.len(), "the raw queues still hold every event");
    }

    // Replayed once the receiver is fixed: to it alone.
    failing.set_mode(Mode::Healthy);
    let before = (healthy.hits().len(), flaky.hits().len());
    let report = replay_receiver(&config, "failing").await;
    assert!(report.contains(&format!("replayed {}", sent.len())), "{report}");
    wait::until("the failing receiver has every event after the replay", Duration::from_secs(60), async || {
        failing.delivered() == sent.len()
    })
    .await;
    assert_eq!((healthy.hits().len(), flaky.hits().len()), before, "a replay for one receiver reaches it alone");

    forwarder.stop().await.expect("forwarder stops cleanly");
    let cfg = app.config.clone();
    app.stop().await.expect("ingress stops");
    bus.cleanup(&cfg, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_to_every_receiver_kafka() {
    forwards_to_every_receiver(BrokerKind::Kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_to_every_receiver_rabbitmq() {
    forwards_to_every_receiver(BrokerKind::Rabbitmq).await;
}

/// A `pcbridge forward` process SIGKILLed while requests are in flight: another one
/// takes over, every event reaches the receiver, in order per resource; the duplicates
/// are counted.
async fn a_killed_forwarder_loses_nothing(kind: BrokerKind) {
    let pc = Pc::new().await;
    let bus = Bus::new(kind).await;
    let (slow, url) = receiver(Mode::Healthy, Duration::from_millis(40)).await;
    let mut config = bus.config(&pc);
    forwarding(&mut config, &[("slow", receiver_config(&url, &[], "authorization"))]);
    config.forward.concurrency = 2;
    create_receiver_topics(&bus, &config);
    let app = spawn_ingress(config.clone()).await;
    let port = net::closed_port().await;
    let mut first = WorkerProcess::spawn_forward(&config, port);
    net::wait_process_ready(&mut first.child, port, Duration::from_secs(30), "pcbridge forward").await;

    let sent = events(6, 10, &[]);
    for (name, body) in &sent {
        let (status, json) = app.post(body.clone(), &pc.headers(body)).await;
        assert_eq!(status, 200, "{name}: {json}");
    }
    wait::until("the first forwarder is under way", Duration::from_secs(60), async || slow.delivered() >= 15).await;
    first.kill();
    let at_kill = slow.delivered();
    let port = net::closed_port().await;
    let _second = WorkerProcess::spawn_forward(&config, port);
    wait::until("every event reached the receiver", Duration::from_secs(90), async || slow.delivered() == sent.len())
        .await;
    let hits = slow.hits();
    let mut per_body: HashMap<&Bytes, usize> = HashMap::new();
    for h in &hits {
        *per_body.entry(&h.body).or_default() += 1;
    }
    let duplicates: usize = per_body.values().map(|n| n - 1).sum();
    eprintln!(
        "{kind}: {} events, {at_kill} delivered before the kill, {} requests, {duplicates} duplicates",
        sent.len(),
        hits.len()
    );
    assert_eq!(per_body.len(), sent.len(), "0 lost");
    assert_in_order("slow", &hits);

    let cfg = app.config.clone();
    app.stop().await.expect("ingress stops");
    bus.cleanup(&cfg, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_forwarder_loses_nothing_kafka() {
    a_killed_forwarder_loses_nothing(BrokerKind::Kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_forwarder_loses_nothing_rabbitmq() {
    a_killed_forwarder_loses_nothing(BrokerKind::Rabbitmq).await;
}

/// Service Bus queues give no copy of a destination: the forwarder says so at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_is_refused_on_amqp() {
    let pc = Pc::new().await;
    let bus = Bus::new(BrokerKind::Amqp).await;
    let mut config = bus.config(&pc);
    forwarding(&mut config, &[("a", receiver_config("http://127.0.0.1:9/hook", &[], "authorization"))]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics = Arc::new(pcbridge::telemetry::Metrics::new());
    let shutdown = pcbridge::shutdown::CancellationToken::new();
    let e =
        pcbridge::forward::start(&config, "test", listener, metrics, shutdown).await.expect_err("refused on AMQP 1.0");
    assert!(e.to_string().contains("AMQP 1.0"), "{e}");
}
