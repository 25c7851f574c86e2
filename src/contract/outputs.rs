//! What an output of a raw message carries from it — the worker's enriched message and
//! dead letter, the forwarder's dead letter for one receiver: the raw message's headers,
//! with `traceparent` moved on to the current span, and its CloudEvents attributes with
//! the `type` suffixed (docs/message-contract.md). A dead letter is built here once for
//! both roles.

use super::{
    destinations::{DEAD_LETTER_TYPE_SUFFIX, cloud_event_type},
    headers,
};
use crate::broker::{CloudEvent, Delivery, Message};

/// What identifies the event a delivery carries.
pub struct Identity {
    pub event_id: String,
    pub event_name: String,
    pub received_at: String,
}

/// Why an event is dead-lettered.
pub struct Failure<'a> {
    /// `pc-error-kind` (see [`super::envelope::error_kind`]).
    pub kind: &'a str,
    /// `pc-error`, made one line of at most 1000 characters.
    pub reason: &'a str,
    /// `pc-attempts`.
    pub attempts: u32,
}

/// The raw message's headers, `traceparent` naming the current span (a child of the raw
/// message's).
pub fn carried_headers(d: &Delivery) -> Vec<(String, String)> {
    let mut carried = d.headers.clone();
    let traceparent = headers::outgoing_traceparent(d.header(headers::TRACEPARENT));
    carried.retain(|(k, _)| k != headers::TRACEPARENT);
    carried.push((headers::TRACEPARENT.to_string(), traceparent));
    carried
}

/// The raw message's CloudEvents attributes with `suffix` on the `type`; built from
/// `who` when the raw message had none (`source`: the Partner Center base URL).
pub fn cloud_event(d: &Delivery, who: &Identity, source: &str, suffix: &str) -> CloudEvent {
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

/// A dead letter for `destination`: the raw body and headers, plus why and after how
/// many attempts.
pub fn dead_letter(d: &Delivery, who: &Identity, failure: &Failure<'_>, destination: String, source: &str) -> Message {
    let one_line: String = failure.reason.replace(['\r', '\n'], " ").chars().take(1000).collect();
    let mut headers = carried_headers(d);
    headers.retain(|(k, _)| !headers::DEAD_LETTER_ONLY.contains(&k.as_str()));
    headers.push((headers::ERROR_KIND.into(), failure.kind.into()));
    headers.push((headers::ERROR.into(), one_line));
    headers.push((headers::ATTEMPTS.into(), failure.attempts.to_string()));
    Message {
        destination,
        key: d.key.clone(),
        id: who.event_id.clone(),
        headers,
        cloud_event: cloud_event(d, who, source, DEAD_LETTER_TYPE_SUFFIX),
        content_type: super::cloud_event::CONTENT_TYPE,
        body: d.body.clone(),
    }
}
