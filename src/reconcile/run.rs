//! `pcbridge reconcile`: reads what Partner Center recorded in a time range, and
//! publishes each change that did not reach the broker as the raw event a webhook would
//! have been — same destination, same body shape, `pc-origin: reconcile`, no signature —
//! so the worker enriches it unchanged. The change store decides "did not reach": a key
//! the ingress recorded or an earlier run published is skipped, and a key is claimed
//! before its publish, so two runs at once publish it once. A run is safe to repeat.

use super::{ReadError, ReadOptions, find_changes, mapping::Change};
use crate::broker::{self, Publisher};
use crate::change_store::{ChangeStore, StoreError};
use crate::config::{BrokerKind, Config};
use crate::contract::{
    destinations::Destinations,
    headers,
    raw::{self, Origin, Raw},
};
use crate::partner_center::{client::ApiClient, event::Event};
use crate::telemetry::{Metrics, reconcile_outcome as outcome};
use std::{collections::BTreeMap, fmt, sync::Arc, time::Duration};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// `pcbridge reconcile` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ReconcileArgs {
    /// Start of the range: RFC 3339, or an age such as 6h or 2d. At most 90 days back
    /// (Partner Center keeps audit records 90 days).
    #[arg(long, value_name = "TIME", default_value = "48h")]
    pub since: String,
    /// End of the range (same forms). Default: now − reconcile.settle_minutes, so that
    /// webhooks still being retried by Partner Center are not reconciled under them.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// List the changes that would be published; publish and record nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Why a run stopped. What it published before stays published and recorded: run it
/// again.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{flag}: {source}")]
    Time {
        flag: &'static str,
        #[source]
        source: crate::replay::TimeError,
    },
    #[error("--since ({since}) is not before --until ({until})")]
    EmptyRange { since: String, until: String },
    #[error("cannot call Partner Center: {0}")]
    Client(#[from] crate::partner_center::BuildError),
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Without the store nothing can tell a missed change from a delivered one.
    #[error("{0} (reconcile needs the change store to publish; --dry-run lists without it)")]
    Store(#[from] StoreError),
    #[error("cannot connect the {broker} publisher: {source}")]
    Broker {
        broker: BrokerKind,
        #[source]
        source: broker::SetupError,
    },
    /// A publish failed: its claim was given back, and the run stopped.
    #[error("publishing {key} to {destination} failed after {published} published ({source}); run reconcile again")]
    Publish {
        key: String,
        destination: String,
        published: u64,
        #[source]
        source: broker::PublishError,
    },
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Summary {
    pub since: String,
    pub until: String,
    pub dry_run: bool,
    /// Changes found, one per change key.
    pub found: u64,
    pub published: u64,
    pub already_delivered: u64,
    pub claimed_elsewhere: u64,
    /// Dry run: changes not yet delivered (or not known to be, without a store).
    pub missing: Vec<Change>,
    pub skipped: BTreeMap<&'static str, u64>,
    pub unmapped_types: BTreeMap<String, u64>,
    /// Pages read, by source.
    pub pages: BTreeMap<&'static str, u64>,
    pub requests: u64,
    pub pruned: u64,
    /// Lists that could not be read: the run is incomplete (exit status 1).
    pub unread_lists: Vec<String>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for change in &self.missing {
            writeln!(
                f,
                "{}  {:<44} {}  {}",
                change.body["ResourceChangeUtcDate"].as_str().unwrap_or("?"),
                change.event_name,
                change.change_key,
                change.body["ResourceUri"].as_str().unwrap_or("-"),
            )?;
        }
        let skipped: u64 = self.skipped.values().sum();
        let reasons: Vec<String> = self.skipped.iter().map(|(r, n)| format!("{r} {n}")).collect();
        let pages: Vec<String> = self.pages.iter().map(|(s, n)| format!("{s} {n}")).collect();
        write!(f, "reconciled {} → {}: pages {} · found {}", self.since, self.until, pages.join(", "), self.found)?;
        if self.dry_run {
            write!(f, " · would publish {}", self.missing.len())?;
        } else {
            write!(f, " · published {}", self.published)?;
        }
        write!(
            f,
            " · already delivered {} · claimed by another run {}",
            self.already_delivered, self.claimed_elsewhere
        )?;
        write!(f, " · skipped {skipped}")?;
        if !reasons.is_empty() {
            write!(f, " ({})", reasons.join(", "))?;
        }
        writeln!(f, " · pruned {}", self.pruned)?;
        for list in &self.unread_lists {
            writeln!(f, "not read (the run is incomplete): {list}")?;
        }
        if !self.unmapped_types.is_empty() {
            let types: Vec<String> = self.unmapped_types.iter().map(|(t, n)| format!("{t} ×{n}")).collect();
            writeln!(f, "operation types no event reports: {}", types.join(", "))?;
        }
        Ok(())
    }
}

/// Runs one reconciliation.
pub async fn run(config: &Config, args: &ReconcileArgs, metrics: Arc<Metrics>) -> Result<Summary, ReconcileError> {
    let now = OffsetDateTime::now_utc();
    let time =
        |text: &str, flag| crate::replay::parse_time(text, now).map_err(|source| ReconcileError::Time { flag, source });
    let since = time(&args.since, "--since")?;
    let until = match &args.until {
        Some(text) => time(text, "--until")?,
        None => now - config.reconcile.settle(),
    };
    let show = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
    if since >= until {
        return Err(ReconcileError::EmptyRange { since: show(since), until: show(until) });
    }
    // Without a store a dry run still lists what the audit log holds.
    let store = match (&config.reconcile.store_url.is_empty(), args.dry_run) {
        (true, true) => None,
        _ => Some(ChangeStore::open(config).await?),
    };
    let client = ApiClient::new(config, metrics.clone())?;
    let r = &config.reconcile;
    let options = ReadOptions {
        page_size: r.page_size,
        request_budget: r.request_budget,
        attempts: r.attempts,
        lists: r.lists,
        // App+User only: read when a refresh token is configured.
        referrals: r.lists && matches!(config.refresh_token(), Ok(Some(_))),
        ..ReadOptions::default()
    };
    let api_base = config
        .partner_center
        .api_hosts
        .first()
        .map_or_else(|| config.partner_center.base_url.clone(), |host| format!("https://{host}"));
    tracing::info!(since = %show(since), until = %show(until), dry_run = args.dry_run, "reconciling");
    let found = find_changes(&client, &api_base, since, until, &options).await?;
    for (source, n) in &found.pages {
        metrics.reconcile_pages.with_label_values(&[source]).inc_by(*n);
    }
    for (reason, n) in &found.skipped {
        metrics.reconcile_skipped.with_label_values(&[reason]).inc_by(*n);
    }
    metrics.reconcile_skipped.with_label_values(&["unreadable"]).inc_by(found.unreadable);
    let mut summary = Summary {
        since: show(since),
        until: show(until),
        dry_run: args.dry_run,
        found: found.changes.len() as u64,
        skipped: found.skipped,
        unmapped_types: found.unmapped_types,
        pages: found.pages,
        requests: found.requests,
        unread_lists: found.unread_lists,
        ..Summary::default()
    };
    if found.unreadable > 0 {
        summary.skipped.insert("unreadable", found.unreadable);
    }
    tracing::info!(found = summary.found, requests = summary.requests, "Partner Center read");
    if args.dry_run {
        for change in found.changes {
            let delivered = match &store {
                Some(store) => store.is_delivered(&change.change_key, r.match_window()).await?,
                None => false,
            };
            let outcome = if delivered { outcome::DELIVERED } else { outcome::MISSING };
            metrics.reconcile_changes.with_label_values(&[change.source, outcome]).inc();
            if delivered {
                summary.already_delivered += 1;
            } else {
                summary.missing.push(change);
            }
        }
        return Ok(summary);
    }
    let Some(store) = store else { return Ok(summary) };
    let publisher = broker::connect(config, "pcbridge-reconcile", metrics.clone())
        .await
        .map_err(|source| ReconcileError::Broker { broker: config.broker.kind, source })?;
    let destinations = config.broker.destinations();
    let raw_destinations = destinations.all_raw();
    if let Err(e) = publisher.ensure_destinations(&raw_destinations).await {
        tracing::warn!(error = %e, "could not create the raw destinations; publishing anyway");
    }
    let publishing = Publishing {
        store: &store,
        publisher: publisher.as_ref(),
        destinations: &destinations,
        source: &config.partner_center.base_url,
        run_id: format!("{}-{}", hostname(), uuid::Uuid::new_v4().simple()),
        lease: r.claim_lease(),
        match_window: r.match_window(),
        timeout: config.ingress.publish_timeout(),
    };
    let result = publish_missing(&publishing, found.changes, &mut summary, &metrics).await;
    publisher.close(Duration::from_secs(5)).await;
    result?;
    summary.pruned = store.prune(r.horizon()).await?;
    Ok(summary)
}

/// What publishing the missing changes needs.
struct Publishing<'a> {
    store: &'a ChangeStore,
    publisher: &'a dyn Publisher,
    destinations: &'a Destinations,
    source: &'a str,
    /// This run's name on its claims.
    run_id: String,
    lease: Duration,
    /// How near a webhook's change time must be to count as this change's delivery.
    match_window: Duration,
    timeout: Duration,
}

async fn publish_missing(
    p: &Publishing<'_>,
    changes: Vec<Change>,
    summary: &mut Summary,
    metrics: &Metrics,
) -> Result<(), ReconcileError> {
    let total = changes.len();
    let mut last_progress = std::time::Instant::now();
    for (done, change) in changes.into_iter().enumerate() {
        if last_progress.elapsed() >= Duration::from_secs(5) {
            tracing::info!(done, total, published = summary.published, "reconcile progress");
            last_progress = std::time::Instant::now();
        }
        let key = change.change_key.clone();
        let count = |o: &str| metrics.reconcile_changes.with_label_values(&[change.source, o]).inc();
        if p.store.is_delivered(&key, p.match_window).await? {
            summary.already_delivered += 1;
            count(outcome::DELIVERED);
            continue;
        }
        if !p.store.claim(&key, &p.run_id, p.lease).await? {
            if p.store.is_delivered(&key, p.match_window).await? {
                summary.already_delivered += 1;
                count(outcome::DELIVERED);
            } else {
                summary.claimed_elsewhere += 1;
                count(outcome::CLAIMED_ELSEWHERE);
            }
            continue;
        }
        let message = raw_message(&change, p.destinations, p.source);
        let published = match tokio::time::timeout(p.timeout, p.publisher.publish(&message)).await {
            Ok(result) => result,
            Err(_) => Err(broker::PublishError::Timeout(p.timeout)),
        };
        if let Err(source) = published {
            count(outcome::FAILED);
            p.store.release(&key, &p.run_id).await?;
            return Err(ReconcileError::Publish {
                key,
                destination: message.destination,
                published: summary.published,
                source,
            });
        }
        p.store.published(&key).await?;
        summary.published += 1;
        count(outcome::PUBLISHED);
        tracing::info!(change_key = %key, event_name = change.event_name, destination = %message.destination, "published a missed change");
    }
    Ok(())
}

/// The raw message of a reconciled change: the webhook body Partner Center would have
/// sent, `pc-origin: reconcile`, no signature headers.
pub fn raw_message(change: &Change, destinations: &Destinations, source: &str) -> broker::Message {
    let body = bytes::Bytes::from(change.body.to_string());
    // The body was built with every field Event reads; the fallback cannot be reached.
    let event = Event::from_value(&change.body).unwrap_or_else(|_| Event {
        name: change.event_name.to_string(),
        resource_uri: None,
        resource_name: None,
        audit_uri: None,
        resource_change_utc_date: None,
    });
    let raw = Raw {
        event: &event,
        event_id: crate::partner_center::event::event_id(&body),
        body: body.clone(),
        change_key: Some(change.change_key.clone()),
        origin: Origin::Reconcile,
        received_at: OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default(),
        traceparent: headers::outgoing_traceparent(None),
    };
    raw::message(raw, destinations, source)
}

fn hostname() -> String {
    std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "reconcile".into())
}
