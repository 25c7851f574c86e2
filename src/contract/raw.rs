//! The raw message: one Partner Center change on its raw destination, the body as it
//! came (or, reconciled, as Partner Center would have sent it), with the `pc-*` headers,
//! the ordering key and the CloudEvents attributes (docs/message-contract.md). Built
//! here once for both paths that publish raw messages — the ingress for a delivered
//! webhook, `reconcile` for a change Partner Center did not deliver — so the worker
//! cannot tell them apart except by [`headers::ORIGIN`].

use super::{
    change_key,
    destinations::{Destinations, cloud_event_type},
    headers,
};
use crate::broker::{CloudEvent, Message};
use crate::partner_center::event::Event;
use bytes::Bytes;

/// How a raw message reached pcbridge.
pub enum Origin<'a> {
    /// A webhook whose signature was verified: the signature travels with it, so a
    /// consumer (or a forwarded receiver) can verify it again.
    Webhook {
        /// `Signature <base64>`, as sent.
        signature: &'a str,
        certificate_url: &'a str,
        algorithm: &'a str,
    },
    /// Found by `pcbridge reconcile` in the audit log or a list: no signature exists.
    Reconcile,
}

/// One change to publish raw.
pub struct Raw<'a> {
    pub event: &'a Event,
    /// `pc-event-id`: the SHA-256 of `body`.
    pub event_id: String,
    pub body: Bytes,
    /// Set when the change key is not the webhook's own (a list's state version);
    /// otherwise [`change_key::of_webhook`] names it.
    pub change_key: Option<String>,
    pub origin: Origin<'a>,
    /// When pcbridge accepted (or reconciled) it, RFC 3339 UTC.
    pub received_at: String,
    /// W3C trace context of the publishing span.
    pub traceparent: String,
}

/// Builds the raw message of `raw`. `source` is the CloudEvents `source` (the Partner
/// Center base URL).
pub fn message(raw: Raw<'_>, destinations: &Destinations, source: &str) -> Message {
    let Raw { event, event_id, body, change_key, origin, received_at, traceparent } = raw;
    let time = event.change_time_rfc3339();
    let change_key = change_key.unwrap_or_else(|| {
        change_key::of_webhook(
            &event.name,
            event.audit_uri.as_deref(),
            event.resource_uri.as_deref(),
            time.as_deref(),
            &event_id,
        )
    });
    let mut list = Vec::with_capacity(9);
    list.push((headers::EVENT_ID.to_string(), event_id.clone()));
    list.push((headers::EVENT_NAME.to_string(), event.name.clone()));
    list.push((headers::CHANGE_KEY.to_string(), change_key));
    list.push((headers::RECEIVED_AT.to_string(), received_at));
    match origin {
        Origin::Webhook { signature, certificate_url, algorithm } => {
            list.push((headers::SIGNATURE.to_string(), signature.to_string()));
            list.push((headers::CERTIFICATE_URL.to_string(), certificate_url.to_string()));
            list.push((headers::SIGNATURE_ALGORITHM.to_string(), algorithm.to_string()));
        }
        Origin::Reconcile => list.push((headers::ORIGIN.to_string(), headers::ORIGIN_RECONCILE.to_string())),
    }
    list.push((headers::TRACEPARENT.to_string(), traceparent));
    Message {
        destination: destinations.raw(&event.name),
        key: event.resource_uri.clone().unwrap_or_else(|| event_id.clone()),
        id: event_id.clone(),
        headers: list,
        cloud_event: cloud_event(event, event_id, time, source),
        content_type: super::cloud_event::CONTENT_TYPE,
        body,
    }
}

/// The CloudEvents attributes of a raw message about `event`: each repeats something
/// the message carries anyway (`pc-event-id`, `pc-event-name`, the body) or
/// configuration (`source`), which is why RabbitMQ raw messages may leave them out.
/// `time` is `event`'s change time in RFC 3339 ([`Event::change_time_rfc3339`]).
fn cloud_event(event: &Event, event_id: String, time: Option<String>, source: &str) -> CloudEvent {
    CloudEvent {
        id: event_id,
        source: source.to_string(),
        ty: cloud_event_type(&event.name),
        subject: event.resource_uri.clone(),
        time,
    }
}

/// The CloudEvents attributes of a raw message published without them, derived as
/// [`message`] makes them: from its `pc-event-id` and `pc-event-name` headers and its
/// body. `None` when it is not a raw message of pcbridge's (no `pc-event-id`, or a body
/// the ingress would have refused): [`super::outputs::cloud_event`] then builds what the
/// outputs carry from the event's identity, as for any message that came without them.
pub fn derive_cloud_event(headers: &[(String, String)], body: &[u8], source: &str) -> Option<CloudEvent> {
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let id = header(headers::EVENT_ID)?;
    let mut event = Event::parse(body).ok()?;
    if let Some(name) = header(headers::EVENT_NAME) {
        event.name = name.to_string();
    }
    let time = event.change_time_rfc3339();
    Some(cloud_event(&event, id.to_string(), time, source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partner_center::event::event_id;

    const SOURCE: &str = "https://api.partnercenter.microsoft.com";
    const UPDATED: &[u8] = br#"{"EventName":"subscription-updated","ResourceUri":"https://api.partnercenter.microsoft.com/v1/customers/c/subscriptions/s","ResourceChangeUtcDate":"2026-11-22T08:00:00.5Z"}"#;

    fn raw_of(body: &'static [u8], origin: Origin<'static>) -> Message {
        let event = Event::parse(body).expect("event");
        let raw = Raw {
            event: &event,
            event_id: event_id(body),
            body: Bytes::from_static(body),
            change_key: None,
            origin,
            received_at: "2026-12-05T00:00:00Z".into(),
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        };
        message(raw, &crate::config::Config::default().broker.destinations(), SOURCE)
    }

    /// What a RabbitMQ reader derives is what the publisher would have written: the
    /// attributes are left out of raw messages only because nothing is lost.
    #[test]
    fn derived_attributes_are_the_ones_left_out() {
        let webhook =
            Origin::Webhook { signature: "Signature abc", certificate_url: "https://c", algorithm: "rsa-sha256" };
        let cases: [(&'static [u8], Origin<'static>); 3] = [
            (UPDATED, webhook),
            (
                br#"{"EventName":"test-created","ResourceUri":null,"ResourceChangeUtcDate":"not a date"}"#,
                Origin::Reconcile,
            ),
            (br#"{"eventName":"referral-created"}"#, Origin::Reconcile),
        ];
        for (body, origin) in cases {
            let m = raw_of(body, origin);
            let derived = derive_cloud_event(&m.headers, &m.body, SOURCE);
            assert_eq!(derived.as_ref(), Some(&m.cloud_event), "{}", String::from_utf8_lossy(body));
        }
        let m = raw_of(UPDATED, Origin::Reconcile);
        let ce = &m.cloud_event;
        assert_eq!(ce.ty, "com.microsoft.partnercenter.subscription-updated");
        assert_eq!(
            ce.subject.as_deref(),
            Some("https://api.partnercenter.microsoft.com/v1/customers/c/subscriptions/s")
        );
        assert!(ce.time.is_some(), "{ce:?}");
        // Not a raw message of pcbridge's: nothing is invented.
        assert_eq!(derive_cloud_event(&[], &m.body, SOURCE), None);
        assert_eq!(derive_cloud_event(&m.headers, b"not json", SOURCE), None);
    }
}
