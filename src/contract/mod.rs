//! pcbridge's own message contract, in one place: the header names every message
//! carries ([`headers`]), its CloudEvents attributes ([`cloud_event`]), the change key
//! that names one Partner Center change on every path ([`change_key`]), how
//! destinations are named ([`destinations`]) and split into shards on RabbitMQ
//! ([`shards`]), the raw message of a change on either
//! path ([`raw`]), what its outputs carry from it and the dead letter ([`outputs`]), and
//! the enriched envelope with its enrichment statuses and dead-letter kinds ([`envelope`]).
//!
//! Downstream services depend on these names; `docs/message-contract.md` documents
//! them, and a change here is an interface change (CHANGELOG.md). The ingress, the
//! worker, `replay` and `dev` all take their names from here. Of the rest of the crate it
//! uses only the Partner Center event catalogue and its parsed `Event`.

pub mod change_key;
pub mod cloud_event;
pub mod destinations;
pub mod envelope;
pub mod headers;
pub mod outputs;
pub mod raw;
pub mod shards;
