//! AMQP 1.0 through fe2o3-amqp — Azure Service Bus, or any AMQP 1.0 broker (RabbitMQ's
//! AMQP 1.0 plugin in the tests): an address per destination from `amqp.address`
//! ([`connection`]), unsettled durable transfers settled by the broker's `accepted`
//! ([`publisher`]), peek-lock receivers ([`receiver`], [`consumer`]), one-off reads for
//! `replay` ([`backlog`]), and the message mapping ([`message`]). Nothing here is Service-Bus-only but the `$cbs` token for the Entra ID
//! sign-in. Entities are created by the operator; [`missing`] says which are absent.

mod backlog;
mod connection;
mod consumer;
mod message;
mod publisher;
mod receiver;

pub(crate) use backlog::AmqpBacklog;
pub(crate) use consumer::AmqpConsumer;
pub(crate) use publisher::AmqpPublisher;

use crate::broker::SetupError;
use crate::config::Config;
use connection::Endpoint;
use std::time::Duration;

/// Connects and signs in: proves the URL and the credentials work.
pub(crate) async fn probe(config: &Config) -> Result<String, SetupError> {
    let endpoint = Endpoint::from_config(config)?;
    let mut connection = endpoint.connect("pcbridge-check").await.map_err(SetupError::Unreachable)?;
    let _ = tokio::time::timeout(Duration::from_secs(2), connection.close()).await;
    Ok(format!("{}: connected", endpoint.describe()))
}

/// Which of `names` the broker has no entity for: a receiver link attached to each
/// address, with no credit (so nothing is taken), is refused for a missing one.
pub(crate) async fn missing(config: &Config, names: &[String]) -> Result<Vec<String>, SetupError> {
    let endpoint = Endpoint::from_config(config)?;
    let mut connection = endpoint.connect("pcbridge-check").await.map_err(SetupError::Unreachable)?;
    let mut missing = Vec::new();
    for name in names {
        let address = endpoint.address(name);
        if endpoint.authorize(&mut connection, std::slice::from_ref(&address)).await.is_err() {
            missing.push(name.clone());
            continue;
        }
        match receiver::attach(&mut connection, "pcbridge-check", &address).await {
            Ok((mut session, receiver)) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), receiver.close()).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), session.end()).await;
            }
            Err(_) => missing.push(name.clone()),
        }
        if connection.is_closed() {
            connection = endpoint.connect("pcbridge-check").await.map_err(SetupError::Unreachable)?;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), connection.close()).await;
    Ok(missing)
}
