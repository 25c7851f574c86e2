//! Reading back from Kafka (librdkafka's mock cluster in these tests): every record of
//! the named topics, or of the topics a `^regex` matches, as [`Received`].

use super::Received;
use futures::StreamExt;
use rdkafka::{
    ClientConfig, Message as _,
    consumer::{BaseConsumer, Consumer, StreamConsumer},
    message::Headers,
};
use std::{collections::BTreeMap, time::Duration};

/// Reads up to `want` messages from the topics `topics` (names, or one `^regex`), from
/// the beginning, waiting at most `wait`.
pub async fn read(bootstrap: &str, topics: &[&str], want: usize, wait: Duration) -> Vec<Received> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("topic.metadata.refresh.interval.ms", "200")
        .create()
        .expect("consumer");
    if topics.iter().any(|t| t.starts_with('^')) {
        consumer.subscribe(topics).expect("subscribe");
    } else {
        // Named topics: assign every partition from the beginning, no group join to wait for.
        let mut tpl = rdkafka::TopicPartitionList::new();
        for topic in topics {
            let metadata =
                consumer.fetch_metadata(Some(topic), Duration::from_secs(5)).expect("metadata of a test topic");
            for t in metadata.topics() {
                for p in t.partitions() {
                    tpl.add_partition_offset(t.name(), p.id(), rdkafka::Offset::Beginning).expect("partition");
                }
            }
        }
        consumer.assign(&tpl).expect("assign");
    }
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut stream = consumer.stream();
    while out.len() < want {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(m))) => {
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for header in h.iter() {
                        let value = header.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
                        headers.insert(header.key.to_string(), value);
                    }
                }
                out.push(Received {
                    destination: m.topic().to_string(),
                    key: m.key().map(<[u8]>::to_vec),
                    body: m.payload().unwrap_or_default().to_vec(),
                    headers,
                    properties: BTreeMap::from([("topic".to_string(), m.topic().to_string())]),
                });
            }
            // Subscribing before a regex's topics exist reports UnknownTopic; keep polling.
            Ok(Some(Err(e))) => eprintln!("kafka reader: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// Reads until `expect` messages arrived (or `wait` passed); if they did, reads the
/// topics again for 2 s and keeps the longer view, so that a message beyond `expect`
/// (a duplicate) is seen too.
pub async fn read_settled(bootstrap: &str, topics: &[&str], expect: usize, wait: Duration) -> Vec<Received> {
    let mut out = read(bootstrap, topics, expect, wait).await;
    if out.len() >= expect {
        // Not an ordering wait: it looks for a duplicate, whose absence no event announces.
        let again = read(bootstrap, topics, usize::MAX, Duration::from_secs(2)).await;
        if again.len() > out.len() {
            out = again;
        }
    }
    out
}

/// How many messages every topic under `prefix` holds (read for `wait`).
pub async fn count_prefix(bootstrap: &str, prefix: &str, wait: Duration) -> usize {
    // Every topic under the prefix, read by assignment (a regex subscription would wait
    // for the mock coordinator's group join and could see nothing in time).
    let lister: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("consumer");
    let metadata = lister.fetch_metadata(None, Duration::from_secs(5)).expect("cluster metadata");
    let topics: Vec<String> =
        metadata.topics().iter().map(|t| t.name().to_string()).filter(|n| n.starts_with(prefix)).collect();
    assert!(!topics.is_empty(), "no topic under {prefix}: nothing can have been counted");
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    read(bootstrap, &names, usize::MAX, wait).await.len()
}
