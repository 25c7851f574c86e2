//! [`RabbitBacklog`] drains a queue once for `pcbridge replay`: what it removes is
//! acknowledged, what it leaves is requeued when its channel closes.

use super::consumer::to_delivery;
use super::topology::{Topology, amqp_uri};
use crate::broker::{AckInner, AckToken, Delivery, SetupError};
use crate::config::{Config, redact_url};
use futures::StreamExt;
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions},
    types::FieldTable,
};
use std::time::Duration;

/// The messages a queue held when the read began. Removing acknowledges; the rest stay
/// unacknowledged until [`Backlog::finish`](crate::broker::Backlog::finish) closes the channel,
/// which puts them back in the queue in their order (none is redelivered to this read).
pub(crate) struct RabbitBacklog {
    connection: Connection,
    topology: Topology,
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
        Ok(Self { connection, topology: Topology::new(config), consumer, size, read: 0 })
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
                Some(to_delivery(d, &self.topology, None))
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
        let AckToken(AckInner::Rabbit { acker, .. }) = token else { return Ok(()) };
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
