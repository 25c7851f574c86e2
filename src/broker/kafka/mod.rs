//! Kafka through rdkafka: the idempotent `acks=all` producer with topic creation
//! ([`producer`]), the consumer group that stores only finished offsets ([`consumer`],
//! [`offsets`]), the client settings both build on ([`config`]) and the Event Hubs
//! sign-in ([`sign_in`]). Only what
//! `broker::connect`, `consume`, `backlog` and `probe` need is visible outside.

mod config;
mod consumer;
mod offsets;
mod producer;
mod sign_in;

pub(crate) use consumer::{KafkaBacklog, KafkaConsumer};
pub(crate) use producer::{Kafka, missing_topics, probe};
