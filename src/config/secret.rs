//! Secrets: a type that never prints its value, read from the environment or from a
//! file; and the scalar deserializers the environment needs (it may type `12345` or
//! `true` where a string is expected).

use super::{Config, ConfigError};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, fmt};

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
pub(super) fn scalar_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
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
pub(super) fn scalar_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
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

impl Config {
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

    /// The Event Hubs connection string, if configured (environment, else file).
    pub fn event_hubs_connection_string(&self) -> Result<Option<Secret>, ConfigError> {
        let h = &self.kafka.event_hubs;
        read_secret(&h.connection_string, &h.connection_string_file, "kafka.event_hubs.connection_string_file")
    }

    /// The AMQP 1.0 SASL PLAIN password (environment, else file); none: `guest`.
    pub fn amqp_password(&self) -> Result<Secret, ConfigError> {
        let a = &self.amqp;
        Ok(read_secret(&a.password, &a.password_file, "amqp.password_file")?.unwrap_or_else(|| Secret::new("guest")))
    }

    /// The client secret of the app that gets AMQP `$cbs` tokens: its own, else — when
    /// no other app is named — the Partner Center app's.
    pub fn amqp_client_secret(&self) -> Result<Option<Secret>, ConfigError> {
        let a = &self.amqp;
        match read_secret(&a.client_secret, &a.client_secret_file, "amqp.client_secret_file")? {
            Some(secret) => Ok(Some(secret)),
            None if a.client_id.is_empty() => self.client_secret(),
            None => Ok(None),
        }
    }

    /// The client secret of the app that gets Event Hubs tokens: its own (environment,
    /// else file), else — when no other app is named — the Partner Center app's.
    pub fn event_hubs_client_secret(&self) -> Result<Option<Secret>, ConfigError> {
        let h = &self.kafka.event_hubs;
        match read_secret(&h.client_secret, &h.client_secret_file, "kafka.event_hubs.client_secret_file")? {
            Some(secret) => Ok(Some(secret)),
            None if h.client_id.is_empty() => self.client_secret(),
            None => Ok(None),
        }
    }

    /// The App+User refresh token, if configured (environment, else file).
    pub fn refresh_token(&self) -> Result<Option<Secret>, ConfigError> {
        let pc = &self.partner_center;
        read_secret(&pc.refresh_token, &pc.refresh_token_file, "partner_center.refresh_token_file")
    }
}

impl Config {
    /// The change store's password, if configured (environment, else file).
    pub fn store_password(&self) -> Result<Option<Secret>, ConfigError> {
        let r = &self.reconcile;
        read_secret(&r.store_password, &r.store_password_file, "reconcile.store_password_file")
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
    let text =
        std::fs::read_to_string(file).map_err(|e| ConfigError::invalid(key, format!("cannot read {file:?}: {e}")))?;
    Ok(Some(Secret::new(text.trim_end_matches(['\r', '\n']))))
}
