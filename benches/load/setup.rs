//! What every scenario shares: the Partner Center simulator (certificate URL, Entra ID,
//! API), a corpus of signed events, the brokers, and the environment that points a
//! `pcbridge` process at all of them.

use crate::generator::{Corpus, Prepared};
use bytes::Bytes;
use pcbridge::{
    broker::{self, Publisher},
    config::{BrokerKind, Config},
    contract::destinations::Destinations,
    dev::{
        events::{API_HOST, Generator},
        pki::{ORGANIZATION, Pki},
        simulator::{self, Simulator},
    },
    ingress::{WEBHOOK_PATH, message},
    partner_center::{
        event::{Event, event_id},
        signature::SignatureHeaders,
    },
    telemetry::Metrics,
};
use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

pub struct Setup {
    pub sim: Simulator,
    pub dir: PathBuf,
    pub anchors: PathBuf,
    /// The signing certificate (DER), for the minimal pipeline's one-time key load.
    pub cert_der: PathBuf,
}

impl Setup {
    pub async fn new(api_latency: Duration) -> Self {
        let pki = Pki::generate().expect("simulator PKI");
        let options = simulator::Options { latency: api_latency, ..Default::default() };
        let sim = Simulator::start(pki, options).await.expect("simulator");
        let dir = std::env::temp_dir().join(format!("pcbridge-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("work dir");
        let anchors = dir.join("ca.pem");
        std::fs::write(&anchors, sim.ca_pem().expect("ca")).expect("write ca");
        let der = reqwest::get(sim.certificate_url()).await.expect("certificate").bytes().await.expect("body");
        let cert_der = dir.join("signing.cer");
        std::fs::write(&cert_der, &der).expect("write certificate");
        Self { sim, dir, anchors, cert_der }
    }

    /// `n` distinct signed events of every catalogue type, in the simulator's mix.
    pub fn corpus(&self, n: usize) -> Corpus {
        let mut generator = Generator::new(7);
        let items = (0..n)
            .map(|_| {
                let sample = generator.next_sample();
                let headers = self
                    .sim
                    .signed_headers(&sample.body, false)
                    .expect("sign")
                    .into_iter()
                    .map(|(k, v)| (k.parse().expect("header name"), v.parse().expect("header value")))
                    .collect();
                Prepared { body: Bytes::from(sample.body), headers }
            })
            .collect();
        Corpus { path: WEBHOOK_PATH.to_string(), items: Arc::new(items) }
    }

    /// PCBRIDGE_* variables for a role reading from / writing to `broker`.
    pub fn env(&self, broker: &Broker) -> Vec<(String, String)> {
        let mut env = vec![
            ("PCBRIDGE_LOG__LEVEL", "warn".to_string()),
            ("PCBRIDGE_BROKER__PREFIX", broker.prefix.clone()),
            (
                "PCBRIDGE_SIGNATURE__TRUSTED_CERTIFICATE_URL_PREFIXES",
                format!("[\"{}\"]", self.sim.certificate_prefix()),
            ),
            ("PCBRIDGE_SIGNATURE__EXTRA_TRUST_ANCHORS_FILE", self.anchors.display().to_string()),
            ("PCBRIDGE_SIGNATURE__ISSUER_ORGANIZATION", ORGANIZATION.to_string()),
            ("PCBRIDGE_PARTNER_CENTER__BASE_URL", self.sim.base_url().to_string()),
            ("PCBRIDGE_PARTNER_CENTER__GRAPH_BASE_URL", self.sim.base_url().to_string()),
            ("PCBRIDGE_PARTNER_CENTER__REFERRALS_BASE_URL", self.sim.base_url().to_string()),
            ("PCBRIDGE_PARTNER_CENTER__TOKEN_BASE_URL", self.sim.base_url().to_string()),
            ("PCBRIDGE_PARTNER_CENTER__TENANT_ID", simulator::TENANT_ID.to_string()),
            ("PCBRIDGE_PARTNER_CENTER__CLIENT_ID", simulator::CLIENT_ID.to_string()),
            ("PCBRIDGE_PARTNER_CENTER__CLIENT_SECRET", simulator::CLIENT_SECRET.to_string()),
            ("PCBRIDGE_PARTNER_CENTER__REFRESH_TOKEN", simulator::REFRESH_TOKEN.to_string()),
        ];
        match &broker.kind {
            BrokerSpec::Kafka(bootstrap) => env.extend([
                ("PCBRIDGE_BROKER__KIND", "kafka".to_string()),
                ("PCBRIDGE_KAFKA__BOOTSTRAP_SERVERS", bootstrap.clone()),
                ("PCBRIDGE_KAFKA__CREATE_TOPICS", "false".to_string()),
                // The mock cluster holds a fetch for the full fetch.wait.max.ms even when
                // data arrives; a real broker answers as soon as there is data.
                ("PCBRIDGE_KAFKA__PROPERTIES__FETCH_WAIT_MAX_MS", "10".to_string()),
            ]),
            BrokerSpec::Rabbit { exchange } => env.extend([
                ("PCBRIDGE_BROKER__KIND", "rabbitmq".to_string()),
                ("PCBRIDGE_RABBITMQ__EXCHANGE", exchange.clone()),
            ]),
            BrokerSpec::Amqp => env.extend([
                ("PCBRIDGE_BROKER__KIND", "amqp".to_string()),
                ("PCBRIDGE_AMQP__ADDRESS", AMQP_ADDRESS.to_string()),
            ]),
        }
        env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub enum BrokerSpec {
    Kafka(String),
    Rabbit {
        exchange: String,
    },
    /// AMQP 1.0 through the local RabbitMQ's plugin: a queue per destination.
    Amqp,
}

/// The AMQP 1.0 address of a destination on RabbitMQ 3.x: the queue, declared on first
/// use.
pub const AMQP_ADDRESS: &str = "/queue/{destination}";

/// The local RabbitMQ's AMQP 1.0 listener.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672";

/// A broker with this run's own prefix.
pub struct Broker {
    pub kind: BrokerSpec,
    pub prefix: String,
    /// Keeps the embedded Kafka alive.
    _mock: Option<rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>>,
}

pub const RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

impl Broker {
    /// librdkafka's mock cluster (one broker), every destination created up front.
    pub fn kafka() -> Self {
        let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        let prefix = "bench.".to_string();
        let config = Config::default();
        let d = Destinations::new(prefix.clone());
        for stem in pcbridge::worker::stems(&config) {
            for topic in [d.raw(&stem), d.enriched(&stem)] {
                mock.create_topic(&topic, 3, 1).expect("topic");
            }
        }
        mock.create_topic(&d.dead_letter(), 1, 1).expect("topic");
        Self { kind: BrokerSpec::Kafka(mock.bootstrap_servers()), prefix, _mock: Some(mock) }
    }

    /// The local RabbitMQ, under a prefix and exchange of this run's own.
    pub fn rabbitmq() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let run = format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        Self {
            kind: BrokerSpec::Rabbit { exchange: format!("pcbridge-bench-{run}") },
            prefix: format!("pcbridge-bench-{run}."),
            _mock: None,
        }
    }

    /// The local RabbitMQ over AMQP 1.0, under a prefix of this run's own.
    pub fn amqp() -> Self {
        let Self { prefix, .. } = Self::rabbitmq();
        Self { kind: BrokerSpec::Amqp, prefix, _mock: None }
    }

    pub fn name(&self) -> &'static str {
        match self.kind {
            BrokerSpec::Kafka(_) => "kafka (mock cluster)",
            BrokerSpec::Rabbit { .. } => "rabbitmq",
            BrokerSpec::Amqp => "amqp 1.0 (rabbitmq's plugin)",
        }
    }

    /// A pcbridge configuration for clients of this broker living in the benchmark.
    pub fn config(&self) -> Config {
        let mut c = Config::default();
        c.broker.prefix = self.prefix.clone();
        match &self.kind {
            BrokerSpec::Kafka(bootstrap) => {
                c.broker.kind = BrokerKind::Kafka;
                c.kafka.bootstrap_servers = bootstrap.clone();
                c.kafka.create_topics = false;
            }
            BrokerSpec::Rabbit { exchange } => {
                c.broker.kind = BrokerKind::Rabbitmq;
                c.rabbitmq.exchange = exchange.clone();
            }
            BrokerSpec::Amqp => {
                c.broker.kind = BrokerKind::Amqp;
                c.amqp.address = AMQP_ADDRESS.into();
            }
        }
        c
    }

    /// Publishes `n` raw subscription-updated events, each for a resource of its own, as
    /// the ingress would have (same message builder); returns when all are confirmed.
    pub async fn preload(&self, n: usize, tag: &str) {
        self.loader().await.publish(0..n, tag).await;
    }

    /// A publisher of raw events to this broker, as the ingress would have written them.
    pub async fn loader(&self) -> Loader {
        let config = self.config();
        let publisher =
            broker::connect(&config, "pcbridge-bench-loader", Arc::new(Metrics::new())).await.expect("publisher");
        Loader {
            publisher,
            destinations: Destinations::new(self.prefix.clone()),
            signature: SignatureHeaders::from_headers(&signature_headers()).expect("headers"),
        }
    }
}

/// Writes raw `subscription-updated` events straight to the broker, bypassing the ingress.
pub struct Loader {
    publisher: Arc<dyn Publisher>,
    destinations: Destinations,
    signature: SignatureHeaders,
}

impl Loader {
    /// Events `range` (subscription `<tag>-<i>`, spread over 500 customers), up to 512
    /// unconfirmed at a time; returns when all are confirmed.
    pub async fn publish(&self, range: std::ops::Range<usize>, tag: &str) {
        let mut tasks = tokio::task::JoinSet::new();
        for i in range {
            let body = format!(
                r#"{{"EventName":"subscription-updated","ResourceUri":"{API_HOST}/webhooks/v1/customers/c-{}/subscriptions/{tag}-{i}","ResourceName":"subscription","ResourceChangeUtcDate":"2026-11-22T08:00:00Z"}}"#,
                i % 500
            );
            let event = Event::parse(body.as_bytes()).expect("event");
            let accepted = message::Accepted {
                event: &event,
                event_id: event_id(body.as_bytes()),
                body: Bytes::from(body),
                signature: &self.signature,
                received_at: "2026-11-22T08:00:00Z".into(),
                traceparent: pcbridge::contract::headers::traceparent(None),
            };
            let msg = message::raw_message(accepted, &self.destinations, API_HOST);
            let p = self.publisher.clone();
            tasks.spawn(async move { p.publish(&msg).await.expect("loader publish") });
            if tasks.len() >= 512 {
                tasks.join_next().await;
            }
        }
        while tasks.join_next().await.is_some() {}
    }
}

fn signature_headers() -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert("authorization", http::HeaderValue::from_static("Signature AQID"));
    h.insert("x-ms-certificate-url", http::HeaderValue::from_static("https://example.invalid/c.cer"));
    h.insert("x-ms-signature-algorithm", http::HeaderValue::from_static("rsa-sha256"));
    h
}
