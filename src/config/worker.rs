//! The `[partner_center]` and `[worker]` sections: the APIs the worker calls (Partner
//! Center, Graph, Entra ID) and how it consumes, retries and deduplicates.

use super::{ConfigError, Secret, file_exists, invalid, is_http_url};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PartnerCenterConfig {
    /// The Partner Center API base URL (21Vianet: https://partner.partnercenterapi.microsoftonline.cn).
    /// Also the CloudEvents `source` of every message.
    pub base_url: String,
    /// Hosts of ResourceUri/AuditUri values treated as the Partner Center API; their
    /// path and query are fetched on `base_url`. Any other host is refused unrequested.
    pub api_hosts: Vec<String>,
    /// OAuth scope of Partner Center tokens.
    pub scope: String,
    /// Microsoft Graph base URL (GDAP relationships and access assignments).
    pub graph_base_url: String,
    /// OAuth scope of Graph tokens.
    pub graph_scope: String,
    /// The Partner Center referrals API (`/v1.0/engagements/referrals`), which
    /// reconciliation lists with the App+User token (`refresh_token`).
    pub referrals_base_url: String,
    /// Entra ID authority; tokens come from `{token_base_url}/{tenant_id}/oauth2/v2.0/token`.
    pub token_base_url: String,
    /// The partner's Entra ID tenant.
    pub tenant_id: String,
    /// The application (client) id.
    pub client_id: String,
    /// Only from the environment (`PCBRIDGE_PARTNER_CENTER__CLIENT_SECRET`).
    pub client_secret: Secret,
    /// A file holding the client secret. Empty: none.
    pub client_secret_file: String,
    /// App+User refresh token for the fraud events API; only from the environment
    /// (`PCBRIDGE_PARTNER_CENTER__REFRESH_TOKEN`).
    pub refresh_token: Secret,
    /// A file holding the refresh token. Empty: none.
    pub refresh_token_file: String,
    /// Time limit of one API request.
    pub request_timeout_ms: u64,
    /// Fraud events per page (`PageSize`).
    pub fraud_page_size: u32,
    /// Most fraud event pages read for one event.
    pub fraud_max_pages: u32,
}

impl Default for PartnerCenterConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.partnercenter.microsoft.com".into(),
            api_hosts: vec![
                "api.partnercenter.microsoft.com".into(),
                "partner.partnercenterapi.microsoftonline.cn".into(),
            ],
            scope: "https://api.partnercenter.microsoft.com/.default".into(),
            graph_base_url: "https://graph.microsoft.com".into(),
            graph_scope: "https://graph.microsoft.com/.default".into(),
            referrals_base_url: "https://api.partner.microsoft.com".into(),
            token_base_url: "https://login.microsoftonline.com".into(),
            tenant_id: String::new(),
            client_id: String::new(),
            client_secret: Secret::default(),
            client_secret_file: String::new(),
            refresh_token: Secret::default(),
            refresh_token_file: String::new(),
            request_timeout_ms: 10_000,
            fraud_page_size: 100,
            fraud_max_pages: 100,
        }
    }
}

impl PartnerCenterConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Event names whose raw destinations are consumed. Empty: the whole catalogue plus
    /// `unrecognized`.
    pub events: Vec<String>,
    /// Events enriched at once. Events with the same key (ResourceUri) are still
    /// processed one after the other, in order.
    pub concurrency: usize,
    /// Kafka consumer group: replicas in one group share the partitions.
    pub group_id: String,
    /// RabbitMQ prefetch (unacknowledged deliveries per worker). A delivery stays
    /// unacknowledged until its output is confirmed, so the prefetch must cover the events
    /// being enriched *and* those waiting for a confirm: below about 5 × `concurrency`
    /// (what the worker holds at most) the broker, not the API, sets the pace.
    pub prefetch: u16,
    /// Most attempts of one API call before the event is dead-lettered.
    pub max_attempts: u32,
    /// Most time spent retrying one event before it is dead-lettered.
    pub max_retry_ms: u64,
    /// First retry delay; doubled each attempt, with full jitter.
    pub retry_min_delay_ms: u64,
    /// Longest retry delay (a longer Retry-After is still honoured, within max_retry_ms).
    pub retry_max_delay_ms: u64,
    /// An event id seen again within this window is not enriched twice.
    pub dedup_window_secs: u64,
    /// Event ids remembered for deduplication at most.
    pub dedup_max_entries: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            events: Vec::new(),
            concurrency: 64,
            group_id: "pcbridge-worker".into(),
            prefetch: 320,
            max_attempts: 8,
            max_retry_ms: 300_000,
            retry_min_delay_ms: 200,
            retry_max_delay_ms: 30_000,
            dedup_window_secs: 600,
            dedup_max_entries: 100_000,
        }
    }
}

impl PartnerCenterConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        file_exists("partner_center.client_secret_file", &self.client_secret_file)?;
        file_exists("partner_center.refresh_token_file", &self.refresh_token_file)?;
        for (key, url) in [
            ("partner_center.base_url", &self.base_url),
            ("partner_center.graph_base_url", &self.graph_base_url),
            ("partner_center.referrals_base_url", &self.referrals_base_url),
            ("partner_center.token_base_url", &self.token_base_url),
        ] {
            if !is_http_url(url) {
                return invalid(key, format!("{url:?} is not an http(s) URL"));
            }
        }
        if self.fraud_page_size == 0 || self.fraud_max_pages == 0 {
            return invalid("partner_center.fraud_page_size", "and fraud_max_pages must be greater than 0");
        }
        Ok(())
    }
}

impl WorkerConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.concurrency == 0 || self.concurrency > 4096 {
            return invalid("worker.concurrency", "must be between 1 and 4096");
        }
        if self.max_attempts == 0 {
            return invalid("worker.max_attempts", "must be at least 1");
        }
        if self.retry_min_delay_ms == 0 || self.retry_max_delay_ms < self.retry_min_delay_ms {
            return invalid("worker.retry_max_delay_ms", "must be at least worker.retry_min_delay_ms (> 0)");
        }
        if self.prefetch == 0 {
            return invalid("worker.prefetch", "must be greater than 0");
        }
        Ok(())
    }
}
