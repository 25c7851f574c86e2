//! RabbitMQ through lapin: a durable topic exchange and a direct one for raw messages,
//! a durable queue per destination and each raw destination split into shards by
//! ordering key ([`topology`]), persistent messages published with publisher confirms
//! and `mandatory` ([`publisher`]), the shards shared among worker replicas, one replica
//! per shard at a time ([`sharing`]), consumed with manual acknowledgements
//! ([`consumer`]), and a queue's backlog read once for `replay` ([`backlog`]). Only what
//! `broker::connect`, `consume`, `subscribe`, `backlog` and `probe` need is visible
//! outside.

mod backlog;
mod consumer;
mod publisher;
mod sharing;
mod topology;

pub(crate) use backlog::RabbitBacklog;
pub(crate) use consumer::RabbitConsumer;
pub(crate) use publisher::{RabbitMq, missing_queues, probe};
pub(crate) use sharing::InFlight;
pub(crate) use topology::Topology;
