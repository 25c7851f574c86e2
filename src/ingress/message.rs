//! The raw message of an accepted webhook: the signed body untouched, the `pc-*`
//! headers, the partition key and the CloudEvents attributes (docs/message-contract.md).

use crate::broker::{CloudEvent, Message};
use crate::contract::{
    change_key,
    destinations::{Destinations, cloud_event_type},
    headers,
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
    let time = event.change_time_rfc3339();
    let change_key = change_key::of_webhook(
        &event.name,
        event.audit_uri.as_deref(),
        event.resource_uri.as_deref(),
        time.as_deref(),
        &event_id,
    );
    let headers = vec![
        (headers::EVENT_ID.to_string(), event_id.clone()),
        (headers::EVENT_NAME.to_string(), event.name.clone()),
        (headers::CHANGE_KEY.to_string(), change_key),
        (headers::RECEIVED_AT.to_string(), received_at),
        (headers::SIGNATURE.to_string(), signature.signature_text.clone()),
        (headers::CERTIFICATE_URL.to_string(), signature.certificate_url.clone()),
        (headers::SIGNATURE_ALGORITHM.to_string(), signature.algorithm.clone()),
        (headers::TRACEPARENT.to_string(), traceparent),
    ];
    Message {
        destination: destinations.raw(&event.name),
        key: event.resource_uri.clone().unwrap_or_else(|| event_id.clone()),
        id: event_id.clone(),
        headers,
        cloud_event: CloudEvent {
            id: event_id,
            source: source.to_string(),
            ty: cloud_event_type(&event.name),
            subject: event.resource_uri.clone(),
            time,
        },
        content_type: crate::contract::cloud_event::CONTENT_TYPE,
        body,
    }
}
