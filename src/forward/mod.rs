//! `pcbridge forward`: lets pcbridge be the one endpoint registered with Partner Center
//! that other receivers (CIPP, a CRM connector) share. It reads the raw destinations and
//! POSTs each verified event, byte for byte with Partner Center's signature headers, to
//! every configured receiver ([`send`]), so a receiver that verifies signatures still can.
//!
//! Each receiver is a pipeline of its own: its own copy of the raw destinations
//! ([`crate::broker::Subscription`]: a Kafka consumer group, RabbitMQ queues bound beside
//! the worker's), its own retries and its own dead letter. A slow or failing receiver
//! therefore holds back nothing but itself, and within a receiver one resource's
//! retries hold back only that resource's later events ([`crate::broker::ordered`]).
//! A delivery is acknowledged only after the receiver answered 2xx, or after the event
//! was dead-lettered for that receiver (`{prefix}forward.{receiver}.dead-letter`,
//! replayable with `pcbridge replay --receiver`): at least once, per receiver.

mod deliver;
pub mod send;

use crate::broker::{self, Consumer, Publisher, Subscription};
use crate::config::Config;
use crate::shutdown::CancellationToken;
use crate::telemetry::Metrics;
use deliver::Pipeline;
use std::{sync::Arc, time::Duration};
use tokio::net::TcpListener;

/// Why the forwarder could not start.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no receivers: set [forward.receivers.NAME] url = \"https://…\" (docs/forwarding.md)")]
    NoReceivers,
    #[error(transparent)]
    Receiver(#[from] send::ReceiverError),
    /// The publisher or a consumer could not connect; its kind says whether waiting can help.
    #[error(transparent)]
    Broker(#[from] broker::SetupError),
}

/// The subscription of receiver `name`: the raw destinations of the events it wants
/// (all of them when it names none), as group `{forward.group_id}.{name}`.
pub fn subscription(config: &Config, name: &str) -> Subscription {
    let d = config.broker.destinations();
    let wanted = config.forward.receivers.get(name).map(|r| r.events.clone()).unwrap_or_default();
    let sources = if wanted.is_empty() {
        d.all_raw()
    } else {
        let stems: Vec<&str> = wanted.iter().map(|e| d.stem(e.trim())).collect();
        d.sources(&stems)
    };
    Subscription { destination: d.forward(name), sources, group: format!("{}.{name}", config.forward.group_id) }
}

/// The one start-up path of the forwarder, for the CLI, `dev` and the tests alike:
/// serves the admin endpoints, connects the publisher (dead letters), creates each
/// receiver's destinations, subscribes, turns ready, then runs each receiver's pipeline
/// until `shutdown`, draining within `shutdown.drain_deadline_ms`.
pub async fn start(
    config: &Config,
    client_id: &str,
    admin_listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, ForwardError> {
    if config.forward.receivers.is_empty() {
        return Err(ForwardError::NoReceivers);
    }
    let start = async {
        let publisher = broker::connect(config, client_id, metrics.clone()).await?;
        let d = config.broker.destinations();
        let mut pipelines = Vec::new();
        for (name, r) in &config.forward.receivers {
            let receiver = send::Receiver::new(name, r, &config.forward)?;
            let subscription = subscription(config, name);
            let mut own = subscription.sources.clone();
            own.extend([subscription.destination.clone(), d.forward_dead_letter(name)]);
            if let Err(e) = publisher.ensure_destinations(&own).await {
                tracing::warn!(receiver = %name, error = %e, "could not create the receiver's destinations");
            }
            let consumer =
                broker::subscribe(&receiver_config(config), &subscription, client_id, metrics.clone()).await?;
            tracing::info!(receiver = %name, host = %receiver.host, sources = subscription.sources.len(), "receiver subscribed");
            pipelines.push(Arc::new(Pipeline::new(config, receiver, consumer, publisher.clone(), metrics.clone())));
        }
        Ok::<_, ForwardError>((publisher, pipelines))
    };
    let ready = |(publisher, pipelines): &(Arc<dyn Publisher>, Vec<Arc<Pipeline>>)| {
        let (publisher, stop) = (publisher.clone(), shutdown.clone());
        let consumers: Vec<Arc<dyn Consumer>> = pipelines.iter().map(|p| p.consumer.clone()).collect();
        Box::new(move || !stop.is_cancelled() && publisher.is_ready() && consumers.iter().all(|c| c.is_ready()))
            as Box<dyn Fn() -> bool + Send + Sync>
    };
    let (admin, (publisher, pipelines)) =
        crate::admin::Admin::serve_while(admin_listener, metrics.clone(), start, ready).await?;
    let (concurrency, drain) = (config.forward.concurrency, config.shutdown.drain_deadline());
    Ok(tokio::spawn(async move {
        tracing::info!(receivers = pipelines.len(), concurrency, "forwarder consuming");
        let runs = pipelines.iter().map(|p| p.clone().run(concurrency, shutdown.clone()));
        let work = futures::future::join_all(runs);
        tokio::pin!(work);
        if crate::shutdown::drain(&mut work, &shutdown, drain).await.is_none() {
            // Unfinished events stay unacknowledged and are delivered again.
            pipelines.iter().for_each(|p| p.abandon.cancel());
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut work).await;
        }
        for p in &pipelines {
            p.consumer.close().await;
        }
        publisher.close(Duration::from_secs(5).min(drain)).await;
        admin.stop().await;
        tracing::info!("forwarder stopped");
    }))
}

/// The consumer settings of a receiver: its concurrency, and a prefetch that covers the
/// events it holds (as the worker's does).
fn receiver_config(config: &Config) -> Config {
    let mut c = config.clone();
    c.worker.concurrency = config.forward.concurrency;
    c.worker.prefetch =
        u16::try_from(config.forward.concurrency * (1 + broker::ordered::QUEUE_DEPTH)).unwrap_or(u16::MAX);
    c
}
