//! RabbitMQ consumption: one connection, a channel per queue with a prefetch limit,
//! manual acknowledgements, and reconnection with backoff. The raw destinations' shards
//! are shared among the worker replicas ([`super::sharing`]); deliveries not
//! acknowledged when a channel closes are requeued by RabbitMQ and delivered again.

use super::sharing::{Ended, InFlight, Sharing};
use super::topology::{Topology, amqp_uri};
use crate::broker::reconnect_delays;
use crate::broker::{AckInner, AckToken, Consumer, Delivery, SetupError};
use crate::config::{Config, redact_url};
use crate::contract::cloud_event::{self, CloudEvent};
use bytes::Bytes;
use lapin::{Connection, ConnectionProperties, options::BasicAckOptions, types::AMQPValue, uri::AMQPUri};
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
    sharing: Sharing,
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
    /// Connects and declares the exchanges and every queue of `sources` (a first failure
    /// is reported, so a wrong URL shows at start-up), then consumes until closed,
    /// reconnecting as needed.
    pub async fn start(config: &Config, sources: Vec<String>, client_name: &str) -> Result<Arc<Self>, SetupError> {
        Self::start_with(config, Topology::new(config), sources, client_name).await
    }

    /// [`RabbitConsumer::start`] with a topology of its own (a reader's copy).
    pub async fn start_with(
        config: &Config,
        topology: Topology,
        sources: Vec<String>,
        client_name: &str,
    ) -> Result<Arc<Self>, SetupError> {
        let member_stem = format!("{}{}.member", config.broker.prefix, config.worker.group_id);
        let interval = Duration::from_millis(config.rabbitmq.rebalance_interval_ms.max(50));
        let settings = Settings {
            uri: amqp_uri(&config.rabbitmq, config)?,
            sharing: Sharing::new(topology, &sources, config.worker.prefetch, member_stem, interval),
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

/// Connects, and declares the exchanges and the queues.
async fn open(s: &Settings) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default().with_connection_name(s.client_name.clone().into());
    let connection = Connection::connect_uri(s.uri.clone(), props).await?;
    let channel = connection.create_channel().await?;
    s.sharing.topology.declare_exchanges(&channel).await?;
    let queues: Vec<String> = s.sharing.queues.iter().map(|(queue, _)| queue.clone()).collect();
    s.sharing.topology.declare_queues(&channel, &queues).await.map_err(|(_, e)| e)?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(connection)
}

/// Consumes on the connection; when it breaks, reconnects with jittered backoff.
async fn run(
    s: Settings,
    first: Connection,
    tx: mpsc::Sender<Delivery>,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut link = Some(first);
    loop {
        let connection = match link.take() {
            Some(c) => c,
            None => match reconnect(&s, &stop).await {
                Some(c) => c,
                None => return,
            },
        };
        ready.store(true, Ordering::Relaxed);
        let ended = s.sharing.run(&connection, &tx, &stop).await;
        ready.store(false, Ordering::Relaxed);
        match ended {
            Ended::Stopped => {
                let _ = connection.close(200, "shutting down".into()).await;
                return;
            }
            Ended::Broken => {
                tracing::warn!("rabbitmq consumer connection lost; reconnecting");
                let _ = connection.close(320, "reconnecting".into()).await;
            }
        }
    }
}

async fn reconnect(s: &Settings, stop: &CancellationToken) -> Option<Connection> {
    let mut delays = reconnect_delays(s.reconnect_max_delay);
    loop {
        match open(s).await {
            Ok(c) => {
                tracing::info!("rabbitmq consumer reconnected");
                return Some(c);
            }
            Err(e) => tracing::warn!(error = %e, "rabbitmq consumer reconnect failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(delays.next().unwrap_or(s.reconnect_max_delay)) => {}
        }
    }
}

/// A lapin delivery as a [`Delivery`] of its destination (a shard's raw destination).
/// `lease` is released when the delivery is acknowledged or dropped.
pub(super) fn to_delivery(d: lapin::message::Delivery, topology: &Topology, lease: Option<InFlight>) -> Delivery {
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
    let destination = topology.destination_of(d.routing_key.as_str()).to_string();
    // A raw message is published without them by default (`rabbitmq.raw_cloud_events`).
    let cloud_event = cloud_event.or_else(|| topology.derive_cloud_event(&destination, &headers, &d.data));
    let id = p.message_id().as_ref().map(|m| m.to_string()).unwrap_or_default();
    // The ordering key, as the publisher chose it: the ResourceUri, else the event id.
    let key = cloud_event.as_ref().and_then(|ce| ce.subject.clone()).unwrap_or(id);
    Delivery {
        destination,
        key,
        headers,
        cloud_event,
        body: Bytes::from(d.data),
        ack: AckToken(AckInner::Rabbit { acker: d.acker, lease }),
    }
}

#[async_trait::async_trait]
impl Consumer for RabbitConsumer {
    async fn recv(&self) -> Option<Delivery> {
        self.deliveries.lock().await.recv().await
    }

    async fn ack(&self, token: AckToken) {
        // The lease is held until the ack is written, so a shard is not handed over
        // while the ack of its last delivery is still on its way.
        let AckToken(AckInner::Rabbit { acker, lease }) = token else { return };
        if let Err(e) = acker.ack(BasicAckOptions::default()).await {
            // The channel is gone: RabbitMQ requeues the delivery; its output is already
            // published, so the redelivery is a duplicate (deduplicated by event id).
            tracing::warn!(error = %e, "ack failed; the delivery will be redelivered");
        }
        drop(lease);
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    async fn close(&self) {
        self.stop.cancel();
        self.deliveries.lock().await.close();
    }
}
