//! Kafka through rdkafka: the idempotent `acks=all` producer with topic creation
//! ([`producer`]), the consumer group that stores only finished offsets ([`consumer`],
//! [`offsets`]), and the client settings both build on ([`config`]). Only what
//! `broker::connect`, `consume`, `backlog` and `probe` need is visible outside.

mod config;
mod consumer;
mod offsets;
mod producer;

pub(crate) use consumer::{KafkaBacklog, KafkaConsumer};
pub(crate) use producer::{Kafka, probe};
