//! Reading Partner Center's audit log for reconciliation, against the stand-in: windows of
//! at most 30 days, pages through `links.next` and `MS-ContinuationToken`, 429 with
//! `Retry-After` waited out, the 90-day limit refused before any request, and only the
//! succeeded, mapped records turned into webhooks with the change key a delivered webhook
//! of the same change carries.

mod common;

use common::{
    app::{spawn_ingress, spawn_worker, worker_config},
    bus::{Bus, on_every_broker, output_queues},
    pc::Pc,
    pc_api::{PcApi, Reply},
};
use pcbridge::{
    change_store::ChangeStore,
    config::{BrokerKind, Config},
    contract::change_key,
    partner_center::client::ApiClient,
    reconcile::{
        self, ReadError, ReadOptions,
        audit::RangeError,
        run::{ReconcileArgs, Summary},
    },
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

/// The audit log only (the lists have tests of their own).
fn options() -> ReadOptions {
    ReadOptions {
        lists: false,
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
    let at = |days: i32| (now - day * days).format(&Rfc3339).unwrap();
    let referral =
        format!("referral-created|https://api.partnercenter.microsoft.com/engagements/v1/referrals/ref-3|{}", at(35));
    let gdap = format!(
        "granular-admin-relationship-activated|https://partner.microsoft.com/granularAdminRelationships/rel-6|{}",
        at(2)
    );
    // Only subscription-updated webhooks name their audit record; the others are named
    // by event, resource and time, as their webhooks are.
    assert_eq!(keys, ["audit:r1", referral.as_str(), gdap.as_str(), "audit:r7"], "succeeded and mapped, oldest first");
    assert!(found.changes[1].body["AuditUri"].is_null(), "referral webhooks carry no AuditUri");
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
    assert_eq!(found.pages["audit"], 5, "window 1: 3 pages (5 records in range, 2 a page); window 2: 2 pages (4)");
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

/// The lists name what the audit log does not: a customer's GDAP approval (Graph, every
/// page), a migration completing (the customers of the audit log's migrations, paged
/// through MS-ContinuationToken). A listed change the audit log already gave is kept
/// once; an unreadable list is reported while the audit log's changes stand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lists_add_what_the_audit_log_does_not_record() {
    let api = PcApi::start().await;
    let config = worker_config(Config::default(), &api);
    let client = ApiClient::new(&config, Arc::new(Metrics::new())).expect("client");
    let now = OffsetDateTime::now_utc();
    let ago = |h: i64| (now - time::Duration::hours(h)).format(&Rfc3339).unwrap();
    api.put_audit(vec![
        record(
            "m0",
            "create_new_commerce_migration",
            "succeeded",
            now - time::Duration::hours(30),
            json!({"id": "mig-1"}),
        ),
        record(
            "g0",
            "granular_admin_relationship_approved",
            "succeeded",
            now - time::Duration::hours(20),
            json!({"id": "rel-2"}),
        ),
    ]);
    let gdap = "/v1.0/tenantRelationships/delegatedAdminRelationships";
    api.put_pages(
        gdap,
        vec![
            json!({"value": [
                {"id": "rel-1", "status": "active", "activatedDateTime": ago(10), "lastModifiedDateTime": ago(10)},
                {"id": "rel-2", "status": "approved", "lastModifiedDateTime": ago(20)},
                {"id": "rel-3", "status": "approvalPending", "lastModifiedDateTime": ago(5)},
            ]}),
            json!({"value": [
                {"id": "rel-4", "status": "expired", "endDateTime": ago(3), "lastModifiedDateTime": ago(3)},
                {"id": "rel-5", "status": "terminated", "endDateTime": ago(24 * 5)},
            ]}),
        ],
    );
    let migrations = "/v1/migrations/newcommerce";
    api.put_pages(migrations, vec![
        json!([{"id": "mig-0", "customerTenantId": "c-1", "status": "Processing", "startedTime": ago(1)}]),
        json!([{"id": "mig-1", "customerTenantId": "c-1", "status": "Completed", "startedTime": ago(30), "completedTime": ago(29)}]),
    ]);
    // Referrals, most recently updated first: one created and updated in range, one
    // updated in range, then one untouched since long before (the last page read).
    let referrals = "/v1.0/engagements/referrals";
    api.put_pages(
        referrals,
        vec![
            json!({"value": [
                {"id": "ref-1", "createdDateTime": ago(8), "updatedDateTime": ago(2)},
                {"id": "ref-2", "createdDateTime": ago(24 * 40), "updatedDateTime": ago(6)},
                {"id": "ref-3", "createdDateTime": ago(24 * 40), "updatedDateTime": ago(24 * 30)},
            ]}),
            json!({"value": [{"id": "ref-4", "createdDateTime": ago(24 * 50), "updatedDateTime": ago(24 * 45)}]}),
        ],
    );
    let options = ReadOptions { lists: true, referrals: true, ..options() };
    let base = "https://api.partnercenter.microsoft.com";
    let found =
        reconcile::find_changes(&client, base, now - time::Duration::hours(48), now, &options).await.expect("read");
    let events: Vec<(&str, &str)> = found.changes.iter().map(|c| (c.source, c.event_name)).collect();
    assert_eq!(
        events,
        [
            ("audit", "new-commerce-migration-created"),
            ("audit", "granular-admin-relationship-approved"),
            ("gdap", "granular-admin-relationship-activated"),
            ("gdap", "granular-admin-relationship-expired"),
            ("referrals", "referral-created"),
            ("referrals", "referral-updated"),
            ("referrals", "referral-updated"),
            ("migrations", "new-commerce-migration-completed"),
        ],
        "rel-2's approval once (the audit log's), rel-3 pending, rel-5 ended before the range; \
         ref-1 created and updated, ref-2 updated, ref-3 not in range"
    );
    assert_eq!(found.pages.get("referrals"), Some(&1), "the first page reached back past --since");
    let listed = api.requests_to(referrals);
    assert!(listed[0].query.contains("$orderby=updatedDateTime%20desc"), "{:?}", listed[0].query);
    assert_eq!(found.pages.get("gdap"), Some(&2), "both pages of relationships");
    assert_eq!(found.pages.get("migrations"), Some(&2), "both pages, through MS-ContinuationToken");
    let listed = api.requests_to(migrations);
    assert!(listed[0].query.contains("CustomerTenantId=c-1"), "{:?}", listed[0].query);
    assert_eq!(listed[1].headers.get("ms-continuationtoken").map(String::as_str), Some("1"));
    assert!(found.unread_lists.is_empty());

    // Graph refuses (no permission): the audit log's changes stand, the run says so.
    api.script(gdap, vec![Reply::Status(403)]);
    let found =
        reconcile::find_changes(&client, base, now - time::Duration::hours(48), now, &options).await.expect("read");
    assert_eq!(found.unread_lists.len(), 1, "{:?}", found.unread_lists);
    assert!(found.unread_lists[0].starts_with("gdap"), "{:?}", found.unread_lists);
    assert!(found.changes.iter().any(|c| c.source == "audit"));
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
    assert!(store.is_delivered("audit:1", Duration::ZERO).await.unwrap());
    assert!(!store.claim("audit:1", "run-c", Duration::ZERO).await.unwrap(), "published: never again");
    // A reconciler that died holding a claim: taken over once the lease has passed.
    assert!(store.claim("audit:2", "run-dead", lease).await.unwrap());
    assert!(!store.claim("audit:2", "run-d", lease).await.unwrap());
    assert!(store.claim("audit:2", "run-d", Duration::ZERO).await.unwrap(), "stale claim taken over");
    // Delivered by webhook: never claimed by reconciliation.
    store.delivered(&["audit:3".to_string(), "subscription-updated|x|t".to_string()]).await.unwrap();
    assert!(!store.claim("audit:3", "run-e", Duration::ZERO).await.unwrap());
    assert!(store.is_delivered("subscription-updated|x|t", Duration::ZERO).await.unwrap());
    // A change named by event, resource and time: delivered when a webhook of the same
    // event and resource came within the window of its time.
    let uri = "https://partner.microsoft.com/granularAdminRelationships/rel-1";
    store
        .delivered(&[format!("granular-admin-relationship-approved|{uri}|2026-12-01T10:00:00.1234567Z")])
        .await
        .unwrap();
    let window = Duration::from_secs(300);
    let near = format!("granular-admin-relationship-approved|{uri}|2026-12-01T10:02:00Z");
    let far = format!("granular-admin-relationship-approved|{uri}|2026-12-01T11:00:00Z");
    let other_event = format!("granular-admin-relationship-terminated|{uri}|2026-12-01T10:00:00Z");
    assert!(store.is_delivered(&near, window).await.unwrap(), "two minutes apart: the same change");
    assert!(!store.is_delivered(&far, window).await.unwrap(), "an hour apart: another change");
    assert!(!store.is_delivered(&other_event, window).await.unwrap());
    assert!(
        store.is_delivered("audit:3", window).await.unwrap() && !store.is_delivered("audit:9", window).await.unwrap()
    );
    // Pruning: everything is younger than an hour, nothing is older than zero.
    assert_eq!(store.prune(Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(store.prune(Duration::ZERO).await.unwrap(), 5);
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

const API: &str = "https://api.partnercenter.microsoft.com";

/// The webhook Partner Center sends for audit record `id` (a subscription update), its
/// fields in Partner Center's order: not the bytes reconciliation writes, as in life.
fn webhook(id: &str, subscription: &str, at: OffsetDateTime) -> Vec<u8> {
    let at = at.format(&Rfc3339).unwrap();
    format!(
        r#"{{"EventName":"subscription-updated","ResourceUri":"{API}/webhooks/v1/customers/c-1/subscriptions/{subscription}","ResourceName":"subscription","AuditUri":"{API}/v1/auditrecords/{id}","ResourceChangeUtcDate":"{at}"}}"#
    )
    .into_bytes()
}

/// A configuration whose change store is a table of its own in the local PostgreSQL.
fn with_store(mut config: Config) -> Config {
    config.reconcile.store_url = POSTGRES_URL.into();
    config.reconcile.table = format!("pctest_changes_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    config
}

async fn reconcile(config: &Config, since: &str) -> Summary {
    let args = ReconcileArgs { since: since.into(), until: Some("0s".into()), dry_run: false };
    reconcile::run::run(config, &args, Arc::new(Metrics::new())).await.expect("reconcile runs")
}

/// Some changes arrive by webhook, some only in the audit log: reconciliation publishes
/// exactly the missing ones, the worker enriches them like webhooks, a second run
/// publishes none; a webhook arriving after its change was reconciled is published (its
/// signature is the authoritative copy) with the same change key, so downstream can
/// drop the second.
async fn reconcile_publishes_exactly_the_missing_changes(kind: BrokerKind) {
    let pc = Pc::new().await;
    let bus = Bus::new(kind).await;
    let api = PcApi::start().await;
    let config = with_store(worker_config(bus.config(&pc), &api));
    let now = OffsetDateTime::now_utc();
    let at = |i: i64| now - time::Duration::minutes(90 - i);
    let mut records = Vec::new();
    for i in 1..=6 {
        let (id, subscription) = (format!("a{i}"), format!("s-{i}"));
        records.push(record(&id, "update_subscription", "succeeded", at(i), json!({ "id": subscription })));
        api.put(&format!("/v1/customers/c-1/subscriptions/{subscription}"), json!({ "id": subscription }));
        api.put(&format!("/v1/auditrecords/{id}"), json!({ "id": id }));
    }
    records.push(record("f1", "update_subscription", "failed", at(7), json!({ "id": "s-7" })));
    records.push(record("u1", "rename_the_moon", "succeeded", at(8), json!({ "id": "moon" })));
    // A GDAP relationship: the partner's approval is audited (and delivered by webhook,
    // whose time differs from the record's by seconds); the customer's acceptance, which
    // activates it, is only in Graph's list.
    records.push(record("g1", "granular_admin_relationship_approved", "succeeded", at(9), json!({ "id": "rel-9" })));
    api.put_audit(records);
    let relationship = "/v1.0/tenantRelationships/delegatedAdminRelationships";
    let activated = (at(20)).format(&Rfc3339).unwrap();
    api.put_pages(
        relationship,
        vec![json!({"value": [
            {"id": "rel-9", "status": "active", "activatedDateTime": activated, "lastModifiedDateTime": activated},
        ]})],
    );
    api.put(&format!("{relationship}/rel-9"), json!({ "id": "rel-9" }));

    let app = spawn_ingress(config.clone()).await;
    let worker = spawn_worker(&config).await;
    // Partner Center delivered a1..a3 and gave up on a4..a6.
    for i in 1..=3 {
        let body = webhook(&format!("a{i}"), &format!("s-{i}"), at(i));
        let (status, json) = app.post(body.clone(), &pc.headers(&body)).await;
        assert_eq!(status, 200, "{json}");
    }
    let approved = format!(
        r#"{{"EventName":"granular-admin-relationship-approved","ResourceUri":"https://partner.microsoft.com/granularAdminRelationships/rel-9","ResourceName":"GranularAdminRelationship","AuditUri":null,"ResourceChangeUtcDate":"{}"}}"#,
        (at(9) + time::Duration::milliseconds(2_345)).format(&Rfc3339).unwrap()
    )
    .into_bytes();
    let (status, json) = app.post(approved.clone(), &pc.headers(&approved)).await;
    assert_eq!(status, 200, "{json}");
    let store = ChangeStore::open(&config).await.expect("store");
    let delivered = ["audit:a1", "audit:a2", "audit:a3"];
    common::wait::until(
        "the ingress records the delivered webhooks' change keys",
        Duration::from_secs(10),
        async || {
            for key in delivered {
                if !store.is_delivered(key, Duration::ZERO).await.expect("store") {
                    return false;
                }
            }
            true
        },
    )
    .await;

    // (The approval's key reaches the store with the others: wait for all four.)
    common::wait::until("the GDAP approval recorded", Duration::from_secs(10), async || {
        store.is_delivered(&format!("granular-admin-relationship-approved|https://partner.microsoft.com/granularAdminRelationships/rel-9|{}", at(9).format(&Rfc3339).unwrap()), Duration::from_secs(300)).await.expect("store")
    })
    .await;
    let first = reconcile(&config, "3h").await;
    assert_eq!((first.found, first.published, first.already_delivered), (8, 4, 4), "{first}");
    assert_eq!(first.skipped.get("not-succeeded"), Some(&1), "{first}");
    assert_eq!(first.unmapped_types.get("rename_the_moon"), Some(&1), "{first}");
    let second = reconcile(&config, "3h").await;
    assert_eq!((second.published, second.already_delivered), (0, 8), "nothing twice: {second}");

    // Every change enriched once: four by webhook, four reconciled.
    let outputs = output_queues(&config);
    let got = bus.read_from(&outputs, 8, Duration::from_secs(30)).await;
    let destinations = config.broker.destinations();
    let mut by_key = std::collections::BTreeMap::new();
    for m in &got {
        by_key.insert(m.headers["pc-change-key"].clone(), m);
    }
    assert_eq!(got.len(), 8, "{:?}", got.iter().map(|m| &m.headers["pc-change-key"]).collect::<Vec<_>>());
    assert_eq!(by_key.len(), 8, "each change once");
    let gdap: Vec<&&common::bus::Received> =
        by_key.values().filter(|m| m.headers["pc-event-name"].starts_with("granular-admin")).collect();
    assert_eq!(gdap.len(), 2, "approved by webhook, activated by reconciliation");
    for m in gdap {
        let reconciled = m.headers["pc-event-name"] == "granular-admin-relationship-activated";
        assert_eq!(m.headers.contains_key("pc-origin"), reconciled);
        let env: Value = serde_json::from_slice(&m.body).expect("envelope");
        assert_eq!(env["resource"]["id"], "rel-9", "enriched from Graph: {env}");
        assert_eq!(m.destination, destinations.enriched(&m.headers["pc-event-name"]));
    }
    for i in 1..=6 {
        let m = by_key[&format!("audit:a{i}")];
        let env: Value = serde_json::from_slice(&m.body).expect("envelope");
        assert_eq!(env["enrichment"]["status"], "enriched", "{env}");
        assert_eq!(env["resource"]["id"], format!("s-{i}"), "{env}");
        assert_eq!(env["audit"]["id"], format!("a{i}"), "{env}");
        let reconciled = i > 3;
        assert_eq!(m.headers.get("pc-origin").map(String::as_str), reconciled.then_some("reconcile"), "a{i}");
        assert_eq!(m.headers.contains_key("pc-signature"), !reconciled, "a{i}: only webhooks are signed");
        if reconciled {
            // Shaped as Partner Center's webhook for it.
            let event = &env["event"];
            assert_eq!(event["EventName"], "subscription-updated");
            assert_eq!(event["ResourceUri"], format!("{API}/webhooks/v1/customers/c-1/subscriptions/s-{i}"));
            assert_eq!(event["AuditUri"], format!("{API}/v1/auditrecords/a{i}"));
        }
    }

    // Partner Center's retry of a4 arrives after all: published, with a4's change key.
    let late = webhook("a4", "s-4", at(4));
    let (status, _) = app.post(late.clone(), &pc.headers(&late)).await;
    assert_eq!(status, 200);
    // (A Kafka topic is a log: it is read again from its start.)
    let expect = if kind == BrokerKind::Kafka { 9 } else { 1 };
    let again = bus.read_from(&outputs, expect, Duration::from_secs(30)).await;
    assert_eq!(again.len(), expect);
    // Both copies of a4 carry its change key: downstream deduplicates on it.
    let a4: Vec<_> = again.iter().filter(|m| m.headers["pc-change-key"] == "audit:a4").collect();
    let signed = a4.iter().filter(|m| m.headers.contains_key("pc-signature")).count();
    assert_eq!(signed, 1, "the late webhook, enriched");
    assert_eq!(a4.len(), if kind == BrokerKind::Kafka { 2 } else { 1 });
    let third = reconcile(&config, "3h").await;
    assert_eq!(third.published, 0, "{third}");

    worker.stop().await.expect("worker stops");
    app.stop().await.expect("ingress stops");
    drop(store);
    drop_table(&config.reconcile.table).await;
    bus.cleanup(&config, &[]).await;
}
on_every_broker!(reconcile_publishes_exactly_the_missing_changes);

/// Two reconcilers started at once over the same 40 missed changes publish each once.
async fn two_runs_at_once_publish_each_change_once(kind: BrokerKind) {
    let pc = Pc::new().await;
    let bus = Bus::new(kind).await;
    let api = PcApi::start().await;
    let mut config = with_store(worker_config(bus.config(&pc), &api));
    config.reconcile.page_size = 5;
    let now = OffsetDateTime::now_utc();
    api.put_audit(
        (0..40)
            .map(|i| {
                let at = now - time::Duration::minutes(100 - i);
                record(&format!("c{i}"), "update_subscription", "succeeded", at, json!({ "id": format!("s-{i}") }))
            })
            .collect(),
    );
    // The raw destination exists before either run publishes (the ingress would create it).
    let (a, b) = tokio::join!(reconcile(&config, "2h"), reconcile(&config, "2h"));
    assert_eq!(a.published + b.published, 40, "a: {a}b: {b}");
    assert_eq!(a.found + b.found, 80);
    let raw = config.broker.destinations().raw("subscription-updated");
    // Read until 40 arrived, then a moment more: a 41st would be seen.
    let got = bus.read_from(std::slice::from_ref(&raw), 40, Duration::from_secs(20)).await;
    let keys: std::collections::BTreeSet<&str> = got.iter().map(|m| m.headers["pc-change-key"].as_str()).collect();
    assert_eq!(got.len(), 40, "no change published twice");
    assert_eq!(keys.len(), 40);
    drop_table(&config.reconcile.table).await;
    bus.cleanup(&config, &[raw]).await;
}
on_every_broker!(two_runs_at_once_publish_each_change_once);

/// `--dry-run` lists the missing changes and publishes nothing; without a store it still
/// lists, and publishing without one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_lists_and_publishes_nothing() {
    let api = PcApi::start().await;
    let config = worker_config(Config::default(), &api);
    let now = OffsetDateTime::now_utc();
    api.put_audit(vec![
        record("d1", "update_subscription", "succeeded", now - time::Duration::hours(2), json!({"id": "s-1"})),
        record("d2", "create_referral", "succeeded", now - time::Duration::minutes(30), json!({"id": "ref-2"})),
    ]);
    // Settled: the last hour is left to webhooks still on their way.
    let args = ReconcileArgs { since: "3h".into(), until: None, dry_run: true };
    let summary = reconcile::run::run(&config, &args, Arc::new(Metrics::new())).await.expect("dry run");
    assert_eq!(summary.missing.len(), 1, "{summary}");
    let text = summary.to_string();
    assert!(text.contains("audit:d1") && text.contains("would publish 1"), "{text}");
    let publish = ReconcileArgs { dry_run: false, ..args };
    let refused = reconcile::run::run(&config, &publish, Arc::new(Metrics::new())).await;
    assert!(refused.is_err_and(|e| e.to_string().contains("reconcile.store_url")));
}

/// `sslmode=require` verifies the server: the local PostgreSQL's self-signed (snakeoil)
/// certificate, or a server without TLS, is refused rather than used unverified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_requires_tls_is_verified() {
    let mut config = Config::default();
    config.reconcile.store_url = format!("{POSTGRES_URL}?sslmode=require");
    let refused = ChangeStore::open(&config).await.err().expect("an unverifiable server is refused");
    let text = format!("{refused:?}");
    assert!(text.contains("Tls") || text.contains("TLS"), "{text}");
    config.reconcile.store_url = format!("{POSTGRES_URL}?sslmode=disable");
    ChangeStore::open(&config).await.expect("plain TCP when TLS is not required");
}
