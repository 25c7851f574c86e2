//! `pcbridge dev` and `pcbridge simulate`: a Partner Center simulator and the one-command
//! demonstration built on it. This module uses only what a user could use (the public
//! roles, the broker, and HTTP); nothing else in the crate knows it exists.
//!
//! - [`pki`]: the simulator's CA and signing certificate.
//! - [`events`]: a realistic stream of webhook events of every catalogue type.
//! - [`simulator`]: the certificate URL, Entra ID, the Partner Center API and Graph.
//! - [`sender`]: sends the stream, signed, to a webhook URL at a steady rate.
//! - [`report`]: per-event lines, progress and the summary.
//! - [`recovery`]: deliveries Partner Center gives up, recovered by `reconcile`.
//! - [`sharing`]: forwarding to a second receiver, and the registration guard.
//! - [`run`]: `pcbridge dev`, everything in one process.
//! - [`simulate`]: `pcbridge simulate`, Partner Center against any running ingress.

pub mod events;
pub mod pki;
pub mod recovery;
pub mod report;
pub mod run;
pub mod sender;
pub mod sharing;
pub mod simulate;
pub mod simulator;
