//! Reading back from the real RabbitMQ (127.0.0.1:5672, guest/guest): taking messages
//! from queues as [`Received`], counting them, and deleting a test's queues and exchange.

use super::Received;
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicGetOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable},
};
use pcbridge::config::Config;
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

pub const RABBITMQ_ADDR: &str = "127.0.0.1:5672";

/// A connection to the test RabbitMQ; fails the test, saying how to start one, if there is none.
pub async fn connect() -> Connection {
    Connection::connect(&format!("amqp://guest:guest@{RABBITMQ_ADDR}/%2f"), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!("RabbitMQ is required and is not reachable at {RABBITMQ_ADDR}: {e}. Start it with `make services`.")
        })
}

/// How many messages `queue` holds, or `None` if it does not exist.
pub async fn message_count(conn: &Connection, queue: &str) -> Option<u32> {
    let channel = conn.create_channel().await.expect("channel");
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let declared = channel.queue_declare(queue.into(), passive, FieldTable::default()).await;
    let _ = channel.close(200, "ok".into()).await;
    declared.ok().map(|q| q.message_count())
}

/// Messages waiting in the named queues (a missing queue counts as empty).
pub async fn count(conn: &Connection, queues: &[String]) -> u32 {
    let mut total = 0;
    for q in queues {
        total += message_count(conn, q).await.unwrap_or(0);
    }
    total
}

/// Takes up to `want` messages from `queue`, waiting at most `wait`.
pub async fn read(conn: &Connection, queue: &str, want: usize, wait: Duration) -> Vec<Received> {
    let channel = conn.create_channel().await.expect("channel");
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    while out.len() < want {
        match channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await {
            Ok(Some(m)) => {
                let p = &m.delivery.properties;
                let mut properties = BTreeMap::new();
                if let Some(id) = p.message_id() {
                    properties.insert("message_id".into(), id.to_string());
                }
                if let Some(ct) = p.content_type() {
                    properties.insert("content_type".into(), ct.to_string());
                }
                if let Some(dm) = p.delivery_mode() {
                    properties.insert("delivery_mode".into(), dm.to_string());
                }
                properties.insert("routing_key".into(), m.delivery.routing_key.to_string());
                out.push(Received {
                    destination: m.delivery.routing_key.to_string(),
                    key: None,
                    body: m.delivery.data.clone(),
                    headers: headers(p.headers().as_ref()),
                    properties,
                });
            }
            Ok(None) if Instant::now() >= deadline => break,
            // An empty queue: poll again until the deadline.
            Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("basic.get {queue}: {e}"),
        }
    }
    out
}

/// The AMQP headers of a message, as text.
pub fn headers(table: Option<&FieldTable>) -> BTreeMap<String, String> {
    table.map(|t| t.inner().iter().map(|(k, v)| (k.to_string(), amqp_text(v))).collect()).unwrap_or_default()
}

fn amqp_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        other => format!("{other:?}"),
    }
}

/// Takes every message now in `queue` (none if it does not exist).
pub async fn drain(conn: &Connection, queue: &str) -> Vec<Received> {
    if message_count(conn, queue).await.is_none() {
        return Vec::new();
    }
    read(conn, queue, usize::MAX, Duration::ZERO).await
}

/// Takes every message from `queues` until `expect` arrived (or `wait` passed), then
/// once more after 300 ms, so that a message beyond `expect` (a duplicate) is seen too.
pub async fn drain_settled(conn: &Connection, queues: &[String], expect: usize, wait: Duration) -> Vec<Received> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    loop {
        for q in queues {
            out.extend(drain(conn, q).await);
        }
        if out.len() >= expect || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Not an ordering wait: it looks for duplicates, whose absence no event announces.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for q in queues {
        out.extend(drain(conn, q).await);
    }
    out
}

/// Deletes a test's queues (its raw destinations and `extra_queues`) and exchange.
pub async fn cleanup(conn: &Connection, config: &Config, extra_queues: &[String]) {
    let channel = conn.create_channel().await.expect("channel");
    let d = config.broker.destinations();
    for q in d.all_raw().iter().chain(extra_queues) {
        let _ = channel.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await;
    }
    let _ = channel.exchange_delete(config.rabbitmq.exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
}
