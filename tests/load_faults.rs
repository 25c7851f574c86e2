//! The guarantees of docs/message-contract.md under the conditions they exist for: a steady load of signed events
//! through a real ingress and worker while faults are injected, then an account of every
//! event answered 2xx (found in the raw destination, and enriched or dead-lettered).
//! `make test` runs a short version; `make soak` sets PCBRIDGE_SOAK_EVENTS for a long one.

mod common;

use common::{
    bus::Bus,
    load::{Rig, assert_nothing_lost, events_per_scenario},
};
use pcbridge::config::{BrokerKind, Secret};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::{process::Command, time::Duration};

const RATE: f64 = 200.0;

/// The load's duration in seconds, for placing faults inside it.
fn span(n: usize) -> f64 {
    n as f64 / RATE
}

/// Waits `secs` on the load's clock. Not an ordering sleep: the load is paced by time
/// (RATE a second), so a moment is a place in the load, and how long a fault lasts is
/// part of the scenario (docs/RELIABILITY.md gives each one's timing).
async fn at(secs: f64) {
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_broker_faults_under_load() {
    let mock = rdkafka::mocking::MockCluster::new(3).expect("mock cluster");
    let bootstrap = mock.bootstrap_servers();
    let rig = Rig::start(Bus::Kafka(mock), |_| {}).await;
    let Bus::Kafka(mock) = &rig.bus else { unreachable!() };
    let raw = rig.config.broker.destinations().raw("subscription-updated");
    let n = events_per_scenario(1200);
    let t = span(n);
    // Each fault in turn. (Produce request errors have their own scenario below; a
    // leader-less partition is not injected: `partition_leader(…, None)` crashes the mock.)
    let faults = async {
        use RDKafkaRespErr::*;
        at(t * 0.2).await;
        mock.request_errors(RDKafkaApiKey::OffsetCommit, &[RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE; 5]);
        for b in 1..=3 {
            mock.broker_round_trip_time(b, Duration::from_millis(300)).expect("rtt");
        }
        at(t * 0.15).await;
        for b in 1..=3 {
            mock.broker_round_trip_time(b, Duration::ZERO).expect("rtt");
        }
        // Leader elections: partition 0 moves to broker 3, partition 1 to broker 1.
        mock.partition_leader(&raw, 0, Some(3)).expect("leader moved");
        mock.partition_leader(&raw, 1, Some(1)).expect("leader moved");
        at(t * 0.1).await;
        // Partition 1's leader goes down for longer than the ingress's publish timeout
        // (2 s): requests get 503 and are retried.
        mock.broker_down(1).expect("down");
        at(3.0).await;
        mock.broker_up(1).expect("up");
    };
    let (sent, ()) = tokio::join!(rig.load(n, RATE), faults);
    let report = rig.account(&sent, Duration::from_secs(90)).await;
    println!("worker finished {} events by its metrics", rig.worker_finished());
    assert_nothing_lost(&format!("kafka broker faults ({bootstrap})"), &sent, &report);
    assert!(sent.refusals > 0, "the faults were felt: some requests were answered 503 and retried");
    rig.finish().await;
}

/// A RabbitMQ user of this test's own, so that closing its connections from the server
/// touches no other test.
fn rabbitmq_user(name: &str) {
    let ctl = |args: &[&str]| {
        let out = Command::new("rabbitmqctl").args(args).output().expect("rabbitmqctl is installed with RabbitMQ");
        assert!(
            out.status.success() || String::from_utf8_lossy(&out.stderr).contains("already exists"),
            "{args:?}: {out:?}"
        );
    };
    ctl(&["add_user", name, "load-test-password"]);
    ctl(&["set_permissions", "-p", "/", name, ".*", ".*", ".*"]);
}

/// Closes, from the server side, every connection of `user`; returns how many.
fn close_connections_of(user: &str) -> usize {
    let out =
        Command::new("rabbitmqctl").args(["list_connections", "pid", "user", "--quiet"]).output().expect("rabbitmqctl");
    let text = String::from_utf8_lossy(&out.stdout);
    let pids: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, u)| u.trim() == user)
        .map(|(pid, _)| pid.trim())
        .collect();
    for pid in &pids {
        let _ = Command::new("rabbitmqctl").args(["close_connection", pid, "load test: server-side close"]).output();
    }
    pids.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_connections_closed_by_the_server_under_load() {
    let user = format!("pcbridge-load-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    rabbitmq_user(&user);
    let rig = Rig::start(Bus::new(BrokerKind::Rabbitmq).await, |c| {
        c.rabbitmq.username = user.clone();
        c.rabbitmq.password = Secret::new("load-test-password");
    })
    .await;
    let n = events_per_scenario(1200);
    let t = span(n);
    let faults = async {
        let mut closed = 0;
        for _ in 0..2 {
            at(t * 0.3).await;
            let u = user.clone();
            closed += tokio::task::spawn_blocking(move || close_connections_of(&u)).await.expect("join");
        }
        closed
    };
    let (sent, closed) = tokio::join!(rig.load(n, RATE), faults);
    assert!(closed >= 2, "the ingress's and the worker's connections were closed ({closed})");
    let report = rig.account(&sent, Duration::from_secs(90)).await;
    assert_nothing_lost("rabbitmq connections closed by the server", &sent, &report);
    rig.finish().await;
    let _ = Command::new("rabbitmqctl").args(["delete_user", &user]).output();
}

/// AMQP 1.0 (the protocol of Azure Service Bus), against RabbitMQ's AMQP 1.0 plugin:
/// the ingress's and the worker's connections, which go through a proxy of this test's
/// own, are killed twice mid-load (both sockets closed at once, as a load balancer or a
/// broker node going away does), and they reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_connections_killed_under_load() {
    let proxy = common::net::Proxy::start(common::bus::rabbitmq::RABBITMQ_ADDR).await;
    let url = format!("amqp://{}", proxy.addr);
    let rig = Rig::start(Bus::new(BrokerKind::Amqp).await, |c| c.amqp.url = url.clone()).await;
    let n = events_per_scenario(1200);
    let t = span(n);
    let faults = async {
        for _ in 0..2 {
            at(t * 0.3).await;
            proxy.cut();
            proxy.restore();
        }
    };
    let (sent, ()) = tokio::join!(rig.load(n, RATE), faults);
    let report = rig.account(&sent, Duration::from_secs(90)).await;
    assert_nothing_lost("amqp 1.0 connections killed", &sent, &report);
    assert!(sent.refusals > 0, "the kills were felt: some requests were answered 503 and retried");
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_center_api_chaos_under_load() {
    let rig = Rig::start(Bus::new(BrokerKind::Rabbitmq).await, |c| {
        c.partner_center.request_timeout_ms = 1_000;
        c.worker.concurrency = 64;
    })
    .await;
    // One API request in five fails (500, 429 with Retry-After, 1.5 s answers, dropped
    // connections), and the token endpoint is down at first.
    rig.api.set_chaos(20);
    rig.api.fail_token_endpoint(3);
    let n = events_per_scenario(1000);
    let sent = rig.load(n, RATE).await;
    let report = rig.account(&sent, Duration::from_secs(120)).await;
    assert_nothing_lost("partner center API chaos (20 % faults) and token endpoint down", &sent, &report);
    rig.finish().await;
}

/// Restarts the shared RabbitMQ, so it runs alone: `make test` runs it in a step of its
/// own after the suite (`cargo nextest run --run-ignored only`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the shared RabbitMQ; run alone by `make test` (see the Makefile)"]
async fn rabbitmq_restarted_under_load() {
    let rig = Rig::start(Bus::new(BrokerKind::Rabbitmq).await, |_| {}).await;
    let n = events_per_scenario(1200);
    let t = span(n);
    let restart = async {
        at(t * 0.3).await;
        tokio::task::spawn_blocking(|| {
            let stop = Command::new("rabbitmqctl").arg("stop_app").output().expect("rabbitmqctl");
            assert!(stop.status.success(), "{stop:?}");
            // The outage's length is the scenario ("stop_app, 2 s, start_app"), not an ordering.
            std::thread::sleep(Duration::from_secs(2));
            let start = Command::new("rabbitmqctl").arg("start_app").output().expect("rabbitmqctl");
            assert!(start.status.success(), "{start:?}");
        })
        .await
        .expect("restart");
    };
    let (sent, ()) = tokio::join!(rig.load(n, RATE), restart);
    // The test's own connection died with the broker: account through a new one.
    let rig = rig.reconnect_bus().await;
    let report = rig.account(&sent, Duration::from_secs(120)).await;
    assert_nothing_lost("rabbitmq restarted (stop_app, 2 s, start_app)", &sent, &report);
    assert!(sent.refusals > 0, "the restart was felt");
    rig.finish().await;
}

/// The ingress process SIGKILLed twice while requests are in flight, and restarted on
/// the same port: the killed requests never got a 2xx (the sender retries them, as
/// Partner Center would), and every event that did is on the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_killed_with_requests_in_flight() {
    let pc = common::pc::Pc::new().await;
    let bus = Bus::new(BrokerKind::Kafka).await;
    let config = bus.config(&pc);
    let (port, admin) = (common::net::closed_port().await, common::net::closed_port().await);
    let start = || {
        let mut cmd = common::app::pcbridge_command();
        cmd.arg("ingress")
            .env("PCBRIDGE_KAFKA__BOOTSTRAP_SERVERS", &config.kafka.bootstrap_servers)
            .env("PCBRIDGE_KAFKA__CREATE_TOPICS", "false")
            .env("PCBRIDGE_BROKER__PREFIX", &config.broker.prefix)
            .env("PCBRIDGE_SIGNATURE__TRUSTED_CERTIFICATE_URL_PREFIXES", format!("[\"{}\"]", pc.certs.prefix))
            .env("PCBRIDGE_SIGNATURE__EXTRA_TRUST_ANCHORS_FILE", &pc.anchors_file)
            .env("PCBRIDGE_INGRESS__LISTEN", format!("127.0.0.1:{port}"))
            .env("PCBRIDGE_ADMIN__LISTEN", format!("127.0.0.1:{admin}"))
            .env("PCBRIDGE_INGRESS__PUBLISH_TIMEOUT_MS", "2000")
            .env("PCBRIDGE_LOG__LEVEL", "error")
            .stdout(std::process::Stdio::null());
        cmd.spawn().expect("spawn ingress")
    };
    let mut child = start();
    let url = format!("http://127.0.0.1:{port}{}", pcbridge::ingress::WEBHOOK_PATH);
    let n = events_per_scenario(1200);
    let run = uuid::Uuid::new_v4().simple().to_string();
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            serde_json::to_vec(&serde_json::json!({
                "EventName": "subscription-updated",
                "ResourceUri": format!("https://api.partnercenter.microsoft.com/v1/customers/c/subscriptions/s-{i}"),
                "Run": run,
            }))
            .expect("json")
        })
        .collect();
    pcbridge::partner_center::install_crypto_provider();
    let http = reqwest::Client::new();
    let t = span(n);
    let kills = async {
        let mut kills = 0;
        for _ in 0..2 {
            at(t * 0.3).await;
            child.kill().expect("SIGKILL");
            let _ = child.wait();
            kills += 1;
            at(0.5).await;
            child = start();
        }
        kills
    };
    let (sent, kills) = tokio::join!(common::load::drive(&http, &url, &pc, bodies, RATE), kills);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(kills, 2);
    let raw = config.broker.destinations().raw("subscription-updated");
    let found = common::bus::kafka::read(&bus.bootstrap(), &[raw.as_str()], usize::MAX, Duration::from_secs(5)).await;
    let mut seen = std::collections::HashMap::new();
    for r in &found {
        if let Some(id) = r.headers.get("pc-event-id") {
            *seen.entry(id.clone()).or_insert(0usize) += 1;
        }
    }
    let report = common::load::Report {
        raw_found: sent.accepted.iter().filter(|id| seen.contains_key(*id)).count(),
        raw_duplicates: seen.values().map(|n| n - 1).sum(),
        missing_raw: sent.accepted.iter().filter(|id| !seen.contains_key(*id)).count(),
        ..Default::default()
    };
    println!("RELIABILITY {}", report.line("ingress SIGKILLed twice with requests in flight (raw only)", &sent));
    assert!(sent.refusals > 0, "the kills were felt");
    assert_eq!(report.missing_raw, 0, "every 2xx event is on the broker");
    assert_eq!(sent.accepted.len(), n, "every event was eventually accepted");
}

/// The certificate host goes down mid-load: the cached certificate keeps every signature
/// verifiable, so nothing is refused. (Not cached, the answer is 503, never 401:
/// `tests/ingress_faults.rs` and `tests/ingress_reject.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_host_down_under_load() {
    let rig = Rig::start(Bus::new(BrokerKind::Kafka).await, |_| {}).await;
    let n = events_per_scenario(1000);
    let t = span(n);
    let outage = async {
        at(t * 0.2).await;
        rig.pc.certs.set_mode(common::net::CertMode::Status(503));
        at(t * 0.6).await;
        rig.pc.certs.set_mode(common::net::CertMode::Serve);
    };
    let (sent, ()) = tokio::join!(rig.load(n, RATE), outage);
    let report = rig.account(&sent, Duration::from_secs(90)).await;
    assert_nothing_lost("certificate host down (cached certificate)", &sent, &report);
    assert_eq!(sent.refusals, 0, "the cached certificate kept verifying");
    assert_eq!(rig.pc.certs.hits(), 1, "one download, before the outage");
    rig.finish().await;
}

/// The Produce request errors injected each time: a leader change, a request timed out
/// (persistence unknown), too few in-sync replicas, another timeout.
const PRODUCE_ERRORS: [RDKafkaRespErr; 4] = [
    RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
    RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
    RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
    RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
];

/// Produce requests fail (ingress and worker alike, the mock injects cluster-wide) five
/// times during the load. Run with one Produce request in flight per connection: see
/// [`mock_cluster_acks_what_it_never_wrote_with_produce_requests_pipelined`] for why the
/// mock cluster needs it and a real cluster does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_produce_errors_under_load() {
    let mock = rdkafka::mocking::MockCluster::new(3).expect("mock cluster");
    let bootstrap = mock.bootstrap_servers();
    let rig = Rig::start(Bus::Kafka(mock), |c| {
        c.kafka.properties.insert("max.in.flight.requests.per.connection".into(), "1".into());
    })
    .await;
    let Bus::Kafka(mock) = &rig.bus else { unreachable!() };
    let n = events_per_scenario(1200);
    let t = span(n);
    let faults = async {
        for _ in 0..5 {
            at(t / 6.0).await;
            mock.request_errors(RDKafkaApiKey::Produce, &PRODUCE_ERRORS);
        }
    };
    let (sent, ()) = tokio::join!(rig.load(n, RATE), faults);
    let report = rig.account(&sent, Duration::from_secs(90)).await;
    assert_nothing_lost(&format!("kafka Produce request errors ({bootstrap})"), &sent, &report);
    rig.finish().await;
}

/// A tripwire on librdkafka's mock cluster, not on pcbridge. The mock checks idempotent
/// sequence numbers only for transactional producers, so when a Produce request fails
/// while the next one to the same partition is in flight, the next one is written anyway.
/// A real broker refuses it (OUT_OF_ORDER_SEQUENCE_NUMBER), which is why librdkafka, on
/// seeing it succeed, acknowledges the failed request's records as persisted ("implicit
/// ack"): against the mock they were never written. With one request in flight there is no
/// next request to succeed early, and nothing is lost. If a librdkafka upgrade makes the
/// mock validate sequences, this fails: then drop the override above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_cluster_acks_what_it_never_wrote_with_produce_requests_pipelined() {
    let one_in_flight = bare_producer_losses("1").await;
    // The loss needs a failed request overtaken by a later one: most rounds (4 in 5 here)
    // have one, so a few rounds make it certain enough.
    let mut pipelined = 0;
    for _ in 0..5 {
        pipelined = bare_producer_losses("5").await;
        if pipelined > 0 {
            break;
        }
    }
    println!(
        "bare idempotent producer, Produce errors injected: lost {pipelined} of 2400 acknowledged with 5 in flight, {one_in_flight} with 1"
    );
    assert_eq!(one_in_flight, 0, "one request in flight: every acknowledged record is in the log");
    assert!(
        pipelined > 0,
        "the mock cluster now keeps every acknowledged record with 5 in flight: it may validate sequences now, and the one-in-flight override of kafka_produce_errors_under_load can go"
    );
}

/// Acknowledged records missing from the log, for a plain rdkafka idempotent producer
/// sending 2400 records while the Produce errors are injected 12 times.
async fn bare_producer_losses(in_flight: &str) -> usize {
    use rdkafka::consumer::Consumer;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let mock = rdkafka::mocking::MockCluster::new(3).expect("mock cluster");
    mock.create_topic("t", 3, 3).expect("topic");
    let bootstrap = mock.bootstrap_servers();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("max.in.flight.requests.per.connection", in_flight)
        .create()
        .expect("producer");
    let mut sends = Vec::new();
    for i in 0..2400usize {
        let p = producer.clone();
        sends.push(tokio::spawn(async move {
            let (key, payload) = (format!("k{}", i % 50), i.to_string());
            p.send(FutureRecord::to("t").key(&key).payload(&payload), Duration::from_secs(30)).await.is_ok()
        }));
        if i % 200 == 100 {
            mock.request_errors(RDKafkaApiKey::Produce, &PRODUCE_ERRORS);
        }
        tokio::time::sleep(Duration::from_micros(800)).await;
    }
    let mut acked = std::collections::HashSet::new();
    for (i, send) in sends.into_iter().enumerate() {
        if send.await.expect("send task") {
            acked.insert(i.to_string());
        }
    }
    assert!(acked.len() > 2000, "most records were acknowledged ({})", acked.len());
    // Read exactly what the log holds (the high watermarks), however loaded the machine.
    let watermarks: rdkafka::consumer::BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &bootstrap).create().expect("consumer");
    let in_log: i64 =
        (0..3).map(|p| watermarks.fetch_watermarks("t", p, Duration::from_secs(10)).expect("watermarks").1).sum();
    let logged: std::collections::HashSet<String> =
        common::bus::kafka::read(&bootstrap, &["t"], in_log as usize, Duration::from_secs(60))
            .await
            .into_iter()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect();
    acked.iter().filter(|id| !logged.contains(*id)).count()
}
