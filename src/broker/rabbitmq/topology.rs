//! RabbitMQ topology and connection settings shared by the publisher and the consumer:
//! the durable topic exchange (which sees every message), the durable direct exchange
//! raw messages are published to (`{exchange}.raw`), a durable queue per destination
//! bound by its own name, each raw destination split into single-active-consumer shard
//! queues ([`crate::contract::shards`]), which messages carry their CloudEvents
//! headers, and the AMQP URI with its credentials.

use crate::broker::{CloudEvent, SetupError};
use crate::config::{Config, QueueType, RabbitMqConfig, redact_url};
use crate::contract::{destinations::Destinations, raw, shards};
use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
    uri::AMQPUri,
};

/// What queues a destination is, and how they are declared.
#[derive(Clone, Debug)]
pub(crate) struct Topology {
    /// The topic exchange (`rabbitmq.exchange`), which downstream services bind with
    /// patterns: enriched messages and dead letters are published to it, raw messages
    /// reach it through the raw exchange.
    pub exchange: String,
    /// The direct exchange raw messages are published to, `{exchange}.raw`. The shard
    /// queues (and the forwarder's copies) are bound on it by exact names, which a direct
    /// exchange routes at about the default exchange's cost; bound on the topic exchange,
    /// matching them cost the ingress about a tenth of its rate (docs/BENCHMARKS.md).
    /// Each shard's key is also bound from it to the topic exchange, so a queue bound
    /// there with a pattern (an audit tap) still gets every raw message; with no such
    /// queue, that costs the topic exchange a few lookups that find nothing.
    pub raw_exchange: String,
    queue_type: QueueType,
    /// Shards per raw destination (`rabbitmq.shards`).
    pub shards: u16,
    /// Tells raw destinations (sharded) from enriched ones and the dead letter (one
    /// queue each: downstream consumers and `replay` read them by name).
    destinations: Destinations,
    /// A reader's copy (`broker::Subscription`): its destination, and the raw
    /// destinations whose shard `k` its shard `k` is bound to. Only the reader declares
    /// it so: a publisher declaring the same queue leaves the bindings as they are.
    copy: Option<(String, Vec<String>)>,
    /// `rabbitmq.raw_cloud_events`: whether raw messages carry their CloudEvents headers.
    /// Without them, a reader derives them ([`Topology::derive_cloud_event`]), so every
    /// [`Delivery`](crate::broker::Delivery) has them either way.
    raw_cloud_events: bool,
    /// The CloudEvents `source` of the messages (`partner_center.base_url`).
    source: String,
}

impl Topology {
    pub fn new(config: &Config) -> Self {
        Self {
            exchange: config.rabbitmq.exchange.clone(),
            raw_exchange: shards::raw_exchange(&config.rabbitmq.exchange),
            queue_type: config.rabbitmq.queue_type,
            shards: config.rabbitmq.shards.max(1),
            destinations: config.broker.destinations(),
            copy: None,
            raw_cloud_events: config.rabbitmq.raw_cloud_events,
            source: config.partner_center.base_url.clone(),
        }
    }

    /// Whether a message for `destination` is published with its CloudEvents headers:
    /// always, except on a raw destination unless `rabbitmq.raw_cloud_events`.
    pub fn writes_cloud_event(&self, destination: &str) -> bool {
        self.raw_cloud_events || !self.destinations.is_raw(destination)
    }

    /// The CloudEvents attributes of a message of `destination` that came without them:
    /// derived, for a raw destination, as the publisher would have written them.
    pub fn derive_cloud_event(
        &self,
        destination: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Option<CloudEvent> {
        if self.destinations.is_raw(destination) { raw::derive_cloud_event(headers, body, &self.source) } else { None }
    }

    /// This topology, with `destination` declared as a copy of `sources`.
    pub fn with_copy(mut self, destination: &str, sources: Vec<String>) -> Self {
        self.copy = Some((destination.to_string(), sources));
        self
    }

    /// The queues of `destination`: its shards when it is a raw destination, else itself.
    pub fn queues(&self, destination: &str) -> Vec<String> {
        if self.destinations.is_raw(destination) {
            shards::shard_names(destination, self.shards)
        } else {
            vec![destination.to_string()]
        }
    }

    /// The exchange a message for `destination` is published to: the raw exchange for a
    /// raw destination, else the topic exchange.
    pub fn exchange_of(&self, destination: &str) -> &str {
        if self.destinations.is_raw(destination) { &self.raw_exchange } else { &self.exchange }
    }

    /// The queue, and routing key, of a message for `destination` with ordering `key`.
    pub fn route(&self, destination: &str, key: &str) -> String {
        if self.destinations.is_raw(destination) {
            shards::shard_name(destination, shards::shard_of(key, self.shards))
        } else {
            destination.to_string()
        }
    }

    /// The raw destination and shard number of a shard queue; `None` for any other queue.
    pub fn shard<'a>(&self, queue: &'a str) -> Option<(&'a str, u16)> {
        shards::parse_shard(queue).filter(|(destination, _)| self.destinations.is_raw(destination))
    }

    /// The destination a queue belongs to (a shard's destination, else the queue).
    pub fn destination_of<'a>(&self, queue: &'a str) -> &'a str {
        self.shard(queue).map_or(queue, |(destination, _)| destination)
    }

    /// Declares the durable queue `name`, bound with routing key `name` (and, a shard of
    /// the copy, with the routing key of the same shard of each copied source): a shard
    /// on the raw exchange, its own key also bound from there to the topic exchange (for
    /// pattern taps); any other queue on the topic exchange. A shard is
    /// `x-single-active-consumer`: however many consumers subscribe, RabbitMQ delivers to
    /// one, and hands the queue to the next only when that one is gone (`super::sharing`
    /// closes it only once its deliveries are acknowledged).
    pub async fn declare_queue(&self, channel: &Channel, name: &str) -> Result<(), lapin::Error> {
        let mut args = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        }
        let shard = self.shard(name);
        if shard.is_some() {
            args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        }
        channel.queue_declare(name.into(), QueueDeclareOptions { durable: true, ..Default::default() }, args).await?;
        let mut keys = vec![name.to_string()];
        if let (Some((destination, k)), Some((copy, sources))) = (shard, &self.copy)
            && destination == copy
        {
            keys.extend(sources.iter().map(|source| shards::shard_name(source, k)));
        }
        let exchange = if shard.is_some() { &self.raw_exchange } else { &self.exchange };
        for key in keys {
            channel
                .queue_bind(
                    name.into(),
                    exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        if shard.is_some() {
            // The shard's own key only: a copied source's key is bound when that source's
            // shard is declared (every role that reads or publishes it declares it).
            channel
                .exchange_bind(
                    self.exchange.as_str().into(),
                    self.raw_exchange.as_str().into(),
                    name.into(),
                    ExchangeBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Declares each of `names` as [`Self::declare_queue`] does, pipelined on `channel`:
    /// the methods go out without waiting for one another's answers (RabbitMQ answers a
    /// channel's methods in order), so a raw layout's 300 shard queues cost about one
    /// wait, not 600 in a row (docs/BENCHMARKS.md, start-up). The first failure comes
    /// back with its queue's name.
    pub async fn declare_queues(&self, channel: &Channel, names: &[String]) -> Result<(), (String, lapin::Error)> {
        futures::future::try_join_all(
            names
                .iter()
                .map(|name| async move { self.declare_queue(channel, name).await.map_err(|e| (name.clone(), e)) }),
        )
        .await?;
        Ok(())
    }

    /// Declares the durable topic exchange and the durable direct raw exchange.
    pub async fn declare_exchanges(&self, channel: &Channel) -> Result<(), lapin::Error> {
        for (name, kind) in [(&self.exchange, ExchangeKind::Topic), (&self.raw_exchange, ExchangeKind::Direct)] {
            channel
                .exchange_declare(
                    name.as_str().into(),
                    kind,
                    ExchangeDeclareOptions { durable: true, ..Default::default() },
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }
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
