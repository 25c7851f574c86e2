//! AMQP 1.0 consumption: a connection with the receiver links of every source (each in
//! an AMQP session of its own, [`super::receiver`]), replaced with backoff when a link
//! fails or the connection closes, and the `$cbs` tokens renewed before they expire.

use super::connection::{Endpoint, renewal_due};
use super::receiver::{Sink, attach, receive, receive_sessions};
use crate::broker::reconnect_delays;
use crate::broker::{AckInner, AckToken, Consumer, Delivery, SetupError};
use crate::config::Config;
use fe2o3_amqp::{Session, connection::ConnectionHandle};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::{
    sync::{Mutex, mpsc},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

/// The AMQP 1.0 side of [`Consumer`].
pub(crate) struct AmqpConsumer {
    deliveries: Mutex<mpsc::Receiver<Delivery>>,
    ready: Arc<AtomicBool>,
    /// Stops the receiving tasks, which then release what was not acknowledged and close
    /// the connection.
    stop: CancellationToken,
    /// The consuming task, awaited by `close` so the releases reach the broker.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Settings {
    endpoint: Endpoint,
    sources: Vec<String>,
    /// Credit of each link: unsettled deliveries it may hold.
    prefetch: u32,
    client_name: String,
    /// Session-enabled sources (`amqp.sessions`): links per source, each locking one
    /// session at a time, and how long an idle one keeps its session.
    sessions: Option<(u16, Duration)>,
}

impl AmqpConsumer {
    /// Connects and attaches a receiver to every source (a first failure is reported, so
    /// a wrong URL or a missing entity shows at start-up), then consumes until closed,
    /// reconnecting as needed.
    pub async fn start(config: &Config, sources: Vec<String>, client_name: &str) -> Result<Arc<Self>, SetupError> {
        let settings = Settings {
            endpoint: Endpoint::from_config(config)?,
            sources,
            prefetch: u32::from(config.worker.prefetch).max(1),
            client_name: client_name.to_string(),
            sessions: config.amqp.sessions.then(|| {
                (config.amqp.session_links.max(1), Duration::from_millis(config.amqp.session_idle_ms.max(10)))
            }),
        };
        let (tx, rx) = mpsc::channel(usize::from(config.worker.prefetch).max(16));
        let first = open(&settings, &tx).await.map_err(SetupError::Refused)?;
        let ready = Arc::new(AtomicBool::new(true));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(settings, first, tx, ready.clone(), stop.clone()));
        Ok(Arc::new(Self { deliveries: Mutex::new(rx), ready, stop, task: Mutex::new(Some(task)) }))
    }
}

/// A connection with the receiving tasks of every source.
struct Open {
    connection: ConnectionHandle<()>,
    links: JoinSet<Result<(), String>>,
    /// When the `$cbs` tokens of the sources expire (Entra ID sign-in).
    expires: Option<std::time::SystemTime>,
    /// Cancels this connection's receiving tasks.
    stop: CancellationToken,
}

async fn open(s: &Settings, tx: &mpsc::Sender<Delivery>) -> Result<Open, String> {
    let mut connection = s.endpoint.connect(&format!("{}-{}", s.client_name, uuid::Uuid::new_v4())).await?;
    let addresses: Vec<String> = s.sources.iter().map(|d| s.endpoint.address(d)).collect();
    let expires = s.endpoint.authorize(&mut connection, &addresses).await?;
    let stop = CancellationToken::new();
    let sink = Sink { tx: tx.clone(), prefetch: s.prefetch, stop: stop.clone() };
    let failed = |e| format!("{}: {e}", s.endpoint.describe());
    let mut links = JoinSet::new();
    for (source, address) in s.sources.iter().zip(&addresses) {
        let name = format!("{}-{source}", s.client_name);
        match s.sessions {
            None => {
                let (session, receiver) = attach(&mut connection, &name, address).await.map_err(failed)?;
                links.spawn(receive(source.clone(), session, receiver, sink.clone()));
            }
            Some((count, idle)) => {
                for i in 0..count {
                    let session = Session::begin(&mut connection).await.map_err(|e| failed(e.to_string()))?;
                    let (source, address, name) = (source.clone(), address.clone(), format!("{name}-{i}"));
                    links.spawn(receive_sessions(source, address, name, session, sink.clone(), idle));
                }
            }
        }
    }
    Ok(Open { connection, links, expires, stop })
}

/// Receives until stopped; when a link fails or the connection closes, closes the
/// connection (the broker returns its unsettled deliveries) and opens another with
/// jittered backoff.
async fn run(s: Settings, first: Open, tx: mpsc::Sender<Delivery>, ready: Arc<AtomicBool>, stop: CancellationToken) {
    let mut current = Some(first);
    loop {
        let mut open_now = match current.take() {
            Some(o) => o,
            None => match reconnect(&s, &tx, &stop).await {
                Some(o) => o,
                None => return,
            },
        };
        ready.store(true, Ordering::Relaxed);
        let stopping = loop {
            let renew = renewal_due(open_now.expires);
            tokio::select! {
                () = stop.cancelled() => break true,
                ended = open_now.links.join_next() => {
                    match ended {
                        Some(Ok(Err(e))) => tracing::warn!(error = %e, "amqp receiver failed; reconnecting"),
                        _ => tracing::warn!("amqp receiver ended; reconnecting"),
                    }
                    break false;
                }
                () = async { if let Some(at) = renew { tokio::time::sleep_until(at).await } else { std::future::pending().await } } => {
                    let addresses: Vec<String> = s.sources.iter().map(|d| s.endpoint.address(d)).collect();
                    match s.endpoint.authorize(&mut open_now.connection, &addresses).await {
                        Ok(expires) => open_now.expires = expires,
                        Err(e) => { tracing::warn!(error = %e, "amqp token renewal failed; reconnecting"); break false; }
                    }
                }
            }
        };
        ready.store(false, Ordering::Relaxed);
        open_now.stop.cancel();
        let links = async { while open_now.links.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(5), links).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), open_now.connection.close()).await;
        if stopping {
            return;
        }
    }
}

async fn reconnect(s: &Settings, tx: &mpsc::Sender<Delivery>, stop: &CancellationToken) -> Option<Open> {
    let mut delays = reconnect_delays(s.endpoint.reconnect_max_delay);
    loop {
        match open(s, tx).await {
            Ok(o) => {
                tracing::info!("amqp consumer reconnected");
                return Some(o);
            }
            Err(e) => tracing::warn!(error = %e, "amqp consumer reconnect failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(delays.next().unwrap_or(s.endpoint.reconnect_max_delay)) => {}
        }
    }
}

#[async_trait::async_trait]
impl Consumer for AmqpConsumer {
    async fn recv(&self) -> Option<Delivery> {
        self.deliveries.lock().await.recv().await
    }

    async fn ack(&self, token: AckToken) {
        let AckToken(AckInner::Amqp { link, id }) = token else { return };
        if link.send(id).is_err() {
            // The link is gone: the broker delivers the message again; its output is
            // already published, so the redelivery is a duplicate (deduplicated by id).
            tracing::warn!("ack after the receiver link closed; the delivery will be redelivered");
        }
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    async fn close(&self) {
        self.stop.cancel();
        self.deliveries.lock().await.close();
        if let Some(task) = self.task.lock().await.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}
