//! The `[registration]` section: the webhook registration pcbridge expects Partner
//! Center to hold, which `pcbridge register watch` checks (and, opted in, restores).

use super::{ConfigError, invalid};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationConfig {
    /// The public URL Partner Center must deliver to (this ingress's
    /// `/webhooks/partner-center`). Empty: `register watch` refuses to start.
    pub webhook_url: String,
    /// The events the registration must name. Empty: every event Partner Center offers.
    pub events: Vec<String>,
    /// Whether the registration must set `SignatureTokenToMsSignatureHeader`.
    pub ms_signature_header: bool,
    /// How often the registration is compared with the above.
    pub check_interval_secs: u64,
    /// Put the expected registration back when it changed (an update and a test
    /// event), at most once per interval. Off: a change is reported (metric, error log)
    /// and left to a person, who may want the other receiver's registration.
    pub restore: bool,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self {
            webhook_url: String::new(),
            events: Vec::new(),
            ms_signature_header: false,
            check_interval_secs: 300,
            restore: false,
        }
    }
}

impl RegistrationConfig {
    pub fn check_interval(&self) -> Duration {
        Duration::from_secs(self.check_interval_secs)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.check_interval_secs == 0 {
            return invalid("registration.check_interval_secs", "must be at least 1");
        }
        if !self.webhook_url.is_empty() && !super::is_http_url(&self.webhook_url) {
            return invalid("registration.webhook_url", format!("{:?} is not an http(s) URL", self.webhook_url));
        }
        Ok(())
    }
}
