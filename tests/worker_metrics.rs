//! The worker's metrics across a Kafka rebalance: a replica that loses a partition stops
//! reporting its lag (no stale series for an operator to sum twice), assigned partitions
//! follow the group, and finished events are timed from `pc-received-at`.

mod common;

use common::{
    app::{spawn_worker, worker_config},
    bus::Bus,
    pc::Pc,
    pc_api::PcApi,
    wait,
};
use pcbridge::config::BrokerKind;
use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use std::time::Duration;

fn lag_partitions(metrics: &str) -> Vec<String> {
    metrics.lines().filter(|l| l.starts_with("pcbridge_consumer_lag{")).map(|l| l.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_series_follow_the_assignment() {
    let pc = Pc::new().await;
    let bus = Bus::new(BrokerKind::Kafka).await;
    let api = PcApi::start().await;
    let mut config = worker_config(bus.config(&pc), &api);
    config.worker.events = vec!["subscription-updated".into()];
    // A rebalance in seconds rather than a minute.
    config.kafka.properties.insert("session.timeout.ms".into(), "6000".into());
    config.kafka.properties.insert("heartbeat.interval.ms".into(), "500".into());
    let d = config.broker.destinations();
    let topic = d.raw("subscription-updated");

    // Events on both partitions, so that each has a committed offset and thus a lag.
    let producer: FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", bus.bootstrap()).create().expect("producer");
    let received_at = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap();
    for i in 0..20 {
        let body = format!(
            r#"{{"EventName":"subscription-updated","ResourceUri":"https://api.partnercenter.microsoft.com/v1/customers/c/subscriptions/s-{i}"}}"#
        );
        let key = format!("s-{i}");
        let headers = OwnedHeaders::new()
            .insert(Header { key: "pc-event-name", value: Some("subscription-updated") })
            .insert(Header { key: "pc-received-at", value: Some(received_at.as_str()) });
        producer
            .send(FutureRecord::to(&topic).key(&key).payload(&body).headers(headers), Duration::from_secs(5))
            .await
            .expect("produce");
    }

    let first = spawn_worker(&config).await;
    let first_done = "the first replica finishes the events and reports lag on both partitions";
    wait::until(first_done, Duration::from_secs(40), async || {
        first.events_finished() >= 20 && lag_partitions(&first.metrics.render()).len() == 2
    })
    .await;
    assert_eq!(first.metrics.consumer_assigned_partitions.get(), 2);
    let text = first.metrics.render();
    assert!(
        text.contains("pcbridge_worker_event_age_seconds_count{outcome=\"resource_gone\"} 20"),
        "every finished event is timed from pc-received-at: {text}"
    );

    // A second replica joins: each keeps one partition, and the first stops reporting
    // the one it gave away.
    let second = spawn_worker(&config).await;
    wait::until("the group shares the partitions", Duration::from_secs(60), async || {
        first.metrics.consumer_assigned_partitions.get() == 1 && second.metrics.consumer_assigned_partitions.get() == 1
    })
    .await;
    // Two statistics intervals (5 s each): a stale series would still be there.
    // Not an ordering sleep: the assertion is that a series does not come back, which no event announces.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (a, b) = (lag_partitions(&first.metrics.render()), lag_partitions(&second.metrics.render()));
    assert_eq!(a.len(), 1, "the first replica reports only the partition it kept: {a:?}");
    assert_eq!(b.len(), 1, "the second replica reports the partition it took: {b:?}");
    let partition =
        |line: &str| line.split("partition=\"").nth(1).and_then(|r| r.split('"').next()).map(str::to_string);
    assert_ne!(partition(&a[0]), partition(&b[0]), "each partition is reported once: {a:?} {b:?}");

    second.stop().await.expect("second worker");
    first.stop().await.expect("first worker");
}
