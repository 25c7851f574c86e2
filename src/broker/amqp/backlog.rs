//! [`AmqpBacklog`] reads a destination once for `pcbridge replay`: what it removes is
//! accepted, what it leaves is released when the read ends.

use super::connection::Endpoint;
use super::message::to_delivery;
use super::receiver::attach;
use crate::broker::{AckInner, AckToken, Backlog, Delivery, SetupError};
use crate::config::Config;
use fe2o3_amqp::{Receiver, connection::ConnectionHandle, link::delivery::DeliveryInfo, session::SessionHandle};
use fe2o3_amqp_types::{messaging::Body, primitives::Value};
use std::{collections::HashMap, time::Duration};
use tokio::sync::mpsc;

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
            let received = match tokio::time::timeout(BACKLOG_IDLE, receiver.recv::<Body<Value>>()).await {
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
