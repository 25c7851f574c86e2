//! What an operator sees of a running role: logs and traces ([`trace`]: the tracing
//! subscriber, spans per request and per event, optional OTLP export) and metrics
//! ([`metrics`]: every metric name and label, defined once).
//!
//! This module imports nothing else of the crate.

pub mod metrics;
pub mod trace;

pub use metrics::{Metrics, outcome, reconcile_outcome, worker_outcome};
pub use trace::{LogStyle, init_tracing};
