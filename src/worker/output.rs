//! The messages the worker publishes: the enriched event and the dead letter, both
//! carrying the raw message's headers, with `traceparent` moved on to the worker's
//! span of the event (docs/message-contract.md).

use super::enrich::Enriched;
use crate::broker::{CloudEvent, Delivery, Message};
use crate::contract::{
    destinations::{DEAD_LETTER_TYPE_SUFFIX, Destinations, ENRICHED_TYPE_SUFFIX, cloud_event_type},
    headers,
};
use bytes::Bytes;

/// What identifies the event a delivery carries.
pub struct Identity {
    pub event_id: String,
    pub event_name: String,
    pub received_at: String,
}

/// The raw message's headers, `traceparent` naming the current span (the worker's
/// `event` span, a child of the raw message's).
fn carried_headers(d: &Delivery) -> Vec<(String, String)> {
    let mut carried = d.headers.clone();
    let traceparent = headers::outgoing_traceparent(d.header(headers::TRACEPARENT));
    carried.retain(|(k, _)| k != headers::TRACEPARENT);
    carried.push((headers::TRACEPARENT.to_string(), traceparent));
    carried
}

fn cloud_event(d: &Delivery, who: &Identity, source: &str, suffix: &str) -> CloudEvent {
    match &d.cloud_event {
        Some(ce) => CloudEvent { ty: format!("{}{suffix}", ce.ty), ..ce.clone() },
        None => CloudEvent {
            id: who.event_id.clone(),
            source: source.to_string(),
            ty: format!("{}{suffix}", cloud_event_type(&who.event_name)),
            subject: None,
            time: None,
        },
    }
}

/// `{prefix}{EventName}.enriched`: the envelope, with the raw message's headers.
pub fn enriched(d: &Delivery, who: &Identity, e: &Enriched, destinations: &Destinations, source: &str) -> Message {
    Message {
        destination: destinations.enriched(&who.event_name),
        key: d.key.clone(),
        id: who.event_id.clone(),
        headers: carried_headers(d),
        cloud_event: cloud_event(d, who, source, ENRICHED_TYPE_SUFFIX),
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
    let one_line: String = reason.replace(['\r', '\n'], " ").chars().take(1000).collect();
    let mut headers = carried_headers(d);
    headers.retain(|(k, _)| !headers::DEAD_LETTER_ONLY.contains(&k.as_str()));
    headers.push((headers::ERROR_KIND.into(), kind.into()));
    headers.push((headers::ERROR.into(), one_line));
    headers.push((headers::ATTEMPTS.into(), attempts.to_string()));
    Message {
        destination: destinations.dead_letter(),
        key: d.key.clone(),
        id: who.event_id.clone(),
        headers,
        cloud_event: cloud_event(d, who, source, DEAD_LETTER_TYPE_SUFFIX),
        content_type: crate::contract::cloud_event::CONTENT_TYPE,
        body: d.body.clone(),
    }
}
