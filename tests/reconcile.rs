//! Reading Partner Center's audit log for reconciliation, against the stand-in: windows of
//! at most 30 days, pages through `links.next` and `MS-ContinuationToken`, 429 with
//! `Retry-After` waited out, the 90-day limit refused before any request, and only the
//! succeeded, mapped records turned into webhooks with the change key a delivered webhook
//! of the same change carries.

mod common;

use common::{
    app::worker_config,
    pc_api::{PcApi, Reply},
};
use pcbridge::{
    config::Config,
    contract::change_key,
    partner_center::client::ApiClient,
    reconcile::{self, ReadError, ReadOptions, audit::RangeError, store::ChangeStore},
    telemetry::Metrics,
};
use serde_json::{Value, json};
use std::{sync::Arc, time::Duration};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

fn record(id: &str, operation: &str, status: &str, at: OffsetDateTime, new_value: Value) -> Value {
    json!({
        "id": id,
        "operationType": operation,
        "operationDate": at.format(&Rfc3339).unwrap(),
        "operationStatus": status,
        "resourceType": "subscription",
        "resourceNewValue": new_value.to_string(),
        "customerId": "c-1",
    })
}

fn options() -> ReadOptions {
    ReadOptions {
        page_size: 2,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_is_read_in_windows_and_pages_into_changes() {
    let api = PcApi::start().await;
    let config = worker_config(Config::default(), &api);
    let client = ApiClient::new(&config, Arc::new(Metrics::new())).expect("client");
    let now = OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    // 45 days of records: two windows; the first window holds three pages.
    api.put_audit(vec![
        record("r1", "update_subscription", "succeeded", now - day * 44, json!({"id": "s-1"})),
        record("r2", "update_subscription", "failed", now - day * 40, json!({"id": "s-2"})),
        record("r3", "create_referral", "succeeded", now - day * 35, json!({"id": "ref-3"})),
        record("r4", "a_future_operation", "succeeded", now - day * 33, json!({})),
        record("r5", "update_subscription", "progress", now - day * 20, json!({"id": "s-5"})),
        record("r6", "granular_admin_relationship_activated", "succeeded", now - day * 2, json!({"id": "rel-6"})),
        record("r7", "upgrade_subscription", "succeeded", now - time::Duration::hours(1), json!({"id": "s-7"})),
        record("r8", "update_subscription", "decline", now - time::Duration::hours(1), json!({"id": "s-8"})),
        json!({"operationType": "no id", "operationDate": (now - day).format(&Rfc3339).unwrap()}),
    ]);
    // The first request is throttled.
    api.script("/v1/auditrecords", vec![Reply::RetryAfter(429, 1)]);
    let since = now - day * 45;
    let found = reconcile::find_changes(&client, "https://api.partnercenter.microsoft.com", since, now, &options())
        .await
        .expect("read");

    let keys: Vec<&str> = found.changes.iter().map(|c| c.change_key.as_str()).collect();
    assert_eq!(keys, ["audit:r1", "audit:r3", "audit:r6", "audit:r7"], "succeeded and mapped, oldest first");
    let names: Vec<&str> = found.changes.iter().map(|c| c.event_name).collect();
    assert_eq!(
        names,
        ["subscription-updated", "referral-created", "granular-admin-relationship-activated", "subscription-updated"]
    );
    assert_eq!(found.skipped.get("not-succeeded"), Some(&3));
    assert_eq!(found.skipped.get("unmapped"), Some(&1));
    assert_eq!(found.unmapped_types.get("a_future_operation"), Some(&1));
    assert_eq!(found.unreadable, 1);
    // The webhook of r7 as Partner Center would have sent it, and the key its delivery
    // would have carried.
    let r7 = &found.changes[3].body;
    assert_eq!(
        r7["ResourceUri"],
        "https://api.partnercenter.microsoft.com/webhooks/v1/customers/c-1/subscriptions/s-7"
    );
    assert_eq!(change_key::of_webhook("subscription-updated", r7["AuditUri"].as_str(), None, None, "x"), "audit:r7");

    // Requests: every window at most 30 days, pages followed with their continuation.
    let requests = api.requests_to("/v1/auditrecords");
    assert_eq!(found.requests as usize, requests.len());
    assert_eq!(found.pages, 5, "window 1: 3 pages (5 records in range, 2 a page); window 2: 2 pages (4)");
    assert_eq!(requests.len(), 6, "five pages and the one throttled request");
    assert_eq!(requests[0].status, 429);
    assert!(requests[1].at - requests[0].at >= Duration::from_secs(1), "Retry-After was waited out");
    for r in &requests {
        let q: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(r.query.as_bytes()).into_owned().collect();
        let date = |k: &str| OffsetDateTime::parse(&q[k], &Rfc3339).expect("dates");
        assert!(date("endDate") - date("startDate") <= time::Duration::days(30), "{:?}", r.query);
    }
    assert!(requests.iter().filter(|r| r.headers.contains_key("ms-continuationtoken")).count() == 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ninety_days_is_the_limit_and_the_budget_is_kept() {
    let api = PcApi::start().await;
    let config = worker_config(Config::default(), &api);
    let client = ApiClient::new(&config, Arc::new(Metrics::new())).expect("client");
    let now = OffsetDateTime::now_utc();
    let base = "https://api.partnercenter.microsoft.com";
    let old = now - time::Duration::days(91);
    let refused = reconcile::find_changes(&client, base, old, now, &options()).await;
    assert!(matches!(refused, Err(ReadError::Range(RangeError::TooOld { days: 91 }))), "{refused:?}");
    assert!(api.requests_to("/v1/auditrecords").is_empty(), "refused before any request");

    // A budget of two requests cannot read three pages.
    let day = time::Duration::days(1);
    api.put_audit(
        (0..6)
            .map(|i| record(&format!("b{i}"), "update_subscription", "succeeded", now - day, json!({"id": i})))
            .collect(),
    );
    let tight = ReadOptions { request_budget: 2, ..options() };
    let result = reconcile::find_changes(&client, base, now - day * 2, now, &tight).await;
    assert!(matches!(result, Err(ReadError::Budget(2))), "{result:?}");
    assert_eq!(api.requests_to("/v1/auditrecords").len(), 2);
}

/// The local PostgreSQL (`.ci/setup.sh` starts it); fails, saying how, if it is not there.
const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

async fn store() -> (ChangeStore, String) {
    let table = format!("pctest_changes_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let store = ChangeStore::connect(POSTGRES_URL, &table)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is required at {POSTGRES_URL}: {e}. Start it with `make services`."));
    (store, table)
}

async fn drop_table(table: &str) {
    let (client, connection) = tokio_postgres::connect(POSTGRES_URL, tokio_postgres::NoTls).await.expect("postgres");
    tokio::spawn(connection);
    client.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\"")).await.expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_claimed_once_and_a_delivered_one_never() {
    let (store, table) = store().await;
    let lease = Duration::from_secs(300);
    assert!(store.claim("audit:1", "run-a", lease).await.unwrap(), "new: claimed");
    assert!(!store.claim("audit:1", "run-b", lease).await.unwrap(), "a live claim is not taken");
    // Run A's publish failed: it lets go, and run B takes it.
    store.release("audit:1", "run-a").await.unwrap();
    assert!(store.claim("audit:1", "run-b", lease).await.unwrap());
    store.published("audit:1").await.unwrap();
    assert!(store.is_published("audit:1").await.unwrap());
    assert!(!store.claim("audit:1", "run-c", Duration::ZERO).await.unwrap(), "published: never again");
    // A reconciler that died holding a claim: taken over once the lease has passed.
    assert!(store.claim("audit:2", "run-dead", lease).await.unwrap());
    assert!(!store.claim("audit:2", "run-d", lease).await.unwrap());
    assert!(store.claim("audit:2", "run-d", Duration::ZERO).await.unwrap(), "stale claim taken over");
    // Delivered by webhook: never claimed by reconciliation.
    store.delivered(&["audit:3".to_string(), "subscription-updated|x|t".to_string()]).await.unwrap();
    assert!(!store.claim("audit:3", "run-e", Duration::ZERO).await.unwrap());
    assert!(store.is_published("subscription-updated|x|t").await.unwrap());
    // Pruning: everything is younger than an hour, nothing is older than zero.
    assert_eq!(store.prune(Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(store.prune(Duration::ZERO).await.unwrap(), 4);
    drop(store);
    drop_table(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reconcilers_at_once_claim_each_change_once() {
    let (store, table) = store().await;
    let second = ChangeStore::connect(POSTGRES_URL, &table).await.expect("second connection");
    let keys: Vec<String> = (0..200).map(|i| format!("audit:{i}")).collect();
    let run = |store: ChangeStore, name: &'static str, keys: Vec<String>| async move {
        let mut won = Vec::new();
        for key in keys {
            if store.claim(&key, name, Duration::from_secs(300)).await.expect("claim") {
                won.push(key);
            }
        }
        (store, won)
    };
    let mut reversed = keys.clone();
    reversed.reverse();
    let (a, b) =
        tokio::join!(tokio::spawn(run(store, "run-a", keys.clone())), tokio::spawn(run(second, "run-b", reversed)));
    let ((_, won_a), (_, won_b)) = (a.expect("a"), b.expect("b"));
    assert_eq!(won_a.len() + won_b.len(), keys.len(), "every change claimed, none twice");
    assert!(won_a.iter().all(|k| !won_b.contains(k)));
    assert!(!won_a.is_empty() && !won_b.is_empty(), "both ran: a {} b {}", won_a.len(), won_b.len());
    drop_table(&table).await;
}
