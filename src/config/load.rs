//! Loading: built-in defaults ← the file ← `PCBRIDGE_*`, refusing secrets in the file,
//! and figment's errors rewritten to name the key, its source and its variable.

use super::{Config, ConfigError, SECRET_KAFKA_PROPERTIES, redact_url};
use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use std::{collections::BTreeMap, path::Path};

impl Config {
    /// Loads defaults ← `path` (when it exists; a missing file is an error only when
    /// `required`) ← `PCBRIDGE_*` environment, then validates.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        Self::load_with_env(path, required, Env::prefixed("PCBRIDGE_"))
    }

    pub(super) fn load_with_env(path: &Path, required: bool, env: Env) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if path.exists() {
            let file = Toml::file_exact(path);
            let from_file = Figment::from(Toml::file_exact(path));
            refuse_secrets_in_file(&from_file, path)?;
            figment = figment.merge(file);
        } else if required {
            return Err(ConfigError::MissingFile(path.to_path_buf()));
        }
        // Kubernetes injects service-link variables for every Service of the namespace
        // (`PCBRIDGE_INGRESS_PORT=tcp://…` for the Service `pcbridge-ingress`). Every key
        // lives in a section, so a variable without `__` is not configuration: only the
        // `PCBRIDGE_LOG_FORMAT` alias is. A typo in a variable with `__` is still an error.
        let env = env
            .filter(|key| key.as_str().contains("__") || key.as_str().eq_ignore_ascii_case("log_format"))
            .map(|key| {
                if key.as_str().eq_ignore_ascii_case("log_format") {
                    "log.format".into()
                } else {
                    key.as_str().replace("__", ".").into()
                }
            })
            .lowercase(true);
        let config: Config = figment.merge(env).extract().map_err(describe_figment_error)?;
        config.validate()?;
        Ok(config)
    }
}

fn refuse_secrets_in_file(file: &Figment, path: &Path) -> Result<(), ConfigError> {
    let refuse = |key: &str, env: &str| {
        Err(ConfigError::SecretInFile { file: path.to_path_buf(), key: key.to_string(), env: env.to_string() })
    };
    for (key, env) in [
        ("rabbitmq.password", "PCBRIDGE_RABBITMQ__PASSWORD"),
        ("partner_center.client_secret", "PCBRIDGE_PARTNER_CENTER__CLIENT_SECRET"),
        ("partner_center.refresh_token", "PCBRIDGE_PARTNER_CENTER__REFRESH_TOKEN"),
        ("kafka.event_hubs.connection_string", "PCBRIDGE_KAFKA__EVENT_HUBS__CONNECTION_STRING"),
        ("kafka.event_hubs.client_secret", "PCBRIDGE_KAFKA__EVENT_HUBS__CLIENT_SECRET"),
        ("amqp.password", "PCBRIDGE_AMQP__PASSWORD"),
        ("amqp.client_secret", "PCBRIDGE_AMQP__CLIENT_SECRET"),
        ("reconcile.store_password", "PCBRIDGE_RECONCILE__STORE_PASSWORD"),
    ] {
        if file.find_value(key).is_ok() {
            return refuse(key, env);
        }
    }
    if let Ok(url) = file.extract_inner::<String>("rabbitmq.url")
        && redact_url(&url) != url
    {
        return refuse("rabbitmq.url (a password in the URL)", "PCBRIDGE_RABBITMQ__PASSWORD");
    }
    if let Ok(props) = file.extract_inner::<BTreeMap<String, toml_value::Any>>("kafka.properties") {
        for key in props.keys() {
            let normalized = key.replace('_', ".");
            if SECRET_KAFKA_PROPERTIES.contains(&normalized.as_str()) {
                let env = format!("PCBRIDGE_KAFKA__PROPERTIES__{}", normalized.replace('.', "_").to_uppercase());
                return refuse(&format!("kafka.properties.{key}"), &env);
            }
        }
    }
    Ok(())
}

mod toml_value {
    /// Accepts any value: only the keys of a table are looked at.
    #[derive(serde::Deserialize)]
    pub struct Any(#[allow(dead_code)] serde::de::IgnoredAny);
}

fn describe_figment_error(error: figment::Error) -> ConfigError {
    let mut lines = Vec::new();
    for e in error {
        let key = if e.path.is_empty() { "(top level)".to_string() } else { e.path.join(".") };
        let source = e.metadata.as_ref().map(|m| m.name.to_string()).unwrap_or_else(|| "defaults".into());
        let env_hint = format!("PCBRIDGE_{}", e.path.iter().map(|p| p.to_uppercase()).collect::<Vec<_>>().join("__"));
        lines.push(format!("config key `{key}` (from {source}; env {env_hint}): {}", e.kind));
    }
    ConfigError::Parse(lines)
}
