//! Typed configuration: built-in defaults ← `config.toml` ← `PCBRIDGE_<SECTION>__<KEY>`
//! environment variables, then [`Config::validate`].
//!
//! Every key has a default here and a commented twin in the repository's
//! `config.toml`. Secrets (broker passwords, SASL credentials) are accepted only from the
//! environment or from files named in the configuration, never from `config.toml`
//! itself: [`Config::load`] refuses a file that holds one. Errors name the offending key
//! and where its value came from, so an operator can fix it without reading a backtrace.
//!
//! This module imports nothing else of the crate.

mod load;
mod worker;
pub use worker::{PartnerCenterConfig, WorkerConfig};
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, fmt, net::SocketAddr, path::Path, time::Duration};

/// A configuration problem, phrased for the operator who has to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// A secret value: printed as `***` by `Debug` so a logged config never leaks it.
#[derive(Clone, Default, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        scalar_string(d).map(Secret)
    }
}

/// A string from any scalar: the environment (and TOML) may type `12345` or `true`.
fn scalar_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i64),
        U(u64),
        F(f64),
        B(bool),
    }
    Ok(match Scalar::deserialize(d)? {
        Scalar::S(s) => s,
        Scalar::I(i) => i.to_string(),
        Scalar::U(u) => u.to_string(),
        Scalar::F(f) => f.to_string(),
        Scalar::B(b) => b.to_string(),
    })
}

/// A map whose values may be any scalar, kept as strings (librdkafka properties).
fn scalar_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    struct Value(#[serde(deserialize_with = "scalar_string")] String);
    let map = BTreeMap::<String, Value>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, Value(v))| (k, v)).collect())
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is handed to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "***" })
    }
}

/// The whole configuration. Field docs are the reference; `config.toml` repeats them.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub ingress: IngressConfig,
    pub signature: SignatureConfig,
    pub partner_center: PartnerCenterConfig,
    pub broker: BrokerConfig,
    pub kafka: KafkaConfig,
    pub rabbitmq: RabbitMqConfig,
    pub worker: WorkerConfig,
    pub shutdown: ShutdownConfig,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// A tracing filter directive (`info`, `pcbridge=debug,rdkafka=warn`); `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: "info".into() }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: ([0, 0, 0, 0], 9090).into() }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngressConfig {
    /// Address of the webhook listener (`POST /webhooks/partner-center`).
    pub listen: SocketAddr,
    /// Largest accepted body; larger requests get 413 and are not read further.
    /// Partner Center's events are a few hundred bytes to a few KB.
    pub max_body_bytes: usize,
    /// Most body bytes buffered at once across all requests. Each request reserves its
    /// Content-Length (or `max_body_bytes` when it declares none) before its body is
    /// read; beyond the budget requests get 503 with `Retry-After`. This, not the request
    /// count, bounds the memory unauthenticated clients can make the ingress hold.
    pub max_buffered_body_bytes: usize,
    /// How long a request waits for the broker's confirm before answering 503.
    /// Kept well under Partner Center's delivery timeout so a slow broker costs the
    /// sender a fast retry rather than a timed-out attempt.
    pub publish_timeout_ms: u64,
    /// Upper bound on one whole request (headers, body, verification, publish).
    pub request_timeout_ms: u64,
    /// Most requests handled at once; the rest wait in the listen backlog.
    pub max_concurrent_requests: usize,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            listen: ([0, 0, 0, 0], 8080).into(),
            max_body_bytes: 64 * 1024,
            max_buffered_body_bytes: 32 * 1024 * 1024,
            publish_timeout_ms: 5_000,
            request_timeout_ms: 10_000,
            max_concurrent_requests: 1024,
        }
    }
}

impl IngressConfig {
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// The Microsoft blob container that serves Partner Center's signing certificate.
pub const MICROSOFT_CERTIFICATE_PREFIX: &str = "https://3psostorageacct.blob.core.windows.net/cert/";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignatureConfig {
    /// Certificate URLs are fetched only when they start with one of these (compared
    /// after parsing: scheme, host, port and path prefix; userinfo is refused).
    pub trusted_certificate_url_prefixes: Vec<String>,
    /// The certificate's issuer must carry this organization (O=) name.
    pub issuer_organization: String,
    /// Trust Microsoft's roots (and the DigiCert roots Microsoft's TLS CAs chain to).
    pub microsoft_roots: bool,
    /// A PEM file of extra trust anchors (tests, sovereign clouds). Empty: none.
    pub extra_trust_anchors_file: String,
    /// A PEM file of intermediate CA certificates used to build chains. Empty: none.
    pub intermediates_file: String,
    /// When the chain lacks an intermediate, its issuer certificate is downloaded from
    /// the certificate's Authority Information Access URL, but only under these
    /// prefixes. (Fetched issuers still have to chain to a trust anchor.)
    pub aia_url_prefixes: Vec<String>,
    /// Time limit for fetching one certificate.
    pub fetch_timeout_ms: u64,
    /// Largest certificate (or PEM bundle) accepted from a certificate URL.
    pub max_certificate_bytes: usize,
    /// How many certificate URLs are cached at most.
    pub cache_max_entries: usize,
    /// A cached certificate is used at most this long, even if it expires later.
    pub cache_ttl_secs: u64,
    /// After a signature fails against a cached certificate, the certificate is fetched
    /// again, but at most once per this interval and URL (so forged requests cannot make
    /// us hammer Microsoft's storage).
    pub refetch_min_interval_secs: u64,
}

impl Default for SignatureConfig {
    fn default() -> Self {
        Self {
            trusted_certificate_url_prefixes: vec![MICROSOFT_CERTIFICATE_PREFIX.into()],
            issuer_organization: "Microsoft Corporation".into(),
            microsoft_roots: true,
            extra_trust_anchors_file: String::new(),
            intermediates_file: String::new(),
            aia_url_prefixes: vec![
                "http://www.microsoft.com/pkiops/certs/".into(),
                "http://cacerts.digicert.com/".into(),
            ],
            fetch_timeout_ms: 3_000,
            max_certificate_bytes: 64 * 1024,
            cache_max_entries: 32,
            cache_ttl_secs: 24 * 3600,
            refetch_min_interval_secs: 60,
        }
    }
}

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
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self { kind: BrokerKind::Kafka, prefix: "partnercenter.".into() }
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

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// After SIGTERM, in-flight work has this long to finish before the process exits.
    /// Keep it below Kubernetes' terminationGracePeriodSeconds.
    pub drain_deadline_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { drain_deadline_ms: 20_000 }
    }
}

impl ShutdownConfig {
    pub fn drain_deadline(&self) -> Duration {
        Duration::from_millis(self.drain_deadline_ms)
    }
}

impl Config {
    /// Checks what types cannot: ranges, URL shapes, files that must exist.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError(format!("config key `{key}`: {why}")));
        if !self.broker.prefix.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return bad("broker.prefix", format!("{:?} may hold only A-Z a-z 0-9 . _ -", self.broker.prefix));
        }
        if self.broker.prefix.len() > 40 {
            return bad("broker.prefix", "is longer than 40 characters".into());
        }
        if self.ingress.max_body_bytes == 0 {
            return bad("ingress.max_body_bytes", "must be greater than 0".into());
        }
        if self.ingress.max_buffered_body_bytes < self.ingress.max_body_bytes {
            return bad(
                "ingress.max_buffered_body_bytes",
                format!("must be at least ingress.max_body_bytes ({})", self.ingress.max_body_bytes),
            );
        }
        if self.ingress.publish_timeout_ms == 0 {
            return bad("ingress.publish_timeout_ms", "must be greater than 0".into());
        }
        if self.ingress.request_timeout_ms <= self.ingress.publish_timeout_ms {
            return bad(
                "ingress.request_timeout_ms",
                format!("must be greater than ingress.publish_timeout_ms ({})", self.ingress.publish_timeout_ms),
            );
        }
        if self.ingress.max_concurrent_requests == 0 {
            return bad("ingress.max_concurrent_requests", "must be greater than 0".into());
        }
        if self.signature.trusted_certificate_url_prefixes.is_empty() {
            return bad("signature.trusted_certificate_url_prefixes", "needs at least one URL prefix".into());
        }
        for prefix in &self.signature.trusted_certificate_url_prefixes {
            let ok = (prefix.starts_with("https://") || prefix.starts_with("http://")) && prefix.ends_with('/');
            if !ok {
                return bad(
                    "signature.trusted_certificate_url_prefixes",
                    format!("{prefix:?} must be an http(s) URL ending in '/'"),
                );
            }
        }
        for prefix in &self.signature.aia_url_prefixes {
            if !(prefix.starts_with("https://") || prefix.starts_with("http://")) || !prefix.ends_with('/') {
                return bad("signature.aia_url_prefixes", format!("{prefix:?} must be an http(s) URL ending in '/'"));
            }
        }
        if !self.signature.microsoft_roots && self.signature.extra_trust_anchors_file.is_empty() {
            return bad(
                "signature.extra_trust_anchors_file",
                "is empty while signature.microsoft_roots is false: no certificate could ever be trusted".into(),
            );
        }
        for (key, file) in [
            ("signature.extra_trust_anchors_file", &self.signature.extra_trust_anchors_file),
            ("signature.intermediates_file", &self.signature.intermediates_file),
            ("rabbitmq.password_file", &self.rabbitmq.password_file),
            ("partner_center.client_secret_file", &self.partner_center.client_secret_file),
            ("partner_center.refresh_token_file", &self.partner_center.refresh_token_file),
        ] {
            if !file.is_empty() && !Path::new(file).is_file() {
                return bad(key, format!("file {file:?} does not exist"));
            }
        }
        if self.signature.fetch_timeout_ms == 0 || self.signature.max_certificate_bytes == 0 {
            return bad("signature.fetch_timeout_ms", "and signature.max_certificate_bytes must be > 0".into());
        }
        if self.signature.cache_max_entries == 0 {
            return bad("signature.cache_max_entries", "must be greater than 0".into());
        }
        if !(self.partner_center.base_url.starts_with("https://")
            || self.partner_center.base_url.starts_with("http://"))
        {
            return bad("partner_center.base_url", format!("{:?} is not an http(s) URL", self.partner_center.base_url));
        }
        for (key, url) in [
            ("partner_center.graph_base_url", &self.partner_center.graph_base_url),
            ("partner_center.token_base_url", &self.partner_center.token_base_url),
        ] {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return bad(key, format!("{url:?} is not an http(s) URL"));
            }
        }
        if self.partner_center.fraud_page_size == 0 || self.partner_center.fraud_max_pages == 0 {
            return bad("partner_center.fraud_page_size", "and fraud_max_pages must be greater than 0".into());
        }
        if self.worker.concurrency == 0 || self.worker.concurrency > 4096 {
            return bad("worker.concurrency", "must be between 1 and 4096".into());
        }
        if self.worker.max_attempts == 0 {
            return bad("worker.max_attempts", "must be at least 1".into());
        }
        if self.worker.retry_min_delay_ms == 0 || self.worker.retry_max_delay_ms < self.worker.retry_min_delay_ms {
            return bad("worker.retry_max_delay_ms", "must be at least worker.retry_min_delay_ms (> 0)".into());
        }
        if self.worker.prefetch == 0 {
            return bad("worker.prefetch", "must be greater than 0".into());
        }
        match self.broker.kind {
            BrokerKind::Kafka => self.validate_kafka(),
            BrokerKind::Rabbitmq => self.validate_rabbitmq(),
        }
    }

    /// The `[kafka]` keys, checked only when Kafka is the broker.
    fn validate_kafka(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError(format!("config key `{key}`: {why}")));
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return bad("kafka.bootstrap_servers", "is empty".into());
        }
        if self.kafka.partitions < 1 {
            return bad("kafka.partitions", "must be at least 1".into());
        }
        if self.kafka.replication_factor < 1 && self.kafka.replication_factor != -1 {
            return bad("kafka.replication_factor", "must be at least 1 (or -1 for the broker's default)".into());
        }
        Ok(())
    }

    /// The `[rabbitmq]` keys, checked only when RabbitMQ is the broker.
    fn validate_rabbitmq(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError(format!("config key `{key}`: {why}")));
        if !(self.rabbitmq.url.starts_with("amqp://") || self.rabbitmq.url.starts_with("amqps://")) {
            return bad(
                "rabbitmq.url",
                format!("{:?} must start with amqp:// or amqps://", redact_url(&self.rabbitmq.url)),
            );
        }
        if self.rabbitmq.exchange.is_empty() {
            return bad("rabbitmq.exchange", "is empty".into());
        }
        Ok(())
    }

    /// The RabbitMQ password: the environment, else `password_file`, else RabbitMQ's
    /// default `guest` (which RabbitMQ accepts only over loopback).
    pub fn rabbitmq_password(&self) -> Result<Secret, ConfigError> {
        let r = &self.rabbitmq;
        Ok(read_secret(&r.password, &r.password_file, "rabbitmq.password_file")?
            .unwrap_or_else(|| Secret::new("guest")))
    }

    /// The Entra ID client secret, if configured (environment, else file).
    pub fn client_secret(&self) -> Result<Option<Secret>, ConfigError> {
        let pc = &self.partner_center;
        read_secret(&pc.client_secret, &pc.client_secret_file, "partner_center.client_secret_file")
    }

    /// The App+User refresh token, if configured (environment, else file).
    pub fn refresh_token(&self) -> Result<Option<Secret>, ConfigError> {
        let pc = &self.partner_center;
        read_secret(&pc.refresh_token, &pc.refresh_token_file, "partner_center.refresh_token_file")
    }
}

/// A secret from the environment (already in `value`), else from `file`.
fn read_secret(value: &Secret, file: &str, key: &str) -> Result<Option<Secret>, ConfigError> {
    if !value.is_empty() {
        return Ok(Some(value.clone()));
    }
    if file.is_empty() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| ConfigError(format!("config key `{key}`: cannot read {file:?}: {e}")))?;
    Ok(Some(Secret::new(text.trim_end_matches(['\r', '\n']))))
}

/// Replaces the password of a URL's userinfo with `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme_end + 3], &userinfo[..colon], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
