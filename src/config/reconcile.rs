//! The `[reconcile]` section: the change store (PostgreSQL) shared by the ingress and
//! `pcbridge reconcile`, and how reconciliation reads Partner Center.

use super::{ConfigError, Secret, file_exists, invalid, redact_url};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcileConfig {
    /// PostgreSQL URL of the change store, without a password
    /// (`postgres://pcbridge@db.example.com:5432/pcbridge?sslmode=require`). Empty: the
    /// ingress records nothing and `reconcile` can only `--dry-run`. When set, the
    /// ingress records the change key of every webhook it published, so reconciliation
    /// does not publish that change again.
    pub store_url: String,
    /// The store's password: `PCBRIDGE_RECONCILE__STORE_PASSWORD`, or this file.
    #[serde(skip_serializing)]
    pub store_password: Secret,
    pub store_password_file: String,
    /// The table of seen change keys (created when missing).
    pub table: String,
    /// Where `--until` defaults to: this long before now, so that webhooks still on
    /// their way (Partner Center retries for hours) are not reconciled under them.
    pub settle_minutes: u64,
    /// A change named by event, resource and change time (every event but
    /// `subscription-updated`, whose webhooks name their audit record) counts as
    /// delivered when a webhook of the same event and resource came within this long of
    /// that time: Partner Center's webhook and its audit record seldom agree to the tick.
    pub match_window_secs: u64,
    /// A claim not confirmed within this long is taken over by another run (its
    /// reconciler died between claiming a change and publishing it).
    pub claim_lease_secs: u64,
    /// Keys untouched for longer are pruned at every run. Partner Center keeps audit
    /// records 90 days, so no run can find an older change again.
    pub horizon_days: u64,
    /// Also read the lists that name changes the audit log does not: Graph's GDAP
    /// relationships (needs `DelegatedAdminRelationship.Read.All`) and the new-commerce
    /// migrations of the customers the audit log names.
    pub lists: bool,
    /// Audit records per page (`size`).
    pub page_size: u32,
    /// The most Partner Center requests one run makes, retries included.
    pub request_budget: u64,
    /// Attempts per page on 429 (its `Retry-After` honoured), 5xx and timeouts.
    pub attempts: usize,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            store_url: String::new(),
            store_password: Secret::default(),
            store_password_file: String::new(),
            table: "pcbridge_changes".into(),
            settle_minutes: 60,
            match_window_secs: 300,
            claim_lease_secs: 300,
            horizon_days: 90,
            lists: true,
            page_size: 500,
            request_budget: 2_000,
            attempts: 8,
        }
    }
}

impl ReconcileConfig {
    pub fn settle(&self) -> Duration {
        Duration::from_secs(self.settle_minutes * 60)
    }
    pub fn match_window(&self) -> Duration {
        Duration::from_secs(self.match_window_secs)
    }
    pub fn claim_lease(&self) -> Duration {
        Duration::from_secs(self.claim_lease_secs)
    }
    pub fn horizon(&self) -> Duration {
        Duration::from_secs(self.horizon_days * 86_400)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        file_exists("reconcile.store_password_file", &self.store_password_file)?;
        if !self.store_url.is_empty() {
            if !self.store_url.starts_with("postgres://") && !self.store_url.starts_with("postgresql://") {
                return invalid("reconcile.store_url", "must be a postgres:// URL");
            }
            if redact_url(&self.store_url) != self.store_url {
                return invalid(
                    "reconcile.store_url",
                    "holds a password: use PCBRIDGE_RECONCILE__STORE_PASSWORD or reconcile.store_password_file",
                );
            }
        }
        let table_ok = !self.table.is_empty()
            && self.table.len() <= 48
            && self.table.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !table_ok {
            return invalid("reconcile.table", "must be 1 to 48 letters, digits or underscores");
        }
        if self.claim_lease_secs == 0 {
            return invalid("reconcile.claim_lease_secs", "must be greater than 0");
        }
        if !(1..=90).contains(&self.horizon_days) {
            return invalid("reconcile.horizon_days", "must be 1 to 90 (the audit log keeps 90 days)");
        }
        if !(1..=500).contains(&self.page_size) {
            return invalid("reconcile.page_size", "must be 1 to 500");
        }
        if self.request_budget == 0 || self.attempts == 0 {
            return invalid("reconcile.request_budget", "request_budget and attempts must be greater than 0");
        }
        Ok(())
    }
}
