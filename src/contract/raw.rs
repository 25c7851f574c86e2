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
        cloud_event: CloudEvent {
            id: event_id,
            source: source.to_string(),
            ty: cloud_event_type(&event.name),
            subject: event.resource_uri.clone(),
            time,
        },
        content_type: super::cloud_event::CONTENT_TYPE,
        body,
    }
}
