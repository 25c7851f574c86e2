//! The enriched envelope, its enrichment statuses, and the dead-letter kinds
//! (`pc-error-kind`), as `docs/message-contract.md` describes them.

use serde_json::{Map, Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// `enrichment.status` of an enriched envelope.
pub mod status {
    pub const ENRICHED: &str = "enriched";
    pub const NOT_APPLICABLE: &str = "not-applicable";
    pub const RESOURCE_GONE: &str = "resource-gone";
}

/// Dead-letter error kinds (`pc-error-kind`); also the `error_kind` label of
/// `pcbridge_dead_letters_total`. docs/operations.md has a runbook for each.
pub mod error_kind {
    /// The API refused for good (403, 400…), or the answer was unusable.
    pub const PERMANENT: &str = "permanent";
    /// Transient failures outlasted the retry budget.
    pub const EXHAUSTED: &str = "retries-exhausted";
    /// The ResourceUri is on a host that is not allowed; nothing was requested.
    pub const FOREIGN_HOST: &str = "foreign-host";
    /// The ResourceUri cannot be mapped to an API.
    pub const UNRESOLVABLE: &str = "unresolvable-uri";
    /// The raw message is not a webhook event.
    pub const BAD_PAYLOAD: &str = "bad-payload";
    /// The broker refused the enriched message (e.g. larger than it accepts).
    pub const PUBLISH_REFUSED: &str = "publish-refused";
}

/// The raw event an envelope is about.
pub struct RawEvent<'a> {
    pub event_id: &'a str,
    pub received_at: &'a str,
    pub body: &'a [u8],
}

/// What the fetches found.
pub struct Outcome {
    pub resource: Value,
    pub audit: Value,
    /// Only for `azure-fraud-event-detected`: the subscription's active fraud events.
    pub fraud_events: Option<Value>,
    /// One of [`status`].
    pub status: &'static str,
    pub attempts: u32,
}

/// The enriched envelope. The event, resource and audit documents are moved in, not
/// copied: `json!` would rebuild each `Value` through `to_value`, which took half of the
/// envelope's cost (13.4 µs against 6.7 µs for a 2.9 kB envelope, docs/BENCHMARKS.md).
/// Keys are sorted either way (serde_json's map is a `BTreeMap`), so the bytes are the
/// same.
pub fn envelope(raw: &RawEvent<'_>, event_name: String, event: Value, outcome: Outcome) -> Value {
    let mut envelope = Map::new();
    let mut put = |k: &str, v: Value| {
        envelope.insert(k.to_string(), v);
    };
    put("eventId", raw.event_id.into());
    put("eventName", event_name.into());
    put("receivedAt", raw.received_at.into());
    put("enrichedAt", OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default().into());
    put("event", event);
    put("resource", outcome.resource);
    put("audit", outcome.audit);
    put("enrichment", json!({ "status": outcome.status, "attempts": outcome.attempts }));
    if let Some(events) = outcome.fraud_events {
        put("fraudEvents", events);
    }
    Value::Object(envelope)
}
