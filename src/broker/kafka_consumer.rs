//! Kafka consumption: a consumer group (replicas share the partitions), polled on a
//! thread of its own and handed to the async side through a bounded channel.
//!
//! Offsets are committed only for finished work: `enable.auto.offset.store` is off,
//! [`Consumer::ack`] stores an offset only once every earlier offset of its partition is
//! done ([`OffsetTracker`]), and librdkafka's auto-commit writes what was stored. On a
//! revocation the poll thread waits (up to the drain deadline) for the revoked
//! partitions' in-flight work before letting them go; on close it commits synchronously.

use super::offsets::OffsetTracker;
use super::{AckInner, AckToken, Consumer, Delivery, SetupError, split_cloud_event};
use crate::config::Config;
use crate::telemetry::Metrics;
use bytes::Bytes;
use rdkafka::{
    ClientContext, Message,
    consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance},
    error::{KafkaError, RDKafkaErrorCode},
    message::Headers,
    statistics::Statistics,
};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::sync::{Mutex, mpsc};

/// Rebalance and statistics callbacks (run on the poll thread).
pub struct GroupContext {
    tracker: Arc<OffsetTracker>,
    /// How long a revocation waits for the revoked partitions' in-flight work.
    drain: Duration,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.ready.store(false, Ordering::Relaxed);
        }
        tracing::warn!(error = %error, reason, "kafka consumer error");
    }

    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics.consumer_lag.with_label_values(&[topic, &partition.to_string()]).set(p.consumer_lag);
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
            tracing::info!(count = partitions.len(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            self.ready.store(true, Ordering::Relaxed);
            tracing::info!(count = list.count(), "partitions assigned");
        }
    }
}

/// The Kafka side of [`Consumer`].
pub struct KafkaConsumer {
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
        let cc = super::kafka::client_config(config, client_name, &defaults, &[("enable.auto.offset.store", "false")]);
        let context = GroupContext {
            tracker: tracker.clone(),
            drain: config.shutdown.drain_deadline(),
            ready: ready.clone(),
            metrics,
        };
        let consumer: BaseConsumer<GroupContext> =
            cc.create_with_context(context).map_err(|e| SetupError(format!("kafka consumer: {e}")))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(|e| SetupError(format!("kafka subscribe: {e}")))?;
        let consumer = Arc::new(consumer);
        let (tx, rx) = mpsc::channel(config.worker.concurrency.max(16));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, t, s) = (consumer.clone(), tracker.clone(), stop.clone());
        std::thread::Builder::new()
            .name("kafka-poll".into())
            .spawn(move || poll_loop(&c, &t, &s, &tx))
            .map_err(|e| SetupError(format!("kafka poll thread: {e}")))?;
        Ok(Self { consumer, tracker, deliveries: Mutex::new(rx), stop, ready })
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
                let mut headers = Vec::new();
                if let Some(h) = m.headers() {
                    for header in h.iter() {
                        let value = header.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
                        headers.push((header.key.to_string(), value));
                    }
                }
                let (headers, cloud_event) = split_cloud_event(headers, "ce_");
                let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
                let (topic, partition, offset) = (m.topic().to_string(), m.partition(), m.offset());
                let delivery = Delivery {
                    destination: topic.clone(),
                    key,
                    headers,
                    cloud_event,
                    body: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                    ack: AckToken(AckInner::Kafka { topic: topic.clone(), partition, offset }),
                };
                tracker.begin(&topic, partition, offset);
                if tx.blocking_send(delivery).is_err() {
                    return;
                }
            }
        }
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
