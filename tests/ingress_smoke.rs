mod common;
use common::*;
use pcbridge::config::BrokerKind;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_rabbitmq() {
    let pc = Pc::new().await;
    let app = spawn_ingress(config(BrokerKind::Rabbitmq, &pc, "")).await;
    let (name, body) = catalogue().remove(1);
    let (status, json) = app.post(body.clone(), &pc.headers(&body)).await;
    assert_eq!(status, 200, "{json}");
    let conn = rabbit().await;
    let got = rabbit_read(&conn, &app.destinations().raw(&name), 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, body);
    println!("{:?}", got[0]);
    let cfg = app.config.clone();
    app.stop().await.unwrap();
    rabbit_cleanup(&conn, &cfg, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_kafka() {
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let pc = Pc::new().await;
    let app = spawn_ingress(config(BrokerKind::Kafka, &pc, &bootstrap)).await;
    let (name, body) = catalogue().remove(1);
    let (status, json) = app.post(body.clone(), &pc.headers(&body)).await;
    assert_eq!(status, 200, "{json}");
    let topic = app.destinations().raw(&name);
    let got = kafka_read(&bootstrap, &[topic.as_str()], 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, body);
    println!("{:?}", got[0]);
    app.stop().await.unwrap();
}
