//! Kafka consumption: a consumer group (replicas share the partitions), polled on a
//! thread of its own and handed to the async side through a bounded channel.
//!
//! Offsets are committed only for finished work: `enable.auto.offset.store` is off,
//! [`Consumer::ack`] stores an offset only once every earlier offset of its partition is
//! done ([`OffsetTracker`]), and librdkafka's auto-commit writes what was stored. On a
//! revocation the poll thread waits (up to the drain deadline) for the revoked
//! partitions' in-flight work before letting them go; on close it commits synchronously.
//!
//! [`KafkaBacklog`] reads a topic's records once, by assignment, for `pcbridge replay`.

use super::config::{client_config, client_error};
use super::offsets::OffsetTracker;
use super::sign_in::{SignIn, SignInContext};
use crate::broker::{AckInner, AckToken, Consumer, Delivery, SetupError};
use crate::config::Config;
use crate::contract::cloud_event::{self, CloudEvent};
use crate::telemetry::Metrics;
use bytes::Bytes;
use rdkafka::{
    ClientContext, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::Headers,
    statistics::Statistics,
};
use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::sync::{Mutex, mpsc};

/// Rebalance and statistics callbacks (run on the poll thread).
pub(crate) struct GroupContext {
    tracker: Arc<OffsetTracker>,
    /// How long a revocation waits for the revoked partitions' in-flight work.
    drain: Duration,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    /// This member's partitions, as of the last rebalance. librdkafka's statistics keep
    /// reporting a partition's lag after it was revoked (from its last known offsets), so
    /// lag is exported only for these: another replica reports the rest.
    assigned: std::sync::Mutex<HashSet<(String, i32)>>,
    sign_in: SignIn,
}

impl ClientContext for GroupContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(&self, _: Option<&str>) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        self.sign_in.token()
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_error(&self.ready, error, reason, "consumer");
    }

    fn stats(&self, statistics: Statistics) {
        let assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 {
                    continue;
                }
                let labels = [topic.as_str(), &partition.to_string()];
                if assigned.contains(&(topic.clone(), *partition)) && p.consumer_lag >= 0 {
                    self.metrics.consumer_lag.with_label_values(&labels).set(p.consumer_lag);
                } else {
                    let _ = self.metrics.consumer_lag.remove_label_values(&labels);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions: Vec<(String, i32)> =
                list.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
            let idle = self.tracker.wait_idle(&partitions, self.drain);
            if !idle {
                tracing::warn!(
                    count = partitions.len(),
                    "revoked partitions still had work in flight; it will be redelivered"
                );
            }
            self.tracker.forget(&partitions);
            for (topic, partition) in &partitions {
                // Another replica reports this partition's lag from now on.
                let _ = self.metrics.consumer_lag.remove_label_values(&[topic, &partition.to_string()]);
            }
            tracing::info!(count = partitions.len(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            tracing::info!(count = list.count(), "partitions assigned");
        }
        if let Ok(assignment) = consumer.assignment() {
            self.metrics.consumer_assigned_partitions.set(assignment.count() as i64);
            let mut assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
            *assigned = assignment.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        }
    }
}

/// The Kafka side of [`Consumer`].
pub(crate) struct KafkaConsumer {
    consumer: Arc<BaseConsumer<GroupContext>>,
    tracker: Arc<OffsetTracker>,
    deliveries: Mutex<mpsc::Receiver<Delivery>>,
    /// Tells the poll thread to stop.
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicBool>,
}

impl KafkaConsumer {
    /// Joins `worker.group_id` and subscribes to `topics`; polling starts at once.
    pub fn start(
        config: &Config,
        topics: Vec<String>,
        client_name: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SetupError> {
        let tracker = Arc::new(OffsetTracker::default());
        let ready = Arc::new(AtomicBool::new(false));
        let defaults = [
            ("group.id", config.worker.group_id.clone()),
            ("enable.auto.commit", "true".to_string()),
            ("auto.commit.interval.ms", "1000".to_string()),
            ("auto.offset.reset", "earliest".to_string()),
            ("statistics.interval.ms", "5000".to_string()),
            ("topic.metadata.refresh.interval.ms", "10000".to_string()),
        ];
        // Offsets are stored by `ack` alone, for finished work only.
        let sign_in = SignIn::from_config(config)?;
        let cc = client_config(config, client_name, &sign_in, &defaults, &[("enable.auto.offset.store", "false")]);
        let context = GroupContext {
            tracker: tracker.clone(),
            drain: config.shutdown.drain_deadline(),
            ready: ready.clone(),
            metrics,
            assigned: Default::default(),
            sign_in,
        };
        let consumer: BaseConsumer<GroupContext> =
            cc.create_with_context(context).map_err(|e| SetupError::Config(format!("kafka consumer: {e}")))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(|e| SetupError::Refused(format!("kafka subscribe: {e}")))?;
        let consumer = Arc::new(consumer);
        let (tx, rx) = mpsc::channel(config.worker.concurrency.max(16));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, t, s) = (consumer.clone(), tracker.clone(), stop.clone());
        std::thread::Builder::new()
            .name("kafka-poll".into())
            .spawn(move || poll_loop(&c, &t, &s, &tx))
            .map_err(|e| SetupError::Runtime(format!("kafka poll thread: {e}")))?;
        let (c, r, s) = (consumer.clone(), ready.clone(), stop.clone());
        std::thread::Builder::new()
            .name("kafka-probe".into())
            .spawn(move || probe_loop(&c, &r, &s))
            .map_err(|e| SetupError::Runtime(format!("kafka probe thread: {e}")))?;
        Ok(Self { consumer, tracker, deliveries: Mutex::new(rx), stop, ready })
    }
}

/// Readiness as docs/http-interface.md defines `/readyz`: the cluster answers (a metadata request every 2 s,
/// as the producer's probe does). Not "partitions assigned": a group's first assignment
/// waits out the broker's `group.initial.rebalance.delay.ms` (3 s by default), a replica
/// beyond the partition count never gets one, and a consumer keeps its partitions
/// through a broker outage without a new assignment to say it is back.
fn probe_loop(consumer: &BaseConsumer<GroupContext>, ready: &AtomicBool, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let ok = consumer.fetch_metadata(None, Duration::from_secs(2)).is_ok();
        ready.store(ok, Ordering::Relaxed);
        for _ in 0..20 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Polls until told to stop; each message is recorded as in flight, then handed over.
/// A full channel blocks the thread: back-pressure up to the broker.
fn poll_loop(
    consumer: &BaseConsumer<GroupContext>,
    tracker: &OffsetTracker,
    stop: &AtomicBool,
    tx: &mpsc::Sender<Delivery>,
) {
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => tracing::warn!(error = %e, "kafka poll"),
            Some(Ok(m)) => {
                let delivery = to_delivery(&m);
                tracker.begin(m.topic(), m.partition(), m.offset());
                if tx.blocking_send(delivery).is_err() {
                    return;
                }
            }
        }
    }
}

/// A consumed record as a [`Delivery`].
fn to_delivery(m: &impl Message) -> Delivery {
    let mut headers = Vec::new();
    if let Some(h) = m.headers() {
        for header in h.iter() {
            let value = header.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
            headers.push((header.key.to_string(), value));
        }
    }
    let (headers, cloud_event) = CloudEvent::split(headers, &cloud_event::KAFKA);
    let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
    let (topic, partition, offset) = (m.topic().to_string(), m.partition(), m.offset());
    Delivery {
        destination: topic.clone(),
        key,
        headers,
        cloud_event,
        body: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        ack: AckToken(AckInner::Kafka { topic, partition, offset }),
    }
}

#[async_trait::async_trait]
impl Consumer for KafkaConsumer {
    async fn recv(&self) -> Option<Delivery> {
        self.deliveries.lock().await.recv().await
    }

    async fn ack(&self, token: AckToken) {
        let AckToken(AckInner::Kafka { topic, partition, offset }) = token else { return };
        if let Some(through) = self.tracker.done(&topic, partition, offset) {
            // rd_kafka_offset_store stores `through + 1`: the next offset to consume.
            if let Err(e) = self.consumer.store_offset(&topic, partition, through) {
                tracing::debug!(topic, partition, offset = through, error = %e, "offset not stored (partition revoked?)");
            }
        }
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    async fn close(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.deliveries.lock().await.close();
        // Every acknowledged offset is stored by now; what is still tracked was never
        // processed, and the group's final revocation must not wait for it.
        self.tracker.forget_all();
        let consumer = self.consumer.clone();
        let committed = tokio::task::spawn_blocking(move || consumer.commit_consumer_state(CommitMode::Sync)).await;
        match committed {
            Ok(Ok(())) => tracing::info!("kafka offsets committed"),
            Ok(Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "final kafka commit failed; uncommitted events will be redelivered")
            }
            Err(e) => tracing::warn!(error = %e, "final kafka commit task failed"),
        }
    }
}

/// The records of one topic, from its beginning to the end offsets it had when the read
/// began. No consumer
/// group offsets are committed: the read changes nothing.
pub(crate) struct KafkaBacklog {
    consumer: Arc<StreamConsumer<SignInContext>>,
    /// Partition → end offset (exclusive) still to reach.
    remaining: HashMap<i32, i64>,
    size: u64,
}

/// Longest wait for the next record before a backlog read gives up.
const BACKLOG_IDLE: Duration = Duration::from_secs(10);

impl KafkaBacklog {
    pub async fn open(config: &Config, topic: &str) -> Result<Self, SetupError> {
        let defaults = [
            ("group.id", format!("{}-replay", config.worker.group_id)),
            ("enable.auto.commit", "false".to_string()),
            ("enable.auto.offset.store", "false".to_string()),
        ];
        let sign_in = SignIn::from_config(config)?;
        let cc = client_config(config, "pcbridge-replay", &sign_in, &defaults, &[]);
        let consumer: Arc<StreamConsumer<SignInContext>> = Arc::new(
            cc.create_with_context(SignInContext(sign_in))
                .map_err(|e| SetupError::Config(format!("kafka consumer: {e}")))?,
        );
        let (c, topic_name) = (consumer.clone(), topic.to_string());
        let plan = tokio::task::spawn_blocking(move || plan(&c, &topic_name))
            .await
            .map_err(|e| SetupError::Runtime(format!("kafka backlog: {e}")))??;
        let mut assignment = TopicPartitionList::new();
        let mut remaining = HashMap::new();
        let mut size = 0u64;
        for (partition, start, end) in plan {
            if start < end {
                assignment
                    .add_partition_offset(topic, partition, Offset::Offset(start))
                    .map_err(|e| SetupError::Refused(format!("kafka assign: {e}")))?;
                remaining.insert(partition, end);
                size += u64::try_from(end - start).unwrap_or(0);
            }
        }
        consumer.assign(&assignment).map_err(|e| SetupError::Refused(format!("kafka assign {topic}: {e}")))?;
        Ok(Self { consumer, remaining, size })
    }
}

/// (partition, first offset, end offset) of every partition of `topic`.
fn plan(consumer: &StreamConsumer<SignInContext>, topic: &str) -> Result<Vec<(i32, i64, i64)>, SetupError> {
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| SetupError::Unreachable(format!("kafka: cannot read the metadata of {topic}: {e}")))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(SetupError::Refused(format!("kafka: topic {topic} does not exist")));
    }
    let mut out = Vec::new();
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(|e| SetupError::Unreachable(format!("kafka: cannot read the offsets of {topic}/{p}: {e}")))?;
        out.push((p, low, high));
    }
    Ok(out)
}

#[async_trait::async_trait]
impl crate::broker::Backlog for KafkaBacklog {
    fn size(&self) -> u64 {
        self.size
    }

    fn removes(&self) -> bool {
        false
    }

    async fn next(&mut self) -> Option<Delivery> {
        while !self.remaining.is_empty() {
            match tokio::time::timeout(BACKLOG_IDLE, self.consumer.recv()).await {
                Err(_) => {
                    tracing::warn!("no record for {BACKLOG_IDLE:?}; ending the read early");
                    return None;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "kafka read"),
                Ok(Ok(m)) => {
                    let Some(end) = self.remaining.get(&m.partition()).copied() else { continue };
                    if m.offset() >= end {
                        self.remaining.remove(&m.partition());
                        continue;
                    }
                    if m.offset() + 1 >= end {
                        self.remaining.remove(&m.partition());
                    }
                    return Some(to_delivery(&m));
                }
            }
        }
        None
    }

    async fn remove(&mut self, _: AckToken) -> Result<(), SetupError> {
        Ok(())
    }

    async fn finish(self: Box<Self>) {
        self.consumer.unassign().ok();
    }
}
