//! The broker a test runs against ([`Bus`]: librdkafka's mock Kafka cluster, the real
//! RabbitMQ, or AMQP 1.0 through RabbitMQ's plugin), the test's own destination prefix,
//! reading back what reached the broker ([`Received`]), and [`on_both_brokers!`] /
//! [`on_every_broker!`] for a test that runs on each.

pub mod amqp;
pub mod kafka;
pub mod rabbitmq;

use super::{app::config_trusting, pc::Pc};
use lapin::Connection;
use pcbridge::{
    config::{BrokerKind, Config},
    contract::destinations::{Layout, all_stems},
};
use std::{collections::BTreeMap, path::Path, time::Duration};

/// Runs `async fn $test(kind: BrokerKind)` once on each broker: expands to a module
/// `$test` with the tests `$test::kafka` and `$test::rabbitmq` (`cargo nextest run
/// $test` runs both). Attributes before the name (`#[ignore = "…"]`) go on both.
#[allow(unused_macros, reason = "compiled into every test binary, used by some")]
macro_rules! on_both_brokers {
    ($(#[$attr:meta])* $test:ident) => {
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn kafka() {
                super::$test(pcbridge::config::BrokerKind::Kafka).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn rabbitmq() {
                super::$test(pcbridge::config::BrokerKind::Rabbitmq).await;
            }
        }
    };
}
#[allow(unused_imports, reason = "compiled into every test binary, used by some")]
pub(crate) use on_both_brokers;

/// [`on_both_brokers!`] plus `$test::amqp`: the guarantee tests, which every broker kind
/// passes, AMQP 1.0 (Azure Service Bus's protocol) included.
#[allow(unused_macros, reason = "compiled into every test binary, used by some")]
macro_rules! on_every_broker {
    ($(#[$attr:meta])* $test:ident) => {
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn kafka() {
                super::$test(pcbridge::config::BrokerKind::Kafka).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn rabbitmq() {
                super::$test(pcbridge::config::BrokerKind::Rabbitmq).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn amqp() {
                super::$test(pcbridge::config::BrokerKind::Amqp).await;
            }
        }
    };
}
#[allow(unused_imports, reason = "compiled into every test binary, used by some")]
pub(crate) use on_every_broker;

/// Runs `async fn $test(kind: BrokerKind, layout: Layout)` on each broker with each
/// destination layout: a module `$test` with `kafka_per_event`, `kafka_per_category`,
/// `kafka_single`, the same three on `rabbitmq_…`, and AMQP 1.0 with the layout Service
/// Bus users pick (`amqp_single`) and the default (`amqp_per_event`).
#[allow(unused_macros, reason = "compiled into every test binary, used by some")]
macro_rules! on_both_brokers_and_layouts {
    ($test:ident) => {
        mod $test {
            use pcbridge::{config::BrokerKind, contract::destinations::Layout};

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn kafka_per_event() {
                super::$test(BrokerKind::Kafka, Layout::PerEvent).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn kafka_per_category() {
                super::$test(BrokerKind::Kafka, Layout::PerCategory).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn kafka_single() {
                super::$test(BrokerKind::Kafka, Layout::Single).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rabbitmq_per_event() {
                super::$test(BrokerKind::Rabbitmq, Layout::PerEvent).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rabbitmq_per_category() {
                super::$test(BrokerKind::Rabbitmq, Layout::PerCategory).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rabbitmq_single() {
                super::$test(BrokerKind::Rabbitmq, Layout::Single).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn amqp_single() {
                super::$test(BrokerKind::Amqp, Layout::Single).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn amqp_per_event() {
                super::$test(BrokerKind::Amqp, Layout::PerEvent).await;
            }
        }
    };
}
#[allow(unused_imports, reason = "compiled into every test binary, used by some")]
pub(crate) use on_both_brokers_and_layouts;

/// A unique destination prefix for one test.
pub fn unique_prefix() -> String {
    format!("pctest-{}.", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// Output destinations of a test (enriched for every catalogue event, and dead letters).
pub fn output_queues(config: &Config) -> Vec<String> {
    config.broker.destinations().outputs(&all_stems().collect::<Vec<_>>())
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
    /// AMQP basic properties (message_id, content_type, delivery_mode); on AMQP 1.0
    /// message_id, content_type, group_id and durable.
    pub properties: BTreeMap<String, String>,
}

/// The broker a test runs against: librdkafka's mock cluster, the real RabbitMQ, or the
/// real RabbitMQ over AMQP 1.0 (the connection counts and deletes the queues the plugin
/// made; messages are read over AMQP 1.0).
pub enum Bus {
    Kafka(rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>),
    Rabbit(Connection),
    Amqp(Connection),
}

impl Bus {
    pub async fn new(kind: BrokerKind) -> Self {
        match kind {
            BrokerKind::Kafka => Bus::Kafka(rdkafka::mocking::MockCluster::new(1).expect("mock cluster")),
            BrokerKind::Rabbitmq => Bus::Rabbit(rabbitmq::connect().await),
            BrokerKind::Amqp => Bus::Amqp(rabbitmq::connect().await),
        }
    }

    pub fn kind(&self) -> BrokerKind {
        match self {
            Bus::Kafka(_) => BrokerKind::Kafka,
            Bus::Rabbit(_) => BrokerKind::Rabbitmq,
            Bus::Amqp(_) => BrokerKind::Amqp,
        }
    }

    pub fn bootstrap(&self) -> String {
        match self {
            Bus::Kafka(m) => m.bootstrap_servers(),
            Bus::Rabbit(_) | Bus::Amqp(_) => String::new(),
        }
    }

    /// A test configuration; on Kafka the test's topics are created in the mock cluster
    /// first (what `kafka.create_topics` does on a real cluster, which the mock lacks).
    pub fn config(&self, pc: &Pc) -> Config {
        self.config_trusting(&pc.certs.prefix, &pc.anchors_file)
    }

    /// [`Bus::config`] with the destination layout `layout`.
    pub fn config_with_layout(&self, pc: &Pc, layout: Layout) -> Config {
        self.configured(config_trusting(self.kind(), &pc.certs.prefix, &pc.anchors_file, &self.bootstrap()), layout)
    }

    /// [`Bus::config`] for an ingress that trusts another certificate source (the
    /// product's own simulator).
    pub fn config_trusting(&self, prefix: &str, anchors_file: &Path) -> Config {
        self.configured(config_trusting(self.kind(), prefix, anchors_file, &self.bootstrap()), Layout::PerEvent)
    }

    /// `c` with `layout`, its topics created in the mock Kafka cluster.
    pub fn configured(&self, mut c: Config, layout: Layout) -> Config {
        c.broker.layout = layout;
        if let Bus::Kafka(mock) = self {
            let d = c.broker.destinations();
            for topic in d.all_raw().into_iter().chain(output_queues(&c)) {
                mock.create_topic(&topic, c.kafka.partitions, 1).expect("mock topic");
            }
        }
        c
    }

    /// Creates `topics` in the mock Kafka cluster (nothing on the other brokers, where
    /// the roles declare their queues).
    pub fn create_topics(&self, config: &Config, topics: &[String]) {
        if let Bus::Kafka(mock) = self {
            for topic in topics {
                mock.create_topic(topic, config.kafka.partitions, 1).expect("mock topic");
            }
        }
    }

    /// Reads up to `want` messages from one destination.
    pub async fn read(&self, destination: &str, want: usize, wait: Duration) -> Vec<Received> {
        match self {
            Bus::Kafka(m) => kafka::read(&m.bootstrap_servers(), &[destination], want, wait).await,
            Bus::Rabbit(c) => rabbitmq::read(c, destination, want, wait).await,
            Bus::Amqp(_) => amqp::read(destination, want, wait).await,
        }
    }

    /// Up to `want` messages of one destination, left in place (Kafka: a log; RabbitMQ:
    /// read unacknowledged and requeued).
    pub async fn peek(&self, destination: &str, want: usize, wait: Duration) -> Vec<Received> {
        match self {
            Bus::Rabbit(c) => rabbitmq::peek(c, destination, want, wait).await,
            _ => self.read(destination, want, wait).await,
        }
    }

    /// How many messages `destination` holds, without taking them.
    pub async fn read_count(&self, destination: &str) -> usize {
        match self {
            Bus::Kafka(m) => {
                kafka::read(&m.bootstrap_servers(), &[destination], usize::MAX, Duration::from_secs(2)).await.len()
            }
            Bus::Rabbit(c) | Bus::Amqp(c) => {
                rabbitmq::message_count(c, destination).await.expect("the queue exists") as usize
            }
        }
    }

    /// Every message under the test's prefix (raw destinations plus `extra`).
    pub async fn count_all(&self, config: &Config, extra: &[String]) -> usize {
        match self {
            Bus::Kafka(m) => {
                kafka::count_prefix(&m.bootstrap_servers(), &config.broker.prefix, Duration::from_secs(3)).await
            }
            Bus::Rabbit(c) | Bus::Amqp(c) => rabbitmq::count(c, &raw_and(config, extra)).await as usize,
        }
    }

    /// Every message under the test's prefix: waits until `expect` arrived (or `wait`
    /// passed), then gives stragglers a moment so that extra messages are seen too.
    pub async fn read_all(&self, config: &Config, extra: &[String], expect: usize, wait: Duration) -> Vec<Received> {
        match self {
            Bus::Kafka(m) => {
                let regex = format!("^{}.*", config.broker.prefix.replace('.', "\\."));
                kafka::read_settled(&m.bootstrap_servers(), &[regex.as_str()], expect, wait).await
            }
            Bus::Rabbit(c) => rabbitmq::drain_settled(c, &raw_and(config, extra), expect, wait).await,
            Bus::Amqp(_) => amqp::drain_settled(&raw_and(config, extra), expect, wait).await,
        }
    }

    /// Every message in the named destinations only (waits for `expect`, then settles).
    pub async fn read_from(&self, destinations: &[String], expect: usize, wait: Duration) -> Vec<Received> {
        match self {
            Bus::Kafka(m) => {
                let topics: Vec<&str> = destinations.iter().map(String::as_str).collect();
                kafka::read_settled(&m.bootstrap_servers(), &topics, expect, wait).await
            }
            Bus::Rabbit(c) => rabbitmq::drain_settled(c, destinations, expect, wait).await,
            Bus::Amqp(_) => amqp::drain_settled(destinations, expect, wait).await,
        }
    }

    /// Removes what the test left on RabbitMQ (a mock Kafka cluster goes with the test).
    pub async fn cleanup(&self, config: &Config, extra: &[String]) {
        if let Bus::Rabbit(c) | Bus::Amqp(c) = self {
            rabbitmq::cleanup(c, config, extra).await;
        }
    }
}

/// The test's raw destinations, and `extra`.
fn raw_and(config: &Config, extra: &[String]) -> Vec<String> {
    let d = config.broker.destinations();
    d.all_raw().into_iter().chain(extra.iter().cloned()).collect()
}
