//! The raw message of an accepted webhook: the signed body untouched and its signature
//! headers, built by the contract ([`crate::contract::raw`]).

use crate::broker::Message;
use crate::contract::{
    destinations::Destinations,
    raw::{self, Origin, Raw},
};
use crate::partner_center::{event::Event, signature::SignatureHeaders};
use bytes::Bytes;

/// Everything known about one accepted delivery.
pub struct Accepted<'a> {
    pub event: &'a Event,
    pub event_id: String,
    pub body: Bytes,
    pub signature: &'a SignatureHeaders,
    /// RFC 3339 UTC.
    pub received_at: String,
    /// W3C trace context of the request's span (which continues the sender's trace).
    pub traceparent: String,
}

/// Builds the raw message for `accepted`.
pub fn raw_message(accepted: Accepted<'_>, destinations: &Destinations, source: &str) -> Message {
    let Accepted { event, event_id, body, signature, received_at, traceparent } = accepted;
    let origin = Origin::Webhook {
        signature: &signature.signature_text,
        certificate_url: &signature.certificate_url,
        algorithm: &signature.algorithm,
    };
    raw::message(
        Raw { event, event_id, body, change_key: None, origin, received_at, traceparent },
        destinations,
        source,
    )
}

/// The `pc-change-key` of a raw message built here (always present).
pub fn change_key(message: &Message) -> &str {
    let key = crate::contract::headers::CHANGE_KEY;
    message.headers.iter().find(|(k, _)| k == key).map_or("", |(_, v)| v.as_str())
}
