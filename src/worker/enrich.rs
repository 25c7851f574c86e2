//! One raw event → its enriched envelope ([`crate::contract::envelope`]), or a classified
//! failure that becomes a dead letter. Knows what to fetch (via [`Resolver`]) and how to retry (via
//! [`RetryPolicy`]); knows nothing of brokers.

use super::retry::{GiveUp, RetryPolicy};
pub use crate::contract::envelope::RawEvent;
use crate::contract::envelope::{Outcome, envelope, error_kind, status};
use crate::partner_center::{
    client::{Api, ApiClient, FetchError, Fetched},
    event::Event,
    fraud::{self, FraudEvent},
    resource::{Resolver, ResourceError, Target, subscription_path},
};
use crate::shutdown::CancellationToken;
use crate::telemetry::Metrics;
use serde_json::Value;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use uuid::Uuid;

/// A successful enrichment.
#[derive(Debug)]
pub struct Enriched {
    pub envelope: Value,
    pub status: &'static str,
    pub attempts: u32,
}

/// A failed enrichment, ready to be dead-lettered — or `Cancelled` by shutdown.
#[derive(Debug)]
pub enum Failure {
    DeadLetter { kind: &'static str, reason: String, attempts: u32 },
    Cancelled,
}

pub struct Enricher {
    pub resolver: Resolver,
    pub client: ApiClient,
    pub retry: RetryPolicy,
    pub fraud_page_size: u32,
    pub fraud_max_pages: u32,
    pub metrics: Arc<Metrics>,
}

impl Enricher {
    pub async fn enrich(&self, raw: RawEvent<'_>, cancel: &CancellationToken) -> Result<Enriched, Failure> {
        let dead = |kind: &'static str, reason: String, attempts: u32| Failure::DeadLetter { kind, reason, attempts };
        let value: Value =
            serde_json::from_slice(raw.body).map_err(|e| dead(error_kind::BAD_PAYLOAD, format!("not JSON: {e}"), 0))?;
        let event = Event::from_value(&value).map_err(|e| dead(error_kind::BAD_PAYLOAD, e.to_string(), 0))?;
        let resource_target =
            self.resolver.resource(&event.name, event.resource_uri.as_deref()).map_err(|e| resource_failure(&e))?;
        let audit_target = self.resolver.audit(event.audit_uri.as_deref()).map_err(|e| resource_failure(&e))?;

        let deadline = Instant::now() + self.retry.max_elapsed;
        let mut attempts = 1;
        let mut resource = Value::Null;
        let mut fraud_events: Option<Vec<FraudEvent>> = None;
        let mut status = status::NOT_APPLICABLE;
        match resource_target {
            None => {}
            Some(Target::FraudEvents { subscription_id, subscription }) => {
                let (events, n) = self.fraud_events(&subscription_id, deadline, cancel).await?;
                attempts = attempts.max(n);
                // The subscription the alert is about: from the URI, or through the
                // customer the fraud events name (the `fraudEvents?SubscriptionId=` form).
                let subscription = subscription.or_else(|| {
                    events
                        .iter()
                        .find_map(|e| e.customer_tenant_id.as_deref())
                        .map(|customer| subscription_path(customer, &subscription_id))
                });
                if let Some(path) = subscription {
                    let (fetched, n) = self.get(Api::PartnerCenter, &path, deadline, cancel).await?;
                    attempts = attempts.max(n);
                    if let Fetched::Found(v) = fetched {
                        resource = v;
                    }
                }
                fraud_events = Some(events);
                status = status::ENRICHED;
            }
            Some(target) => {
                let (fetched, n) = self.fetch(&target, deadline, cancel).await?;
                attempts = attempts.max(n);
                match fetched {
                    Fetched::Found(v) => {
                        resource = v;
                        status = status::ENRICHED;
                    }
                    Fetched::Gone => status = status::RESOURCE_GONE,
                }
            }
        }
        let mut audit = Value::Null;
        if let Some(target) = audit_target {
            let (fetched, n) = self.fetch(&target, deadline, cancel).await?;
            attempts = attempts.max(n);
            if let Fetched::Found(v) = fetched {
                audit = v;
            }
        }
        let fraud_events = fraud_events.map(|events| serde_json::to_value(events).unwrap_or(Value::Null));
        let outcome = Outcome { resource, audit, fraud_events, status, attempts };
        let envelope = envelope(&raw, event.name, value, outcome);
        Ok(Enriched { envelope, status, attempts })
    }

    /// A single-resource target (Partner Center or Graph) with retries.
    async fn fetch(
        &self,
        target: &Target,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Result<(Fetched, u32), Failure> {
        match target {
            Target::PartnerCenter { path_and_query } => {
                self.get(Api::PartnerCenter, path_and_query, deadline, cancel).await
            }
            Target::Graph { path } => self.get(Api::Graph, path, deadline, cancel).await,
            Target::FraudEvents { subscription_id, .. } => {
                let (events, n) = self.fraud_events(subscription_id, deadline, cancel).await?;
                Ok((Fetched::Found(serde_json::to_value(events).unwrap_or(Value::Null)), n))
            }
        }
    }

    /// One GET with retries; the MS-RequestId stays the same across them.
    async fn get(
        &self,
        api: Api,
        path: &str,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Result<(Fetched, u32), Failure> {
        let request_id = Uuid::new_v4();
        let retries = &self.metrics.worker_retries;
        let on_retry = |e: &FetchError, wait: Duration| {
            retries.with_label_values(&[api.label()]).inc();
            tracing::info!(api = api.label(), error = %e, wait_ms = wait.as_millis() as u64, "retrying");
        };
        let (result, attempts) =
            self.retry.run(deadline, cancel, on_retry, || self.client.get(api, path, request_id)).await;
        match result {
            Ok(f) => Ok((f, attempts)),
            Err(GiveUp::Cancelled) => Err(Failure::Cancelled),
            Err(GiveUp::Permanent(e)) => {
                Err(Failure::DeadLetter { kind: error_kind::PERMANENT, reason: e.message, attempts })
            }
            Err(GiveUp::Exhausted(e)) => {
                Err(Failure::DeadLetter { kind: error_kind::EXHAUSTED, reason: e.message, attempts })
            }
        }
    }

    /// Every page of a subscription's active fraud events, until a short page.
    async fn fraud_events(
        &self,
        subscription_id: &str,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Result<(Vec<FraudEvent>, u32), Failure> {
        let mut all = Vec::new();
        let mut attempts = 1;
        for page in 1..=self.fraud_max_pages {
            let path = fraud::page_path(subscription_id, self.fraud_page_size, page);
            let (fetched, n) = self.get(Api::Fraud, &path, deadline, cancel).await?;
            attempts = attempts.max(n);
            let events = match fetched {
                Fetched::Gone => Vec::new(),
                Fetched::Found(v) => fraud::parse_page(v).map_err(|reason| Failure::DeadLetter {
                    kind: error_kind::PERMANENT,
                    reason,
                    attempts,
                })?,
            };
            let short = events.len() < self.fraud_page_size as usize;
            all.extend(events);
            if short {
                return Ok((all, attempts));
            }
        }
        tracing::warn!(
            subscription_id,
            pages = self.fraud_max_pages,
            "fraud events truncated at partner_center.fraud_max_pages"
        );
        Ok((all, attempts))
    }
}

fn resource_failure(e: &ResourceError) -> Failure {
    let kind = match e {
        ResourceError::ForeignHost(_) => error_kind::FOREIGN_HOST,
        ResourceError::Unresolvable(..) => error_kind::UNRESOLVABLE,
    };
    Failure::DeadLetter { kind, reason: e.to_string(), attempts: 0 }
}
