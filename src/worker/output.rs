//! The messages the worker publishes: the enriched event and the dead letter, both
//! carrying the raw message's headers, with `traceparent` moved on to the worker's
//! span of the event ([`crate::contract::outputs`], docs/message-contract.md).

use super::enrich::Enriched;
use crate::broker::{Delivery, Message};
use crate::contract::{
    destinations::{Destinations, ENRICHED_TYPE_SUFFIX},
    outputs::{self, Failure},
};
use bytes::Bytes;

pub use crate::contract::outputs::Identity;

/// `{prefix}{EventName}.enriched`: the envelope, with the raw message's headers.
pub fn enriched(d: &Delivery, who: &Identity, e: &Enriched, destinations: &Destinations, source: &str) -> Message {
    Message {
        destination: destinations.enriched(&who.event_name),
        key: d.key.clone(),
        id: who.event_id.clone(),
        headers: outputs::carried_headers(d),
        cloud_event: outputs::cloud_event(d, who, source, ENRICHED_TYPE_SUFFIX),
        content_type: crate::contract::cloud_event::CONTENT_TYPE,
        body: Bytes::from(serde_json::to_vec(&e.envelope).unwrap_or_default()),
    }
}

/// `{prefix}dead-letter`: the raw body and headers, plus why and after how many attempts.
pub fn dead_letter(
    d: &Delivery,
    who: &Identity,
    kind: &str,
    reason: &str,
    attempts: u32,
    destinations: &Destinations,
    source: &str,
) -> Message {
    outputs::dead_letter(d, who, &Failure { kind, reason, attempts }, destinations.dead_letter(), source)
}
