//! How messages move, knowing nothing of Partner Center: the [`Publisher`] trait, the
//! [`Message`] it carries, and one implementation per broker ([`kafka`], [`rabbitmq`]).
//!
//! A publish resolves only when the broker has durably accepted the message (Kafka
//! `acks=all` delivery report; RabbitMQ publisher confirm of a persistent message routed
//! to a durable queue). Everything above this module relies on that: the ingress answers
//! 2xx only after `publish` returned `Ok`.

pub mod kafka;
pub mod rabbitmq;

use crate::config::{BrokerKind, Config};
use crate::telemetry::Metrics;
use bytes::Bytes;
use std::{sync::Arc, time::Duration};

/// CloudEvents 1.0 context attributes of a message, applied in binary content mode by
/// each broker's own protocol binding (Kafka: `ce_` headers; AMQP: `cloudEvents_`
/// application properties).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudEvent {
    pub id: String,
    pub source: String,
    pub ty: String,
    pub subject: Option<String>,
    pub time: Option<String>,
}

/// CloudEvents spec version written on every message.
pub const CLOUDEVENTS_SPEC_VERSION: &str = "1.0";

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
    /// The broker answered and refused the message (nack, unroutable, too large…).
    #[error("broker refused the message: {0}")]
    Rejected(String),
}

/// Failure to set up destinations (topics, exchange, queues).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(pub String);

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
    })
}
