//! The raw message of an accepted webhook: the signed body untouched, the `pc-*`
//! headers, the partition key and the CloudEvents attributes (SPEC section 3).

use crate::broker::{CloudEvent, Message};
use crate::partner_center::{
    event::{Destinations, Event, cloud_event_type},
    signature::SignatureHeaders,
};
use bytes::Bytes;

pub const HEADER_EVENT_ID: &str = "pc-event-id";
pub const HEADER_EVENT_NAME: &str = "pc-event-name";
pub const HEADER_RECEIVED_AT: &str = "pc-received-at";
pub const HEADER_SIGNATURE: &str = "pc-signature";
pub const HEADER_CERTIFICATE_URL: &str = "pc-certificate-url";
pub const HEADER_SIGNATURE_ALGORITHM: &str = "pc-signature-algorithm";
pub const HEADER_TRACEPARENT: &str = "traceparent";

/// Everything known about one accepted delivery.
pub struct Accepted<'a> {
    pub event: &'a Event,
    pub event_id: String,
    pub body: Bytes,
    pub signature: &'a SignatureHeaders,
    /// RFC 3339 UTC.
    pub received_at: String,
    /// The sender's `traceparent`, if any; continued rather than replaced.
    pub incoming_traceparent: Option<&'a str>,
}

/// Builds the raw message for `accepted`.
pub fn raw_message(accepted: Accepted<'_>, destinations: &Destinations, source: &str) -> Message {
    let Accepted { event, event_id, body, signature, received_at, incoming_traceparent } = accepted;
    let headers = vec![
        (HEADER_EVENT_ID.to_string(), event_id.clone()),
        (HEADER_EVENT_NAME.to_string(), event.name.clone()),
        (HEADER_RECEIVED_AT.to_string(), received_at),
        (HEADER_SIGNATURE.to_string(), signature.signature_text.clone()),
        (HEADER_CERTIFICATE_URL.to_string(), signature.certificate_url.clone()),
        (HEADER_SIGNATURE_ALGORITHM.to_string(), signature.algorithm.clone()),
        (HEADER_TRACEPARENT.to_string(), traceparent(incoming_traceparent)),
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
            time: event.change_time_rfc3339(),
        },
        content_type: "application/json",
        body,
    }
}

/// A W3C `traceparent` for this hop: the incoming trace continued with a new span id,
/// or a new trace when there is none (or it is malformed).
pub fn traceparent(incoming: Option<&str>) -> String {
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    if let Some((trace_id, flags)) = incoming.and_then(parse_traceparent) {
        return format!("00-{trace_id}-{span}-{flags}");
    }
    format!("00-{}-{span}-01", uuid::Uuid::new_v4().simple())
}

/// `(trace-id, flags)` of a valid version-00 traceparent.
fn parse_traceparent(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let valid = version == "00"
        && parts.next().is_none()
        && hex(trace_id, 32)
        && hex(parent_id, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0')
        && parent_id.bytes().any(|b| b != b'0');
    valid.then_some((trace_id, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_continues_or_starts() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp = traceparent(Some(incoming));
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{tp}");
        assert!(!tp.contains("00f067aa0ba902b7"));
        assert!(parse_traceparent(&tp).is_some());
        for bad in [None, Some("garbage"), Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01")] {
            let tp = traceparent(bad);
            assert!(parse_traceparent(&tp).is_some(), "{tp}");
            assert!(!tp.contains("4bf92f35"));
        }
    }
}
