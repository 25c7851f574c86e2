//! RabbitMQ consumption: one channel with a prefetch limit, a consumer per source queue,
//! manual acknowledgements, and reconnection with backoff. Deliveries not acknowledged
//! when a channel closes are requeued by RabbitMQ and delivered again.
//!
//! [`RabbitBacklog`] drains a queue once for `pcbridge replay`: what it removes is
//! acknowledged, what it leaves is requeued when its channel closes.

use super::topology::{amqp_uri, declare_exchange, declare_queue};
use crate::broker::reconnect_delays;
use crate::broker::{AckInner, AckToken, Consumer, Delivery, SetupError};
use crate::config::{Config, QueueType, redact_url};
use crate::contract::cloud_event::{self, CloudEvent};
use bytes::Bytes;
use futures::StreamExt;
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
    uri::AMQPUri,
};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

struct Settings {
    uri: AMQPUri,
    exchange: String,
    queue_type: QueueType,
    queues: Vec<String>,
    prefetch: u16,
    client_name: String,
    reconnect_max_delay: Duration,
}

/// The RabbitMQ side of [`Consumer`].
pub(crate) struct RabbitConsumer {
    deliveries: Mutex<mpsc::Receiver<Delivery>>,
    ready: Arc<AtomicBool>,
    /// Stops the consuming task, which then closes its connection (requeueing what was
    /// not acknowledged).
    stop: CancellationToken,
}

impl RabbitConsumer {
    /// Connects (a first failure is reported, so a wrong URL shows at start-up), declares
    /// the source queues, and consumes them until closed, reconnecting as needed.
    pub async fn start(config: &Config, queues: Vec<String>, client_name: &str) -> Result<Arc<Self>, SetupError> {
        let settings = Settings {
            uri: amqp_uri(&config.rabbitmq, config)?,
            exchange: config.rabbitmq.exchange.clone(),
            queue_type: config.rabbitmq.queue_type,
            queues,
            prefetch: config.worker.prefetch,
            client_name: client_name.to_string(),
            reconnect_max_delay: Duration::from_millis(config.rabbitmq.reconnect_max_delay_ms.max(100)),
        };
        if usize::from(config.worker.prefetch) < 2 * config.worker.concurrency {
            tracing::warn!(
                prefetch = config.worker.prefetch,
                concurrency = config.worker.concurrency,
                "worker.prefetch is below 2 × worker.concurrency: unacknowledged deliveries waiting for their output's confirm will hold the worker below its concurrency"
            );
        }
        let first = open(&settings).await.map_err(|e| {
            SetupError::Refused(format!("rabbitmq: cannot consume from {}: {e}", redact_url(&config.rabbitmq.url)))
        })?;
        let (tx, rx) = mpsc::channel(usize::from(config.worker.prefetch).max(16));
        let ready = Arc::new(AtomicBool::new(true));
        let stop = CancellationToken::new();
        tokio::spawn(run(settings, first, tx, ready.clone(), stop.clone()));
        Ok(Arc::new(Self { deliveries: Mutex::new(rx), ready, stop }))
    }
}

type Streams = futures::stream::SelectAll<lapin::Consumer>;

async fn open(s: &Settings) -> Result<(Connection, Streams), lapin::Error> {
    let props = ConnectionProperties::default().with_connection_name(s.client_name.clone().into());
    let connection = Connection::connect_uri(s.uri.clone(), props).await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(s.prefetch, BasicQosOptions::default()).await?;
    declare_exchange(&channel, &s.exchange).await?;
    let mut streams = futures::stream::SelectAll::new();
    for queue in &s.queues {
        declare_queue(&channel, &s.exchange, s.queue_type, queue).await?;
        let consumer = channel
            .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        streams.push(consumer);
    }
    Ok((connection, streams))
}

/// Forwards deliveries; on a broken connection, reconnects with jittered backoff.
async fn run(
    s: Settings,
    first: (Connection, Streams),
    tx: mpsc::Sender<Delivery>,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut link = Some(first);
    loop {
        let (connection, mut streams) = match link.take() {
            Some(l) => l,
            None => match reconnect(&s, &stop).await {
                Some(l) => l,
                None => return,
            },
        };
        ready.store(true, Ordering::Relaxed);
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => {
                    let _ = connection.close(200, "shutting down".into()).await;
                    return;
                }
                next = streams.next() => next,
            };
            match next {
                Some(Ok(d)) => {
                    if tx.send(to_delivery(d)).await.is_err() {
                        let _ = connection.close(200, "shutting down".into()).await;
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "rabbitmq consumer failed; reconnecting");
                    break;
                }
                None => {
                    tracing::warn!("rabbitmq consumers ended; reconnecting");
                    break;
                }
            }
        }
        ready.store(false, Ordering::Relaxed);
        let _ = connection.close(320, "reconnecting".into()).await;
    }
}

async fn reconnect(s: &Settings, stop: &CancellationToken) -> Option<(Connection, Streams)> {
    let mut delays = reconnect_delays(s.reconnect_max_delay);
    loop {
        match open(s).await {
            Ok(l) => {
                tracing::info!("rabbitmq consumer reconnected");
                return Some(l);
            }
            Err(e) => tracing::warn!(error = %e, "rabbitmq consumer reconnect failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(delays.next().unwrap_or(s.reconnect_max_delay)) => {}
        }
    }
}

fn to_delivery(d: lapin::message::Delivery) -> Delivery {
    let p = &d.properties;
    let mut headers = Vec::new();
    if let Some(table) = p.headers() {
        for (k, v) in table.inner() {
            let text = match v {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::ShortString(s) => s.to_string(),
                other => format!("{other:?}"),
            };
            headers.push((k.to_string(), text));
        }
    }
    let (headers, cloud_event) = CloudEvent::split(headers, &cloud_event::AMQP);
    let id = p.message_id().as_ref().map(|m| m.to_string()).unwrap_or_default();
    let key = cloud_event.as_ref().and_then(|ce| ce.subject.clone()).unwrap_or(id);
    Delivery {
        destination: d.routing_key.to_string(),
        key,
        headers,
        cloud_event,
        body: Bytes::from(d.data),
        ack: AckToken(AckInner::Rabbit(d.acker)),
    }
}

#[async_trait::async_trait]
impl Consumer for RabbitConsumer {
    async fn recv(&self) -> Option<Delivery> {
        self.deliveries.lock().await.recv().await
    }

    async fn ack(&self, token: AckToken) {
        let AckToken(AckInner::Rabbit(acker)) = token else { return };
        if let Err(e) = acker.ack(BasicAckOptions::default()).await {
            // The channel is gone: RabbitMQ requeues the delivery; its output is already
            // published, so the redelivery is a duplicate (deduplicated by event id).
            tracing::warn!(error = %e, "ack failed; the delivery will be redelivered");
        }
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    async fn close(&self) {
        self.stop.cancel();
        self.deliveries.lock().await.close();
    }
}

/// The messages a queue held when the read began. Removing acknowledges; the rest stay
/// unacknowledged until [`Backlog::finish`](crate::broker::Backlog::finish) closes the channel,
/// which puts them back in the queue in their order (none is redelivered to this read).
pub(crate) struct RabbitBacklog {
    connection: Connection,
    consumer: lapin::Consumer,
    size: u64,
    read: u64,
}

/// Longest wait for the next message before a backlog read gives up.
const BACKLOG_IDLE: Duration = Duration::from_secs(10);

impl RabbitBacklog {
    pub async fn open(config: &Config, queue: &str) -> Result<Self, SetupError> {
        let uri = amqp_uri(&config.rabbitmq, config)?;
        let fail = |e: lapin::Error| SetupError::Refused(format!("rabbitmq {}: {e}", redact_url(&config.rabbitmq.url)));
        let props = ConnectionProperties::default().with_connection_name("pcbridge-replay".into());
        let connection = Connection::connect_uri(uri, props).await.map_err(fail)?;
        let channel = connection.create_channel().await.map_err(fail)?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map_err(|e| SetupError::Refused(format!("rabbitmq: queue {queue} cannot be read: {e}")))?;
        let size = u64::from(declared.message_count());
        // No prefetch limit: the messages left in place stay unacknowledged until the end,
        // and a limit would stall the read behind them.
        channel.basic_qos(0, BasicQosOptions::default()).await.map_err(fail)?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                "pcbridge-replay".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(fail)?;
        Ok(Self { connection, consumer, size, read: 0 })
    }
}

#[async_trait::async_trait]
impl crate::broker::Backlog for RabbitBacklog {
    fn size(&self) -> u64 {
        self.size
    }

    fn removes(&self) -> bool {
        true
    }

    async fn next(&mut self) -> Option<Delivery> {
        if self.read >= self.size {
            return None;
        }
        match tokio::time::timeout(BACKLOG_IDLE, self.consumer.next()).await {
            Ok(Some(Ok(d))) => {
                self.read += 1;
                Some(to_delivery(d))
            }
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "rabbitmq read failed; ending the read");
                None
            }
            Ok(None) => None,
            Err(_) => {
                tracing::warn!("no message for {BACKLOG_IDLE:?}; ending the read early");
                None
            }
        }
    }

    async fn remove(&mut self, token: AckToken) -> Result<(), SetupError> {
        let AckToken(AckInner::Rabbit(acker)) = token else { return Ok(()) };
        acker
            .ack(BasicAckOptions::default())
            .await
            .map(|_| ())
            .map_err(|e| SetupError::Unreachable(format!("rabbitmq ack: {e}")))
    }

    async fn finish(self: Box<Self>) {
        let _ = self.connection.close(200, "replay done".into()).await;
    }
}
