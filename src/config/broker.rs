//! The `[broker]`, `[kafka]` and `[rabbitmq]` sections: which broker, how destinations are
//! prefixed, and each broker's connection settings.

use super::{ConfigError, file_exists, invalid};
use crate::contract::destinations::{Destinations, Layout};
use super::{Secret, redact_url, secret::scalar_map};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, fmt};

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    #[default]
    Kafka,
    Rabbitmq,
}

impl fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BrokerKind::Kafka => "kafka",
            BrokerKind::Rabbitmq => "rabbitmq",
        })
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `kafka` or `rabbitmq`.
    pub kind: BrokerKind,
    /// Prepended to every destination name: `{prefix}{EventName}`.
    pub prefix: String,
    /// How events map to destinations: `per-event` (a raw and an enriched destination
    /// per event name), `per-category` (per family: subscriptions, referrals, gdap, …) or
    /// `single` (`{prefix}events` and `{prefix}events.enriched`). Ingress, worker and
    /// `replay` must agree on it.
    pub layout: Layout,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self { kind: BrokerKind::Kafka, prefix: "partnercenter.".into(), layout: Layout::PerEvent }
    }
}

impl BrokerConfig {
    /// The destination names this configuration gives.
    pub fn destinations(&self) -> Destinations {
        Destinations::with_layout(self.prefix.clone(), self.layout)
    }
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub bootstrap_servers: String,
    /// Create missing topics at start-up (and on first use of a new event name).
    pub create_topics: bool,
    /// Partitions of topics pcbridge creates.
    pub partitions: i32,
    /// Replication factor of topics pcbridge creates.
    pub replication_factor: i32,
    /// librdkafka properties passed through as they are (`security.protocol`,
    /// `sasl.mechanism`, `ssl.ca.location`, …). From the environment, `_` stands for
    /// `.`: `PCBRIDGE_KAFKA__PROPERTIES__SASL_PASSWORD` sets `sasl.password`.
    #[serde(deserialize_with = "scalar_map")]
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "localhost:9092".into(),
            create_topics: true,
            partitions: 6,
            replication_factor: 3,
            properties: BTreeMap::new(),
        }
    }
}

/// librdkafka properties that hold secrets: refused in config.toml, redacted in `Debug`.
pub const SECRET_KAFKA_PROPERTIES: &[&str] =
    &["sasl.password", "ssl.key.password", "sasl.oauthbearer.client.secret", "ssl.keystore.password"];

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let secret = SECRET_KAFKA_PROPERTIES.contains(&k.replace('_', ".").as_str());
                (k.as_str(), if secret { "***" } else { v.as_str() })
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("create_topics", &self.create_topics)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("properties", &properties)
            .finish()
    }
}

impl KafkaConfig {
    /// The passthrough properties with environment-style keys (`sasl_password`)
    /// normalised to librdkafka's dotted names (`sasl.password`).
    pub fn normalized_properties(&self) -> BTreeMap<String, String> {
        self.properties.iter().map(|(k, v)| (k.replace('_', "."), v.clone())).collect()
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitMqConfig {
    /// `amqp://host:port/vhost` or `amqps://…`. Credentials go in `username` and the
    /// password in `PCBRIDGE_RABBITMQ__PASSWORD` or `password_file`.
    pub url: String,
    pub username: String,
    /// Only from the environment (`PCBRIDGE_RABBITMQ__PASSWORD`); refused in config.toml.
    pub password: Secret,
    /// A file holding the password (a mounted Kubernetes Secret). Empty: none.
    pub password_file: String,
    /// The durable topic exchange every destination is routed through.
    pub exchange: String,
    /// `classic` or `quorum` (replicated; recommended on a multi-node cluster).
    pub queue_type: QueueType,
    /// Longest wait between reconnection attempts after the broker went away.
    pub reconnect_max_delay_ms: u64,
}

impl Default for RabbitMqConfig {
    fn default() -> Self {
        Self {
            url: "amqp://127.0.0.1:5672/%2f".into(),
            username: "guest".into(),
            password: Secret::default(),
            password_file: String::new(),
            exchange: "partnercenter".into(),
            queue_type: QueueType::Classic,
            reconnect_max_delay_ms: 5_000,
        }
    }
}

impl BrokerConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.prefix.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return invalid("broker.prefix", format!("{:?} may hold only A-Z a-z 0-9 . _ -", self.prefix));
        }
        if self.prefix.len() > 40 {
            return invalid("broker.prefix", "is longer than 40 characters");
        }
        Ok(())
    }
}

impl KafkaConfig {
    /// Checked only when Kafka is the broker.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return invalid("kafka.bootstrap_servers", "is empty");
        }
        if self.partitions < 1 {
            return invalid("kafka.partitions", "must be at least 1");
        }
        if self.replication_factor < 1 && self.replication_factor != -1 {
            return invalid("kafka.replication_factor", "must be at least 1 (or -1 for the broker's default)");
        }
        Ok(())
    }
}

impl RabbitMqConfig {
    /// The password file is checked whatever the broker (it may be set ahead of a switch);
    /// the rest only when RabbitMQ is the broker.
    pub(super) fn validate_files(&self) -> Result<(), ConfigError> {
        file_exists("rabbitmq.password_file", &self.password_file)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(self.url.starts_with("amqp://") || self.url.starts_with("amqps://")) {
            return invalid("rabbitmq.url", format!("{:?} must start with amqp:// or amqps://", redact_url(&self.url)));
        }
        if self.exchange.is_empty() {
            return invalid("rabbitmq.exchange", "is empty");
        }
        Ok(())
    }
}
