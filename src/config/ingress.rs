//! The `[ingress]` section: the webhook listener and what bounds each request.

use super::{ConfigError, invalid};
use serde::{Deserialize, Serialize};
use std::{net::SocketAddr, time::Duration};

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

impl IngressConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_body_bytes == 0 {
            return invalid("ingress.max_body_bytes", "must be greater than 0");
        }
        if self.max_buffered_body_bytes < self.max_body_bytes {
            return invalid(
                "ingress.max_buffered_body_bytes",
                format!("must be at least ingress.max_body_bytes ({})", self.max_body_bytes),
            );
        }
        if self.publish_timeout_ms == 0 {
            return invalid("ingress.publish_timeout_ms", "must be greater than 0");
        }
        if self.request_timeout_ms <= self.publish_timeout_ms {
            return invalid(
                "ingress.request_timeout_ms",
                format!("must be greater than ingress.publish_timeout_ms ({})", self.publish_timeout_ms),
            );
        }
        if self.max_concurrent_requests == 0 {
            return invalid("ingress.max_concurrent_requests", "must be greater than 0");
        }
        Ok(())
    }
}
