//! The RabbitMQ publisher: persistent messages published `mandatory` on a confirm-mode
//! channel, and a supervisor that reconnects with backoff after the broker goes away.
//!
//! A publish is reported successful only on a positive publisher confirm with no
//! `basic.return`: RabbitMQ confirms a persistent message routed to a durable queue once
//! it is written to disk (or, for quorum queues, to a majority of replicas). An
//! unroutable message is returned before its confirm and is treated as a failure.

use super::topology::{Topology, amqp_uri};
use crate::broker::reconnect_delays;
use crate::broker::{Message, PublishError, Publisher, SetupError};
use crate::config::{Config, redact_url};
use crate::contract::cloud_event::AMQP;
use crate::telemetry::Metrics;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
    uri::AMQPUri,
};
use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::sync::{Notify, RwLock};

/// One live connection and its confirm-mode channel.
struct Link {
    connection: Connection,
    /// Shared by every publish: many publishes are in flight on it at once and their
    /// confirms arrive in batches, which is what makes confirms cheap.
    channel: Channel,
}

/// The RabbitMQ side of [`Publisher`].
pub(crate) struct RabbitMq {
    uri: AMQPUri,
    /// Which queue a message goes to: a raw destination's shard by the message's key.
    topology: Topology,
    client_name: String,
    reconnect_max_delay: Duration,
    /// The current link; `None` while disconnected (publishes then fail fast with
    /// [`PublishError::Unavailable`], so the ingress answers 503 at once).
    link: RwLock<Option<Link>>,
    /// Queues whose declaration and binding were made on this broker. Queues are
    /// durable, so they survive broker restarts; a returned (unroutable) message
    /// removes its destination so the next publish declares it again.
    declared: Mutex<HashSet<String>>,
    ready: AtomicBool,
    /// Wakes the supervisor when a publish notices the link is broken.
    broken: Notify,
    /// Held while a message is handed to lapin, so messages reach the wire in the order
    /// lapin numbered them. lapin assigns the confirm's delivery tag and queues the frames
    /// under two different locks; two publishes from two threads can cross between them,
    /// and RabbitMQ numbers messages by arrival. Both acked, that is harmless; but if the
    /// connection dies between the two, the ack of the message that arrived resolves the
    /// confirm of the one that never did — a 2xx for a lost event (seen under
    /// `rabbitmqctl close_connection`: one event missing, another duplicated). Confirms
    /// are still awaited outside this lock, so many stay in flight.
    publish_order: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
}

impl RabbitMq {
    /// Connects (failing if the first connection fails, so a wrong URL is reported at
    /// start-up) and starts the reconnecting supervisor.
    pub async fn connect(config: &Config, client_name: &str, metrics: Arc<Metrics>) -> Result<Arc<Self>, SetupError> {
        let uri = amqp_uri(&config.rabbitmq, config)?;
        let this = Arc::new(RabbitMq {
            uri,
            topology: Topology::new(config),
            client_name: client_name.to_string(),
            reconnect_max_delay: Duration::from_millis(config.rabbitmq.reconnect_max_delay_ms.max(100)),
            link: RwLock::new(None),
            declared: Mutex::new(HashSet::new()),
            ready: AtomicBool::new(false),
            broken: Notify::new(),
            publish_order: tokio::sync::Mutex::new(()),
            metrics,
        });
        let link = this.open().await.map_err(|e| {
            SetupError::Unreachable(format!("rabbitmq: cannot connect to {}: {e}", redact_url(&config.rabbitmq.url)))
        })?;
        this.install(link).await;
        let weak = Arc::downgrade(&this);
        tokio::spawn(supervise(weak));
        Ok(this)
    }

    async fn open(&self) -> Result<Link, lapin::Error> {
        let props = ConnectionProperties::default().with_connection_name(self.client_name.clone().into());
        let connection = Connection::connect_uri(self.uri.clone(), props).await?;
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        self.topology.declare_exchanges(&channel).await?;
        Ok(Link { connection, channel })
    }

    async fn install(&self, link: Link) {
        *self.link.write().await = Some(link);
        self.set_ready(true);
    }

    fn set_ready(&self, ok: bool) {
        self.ready.store(ok, Ordering::Relaxed);
        self.metrics.broker_ready.with_label_values(&["rabbitmq"]).set(i64::from(ok));
    }

    async fn channel(&self) -> Result<Channel, PublishError> {
        match &*self.link.read().await {
            Some(link) if link.channel.status().connected() => Ok(link.channel.clone()),
            _ => {
                self.broken.notify_one();
                Err(PublishError::Unavailable("not connected to rabbitmq".into()))
            }
        }
    }

    fn is_declared(&self, name: &str) -> bool {
        self.declared.lock().unwrap_or_else(|p| p.into_inner()).contains(name)
    }

    /// Declares `names` (pipelined) and remembers them; the first failure with its name.
    async fn declare(&self, channel: &Channel, names: &[String]) -> Result<(), (String, lapin::Error)> {
        self.topology.declare_queues(channel, names).await?;
        self.declared.lock().unwrap_or_else(|p| p.into_inner()).extend(names.iter().cloned());
        Ok(())
    }

    /// One publish and its confirm. `Ok(false)` means the message was returned as
    /// unroutable (nothing stored).
    async fn publish_once(&self, channel: &Channel, queue: &str, m: &Message) -> Result<bool, PublishError> {
        let mut publish = std::pin::pin!(channel.basic_publish(
            self.topology.exchange_of(&m.destination).into(),
            queue.into(),
            BasicPublishOptions { mandatory: true, ..Default::default() },
            &m.body,
            properties(m, self.topology.writes_cloud_event(&m.destination)),
        ));
        // lapin (4.12) numbers the confirm and queues the frames in the first poll, then
        // waits for the socket write: only that first poll needs the lock, so writes of
        // many publishes still go out together.
        let first = {
            let _order = self.publish_order.lock().await;
            futures::poll!(publish.as_mut())
        };
        let confirm = match first {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => publish.await,
        }
        .map_err(|e| self.link_error(e))?;
        match Confirm(Some(confirm)).wait().await.map_err(|e| self.link_error(e))? {
            Confirmation::Ack(None) => Ok(true),
            Confirmation::Ack(Some(_)) => Ok(false),
            // RabbitMQ nacks only on an internal error of the queue's process: transient.
            Confirmation::Nack(_) => Err(PublishError::Unavailable("nacked by rabbitmq (internal error)".into())),
            Confirmation::NotRequested => Err(PublishError::Rejected("channel is not in confirm mode".into())),
        }
    }

    fn link_error(&self, e: lapin::Error) -> PublishError {
        self.broken.notify_one();
        PublishError::Unavailable(format!("rabbitmq: {e}"))
    }
}

/// Connects and opens a channel: proves the URL, credentials and vhost work.
pub(crate) async fn probe(config: &Config) -> Result<String, SetupError> {
    let uri = amqp_uri(&config.rabbitmq, config)?;
    let url = redact_url(&config.rabbitmq.url);
    let connect = async {
        let connection = Connection::connect_uri(uri, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let _ = channel.close(200, "check".into()).await;
        let _ = connection.close(200, "check".into()).await;
        Ok::<_, lapin::Error>(())
    };
    match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(())) => Ok(format!("rabbitmq at {url}: connected")),
        Ok(Err(e)) => Err(SetupError::Unreachable(format!("rabbitmq at {url}: {e}"))),
        Err(_) => Err(SetupError::Unreachable(format!("rabbitmq at {url}: no answer within 10 s"))),
    }
}

/// Which of `names` has no queue (a passive declare each; RabbitMQ closes the channel
/// of a declare that finds nothing, so each check has a channel of its own).
pub(crate) async fn missing_queues(config: &Config, names: &[String]) -> Result<Vec<String>, SetupError> {
    let uri = amqp_uri(&config.rabbitmq, config)?;
    let url = redact_url(&config.rabbitmq.url);
    let unreachable = |e: lapin::Error| SetupError::Unreachable(format!("rabbitmq at {url}: {e}"));
    let connection = Connection::connect_uri(uri, ConnectionProperties::default()).await.map_err(unreachable)?;
    let topology = Topology::new(config);
    let mut missing = Vec::new();
    for name in names.iter().flat_map(|d| topology.queues(d)) {
        let channel = connection.create_channel().await.map_err(unreachable)?;
        let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        match channel.queue_declare(name.as_str().into(), passive, FieldTable::default()).await {
            Ok(_) => {
                let _ = channel.close(200, "check".into()).await;
            }
            Err(_) => missing.push(name),
        }
    }
    let _ = connection.close(200, "check".into()).await;
    Ok(missing)
}

/// A publisher confirm that is awaited to the end even when its publish is abandoned
/// (the ingress's publish timeout, a client that hung up). lapin keeps every confirm
/// dropped unresolved in a list that only `wait_for_confirms` or a channel error empties
/// (lapin 4.12, `returned_messages.rs`); on a channel that lives for weeks, each abandoned
/// publish would stay there. Dropped before it resolves, this hands the wait to a task.
struct Confirm(Option<PublisherConfirm>);

impl Confirm {
    async fn wait(mut self) -> Result<Confirmation, lapin::Error> {
        let Some(confirm) = self.0.as_mut() else { return Ok(Confirmation::NotRequested) };
        let result = confirm.await;
        // Resolved: nothing left for `drop` to hand over.
        self.0 = None;
        result
    }
}

impl Drop for Confirm {
    fn drop(&mut self) {
        if let Some(confirm) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = confirm.await;
            });
        }
    }
}

/// AMQP message properties: persistent, identified, with the application headers and,
/// when `cloud_event`, the CloudEvents AMQP binding (`cloudEvents_*` headers). Not `type`,
/// `app_id` or `timestamp`: they repeated `cloudEvents_type`, `cloudEvents_source` and
/// `pc-received-at`, and cost RabbitMQ ~10 µs a message (BENCHMARKS.md).
fn properties(m: &Message, cloud_event: bool) -> BasicProperties {
    let mut headers = FieldTable::default();
    let mut put = |k: &str, v: &str| {
        headers.insert(ShortString::from(k), AMQPValue::LongString(LongString::from(v)));
    };
    for (k, v) in &m.headers {
        put(k, v);
    }
    if cloud_event {
        for (k, v) in m.cloud_event.headers(&AMQP) {
            put(k, v);
        }
    }
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(m.id.as_str().into())
        .with_content_type(m.content_type.into())
        .with_headers(headers)
}

/// Watches the link and re-opens it with exponential backoff (capped at
/// `reconnect_max_delay`, jittered) whenever it breaks; ends when the broker is dropped.
async fn supervise(weak: Weak<RabbitMq>) {
    loop {
        // Wait until the link is broken (or a publish says so), checking now and then.
        loop {
            let Some(this) = weak.upgrade() else { return };
            let healthy = match &*this.link.read().await {
                Some(l) => l.connection.status().connected() && l.channel.status().connected(),
                None => false,
            };
            if !healthy {
                break;
            }
            let woken = tokio::time::timeout(Duration::from_millis(500), this.broken.notified()).await;
            drop(this);
            if woken.is_ok() {
                // Re-check: a notification is a hint, the status is the truth.
                continue;
            }
        }
        let Some(this) = weak.upgrade() else { return };
        this.set_ready(false);
        if let Some(old) = this.link.write().await.take() {
            let _ = old.connection.close(320, "reconnecting".into()).await;
        }
        tracing::warn!("rabbitmq connection lost; reconnecting");
        let max_delay = this.reconnect_max_delay;
        drop(this);
        let mut delays = reconnect_delays(max_delay);
        loop {
            let Some(this) = weak.upgrade() else { return };
            match this.open().await {
                Ok(link) => {
                    this.install(link).await;
                    tracing::info!("rabbitmq reconnected");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rabbitmq reconnect failed");
                    drop(this);
                    tokio::time::sleep(delays.next().unwrap_or(max_delay)).await;
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Publisher for RabbitMq {
    fn kind(&self) -> &'static str {
        "rabbitmq"
    }

    async fn ensure_destinations(&self, names: &[String]) -> Result<(), SetupError> {
        let channel = self.channel().await.map_err(|e| SetupError::Unreachable(e.to_string()))?;
        let queues: Vec<String> = names.iter().flat_map(|d| self.topology.queues(d)).collect();
        self.declare(&channel, &queues).await.map_err(|(name, e)| {
            SetupError::Refused(format!(
                "rabbitmq: cannot declare queue {name}: {e} (an existing queue with other arguments? check rabbitmq.queue_type)"
            ))
        })
    }

    async fn publish(&self, m: &Message) -> Result<(), PublishError> {
        let started = Instant::now();
        let result = async {
            let channel = self.channel().await?;
            let queue = self.topology.route(&m.destination, &m.key);
            if !self.is_declared(&queue) {
                // Every shard of a raw destination at once: `check` and a worker starting
                // later find the destination whole.
                self.declare(&channel, &self.topology.queues(&m.destination))
                    .await
                    .map_err(|(_, e)| self.link_error(e))?;
            }
            if self.publish_once(&channel, &queue, m).await? {
                return Ok(());
            }
            // Returned as unroutable: someone removed the queue or binding. Declare it
            // again and retry once; a returned message was not stored, so no duplicate.
            tracing::warn!(destination = %m.destination, queue, "message returned unroutable; re-declaring its queue");
            self.declared.lock().unwrap_or_else(|p| p.into_inner()).remove(&queue);
            self.declare(&channel, std::slice::from_ref(&queue)).await.map_err(|(_, e)| self.link_error(e))?;
            if self.publish_once(&channel, &queue, m).await? {
                Ok(())
            } else {
                Err(PublishError::Rejected(format!("unroutable: no queue bound to {queue}")))
            }
        }
        .await;
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics.publish_duration.with_label_values(&["rabbitmq", label]).observe(started.elapsed().as_secs_f64());
        result
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    async fn close(&self, deadline: Duration) {
        if let Some(link) = self.link.write().await.take() {
            self.set_ready(false);
            // Every publish awaited its own confirm, so nothing is pending but stragglers.
            let _ = tokio::time::timeout(deadline, link.channel.wait_for_confirms()).await;
            let _ = link.connection.close(200, "shutting down".into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::uri::AMQPScheme;

    #[test]
    fn urls_take_credentials_from_config_and_accept_amqps() {
        let mut config = Config::default();
        config.rabbitmq.url = "amqps://rabbit.example.com:5671/prod".into();
        config.rabbitmq.username = "pcbridge".into();
        config.rabbitmq.password = crate::config::Secret::new("s3cret");
        let uri = amqp_uri(&config.rabbitmq, &config).expect("uri");
        assert_eq!(uri.scheme, AMQPScheme::AMQPS);
        assert_eq!((uri.authority.host.as_str(), uri.authority.port), ("rabbit.example.com", 5671));
        assert_eq!(uri.vhost, "prod");
        assert_eq!(uri.authority.userinfo.username, "pcbridge");
        assert_eq!(uri.authority.userinfo.password, "s3cret");
        assert_eq!(uri.query.connection_timeout, Some(5_000));
        config.rabbitmq.url = "amqp://other:pw@127.0.0.1:5672/%2f".into();
        let uri = amqp_uri(&config.rabbitmq, &config).expect("uri");
        assert_eq!(
            (uri.authority.userinfo.username.as_str(), uri.authority.userinfo.password.as_str()),
            ("other", "pw")
        );
    }
}
