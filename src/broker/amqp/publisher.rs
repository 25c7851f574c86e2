//! The AMQP 1.0 publisher: one connection, one sender link per destination (each in its
//! own session, so a broker that ends a session over one address leaves the others
//! alone), every message durable and sent **unsettled**, and a publish reported
//! successful only on the broker's `accepted` outcome.
//!
//! Many messages are in flight on a link at once (the link's task pipelines transfers
//! and waits for their dispositions together), which is what makes settlement cheap. A
//! supervisor replaces the connection with backoff when it closes or stops settling: a
//! connection the broker dropped without a close can leave transfers unanswered forever,
//! so a disposition that does not come within `ingress.publish_timeout_ms` condemns the
//! connection too.

use super::connection::{Endpoint, renewal_due};
use super::message::to_sendable;
use crate::broker::reconnect_delays;
use crate::broker::{Message, PublishError, Publisher, SetupError};
use crate::config::Config;
use crate::telemetry::Metrics;
use fe2o3_amqp::{Sendable, Sender, Session, connection::ConnectionHandle, link::SendError, session::SessionHandle};
use fe2o3_amqp_types::{
    definitions::SenderSettleMode,
    messaging::{Data, Outcome, Target, TerminusDurability},
};
use futures::{StreamExt, stream::FuturesUnordered};
use std::{
    collections::HashMap,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};
use tokio::sync::{Mutex, Notify, RwLock, mpsc, oneshot};
use tokio_util::task::AbortOnDropHandle;

/// Transfers awaiting their disposition on one link, at most. Past it, publishes queue
/// in the link's channel.
const MAX_IN_FLIGHT: usize = 256;

/// One message for a link's task, and where its outcome goes.
struct Job {
    message: Sendable<Data>,
    reply: oneshot::Sender<Result<(), PublishError>>,
}

/// A live connection and the sender links opened on it so far.
struct Link {
    /// Held while a session or the `$cbs` exchange is begun on it.
    connection: Mutex<ConnectionHandle<()>>,
    /// Destination → its link's task. A link whose task ended is opened again.
    senders: Mutex<HashMap<String, LinkTask>>,
    /// The addresses with an Entra ID token on `$cbs`, and when the tokens expire.
    authorized: std::sync::Mutex<(Vec<String>, Option<SystemTime>)>,
    /// Set when a link sees the connection fail; the supervisor replaces it.
    failed: AtomicBool,
}

/// A sender link's task: the queue of its messages; dropping it aborts the task.
struct LinkTask {
    jobs: mpsc::Sender<Job>,
    task: AbortOnDropHandle<()>,
}

/// The AMQP 1.0 side of [`Publisher`].
pub(crate) struct AmqpPublisher {
    endpoint: Endpoint,
    client_name: String,
    /// Longest wait for a disposition before the publish fails and the connection is
    /// condemned (`ingress.publish_timeout_ms`).
    settle_timeout: Duration,
    /// The current connection; `None` while disconnected (publishes then fail fast with
    /// [`PublishError::Unavailable`], so the ingress answers 503 at once).
    link: RwLock<Option<Arc<Link>>>,
    ready: AtomicBool,
    /// Set by `close`: the supervisor stops instead of reconnecting.
    closed: AtomicBool,
    /// Wakes the supervisor when a publish notices the connection is broken.
    broken: Notify,
    metrics: Arc<Metrics>,
}

impl AmqpPublisher {
    /// Connects (failing if the first connection fails, so a wrong URL or sign-in is
    /// reported at start-up) and starts the reconnecting supervisor.
    pub async fn connect(config: &Config, client_name: &str, metrics: Arc<Metrics>) -> Result<Arc<Self>, SetupError> {
        let endpoint = Endpoint::from_config(config)?;
        let this = Arc::new(Self {
            endpoint,
            client_name: client_name.to_string(),
            settle_timeout: config.ingress.publish_timeout(),
            link: RwLock::new(None),
            ready: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            broken: Notify::new(),
            metrics,
        });
        let link = this.open().await.map_err(SetupError::Unreachable)?;
        *this.link.write().await = Some(link);
        this.set_ready(true);
        tokio::spawn(supervise(Arc::downgrade(&this)));
        Ok(this)
    }

    async fn open(&self) -> Result<Arc<Link>, String> {
        let connection = self.endpoint.connect(&format!("{}-{}", self.client_name, uuid::Uuid::new_v4())).await?;
        Ok(Arc::new(Link {
            connection: Mutex::new(connection),
            senders: Mutex::new(HashMap::new()),
            authorized: std::sync::Mutex::new((Vec::new(), None)),
            failed: AtomicBool::new(false),
        }))
    }

    fn set_ready(&self, ok: bool) {
        self.ready.store(ok, Ordering::Relaxed);
        self.metrics.broker_ready.with_label_values(&["amqp"]).set(i64::from(ok));
    }

    async fn current(&self) -> Result<Arc<Link>, PublishError> {
        match &*self.link.read().await {
            Some(link) if !link.failed.load(Ordering::Relaxed) => Ok(link.clone()),
            _ => {
                self.broken.notify_one();
                Err(PublishError::Unavailable("not connected to the amqp broker".into()))
            }
        }
    }

    /// The queue of `destination`'s link, attaching the link first if needed.
    async fn jobs(&self, link: &Arc<Link>, destination: &str) -> Result<mpsc::Sender<Job>, String> {
        let mut senders = link.senders.lock().await;
        if let Some(s) = senders.get(destination)
            && !s.jobs.is_closed()
        {
            return Ok(s.jobs.clone());
        }
        let address = self.endpoint.address(destination);
        let (session, sender) = {
            let mut connection = link.connection.lock().await;
            let expires = self.endpoint.authorize(&mut connection, std::slice::from_ref(&address)).await?;
            if expires.is_some() {
                let mut authorized = link.authorized.lock().unwrap_or_else(|p| p.into_inner());
                authorized.0.push(address.clone());
                authorized.1 = expires;
            }
            let mut session = Session::begin(&mut connection).await.map_err(|e| format!("begin a session: {e}"))?;
            let sender = Sender::builder()
                .name(format!("{}-{destination}", self.client_name))
                .target(Target::builder().address(address.clone()).durable(TerminusDurability::UnsettledState).build())
                .sender_settle_mode(SenderSettleMode::Unsettled)
                .attach(&mut session)
                .await
                .map_err(|e| format!("attach a sender to {address}: {e}"))?;
            (session, sender)
        };
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
        let task = tokio::spawn(send_loop(session, sender, rx, Arc::downgrade(link)));
        senders.insert(destination.to_string(), LinkTask { jobs: tx.clone(), task: AbortOnDropHandle::new(task) });
        Ok(tx)
    }

    async fn publish_once(&self, m: &Message) -> Result<(), PublishError> {
        let link = self.current().await?;
        let jobs = self.jobs(&link, &m.destination).await.map_err(|e| {
            if link.connection.try_lock().is_ok_and(|c| c.is_closed()) {
                link.failed.store(true, Ordering::Relaxed);
                self.broken.notify_one();
            }
            PublishError::Unavailable(format!("amqp: {e}"))
        })?;
        let (reply, outcome) = oneshot::channel();
        jobs.send(Job { message: to_sendable(m), reply })
            .await
            .map_err(|_| PublishError::Unavailable("amqp: the sender link closed".into()))?;
        match tokio::time::timeout(self.settle_timeout, outcome).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(PublishError::Unavailable("amqp: the sender link closed".into())),
            Err(_) => {
                // No disposition: a connection the broker dropped silently never answers.
                link.failed.store(true, Ordering::Relaxed);
                self.broken.notify_one();
                Err(PublishError::Timeout(self.settle_timeout))
            }
        }
    }
}

/// A link's task: takes messages off its queue, sends each unsettled, and replies with
/// its outcome once the broker's disposition arrives; many transfers are in flight.
async fn send_loop(
    mut session: SessionHandle<()>,
    mut sender: Sender,
    mut jobs: mpsc::Receiver<Job>,
    link: Weak<Link>,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            job = jobs.recv(), if open && in_flight.len() < MAX_IN_FLIGHT => {
                let Some(Job { message, reply }) = job else { open = false; continue };
                match sender.send_batchable(message).await {
                    Ok(fut) => in_flight.push(async move {
                        let _ = reply.send(outcome(fut.await));
                    }),
                    Err(e) => {
                        let _ = reply.send(Err(PublishError::Unavailable(format!("amqp send: {e}"))));
                        // The link is unusable: later publishes open another.
                        if let Some(link) = link.upgrade()
                            && link.connection.try_lock().is_ok_and(|c| c.is_closed())
                        {
                            link.failed.store(true, Ordering::Relaxed);
                        }
                        break;
                    }
                }
            }
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            else => break,
        }
    }
    // Replies of transfers still in flight come, or their senders drop with the task.
    while in_flight.next().await.is_some() {}
    // Bounded: a broker that leaves the detach or the end unanswered must not hold the
    // task (fe2o3's session task spins while it waits for the broker's end).
    let _ = tokio::time::timeout(Duration::from_secs(2), sender.detach()).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), session.end()).await;
}

/// A disposition as a publish result: only `accepted` means stored.
fn outcome(result: Result<Outcome, SendError>) -> Result<(), PublishError> {
    match result {
        Ok(Outcome::Accepted(_)) => Ok(()),
        Ok(Outcome::Rejected(r)) => Err(PublishError::Rejected(format!("rejected by the amqp broker: {:?}", r.error))),
        Ok(Outcome::Released(_)) => Err(PublishError::Unavailable("released by the amqp broker".into())),
        Ok(Outcome::Modified(_)) => Err(PublishError::Unavailable("modified by the amqp broker".into())),
        Err(e) => Err(PublishError::Unavailable(format!("amqp: {e}"))),
    }
}

/// Replaces the connection with backoff whenever it closes or a link condemned it, and
/// renews the `$cbs` tokens before they expire; ends when the publisher is dropped.
async fn supervise(weak: Weak<AmqpPublisher>) {
    loop {
        // Wait until the connection is broken, checking now and then.
        loop {
            let Some(this) = weak.upgrade() else { return };
            let Some(link) = this.link.read().await.clone() else { break };
            let closed = link.connection.try_lock().is_ok_and(|c| c.is_closed());
            if closed || link.failed.load(Ordering::Relaxed) {
                break;
            }
            let due = {
                let authorized = link.authorized.lock().unwrap_or_else(|p| p.into_inner());
                renewal_due(authorized.1).map(|due| (due, authorized.0.clone()))
            };
            if let Some((due, addresses)) = due
                && due <= tokio::time::Instant::now()
            {
                let mut connection = link.connection.lock().await;
                match this.endpoint.authorize(&mut connection, &addresses).await {
                    Ok(expires) => link.authorized.lock().unwrap_or_else(|p| p.into_inner()).1 = expires,
                    Err(e) => {
                        tracing::warn!(error = %e, "amqp token renewal failed; reconnecting");
                        link.failed.store(true, Ordering::Relaxed);
                    }
                }
                continue;
            }
            drop(link);
            let _ = tokio::time::timeout(Duration::from_millis(500), this.broken.notified()).await;
        }
        let Some(this) = weak.upgrade() else { return };
        if this.closed.load(Ordering::Relaxed) {
            return;
        }
        this.set_ready(false);
        if let Some(old) = this.link.write().await.take() {
            // Dropping the link aborts its tasks; their pending publishes fail.
            let mut connection = old.connection.lock().await;
            let _ = tokio::time::timeout(Duration::from_secs(2), connection.close()).await;
        }
        tracing::warn!("amqp connection lost; reconnecting");
        let max_delay = this.endpoint.reconnect_max_delay;
        drop(this);
        let mut delays = reconnect_delays(max_delay);
        loop {
            let Some(this) = weak.upgrade() else { return };
            match this.open().await {
                Ok(link) => {
                    *this.link.write().await = Some(link);
                    this.set_ready(true);
                    tracing::info!("amqp reconnected");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "amqp reconnect failed");
                    drop(this);
                    tokio::time::sleep(delays.next().unwrap_or(max_delay)).await;
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Publisher for AmqpPublisher {
    fn kind(&self) -> &'static str {
        "amqp"
    }

    /// Entities are created by the operator (Service Bus creates them through Azure):
    /// this attaches a sender link to each, which fails for an address the broker does
    /// not have.
    async fn ensure_destinations(&self, names: &[String]) -> Result<(), SetupError> {
        let link = self.current().await.map_err(|e| SetupError::Unreachable(e.to_string()))?;
        for name in names {
            self.jobs(&link, name).await.map_err(|e| {
                SetupError::Refused(format!(
                    "{}: {e} (create the entity {name}, or check amqp.address)",
                    self.endpoint.describe()
                ))
            })?;
        }
        Ok(())
    }

    async fn publish(&self, m: &Message) -> Result<(), PublishError> {
        let started = Instant::now();
        let result = self.publish_once(m).await;
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics.publish_duration.with_label_values(&["amqp", label]).observe(started.elapsed().as_secs_f64());
        result
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    async fn close(&self, deadline: Duration) {
        self.closed.store(true, Ordering::Relaxed);
        let Some(link) = self.link.write().await.take() else { return };
        self.set_ready(false);
        // Closing the queues lets each link's task finish its in-flight transfers.
        let tasks: Vec<LinkTask> = link.senders.lock().await.drain().map(|(_, s)| s).collect();
        let finish = async {
            for LinkTask { jobs, task } in tasks {
                drop(jobs);
                let _ = task.await;
            }
        };
        let _ = tokio::time::timeout(deadline, finish).await;
        let mut connection = link.connection.lock().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), connection.close()).await;
    }
}
