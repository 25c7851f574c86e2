//! The broker going away, certificate caching and rotation, readiness, and shutdown.

mod common;

use common::{
    app::{TestApp, spawn_ingress},
    bus::{Bus, rabbitmq::RABBITMQ_ADDR},
    net::{self, CertMode},
    pc::{Pc, signed_headers},
};
use pcbridge::config::BrokerKind;
use std::time::{Duration, Instant};

const EVENT: &[u8] = br#"{"EventName":"subscription-updated","ResourceUri":"https://api.partnercenter.microsoft.com/v1/customers/c/subscriptions/s","AuditUri":null}"#;

/// POSTs until the answer is 200 (or `within` passes); returns the statuses seen.
async fn post_until_ok(app: &TestApp, body: &[u8], headers: &[(&'static str, String)], within: Duration) -> Vec<u16> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let (status, _) = app.post(body.to_vec(), headers).await;
        seen.push(status);
        if status == 200 || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_broker_down_gives_503_then_recovers() {
    let pc = Pc::new().await;
    let bus = Bus::new(BrokerKind::Kafka).await;
    let app = spawn_ingress(bus.config(&pc)).await;
    let headers = pc.headers(EVENT);
    assert_eq!(app.post(EVENT.to_vec(), &headers).await.0, 200);
    let Bus::Kafka(mock) = &bus else { unreachable!() };
    mock.broker_down(1).expect("broker down");
    let started = Instant::now();
    let (status, json) = app.post(EVENT.to_vec(), &headers).await;
    assert_eq!(status, 503, "{json}");
    assert!(started.elapsed() < Duration::from_secs(5), "answered within the publish timeout, not hung");
    mock.broker_up(1).expect("broker up");
    let seen = post_until_ok(&app, EVENT, &headers, Duration::from_secs(20)).await;
    assert_eq!(seen.last(), Some(&200), "the same request succeeds once the broker is back: {seen:?}");
    // Two 2xx answers → both events are there; the 503 one may or may not be (in doubt).
    let all = bus.read_all(&app.config, &[], 2, Duration::from_secs(10)).await;
    assert!(all.len() >= 2, "every 2xx event is stored: got {}", all.len());
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_unreachable_gives_503_then_recovers() {
    unreachable_gives_503_then_recovers(BrokerKind::Rabbitmq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_unreachable_gives_503_then_recovers() {
    unreachable_gives_503_then_recovers(BrokerKind::Amqp).await;
}

/// RabbitMQ, over AMQP 0-9-1 or 1.0, cut off by a proxy and let back.
async fn unreachable_gives_503_then_recovers(kind: BrokerKind) {
    let pc = Pc::new().await;
    let bus = Bus::new(kind).await;
    let proxy = net::Proxy::start(RABBITMQ_ADDR).await;
    let mut config = bus.config(&pc);
    config.rabbitmq.url = format!("amqp://{}/%2f", proxy.addr);
    config.amqp.url = format!("amqp://{}", proxy.addr);
    let app = spawn_ingress(config).await;
    let headers = pc.headers(EVENT);
    assert_eq!(app.post(EVENT.to_vec(), &headers).await.0, 200);

    proxy.cut();
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.readyz().await == 200 {
        assert!(Instant::now() < deadline, "/readyz must turn 503 when the broker is gone");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let (status, json) = app.post(EVENT.to_vec(), &headers).await;
    assert_eq!((status, json["error"].as_str()), (503, Some("broker_unavailable")), "{json}");
    assert!(started.elapsed() < Duration::from_secs(1), "fails fast while disconnected");
    assert_eq!(app.readyz().await, 503);

    proxy.restore();
    app.wait_ready(Duration::from_secs(15)).await;
    let seen = post_until_ok(&app, EVENT, &headers, Duration::from_secs(10)).await;
    assert_eq!(seen.last(), Some(&200), "{seen:?}");
    let config = app.config.clone();
    let all = bus.read_all(&config, &[], 2, Duration::from_secs(10)).await;
    assert_eq!(all.len(), 2, "the two 2xx events, and not the 503 one");
    app.stop().await.expect("clean stop");
    bus.cleanup(&config, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_cache_host_down_and_rotation() {
    let pc = Pc::new().await;
    let bus = Bus::new(BrokerKind::Rabbitmq).await;
    let mut config = bus.config(&pc);
    config.signature.refetch_min_interval_secs = 0;
    let app = spawn_ingress(config).await;

    // Concurrent first requests share one download; later ones hit the cache.
    let bodies: Vec<Vec<u8>> =
        (0..8).map(|i| format!(r#"{{"EventName":"test-created","N":{i}}}"#).into_bytes()).collect();
    let headers: Vec<_> = bodies.iter().map(|b| pc.headers(b)).collect();
    let posts = bodies.iter().zip(&headers).map(|(b, h)| app.post(b.clone(), h));
    for (status, json) in futures::future::join_all(posts).await {
        assert_eq!(status, 200, "{json}");
    }
    assert_eq!(pc.certs.hits(), 1, "one download for concurrent misses");

    // Certificate host down while cached: verification keeps working.
    pc.certs.set_mode(CertMode::Status(500));
    let (status, _) = app.post(EVENT.to_vec(), &pc.headers(EVENT)).await;
    assert_eq!(status, 200);
    assert_eq!(pc.certs.hits(), 1);

    // Rotation: a new certificate and key behind the same URL.
    pc.certs.set_mode(CertMode::Serve);
    let rotated = pc.ca.signing_cert(1, -1, 30);
    pc.certs.put("pcnotifications-dispatch.test.cer", rotated.der.clone());
    let (status, json) = app.post(EVENT.to_vec(), &signed_headers(&rotated.signer, &pc.cert_url, EVENT)).await;
    assert_eq!(status, 200, "a failure with the cached certificate refetches once: {json}");
    assert_eq!(pc.certs.hits(), 2);
    let metrics = app.metrics_text().await;
    assert!(metrics.contains("pcbridge_certificate_cache_total{result=\"refetch\"} 1"), "{metrics}");
    assert!(metrics.contains("pcbridge_certificate_cache_total{result=\"miss\"}"));
    assert!(metrics.contains("pcbridge_certificate_cache_total{result=\"hit\"}"));
    let config = app.config.clone();
    app.stop().await.expect("clean stop");
    bus.cleanup(&config, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_signatures_do_not_hammer_the_certificate_host() {
    let pc = Pc::new().await;
    let bus = Bus::new(BrokerKind::Rabbitmq).await;
    let app = spawn_ingress(bus.config(&pc)).await; // default refetch interval: 60 s
    assert_eq!(app.post(EVENT.to_vec(), &pc.headers(EVENT)).await.0, 200);
    let forged = pc.headers(br#"{"EventName":"something-else"}"#);
    for _ in 0..10 {
        assert_eq!(app.post(EVENT.to_vec(), &forged).await.0, 401);
    }
    assert_eq!(pc.certs.hits(), 1, "bad signatures against a fresh cached certificate never refetch");
    let config = app.config.clone();
    app.stop().await.expect("clean stop");
    bus.cleanup(&config, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    let pc = Pc::new().await;
    let bus = Bus::new(BrokerKind::Kafka).await;
    let app = spawn_ingress(bus.config(&pc)).await;
    let healthz = app.http.get(format!("{}/healthz", app.admin)).send().await.expect("healthz");
    assert_eq!(healthz.status(), 200);
    assert_eq!(app.readyz().await, 200);
    assert_eq!(app.post(EVENT.to_vec(), &pc.headers(EVENT)).await.0, 200);
    assert_eq!(app.post(b"{}".to_vec(), &[]).await.0, 401);
    let metrics = app.metrics_text().await;
    for line in [
        "pcbridge_ingress_requests_total{outcome=\"published\"} 1",
        "pcbridge_ingress_requests_total{outcome=\"unauthorized\"} 1",
        "pcbridge_ingress_events_total{event_name=\"subscription-updated\"} 1",
        "pcbridge_ingress_in_flight_requests 0",
        "pcbridge_publish_duration_seconds_count{broker=\"kafka\",result=\"ok\"} 1",
        "pcbridge_certificate_fetches_total{result=\"ok\"} 1",
        "pcbridge_broker_ready{broker=\"kafka\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    // The webhook listener does not serve admin paths, and vice versa.
    let not_here = app.http.get(app.url.replace("/webhooks/partner-center", "/metrics")).send().await.expect("get");
    assert_eq!(not_here.status(), 404);
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests() {
    let pc = Pc::new().await;
    let bus = Bus::new(BrokerKind::Kafka).await;
    let mut config = bus.config(&pc);
    config.ingress.publish_timeout_ms = 4_000;
    let app = spawn_ingress(config).await;
    assert_eq!(app.post(EVENT.to_vec(), &pc.headers(EVENT)).await.0, 200, "warm up");
    let Bus::Kafka(mock) = &bus else { unreachable!() };
    mock.broker_round_trip_time(1, Duration::from_millis(1_000)).expect("rtt");

    let body = br#"{"EventName":"referral-created","ResourceUri":"https://api.partnercenter.microsoft.com/engagements/v1/referrals/r1"}"#;
    let request = {
        let (http, url, headers) = (app.http.clone(), app.url.clone(), pc.headers(body));
        tokio::spawn(async move {
            let mut req = http.post(url).body(body.to_vec());
            for (k, v) in headers {
                req = req.header(k, v);
            }
            req.send().await.map(|r| r.status().as_u16())
        })
    };
    // In flight at the broker: its signature was verified against the cached certificate
    // (the warm-up cached it), after which only the publish remains. No sleep decides it.
    let verified = Instant::now();
    while app.metrics.certificate_cache.with_label_values(&["hit"]).get() < 1 {
        assert!(verified.elapsed() < Duration::from_secs(5), "the request never reached the publish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let url = app.url.clone();
    let config = app.config.clone();
    let started = Instant::now();
    app.stop().await.expect("drained cleanly");
    assert!(started.elapsed() < Duration::from_secs(6), "within the drain deadline");
    let status = request.await.expect("task").expect("the in-flight request is answered");
    assert_eq!(status, 200, "in-flight requests still get their confirm");
    assert!(reqwest::Client::new().post(url).body("{}").send().await.is_err(), "no longer accepting");
    mock.broker_round_trip_time(1, Duration::ZERO).expect("rtt");
    let all = bus.read_all(&config, &[], 2, Duration::from_secs(10)).await;
    assert_eq!(all.len(), 2, "the warm-up event and the one answered during shutdown");
}

/// AMQP 1.0: a transfer the broker does not accept is not stored, and is answered 503 so
/// that Partner Center sends it again. RabbitMQ refuses a message to a full queue that
/// rejects publishes (`x-overflow: reject-publish`); once there is room, the same event
/// is accepted on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_refused_transfer_gives_503() {
    use lapin::{options::QueueDeclareOptions, types::AMQPValue, types::FieldTable};
    let pc = Pc::new().await;
    let bus = Bus::new(BrokerKind::Amqp).await;
    let mut config = bus.config(&pc);
    // The operator's queue, at an address that does not declare it.
    config.amqp.address = "/amq/queue/{destination}".into();
    let raw = config.broker.destinations().raw("subscription-updated");
    let Bus::Amqp(rabbit) = &bus else { unreachable!() };
    let channel = rabbit.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(raw.as_str().into(), durable, args).await.expect("declare");
    let app = spawn_ingress(config).await;

    let first = br#"{"EventName":"subscription-updated","ResourceUri":"https://api.partnercenter.microsoft.com/v1/customers/c/subscriptions/1"}"#;
    assert_eq!(app.post(first.to_vec(), &pc.headers(first)).await.0, 200);
    // The queue is full: refused, not stored, 503. (RabbitMQ 3.10's plugin sends no
    // outcome for it at all: the publish times out, and the silent connection is replaced.)
    let (status, json) = app.post(EVENT.to_vec(), &pc.headers(EVENT)).await;
    assert_eq!(status, 503, "{json}");
    assert!(["broker_unavailable", "broker_timeout"].contains(&json["error"].as_str().unwrap_or_default()), "{json}");
    // (Read through AMQP 0-9-1: the reader's `/queue/` address would declare the queue
    // without its arguments.)
    let held = common::bus::rabbitmq::read(rabbit, &raw, 10, Duration::from_secs(1)).await;
    assert_eq!(held.len(), 1, "only the accepted event is stored");
    // Room again (the read took the first): Partner Center's retry is accepted.
    let seen = post_until_ok(&app, EVENT, &pc.headers(EVENT), Duration::from_secs(10)).await;
    assert_eq!(seen.last(), Some(&200), "{seen:?}");
    let stored = common::bus::rabbitmq::read(rabbit, &raw, 10, Duration::from_secs(1)).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].body, EVENT);
    let config = app.config.clone();
    app.stop().await.expect("clean stop");
    bus.cleanup(&config, &[]).await;
}
