//! RabbitMQ through lapin: a durable topic exchange and a durable queue per destination
//! ([`topology`]), persistent messages published with publisher confirms and `mandatory`
//! ([`publisher`]), and competing consumers with manual acknowledgements
//! ([`consumer`]). Only what `broker::connect`, `consume`, `backlog` and `probe` need is
//! visible outside.

mod consumer;
mod publisher;
mod topology;

pub(crate) use consumer::{RabbitBacklog, RabbitConsumer};
pub(crate) use publisher::{RabbitMq, missing_queues, probe};
