//! The consuming back: reads raw events, enriches them, publishes enriched events or
//! dead letters, and acknowledges only what was published.

pub mod enrich;
pub mod retry;
