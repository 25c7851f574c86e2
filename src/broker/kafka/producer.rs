//! Kafka through rdkafka: an idempotent producer with `acks=all`, topic creation, and
//! a readiness probe.
//!
//! `publish` awaits the delivery report, which librdkafka issues only after every
//! in-sync replica has the record (`acks=all`); the idempotent producer keeps its
//! internal retries from duplicating or reordering records within a partition.

use super::config::{base_client_config, client_error, producer_config};
use super::sign_in::{SignIn, SignInContext};
use crate::broker::{Message, PublishError, Publisher, SetupError};
use crate::config::Config;
use crate::contract::cloud_event::KAFKA;
use crate::telemetry::Metrics;
use rdkafka::{
    ClientContext,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::OAuthToken,
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer, ProducerContext},
    util::Timeout,
};
use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, RwLock, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// Producer context that turns librdkafka's connection errors into the readiness flag.
pub(crate) struct ReadinessContext {
    /// Cleared when librdkafka reports every broker down; set again by the probe or by
    /// the next successful delivery. Shared with [`Kafka`], read by `/readyz`.
    ready: Arc<AtomicBool>,
    sign_in: SignIn,
}

impl ClientContext for ReadinessContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn error(&self, error: KafkaError, reason: &str) {
        client_error(&self.ready, error, reason, "producer");
    }

    fn generate_oauth_token(&self, _: Option<&str>) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        self.sign_in.token()
    }
}

impl ProducerContext for ReadinessContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// The Kafka side of [`Publisher`].
pub(crate) struct Kafka {
    producer: FutureProducer<ReadinessContext>,
    admin: AdminClient<SignInContext>,
    /// Topics known to exist, so a topic is created at most once per process and the
    /// hot path takes only a read lock.
    known_topics: RwLock<HashSet<String>>,
    /// When creating a topic last failed, so a broken CreateTopics is not retried on
    /// every publish.
    create_failed: Mutex<HashMap<String, Instant>>,
    create_topics: bool,
    partitions: i32,
    replication_factor: i32,
    /// How long a record may wait in librdkafka's queue before `publish` fails.
    queue_timeout: Duration,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl Kafka {
    /// Builds the producer and admin client; connection happens in the background.
    pub(crate) fn connect(config: &Config, client_name: &str, metrics: Arc<Metrics>) -> Result<Self, SetupError> {
        let publish_timeout = config.ingress.publish_timeout();
        let sign_in = SignIn::from_config(config)?;
        let cc = producer_config(config, client_name, &sign_in);
        let ready = Arc::new(AtomicBool::new(false));
        let producer: FutureProducer<ReadinessContext> = cc
            .create_with_context(ReadinessContext { ready: ready.clone(), sign_in: sign_in.clone() })
            .map_err(|e| SetupError::Config(format!("kafka producer: {e} (check kafka.properties)")))?;
        let admin: AdminClient<SignInContext> = base_client_config(config, client_name, &sign_in)
            .create_with_context(SignInContext(sign_in))
            .map_err(|e| SetupError::Config(format!("kafka admin client: {e}")))?;
        let kafka = Kafka {
            producer,
            admin,
            known_topics: RwLock::new(HashSet::new()),
            create_failed: Mutex::new(HashMap::new()),
            create_topics: config.kafka.create_topics,
            partitions: config.kafka.partitions,
            replication_factor: config.kafka.replication_factor,
            queue_timeout: publish_timeout,
            ready,
            metrics,
        };
        Ok(kafka)
    }

    /// Starts the background readiness probe; it ends when `this` is dropped.
    pub fn spawn_probe(this: &Arc<Self>, every: Duration) {
        let weak: Weak<Self> = Arc::downgrade(this);
        tokio::spawn(async move {
            loop {
                let Some(kafka) = weak.upgrade() else { return };
                let ok = kafka.probe().await;
                kafka.set_ready(ok);
                drop(kafka);
                tokio::time::sleep(every).await;
            }
        });
    }

    async fn probe(self: &Arc<Self>) -> bool {
        let this = self.clone();
        // fetch_metadata blocks; keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            this.producer.client().fetch_metadata(None, Timeout::After(Duration::from_secs(2))).is_ok()
        })
        .await
        .unwrap_or(false)
    }

    fn set_ready(&self, ok: bool) {
        self.ready.store(ok, Ordering::Relaxed);
        self.metrics.broker_ready.with_label_values(&["kafka"]).set(i64::from(ok));
    }

    fn is_known(&self, topic: &str) -> bool {
        self.known_topics.read().unwrap_or_else(|p| p.into_inner()).contains(topic)
    }

    fn mark_known<'a>(&self, topics: impl IntoIterator<Item = &'a String>) {
        let mut known = self.known_topics.write().unwrap_or_else(|p| p.into_inner());
        known.extend(topics.into_iter().cloned());
    }

    /// Creates the topics not yet known to exist, within [`CREATE_TIMEOUT`]. With
    /// `create_topics = false` the topics are assumed to exist (or to be auto-created
    /// by the broker, as librdkafka's mock cluster does).
    async fn create_missing(&self, names: &[String]) -> Result<(), SetupError> {
        let missing: Vec<&String> = names.iter().filter(|n| !self.is_known(n)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        if !self.create_topics {
            self.mark_known(missing);
            return Ok(());
        }
        let topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|n| NewTopic::new(n, self.partitions, TopicReplication::Fixed(self.replication_factor)))
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(CREATE_TIMEOUT)).request_timeout(Some(CREATE_TIMEOUT));
        let results = tokio::time::timeout(
            CREATE_TIMEOUT + Duration::from_secs(1),
            self.admin.create_topics(topics.iter(), &opts),
        )
        .await
        .map_err(|_| SetupError::Unreachable(format!("kafka: creating topics took longer than {CREATE_TIMEOUT:?}")))?
        .map_err(|e| SetupError::Refused(format!("kafka create topics: {e}")))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(SetupError::Refused(format!(
                        "kafka: cannot create topic {topic}: {code} (check kafka.partitions / kafka.replication_factor, or set kafka.create_topics = false and create it yourself)"
                    )));
                }
            }
        }
        self.mark_known(missing);
        Ok(())
    }

    /// Before the first publish to a topic: try to create it, but never let a failed or
    /// unsupported CreateTopics block publishing — the produce itself decides (it fails,
    /// and the caller answers 503, if the topic really does not exist). A failed
    /// attempt is not repeated for [`CREATE_RETRY_AFTER`].
    async fn ensure_before_publish(&self, topic: &String) {
        {
            let failed = self.create_failed.lock().unwrap_or_else(|p| p.into_inner());
            if failed.get(topic).is_some_and(|at| at.elapsed() < CREATE_RETRY_AFTER) {
                return;
            }
        }
        if let Err(e) = self.create_missing(std::slice::from_ref(topic)).await {
            tracing::warn!(topic = %topic, error = %e, "could not create topic; publishing anyway");
            self.create_failed.lock().unwrap_or_else(|p| p.into_inner()).insert(topic.clone(), Instant::now());
        }
    }
}

/// Longest wait for a CreateTopics round trip.
const CREATE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before trying again to create a topic whose creation failed.
const CREATE_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Which of `names` the cluster has no topic for (one metadata request).
pub(crate) async fn missing_topics(config: &Config, names: &[String]) -> Result<Vec<String>, SetupError> {
    let sign_in = SignIn::from_config(config)?;
    let producer: rdkafka::producer::BaseProducer<SignInContext> =
        base_client_config(config, "pcbridge-check", &sign_in)
            .create_with_context(SignInContext(sign_in))
            .map_err(|e| SetupError::Config(format!("kafka client: {e} (check kafka.properties)")))?;
    let (servers, names) = (config.kafka.bootstrap_servers.clone(), names.to_vec());
    tokio::task::spawn_blocking(move || {
        let metadata = producer
            .client()
            .fetch_metadata(None, Timeout::After(Duration::from_secs(10)))
            .map_err(|e| SetupError::Unreachable(format!("kafka at {servers}: {e}")))?;
        let present: HashSet<&str> = metadata.topics().iter().map(|t| t.name()).collect();
        Ok(names.into_iter().filter(|n| !present.contains(n.as_str())).collect())
    })
    .await
    .map_err(|e| SetupError::Runtime(format!("kafka metadata task: {e}")))?
}

/// Fetches cluster metadata once: proves the brokers are reachable and the credentials work.
pub(crate) async fn probe(config: &Config) -> Result<String, SetupError> {
    let sign_in = SignIn::from_config(config)?;
    let producer: rdkafka::producer::BaseProducer<SignInContext> =
        base_client_config(config, "pcbridge-check", &sign_in)
            .create_with_context(SignInContext(sign_in))
            .map_err(|e| SetupError::Config(format!("kafka client: {e} (check kafka.properties)")))?;
    let servers = config.kafka.bootstrap_servers.clone();
    tokio::task::spawn_blocking(move || {
        let metadata = producer
            .client()
            .fetch_metadata(None, Timeout::After(Duration::from_secs(10)))
            .map_err(|e| SetupError::Unreachable(format!("kafka at {servers}: {e}")))?;
        Ok(format!("kafka at {servers}: {} broker(s), {} topic(s)", metadata.brokers().len(), metadata.topics().len()))
    })
    .await
    .map_err(|e| SetupError::Runtime(format!("kafka probe task: {e}")))?
}

/// Only a refusal of this very record is `Rejected` (sending it again cannot help);
/// everything else — timeouts, broker or leader trouble, authorization being fixed — may
/// pass on a later try.
fn classify(e: &KafkaError, timeout: Duration) -> PublishError {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(C::MessageTimedOut) => PublishError::Timeout(timeout),
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::InvalidMessage | C::InvalidRecord) => {
            PublishError::Rejected(e.to_string())
        }
        _ => PublishError::Unavailable(e.to_string()),
    }
}

/// Kafka record headers for a message: its own headers, then the CloudEvents Kafka
/// binding (`ce_*` and `content-type`).
fn record_headers(m: &Message) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(m.headers.len() + 7);
    let put = |h: OwnedHeaders, k: &str, v: &str| h.insert(Header { key: k, value: Some(v) });
    for (k, v) in &m.headers {
        h = put(h, k, v);
    }
    for (k, v) in m.cloud_event.headers(&KAFKA) {
        h = put(h, k, v);
    }
    match KAFKA.content_type {
        Some(k) => put(h, k, m.content_type),
        None => h,
    }
}

#[async_trait::async_trait]
impl Publisher for Kafka {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    async fn ensure_destinations(&self, names: &[String]) -> Result<(), SetupError> {
        self.create_missing(names).await
    }

    async fn publish(&self, m: &Message) -> Result<(), PublishError> {
        if !self.is_known(&m.destination) {
            self.ensure_before_publish(&m.destination).await;
        }
        let record = FutureRecord::to(&m.destination).payload(&m.body[..]).key(&m.key).headers(record_headers(m));
        let started = Instant::now();
        let result = self.producer.send(record, Timeout::After(self.queue_timeout)).await;
        let elapsed = started.elapsed().as_secs_f64();
        match result {
            Ok(_) => {
                self.metrics.publish_duration.with_label_values(&["kafka", "ok"]).observe(elapsed);
                if !self.ready.load(Ordering::Relaxed) {
                    self.set_ready(true);
                }
                if !self.is_known(&m.destination) {
                    self.mark_known([&m.destination]);
                }
                Ok(())
            }
            Err((e, _)) => {
                self.metrics.publish_duration.with_label_values(&["kafka", "error"]).observe(elapsed);
                Err(classify(&e, self.queue_timeout))
            }
        }
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    async fn close(&self, deadline: Duration) {
        let producer = self.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(Timeout::After(deadline))).await;
        match flushed {
            Ok(Ok(())) => tracing::info!("kafka producer flushed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "kafka producer flush incomplete"),
            Err(e) => tracing::warn!(error = %e, "kafka producer flush task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// librdkafka validates `security.protocol` and `sasl.mechanism` when the client is
    /// created, and refuses values its build does not support: creating these clients
    /// proves the binary can talk to Event Hubs, Confluent Cloud or MSK.
    #[tokio::test]
    async fn build_supports_tls_and_sasl() {
        for (protocol, mechanism) in [
            ("SSL", None),
            ("SASL_SSL", Some("PLAIN")),
            ("SASL_SSL", Some("SCRAM-SHA-512")),
            ("SASL_PLAINTEXT", Some("PLAIN")),
        ] {
            let mut config = Config::default();
            config.kafka.bootstrap_servers = "127.0.0.1:1".into();
            config.kafka.properties.insert("security.protocol".into(), protocol.into());
            if let Some(m) = mechanism {
                config.kafka.properties.insert("sasl.mechanism".into(), m.into());
                config.kafka.properties.insert("sasl.username".into(), "$ConnectionString".into());
                config.kafka.properties.insert("sasl_password".into(), "secret".into());
            }
            let made = Kafka::connect(&config, "test", Arc::new(Metrics::new()));
            assert!(made.is_ok(), "{protocol} {mechanism:?}: {:?}", made.err());
        }
    }

    #[test]
    fn only_refusals_of_the_record_itself_are_permanent() {
        let t = Duration::from_secs(1);
        let err = |code| KafkaError::MessageProduction(code);
        assert!(matches!(classify(&err(RDKafkaErrorCode::MessageSizeTooLarge), t), PublishError::Rejected(_)));
        assert!(matches!(classify(&err(RDKafkaErrorCode::InvalidRecord), t), PublishError::Rejected(_)));
        assert!(matches!(classify(&err(RDKafkaErrorCode::MessageTimedOut), t), PublishError::Timeout(_)));
        for transient in [
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::LeaderNotAvailable,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::QueueFull,
        ] {
            assert!(matches!(classify(&err(transient), t), PublishError::Unavailable(_)), "{transient:?}");
        }
    }

    #[test]
    fn delivery_guarantee_cannot_be_configured_away() {
        let mut config = Config::default();
        config.kafka.properties.insert("acks".into(), "1".into());
        config.kafka.properties.insert("enable.idempotence".into(), "false".into());
        config.kafka.properties.insert("linger.ms".into(), "7".into());
        let cc = producer_config(&config, "test", &SignIn::default());
        assert_eq!(cc.get("acks"), Some("all"));
        assert_eq!(cc.get("enable.idempotence"), Some("true"));
        assert_eq!(cc.get("linger.ms"), Some("7"), "other properties pass through");
        assert_eq!(cc.get("message.timeout.ms"), Some("5000"), "librdkafka gives up when the ingress does");
    }
}
