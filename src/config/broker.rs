//! The `[broker]`, `[kafka]` and `[rabbitmq]` sections: which broker, how destinations are
//! prefixed, and each broker's connection settings.

use super::{ConfigError, file_exists, invalid};
use super::{Secret, redact_url, secret::scalar_map};
use crate::contract::destinations::{Destinations, Layout};
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
    /// Signing in to Azure Event Hubs' Kafka endpoint.
    pub event_hubs: EventHubsConfig,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "localhost:9092".into(),
            create_topics: true,
            partitions: 6,
            replication_factor: 3,
            properties: BTreeMap::new(),
            event_hubs: EventHubsConfig::default(),
        }
    }
}

/// How pcbridge signs in to Event Hubs (docs/azure.md).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum EventHubsSignIn {
    /// Not Event Hubs, or signed in by `kafka.properties` alone.
    #[default]
    None,
    /// Shared access: SASL PLAIN with `$ConnectionString` and the namespace's
    /// connection string.
    ConnectionString,
    /// Entra ID: SASL OAUTHBEARER with tokens pcbridge obtains and renews.
    EntraId,
}

/// Which Entra ID credential gets the Event Hubs tokens.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum EntraCredential {
    /// An app's client secret: `kafka.event_hubs.client_*`, else the Partner Center app.
    #[default]
    ClientCredentials,
    /// AKS workload identity: the federated token file (`AZURE_FEDERATED_TOKEN_FILE`),
    /// `AZURE_CLIENT_ID` and `AZURE_TENANT_ID`, as the webhook injects them.
    WorkloadIdentity,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventHubsConfig {
    /// `none`, `connection-string` or `entra-id`.
    pub sign_in: EventHubsSignIn,
    /// The namespace's connection string, only from the environment
    /// (`PCBRIDGE_KAFKA__EVENT_HUBS__CONNECTION_STRING`); refused in config.toml.
    #[serde(skip_serializing)]
    pub connection_string: Secret,
    /// A file holding the connection string (a mounted Secret).
    pub connection_string_file: String,
    /// Entra ID: `client-credentials` or `workload-identity`.
    pub credential: EntraCredential,
    /// Entra ID tenant; empty: `partner_center.tenant_id` (client credentials) or
    /// `AZURE_TENANT_ID` (workload identity).
    pub tenant_id: String,
    /// Entra ID app; empty: `partner_center.client_id` or `AZURE_CLIENT_ID`.
    pub client_id: String,
    /// That app's secret, only from the environment
    /// (`PCBRIDGE_KAFKA__EVENT_HUBS__CLIENT_SECRET`); empty with `client_id` empty: the
    /// Partner Center app's.
    #[serde(skip_serializing)]
    pub client_secret: Secret,
    /// A file holding that app's secret.
    pub client_secret_file: String,
    /// Token scope; empty: `https://{namespace}.servicebus.windows.net/.default`, the
    /// namespace taken from `kafka.bootstrap_servers`.
    pub scope: String,
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
            .field("event_hubs", &self.event_hubs)
            .finish()
    }
}

impl KafkaConfig {
    /// The Event Hubs namespace host (`{namespace}.servicebus.windows.net`) of the first
    /// bootstrap server, if it is one.
    pub fn event_hubs_namespace(&self) -> Option<&str> {
        let first = self.bootstrap_servers.split(',').next()?.trim();
        let host = first.rsplit_once(':').map_or(first, |(host, _)| host);
        host.ends_with(".servicebus.windows.net").then_some(host)
    }

    /// The Entra ID scope of Event Hubs tokens.
    pub fn event_hubs_scope(&self) -> Option<String> {
        if !self.event_hubs.scope.is_empty() {
            return Some(self.event_hubs.scope.clone());
        }
        self.event_hubs_namespace().map(|host| format!("https://{host}/.default"))
    }

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
        let hubs = &self.event_hubs;
        file_exists("kafka.event_hubs.connection_string_file", &hubs.connection_string_file)?;
        file_exists("kafka.event_hubs.client_secret_file", &hubs.client_secret_file)?;
        if hubs.sign_in == EventHubsSignIn::ConnectionString
            && hubs.connection_string.is_empty()
            && hubs.connection_string_file.is_empty()
        {
            return invalid(
                "kafka.event_hubs.connection_string_file",
                "sign_in = \"connection-string\" needs the connection string: set PCBRIDGE_KAFKA__EVENT_HUBS__CONNECTION_STRING or this file",
            );
        }
        if hubs.sign_in == EventHubsSignIn::EntraId && hubs.scope.is_empty() && self.event_hubs_namespace().is_none() {
            return invalid(
                "kafka.event_hubs.scope",
                "is empty and kafka.bootstrap_servers names no *.servicebus.windows.net namespace to derive it from",
            );
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
