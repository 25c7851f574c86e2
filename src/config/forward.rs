//! The `[forward]` section: the receivers `pcbridge forward` sends every verified event
//! to, byte for byte, and how it retries them (docs/forwarding.md).

use super::{ConfigError, file_exists, invalid};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, time::Duration};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardConfig {
    /// Receivers by name (`[forward.receivers.cipp]`; from the environment
    /// `PCBRIDGE_FORWARD__RECEIVERS__CIPP__URL`). A name is `[a-z0-9-]`, at most 64
    /// characters: it names the receiver's destinations, metric labels and log lines.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub receivers: BTreeMap<String, ReceiverConfig>,
    /// Consumer group stem: receiver `r` reads as group `{group_id}.{r}`, so each
    /// receiver has its own position in the raw destinations, and replicas of the
    /// forwarder share each receiver's work.
    pub group_id: String,
    /// Requests in flight at once per receiver. Events with one key (ResourceUri) are
    /// still sent one after the other, in order, to each receiver.
    pub concurrency: usize,
    /// Also allow `http://` receiver URLs. Off: the signature headers would cross the
    /// network in clear, and a receiver could be spoofed.
    pub allow_http: bool,
    /// Most attempts per event and receiver before it is dead-lettered for that receiver.
    pub max_attempts: u32,
    /// Most time spent retrying one event for one receiver before it is dead-lettered.
    pub max_retry_ms: u64,
    /// First retry delay; doubled each attempt, with full jitter.
    pub retry_min_delay_ms: u64,
    /// Longest retry delay (a longer `Retry-After` is still honoured, within `max_retry_ms`).
    pub retry_max_delay_ms: u64,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            receivers: BTreeMap::new(),
            group_id: "pcbridge-forward".into(),
            concurrency: 16,
            allow_http: false,
            max_attempts: 10,
            max_retry_ms: 600_000,
            retry_min_delay_ms: 500,
            retry_max_delay_ms: 60_000,
        }
    }
}

/// One receiver of forwarded events.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReceiverConfig {
    /// Where events are POSTed (`https://…`; `http://` only with `forward.allow_http`).
    pub url: String,
    /// Event names this receiver gets. Empty: every event, `unrecognized` included.
    pub events: Vec<String>,
    /// Time limit of one request, answer included.
    pub timeout_ms: u64,
    /// The header Partner Center's signature travels in: `authorization` (Partner
    /// Center's default) or `x-ms-signature` (a registration with
    /// `SignatureTokenToMsSignatureHeader`): what the receiver's own code reads.
    pub signature_header: String,
    /// A file of extra request headers, one `Name: value` per line (an API key, say). Kept
    /// out of `config.toml` and never logged; read at start-up.
    pub headers_file: String,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            events: Vec::new(),
            timeout_ms: 10_000,
            signature_header: "authorization".into(),
            headers_file: String::new(),
        }
    }
}

impl ReceiverConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

impl ForwardConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.concurrency == 0 {
            return invalid("forward.concurrency", "must be at least 1");
        }
        if self.max_attempts == 0 {
            return invalid("forward.max_attempts", "must be at least 1");
        }
        if self.retry_min_delay_ms == 0 || self.retry_min_delay_ms > self.retry_max_delay_ms {
            return invalid("forward.retry_min_delay_ms", "must be at least 1 and at most forward.retry_max_delay_ms");
        }
        for (name, r) in &self.receivers {
            let key = |k: &str| format!("forward.receivers.{name}.{k}");
            let valid_name = name.len() <= 64
                && !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid_name {
                return invalid(
                    &format!("forward.receivers.{name}"),
                    "a receiver's name is [a-z0-9-], 1 to 64 characters",
                );
            }
            let https = r.url.starts_with("https://") && r.url.len() > "https://".len();
            let http = r.url.starts_with("http://") && r.url.len() > "http://".len();
            let allowed = https || (http && self.allow_http);
            if !allowed {
                let why = if http {
                    format!("{:?} is http: only https receivers, unless forward.allow_http = true", r.url)
                } else {
                    format!("{:?} is not an https URL", r.url)
                };
                return invalid(&key("url"), why);
            }
            if r.timeout_ms == 0 {
                return invalid(&key("timeout_ms"), "must be at least 1");
            }
            if !matches!(r.signature_header.as_str(), "authorization" | "x-ms-signature") {
                return invalid(&key("signature_header"), "is `authorization` or `x-ms-signature`");
            }
            file_exists(&key("headers_file"), &r.headers_file)?;
        }
        Ok(())
    }
}
