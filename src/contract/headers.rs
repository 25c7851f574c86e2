//! Header names of the raw, enriched and dead-letter messages (Kafka record headers;
//! AMQP message headers), and the W3C `traceparent` that carries a trace across the broker.
//! `docs/message-contract.md` describes each.

/// Lowercase hex SHA-256 of the body: the deduplication key.
pub const EVENT_ID: &str = "pc-event-id";
/// The webhook's `EventName`, as sent (also when the destination is `unrecognized`).
pub const EVENT_NAME: &str = "pc-event-name";
/// When the ingress accepted the event, RFC 3339 UTC.
pub const RECEIVED_AT: &str = "pc-received-at";
/// Partner Center's signature: the base64 of `Signature <base64>` as sent.
pub const SIGNATURE: &str = "pc-signature";
/// The `X-MS-Certificate-Url` the signature was verified with.
pub const CERTIFICATE_URL: &str = "pc-certificate-url";
/// The `X-MS-Signature-Algorithm` (`rsa-sha256`).
pub const SIGNATURE_ALGORITHM: &str = "pc-signature-algorithm";
/// The change this event reports, the same by webhook and by reconciliation (see
/// [`super::change_key`]): downstream deduplicates on it across both paths.
pub const CHANGE_KEY: &str = "pc-change-key";
/// Raw messages that did not come by webhook: where they came from. Absent on a
/// delivered webhook (which carries its signature headers instead).
pub const ORIGIN: &str = "pc-origin";
/// [`ORIGIN`] of a change found by `pcbridge reconcile` in the audit log or a list.
pub const ORIGIN_RECONCILE: &str = "reconcile";
/// W3C trace context of the hop that published the raw message.
pub const TRACEPARENT: &str = "traceparent";
/// Dead letters: why (`permanent`, `retries-exhausted`, … see [`super::envelope::error_kind`]).
pub const ERROR_KIND: &str = "pc-error-kind";
/// Dead letters: a one-line reason.
pub const ERROR: &str = "pc-error";
/// Dead letters: API attempts made before giving up.
pub const ATTEMPTS: &str = "pc-attempts";

/// Dead letters of a forwarding receiver: the receiver's name (`forward.receivers.{name}`).
pub const RECEIVER: &str = "pc-receiver";

/// The headers a dead letter adds to its raw message's, which a replay removes again.
pub const DEAD_LETTER_ONLY: [&str; 4] = [ERROR_KIND, ERROR, ATTEMPTS, RECEIVER];

/// The parts of a valid version-00 W3C `traceparent`.
#[derive(Debug, PartialEq, Eq)]
pub struct TraceParent<'a> {
    pub trace_id: &'a str,
    pub parent_id: &'a str,
    pub sampled: bool,
}

/// Parses a `traceparent`; `None` when it is not a valid version-00 one.
pub fn parse_traceparent(value: &str) -> Option<TraceParent<'_>> {
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
    let sampled = u8::from_str_radix(flags, 16).ok()? & 1 == 1;
    valid.then_some(TraceParent { trace_id, parent_id, sampled })
}

/// A version-00 `traceparent`.
pub fn format_traceparent(trace_id: &str, span_id: &str, sampled: bool) -> String {
    format!("00-{trace_id}-{span_id}-{}", if sampled { "01" } else { "00" })
}

/// Makes the `traceparent` header value the parent of `span` (not entered yet): the
/// trace crosses the broker. A missing or malformed value leaves `span` a new root.
pub fn continue_trace(span: &tracing::Span, value: Option<&str>) {
    if let Some(tp) = value.and_then(parse_traceparent) {
        crate::telemetry::trace::set_remote_parent(span, tp.trace_id, tp.parent_id, tp.sampled);
    }
}

/// The `traceparent` a message published from the current span carries: that span's
/// context when spans are recorded, or else (no subscriber, as in benchmarks) a new span
/// id continuing `incoming`, or a new trace.
pub fn outgoing_traceparent(incoming: Option<&str>) -> String {
    match crate::telemetry::trace::current_span_ids() {
        Some((trace_id, span_id, sampled)) => format_traceparent(&trace_id, &span_id, sampled),
        None => traceparent(incoming),
    }
}

/// A W3C `traceparent` for this hop without a recorded span: the incoming trace
/// continued with a new span id, or a new trace when there is none (or it is malformed).
pub fn traceparent(incoming: Option<&str>) -> String {
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    match incoming.and_then(parse_traceparent) {
        Some(tp) => format_traceparent(tp.trace_id, span, tp.sampled),
        None => format_traceparent(&uuid::Uuid::new_v4().simple().to_string(), span, true),
    }
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
