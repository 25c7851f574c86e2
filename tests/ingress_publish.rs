//! Accepted webhooks reach the broker byte for byte, with the contract's headers.

mod common;

use common::{
    app::spawn_ingress,
    bus::{Bus, Received, on_both_brokers_and_layouts, on_every_broker},
    pc::{Pc, catalogue},
};
use pcbridge::{config::BrokerKind, contract::destinations::Layout};
use sha2::{Digest, Sha256};
use std::time::Duration;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// Every catalogue example goes through the real ingress and is read back unchanged.
async fn catalogue_round_trip(kind: BrokerKind, layout: Layout) {
    let pc = Pc::new().await;
    let bus = Bus::new(kind).await;
    let app = spawn_ingress(bus.config_with_layout(&pc, layout)).await;
    let events = catalogue();
    assert_eq!(events.len(), 24);
    for (i, (name, body)) in events.iter().enumerate() {
        let mut headers = pc.headers(body);
        if i % 2 == 1 {
            // Registrations with SignatureTokenToMsSignatureHeader use x-ms-signature.
            let auth = headers.remove(0).1;
            headers.push(("x-ms-signature", auth));
        }
        let (status, json) = app.post(body.clone(), &headers).await;
        assert_eq!(status, 200, "{name}: {json}");
        assert_eq!(json["eventId"], hex::encode(Sha256::digest(body)), "{name}");
        assert_eq!(json["destination"], app.destinations().raw(name), "{name}");
    }
    let all = bus.read_all(&app.config, &[], events.len(), Duration::from_secs(20)).await;
    assert_eq!(all.len(), events.len(), "exactly one message per accepted event");
    for (name, body) in &events {
        let destination = app.destinations().raw(name);
        let got: Vec<&Received> =
            all.iter().filter(|m| m.destination == destination && m.headers["pc-event-name"] == *name).collect();
        assert_eq!(got.len(), 1, "{destination}: expected exactly one {name} ({layout} layout)");
        check_raw_message(got[0], name, body, &pc, kind);
    }
    let config = app.config.clone();
    app.stop().await.expect("clean stop");
    bus.cleanup(&config, &[]).await;
}

fn check_raw_message(m: &Received, name: &str, body: &[u8], pc: &Pc, kind: BrokerKind) {
    let id = hex::encode(Sha256::digest(body));
    let event: serde_json::Value = serde_json::from_slice(body).expect("json");
    let resource_uri = event["ResourceUri"].as_str().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    assert_eq!(m.body, body, "{name}: body must be byte-identical");
    let h = &m.headers;
    assert_eq!(h["pc-event-id"], id, "{name}");
    assert_eq!(h["pc-event-name"], name);
    // The change key: the audit record when the event names one, else the resource and
    // its change time, else the event id.
    let audit = event["AuditUri"].as_str().and_then(|u| u.rsplit_once("/auditrecords/")).map(|(_, id)| id);
    let change_key = &h["pc-change-key"];
    match (audit, &resource_uri) {
        (Some(record), _) => assert_eq!(change_key, &format!("audit:{record}"), "{name}"),
        (None, Some(resource)) => {
            assert!(change_key.starts_with(&format!("{name}|{resource}|")), "{name}: {change_key}")
        }
        (None, None) => assert_eq!(change_key, &format!("event:{id}"), "{name}"),
    }
    let received = OffsetDateTime::parse(&h["pc-received-at"], &Rfc3339).expect("pc-received-at is RFC 3339");
    assert!((OffsetDateTime::now_utc() - received).whole_seconds().abs() < 120);
    assert!(h["pc-received-at"].ends_with('Z'), "UTC");
    assert!(!h["pc-signature"].is_empty());
    assert_eq!(h["pc-certificate-url"], pc.cert_url);
    assert_eq!(h["pc-signature-algorithm"], "rsa-sha256");
    let tp: Vec<&str> = h["traceparent"].split('-').collect();
    assert_eq!((tp.len(), tp[0], tp[1].len(), tp[2].len()), (4, "00", 32, 16), "traceparent {:?}", h["traceparent"]);
    let ce = match kind {
        BrokerKind::Kafka => Some("ce_"),
        // Left out of raw messages by default (`rabbitmq.raw_cloud_events`): each repeats
        // a header, the body or configuration. `tolerant_parsing_and_trace_context`
        // turns them on; the worker's tests see them derived on enriched messages.
        BrokerKind::Rabbitmq => None,
        BrokerKind::Amqp => Some("cloudEvents:"),
    };
    if let Some(ce) = ce {
        assert_eq!(h[&format!("{ce}specversion")], "1.0");
        assert_eq!(h[&format!("{ce}id")], id);
        assert_eq!(h[&format!("{ce}source")], "https://api.partnercenter.microsoft.com");
        assert_eq!(h[&format!("{ce}type")], format!("com.microsoft.partnercenter.{name}"));
        assert_eq!(h.get(&format!("{ce}subject")), resource_uri.as_ref(), "{name}: subject");
        let time = h.get(&format!("{ce}time")).expect("every catalogue example has a parsable date");
        OffsetDateTime::parse(time, &Rfc3339).expect("ce time is RFC 3339");
    } else {
        assert!(h.keys().all(|k| !k.starts_with("cloudEvents")), "{name}: {h:?}");
    }
    match kind {
        BrokerKind::Kafka => {
            let key = String::from_utf8(m.key.clone().expect("key")).expect("utf-8 key");
            assert_eq!(key, resource_uri.unwrap_or(id), "{name}: key is the ResourceUri, else the event id");
            assert_eq!(h["content-type"], "application/json");
        }
        BrokerKind::Rabbitmq => {
            assert_eq!(m.properties["message_id"], id);
            assert_eq!(m.properties["delivery_mode"], "2", "persistent");
            assert_eq!(m.properties["content_type"], "application/json");
        }
        BrokerKind::Amqp => {
            // Service Bus: MessageId (duplicate detection), SessionId (per-resource order).
            assert_eq!(m.properties["message_id"], id);
            let group = resource_uri.unwrap_or(id);
            assert_eq!(m.properties["group_id"], group, "{name}: group-id is the ResourceUri, else the event id");
            assert_eq!(m.properties["durable"], "true");
            assert_eq!(m.properties["content_type"], "application/json");
        }
    }
}

on_both_brokers_and_layouts!(catalogue_round_trip);

/// Event names outside the catalogue are published too: a safe one to its own
/// destination (created on first use), an unsafe one to `{prefix}unrecognized`.
async fn unknown_event_names(kind: BrokerKind) {
    let pc = Pc::new().await;
    let bus = Bus::new(kind).await;
    let app = spawn_ingress(bus.config(&pc)).await;
    let d = app.destinations();
    let future = "quantum-subscription-entangled";
    let cases = [
        (future.to_string(), d.raw(future)),
        ("has spaces/and slashes".to_string(), d.raw("")),
        ("x".repeat(201), d.raw("")),
        ("ünïcode".to_string(), d.raw("")),
    ];
    assert!(d.raw("").ends_with("unrecognized"));
    for (name, destination) in &cases {
        let body = serde_json::to_vec(&serde_json::json!({ "EventName": name, "ResourceUri": null })).unwrap();
        let (status, json) = app.post(body.clone(), &pc.headers(&body)).await;
        assert_eq!(status, 200, "{json}");
        assert_eq!(&json["destination"], destination);
    }
    let all = bus.read_all(&app.config, &[d.raw(future)], 4, Duration::from_secs(10)).await;
    assert_eq!(all.len(), 4);
    assert_eq!(all.iter().filter(|m| m.destination == d.raw(future)).count(), 1);
    let unrecognized: Vec<&Received> = all.iter().filter(|m| m.destination == d.raw("")).collect();
    assert_eq!(unrecognized.len(), 3);
    // The header keeps the real name even when the destination cannot.
    assert!(unrecognized.iter().any(|m| m.headers["pc-event-name"] == "has spaces/and slashes"));
    let metrics = app.metrics_text().await;
    assert!(metrics.contains("pcbridge_ingress_events_total{event_name=\"unrecognized\"} 3"), "{metrics}");
    assert!(!metrics.contains("xxxxxxxxxx"), "unsafe names never become metric labels");
    let config = app.config.clone();
    app.stop().await.expect("clean stop");
    bus.cleanup(&config, &[d.raw(future)]).await;
}

on_every_broker!(unknown_event_names);

/// A sender's traceparent is continued; loose payloads are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tolerant_parsing_and_trace_context() {
    let pc = Pc::new().await;
    let bus = Bus::new(BrokerKind::Rabbitmq).await;
    let mut config = bus.config(&pc);
    config.rabbitmq.raw_cloud_events = true;
    let app = spawn_ingress(config).await;
    let body = br#"{ "eventName" : "  subscription-updated ", "ResourceUri": "https://api.partnercenter.microsoft.com/v1/customers/c/subscriptions/s",
        "AuditUri": "", "ResourceChangeUtcDate": 12345, "Unexpected": {"nested": [1, 2, 3]}, "IsTest": "true" }"#
        .to_vec();
    let mut headers = pc.headers(&body);
    headers.push(("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()));
    let (status, json) = app.post(body.clone(), &headers).await;
    assert_eq!(status, 200, "{json}");
    let got = bus.read(&app.destinations().raw("subscription-updated"), 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, body);
    assert!(got[0].headers["traceparent"].starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    // `rabbitmq.raw_cloud_events` on: the attributes are written, an unparsable date left
    // out rather than invented.
    assert_eq!(got[0].headers["cloudEvents_type"], "com.microsoft.partnercenter.subscription-updated");
    assert_eq!(
        got[0].headers["cloudEvents_subject"],
        "https://api.partnercenter.microsoft.com/v1/customers/c/subscriptions/s"
    );
    assert!(!got[0].headers.contains_key("cloudEvents_time"), "an unparsable date is left out, not invented");
    let config = app.config.clone();
    app.stop().await.expect("clean stop");
    bus.cleanup(&config, &[]).await;
}

/// On RabbitMQ a raw message is published to the direct raw exchange, where its shard
/// is bound, and reaches the topic exchange through the shard's exchange-to-exchange
/// binding: a queue bound there with a pattern (an audit tap) gets every raw message,
/// while a message published to the topic exchange with a shard's key reaches no shard
/// (the shards are not bound there: matching them is what the raw exchange saves).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_messages_reach_pattern_taps_on_the_topic_exchange() {
    let pc = Pc::new().await;
    let bus = Bus::new(BrokerKind::Rabbitmq).await;
    let Bus::Rabbit(conn) = &bus else { panic!("a RabbitMQ bus") };
    let config = bus.config(&pc);
    // `{prefix}*.*` matches a shard's routing key (`{prefix}{event}.{k}`).
    let tap = format!("{}tap", config.broker.prefix);
    common::bus::rabbitmq::bind_on_topic_exchange(conn, &config, &tap, &[format!("{}*.*", config.broker.prefix)]).await;
    let raw = config.broker.destinations().raw("subscription-updated");
    let app = spawn_ingress(config.clone()).await;
    let body = br#"{"EventName":"subscription-updated","ResourceUri":"https://api.partnercenter.microsoft.com/v1/customers/c/subscriptions/s","ResourceChangeUtcDate":"2026-12-05T04:00:00Z"}"#.to_vec();
    let (status, json) = app.post(body.clone(), &pc.headers(&body)).await;
    assert_eq!(status, 200, "{json}");
    let got = bus.read(&raw, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "the shard holds the message");
    assert_eq!(got[0].body, body);
    // One publish reaches every queue it is routed to before it is confirmed, and the
    // ingress answered 200 after the confirm: the tap holds its copy already.
    let tapped = bus.read(&tap, 2, Duration::from_millis(500)).await;
    assert_eq!(tapped.len(), 1, "the pattern tap gets the raw message, once");
    assert_eq!(tapped[0].body, body);
    assert_eq!(tapped[0].headers["pc-event-name"], "subscription-updated");

    let channel = conn.create_channel().await.expect("channel");
    channel.confirm_select(Default::default()).await.expect("confirms");
    let key = pcbridge::contract::shards::shard_name(&raw, 0);
    let props = lapin::BasicProperties::default().with_delivery_mode(2);
    channel
        .basic_publish(
            config.rabbitmq.exchange.as_str().into(),
            key.as_str().into(),
            Default::default(),
            b"by hand",
            props,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let tapped = bus.read(&tap, 1, Duration::from_secs(5)).await;
    assert_eq!(tapped.len(), 1, "the tap matches the key on the topic exchange");
    assert!(bus.read(&raw, 1, Duration::from_millis(500)).await.is_empty(), "no shard is bound on the topic exchange");
    app.stop().await.expect("clean stop");
    bus.cleanup(&config, &[tap]).await;
}
