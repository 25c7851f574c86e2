//! The application under test: its configuration for a test, the real ingress and worker
//! started in-process on port 0 ([`spawn_ingress`], [`spawn_worker`]), and the real
//! binary run in a clean directory ([`pcbridge_command`]).

use super::{
    bus::{rabbitmq::RABBITMQ_ADDR, unique_prefix},
    pc_api, wait,
};
use pcbridge::{
    config::{BrokerKind, Config},
    contract::destinations::Destinations,
    ingress,
    shutdown::CancellationToken,
    telemetry::Metrics,
};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};
use tokio::{net::TcpListener, task::JoinHandle};

/// Writes `text` to a fresh file under the temp dir and returns its path.
pub fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("pcbridge-{}-{name}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, text).expect("write temp file");
    path
}

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

/// A configuration for a test ingress that trusts certificates under `prefix` chaining
/// to the anchors in `anchors_file`, with its own destination prefix (and RabbitMQ
/// exchange). [`super::bus::Bus::config`] is the usual way to get one.
pub fn config_trusting(kind: BrokerKind, prefix: &str, anchors_file: &Path, bootstrap: &str) -> Config {
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
    c.amqp.url = format!("amqp://{RABBITMQ_ADDR}");
    c.amqp.address = super::bus::amqp::ADDRESS.into();
    c.amqp.reconnect_max_delay_ms = 300;
    c.shutdown.drain_deadline_ms = 5_000;
    c
}

/// The environment that gives a `pcbridge` process the test's broker configuration
/// (each kind's keys; only the chosen kind's are used).
pub fn broker_env(c: &Config) -> Vec<(&'static str, String)> {
    vec![
        ("PCBRIDGE_BROKER__KIND", c.broker.kind.to_string()),
        ("PCBRIDGE_BROKER__PREFIX", c.broker.prefix.clone()),
        ("PCBRIDGE_BROKER__LAYOUT", c.broker.layout.to_string()),
        ("PCBRIDGE_KAFKA__BOOTSTRAP_SERVERS", c.kafka.bootstrap_servers.clone()),
        ("PCBRIDGE_KAFKA__CREATE_TOPICS", "false".into()),
        ("PCBRIDGE_RABBITMQ__URL", c.rabbitmq.url.clone()),
        ("PCBRIDGE_RABBITMQ__EXCHANGE", c.rabbitmq.exchange.clone()),
        ("PCBRIDGE_RABBITMQ__SHARDS", c.rabbitmq.shards.to_string()),
        ("PCBRIDGE_RABBITMQ__REBALANCE_INTERVAL_MS", c.rabbitmq.rebalance_interval_ms.to_string()),
        ("PCBRIDGE_AMQP__URL", c.amqp.url.clone()),
        ("PCBRIDGE_AMQP__ADDRESS", c.amqp.address.clone()),
        ("PCBRIDGE_AMQP__RECONNECT_MAX_DELAY_MS", c.amqp.reconnect_max_delay_ms.to_string()),
    ]
}

/// A configuration for a worker (on top of an ingress configuration), pointed at the
/// stand-in APIs, with short retry delays.
pub fn worker_config(mut c: Config, api: &pc_api::PcApi) -> Config {
    c.partner_center.base_url = api.base.clone();
    c.partner_center.graph_base_url = api.base.clone();
    c.partner_center.referrals_base_url = api.base.clone();
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

/// What either role needs before it starts: the crypto provider, tracing, its metrics.
fn prepare() -> Arc<Metrics> {
    pcbridge::partner_center::install_crypto_provider();
    pcbridge::telemetry::init_tracing(pcbridge::telemetry::LogStyle::Text, "warn", "pcbridge-test");
    Arc::new(Metrics::new())
}

/// A listener on a free loopback port, and its `http://` base URL.
async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    (listener, base)
}

/// The HTTP status of `GET {admin}/readyz`, or 0 when nothing answers.
async fn readyz(http: &reqwest::Client, admin: &str) -> u16 {
    match http.get(format!("{admin}/readyz")).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// A running ingress.
pub struct TestApp {
    pub url: String,
    pub admin: String,
    pub http: reqwest::Client,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<Result<(), pcbridge::ingress::IngressError>>,
}

/// Starts the real ingress on port 0 and waits until it is ready.
pub async fn spawn_ingress(config: Config) -> TestApp {
    let metrics = prepare();
    let (listener, base) = listen().await;
    let (admin_listener, admin) = listen().await;
    let url = format!("{base}{}", ingress::WEBHOOK_PATH);
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
        wait::until("the ingress is ready", within, async || self.readyz().await == 200).await;
    }

    pub async fn readyz(&self) -> u16 {
        readyz(&self.http, &self.admin).await
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
        self.config.broker.destinations()
    }

    /// Stops the ingress and waits for it to drain.
    pub async fn stop(self) -> Result<(), pcbridge::ingress::IngressError> {
        self.shutdown.cancel();
        self.handle.await.expect("ingress task")
    }
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
    let metrics = prepare();
    let (admin_listener, admin) = listen().await;
    let shutdown = CancellationToken::new();
    let handle =
        pcbridge::worker::start(config, "pcbridge-test-worker", admin_listener, metrics.clone(), shutdown.clone())
            .await
            .expect("worker starts");
    TestWorker { admin, metrics, shutdown, handle }
}

impl TestWorker {
    /// Events this worker finished (any outcome), by its metrics.
    pub fn events_finished(&self) -> u64 {
        worker_events_total(&self.metrics.render())
    }

    /// The status of the worker's `/readyz` (0 when it does not answer).
    pub async fn readyz(&self) -> u16 {
        readyz(&reqwest::Client::new(), &self.admin).await
    }

    /// Stops the worker and waits for its drain; an error if the worker task panicked.
    pub async fn stop(self) -> Result<(), tokio::task::JoinError> {
        self.shutdown.cancel();
        self.handle.await
    }
}

/// A running forwarder.
pub struct TestForwarder {
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<()>,
}

/// Starts the real forwarder (`pcbridge forward`: its subscriptions, publisher, admin on port 0).
pub async fn spawn_forwarder(config: &Config) -> TestForwarder {
    let metrics = prepare();
    let (admin_listener, _admin) = listen().await;
    let shutdown = CancellationToken::new();
    let handle =
        pcbridge::forward::start(config, "pcbridge-test-forward", admin_listener, metrics.clone(), shutdown.clone())
            .await
            .expect("forwarder starts");
    TestForwarder { metrics, shutdown, handle }
}

impl TestForwarder {
    /// Stops the forwarder and waits for its drain; an error if its task panicked.
    pub async fn stop(self) -> Result<(), tokio::task::JoinError> {
        self.shutdown.cancel();
        self.handle.await
    }
}

/// The environment that gives a `pcbridge forward` process the test's `[forward]` section.
pub fn forward_env(c: &Config) -> Vec<(String, String)> {
    let f = &c.forward;
    let mut env = vec![
        ("PCBRIDGE_FORWARD__GROUP_ID".to_string(), f.group_id.clone()),
        ("PCBRIDGE_FORWARD__CONCURRENCY".into(), f.concurrency.to_string()),
        ("PCBRIDGE_FORWARD__ALLOW_HTTP".into(), f.allow_http.to_string()),
        ("PCBRIDGE_FORWARD__MAX_ATTEMPTS".into(), f.max_attempts.to_string()),
        ("PCBRIDGE_FORWARD__MAX_RETRY_MS".into(), f.max_retry_ms.to_string()),
        ("PCBRIDGE_FORWARD__RETRY_MIN_DELAY_MS".into(), f.retry_min_delay_ms.to_string()),
        ("PCBRIDGE_FORWARD__RETRY_MAX_DELAY_MS".into(), f.retry_max_delay_ms.to_string()),
    ];
    for (name, r) in &f.receivers {
        let key = |k: &str| format!("PCBRIDGE_FORWARD__RECEIVERS__{}__{k}", name.to_uppercase());
        env.push((key("URL"), r.url.clone()));
        env.push((key("TIMEOUT_MS"), r.timeout_ms.to_string()));
        env.push((key("SIGNATURE_HEADER"), r.signature_header.clone()));
        if !r.events.is_empty() {
            env.push((key("EVENTS"), format!("[{}]", r.events.join(","))));
        }
    }
    env
}

/// Events a worker finished, summed over `pcbridge_worker_events_total` in metrics text.
pub fn worker_events_total(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("pcbridge_worker_events_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A `pcbridge worker` process, killed when dropped so a failing test leaves none behind.
pub struct WorkerProcess {
    pub child: std::process::Child,
    /// Its admin port (`/metrics`).
    pub admin_port: u16,
}

impl WorkerProcess {
    /// Starts `pcbridge worker` with the test's broker, the stand-in APIs, concurrency 4
    /// and short retry delays, its admin on `admin_port`.
    pub fn spawn(config: &Config, api: &pc_api::PcApi, admin_port: u16) -> Self {
        let mut cmd = pcbridge_command();
        cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args(["--config", "config.toml", "worker"]);
        if config.broker.kind == BrokerKind::Kafka {
            cmd.env("PCBRIDGE_KAFKA__PROPERTIES__SESSION_TIMEOUT_MS", "6000");
        }
        cmd.envs(broker_env(config))
            .envs(api.env())
            .env("PCBRIDGE_WORKER__GROUP_ID", &config.worker.group_id)
            .env("PCBRIDGE_WORKER__CONCURRENCY", "4")
            .env("PCBRIDGE_WORKER__RETRY_MIN_DELAY_MS", "20")
            .env("PCBRIDGE_WORKER__RETRY_MAX_DELAY_MS", "200")
            .env("PCBRIDGE_ADMIN__LISTEN", format!("127.0.0.1:{admin_port}"))
            .env("PCBRIDGE_LOG__LEVEL", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit());
        Self { child: cmd.spawn().expect("spawn pcbridge worker"), admin_port }
    }

    /// Events this process has finished, from its own /metrics (0 when it does not answer).
    pub async fn finished(&self) -> usize {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin_port);
        let Ok(r) = reqwest::get(&url).await else { return 0 };
        worker_events_total(&r.text().await.unwrap_or_default()) as usize
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, and the exit status once it drained.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
        self.child.wait().expect("wait")
    }
}

impl WorkerProcess {
    /// Starts `pcbridge forward` with the test's broker and `[forward]` section, its
    /// admin on `admin_port`.
    pub fn spawn_forward(config: &Config, admin_port: u16) -> Self {
        let mut cmd = pcbridge_command();
        cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args(["--config", "config.toml", "forward"]);
        if config.broker.kind == BrokerKind::Kafka {
            cmd.env("PCBRIDGE_KAFKA__PROPERTIES__SESSION_TIMEOUT_MS", "6000");
        }
        cmd.envs(broker_env(config))
            .envs(forward_env(config))
            .env("PCBRIDGE_ADMIN__LISTEN", format!("127.0.0.1:{admin_port}"))
            .env("PCBRIDGE_LOG__LEVEL", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit());
        Self { child: cmd.spawn().expect("spawn pcbridge forward"), admin_port }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
