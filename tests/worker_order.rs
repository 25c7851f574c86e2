//! Many events in flight at once, yet the events of one resource are enriched and
//! published in the order they arrived.

mod common;

use common::{
    pc_api::{PcApi, Reply},
    *,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_resource_order_kafka() {
    per_resource_order(BrokerKind::Kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_resource_order_rabbitmq() {
    per_resource_order(BrokerKind::Rabbitmq).await;
}
