//! Reconciliation: the changes Partner Center recorded in a time range, read from its
//! audit log ([`audit`]) and the lists that state what it does not ([`lists`]: GDAP
//! relationships, new-commerce migrations), turned into the webhooks it would have sent
//! ([`mapping`]), each named by the change key a delivered webhook carries too
//! ([`crate::contract::change_key`]). What is not a change — failed, in-progress and
//! declined operations, operations no event reports — is counted, never published.
//!
//! [`run`] is the command: it publishes, as raw events on the destinations webhooks
//! use, the changes the change store ([`crate::change_store`]) has not seen — so a
//! change is published once across webhooks, runs and replicas.
//!
//! What it cannot recover: changes neither the audit log nor a list names
//! (Microsoft-initiated subscription changes, incoming referrals, usage thresholds), and
//! anything older than the audit log's 90 days (docs/reconciliation.md).

pub mod audit;
pub mod lists;
pub mod mapping;
pub mod run;

use crate::partner_center::client::{Api, ApiClient, ErrorClass, FetchError, Fetched};
use audit::{AuditRecord, RangeError};
use backon::{BackoffBuilder, ExponentialBuilder};
use mapping::{AUDIT, Change, Skip};
use serde_json::Value;
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    time::{Duration, Instant},
};
use time::OffsetDateTime;

/// What a read of the audit log and the lists found.
#[derive(Debug, Default)]
pub struct Found {
    /// The changes: the audit log's, oldest window first in the log's order within a
    /// window, then the lists'; one per change key.
    pub changes: Vec<Change>,
    /// Records skipped, by [`Skip::reason`], and the unmapped operation types seen.
    pub skipped: BTreeMap<&'static str, u64>,
    pub unmapped_types: BTreeMap<String, u64>,
    /// Records that did not parse.
    pub unreadable: u64,
    /// Pages read, by source (`audit`, `gdap`, `migrations`).
    pub pages: BTreeMap<&'static str, u64>,
    /// Requests made (retries included).
    pub requests: u64,
    /// Lists that could not be read (a missing Graph permission…): what the audit log
    /// gave is still published, and the run reports itself incomplete.
    pub unread_lists: Vec<String>,
}

/// Why a read stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Range(#[from] RangeError),
    /// A request failed for good, or kept failing past its retries.
    #[error("Partner Center: {0}")]
    Api(FetchError),
    /// The run used its request budget before reading everything.
    #[error("the request budget of {0} was used up before the range was read")]
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
    /// Read the lists too (GDAP relationships, new-commerce migrations).
    pub lists: bool,
    /// Read the referrals list (App+User: only with a refresh token).
    pub referrals: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            page_size: 500,
            request_budget: 2_000,
            attempts: 8,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            lists: true,
            referrals: false,
        }
    }
}

/// Reads the audit log for `[since, until)`, then the lists, and returns the changes
/// in them. `api_base` is the base URL written into the reconstructed webhooks.
pub async fn find_changes(
    client: &ApiClient,
    api_base: &str,
    since: OffsetDateTime,
    until: OffsetDateTime,
    options: &ReadOptions,
) -> Result<Found, ReadError> {
    let mut reader =
        Reader { client, options, found: Found::default(), seen: HashSet::new(), progress: Instant::now() };
    let mut migration_customers = BTreeSet::new();
    for (start, end) in audit::windows(since, until, OffsetDateTime::now_utc())? {
        let mut next = Some((audit::first_page(start, end, options.page_size), Vec::new()));
        while let Some((path, headers)) = next.take() {
            let (body, _) = reader.fetch(Api::PartnerCenter, AUDIT, &path, &headers).await?;
            let page = audit::parse_page(&body);
            reader.found.unreadable += page.unreadable as u64;
            for record in &page.records {
                if record.operation_type == "create_new_commerce_migration"
                    && let Some(customer) = record.customer_id.as_ref().filter(|c| !c.is_empty())
                {
                    migration_customers.insert(customer.clone());
                }
                reader.classify(record, api_base);
            }
            next = page.next;
        }
    }
    if options.lists {
        if let Err(e) = reader.read_gdap(since, until).await {
            reader.list_failed(lists::GDAP, e)?;
        }
        if options.referrals
            && let Err(e) = reader.read_referrals(api_base, since, until).await
        {
            reader.list_failed(lists::REFERRALS, e)?;
        }
        for customer in &migration_customers {
            if let Err(e) = reader.read_migrations(customer, api_base, since, until).await {
                reader.list_failed(lists::MIGRATIONS, e)?;
            }
        }
    }
    Ok(reader.found)
}

/// One read's state: the requests it made, what it found.
struct Reader<'a> {
    client: &'a ApiClient,
    options: &'a ReadOptions,
    found: Found,
    seen: HashSet<String>,
    progress: Instant,
}

impl Reader<'_> {
    fn classify(&mut self, record: &AuditRecord, api_base: &str) {
        match mapping::change_of(record, api_base) {
            Ok(change) => self.add(change),
            Err(skip) => {
                *self.found.skipped.entry(skip.reason()).or_default() += 1;
                if let Skip::Unmapped(kind) = skip {
                    *self.found.unmapped_types.entry(kind).or_default() += 1;
                }
            }
        }
    }

    /// Adds a change once. A listed change the audit log already gave (the same event of
    /// the same resource: each status is entered once) is the same change.
    fn add(&mut self, change: Change) {
        let same_in_audit = change.source != AUDIT
            && self.found.changes.iter().any(|c| {
                c.source == AUDIT
                    && c.event_name == change.event_name
                    && c.body["ResourceUri"] == change.body["ResourceUri"]
            });
        if !same_in_audit && self.seen.insert(change.change_key.clone()) {
            self.found.changes.push(change);
        }
    }

    /// Every page of the GDAP relationships.
    async fn read_gdap(&mut self, since: OffsetDateTime, until: OffsetDateTime) -> Result<(), ReadError> {
        let mut next = Some(lists::GDAP_FIRST_PAGE.to_string());
        while let Some(path) = next.take() {
            let (body, _) = self.fetch(Api::Graph, lists::GDAP, &path, &[]).await?;
            let (items, after) = lists::graph_page(&body);
            for item in &items {
                if let Some(change) = lists::gdap_change(item, since, until) {
                    self.add(change);
                }
            }
            next = after;
        }
        Ok(())
    }

    /// The referrals updated since `since`, newest first, page by page.
    async fn read_referrals(
        &mut self,
        api_base: &str,
        since: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<(), ReadError> {
        let mut next = Some(lists::REFERRALS_FIRST_PAGE.to_string());
        while let Some(path) = next.take() {
            let (body, _) = self.fetch(Api::Referrals, lists::REFERRALS, &path, &[]).await?;
            let (items, after) = lists::graph_page(&body);
            for item in &items {
                for change in lists::referral_changes(item, api_base, since, until) {
                    self.add(change);
                }
            }
            if !lists::referrals_done(&items, since) {
                next = after;
            }
        }
        Ok(())
    }

    /// Every page of one customer's new-commerce migrations.
    async fn read_migrations(
        &mut self,
        customer: &str,
        api_base: &str,
        since: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<(), ReadError> {
        let path = lists::migrations_first_page(customer);
        let mut headers = Vec::new();
        loop {
            let (body, continuation) = self.fetch(Api::PartnerCenter, lists::MIGRATIONS, &path, &headers).await?;
            for item in body.as_array().into_iter().flatten() {
                if let Some(change) = lists::migration_change(item, api_base, since, until) {
                    self.add(change);
                }
            }
            match continuation {
                Some(token) => headers = vec![("MS-ContinuationToken".to_string(), token)],
                None => return Ok(()),
            }
        }
    }

    /// A list that could not be read: noted, unless the budget is spent (then nothing
    /// more can be read at all).
    fn list_failed(&mut self, source: &str, e: ReadError) -> Result<(), ReadError> {
        if let ReadError::Budget(_) = e {
            return Err(e);
        }
        tracing::warn!(source, error = %e, "a list could not be read; the audit log's changes are still published");
        self.found.unread_lists.push(format!("{source}: {e}"));
        Ok(())
    }

    /// GETs a page with retries; a 404 is an empty page.
    async fn fetch(
        &mut self,
        api: Api,
        source: &'static str,
        path: &str,
        headers: &[(String, String)],
    ) -> Result<(Value, Option<String>), ReadError> {
        let options = self.options;
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(options.min_delay)
            .with_max_delay(options.max_delay)
            .with_jitter()
            .with_max_times(options.attempts.saturating_sub(1))
            .build();
        loop {
            if self.found.requests >= options.request_budget {
                return Err(ReadError::Budget(options.request_budget));
            }
            self.found.requests += 1;
            match self.client.get_paged(api, path, headers, uuid::Uuid::new_v4()).await {
                Ok((answer, continuation)) => {
                    *self.found.pages.entry(source).or_default() += 1;
                    if self.progress.elapsed() >= Duration::from_secs(5) {
                        let pages: u64 = self.found.pages.values().sum();
                        tracing::info!(pages, changes = self.found.changes.len(), "reading Partner Center");
                        self.progress = Instant::now();
                    }
                    let body = match answer {
                        Fetched::Found(body) => body,
                        Fetched::Gone => Value::Null,
                    };
                    return Ok((body, continuation));
                }
                Err(e) => {
                    let ErrorClass::Transient { retry_after } = e.class else { return Err(ReadError::Api(e)) };
                    let Some(delay) = delays.next() else { return Err(ReadError::Api(e)) };
                    let wait = retry_after.map_or(delay, |r| r.max(delay));
                    tracing::warn!(source, error = %e, wait_ms = wait.as_millis() as u64, "page failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}
