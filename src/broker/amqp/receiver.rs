//! One source's receiver links, in peek-lock mode: deliveries stay unsettled until the
//! worker acknowledges them, and a link's credit is refilled only as they are settled, so
//! it holds at most `worker.prefetch`. On stop, what the worker did not acknowledge is
//! released, so the broker delivers it again at once.
//!
//! A Service Bus entity that requires sessions (`amqp.sessions`) is read by several links
//! at once, each locking one session — one ordering key, one resource — at a time: the
//! broker gives each link the messages of its session only, in order, and no other
//! receiver (of this replica or another) gets that session meanwhile. A link idle for
//! `amqp.session_idle_ms` with nothing unsettled lets its session go and takes the next.

use super::message::{Received, to_delivery};
use crate::broker::{AckInner, AckToken, Delivery};
use fe2o3_amqp::{
    Receiver, Session,
    connection::ConnectionHandle,
    link::{delivery::DeliveryInfo, receiver::CreditMode},
    session::SessionHandle,
};
use fe2o3_amqp_types::{
    definitions::ReceiverSettleMode,
    messaging::{Body, Source, TerminusDurability},
    primitives::{Symbol, Value},
};
use serde_amqp::{described::Described, descriptor::Descriptor};
use std::{collections::HashMap, time::Duration};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Service Bus's session filter: with a null value, the broker locks the next session
/// that has messages for the link.
const SESSION_FILTER: &str = "com.microsoft:session-filter";
const SESSION_FILTER_CODE: u64 = 0x0000_0137_0000_000C;

/// How long a session link waits before attaching again after the broker refused (no
/// session available, or a transient error).
const SESSION_RETRY: Duration = Duration::from_secs(1);

/// How long a session link that withdrew its credit waits for deliveries already on
/// their way before it detaches (at least `amqp.session_idle_ms`).
const DRAIN_GRACE: Duration = Duration::from_millis(250);

/// Where a receiving task hands its deliveries, and how many it may hold.
#[derive(Clone)]
pub(super) struct Sink {
    pub tx: mpsc::Sender<Delivery>,
    /// Credit of each link: unsettled deliveries it may hold.
    pub prefetch: u32,
    pub stop: CancellationToken,
}

/// A session and a peek-lock receiver on `address`, with no credit yet.
pub(super) async fn attach(
    connection: &mut ConnectionHandle<()>,
    name: &str,
    address: &str,
) -> Result<(SessionHandle<()>, Receiver), String> {
    let mut session = Session::begin(connection).await.map_err(|e| format!("begin a session: {e}"))?;
    let receiver = attach_link(&mut session, name, address, false).await?;
    Ok((session, receiver))
}

/// A peek-lock receiver on `address` in `session`; `session_filter`: locking the next
/// available Service Bus session.
async fn attach_link(
    session: &mut SessionHandle<()>,
    name: &str,
    address: &str,
    session_filter: bool,
) -> Result<Receiver, String> {
    let mut source = Source::builder().address(address).durable(TerminusDurability::UnsettledState);
    if session_filter {
        let any = Described { descriptor: Descriptor::Code(SESSION_FILTER_CODE), value: Value::Null };
        source = source.add_to_filter(Symbol::from(SESSION_FILTER), Some(any));
    }
    Receiver::builder()
        .name(name)
        .source(source.build())
        .receiver_settle_mode(ReceiverSettleMode::First)
        .credit_mode(CreditMode::Manual)
        .auto_accept(false)
        .attach(session)
        .await
        .map_err(|e| format!("attach a receiver to {address}: {e}"))
}

/// One receiver on a source, until stopped or failed.
pub(super) async fn receive(
    source: String,
    mut session: SessionHandle<()>,
    mut receiver: Receiver,
    sink: Sink,
) -> Result<(), String> {
    let result = pump(&source, &mut receiver, &sink, None).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), receiver.detach()).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), session.end()).await;
    result.map(|_| ())
}

/// One session link on a session-enabled source: locks a session, reads it until it is
/// idle, lets it go, locks the next; until stopped, or until its AMQP session is gone.
pub(super) async fn receive_sessions(
    source: String,
    address: String,
    name: String,
    mut session: SessionHandle<()>,
    sink: Sink,
    idle: Duration,
) -> Result<(), String> {
    let mut attached = 0u64;
    let result = loop {
        if sink.stop.is_cancelled() {
            break Ok(());
        }
        attached += 1;
        match attach_link(&mut session, &format!("{name}-{attached}"), &address, true).await {
            Ok(mut receiver) => {
                let pumped = pump(&source, &mut receiver, &sink, Some(idle)).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), receiver.detach()).await;
                match pumped {
                    Ok(Pumped::Idle) => continue,
                    Ok(Pumped::Stopped) => break Ok(()),
                    Err(e) => break Err(e),
                }
            }
            // No session has messages (Service Bus answers after its wait), or a
            // transient refusal: try again, unless the AMQP session itself ended.
            Err(e) if session.is_ended() => break Err(e),
            Err(e) => {
                tracing::debug!(error = %e, %source, "no session locked; attaching again");
                tokio::select! {
                    () = sink.stop.cancelled() => break Ok(()),
                    () = tokio::time::sleep(SESSION_RETRY) => {}
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), session.end()).await;
    result
}

/// Why [`pump`] returned without an error.
enum Pumped {
    /// Stopped, or the worker stopped taking deliveries.
    Stopped,
    /// Nothing received for the idle time and nothing unsettled (session links only).
    Idle,
}

/// Hands deliveries to the worker, accepts those the worker acknowledges, and keeps the
/// link's credit at `prefetch` minus what is unsettled. On the way out, acknowledgements
/// that raced the stop are accepted and everything else unsettled is released.
async fn pump(source: &str, receiver: &mut Receiver, sink: &Sink, idle: Option<Duration>) -> Result<Pumped, String> {
    let prefetch = sink.prefetch;
    let (acks, mut acked) = mpsc::unbounded_channel::<u64>();
    let mut unsettled: HashMap<u64, DeliveryInfo> = HashMap::new();
    let mut next_id = 0u64;
    // Settled since credit was last granted: credit is topped up in batches, not per
    // message, to spare the broker a flow frame per delivery.
    let mut settled_since_flow = 0u32;
    let refill_at = (prefetch / 4).max(1);
    receiver.set_credit(prefetch).await.map_err(|e| format!("{source}: credit: {e}"))?;
    // Session links only: the link went idle and its credit was withdrawn; what the
    // broker had already sent still arrives within the grace before the link detaches.
    let mut draining = false;
    let result = loop {
        let idle_for = idle.filter(|_| unsettled.is_empty()).map(|d| if draining { d.max(DRAIN_GRACE) } else { d });
        tokio::select! {
            biased;
            () = sink.stop.cancelled() => break Ok(Pumped::Stopped),
            Some(id) = acked.recv() => {
                let Some(info) = unsettled.remove(&id) else { continue };
                if let Err(e) = receiver.accept(info).await {
                    break Err(format!("{source}: accept: {e}"));
                }
                settled_since_flow += 1;
                if settled_since_flow >= refill_at && !draining {
                    settled_since_flow = 0;
                    let credit = prefetch.saturating_sub(unsettled.len() as u32);
                    if let Err(e) = receiver.set_credit(credit).await {
                        break Err(format!("{source}: credit: {e}"));
                    }
                }
            }
            received = receiver.recv::<Body<Value>>() => {
                let delivery: Received = match received {
                    Ok(d) => d,
                    Err(e) => break Err(format!("{source}: receive: {e}")),
                };
                let (info, message) = delivery.into_parts();
                let id = next_id;
                next_id += 1;
                unsettled.insert(id, info);
                let token = AckToken(AckInner::Amqp { link: acks.clone(), id });
                if sink.tx.send(to_delivery(source, message, token)).await.is_err() {
                    break Ok(Pumped::Stopped);
                }
                if draining {
                    // Not idle after all: keep the session, and the credit.
                    draining = false;
                    settled_since_flow = 0;
                    let credit = prefetch.saturating_sub(unsettled.len() as u32);
                    if let Err(e) = receiver.set_credit(credit).await {
                        break Err(format!("{source}: credit: {e}"));
                    }
                }
            }
            () = async { if let Some(d) = idle_for { tokio::time::sleep(d).await } else { std::future::pending().await } } => {
                if draining {
                    break Ok(Pumped::Idle);
                }
                // Withdraw the credit before letting the session go. A message the
                // broker sent meanwhile would otherwise reach a link about to detach,
                // unsettled: Service Bus redelivers it only when its lock expires, and
                // RabbitMQ's AMQP 1.0 plugin not before the AMQP session ends (the
                // session outlives its links here), so it sat there unseen.
                if let Err(e) = receiver.set_credit(0).await {
                    break Err(format!("{source}: credit: {e}"));
                }
                draining = true;
            }
        }
    };
    // Nothing unacknowledged is lost: released, the broker delivers it again at once
    // (here after a reconnect, or to another replica).
    while let Ok(id) = acked.try_recv() {
        if let Some(info) = unsettled.remove(&id) {
            let _ = receiver.accept(info).await;
        }
    }
    for (_, info) in unsettled.drain() {
        let _ = receiver.release(info).await;
    }
    result
}
