//! Events published by the real ingress come out of the real worker enriched, on both
//! brokers: resources, audit records, Graph relationships, every page of fraud events.

mod common;

use common::{
    app::{spawn_ingress, spawn_worker, worker_config},
    bus::{Bus, Received, on_both_brokers_and_layouts, output_queues},
    pc::{Pc, catalogue, concrete},
    pc_api::{PcApi, Recorded},
};
use pcbridge::{config::BrokerKind, contract::destinations::Layout};
use serde_json::{Value, json};
use std::{collections::HashMap, time::Duration};

/// The catalogue with concrete ids, as (name, body).
fn events() -> Vec<(String, Vec<u8>)> {
    catalogue()
        .into_iter()
        .map(|(name, body)| {
            let mut v: Value = serde_json::from_slice(&body).expect("json");
            if let Value::Object(map) = &mut v {
                for value in map.values_mut() {
                    if let Value::String(s) = value {
                        *s = concrete(s);
                    }
                }
            }
            (name, serde_json::to_vec_pretty(&v).expect("json"))
        })
        .collect()
}

/// Serves a resource for every event, where the contract says the worker must fetch it.
fn serve_resources(api: &PcApi) {
    let r = |kind: &str| json!({ "kind": kind, "id": "x" });
    api.put("/webhooks/v1/registration/validationEvents/correlationid-1", r("validation-event"));
    api.put("/v1/customers/customerid-1/subscriptions/subscriptionid-1", r("subscription"));
    api.put("/v1/customers/usagerecords", r("usage-records"));
    api.put("/engagements/v1/referrals/referralid-1", r("referral"));
    api.put("/v1.0/tenantRelationships/delegatedAdminRelationships/relationshipid-1", r("gdap-relationship"));
    api.put(
        "/v1.0/tenantRelationships/delegatedAdminRelationships/relationshipid-1/accessAssignments/assignmentid-1",
        r("gdap-access-assignment"),
    );
    api.put("/v1/customers/customer_id-1/migrations/newcommerce/migrationid-1", r("migration"));
    api.put("/v1/customers/customer_id-1/migrations/newcommerce/schedules/scheduleid-1", r("migration-schedule"));
    api.put("/v1/customers/4b2a6e33-8791-4386-bd2b-0d55baf25039", r("customer"));
    api.put(
        "/auditactivity/v1/auditrecords/60d5c4bb-f78a-4200-a002-953d7cc1f5f8_4b2a6e33-8791-4386-bd2b-0d55baf25039_resellerrelationshipacceptedbycustomer_638331855840159088",
        r("audit-record"),
    );
    api.put("/v1/auditrecords/auditid-1", r("audit-record"));
    let fraud: Vec<Value> = (0..230)
        .map(|i| json!({ "eventId": format!("fraud-{i}"), "subscriptionId": "subscriptionid-1", "hitCount": "10", "IsTest": "false",
                          "activityLogs": "[{\"statusFrom\":\"Active\",\"statusTo\":\"Investigating\"}]" }))
        .collect();
    api.put_fraud("subscriptionid-1", fraud);
}

async fn end_to_end(kind: BrokerKind, layout: Layout) {
    end_to_end_with(kind, layout, |_| {}).await;
}

/// AMQP 1.0 with `amqp.sessions`: the worker reads each source through several links
/// that lock a Service Bus session each, let it go when idle and lock the next.
/// RabbitMQ has no sessions (it ignores the session filter), so this proves the links'
/// cycle — attach, read, idle, detach, attach again — loses and repeats nothing; the
/// per-session lock itself is Service Bus's (docs/azure.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_amqp_session_links() {
    end_to_end_with(BrokerKind::Amqp, Layout::Single, |c| {
        c.amqp.sessions = true;
        c.amqp.session_links = 3;
        c.amqp.session_idle_ms = 50;
    })
    .await;
}

async fn end_to_end_with(kind: BrokerKind, layout: Layout, tweak: impl FnOnce(&mut pcbridge::config::Config)) {
    let pc = Pc::new().await;
    let bus = Bus::new(kind).await;
    let api = PcApi::start().await;
    serve_resources(&api);
    let mut config = worker_config(bus.config_with_layout(&pc, layout), &api);
    tweak(&mut config);
    let destinations = config.broker.destinations();
    let app = spawn_ingress(config.clone()).await;
    let worker = spawn_worker(&config).await;
    let events = events();
    for (name, body) in &events {
        let (status, json) = app.post(body.clone(), &pc.headers(body)).await;
        assert_eq!(status, 200, "{name}: {json}");
    }
    let outputs = output_queues(&config);
    let got = bus.read_from(&outputs, events.len(), Duration::from_secs(30)).await;
    let enriched: HashMap<String, &Received> = got
        .iter()
        .filter(|m| m.destination.ends_with(".enriched"))
        .map(|m| (m.headers["pc-event-name"].clone(), m))
        .collect();
    let dead: Vec<&Received> = got.iter().filter(|m| m.destination.ends_with("dead-letter")).collect();
    assert!(dead.is_empty(), "no dead letters expected: {:?}", dead.iter().map(|m| &m.headers).collect::<Vec<_>>());
    assert_eq!(enriched.len(), 24, "one enriched message per catalogue event (got {})", got.len());
    for (name, body) in &events {
        let m = enriched[name];
        assert_eq!(m.destination, destinations.enriched(name), "{name} in the {layout} layout");
        let env: Value = serde_json::from_slice(&m.body).expect("envelope is JSON");
        let raw: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(env["eventId"], m.headers["pc-event-id"], "{name}");
        assert_eq!(env["eventName"], name.as_str());
        assert_eq!(env["event"], raw, "{name}: the webhook as received");
        assert!(env["receivedAt"].as_str().is_some_and(|s| !s.is_empty()) && env["enrichedAt"].is_string());
        let status = env["enrichment"]["status"].as_str().unwrap_or_default();
        if name.starts_with("dap-") {
            assert_eq!(status, "not-applicable", "{name}");
            assert_eq!(env["resource"], Value::Null);
        } else if name == "azure-fraud-event-detected" {
            assert_eq!(status, "enriched");
            let fraud = env["fraudEvents"].as_array().expect("fraudEvents");
            assert_eq!(fraud.len(), 230, "every page");
            assert_eq!(fraud[0]["hitCount"], json!(10), "numbers typed");
            assert_eq!(fraud[0]["isTest"], json!(false), "booleans typed");
            assert_eq!(fraud[0]["activityLogs"][0]["statusTo"], "Investigating", "activityLogs decoded");
            assert_eq!(env["resource"]["kind"], "subscription", "the subscription its ResourceUri names: {env}");
        } else {
            assert_eq!(status, "enriched", "{name}: {env}");
            assert!(env["resource"]["kind"].is_string(), "{name}: resource fetched: {env}");
            assert!(env.get("fraudEvents").is_none(), "{name}");
        }
        let expected_kind = match name.as_str() {
            "test-created" => Some("validation-event"),
            n if n.starts_with("granular-admin-relationship") => Some("gdap-relationship"),
            n if n.starts_with("granular-admin-access-assignment") => Some("gdap-access-assignment"),
            n if n.starts_with("referral") || n.starts_with("related-referral") => Some("referral"),
            "new-commerce-migration-schedule-failed" => Some("migration-schedule"),
            n if n.starts_with("new-commerce-migration") => Some("migration"),
            _ => None,
        };
        if let Some(kind) = expected_kind {
            assert_eq!(env["resource"]["kind"], kind, "{name}");
        }
        let audit_expected = name == "reseller-relationship-accepted-by-customer" || name == "subscription-updated";
        assert_eq!(env["audit"]["kind"] == "audit-record", audit_expected, "{name}: audit {}", env["audit"]);
        // Same headers as the raw message, CloudEvents type suffixed.
        assert_eq!(m.headers["pc-event-name"], name.as_str());
        assert!(m.headers.contains_key("pc-signature") && m.headers.contains_key("traceparent"));
        assert!(m.headers.get("pc-change-key").is_some_and(|k| !k.is_empty()), "{name}: the change key is kept");
        let ce = match kind {
            BrokerKind::Kafka => "ce_",
            BrokerKind::Rabbitmq => "cloudEvents_",
            BrokerKind::Amqp => "cloudEvents:",
        };
        assert_eq!(m.headers[&format!("{ce}type")], format!("com.microsoft.partnercenter.{name}.enriched"));
        // Whole, on RabbitMQ too, where the raw message carried none (derived from it).
        assert_eq!(m.headers[&format!("{ce}id")], m.headers["pc-event-id"], "{name}");
        assert_eq!(m.headers[&format!("{ce}source")], config.partner_center.base_url, "{name}");
        assert_eq!(
            m.headers.get(&format!("{ce}subject")).map(String::as_str),
            raw["ResourceUri"].as_str().map(str::trim).filter(|u| !u.is_empty()),
            "{name}"
        );
        assert!(m.headers.contains_key(&format!("{ce}time")), "{name}: every catalogue example has a parsable date");
    }
    // What the APIs saw.
    let requests = api.requests();
    assert!(
        requests.iter().all(|r| r.status == 200),
        "{:?}",
        requests.iter().filter(|r| r.status != 200).collect::<Vec<_>>()
    );
    let fraud_pages: Vec<&Recorded> = requests.iter().filter(|r| r.path == "/v1/fraudEvents").collect();
    assert_eq!(fraud_pages.len(), 3, "230 events at 100 a page: pages 1, 2 and 3 (short)");
    for (i, r) in fraud_pages.iter().enumerate() {
        assert!(r.query.contains("SubscriptionId=subscriptionid-1") && r.query.contains("PageSize=100"), "{}", r.query);
        assert!(r.query.contains(&format!("PageNumber={}", i + 1)), "{}", r.query);
        assert_eq!(r.headers.get("x-neweventsmodel").map(String::as_str), Some("true"));
    }
    let mut correlation: Vec<&String> = requests.iter().map(|r| &r.headers["ms-correlationid"]).collect();
    correlation.sort();
    correlation.dedup();
    assert_eq!(correlation.len(), requests.len(), "a new MS-CorrelationId per call");
    let tokens = api.token_requests();
    assert!(tokens.len() <= 6, "tokens are cached, not fetched per call: {tokens:?}");
    assert!(tokens.iter().any(|(g, _)| g == "refresh_token"), "the fraud API uses App+User");
    let metrics = worker.metrics.render();
    assert!(
        metrics.contains("pcbridge_worker_events_total{event_name=\"subscription-updated\",outcome=\"enriched\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pcbridge_api_request_duration_seconds_count{api=\"graph\",status=\"200\"} 8"),
        "{metrics}"
    );

    worker.stop().await.expect("worker stops cleanly");
    let cfg = app.config.clone();
    app.stop().await.expect("ingress stops cleanly");
    bus.cleanup(&cfg, &outputs).await;
}

on_both_brokers_and_layouts!(end_to_end);
