//! AMQP 1.0 consumption: one receiver link per source (each in its own session), in
//! peek-lock mode — deliveries stay unsettled until the worker acknowledges them, and
//! the link's credit is refilled only as they are settled, so at most `worker.prefetch`
//! are held per link. A broken connection is replaced with backoff; on shutdown the
//! unsettled deliveries are released, so the broker delivers them again at once.
//!
//! [`AmqpBacklog`] reads a destination once for `pcbridge replay`: what it removes is
//! accepted, what it leaves is released when the read ends.

use super::connection::{Endpoint, reconnect_delays, renewal_due};
use super::message::{Received, to_delivery};
use crate::broker::{AckInner, AckToken, Backlog, Consumer, Delivery, SetupError};
use crate::config::Config;
use fe2o3_amqp::{
    Receiver, Session,
    connection::ConnectionHandle,
    link::{delivery::DeliveryInfo, receiver::CreditMode},
    session::SessionHandle,
};
use fe2o3_amqp_types::{
    definitions::ReceiverSettleMode,
    messaging::{Source, TerminusDurability},
};
use std::{
    collections::HashMap,
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
        };
        let (tx, rx) = mpsc::channel(usize::from(config.worker.prefetch).max(16));
        let first = open(&settings, &tx).await.map_err(SetupError::Refused)?;
        let ready = Arc::new(AtomicBool::new(true));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(settings, first, tx, ready.clone(), stop.clone()));
        Ok(Arc::new(Self { deliveries: Mutex::new(rx), ready, stop, task: Mutex::new(Some(task)) }))
    }
}

/// A connection with a receiving task per source.
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
    let mut links = JoinSet::new();
    for (source, address) in s.sources.iter().zip(&addresses) {
        let (session, receiver) = attach(&mut connection, &format!("{}-{source}", s.client_name), address)
            .await
            .map_err(|e| format!("{}: {e}", s.endpoint.describe()))?;
        links.spawn(receive(source.clone(), session, receiver, tx.clone(), s.prefetch, stop.clone()));
    }
    Ok(Open { connection, links, expires, stop })
}

/// A session and a peek-lock receiver on `address`, with no credit yet.
pub(super) async fn attach(
    connection: &mut ConnectionHandle<()>,
    name: &str,
    address: &str,
) -> Result<(SessionHandle<()>, Receiver), String> {
    let mut session = Session::begin(connection).await.map_err(|e| format!("begin a session: {e}"))?;
    let receiver = Receiver::builder()
        .name(name)
        .source(Source::builder().address(address).durable(TerminusDurability::UnsettledState).build())
        .receiver_settle_mode(ReceiverSettleMode::First)
        .credit_mode(CreditMode::Manual)
        .auto_accept(false)
        .attach(&mut session)
        .await
        .map_err(|e| format!("attach a receiver to {address}: {e}"))?;
    Ok((session, receiver))
}

/// One source's receiving task: hands deliveries to the worker, accepts those the worker
/// acknowledges, and keeps the link's credit at `prefetch` minus what is unsettled.
async fn receive(
    source: String,
    mut session: SessionHandle<()>,
    mut receiver: Receiver,
    tx: mpsc::Sender<Delivery>,
    prefetch: u32,
    stop: CancellationToken,
) -> Result<(), String> {
    let (acks, mut acked) = mpsc::unbounded_channel::<u64>();
    let mut unsettled: HashMap<u64, DeliveryInfo> = HashMap::new();
    let mut next_id = 0u64;
    // Settled since credit was last granted: credit is topped up in batches, not per
    // message, to spare the broker a flow frame per delivery.
    let mut settled_since_flow = 0u32;
    let refill_at = (prefetch / 4).max(1);
    receiver.set_credit(prefetch).await.map_err(|e| format!("{source}: credit: {e}"))?;
    let result = loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break Ok(()),
            Some(id) = acked.recv() => {
                let Some(info) = unsettled.remove(&id) else { continue };
                if let Err(e) = receiver.accept(info).await {
                    break Err(format!("{source}: accept: {e}"));
                }
                settled_since_flow += 1;
                if settled_since_flow >= refill_at {
                    settled_since_flow = 0;
                    let credit = prefetch.saturating_sub(unsettled.len() as u32);
                    if let Err(e) = receiver.set_credit(credit).await {
                        break Err(format!("{source}: credit: {e}"));
                    }
                }
            }
            received = receiver.recv::<fe2o3_amqp_types::messaging::Body<fe2o3_amqp_types::primitives::Value>>() => {
                let delivery: Received = match received {
                    Ok(d) => d,
                    Err(e) => break Err(format!("{source}: receive: {e}")),
                };
                let (info, message) = delivery.into_parts();
                let id = next_id;
                next_id += 1;
                unsettled.insert(id, info);
                let token = AckToken(AckInner::Amqp { link: acks.clone(), id });
                if tx.send(to_delivery(&source, message, token)).await.is_err() {
                    break Ok(());
                }
            }
        }
    };
    // Nothing unacknowledged is lost: released, the broker delivers it again at once
    // (here after a reconnect, or to another replica). Acks that raced the stop are
    // accepted first.
    while let Ok(id) = acked.try_recv() {
        if let Some(info) = unsettled.remove(&id) {
            let _ = receiver.accept(info).await;
        }
    }
    for (_, info) in unsettled.drain() {
        let _ = receiver.release(info).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), receiver.detach()).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), session.end()).await;
    result
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

/// How long a backlog read waits for one more message before it takes the destination
/// as read: AMQP 1.0 has no portable way to ask a queue's depth.
const BACKLOG_IDLE: Duration = Duration::from_secs(2);

/// The messages a destination held when the read began, read into memory at open (so
/// their number is known) and left unsettled: removing accepts, finishing releases the
/// rest, which the broker keeps in place.
pub(crate) struct AmqpBacklog {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    receiver: Receiver,
    read: std::collections::VecDeque<(DeliveryInfo, Delivery)>,
    /// Deliveries handed out and not removed, released at the end.
    kept: HashMap<u64, DeliveryInfo>,
    size: u64,
}

impl AmqpBacklog {
    pub async fn open(config: &Config, destination: &str) -> Result<Self, SetupError> {
        let endpoint = Endpoint::from_config(config)?;
        let address = endpoint.address(destination);
        let mut connection = endpoint
            .connect(&format!("pcbridge-replay-{}", uuid::Uuid::new_v4()))
            .await
            .map_err(SetupError::Unreachable)?;
        endpoint.authorize(&mut connection, std::slice::from_ref(&address)).await.map_err(SetupError::Refused)?;
        let (session, mut receiver) = attach(&mut connection, "pcbridge-replay", &address)
            .await
            .map_err(|e| SetupError::Refused(format!("{}: {destination} cannot be read: {e}", endpoint.describe())))?;
        let (acks, _) = mpsc::unbounded_channel();
        let mut read = std::collections::VecDeque::new();
        receiver.set_credit(500).await.map_err(|e| SetupError::Refused(format!("amqp credit: {e}")))?;
        let mut since_credit = 0;
        loop {
            let received = match tokio::time::timeout(
                BACKLOG_IDLE,
                receiver.recv::<fe2o3_amqp_types::messaging::Body<fe2o3_amqp_types::primitives::Value>>(),
            )
            .await
            {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => return Err(SetupError::Refused(format!("amqp read of {destination}: {e}"))),
                Err(_) => break,
            };
            let (info, message) = received.into_parts();
            let id = read.len() as u64;
            read.push_back((
                info,
                to_delivery(destination, message, AckToken(AckInner::Amqp { link: acks.clone(), id })),
            ));
            since_credit += 1;
            if since_credit == 500 {
                since_credit = 0;
                receiver.set_credit(500).await.map_err(|e| SetupError::Refused(format!("amqp credit: {e}")))?;
            }
        }
        let size = read.len() as u64;
        Ok(Self { connection, session, receiver, read, kept: HashMap::new(), size })
    }
}

#[async_trait::async_trait]
impl Backlog for AmqpBacklog {
    fn size(&self) -> u64 {
        self.size
    }

    fn removes(&self) -> bool {
        true
    }

    async fn next(&mut self) -> Option<Delivery> {
        let (info, delivery) = self.read.pop_front()?;
        let AckToken(AckInner::Amqp { id, .. }) = &delivery.ack else { return Some(delivery) };
        self.kept.insert(*id, info);
        Some(delivery)
    }

    async fn remove(&mut self, token: AckToken) -> Result<(), SetupError> {
        let AckToken(AckInner::Amqp { id, .. }) = token else { return Ok(()) };
        let Some(info) = self.kept.remove(&id) else { return Ok(()) };
        self.receiver.accept(info).await.map_err(|e| SetupError::Unreachable(format!("amqp accept: {e}")))
    }

    async fn finish(mut self: Box<Self>) {
        let kept: Vec<DeliveryInfo> =
            self.kept.drain().map(|(_, i)| i).chain(self.read.drain(..).map(|(i, _)| i)).collect();
        for info in kept {
            let _ = self.receiver.release(info).await;
        }
        let Self { mut connection, mut session, receiver, .. } = *self;
        let _ = tokio::time::timeout(Duration::from_secs(2), receiver.detach()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), session.end()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), connection.close()).await;
    }
}
