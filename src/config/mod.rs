//! Typed configuration: built-in defaults ← `config.toml` ← `PCBRIDGE_<SECTION>__<KEY>`
//! environment variables, then [`Config::validate`].
//!
//! One file per section, each validating its own keys: [`process`] (log, admin,
//! shutdown), [`ingress`], [`signature`], [`broker`] (broker, kafka, rabbitmq),
//! [`worker`] (partner_center, worker), [`reconcile`], [`forward`], [`registration`]; [`secret`] holds the type secrets keep and how
//! they are read; [`load`] layers the sources and names the key behind every error.
//!
//! Every key has a default here and a commented twin in the repository's `config.toml`
//! (docs/configuration.md lists them). Secrets (broker passwords, SASL credentials) are
//! accepted only from the environment or from files named in the configuration, never
//! from `config.toml` itself: [`Config::load`] refuses a file that holds one.
//!
//! This module imports nothing else of the crate.

mod broker;
mod forward;
mod ingress;
mod load;
mod process;
mod reconcile;
mod registration;
mod secret;
mod signature;
#[cfg(test)]
mod tests;
mod worker;

pub use broker::{
    AmqpConfig, AmqpSignIn, BrokerConfig, BrokerKind, EntraCredential, EventHubsConfig, EventHubsSignIn, KafkaConfig,
    QueueType, RabbitMqConfig, SECRET_KAFKA_PROPERTIES,
};
pub use forward::{ForwardConfig, ReceiverConfig};
pub use ingress::IngressConfig;
pub use process::{AdminConfig, LogConfig, LogFormat, ShutdownConfig};
pub use reconcile::ReconcileConfig;
pub use registration::RegistrationConfig;
pub use secret::Secret;
pub use signature::{MICROSOFT_CERTIFICATE_PREFIX, SignatureConfig};
pub use worker::{PartnerCenterConfig, WorkerConfig};

use serde::{Deserialize, Serialize};
use std::{fmt, path::Path};

/// A configuration problem, phrased for the operator who has to fix it. None of them is
/// worth retrying: the process exits and the operator edits a key, a file or a variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file that was asked for is not there.
    #[error(
        "configuration file {} does not exist (pass --config FILE, or run from the directory holding config.toml)",
        .0.display()
    )]
    MissingFile(std::path::PathBuf),
    /// A secret written into `config.toml`, where it would end up in a ConfigMap or a
    /// repository: it must come from the environment or a `*_file` key.
    #[error("{} sets `{key}`, a secret: remove it and set the environment variable {env} (or a *_file key) instead", .file.display())]
    SecretInFile { file: std::path::PathBuf, key: String, env: String },
    /// The file or the environment does not parse into the configuration's types
    /// (syntax, unknown key, wrong type), one line per problem.
    #[error("{}", .0.join("\n"))]
    Parse(Vec<String>),
    /// A key whose value cannot be used: out of range, not a URL, a file that is absent
    /// or unreadable.
    #[error("config key `{key}`: {why}")]
    Invalid { key: String, why: String },
}

impl ConfigError {
    /// A key whose value cannot be used, and why.
    pub fn invalid(key: impl Into<String>, why: impl fmt::Display) -> Self {
        ConfigError::Invalid { key: key.into(), why: why.to_string() }
    }

    /// The key at fault, when it is one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::SecretInFile { key, .. } => Some(key),
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::MissingFile(_) | ConfigError::Parse(_) => None,
        }
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
    pub amqp: AmqpConfig,
    pub worker: WorkerConfig,
    pub reconcile: ReconcileConfig,
    pub forward: ForwardConfig,
    pub registration: RegistrationConfig,
    pub shutdown: ShutdownConfig,
}

impl Config {
    /// Checks what types cannot: ranges, URL shapes, files that must exist. Each section
    /// checks its own keys; a broker's are checked only when it is the one in use.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.broker.validate()?;
        self.ingress.validate()?;
        self.signature.validate()?;
        self.rabbitmq.validate_files()?;
        self.amqp.validate_files()?;
        self.partner_center.validate()?;
        self.worker.validate()?;
        self.reconcile.validate()?;
        self.forward.validate()?;
        self.registration.validate()?;
        match self.broker.kind {
            BrokerKind::Kafka => self.kafka.validate(),
            BrokerKind::Rabbitmq => self.rabbitmq.validate(),
            BrokerKind::Amqp => self.amqp.validate(),
        }
    }
}

/// The error of an invalid key: `config key `{key}`: {why}`.
fn invalid<T>(key: &str, why: impl fmt::Display) -> Result<T, ConfigError> {
    Err(ConfigError::invalid(key, why))
}

/// Whether `url` is an http(s) URL: the one URL check of every section.
fn is_http_url(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("http://")
}

/// A `*_file` key is empty (unused) or names an existing file.
fn file_exists(key: &str, file: &str) -> Result<(), ConfigError> {
    if !file.is_empty() && !Path::new(file).is_file() {
        return invalid(key, format!("file {file:?} does not exist"));
    }
    Ok(())
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
