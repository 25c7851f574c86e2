//! `pcbridge dev`: the whole pipeline in one process. An embedded Kafka (librdkafka's
//! mock cluster) or the configured RabbitMQ, the real ingress and worker, the simulator
//! as Partner Center, a downstream reader of the enriched and dead-letter destinations
//! that reports each event's fate, and the sharing of the one registration
//! ([`super::sharing`]: the forwarder, a second receiver, the registration guard).
//!
//! Only configuration ties them together: the ingress trusts the simulator's CA, issuer
//! and certificate URL; the worker's API, Graph and token base URLs point at it.

use super::pki::{ORGANIZATION, Pki};
use super::recovery::{GiveUps, recover};
use super::report::{Outcome, Tracker, human};
use super::sender::{SendOptions, print_progress, send};
use super::simulator::{self, Simulator};
use crate::broker::{self, Consumer};
use crate::config::{BrokerKind, Config, Secret};
use crate::contract::headers;
use crate::telemetry::Metrics;
use crate::worker;
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// `pcbridge dev` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// The broker: the embedded Kafka, the RabbitMQ at rabbitmq.url, or AMQP 1.0 at
    /// amqp.url (the local RabbitMQ's AMQP 1.0 plugin by default).
    #[arg(long, value_enum, default_value = "kafka")]
    pub broker: DevBroker,
    /// Events per second.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Events to send.
    #[arg(long, default_value_t = 100, conflicts_with = "forever")]
    pub count: u64,
    /// Send until Ctrl-C.
    #[arg(long)]
    pub forever: bool,
    /// No line per event: progress and the summary only.
    #[arg(long)]
    pub quiet: bool,
    /// The ingress's webhook listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The ingress's admin listener (/metrics); the worker's is the next free port.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// Percentage of API requests the simulator throttles (429, Retry-After: 1).
    #[arg(long, default_value_t = 5)]
    pub throttle_percent: u32,
    /// Percentage of resources that are gone (404) when the worker fetches them.
    #[arg(long, default_value_t = 2)]
    pub gone_percent: u32,
    /// Destination prefix on RabbitMQ and AMQP 1.0 (kept apart from real destinations).
    #[arg(long, default_value = "pcbridge-dev.")]
    pub rabbitmq_prefix: String,
    /// Seconds to wait for the last outcomes after sending stopped.
    #[arg(long, default_value_t = 60)]
    pub wait_secs: u64,
    /// Percentage of subscription-updated deliveries Partner Center gives up on: their
    /// changes go to its audit log only. After the stream, `reconcile` recovers them
    /// (needs PostgreSQL: reconcile.store_url, else the local one).
    #[arg(long, default_value_t = 0)]
    pub give_up_percent: u32,
    /// Seconds after the start when the simulator overwrites the webhook registration,
    /// as another receiver (CIPP) saving its own does; the registration guard reports it.
    #[arg(long, default_value_t = 2)]
    pub overwrite_registration_after: u64,
    /// Let the registration guard put the overwritten registration back.
    #[arg(long)]
    pub restore_registration: bool,
}

/// The change store of `dev --give-up-percent` when `reconcile.store_url` names none:
/// the local PostgreSQL that `make services` starts.
const DEV_STORE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DevBroker {
    Kafka,
    Rabbitmq,
    /// AMQP 1.0, against the local RabbitMQ's AMQP 1.0 plugin (as Azure Service Bus
    /// would be reached).
    Amqp,
}

/// A `pcbridge dev` failure, phrased for the person who ran it.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The pipeline could not be put together (certificates, simulator, embedded Kafka,
    /// a port in use, a role that refused to start).
    #[error("{0}")]
    Start(String),
    /// The pipeline started but did not turn ready in time.
    #[error("{0}")]
    NotReady(String),
    /// It ran, and events were refused or did not come out: the demonstration failed.
    #[error(
        "{refused} events were refused by the ingress and {missing} published events did not come out within {within}"
    )]
    Lost { refused: u64, missing: u64, within: String },
    /// `--give-up-percent`: reconciliation did not bring back every lost change exactly
    /// once.
    #[error("{0}")]
    Unrecovered(String),
    /// Forwarding or the registration guard did not do what it shows (an event not
    /// forwarded, a signature that did not verify, an overwrite not seen).
    #[error("{0}")]
    Sharing(String),
}

/// Runs the demonstration; an error when an event was refused or never came out.
pub async fn run(config: Config, args: DevArgs, interrupt: CancellationToken) -> Result<(), DevError> {
    let err = DevError::Start;
    let pki = Pki::generate().map_err(|e| err(format!("cannot create the simulator's certificates: {e}")))?;
    let options = simulator::Options {
        throttle_percent: args.throttle_percent.min(100),
        gone_percent: args.gone_percent.min(100),
        ..Default::default()
    };
    let sim = Arc::new(Simulator::start(pki, options).await.map_err(|e| err(e.to_string()))?);
    let workdir = std::env::temp_dir().join(format!("pcbridge-dev-{}", std::process::id()));
    let anchors = write_ca(&sim, &workdir)?;

    // The embedded Kafka lives as long as this function.
    let mock = match args.broker {
        DevBroker::Kafka => Some(
            rdkafka::mocking::MockCluster::new(1)
                .map_err(|e| err(format!("cannot start the embedded Kafka (librdkafka mock cluster): {e}")))?,
        ),
        DevBroker::Rabbitmq | DevBroker::Amqp => None,
    };
    let config = dev_config(config, &args, &sim, &anchors, mock.as_ref().map(|m| m.bootstrap_servers()));
    config.validate().map_err(|e| err(format!("the dev configuration is invalid: {e}")))?;
    if let Some(mock) = &mock {
        for topic in all_destinations(&config) {
            mock.create_topic(&topic, config.kafka.partitions, 1)
                .map_err(|e| err(format!("cannot create topic {topic} in the embedded Kafka: {e}")))?;
        }
    }

    let pipeline = Pipeline::start(&config, &args).await?;
    let broker_line = match &mock {
        Some(m) => format!("embedded Kafka (librdkafka mock cluster) at {}", m.bootstrap_servers()),
        None if config.broker.kind == BrokerKind::Amqp => format!(
            "AMQP 1.0 at {} (addresses {}, prefix {})",
            config.amqp.url, config.amqp.address, config.broker.prefix
        ),
        None => format!(
            "RabbitMQ at {} (exchange {}, prefix {})",
            config.rabbitmq.url, config.rabbitmq.exchange, config.broker.prefix
        ),
    };
    let webhook = format!("http://{}{}", pipeline.webhook_addr, crate::ingress::WEBHOOK_PATH);
    let overwrite_after = Duration::from_secs(args.overwrite_registration_after);
    let sharing = super::sharing::start(&config, &sim, &webhook, overwrite_after, args.restore_registration)
        .await
        .map_err(DevError::Start)?;
    println!("pcbridge dev — the whole pipeline in this process");
    println!("  broker     {broker_line}");
    println!("  ingress    {webhook}   (metrics http://{}/metrics)", pipeline.ingress_admin);
    println!("  worker     metrics http://{}/metrics", pipeline.worker_admin);
    println!(
        "  simulator  {} (Partner Center API, Graph, Entra ID; certificate {})",
        sim.base_url(),
        sim.certificate_url()
    );
    print!("{}", sharing.banner(overwrite_after));
    if args.give_up_percent > 0 {
        println!(
            "  store      {} table {} (Partner Center gives up on {} % of subscription-updated deliveries)",
            config.reconcile.store_url, config.reconcile.table, args.give_up_percent
        );
    }
    let amount = if args.forever { "until Ctrl-C".to_string() } else { format!("{} events", args.count) };
    println!(
        "Sending {amount} at {} events/s. Each line: sent → published (ingress answered 2xx after the broker confirmed) → enriched or dead-lettered (read from the output destination).\n",
        args.rate
    );

    let tracker = Arc::new(Tracker::new(true, !args.quiet));
    let give_ups = Arc::new(GiveUps::new(args.give_up_percent));
    let observer = tokio::spawn(observe(
        pipeline.observer.clone(),
        tracker.clone(),
        give_ups.clone(),
        config.broker.destinations().dead_letter(),
    ));
    let progress_stop = CancellationToken::new();
    let progress = tokio::spawn(print_progress(tracker.clone(), Duration::from_secs(5), progress_stop.clone()));
    let send_options = SendOptions {
        target: webhook,
        rate: args.rate,
        count: (!args.forever).then_some(args.count),
        ms_signature_header: false,
        seed: fastrand::u64(..),
        timeout: Duration::from_secs(10),
        give_ups: (args.give_up_percent > 0).then(|| give_ups.clone()),
    };
    send(&sim, tracker.clone(), &send_options, interrupt.clone()).await;

    let wait = if interrupt.is_cancelled() { Duration::from_secs(10) } else { Duration::from_secs(args.wait_secs) };
    let deadline = tokio::time::Instant::now() + wait;
    while tracker.totals().waiting() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sharing.wait(tracker.totals().published, deadline).await;
    progress_stop.cancel();
    let _ = progress.await;
    print!("{}", tracker.summary());
    let (shared, sharing_problems) = sharing.summary(tracker.totals().published);
    print!("{shared}");
    let recovery = if args.give_up_percent > 0 && give_ups.counts().given_up > 0 {
        Some(recover(&config, &give_ups, wait).await)
    } else {
        None
    };
    let stats = sim.stats();
    println!(
        "  simulator: {} API requests ({} throttled), {} token requests, {} certificate downloads",
        stats.api_requests, stats.throttled, stats.token_requests, stats.certificate_downloads
    );
    sharing.stop().await;
    pipeline.stop().await;
    observer.abort();
    let _ = std::fs::remove_dir_all(&workdir);
    drop(mock);

    match recovery {
        Some(Err(e)) => return Err(DevError::Unrecovered(format!("reconciliation failed: {e}"))),
        Some(Ok(c)) if c.recovered < c.given_up || c.twice > 0 || c.delivered_again > 0 => {
            return Err(DevError::Unrecovered(format!(
                "{} of {} lost changes recovered; {} published twice, {} delivered changes published again",
                c.recovered, c.given_up, c.twice, c.delivered_again
            )));
        }
        _ => {}
    }
    let totals = tracker.totals();
    let refused: u64 = totals.refused.values().sum();
    match (refused, totals.waiting()) {
        (0, 0) if !sharing_problems.is_empty() => Err(DevError::Sharing(sharing_problems.join("; "))),
        (0, 0) => Ok(()),
        (refused, missing) => Err(DevError::Lost { refused, missing, within: human(wait) }),
    }
}

/// The ingress, the worker and the downstream reader.
struct Pipeline {
    webhook_addr: SocketAddr,
    ingress_admin: SocketAddr,
    worker_admin: SocketAddr,
    observer: Arc<dyn Consumer>,
    /// The downstream reader's own metrics: its assigned partitions.
    observer_metrics: Arc<Metrics>,
    /// Kafka consumers need their partitions assigned before events flow.
    kafka: bool,
    stop: CancellationToken,
    ingress: tokio::task::JoinHandle<Result<(), crate::ingress::IngressError>>,
    worker: tokio::task::JoinHandle<()>,
}

impl Pipeline {
    async fn start(config: &Config, args: &DevArgs) -> Result<Self, DevError> {
        let err = DevError::Start;
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr).await.map_err(|e| {
                DevError::Start(format!(
                    "cannot listen on {addr} for the {what}: {e} (choose another with --listen / --admin-listen)"
                ))
            })
        };
        let listener = bind(args.listen, "ingress").await?;
        let ingress_admin_listener = bind(args.admin_listen, "ingress admin").await?;
        let worker_admin_listener = bind(SocketAddr::new(args.admin_listen.ip(), 0), "worker admin").await?;
        let addr = |l: &TcpListener| l.local_addr().map_err(|e| err(format!("listener address: {e}")));
        let (webhook_addr, ingress_admin, worker_admin) =
            (addr(&listener)?, addr(&ingress_admin_listener)?, addr(&worker_admin_listener)?);
        let stop = CancellationToken::new();
        let hint = match config.broker.kind {
            BrokerKind::Rabbitmq => {
                " — is RabbitMQ running at rabbitmq.url (PCBRIDGE_RABBITMQ__URL)? `make services` starts a local one"
            }
            BrokerKind::Amqp => {
                " — is RabbitMQ running with its AMQP 1.0 plugin at amqp.url? `make services` starts and enables it"
            }
            BrokerKind::Kafka => "",
        };
        let broker_err = |role: &str, e: broker::SetupError| {
            let hint = if matches!(e, broker::SetupError::Unreachable(_)) { hint } else { "" };
            DevError::Start(format!("cannot start the {role}'s {} connection: {e}{hint}", config.broker.kind))
        };

        let ingress = crate::ingress::start(
            config,
            "pcbridge-dev-ingress",
            listener,
            ingress_admin_listener,
            Arc::new(Metrics::new()),
            stop.clone(),
        )
        .await
        .map_err(|e| match e {
            crate::ingress::IngressError::Broker(e) => broker_err("ingress", e),
            e => DevError::Start(e.to_string()),
        })?;
        let worker =
            worker::start(config, "pcbridge-dev-worker", worker_admin_listener, Arc::new(Metrics::new()), stop.clone())
                .await
                .map_err(|e| match e {
                    worker::WorkerError::Broker(e) => broker_err("worker", e),
                    e => DevError::Start(e.to_string()),
                })?;

        let mut reader = config.clone();
        reader.worker.group_id = "pcbridge-dev-downstream".into();
        let d = config.broker.destinations();
        let outputs = d.outputs(&worker::stems(config));
        let observer_metrics = Arc::new(Metrics::new());
        let observer = broker::consume(&reader, outputs, "pcbridge-dev-downstream", observer_metrics.clone())
            .await
            .map_err(|e| broker_err("downstream reader", e))?;
        let pipeline = Self {
            webhook_addr,
            ingress_admin,
            worker_admin,
            observer,
            observer_metrics,
            kafka: config.broker.kind == BrokerKind::Kafka,
            stop,
            ingress,
            worker,
        };
        pipeline.wait_ready(Duration::from_secs(60)).await?;
        Ok(pipeline)
    }

    /// Waits until the ingress and the worker answer `/readyz` (broker connected) and, on
    /// Kafka, until the worker and the downstream reader have partitions assigned
    /// (`pcbridge_consumer_assigned_partitions`, as an operator would read it on
    /// `/metrics`), so that the first events do not measure a consumer group forming.
    async fn wait_ready(&self, limit: Duration) -> Result<(), DevError> {
        let http = reqwest::Client::new();
        let ready = |addr: SocketAddr| {
            let request = http.get(format!("http://{addr}/readyz")).timeout(Duration::from_secs(1)).send();
            async move { request.await.is_ok_and(|r| r.status().is_success()) }
        };
        let assigned = |addr: SocketAddr| {
            let request = http.get(format!("http://{addr}/metrics")).timeout(Duration::from_secs(1)).send();
            async move {
                let Ok(response) = request.await else { return false };
                let text = response.text().await.unwrap_or_default();
                text.lines()
                    .filter_map(|l| l.strip_prefix("pcbridge_consumer_assigned_partitions "))
                    .any(|v| v.trim().parse::<f64>().is_ok_and(|n| n > 0.0))
            }
        };
        let deadline = tokio::time::Instant::now() + limit;
        eprint!("Starting: waiting for the ingress, the worker and the downstream reader to be ready…");
        loop {
            let (i, mut w) = (ready(self.ingress_admin).await, ready(self.worker_admin).await);
            if self.kafka && w {
                w = assigned(self.worker_admin).await && self.observer_metrics.consumer_assigned_partitions.get() > 0;
            }
            if i && w && self.observer.is_ready() {
                eprintln!(" ready.");
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                eprintln!();
                return Err(DevError::NotReady(format!(
                    "not ready after {}: ingress {}, worker {}, downstream reader {} — is the broker reachable?",
                    human(limit),
                    if i { "ready" } else { "not ready" },
                    if w { "ready" } else { "not ready" },
                    if self.observer.is_ready() { "ready" } else { "not ready" },
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        match self.ingress.await {
            Ok(Err(e)) => eprintln!("{e}"),
            Err(e) => eprintln!("the ingress stopped abnormally: {e}"),
            Ok(Ok(())) => {}
        }
        if let Err(e) = self.worker.await {
            eprintln!("the worker stopped abnormally: {e}");
        }
        self.observer.close().await;
    }
}

/// Reads enriched messages and dead letters as a downstream service would.
async fn observe(consumer: Arc<dyn Consumer>, tracker: Arc<Tracker>, give_ups: Arc<GiveUps>, dead_letter: String) {
    while let Some(d) = consumer.recv().await {
        let id = d.header(headers::EVENT_ID).unwrap_or_default().to_string();
        if d.header(headers::ORIGIN) == Some(headers::ORIGIN_RECONCILE) {
            give_ups.observed(d.header(headers::CHANGE_KEY).unwrap_or_default());
        }
        let attempts = |v: Option<&str>| v.and_then(|a| a.parse().ok()).unwrap_or(0);
        let outcome = if d.destination == dead_letter {
            let kind = d.header(headers::ERROR_KIND).unwrap_or("unknown").to_string();
            Outcome::DeadLettered { kind, attempts: attempts(d.header(headers::ATTEMPTS)) }
        } else {
            let body: serde_json::Value = serde_json::from_slice(&d.body).unwrap_or_default();
            let e = &body["enrichment"];
            let status = e["status"].as_str().unwrap_or("unknown").to_string();
            Outcome::Enriched { status, attempts: e["attempts"].as_u64().unwrap_or(0) }
        };
        consumer.ack(d.ack).await;
        tracker.observed(&id, outcome);
    }
}

/// Every destination of the pipeline (created up front in the embedded Kafka, which
/// has no CreateTopics).
fn all_destinations(config: &Config) -> Vec<String> {
    let d = config.broker.destinations();
    let stems = worker::stems(config);
    let mut all = d.sources(&stems);
    all.extend(d.outputs(&stems));
    all.extend([d.forward(super::sharing::RECEIVER), d.forward_dead_letter(super::sharing::RECEIVER)]);
    all
}

fn write_ca(sim: &Simulator, dir: &std::path::Path) -> Result<PathBuf, DevError> {
    let pem = sim.ca_pem().map_err(|e| DevError::Start(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| DevError::Start(format!("cannot create {}: {e}", dir.display())))?;
    let path = dir.join("simulator-ca.pem");
    std::fs::write(&path, pem).map_err(|e| DevError::Start(format!("cannot write {}: {e}", path.display())))?;
    Ok(path)
}

/// The user's configuration, pointed at the simulator and the dev broker.
fn dev_config(
    mut c: Config,
    args: &DevArgs,
    sim: &Simulator,
    anchors: &std::path::Path,
    bootstrap: Option<String>,
) -> Config {
    c.signature.trusted_certificate_url_prefixes = vec![sim.certificate_prefix()];
    c.signature.extra_trust_anchors_file = anchors.display().to_string();
    c.signature.issuer_organization = ORGANIZATION.to_string();
    let pc = &mut c.partner_center;
    pc.base_url = sim.base_url().to_string();
    pc.graph_base_url = sim.base_url().to_string();
    pc.referrals_base_url = sim.base_url().to_string();
    pc.token_base_url = sim.base_url().to_string();
    pc.tenant_id = simulator::TENANT_ID.into();
    pc.client_id = simulator::CLIENT_ID.into();
    pc.client_secret = Secret::new(simulator::CLIENT_SECRET);
    pc.refresh_token = Secret::new(simulator::REFRESH_TOKEN);
    pc.client_secret_file.clear();
    pc.refresh_token_file.clear();
    c.ingress.listen = args.listen;
    c.admin.listen = args.admin_listen;
    c.worker.events.clear();
    c.shutdown.drain_deadline_ms = c.shutdown.drain_deadline_ms.min(5_000);
    if args.give_up_percent > 0 {
        if c.reconcile.store_url.is_empty() {
            c.reconcile.store_url = DEV_STORE_URL.into();
        }
        c.reconcile.table = "pcbridge_dev_changes".into();
        // The simulator's changes are seconds old: nothing is left to settle.
        c.reconcile.settle_minutes = 0;
    }
    match bootstrap {
        Some(bootstrap) => {
            c.broker.kind = BrokerKind::Kafka;
            c.kafka.bootstrap_servers = bootstrap;
            c.kafka.create_topics = false;
            c.kafka.partitions = 3;
            c.kafka.replication_factor = 1;
            // Not the user's cluster settings (SASL…): the embedded broker has none.
            c.kafka.properties.clear();
            c.kafka.properties.insert("fetch.wait.max.ms".into(), "10".into());
        }
        None if args.broker == DevBroker::Amqp => {
            c.broker.kind = BrokerKind::Amqp;
            c.broker.prefix = args.rabbitmq_prefix.clone();
            // RabbitMQ 3.x's AMQP 1.0 plugin: `/queue/{name}` declares a durable queue.
            c.amqp.address = "/queue/{destination}".into();
        }
        None => {
            c.broker.kind = BrokerKind::Rabbitmq;
            c.broker.prefix = args.rabbitmq_prefix.clone();
            c.rabbitmq.exchange = args.rabbitmq_prefix.trim_end_matches('.').to_string();
        }
    }
    c
}
