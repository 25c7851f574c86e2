//! How messages move, knowing nothing of Partner Center: the [`Publisher`] trait, the
//! [`Message`] it carries, and one implementation per broker ([`kafka`], [`rabbitmq`],
//! [`amqp`] for AMQP 1.0 and Azure Service Bus).
//!
//! A publish resolves only when the broker has durably accepted the message (Kafka
//! `acks=all` delivery report; RabbitMQ publisher confirm of a persistent message routed
//! to a durable queue; AMQP 1.0 `accepted` outcome of an unsettled durable transfer).
//! Everything above this module relies on that: the ingress answers 2xx only after
//! `publish` returned `Ok`.

mod amqp;
mod entra;
mod kafka;
pub mod ordered;
mod rabbitmq;

use crate::config::{BrokerKind, Config};
use crate::telemetry::Metrics;
use bytes::Bytes;
use std::{sync::Arc, time::Duration};

pub use crate::contract::cloud_event::CloudEvent;

/// One message to publish.
#[derive(Clone, Debug)]
pub struct Message {
    /// Topic (Kafka) or routing key and queue name (RabbitMQ).
    pub destination: String,
    /// Partitioning key (Kafka): messages with one key keep their order.
    pub key: String,
    /// Message identity (AMQP `message_id`; CloudEvents `id` lives in `cloud_event`).
    pub id: String,
    /// Application headers, written as they are.
    pub headers: Vec<(String, String)>,
    pub cloud_event: CloudEvent,
    /// MIME type of `body` (`datacontenttype`).
    pub content_type: &'static str,
    pub body: Bytes,
}

/// Why a publish did not succeed. Every variant means "not durably stored": the caller
/// must not report success.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No usable connection to the broker right now.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker did not confirm within the deadline; the message may or may not have
    /// been stored (a retry can duplicate it, which `pc-event-id` deduplicates).
    #[error("broker did not confirm within {0:?}")]
    Timeout(Duration),
    /// The broker refused this very message (too large, invalid, unroutable even after
    /// re-declaring its queue): publishing the same bytes again cannot succeed.
    #[error("broker refused the message: {0}")]
    Rejected(String),
}

/// Failure to connect to the broker or to set up what a role needs on it (topics,
/// exchange, queues, a subscription). The kind tells the caller what to say and whether
/// waiting can help; the text names the broker, the object and the key to check.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The configuration cannot make a client (a bad URL or property, an unreadable
    /// secret): retrying does not help, the operator fixes a key.
    #[error("{0}")]
    Config(String),
    /// The broker did not answer, or not in time (down, DNS, TLS, a refused login): it
    /// may work later, and a local broker that is not running is the usual cause.
    #[error("{0}")]
    Unreachable(String),
    /// The broker answered and refused an operation (create, declare, subscribe,
    /// assign, read): its state or permissions disagree with the configuration.
    #[error("{0}")]
    Refused(String),
    /// A thread or task of the client could not start or ended early.
    #[error("{0}")]
    Runtime(String),
}

impl SetupError {
    /// Whether trying again later can succeed without a change of configuration.
    pub fn is_transient(&self) -> bool {
        matches!(self, SetupError::Unreachable(_) | SetupError::Runtime(_))
    }
}

/// A broker that can durably store messages.
#[async_trait::async_trait]
pub trait Publisher: Send + Sync {
    /// `kafka` or `rabbitmq`, for logs and metric labels.
    fn kind(&self) -> &'static str;
    /// Creates the destinations when missing (idempotent).
    async fn ensure_destinations(&self, names: &[String]) -> Result<(), SetupError>;
    /// Publishes and waits for the broker's durable confirm.
    async fn publish(&self, message: &Message) -> Result<(), PublishError>;
    /// Whether the broker connection is usable now (drives `/readyz`).
    fn is_ready(&self) -> bool;
    /// Waits (up to `deadline`) for queued messages to be confirmed, then disconnects.
    async fn close(&self, deadline: Duration);
}

/// One consumed message.
#[derive(Debug)]
pub struct Delivery {
    /// The destination it was read from.
    pub destination: String,
    /// Ordering key: the Kafka key; on RabbitMQ the CloudEvents subject, else the id.
    pub key: String,
    /// Application headers (the CloudEvents binding headers are in `cloud_event`).
    pub headers: Vec<(String, String)>,
    pub cloud_event: Option<CloudEvent>,
    pub body: Bytes,
    /// Hand back to [`Consumer::ack`] once the delivery's output is confirmed.
    pub ack: AckToken,
}

impl Delivery {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// What acknowledging a delivery takes; opaque outside the broker module.
#[derive(Debug)]
pub struct AckToken(pub(crate) AckInner);

#[derive(Debug)]
pub(crate) enum AckInner {
    Kafka {
        topic: String,
        partition: i32,
        offset: i64,
    },
    Rabbit {
        acker: lapin::Acker,
        /// Holds the shard this came from until acknowledged (`rabbitmq::sharing`).
        lease: Option<rabbitmq::InFlight>,
    },
    /// The receiving link's settle queue and the delivery's number on it.
    Amqp {
        link: tokio::sync::mpsc::UnboundedSender<u64>,
        id: u64,
    },
}

/// A source of deliveries that are acknowledged one by one.
#[async_trait::async_trait]
pub trait Consumer: Send + Sync {
    /// The next delivery; `None` once the consumer is closed.
    async fn recv(&self) -> Option<Delivery>;
    /// Marks a delivery done. Call only after its output was confirmed: on Kafka the
    /// offset is stored (and committed) only when every earlier offset of its partition
    /// is done too, so a commit never skips unfinished work.
    async fn ack(&self, token: AckToken);
    /// Whether the consumer is connected (drives `/readyz`).
    fn is_ready(&self) -> bool;
    /// Stops consuming and commits what was acknowledged. Unacknowledged deliveries are
    /// delivered again (here or to another replica).
    async fn close(&self);
}

/// A bounded read of one destination, for operator tools (`pcbridge replay`): the
/// messages it held when the read began, each either removed (once the caller has
/// confirmed whatever it did with it) or left in place.
#[async_trait::async_trait]
pub trait Backlog: Send {
    /// How many messages the destination held when the read began.
    fn size(&self) -> u64;
    /// Whether [`Backlog::remove`] deletes messages. A Kafka topic is a log: its records
    /// stay until retention removes them.
    fn removes(&self) -> bool;
    /// The next message; `None` once every message present at the start was read.
    async fn next(&mut self) -> Option<Delivery>;
    /// Removes a message read from this backlog (RabbitMQ: acknowledges it).
    async fn remove(&mut self, token: AckToken) -> Result<(), SetupError>;
    /// Ends the read. Messages not removed stay where they were.
    async fn finish(self: Box<Self>);
}

/// Opens a [`Backlog`] of `destination`.
pub async fn backlog(config: &Config, destination: &str) -> Result<Box<dyn Backlog>, SetupError> {
    Ok(match config.broker.kind {
        BrokerKind::Kafka => Box::new(kafka::KafkaBacklog::open(config, destination).await?),
        BrokerKind::Rabbitmq => Box::new(rabbitmq::RabbitBacklog::open(config, destination).await?),
        BrokerKind::Amqp => Box::new(amqp::AmqpBacklog::open(config, destination).await?),
    })
}

/// Starts consuming `sources` from the configured broker.
pub async fn consume(
    config: &Config,
    sources: Vec<String>,
    client_name: &str,
    metrics: Arc<Metrics>,
) -> Result<Arc<dyn Consumer>, SetupError> {
    Ok(match config.broker.kind {
        BrokerKind::Kafka => Arc::new(kafka::KafkaConsumer::start(config, sources, client_name, metrics)?),
        BrokerKind::Rabbitmq => rabbitmq::RabbitConsumer::start(config, sources, client_name).await?,
        BrokerKind::Amqp => amqp::AmqpConsumer::start(config, sources, client_name).await?,
    })
}

/// A reader's own copy of some raw destinations: it sees every message of `sources`
/// whatever other readers (the worker) take, plus the messages published to
/// `destination` itself (replays meant for this reader alone), and keeps its own place.
#[derive(Clone, Debug)]
pub struct Subscription {
    /// The reader's own destination (`contract::destinations::Destinations::forward`).
    pub destination: String,
    /// The raw destinations copied.
    pub sources: Vec<String>,
    /// The consumer group (Kafka) or member group (RabbitMQ) the reader's replicas share.
    pub group: String,
}

/// Starts consuming a [`Subscription`]. Kafka: the group reads `sources` and
/// `destination` from its own offsets. RabbitMQ: `destination`'s shard `k` is bound to
/// shard `k` of every source (and to its own name), so the raw exchange copies each message
/// into it. The AMQP 1.0 queues of Service Bus have no such copy: there, refused.
pub async fn subscribe(
    config: &Config,
    subscription: &Subscription,
    client_name: &str,
    metrics: Arc<Metrics>,
) -> Result<Arc<dyn Consumer>, SetupError> {
    let mut config = config.clone();
    config.worker.group_id = subscription.group.clone();
    Ok(match config.broker.kind {
        BrokerKind::Kafka => {
            let topics = subscription.sources.iter().chain([&subscription.destination]).cloned().collect();
            Arc::new(kafka::KafkaConsumer::start(&config, topics, client_name, metrics)?)
        }
        BrokerKind::Rabbitmq => {
            let topology =
                rabbitmq::Topology::new(&config).with_copy(&subscription.destination, subscription.sources.clone());
            let sources = vec![subscription.destination.clone()];
            rabbitmq::RabbitConsumer::start_with(&config, topology, sources, client_name).await?
        }
        BrokerKind::Amqp => {
            return Err(SetupError::Config(
                "forwarding reads a copy of the raw destinations, which AMQP 1.0 queues cannot give: \
                 use broker.kind = kafka (Event Hubs) or rabbitmq"
                    .into(),
            ));
        }
    })
}

/// Connects the configured broker. `client_name` identifies the role in broker tools.
pub async fn connect(
    config: &Config,
    client_name: &str,
    metrics: Arc<Metrics>,
) -> Result<Arc<dyn Publisher>, SetupError> {
    Ok(match config.broker.kind {
        BrokerKind::Kafka => {
            let kafka = Arc::new(kafka::Kafka::connect(config, client_name, metrics)?);
            kafka::Kafka::spawn_probe(&kafka, Duration::from_secs(2));
            kafka
        }
        BrokerKind::Rabbitmq => rabbitmq::RabbitMq::connect(config, client_name, metrics).await?,
        BrokerKind::Amqp => amqp::AmqpPublisher::connect(config, client_name, metrics).await?,
    })
}

/// How [`publish_until_confirmed`] ended.
pub enum Published {
    Confirmed,
    /// `abandon` was cancelled (shutting down past the deadline): the caller leaves its
    /// delivery unacknowledged.
    Abandoned,
    /// The broker answered and refused this message (retrying the same bytes cannot help).
    Refused(String),
}

/// Publishes `message`, retrying while the broker is unavailable or slow (delays from
/// 100 ms doubling to 5 s, jittered), until it is confirmed, refused — only when
/// `may_refuse`; otherwise a refusal is retried like any failure — or `abandon` is
/// cancelled. For a role's outputs, whose delivery is acknowledged only once they are in.
pub async fn publish_until_confirmed(
    publisher: &dyn Publisher,
    message: &Message,
    may_refuse: bool,
    abandon: &tokio_util::sync::CancellationToken,
) -> Published {
    let mut delays = reconnect_delays(Duration::from_secs(5));
    loop {
        match publisher.publish(message).await {
            Ok(()) => return Published::Confirmed,
            Err(PublishError::Rejected(reason)) if may_refuse => return Published::Refused(reason),
            Err(e) => tracing::warn!(destination = %message.destination, error = %e, "publish failed; retrying"),
        }
        tokio::select! {
            biased;
            () = abandon.cancelled() => return Published::Abandoned,
            () = tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))) => {}
        }
    }
}

/// Delays between reconnection attempts of a broker client: from 100 ms, doubling up to
/// `max`, jittered so that many clients do not reconnect in step after a broker restart;
/// never giving up.
pub(crate) fn reconnect_delays(max: Duration) -> impl Iterator<Item = Duration> {
    use backon::{BackoffBuilder, ExponentialBuilder};
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Which of the destinations `names` the broker does not have, changing nothing (for
/// `pcbridge check`: on Event Hubs the operator creates them).
pub async fn missing(config: &Config, names: &[String]) -> Result<Vec<String>, SetupError> {
    match config.broker.kind {
        BrokerKind::Kafka => kafka::missing_topics(config, names).await,
        BrokerKind::Rabbitmq => rabbitmq::missing_queues(config, names).await,
        BrokerKind::Amqp => amqp::missing(config, names).await,
    }
}

/// Connects to the configured broker and reports what it found, changing nothing
/// (for `pcbridge check`).
pub async fn probe(config: &Config) -> Result<String, SetupError> {
    match config.broker.kind {
        BrokerKind::Kafka => kafka::probe(config).await,
        BrokerKind::Rabbitmq => rabbitmq::probe(config).await,
        BrokerKind::Amqp => amqp::probe(config).await,
    }
}
