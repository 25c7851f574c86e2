//! Many events in flight at once, yet the events of one resource are enriched and
//! published in the order they arrived.

mod common;

use common::{
    app::{spawn_ingress, spawn_worker, worker_config},
    bus::{Bus, on_both_brokers, output_queues},
    pc::Pc,
    pc_api::{PcApi, Reply},
    wait,
};
use pcbridge::config::BrokerKind;
use serde_json::{Value, json};
use std::{collections::HashMap, time::Duration};

async fn per_resource_order(kind: BrokerKind) {
    let pc = Pc::new().await;
    let bus = Bus::new(kind).await;
    let api = PcApi::start().await;
    let mut config = worker_config(bus.config(&pc), &api);
    config.worker.concurrency = 8;
    let app = spawn_ingress(config.clone()).await;
    let (resources, per_resource) = (6, 12);
    for r in 0..resources {
        let path = format!("/v1/customers/c/subscriptions/s{r}");
        api.put(&path, json!({ "id": r }));
        // Uneven answer times: without per-key ordering, later events would overtake.
        let delays: Vec<Reply> =
            (0..per_resource).map(|i| Reply::Slow(Duration::from_millis(((i * 37 + r * 11) % 60) as u64))).collect();
        api.script(&path, delays);
    }
    for seq in 0..per_resource {
        for r in 0..resources {
            let body = serde_json::to_vec(&json!({
                "EventName": "subscription-updated",
                "ResourceUri": format!("https://api.partnercenter.microsoft.com/v1/customers/c/subscriptions/s{r}"),
                "Seq": seq,
            }))
            .unwrap();
            assert_eq!(app.post(body.clone(), &pc.headers(&body)).await.0, 200);
        }
    }
    let worker = spawn_worker(&config).await;
    let destination = app.destinations().enriched("subscription-updated");
    let total = resources * per_resource;
    let got = bus.read_from(std::slice::from_ref(&destination), total, Duration::from_secs(40)).await;
    assert_eq!(got.len(), total);
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for m in &got {
        let env: Value = serde_json::from_slice(&m.body).unwrap();
        let uri = env["event"]["ResourceUri"].as_str().unwrap().to_string();
        seen.entry(uri).or_default().push(env["event"]["Seq"].as_u64().unwrap());
    }
    for (uri, seqs) in &seen {
        assert_eq!(
            seqs,
            &(0..per_resource as u64).collect::<Vec<_>>(),
            "{uri}: events of one resource keep their order"
        );
    }
    assert!(api.max_concurrent() > 1, "events of different resources are enriched concurrently");
    worker.stop().await.expect("worker stops");
    let cfg = app.config.clone();
    app.stop().await.expect("ingress stops");
    bus.cleanup(&cfg, &output_queues(&cfg)).await;
}

on_both_brokers!(per_resource_order);

/// Two workers in one consumer group share the partitions; the second joins while the
/// first is busy, so the first goes through a revocation with work in flight. Nothing is
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_a_kafka_group_through_a_rebalance() {
    let pc = Pc::new().await;
    let bus = Bus::new(BrokerKind::Kafka).await;
    let api = PcApi::start().await;
    let mut config = worker_config(bus.config(&pc), &api);
    config.worker.concurrency = 2;
    // librdkafka's mock coordinator completes a rebalance only when the session timeout
    // (45 s by default) runs out; a short one keeps the test short.
    config.kafka.properties.insert("session.timeout.ms".into(), "6000".into());
    let app = spawn_ingress(config.clone()).await;
    // ~9 s of work for one worker: the second joins (a group join takes ~3 s) well before.
    api.set_latency(Duration::from_millis(150));
    let n = 120;
    let mut ids = std::collections::HashSet::new();
    for i in 0..n {
        let path = format!("/v1/customers/c{i}");
        api.put(&path, json!({ "id": i }));
        let name = if i % 2 == 0 { "subscription-updated" } else { "referral-created" };
        let body = serde_json::to_vec(&json!({
            "EventName": name,
            "ResourceUri": format!("https://api.partnercenter.microsoft.com{path}"),
        }))
        .unwrap();
        let (status, json) = app.post(body.clone(), &pc.headers(&body)).await;
        assert_eq!(status, 200);
        ids.insert(json["eventId"].as_str().unwrap().to_string());
    }
    let first = spawn_worker(&config).await;
    // Let the first worker get going, then add a second replica.
    wait::until("the first worker finished an event", Duration::from_secs(30), async || first.events_finished() > 0)
        .await;
    let second = spawn_worker(&config).await;
    let outputs = output_queues(&config);
    // A rebalance may redeliver (at least once), so wait for every distinct event id.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (got, seen) = loop {
        let got = bus.read_from(&outputs, usize::MAX, Duration::from_secs(3)).await;
        let seen: std::collections::HashSet<String> = got.iter().map(|m| m.headers["pc-event-id"].clone()).collect();
        if seen.len() >= n || std::time::Instant::now() > deadline {
            break (got, seen);
        }
    };
    assert_eq!(seen.len(), n, "every event enriched");
    assert_eq!(seen, ids);
    let (a, b) = (first.events_finished(), second.events_finished());
    eprintln!("first worker: {a} events, second: {b}, outputs: {} for {n} events", got.len());
    assert!(a > 0 && b > 0, "both replicas got partitions: {a} / {b}");
    let lag = first.metrics.render();
    assert!(lag.contains("pcbridge_consumer_lag{partition="), "consumer lag from librdkafka's statistics:\n{lag}");
    first.stop().await.expect("first stops");
    second.stop().await.expect("second stops");
    app.stop().await.expect("ingress stops");
}
