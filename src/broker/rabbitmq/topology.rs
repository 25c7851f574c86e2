//! RabbitMQ topology and connection settings shared by the publisher and the consumer:
//! the durable topic exchange, a durable queue per destination bound by its own name, the
//! AMQP URI with its credentials.

use crate::broker::SetupError;
use crate::config::{Config, QueueType, RabbitMqConfig, redact_url};
use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
    uri::AMQPUri,
};

/// Declares the durable queue `name`, bound to `exchange` with routing key `name`.
pub(crate) async fn declare_queue(
    channel: &Channel,
    exchange: &str,
    queue_type: QueueType,
    name: &str,
) -> Result<(), lapin::Error> {
    let mut args = FieldTable::default();
    if queue_type == QueueType::Quorum {
        args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    }
    channel.queue_declare(name.into(), QueueDeclareOptions { durable: true, ..Default::default() }, args).await?;
    channel
        .queue_bind(name.into(), exchange.into(), name.into(), QueueBindOptions::default(), FieldTable::default())
        .await
}

/// Declares the durable topic exchange.
pub(crate) async fn declare_exchange(channel: &Channel, exchange: &str) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
}

/// The AMQP URI of `rabbitmq.url`, with the configured credentials.
pub(crate) fn amqp_uri(rmq: &RabbitMqConfig, config: &Config) -> Result<AMQPUri, SetupError> {
    let mut uri: AMQPUri = rmq.url.parse().map_err(|e| {
        SetupError::Config(format!("config key `rabbitmq.url`: {:?} is not an AMQP URL: {e}", redact_url(&rmq.url)))
    })?;
    // Credentials written in the URL (only possible from the environment: config.toml
    // refuses them) win; otherwise `username` and the password from env or file.
    if redact_url(&rmq.url) == rmq.url {
        uri.authority.userinfo.username = rmq.username.clone();
        uri.authority.userinfo.password =
            config.rabbitmq_password().map_err(|e| SetupError::Config(e.to_string()))?.expose().to_string();
    }
    if uri.query.connection_timeout.is_none() {
        uri.query.connection_timeout = Some(5_000);
    }
    Ok(uri)
}
