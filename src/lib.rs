//! pcbridge: a message-queue bridge for Microsoft Partner Center webhooks.
//!
//! One event travels like this: Partner Center POSTs a signed webhook to the
//! [`ingress`], which verifies the signature ([`partner_center::signature`]), parses the
//! event ([`partner_center::event`]) and publishes the body byte for byte to
//! `{prefix}{EventName}` through a [`broker::Publisher`] (Kafka or RabbitMQ), answering
//! 2xx only after the broker confirmed.
//!
//! The map:
//! - [`config`]: defaults ← `config.toml` ← `PCBRIDGE_*` environment, validated.
//! - [`telemetry`]: logs, and every metric name, defined once.
//! - [`shutdown`]: SIGTERM / Ctrl-C → a cancellation token; drain with a deadline.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics` on a separate listener.
//! - [`partner_center`]: what Partner Center is, knowing nothing of brokers.
//! - [`broker`]: how messages move, knowing nothing of Partner Center.
//! - [`ingress`]: the HTTP front. It meets the rest only through [`broker`].
//! - [`worker`]: consumes raw events, enriches them, publishes enriched events or dead letters.
//! - [`reconcile`]: `pcbridge reconcile`, the changes Partner Center did not deliver,
//!   from its audit log, published raw like webhooks.
//! - [`change_store`]: the seen change keys (PostgreSQL) the ingress and reconcile share.
//! - [`contract`]: pcbridge's message contract: headers, destinations, raw and enriched messages.
//! - [`dev`]: the Partner Center simulator, `pcbridge dev` and `pcbridge simulate`.
//! - [`check`]: `pcbridge check`, reaching every dependency the configuration names.
//! - [`register`]: `pcbridge register`, the webhook registration with Partner Center.
//! - [`replay`]: `pcbridge replay`, dead letters back to their raw destination.
//! - [`cli`]: the `pcbridge` command line and the wiring of each role.

pub mod admin;
pub mod broker;
pub mod change_store;
pub mod check;
pub mod cli;
pub mod config;
pub mod contract;
pub mod dev;
pub mod forward;
pub mod ingress;
pub mod partner_center;
pub mod reconcile;
pub mod register;
pub mod replay;
pub mod shutdown;
pub mod telemetry;
pub mod worker;
