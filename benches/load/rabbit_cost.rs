//! `rabbitmq-cost`: where RabbitMQ's time goes per message (issue 19). The same
//! realistic raw message is published, persistent with publisher confirms and many in
//! flight (as the ingress publishes), in variants that differ in one thing each — the
//! exchange (topic, direct, default), `mandatory`, the properties, the headers — and
//! RabbitMQ's own CPU (`beam.smp`) is divided by the messages. No HTTP, no signature:
//! only the broker's share of a publish.

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
use std::time::Instant;

/// Messages per variant, and in flight at once.
const MESSAGES: usize = 20_000;
const IN_FLIGHT: usize = 256;

/// What one variant publishes.
struct Variant {
    name: &'static str,
    /// Which exchange routes it.
    via: Via,
    mandatory: bool,
    /// Which of the ingress's headers go along.
    headers: Headers,
    /// message_id, as the ingress sets it (beside delivery mode and content type).
    properties: bool,
}

/// The exchange a variant publishes through; the queue's name is the routing key.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// The run's topic exchange, as the contract routes.
    Topic,
    /// A direct exchange with the same bindings: exact keys only, no patterns.
    Direct,
    /// The default exchange, straight to the queue.
    Default,
}

#[derive(Clone, Copy, PartialEq)]
enum Headers {
    None,
    /// Every header of a raw message with `rabbitmq.raw_cloud_events` (`pc-*`, `traceparent`, `cloudEvents_*`).
    All,
    /// Without the values another header or property already carries: `pc-event-id`
    /// (= `cloudEvents_id` = message_id) and `cloudEvents_type` (= the `type` property).
    Deduplicated,
    /// Only the `pc-*` headers and `traceparent`: the ingress's raw message (no CloudEvents binding).
    PcOnly,
    /// The same bytes as `All`, in one header: what the headers' number costs.
    OneHeader,
    /// As many headers as `All`, each a one-byte value: what their bytes cost.
    ManyTiny,
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
    let direct = format!("{exchange}-direct");
    for (name, kind) in [(&exchange, ExchangeKind::Topic), (&direct, ExchangeKind::Direct)] {
        channel
            .exchange_declare(
                name.as_str().into(),
                kind,
                ExchangeDeclareOptions { durable: true, auto_delete: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .expect("exchange");
    }
    // The same durable queue in RabbitMQ's two classic formats: the first (the default
    // before RabbitMQ 3.13) and the second (`x-queue-version: 2`, the default since).
    let mut queues = Vec::new();
    for version in [1, 2] {
        let queue = format!("{exchange}.subscription-updated.v{version}");
        let mut args = FieldTable::default();
        args.insert("x-queue-version".into(), AMQPValue::LongInt(version));
        channel
            .queue_declare(queue.as_str().into(), QueueDeclareOptions { durable: true, ..Default::default() }, args)
            .await
            .expect("queue");
        for source in [&exchange, &direct] {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    source.as_str().into(),
                    queue.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bind");
        }
        queues.push(queue);
    }

    let message = sample_message();
    let variants = [
        Variant {
            name: "bare body (the minimal pipeline's)",
            via: Via::Topic,
            mandatory: true,
            headers: Headers::None,
            properties: false,
        },
        Variant {
            name: "bare, default exchange",
            via: Via::Default,
            mandatory: true,
            headers: Headers::None,
            properties: false,
        },
        Variant {
            name: "bare, direct exchange",
            via: Via::Direct,
            mandatory: true,
            headers: Headers::None,
            properties: false,
        },
        Variant {
            name: "bare, not mandatory",
            via: Via::Topic,
            mandatory: false,
            headers: Headers::None,
            properties: false,
        },
        Variant {
            name: "bare + message_id",
            via: Via::Topic,
            mandatory: true,
            headers: Headers::None,
            properties: true,
        },
        Variant {
            name: "pc-* headers only (the ingress's message)",
            via: Via::Topic,
            mandatory: true,
            headers: Headers::PcOnly,
            properties: true,
        },
        Variant {
            name: "the ingress's message, direct exchange",
            via: Via::Direct,
            mandatory: true,
            headers: Headers::PcOnly,
            properties: true,
        },
        Variant {
            name: "the ingress's message, default exchange",
            via: Via::Default,
            mandatory: true,
            headers: Headers::PcOnly,
            properties: true,
        },
        Variant {
            name: "all headers, deduplicated",
            via: Via::Topic,
            mandatory: true,
            headers: Headers::Deduplicated,
            properties: true,
        },
        Variant {
            name: "the same header bytes in one header",
            via: Via::Topic,
            mandatory: true,
            headers: Headers::OneHeader,
            properties: true,
        },
        Variant {
            name: "as many headers, one byte each",
            via: Via::Topic,
            mandatory: true,
            headers: Headers::ManyTiny,
            properties: true,
        },
        Variant {
            name: "pc-* and cloudEvents_* (raw_cloud_events = true)",
            via: Via::Topic,
            mandatory: true,
            headers: Headers::All,
            properties: true,
        },
    ];
    println!(
        "{MESSAGES} persistent messages per variant, {IN_FLIGHT} in flight, publisher confirms, one durable queue; \
         best of three per queue format, the two formats alternating.\n"
    );
    println!(
        "| variant | headers | header bytes | classic v1: events/s | v1: RabbitMQ µs/message | v1: vs bare | classic v2: events/s | v2: RabbitMQ µs/message | v2: vs bare |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut bare_cost = [None, None];
    for v in &variants {
        let (headers, bytes) = header_table(&message, v.headers);
        let count = headers.inner().len();
        let props = properties(&message, v.properties, headers);
        // Best of three: the first run warms the queue's files.
        let mut best: [Option<(f64, f64)>; 2] = [None, None];
        for _ in 0..3 {
            for (i, queue) in queues.iter().enumerate() {
                let exchange = match v.via {
                    Via::Topic => exchange.as_str(),
                    Via::Direct => direct.as_str(),
                    Via::Default => "",
                };
                let cpu0 = cpu_seconds(beam);
                let started = Instant::now();
                publish_all(&channel, exchange, queue, v.mandatory, &message.body, &props).await;
                let secs = started.elapsed().as_secs_f64();
                let cost = (cpu_seconds(beam) - cpu0) / MESSAGES as f64 * 1e6;
                let rate = MESSAGES as f64 / secs;
                if best[i].is_none_or(|(c, _)| cost < c) {
                    best[i] = Some((cost, rate));
                }
                channel.queue_purge(queue.as_str().into(), Default::default()).await.expect("purge");
            }
        }
        let mut cells = Vec::new();
        for (i, b) in best.iter().enumerate() {
            let (cost, rate) = b.unwrap_or_default();
            let base = *bare_cost[i].get_or_insert(cost);
            cells.push(format!("{rate:.0} | {cost:.0} | {:.2}×", cost / base));
        }
        println!("| {} | {count} | {bytes} | {} |", v.name, cells.join(" | "));
    }
    for queue in &queues {
        let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    }
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
        Headers::OneHeader => {
            let joined: String = m
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .chain(cloud_event.iter().copied())
                .map(|(k, v)| format!("{k}{v}"))
                .collect();
            let key = "pc-all";
            put(key, &joined[key.len()..]);
        }
        Headers::ManyTiny => {
            m.headers.iter().for_each(|(k, _)| put(k, "x"));
            cloud_event.iter().for_each(|(k, _)| put(k, "x"));
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
    props.with_message_id(m.id.as_str().into())
}
