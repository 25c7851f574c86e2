//! Reading back over AMQP 1.0, as a Service Bus consumer would: the real RabbitMQ's AMQP
//! 1.0 plugin (127.0.0.1:5672, guest/guest), each destination a queue at
//! `/queue/{name}`. Messages come back as [`Received`] with their AMQP 1.0 properties
//! (`message_id`, `group_id`, `content_type`, `durable`) and application properties.

use super::{Received, rabbitmq::RABBITMQ_ADDR};
use fe2o3_amqp::{Connection, Receiver, Session, sasl_profile::SaslProfile};
use fe2o3_amqp_types::{
    messaging::{Body, MessageId, Source, TerminusDurability},
    primitives::{SimpleValue, Value},
};
use std::{
    collections::BTreeMap,
    sync::atomic::Ordering::SeqCst,
    time::{Duration, Instant},
};

/// The address template the tests give pcbridge: RabbitMQ 3.x declares a durable queue
/// for `/queue/{name}` on first use.
pub const ADDRESS: &str = "/queue/{destination}";

/// Takes up to `want` messages from `queue`, waiting at most `wait` (accepted as read;
/// what the link was sent but not read goes back when the link closes).
pub async fn read(queue: &str, want: usize, wait: Duration) -> Vec<Received> {
    read_many(&[queue.to_string()], want, wait).await
}

/// Takes up to `want` messages from `queues` together (a receiver on each, in parallel),
/// until `want` arrived, or `wait` passed and no queue gave a message for 150 ms.
pub async fn read_many(queues: &[String], want: usize, wait: Duration) -> Vec<Received> {
    let mut connection = Connection::builder()
        .container_id(format!("pctest-reader-{}", uuid::Uuid::new_v4()))
        .sasl_profile(SaslProfile::Plain { username: "guest".into(), password: "guest".into() })
        .open(format!("amqp://{RABBITMQ_ADDR}").as_str())
        .await
        .unwrap_or_else(|e| {
            panic!("RabbitMQ's AMQP 1.0 plugin is required at {RABBITMQ_ADDR}: {e}. Start it with `make services`.")
        });
    let deadline = Instant::now() + wait;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Each message is claimed before it is accepted: past `want`, readers stop and what
    // they were sent goes back to its queue when their link closes.
    let remaining = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(want));
    let mut readers = Vec::new();
    for queue in queues {
        // A session each: RabbitMQ ends a session over a refused link.
        let mut session = Session::begin(&mut connection).await.expect("session");
        let address = ADDRESS.replace("{destination}", queue);
        let mut receiver = Receiver::builder()
            .name(format!("pctest-reader-{queue}"))
            .source(Source::builder().address(address.as_str()).durable(TerminusDurability::UnsettledState).build())
            .attach(&mut session)
            .await
            .unwrap_or_else(|e| panic!("attach a receiver to {address}: {e}"));
        let (tx, queue, remaining) = (tx.clone(), queue.clone(), remaining.clone());
        readers.push(tokio::spawn(async move {
            loop {
                // At least one short wait, so a message already on its way is seen.
                let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(150));
                let Ok(received) = tokio::time::timeout(left, receiver.recv::<Body<Value>>()).await else { break };
                let delivery = received.unwrap_or_else(|e| panic!("receive from {address}: {e}"));
                let claimed = remaining.fetch_update(SeqCst, SeqCst, |r| r.checked_sub(1)).is_ok();
                if !claimed {
                    break;
                }
                receiver.accept(&delivery).await.expect("accept");
                tx.send(to_received(&queue, delivery.into_message()))
                    .expect("the caller collects every claimed message");
            }
            // Bounded: RabbitMQ 3.10 can leave a session's end unanswered (fe2o3's session
            // task then spins until the connection closes).
            let _ = tokio::time::timeout(Duration::from_secs(2), receiver.close()).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), session.end()).await;
        }));
    }
    drop(tx);
    let mut out = Vec::new();
    while let Some(r) = rx.recv().await {
        out.push(r);
    }
    for reader in readers {
        reader.await.expect("reader");
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), connection.close()).await;
    out
}

fn to_received(queue: &str, m: fe2o3_amqp_types::messaging::Message<Body<Value>>) -> Received {
    let text = |v: &SimpleValue| match v {
        SimpleValue::String(s) => s.clone(),
        other => format!("{other:?}"),
    };
    let headers: BTreeMap<String, String> = m
        .application_properties
        .as_ref()
        .map(|a| a.iter().map(|(k, v)| (k.clone(), text(v))).collect())
        .unwrap_or_default();
    let mut properties = BTreeMap::new();
    if let Some(p) = &m.properties {
        if let Some(MessageId::String(id)) = &p.message_id {
            properties.insert("message_id".into(), id.clone());
        }
        if let Some(ct) = &p.content_type {
            properties.insert("content_type".into(), ct.0.clone());
        }
        if let Some(g) = &p.group_id {
            properties.insert("group_id".into(), g.clone());
        }
    }
    properties.insert("durable".into(), m.header.as_ref().is_some_and(|h| h.durable).to_string());
    let key = properties.get("group_id").map(|g| g.clone().into_bytes());
    let body = match m.body {
        Body::Data(sections) => sections.into_iter().flat_map(|d| d.0.into_vec()).collect(),
        other => panic!("a pcbridge message has one data section, not {other:?}"),
    };
    Received { destination: queue.to_string(), key, body, headers, properties }
}

/// Takes every message from `queues` until `expect` arrived (or `wait` passed), then
/// once more after 300 ms, so that a message beyond `expect` (a duplicate) is seen too.
pub async fn drain_settled(queues: &[String], expect: usize, wait: Duration) -> Vec<Received> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    loop {
        out.extend(read_many(queues, usize::MAX, Duration::ZERO).await);
        if out.len() >= expect || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Not an ordering wait: it looks for duplicates, whose absence no event announces.
    tokio::time::sleep(Duration::from_millis(300)).await;
    out.extend(read_many(queues, usize::MAX, Duration::ZERO).await);
    out
}
