//! Black-box test harness: spawn the real ingress on port 0 against the real RabbitMQ
//! or librdkafka's mock Kafka cluster, each test with its own destination prefix (and
//! RabbitMQ exchange), and read back what reached the broker.
#![allow(dead_code)]

pub mod load;
pub mod net;
pub mod pc_api;
pub mod pki;

use futures::StreamExt;
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicGetOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable},
};
use pcbridge::{
    config::{BrokerKind, Config},
    contract::destinations::{Destinations, all_stems},
    ingress,
    shutdown::CancellationToken,
    telemetry::Metrics,
};
use rdkafka::{
    ClientConfig, Message as _,
    consumer::{BaseConsumer, Consumer, StreamConsumer},
    message::Headers,
};
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::{net::TcpListener, task::JoinHandle};

pub const RABBITMQ_ADDR: &str = "127.0.0.1:5672";

/// The 24 catalogue examples, as the JSON bodies Partner Center would send.
pub fn catalogue() -> Vec<(String, Vec<u8>)> {
    let text = include_str!("../fixtures/catalogue.json");
    let values: Vec<serde_json::Value> = serde_json::from_str(text).expect("catalogue.json");
    values
        .into_iter()
        .map(|v| {
            let name = v["EventName"].as_str().expect("EventName").to_string();
            (name, serde_json::to_vec_pretty(&v).expect("serialize"))
        })
        .collect()
}

/// A unique destination prefix for one test.
pub fn unique_prefix() -> String {
    format!("pctest-{}.", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// Writes `text` to a fresh file under the temp dir and returns its path.
pub fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("pcbridge-{}-{name}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, text).expect("write temp file");
    path
}

/// The per-test world: a CA trusted by the ingress, a signing certificate served by a
/// local certificate server, and the trusted prefix pointing at it.
pub struct Pc {
    pub ca: pki::Ca,
    pub cert: pki::SigningCert,
    pub certs: net::CertServer,
    pub cert_url: String,
    pub anchors_file: PathBuf,
}

impl Pc {
    pub async fn new() -> Self {
        Self::with_extra_anchors(&[]).await
    }

    /// Like [`Pc::new`], with more trust anchors (PEM) in the anchors file.
    pub async fn with_extra_anchors(extra: &[String]) -> Self {
        let ca = pki::Ca::new("Microsoft Corporation");
        let cert = ca.signing_cert(0, -1, 30);
        let certs = net::CertServer::start().await;
        let cert_url = certs.put("pcnotifications-dispatch.test.cer", cert.der.clone());
        let anchors = std::iter::once(ca.pem()).chain(extra.iter().cloned()).collect::<Vec<_>>().join("\n");
        let anchors_file = temp_file("anchors.pem", &anchors);
        Self { ca, cert, certs, cert_url, anchors_file }
    }

    /// Headers of a genuine delivery of `body`.
    pub fn headers(&self, body: &[u8]) -> Vec<(&'static str, String)> {
        signed_headers(&self.cert.signer, &self.cert_url, body)
    }
}

/// Headers of a delivery of `body` signed by `signer`, naming `cert_url`.
pub fn signed_headers(signer: &pki::Signer, cert_url: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("authorization", format!("Signature {}", signer.sign(body))),
        ("x-ms-certificate-url", cert_url.to_string()),
        ("x-ms-signature-algorithm", "rsa-sha256".into()),
        ("content-type", "application/json".into()),
    ]
}

impl Pc {}

/// The `pcbridge` binary, run in a fresh empty directory (no config.toml) with no
/// `PCBRIDGE_*` variable but those the test sets.
pub fn pcbridge_command() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_pcbridge"));
    let dir = std::env::temp_dir().join(format!("pcbridge-run-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    c.current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("PCBRIDGE_") {
            c.env_remove(k);
        }
    }
    c
}

/// A configuration for a test ingress.
pub fn config(kind: BrokerKind, pc: &Pc, bootstrap: &str) -> Config {
    config_trusting(kind, &pc.certs.prefix, &pc.anchors_file, bootstrap)
}

/// A configuration for a test ingress that trusts certificates under `prefix` chaining
/// to the anchors in `anchors_file`.
pub fn config_trusting(kind: BrokerKind, prefix: &str, anchors_file: &std::path::Path, bootstrap: &str) -> Config {
    let mut c = Config::default();
    c.broker.kind = kind;
    c.broker.prefix = unique_prefix();
    c.signature.trusted_certificate_url_prefixes = vec![prefix.to_string()];
    c.signature.extra_trust_anchors_file = anchors_file.display().to_string();
    c.signature.fetch_timeout_ms = 1_000;
    c.ingress.publish_timeout_ms = 2_000;
    c.ingress.request_timeout_ms = 8_000;
    c.kafka.bootstrap_servers = bootstrap.to_string();
    c.kafka.partitions = 2;
    c.kafka.replication_factor = 1;
    // librdkafka's mock cluster has no CreateTopics; it auto-creates topics instead.
    c.kafka.create_topics = false;
    c.rabbitmq.url = format!("amqp://{RABBITMQ_ADDR}/%2f");
    c.rabbitmq.exchange = format!("{}exchange", c.broker.prefix);
    c.rabbitmq.reconnect_max_delay_ms = 300;
    c.shutdown.drain_deadline_ms = 5_000;
    c
}

/// A running ingress.
pub struct TestApp {
    pub url: String,
    pub admin: String,
    pub http: reqwest::Client,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<Result<(), ingress::IngressError>>,
}

/// Starts the real ingress on port 0 and waits until it is ready.
pub async fn spawn_ingress(config: Config) -> TestApp {
    pcbridge::partner_center::install_crypto_provider();
    pcbridge::telemetry::init_tracing(pcbridge::telemetry::LogStyle::Text, "warn", "pcbridge-test");
    let metrics = Arc::new(Metrics::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}{}", listener.local_addr().expect("addr"), ingress::WEBHOOK_PATH);
    let admin = format!("http://{}", admin_listener.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    let started =
        ingress::start(&config, "pcbridge-test-ingress", listener, admin_listener, metrics.clone(), shutdown.clone())
            .await;
    let handle = match started {
        Ok(handle) => handle,
        Err(e) if config.broker.kind == BrokerKind::Rabbitmq => panic!(
            "RabbitMQ is required by this test and is not reachable at {}: {e}. Start it with `make services`.",
            config.rabbitmq.url
        ),
        Err(e) => panic!("cannot start publisher: {e}"),
    };
    // The ingress closes a keep-alive connection idle for request_timeout (hyper's header
    // read timeout covers the wait for the next request); drop pooled ones well before, so
    // a test never reuses a connection as the server closes it.
    let http = reqwest::Client::builder()
        .pool_idle_timeout(config.ingress.request_timeout() / 2)
        .build()
        .expect("http client");
    let app = TestApp { url, admin, http, config, metrics, shutdown, handle };
    app.wait_ready(Duration::from_secs(15)).await;
    app
}

impl TestApp {
    pub async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.readyz().await == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "ingress not ready within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn readyz(&self) -> u16 {
        match self.http.get(format!("{}/readyz", self.admin)).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    pub async fn metrics_text(&self) -> String {
        self.http.get(format!("{}/metrics", self.admin)).send().await.expect("metrics").text().await.expect("text")
    }

    /// POSTs `body` with `headers`; returns status and parsed JSON body.
    pub async fn post(&self, body: Vec<u8>, headers: &[(&str, String)]) -> (u16, serde_json::Value) {
        let mut req = self.http.post(&self.url).body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.expect("POST");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap_or_default();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    pub fn destinations(&self) -> Destinations {
        Destinations::new(self.config.broker.prefix.clone())
    }

    /// Stops the ingress and waits for it to drain.
    pub async fn stop(self) -> Result<(), ingress::IngressError> {
        self.shutdown.cancel();
        self.handle.await.expect("ingress task")
    }
}

/// A message as read back from a broker.
#[derive(Debug, Clone)]
pub struct Received {
    /// Topic (Kafka) or routing key (RabbitMQ).
    pub destination: String,
    pub key: Option<Vec<u8>>,
    pub body: Vec<u8>,
    /// Kafka record headers, or AMQP headers.
    pub headers: BTreeMap<String, String>,
    /// AMQP basic properties (message_id, content_type, delivery_mode).
    pub properties: BTreeMap<String, String>,
}

/// Reads up to `want` messages from Kafka topics matching `topics` (names, or one
/// `^regex`), waiting at most `wait`.
pub async fn kafka_read(bootstrap: &str, topics: &[&str], want: usize, wait: Duration) -> Vec<Received> {
    kafka_read_from(bootstrap, topics, want, wait, "earliest").await
}

async fn kafka_read_from(bootstrap: &str, topics: &[&str], want: usize, wait: Duration, reset: &str) -> Vec<Received> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", reset)
        .set("enable.auto.commit", "false")
        .set("topic.metadata.refresh.interval.ms", "200")
        .create()
        .expect("consumer");
    if topics.iter().any(|t| t.starts_with('^')) {
        consumer.subscribe(topics).expect("subscribe");
    } else {
        // Named topics: assign every partition from the beginning, no group join to wait for.
        let mut tpl = rdkafka::TopicPartitionList::new();
        for topic in topics {
            let metadata =
                consumer.fetch_metadata(Some(topic), Duration::from_secs(5)).expect("metadata of a test topic");
            for t in metadata.topics() {
                for p in t.partitions() {
                    tpl.add_partition_offset(t.name(), p.id(), rdkafka::Offset::Beginning).expect("partition");
                }
            }
        }
        consumer.assign(&tpl).expect("assign");
    }
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut stream = consumer.stream();
    while out.len() < want {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(m))) => {
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for header in h.iter() {
                        let value = header.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
                        headers.insert(header.key.to_string(), value);
                    }
                }
                out.push(Received {
                    destination: m.topic().to_string(),
                    key: m.key().map(<[u8]>::to_vec),
                    body: m.payload().unwrap_or_default().to_vec(),
                    headers,
                    properties: BTreeMap::from([("topic".to_string(), m.topic().to_string())]),
                });
            }
            Ok(Some(Err(e))) => {
                // Subscribing before a regex's topics exist reports UnknownTopic; keep polling.
                tracing_like_log(&format!("kafka reader: {e}"));
            }
            Ok(None) | Err(_) => break,
        }
    }
    out
}

fn tracing_like_log(line: &str) {
    eprintln!("{line}");
}

/// Reads until `expect` messages arrived (or `wait` passed), then one more second to
/// catch any message beyond `expect`.
pub async fn kafka_read_settled(bootstrap: &str, topics: &[&str], expect: usize, wait: Duration) -> Vec<Received> {
    let mut out = kafka_read_from(bootstrap, topics, expect, wait, "earliest").await;
    if out.len() >= expect {
        // Same group semantics are not needed: re-read everything and keep the longer view.
        let again = kafka_read_from(bootstrap, topics, usize::MAX, Duration::from_secs(2), "earliest").await;
        if again.len() > out.len() {
            out = again;
        }
    }
    out
}

/// Every message under a prefix on Kafka (waits `wait` for stragglers).
pub async fn kafka_count_prefix(bootstrap: &str, prefix: &str, wait: Duration) -> usize {
    // Every topic under the prefix, read by assignment (a regex subscription would wait
    // for the mock coordinator's group join and could see nothing in time).
    let lister: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("consumer");
    let metadata = lister.fetch_metadata(None, Duration::from_secs(5)).expect("cluster metadata");
    let topics: Vec<String> =
        metadata.topics().iter().map(|t| t.name().to_string()).filter(|n| n.starts_with(prefix)).collect();
    assert!(!topics.is_empty(), "no topic under {prefix}: nothing can have been counted");
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    kafka_read(bootstrap, &names, usize::MAX, wait).await.len()
}

pub async fn rabbit() -> Connection {
    Connection::connect(&format!("amqp://guest:guest@{RABBITMQ_ADDR}/%2f"), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!("RabbitMQ is required and is not reachable at {RABBITMQ_ADDR}: {e}. Start it with `make services`.")
        })
}

/// Takes up to `want` messages from a RabbitMQ queue, waiting at most `wait`.
pub async fn rabbit_read(conn: &Connection, queue: &str, want: usize, wait: Duration) -> Vec<Received> {
    let channel = conn.create_channel().await.expect("channel");
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    while out.len() < want {
        match channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await {
            Ok(Some(m)) => {
                let p = &m.delivery.properties;
                let mut headers = BTreeMap::new();
                if let Some(table) = p.headers() {
                    for (k, v) in table.inner() {
                        headers.insert(k.to_string(), amqp_text(v));
                    }
                }
                let mut properties = BTreeMap::new();
                if let Some(id) = p.message_id() {
                    properties.insert("message_id".into(), id.to_string());
                }
                if let Some(ct) = p.content_type() {
                    properties.insert("content_type".into(), ct.to_string());
                }
                if let Some(dm) = p.delivery_mode() {
                    properties.insert("delivery_mode".into(), dm.to_string());
                }
                properties.insert("routing_key".into(), m.delivery.routing_key.to_string());
                out.push(Received {
                    destination: m.delivery.routing_key.to_string(),
                    key: None,
                    body: m.delivery.data.clone(),
                    headers,
                    properties,
                });
            }
            Ok(None) if Instant::now() >= deadline => break,
            Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("basic.get {queue}: {e}"),
        }
    }
    out
}

/// Takes every message now in `queue` (none if it does not exist).
pub async fn rabbit_drain(conn: &Connection, queue: &str) -> Vec<Received> {
    let channel = conn.create_channel().await.expect("channel");
    let exists = channel
        .queue_declare(queue.into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
        .await
        .is_ok();
    if !exists {
        return Vec::new();
    }
    let _ = channel.close(200, "ok".into()).await;
    rabbit_read(conn, queue, usize::MAX, Duration::ZERO).await
}

pub fn amqp_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        other => format!("{other:?}"),
    }
}

/// Messages waiting in the named queues (a missing queue counts as empty).
pub async fn rabbit_count(conn: &Connection, queues: &[String]) -> u32 {
    let mut total = 0;
    for q in queues {
        let channel = conn.create_channel().await.expect("channel");
        if let Ok(queue) = channel
            .queue_declare(
                q.as_str().into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
        {
            total += queue.message_count();
        }
        let _ = channel.close(200, "ok".into()).await;
    }
    total
}

/// Deletes a test's queues and exchange.
pub async fn rabbit_cleanup(conn: &Connection, config: &Config, extra_queues: &[String]) {
    let channel = conn.create_channel().await.expect("channel");
    let d = Destinations::new(config.broker.prefix.clone());
    for q in d.all_raw().iter().chain(extra_queues) {
        let _ = channel.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await;
    }
    let _ = channel.exchange_delete(config.rabbitmq.exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
}

/// The broker a test runs against: librdkafka's mock cluster, or the real RabbitMQ.
pub enum Bus {
    Kafka(rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>),
    Rabbit(Connection),
}

impl Bus {
    pub async fn new(kind: BrokerKind) -> Self {
        match kind {
            BrokerKind::Kafka => Bus::Kafka(rdkafka::mocking::MockCluster::new(1).expect("mock cluster")),
            BrokerKind::Rabbitmq => Bus::Rabbit(rabbit().await),
        }
    }

    pub fn kind(&self) -> BrokerKind {
        match self {
            Bus::Kafka(_) => BrokerKind::Kafka,
            Bus::Rabbit(_) => BrokerKind::Rabbitmq,
        }
    }

    pub fn bootstrap(&self) -> String {
        match self {
            Bus::Kafka(m) => m.bootstrap_servers(),
            Bus::Rabbit(_) => String::new(),
        }
    }

    /// A test configuration; on Kafka the test's topics are created in the mock cluster
    /// first (what `kafka.create_topics` does on a real cluster, which the mock lacks).
    pub fn config(&self, pc: &Pc) -> Config {
        self.config_trusting(&pc.certs.prefix, &pc.anchors_file)
    }

    /// [`Bus::config`] for an ingress that trusts another certificate source (the
    /// product's own simulator).
    pub fn config_trusting(&self, prefix: &str, anchors_file: &std::path::Path) -> Config {
        let c = config_trusting(self.kind(), prefix, anchors_file, &self.bootstrap());
        if let Bus::Kafka(mock) = self {
            let d = Destinations::new(c.broker.prefix.clone());
            for topic in d.all_raw().into_iter().chain(output_queues(&c)) {
                mock.create_topic(&topic, c.kafka.partitions, 1).expect("mock topic");
            }
        }
        c
    }

    /// Reads up to `want` messages from one destination.
    pub async fn read(&self, destination: &str, want: usize, wait: Duration) -> Vec<Received> {
        match self {
            Bus::Kafka(m) => kafka_read(&m.bootstrap_servers(), &[destination], want, wait).await,
            Bus::Rabbit(c) => rabbit_read(c, destination, want, wait).await,
        }
    }

    /// How many messages `destination` holds, without taking them.
    pub async fn read_count(&self, destination: &str) -> usize {
        match self {
            Bus::Kafka(m) => {
                kafka_read(&m.bootstrap_servers(), &[destination], usize::MAX, Duration::from_secs(2)).await.len()
            }
            Bus::Rabbit(c) => {
                let channel = c.create_channel().await.expect("channel");
                let q = channel
                    .queue_declare(
                        destination.into(),
                        QueueDeclareOptions { passive: true, ..Default::default() },
                        FieldTable::default(),
                    )
                    .await
                    .expect("the queue exists");
                let _ = channel.close(200, "ok".into()).await;
                q.message_count() as usize
            }
        }
    }

    /// Every message under the test's prefix (raw destinations plus `extra`).
    pub async fn count_all(&self, config: &Config, extra: &[String]) -> usize {
        match self {
            Bus::Kafka(m) => {
                kafka_count_prefix(&m.bootstrap_servers(), &config.broker.prefix, Duration::from_secs(3)).await
            }
            Bus::Rabbit(c) => {
                let d = Destinations::new(config.broker.prefix.clone());
                let queues: Vec<String> = d.all_raw().into_iter().chain(extra.iter().cloned()).collect();
                rabbit_count(c, &queues).await as usize
            }
        }
    }

    /// Every message under the test's prefix: waits until `expect` arrived (or `wait`
    /// passed), then gives stragglers a moment so that extra messages are seen too.
    pub async fn read_all(&self, config: &Config, extra: &[String], expect: usize, wait: Duration) -> Vec<Received> {
        match self {
            Bus::Kafka(m) => {
                let regex = format!("^{}.*", config.broker.prefix.replace('.', "\\."));
                kafka_read_settled(&m.bootstrap_servers(), &[regex.as_str()], expect, wait).await
            }
            Bus::Rabbit(c) => {
                let d = Destinations::new(config.broker.prefix.clone());
                let queues: Vec<String> = d.all_raw().into_iter().chain(extra.iter().cloned()).collect();
                let deadline = Instant::now() + wait;
                let mut out = Vec::new();
                loop {
                    for q in &queues {
                        out.extend(rabbit_drain(c, q).await);
                    }
                    if out.len() >= expect || Instant::now() >= deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                for q in &queues {
                    out.extend(rabbit_drain(c, q).await);
                }
                out
            }
        }
    }

    /// Every message in the named destinations only (waits for `expect`, then settles).
    pub async fn read_from(&self, destinations: &[String], expect: usize, wait: Duration) -> Vec<Received> {
        match self {
            Bus::Kafka(m) => {
                let topics: Vec<&str> = destinations.iter().map(String::as_str).collect();
                kafka_read_settled(&m.bootstrap_servers(), &topics, expect, wait).await
            }
            Bus::Rabbit(c) => {
                let deadline = Instant::now() + wait;
                let mut out = Vec::new();
                loop {
                    for q in destinations {
                        out.extend(rabbit_drain(c, q).await);
                    }
                    if out.len() >= expect || Instant::now() >= deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                for q in destinations {
                    out.extend(rabbit_drain(c, q).await);
                }
                out
            }
        }
    }

    pub async fn cleanup(&self, config: &Config, extra: &[String]) {
        if let Bus::Rabbit(c) = self {
            rabbit_cleanup(c, config, extra).await;
        }
    }
}

/// A configuration for a worker (on top of an ingress configuration), pointed at the
/// stand-in APIs, with short retry delays.
pub fn worker_config(mut c: Config, api: &pc_api::PcApi) -> Config {
    c.partner_center.base_url = api.base.clone();
    c.partner_center.graph_base_url = api.base.clone();
    c.partner_center.token_base_url = api.base.clone();
    c.partner_center.tenant_id = "tenant-1".into();
    c.partner_center.client_id = pc_api::CLIENT_ID.into();
    c.partner_center.client_secret = pcbridge::config::Secret::new(pc_api::CLIENT_SECRET);
    c.partner_center.refresh_token = pcbridge::config::Secret::new(pc_api::REFRESH_TOKEN);
    c.partner_center.request_timeout_ms = 1_000;
    c.worker.group_id = format!("{}workers", c.broker.prefix);
    c.worker.concurrency = 16;
    c.worker.max_attempts = 4;
    c.worker.max_retry_ms = 15_000;
    c.worker.retry_min_delay_ms = 20;
    c.worker.retry_max_delay_ms = 200;
    c
}

/// A running worker.
pub struct TestWorker {
    pub admin: String,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<()>,
}

/// Starts the real worker (consumer, publisher, admin on port 0).
pub async fn spawn_worker(config: &Config) -> TestWorker {
    pcbridge::partner_center::install_crypto_provider();
    pcbridge::telemetry::init_tracing(pcbridge::telemetry::LogStyle::Text, "warn", "pcbridge-test");
    let metrics = Arc::new(Metrics::new());
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = format!("http://{}", admin_listener.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    let handle =
        pcbridge::worker::start(config, "pcbridge-test-worker", admin_listener, metrics.clone(), shutdown.clone())
            .await
            .expect("worker starts");
    TestWorker { admin, metrics, shutdown, handle }
}

impl TestWorker {
    /// Stops the worker and waits for its drain; an error if the worker task panicked.
    pub async fn stop(self) -> Result<(), tokio::task::JoinError> {
        self.shutdown.cancel();
        self.handle.await
    }
}

/// Events a worker finished, summed over `pcbridge_worker_events_total` in metrics text.
pub fn worker_events_total(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("pcbridge_worker_events_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Output destinations of a test (enriched for every catalogue event, and dead letters).
pub fn output_queues(config: &Config) -> Vec<String> {
    Destinations::new(config.broker.prefix.clone()).outputs(&all_stems().collect::<Vec<_>>())
}

/// Replaces `{{Name}}` and `{name}` placeholders with concrete ids (`name-1`).
pub fn concrete(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let inner_start = after.find(|c| c != '{').unwrap_or(after.len());
        let Some(end) = after[inner_start..].find('}') else {
            out.push_str(after);
            return out;
        };
        let name = &after[inner_start..inner_start + end];
        out.push_str(&format!("{}-1", name.to_ascii_lowercase()));
        let close = inner_start + end;
        let close_end = close + after[close..].find(|c| c != '}').unwrap_or(after.len() - close);
        rest = &after[close_end..];
    }
    out.push_str(rest);
    out
}
