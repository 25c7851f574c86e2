//! Reconciliation: the changes Partner Center recorded in a time range, read from its
//! audit log ([`audit`]) and turned into the webhooks it would have sent ([`mapping`]),
//! each named by the change key a delivered webhook carries too
//! ([`crate::contract::change_key`]). What is not a change — failed, in-progress and
//! declined operations, operations no event reports — is counted, never published.
//!
//! [`run`] is the command: it publishes, as raw events on the destinations webhooks
//! use, the changes the change store ([`crate::change_store`]) has not seen — so a
//! change is published once across webhooks, runs and replicas.
//!
//! What it cannot recover: changes Partner Center does not audit (Microsoft-initiated
//! subscription changes, incoming referrals, migration completion, usage thresholds),
//! and anything older than the audit log's 90 days (docs/reconciliation.md).

pub mod audit;
pub mod mapping;
pub mod run;

use crate::partner_center::client::{ApiClient, ErrorClass, FetchError};
use audit::{AuditRecord, RangeError};
use backon::{BackoffBuilder, ExponentialBuilder};
use mapping::{Change, Skip};
use std::{collections::BTreeMap, time::Duration};
use time::OffsetDateTime;

/// What a read of the audit log found.
#[derive(Debug, Default)]
pub struct Found {
    /// The changes, oldest window first, in the log's order within a window; one per
    /// change key.
    pub changes: Vec<Change>,
    /// Records skipped, by [`Skip::reason`], and the unmapped operation types seen.
    pub skipped: BTreeMap<&'static str, u64>,
    pub unmapped_types: BTreeMap<String, u64>,
    /// Records that did not parse.
    pub unreadable: u64,
    /// Pages read, and requests made (retries included).
    pub pages: u64,
    pub requests: u64,
}

/// Why a read stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Range(#[from] RangeError),
    /// A request failed for good, or kept failing past its retries.
    #[error("audit log: {0}")]
    Api(FetchError),
    /// The run used its request budget before reading everything.
    #[error("audit log: the request budget of {0} was used up before the range was read")]
    Budget(u64),
}

/// How to read.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Records per page (`size`).
    pub page_size: u32,
    /// The most requests one run makes, retries included.
    pub request_budget: u64,
    /// Attempts per page on transient failures (429 with `Retry-After`, 5xx, timeouts).
    pub attempts: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            page_size: 500,
            request_budget: 2_000,
            attempts: 8,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// Reads the audit log for `[since, until)` and returns the changes in it. `api_base` is
/// the base URL written into the reconstructed webhooks.
pub async fn find_changes(
    client: &ApiClient,
    api_base: &str,
    since: OffsetDateTime,
    until: OffsetDateTime,
    options: &ReadOptions,
) -> Result<Found, ReadError> {
    let mut found = Found::default();
    let mut seen = std::collections::HashSet::new();
    for (start, end) in audit::windows(since, until, OffsetDateTime::now_utc())? {
        let mut next = Some((audit::first_page(start, end, options.page_size), Vec::new()));
        while let Some((path, headers)) = next.take() {
            let page = read_with_retries(client, &path, &headers, options, &mut found.requests).await?;
            found.pages += 1;
            found.unreadable += page.unreadable as u64;
            for record in &page.records {
                classify(record, api_base, &mut found, &mut seen);
            }
            next = page.next;
        }
    }
    Ok(found)
}

fn classify(record: &AuditRecord, api_base: &str, found: &mut Found, seen: &mut std::collections::HashSet<String>) {
    match mapping::change_of(record, api_base) {
        Ok(change) => {
            if seen.insert(change.change_key.clone()) {
                found.changes.push(change);
            }
        }
        Err(skip) => {
            *found.skipped.entry(skip.reason()).or_default() += 1;
            if let Skip::Unmapped(kind) = skip {
                *found.unmapped_types.entry(kind).or_default() += 1;
            }
        }
    }
}

async fn read_with_retries(
    client: &ApiClient,
    path: &str,
    headers: &[(String, String)],
    options: &ReadOptions,
    requests: &mut u64,
) -> Result<audit::Page, ReadError> {
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(options.min_delay)
        .with_max_delay(options.max_delay)
        .with_jitter()
        .with_max_times(options.attempts.saturating_sub(1))
        .build();
    loop {
        if *requests >= options.request_budget {
            return Err(ReadError::Budget(options.request_budget));
        }
        *requests += 1;
        match audit::read_page(client, path, headers).await {
            Ok(page) => return Ok(page),
            Err(e) => {
                let ErrorClass::Transient { retry_after } = e.class else { return Err(ReadError::Api(e)) };
                let Some(delay) = delays.next() else { return Err(ReadError::Api(e)) };
                let wait = retry_after.map_or(delay, |r| r.max(delay));
                tracing::warn!(error = %e, wait_ms = wait.as_millis() as u64, "audit log page failed; retrying");
                tokio::time::sleep(wait).await;
            }
        }
    }
}
