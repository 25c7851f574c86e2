//! `pcbridge replay`, the real binary, on both brokers: filters by event name, error
//! kind and time received, `--dry-run` changes nothing, replayed messages are the raw
//! messages again, and on RabbitMQ only the replayed dead letters leave the queue.

mod common;

use bytes::Bytes;
use common::bus::{Bus, on_both_brokers_and_layouts, output_queues};
use pcbridge::broker::{self, CloudEvent, Message};
use pcbridge::config::{BrokerKind, Config};
use pcbridge::contract::destinations::{Layout, cloud_event_type};
use pcbridge::partner_center::event::event_id;
use pcbridge::telemetry::Metrics;
use std::{sync::Arc, time::Duration};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

fn dead_letter(config: &Config, name: &str, kind: &str, received: OffsetDateTime, n: usize) -> Message {
    let body = format!(
        r#"{{"EventName":"{name}","ResourceUri":"https://api.partnercenter.microsoft.com/v1/customers/c/{n}"}}"#
    );
    let id = event_id(body.as_bytes());
    let d = config.broker.destinations();
    let at = received.format(&Rfc3339).expect("time");
    Message {
        destination: d.dead_letter(),
        key: format!("key-{n}"),
        id: id.clone(),
        headers: vec![
            ("pc-event-id".into(), id.clone()),
            ("pc-event-name".into(), name.into()),
            ("pc-received-at".into(), at.clone()),
            ("pc-error-kind".into(), kind.into()),
            ("pc-error".into(), "GET … answered 403 Forbidden".into()),
            ("pc-attempts".into(), "1".into()),
        ],
        cloud_event: CloudEvent {
            id,
            source: "https://api.partnercenter.microsoft.com".into(),
            ty: format!("{}.deadletter", cloud_event_type(name)),
            subject: None,
            time: Some(at),
        },
        content_type: "application/json",
        body: Bytes::from(body),
    }
}

async fn replay(config: &Config, bootstrap: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = common::app::pcbridge_command();
    cmd.arg("replay")
        .args(args)
        .envs(common::app::broker_env(config))
        .env("PCBRIDGE_KAFKA__BOOTSTRAP_SERVERS", bootstrap);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run")).await.expect("join");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "replay failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    eprintln!("replay {args:?}:\n{stdout}{stderr}");
    (out.status.success(), stdout, stderr)
}

async fn replays_what_matches(kind: BrokerKind, layout: Layout) {
    let bus = Bus::new(kind).await;
    let untrusted = std::path::Path::new("");
    let config = common::app::config_trusting(kind, "https://unused.invalid/cert/", untrusted, &bus.bootstrap());
    let config = bus.configured(config, layout);
    let d = config.broker.destinations();
    let publisher = broker::connect(&config, "replay-test", Arc::new(Metrics::new())).await.expect("publisher");
    let mut destinations = d.all_raw();
    destinations.push(d.dead_letter());
    publisher.ensure_destinations(&destinations).await.expect("destinations");

    let now = OffsetDateTime::now_utc();
    let recent = now - time::Duration::minutes(5);
    let old = now - time::Duration::days(3);
    let mut letters = Vec::new();
    for n in 0..3 {
        letters.push(dead_letter(&config, "subscription-updated", "permanent", recent, n));
    }
    for n in 3..5 {
        letters.push(dead_letter(&config, "referral-created", "retries-exhausted", recent, n));
    }
    letters.push(dead_letter(&config, "subscription-updated", "permanent", old, 5));
    for m in &letters {
        publisher.publish(m).await.expect("publish dead letter");
    }
    let bootstrap = bus.bootstrap();
    let dead = d.dead_letter();
    let dead_count = || async { bus.read_count(&dead).await };

    // Dry run: lists the matches, changes nothing.
    let (_, out, _) =
        replay(&config, &bootstrap, &["--dry-run", "--event", "subscription-updated", "--since", "1d"]).await;
    assert_eq!(out.matches("subscription-updated").count(), 3, "{out}");
    assert!(out.contains("examined 6 · matched 3 · would replay 3"), "{out}");
    assert_eq!(dead_count().await, 6, "a dry run removes nothing");
    assert!(bus.read(&d.raw("subscription-updated"), 1, Duration::from_secs(1)).await.is_empty());

    // Replay by event name and time: the three recent ones, as raw messages again.
    let (_, out, _) = replay(&config, &bootstrap, &["--event", "subscription-updated", "--since", "1d"]).await;
    assert!(out.contains("matched 3 · replayed 3"), "{out}");
    let raw = bus.read(&d.raw("subscription-updated"), 10, Duration::from_secs(3)).await;
    assert_eq!(raw.len(), 3, "three replayed");
    for r in &raw {
        assert!(!r.headers.contains_key("pc-error-kind") && !r.headers.contains_key("pc-attempts"));
        assert_eq!(r.headers.get("pc-event-id").map(String::as_str), Some(event_id(&r.body).as_str()));
        let original = letters.iter().find(|m| m.body.as_ref() == r.body.as_slice()).expect("a replayed body");
        assert_eq!(
            r.headers.get("pc-received-at"),
            original.headers.iter().find(|(k, _)| k == "pc-received-at").map(|(_, v)| v)
        );
    }
    // By error kind.
    let (_, out, _) = replay(&config, &bootstrap, &["--kind", "retries-exhausted"]).await;
    assert!(out.contains("replayed 2"), "{out}");
    let raw = bus.read(&d.raw("referral-created"), 10, Duration::from_secs(3)).await;
    let referrals = raw.iter().filter(|r| r.headers["pc-event-name"] == "referral-created").count();
    assert_eq!(referrals, 2, "{layout} layout: {} read from {}", raw.len(), d.raw("referral-created"));

    match kind {
        // Only the old one is left in the queue.
        BrokerKind::Rabbitmq | BrokerKind::Amqp => assert_eq!(dead_count().await, 1),
        // A Kafka topic keeps its records, and replay says so.
        BrokerKind::Kafka => {
            assert!(out.contains("is a Kafka topic, a log"), "{out}");
            assert_eq!(dead_count().await, 6);
        }
    }
    publisher.close(Duration::from_secs(2)).await;
    bus.cleanup(&config, &output_queues(&config)).await;
}

on_both_brokers_and_layouts!(replays_what_matches);
