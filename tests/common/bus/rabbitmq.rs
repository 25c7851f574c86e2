//! Reading back from the real RabbitMQ (127.0.0.1:5672, guest/guest): taking messages
//! from queues as [`Received`], counting them, and deleting a test's queues and exchange.

use super::Received;
use lapin::{
    Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};
use pcbridge::config::Config;
use pcbridge::contract::shards::{raw_exchange, shard_names};
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

/// A channel for passive declares, replaced when a declare that found nothing closed it.
struct Probe<'c> {
    conn: &'c Connection,
    channel: Option<lapin::Channel>,
}

impl Probe<'_> {
    /// How many messages `queue` holds, or `None` if it does not exist.
    async fn count(&mut self, queue: &str) -> Option<u32> {
        let channel = match &self.channel {
            Some(c) if c.status().connected() => c.clone(),
            _ => {
                let c = self.conn.create_channel().await.expect("channel");
                self.channel = Some(c.clone());
                c
            }
        };
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        channel.queue_declare(queue.into(), passive, FieldTable::default()).await.ok().map(|q| q.message_count())
    }
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.channel.take().filter(|c| c.status().connected()) {
            tokio::spawn(async move { c.close(200, "ok".into()).await });
        }
    }
}

/// The queues of destination `name` that exist, with their message counts: its shards
/// (`{name}.0` … with `rabbitmq.shards` at its default, a raw destination published by
/// `broker.kind = rabbitmq`), else itself; empty when it has no queue. The shards are
/// looked for first so that the usual case costs no refused declare (each closes a
/// channel, and lapin runs out of channel numbers when thousands are closed quickly).
async fn existing(conn: &Connection, name: &str) -> Vec<(String, u32)> {
    let mut probe = Probe { conn, channel: None };
    let output = name.ends_with(".enriched") || name.ends_with("dead-letter");
    if !output && let Some(n) = probe.count(&format!("{name}.0")).await {
        let mut found = vec![(format!("{name}.0"), n)];
        for q in shard_names(name, Config::default().rabbitmq.shards).into_iter().skip(1) {
            let n = probe.count(&q).await.unwrap_or(0);
            found.push((q, n));
        }
        return found;
    }
    probe.count(name).await.map(|n| vec![(name.to_string(), n)]).unwrap_or_default()
}

/// The queues of destination `name`: its shards, or itself.
pub async fn queues_of(conn: &Connection, name: &str) -> Vec<String> {
    let found: Vec<String> = existing(conn, name).await.into_iter().map(|(q, _)| q).collect();
    if found.is_empty() { vec![name.to_string()] } else { found }
}

/// How many messages destination `name` holds (every shard), or `None` if it has no queue.
pub async fn message_count(conn: &Connection, name: &str) -> Option<u32> {
    let found = existing(conn, name).await;
    (!found.is_empty()).then(|| found.iter().map(|(_, n)| n).sum())
}

/// Messages waiting in the named queues (a missing queue counts as empty).
pub async fn count(conn: &Connection, queues: &[String]) -> u32 {
    let mut total = 0;
    for q in queues {
        total += message_count(conn, q).await.unwrap_or(0);
    }
    total
}

/// Takes up to `want` messages from destination `name` (each of its shards in turn),
/// waiting at most `wait`. A message read from a shard names its destination.
pub async fn read(conn: &Connection, name: &str, want: usize, wait: Duration) -> Vec<Received> {
    read_or_peek(conn, name, want, wait, true).await
}

/// [`read`], leaving the messages in place (unacknowledged, then requeued when the
/// channel closes).
pub async fn peek(conn: &Connection, name: &str, want: usize, wait: Duration) -> Vec<Received> {
    read_or_peek(conn, name, want, wait, false).await
}

async fn read_or_peek(conn: &Connection, name: &str, want: usize, wait: Duration, take: bool) -> Vec<Received> {
    let channel = conn.create_channel().await.expect("channel");
    let deadline = Instant::now() + wait;
    let queues = queues_of(conn, name).await;
    let mut out = Vec::new();
    let mut empty_in_a_row = 0;
    let mut turn = 0;
    while out.len() < want {
        let queue = &queues[turn % queues.len()];
        turn += 1;
        match channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: take }).await {
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
                empty_in_a_row = 0;
                out.push(Received {
                    destination: name.to_string(),
                    key: None,
                    body: m.delivery.data.clone(),
                    headers: headers(p.headers().as_ref()),
                    properties,
                });
            }
            Ok(None) => {
                empty_in_a_row += 1;
                if empty_in_a_row < queues.len() {
                    continue;
                }
                empty_in_a_row = 0;
                if Instant::now() >= deadline {
                    break;
                }
                // Every queue empty: poll again until the deadline.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("basic.get {queue}: {e}"),
        }
    }
    if !take {
        let _ = channel.close(200, "peeked".into()).await;
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
    let raw = d.all_raw();
    let shards = raw.iter().flat_map(|q| pcbridge::contract::shards::shard_names(q, config.rabbitmq.shards));
    let mut groups = vec![config.worker.group_id.clone()];
    let mut forwarded = Vec::new();
    for name in config.forward.receivers.keys() {
        groups.push(format!("{}.{name}", config.forward.group_id));
        forwarded.extend(pcbridge::contract::shards::shard_names(&d.forward(name), config.rabbitmq.shards));
        forwarded.push(d.forward_dead_letter(name));
    }
    let members = groups.iter().flat_map(|group| {
        (0..config.rabbitmq.shards).map(move |i| format!("{}{group}.member.{i}", config.broker.prefix))
    });
    for q in raw.iter().chain(extra_queues).cloned().chain(shards).chain(members).chain(forwarded) {
        let _ = channel.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await;
    }
    let raw_exchange = raw_exchange(&config.rabbitmq.exchange);
    for exchange in [config.rabbitmq.exchange.as_str(), raw_exchange.as_str()] {
        let _ = channel.exchange_delete(exchange.into(), ExchangeDeleteOptions::default()).await;
    }
}

/// Declares the durable queue `queue` and binds it on the test's topic exchange with each
/// of `keys` (patterns, as an operator binds an audit queue, or names). The exchange is
/// declared as pcbridge declares it, so the queue may be bound before pcbridge starts.
pub async fn bind_on_topic_exchange(conn: &Connection, config: &Config, queue: &str, keys: &[String]) {
    let exchange = config.rabbitmq.exchange.as_str();
    let ch = conn.create_channel().await.expect("channel");
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare(exchange.into(), ExchangeKind::Topic, durable, FieldTable::default()).await.expect("exchange");
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare(queue.into(), durable, FieldTable::default()).await.expect("queue");
    for key in keys {
        ch.queue_bind(queue.into(), exchange.into(), key.as_str().into(), Default::default(), FieldTable::default())
            .await
            .expect("bind");
    }
    let _ = ch.close(200, "bound".into()).await;
}
