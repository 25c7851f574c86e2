//! `rabbitmq-cost`: where RabbitMQ's time goes per message (issue 19). The same
//! realistic raw message is published, persistent with publisher confirms and many in
//! flight (as the ingress publishes), in variants that differ in one thing each — the
//! exchange, `mandatory`, the properties, the headers — and RabbitMQ's own CPU
//! (`beam.smp`) is divided by the messages. No HTTP, no signature: only the broker's
//! share of a publish.

use super::procstat::{cpu_seconds, find_pid};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use pcbridge::contract::{
    cloud_event::AMQP,
    destinations::Destinations,
    raw::{self, Origin, Raw},
};
use pcbridge::partner_center::event::{Event, event_id};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Messages per variant, and in flight at once.
const MESSAGES: usize = 20_000;
const IN_FLIGHT: usize = 256;

/// What one variant publishes.
struct Variant {
    name: &'static str,
    /// Through the topic exchange (else the default exchange, straight to the queue).
    topic: bool,
    mandatory: bool,
    /// Which of the ingress's headers go along.
    headers: Headers,
    /// message_id, type, app_id, timestamp as the ingress sets them.
    properties: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Headers {
    None,
    /// Every header of the ingress's raw message (`pc-*`, `traceparent`, `cloudEvents_*`).
    All,
    /// Without the values another header or property already carries: `pc-event-id`
    /// (= `cloudEvents_id` = message_id) and `cloudEvents_type` (= the `type` property).
    Deduplicated,
    /// Only the `pc-*` headers (no CloudEvents binding).
    PcOnly,
}

pub async fn run() {
    let url = std::env::var("PCBRIDGE_BENCH_RABBITMQ_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into());
    let Some(beam) = find_pid("beam.smp") else {
        eprintln!("rabbitmq-cost: no beam.smp process on this machine: is RabbitMQ running here?");
        return;
    };
    let connection = Connection::connect(&url, ConnectionProperties::default()).await.expect("RabbitMQ");
    let channel = connection.create_channel().await.expect("channel");
    channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let exchange = format!("pcbench-cost-{}", std::process::id());
    let queue = format!("{exchange}.subscription-updated");
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .expect("exchange");
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .expect("queue");
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            queue.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");

    let message = sample_message();
    let variants = [
        Variant {
            name: "bare body (the minimal pipeline's)",
            topic: true,
            mandatory: true,
            headers: Headers::None,
            properties: false,
        },
        Variant {
            name: "bare, default exchange",
            topic: false,
            mandatory: true,
            headers: Headers::None,
            properties: false,
        },
        Variant {
            name: "bare, not mandatory",
            topic: true,
            mandatory: false,
            headers: Headers::None,
            properties: false,
        },
        Variant {
            name: "bare + ingress properties",
            topic: true,
            mandatory: true,
            headers: Headers::None,
            properties: true,
        },
        Variant { name: "pc-* headers only", topic: true, mandatory: true, headers: Headers::PcOnly, properties: true },
        Variant {
            name: "all headers, deduplicated",
            topic: true,
            mandatory: true,
            headers: Headers::Deduplicated,
            properties: true,
        },
        Variant {
            name: "the ingress's message",
            topic: true,
            mandatory: true,
            headers: Headers::All,
            properties: true,
        },
    ];
    println!(
        "{MESSAGES} persistent messages per variant, {IN_FLIGHT} in flight, publisher confirms, one durable queue.\n"
    );
    println!("| variant | headers | header bytes | events/s | RabbitMQ µs/message | vs bare |");
    println!("|---|---|---|---|---|---|");
    let mut bare_cost = None;
    for v in &variants {
        let (headers, bytes) = header_table(&message, v.headers);
        let count = headers.inner().len();
        let props = properties(&message, v.properties, headers);
        let (exchange, key) = if v.topic { (exchange.as_str(), queue.as_str()) } else { ("", queue.as_str()) };
        // Best of two: the first run warms the queue's segment files.
        let mut best: Option<(f64, f64)> = None;
        for _ in 0..2 {
            let cpu0 = cpu_seconds(beam);
            let started = Instant::now();
            publish_all(&channel, exchange, key, v.mandatory, &message.body, &props).await;
            let secs = started.elapsed().as_secs_f64();
            let cost = (cpu_seconds(beam) - cpu0) / MESSAGES as f64 * 1e6;
            let rate = MESSAGES as f64 / secs;
            if best.is_none_or(|(c, _)| cost < c) {
                best = Some((cost, rate));
            }
            channel.queue_purge(queue.as_str().into(), Default::default()).await.expect("purge");
        }
        let (cost, rate) = best.unwrap_or_default();
        let base = *bare_cost.get_or_insert(cost);
        println!("| {} | {count} | {bytes} | {rate:.0} | {cost:.0} | {:.2}× |", v.name, cost / base);
    }
    let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    let _ = connection.close(200, "done".into()).await;
}

async fn publish_all(
    channel: &Channel,
    exchange: &str,
    key: &str,
    mandatory: bool,
    body: &[u8],
    props: &BasicProperties,
) {
    let mut pending = std::collections::VecDeque::with_capacity(IN_FLIGHT);
    for _ in 0..MESSAGES {
        if pending.len() >= IN_FLIGHT
            && let Some(confirm) = pending.pop_front()
        {
            let _ = confirm.await;
        }
        let options = BasicPublishOptions { mandatory, ..Default::default() };
        let confirm =
            channel.basic_publish(exchange.into(), key.into(), options, body, props.clone()).await.expect("publish");
        pending.push_back(confirm);
    }
    for confirm in pending {
        let _ = confirm.await;
    }
}

/// A subscription-updated webhook's raw message, as the ingress builds it.
fn sample_message() -> pcbridge::broker::Message {
    let body = br#"{"EventName":"subscription-updated","ResourceUri":"https://api.partnercenter.microsoft.com/webhooks/v1/customers/4b2a6e33-8791-4386-bd2b-0d55baf25039/subscriptions/2a3f8d2c-0e2f-4d1a-9a3e-6f4b7c8d9e0f","ResourceName":"subscription","AuditUri":"https://api.partnercenter.microsoft.com/v1/auditrecords/a8f2d7c4-1b3e-4f5a-9c6d-7e8f9a0b1c2d","ResourceChangeUtcDate":"2026-12-04T10:15:30.1234567+00:00"}"#;
    let event = Event::parse(body).expect("a webhook");
    let signature = format!("Signature {}", "A".repeat(344));
    let raw = Raw {
        event: &event,
        event_id: event_id(body),
        body: bytes::Bytes::from_static(body),
        change_key: None,
        origin: Origin::Webhook {
            signature: &signature,
            certificate_url: "https://3psostorageacct.blob.core.windows.net/cert/pcnotifications-dispatch.microsoft.com.cer",
            algorithm: "rsa-sha256",
        },
        received_at: "2026-12-04T10:15:31.052Z".into(),
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    };
    raw::message(raw, &Destinations::new("pcbench."), "https://api.partnercenter.microsoft.com")
}

/// The variant's headers (as the publisher writes them) and their bytes (names + values).
fn header_table(m: &pcbridge::broker::Message, which: Headers) -> (FieldTable, usize) {
    let mut table = FieldTable::default();
    let mut bytes = 0;
    let mut put = |k: &str, v: &str| {
        bytes += k.len() + v.len();
        table.insert(ShortString::from(k), AMQPValue::LongString(LongString::from(v)));
    };
    let cloud_event: Vec<(&str, &str)> = m.cloud_event.headers(&AMQP).collect();
    match which {
        Headers::None => {}
        Headers::PcOnly => m.headers.iter().for_each(|(k, v)| put(k, v)),
        Headers::All => {
            m.headers.iter().for_each(|(k, v)| put(k, v));
            cloud_event.iter().for_each(|(k, v)| put(k, v));
        }
        Headers::Deduplicated => {
            m.headers.iter().filter(|(k, _)| k != "pc-event-id").for_each(|(k, v)| put(k, v));
            cloud_event.iter().filter(|(k, _)| *k != "cloudEvents_type").for_each(|(k, v)| put(k, v));
        }
    }
    (table, bytes)
}

fn properties(m: &pcbridge::broker::Message, full: bool, headers: FieldTable) -> BasicProperties {
    let props = BasicProperties::default().with_delivery_mode(2).with_content_type("application/json".into());
    let props = if headers.inner().is_empty() { props } else { props.with_headers(headers) };
    if !full {
        return props;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    props
        .with_message_id(m.id.as_str().into())
        .with_type(m.cloud_event.ty.as_str().into())
        .with_app_id("pcbridge".into())
        .with_timestamp(now)
}
