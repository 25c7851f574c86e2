//! `pcbridge dev --give-up-percent N`: Partner Center gives up on some deliveries (their
//! changes are in its audit log, their webhooks never arrive), then `pcbridge reconcile`
//! recovers them — the same command a user runs — and a downstream reader checks that
//! each lost change came out once and nothing delivered came out again.

use crate::config::Config;
use crate::reconcile::{
    mapping::key_of,
    run::{ReconcileArgs, ReconcileError, run},
};
use crate::telemetry::Metrics;
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

/// The event whose deliveries are given up: its changes are in the audit log, whose
/// every record reconciliation can turn back into the webhook.
const GIVEN_UP_EVENT: &str = "subscription-updated";

/// The deliveries Partner Center gave up, and what reconciliation brought back.
#[derive(Debug)]
pub struct GiveUps {
    percent: u32,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Change key → event name of each delivery given up.
    given_up: HashMap<String, &'static str>,
    recovered: HashSet<String>,
    /// Reconciled outputs of a change already recovered.
    twice: u64,
    /// Reconciled outputs of a change whose webhook had been delivered.
    delivered_again: u64,
}

/// What a recovery ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub given_up: u64,
    pub recovered: u64,
    pub twice: u64,
    pub delivered_again: u64,
}

impl GiveUps {
    pub fn new(percent: u32) -> Self {
        Self { percent: percent.min(100), inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether Partner Center gives up on delivering this event (remembered if so).
    pub fn gives_up(&self, name: &'static str, body: &[u8]) -> bool {
        if self.percent == 0 || name != GIVEN_UP_EVENT || fastrand::u32(..100) >= self.percent {
            return false;
        }
        let Some(key) = serde_json::from_slice(body).ok().as_ref().and_then(key_of) else { return false };
        self.lock().given_up.insert(key, name);
        true
    }

    /// A reconciled output was read downstream.
    pub fn observed(&self, change_key: &str) {
        let mut g = self.lock();
        if !g.given_up.contains_key(change_key) {
            g.delivered_again += 1;
        } else if !g.recovered.insert(change_key.to_string()) {
            g.twice += 1;
        }
    }

    pub fn counts(&self) -> Counts {
        let g = self.lock();
        Counts {
            given_up: g.given_up.len() as u64,
            recovered: g.recovered.len() as u64,
            twice: g.twice,
            delivered_again: g.delivered_again,
        }
    }
}

/// Runs `reconcile` over the last hour, waits up to `wait` for the recovered changes to
/// come out, runs it again (which must publish nothing), and prints what happened.
pub async fn recover(config: &Config, give_ups: &GiveUps, wait: Duration) -> Result<Counts, ReconcileError> {
    let lost = give_ups.counts().given_up;
    println!(
        "\nPartner Center gave up on {lost} deliveries (their changes are in its audit log). Reconciling: \
         pcbridge reconcile --since 1h --until 0s"
    );
    let args = ReconcileArgs { since: "1h".into(), until: Some("0s".into()), dry_run: false };
    let first = run(config, &args, Arc::new(Metrics::new())).await?;
    print!("  {first}");
    let deadline = tokio::time::Instant::now() + wait;
    while give_ups.counts().recovered < lost && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = run(config, &args, Arc::new(Metrics::new())).await?;
    print!("  again: {second}");
    // Anything the second run published would be read now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = give_ups.counts();
    println!(
        "  recovered {} of {} lost changes, enriched · published twice: {} · delivered changes published again: {}",
        counts.recovered, counts.given_up, counts.twice, counts.delivered_again
    );
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_counts_once_and_only_if_it_was_lost() {
        let g = GiveUps::new(100);
        let body = br#"{"EventName":"subscription-updated","ResourceUri":"https://api.partnercenter.microsoft.com/webhooks/v1/customers/c/subscriptions/s","AuditUri":"https://api.partnercenter.microsoft.com/v1/auditrecords/a-1","ResourceChangeUtcDate":"2026-12-01T10:00:00Z"}"#;
        assert!(g.gives_up("subscription-updated", body));
        assert!(!g.gives_up("referral-created", body), "only audited subscription changes are given up");
        g.observed("audit:a-1");
        g.observed("audit:a-1");
        g.observed("audit:other");
        assert_eq!(g.counts(), Counts { given_up: 1, recovered: 1, twice: 1, delivered_again: 1 });
        assert!(!GiveUps::new(0).gives_up("subscription-updated", body));
    }
}
