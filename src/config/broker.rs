//! The `[broker]`, `[kafka]`, `[rabbitmq]` and `[amqp]` sections: which broker, how
//! destinations are prefixed, and each broker's connection settings.

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
    /// AMQP 1.0 (Azure Service Bus, or any AMQP 1.0 broker).
    Amqp,
}

impl fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BrokerKind::Kafka => "kafka",
            BrokerKind::Rabbitmq => "rabbitmq",
            BrokerKind::Amqp => "amqp",
        })
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `kafka`, `rabbitmq` or `amqp` (AMQP 1.0: Azure Service Bus).
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
    /// The durable topic exchange downstream services bind with patterns. Raw messages
    /// are published to the direct exchange `{exchange}.raw`, which forwards each
    /// shard's key to this one.
    pub exchange: String,
    /// `classic` or `quorum` (replicated; recommended on a multi-node cluster).
    pub queue_type: QueueType,
    /// Longest wait between reconnection attempts after the broker went away.
    pub reconnect_max_delay_ms: u64,
    /// Queues each raw destination is split into, by a hash of the ordering key
    /// (`docs/message-contract.md`). Each shard is consumed by one worker replica at a
    /// time, so this is the most replicas that can share the work: replicas beyond it
    /// stand by. Changing it moves keys between shards: drain the raw queues first.
    pub shards: u16,
    /// How often a worker replica looks at who is present and takes or hands over
    /// shards. A replica that dies is replaced within about one interval.
    pub rebalance_interval_ms: u64,
    /// Write the CloudEvents headers (`cloudEvents_*`) on raw messages too. Off: each of
    /// them repeats a `pc-*` header, the body or configuration, and RabbitMQ stores every
    /// header byte of every message (docs/message-contract.md). pcbridge's own readers
    /// derive them either way; turn this on for a CloudEvents reader of a raw queue.
    pub raw_cloud_events: bool,
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
            shards: 12,
            rebalance_interval_ms: 1_000,
            raw_cloud_events: false,
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
        if !(1..=256).contains(&self.shards) {
            return invalid("rabbitmq.shards", "must be between 1 and 256");
        }
        if self.rebalance_interval_ms < 50 {
            return invalid("rabbitmq.rebalance_interval_ms", "must be at least 50");
        }
        Ok(())
    }
}

/// How pcbridge signs in to an AMQP 1.0 broker (docs/azure.md).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AmqpSignIn {
    /// SASL ANONYMOUS.
    None,
    /// SASL PLAIN: `username` and the password (a Service Bus shared access key name and
    /// its key).
    #[default]
    Plain,
    /// SASL ANONYMOUS, then an Entra ID token put on the `$cbs` node for each address
    /// (AMQP claims-based security), renewed before it expires.
    EntraId,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    /// `amqp://host:port` or `amqps://host[:port]` (TLS; Service Bus:
    /// `amqps://{namespace}.servicebus.windows.net`). No credentials in the URL.
    pub url: String,
    /// The AMQP address of a destination, `{destination}` standing for its name. Service
    /// Bus: `{destination}` (the queue's or topic's name); RabbitMQ's AMQP 1.0 plugin:
    /// `/queue/{destination}` (3.x; the queue is declared on first use).
    pub address: String,
    /// `none`, `plain` or `entra-id`.
    pub sign_in: AmqpSignIn,
    /// SASL PLAIN user (Service Bus: the shared access key name).
    pub username: String,
    /// Only from the environment (`PCBRIDGE_AMQP__PASSWORD`); refused in config.toml.
    #[serde(skip_serializing)]
    pub password: Secret,
    /// A file holding the password (Service Bus: the shared access key).
    pub password_file: String,
    /// Entra ID: `client-credentials` or `workload-identity`.
    pub credential: EntraCredential,
    /// Entra ID tenant; empty: `partner_center.tenant_id` or `AZURE_TENANT_ID`.
    pub tenant_id: String,
    /// Entra ID app; empty: `partner_center.client_id` or `AZURE_CLIENT_ID`.
    pub client_id: String,
    /// That app's secret, only from the environment (`PCBRIDGE_AMQP__CLIENT_SECRET`).
    #[serde(skip_serializing)]
    pub client_secret: Secret,
    /// A file holding that app's secret.
    pub client_secret_file: String,
    /// Token scope; empty: `https://{host}/.default` (Service Bus: `https://servicebus.azure.net/.default` works too).
    pub scope: String,
    /// The worker's sources require sessions (Service Bus `requiresSession`): each
    /// receiver link locks one session (one ordering key) at a time, so one resource's
    /// events go to one replica at a time, in order.
    pub sessions: bool,
    /// With `sessions`: receiver links per source, each holding one session — how many
    /// resources of a source one replica works on at once.
    pub session_links: u16,
    /// With `sessions`: a link that received nothing for this long, with nothing
    /// unsettled, lets its session go and locks the next.
    pub session_idle_ms: u64,
    /// Longest wait between reconnection attempts after the broker went away.
    pub reconnect_max_delay_ms: u64,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: "amqp://127.0.0.1:5672".into(),
            address: "{destination}".into(),
            sign_in: AmqpSignIn::Plain,
            username: "guest".into(),
            password: Secret::default(),
            password_file: String::new(),
            credential: EntraCredential::ClientCredentials,
            tenant_id: String::new(),
            client_id: String::new(),
            client_secret: Secret::default(),
            client_secret_file: String::new(),
            scope: String::new(),
            sessions: false,
            session_links: 8,
            session_idle_ms: 1_000,
            reconnect_max_delay_ms: 5_000,
        }
    }
}

impl AmqpConfig {
    /// The AMQP address of `destination`.
    pub fn address_of(&self, destination: &str) -> String {
        self.address.replace("{destination}", destination)
    }

    /// The host of `url`.
    pub fn host(&self) -> Option<String> {
        url::Url::parse(&self.url).ok()?.host_str().map(str::to_string)
    }

    /// The Entra ID scope of the tokens put on `$cbs`.
    pub fn entra_scope(&self) -> Option<String> {
        if !self.scope.is_empty() {
            return Some(self.scope.clone());
        }
        self.host().map(|host| format!("https://{host}/.default"))
    }

    pub(super) fn validate_files(&self) -> Result<(), ConfigError> {
        file_exists("amqp.password_file", &self.password_file)?;
        file_exists("amqp.client_secret_file", &self.client_secret_file)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let parsed = url::Url::parse(&self.url)
            .map_err(|e| ConfigError::invalid("amqp.url", format!("{:?} is not a URL: {e}", redact_url(&self.url))))?;
        if !matches!(parsed.scheme(), "amqp" | "amqps") || parsed.host_str().is_none() {
            return invalid(
                "amqp.url",
                format!("{:?} must be amqp://host[:port] or amqps://host[:port]", redact_url(&self.url)),
            );
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return invalid(
                "amqp.url",
                "holds credentials: use amqp.username and PCBRIDGE_AMQP__PASSWORD or amqp.password_file",
            );
        }
        if !self.address.contains("{destination}") {
            return invalid("amqp.address", format!("{:?} does not contain {{destination}}", self.address));
        }
        if self.sign_in == AmqpSignIn::Plain && self.username.is_empty() {
            return invalid("amqp.username", "is empty and sign_in = \"plain\" needs it");
        }
        Ok(())
    }
}
