//! A [`Message`] as an AMQP 1.0 message and back: durable, `message-id` = the event id
//! (Service Bus duplicate detection drops a resend), `group-id` = the ordering key (a
//! session-enabled Service Bus entity keeps one key's messages in order), the `pc-*`
//! headers and the CloudEvents attributes (`cloudEvents:*`, the CloudEvents AMQP binding)
//! as application properties, `content-type` and the body as one data section.

use crate::broker::{AckToken, Delivery, Message};
use crate::contract::cloud_event::{AMQP_1_0, CloudEvent};
use bytes::Bytes;
use fe2o3_amqp::Sendable;
use fe2o3_amqp_types::{
    messaging::{ApplicationProperties, Body, Data, Header, Message as AmqpMessage, MessageId, Properties},
    primitives::{Binary, SimpleValue, Timestamp, Value},
};
use std::time::{SystemTime, UNIX_EPOCH};

/// What a receiver link reads: any body section (pcbridge writes one data section).
pub(super) type Received = fe2o3_amqp::link::delivery::Delivery<Body<Value>>;

/// The unsettled, durable AMQP 1.0 message of `m`.
pub(super) fn to_sendable(m: &Message) -> Sendable<Data> {
    let mut properties = ApplicationProperties::default();
    for (k, v) in &m.headers {
        properties.insert(k.clone(), SimpleValue::String(v.clone()));
    }
    for (k, v) in m.cloud_event.headers(&AMQP_1_0) {
        properties.insert(k.to_string(), SimpleValue::String(v.to_string()));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let message = AmqpMessage::builder()
        .header(Header { durable: true, ..Default::default() })
        .properties(
            Properties::builder()
                .message_id(m.id.clone())
                .group_id(Some(m.key.clone()))
                .content_type(m.content_type)
                .subject(m.cloud_event.ty.clone())
                .creation_time(Some(Timestamp::from_milliseconds(now)))
                .build(),
        )
        .application_properties(properties)
        .data(Binary::from(m.body.to_vec()))
        .build();
    Sendable::builder().message(message).settled(false).build()
}

/// A received message as a [`Delivery`] of `destination`, acknowledged through `ack`.
/// The ordering key is the `group-id`, else the CloudEvents subject, else the message id.
pub(super) fn to_delivery(destination: &str, message: AmqpMessage<Body<Value>>, ack: AckToken) -> Delivery {
    let mut headers = Vec::new();
    if let Some(properties) = &message.application_properties {
        for (k, v) in properties.iter() {
            headers.push((k.clone(), text(v)));
        }
    }
    let (headers, cloud_event) = CloudEvent::split(headers, &AMQP_1_0);
    let props = message.properties.as_ref();
    let id = props.and_then(|p| p.message_id.as_ref()).map(message_id).unwrap_or_default();
    let key = props
        .and_then(|p| p.group_id.clone())
        .or_else(|| cloud_event.as_ref().and_then(|ce| ce.subject.clone()))
        .unwrap_or(id);
    Delivery { destination: destination.to_string(), key, headers, cloud_event, body: body(message.body), ack }
}

fn text(v: &SimpleValue) -> String {
    match v {
        SimpleValue::String(s) => s.clone(),
        SimpleValue::Symbol(s) => s.0.clone(),
        other => format!("{other:?}"),
    }
}

fn message_id(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => format!("{u:?}"),
        MessageId::Binary(b) => String::from_utf8_lossy(b).into_owned(),
    }
}

/// The body bytes: the data sections joined; a string or binary value as it is.
fn body(body: Body<Value>) -> Bytes {
    match body {
        Body::Data(sections) => {
            let mut bytes = Vec::new();
            for Data(section) in sections {
                bytes.extend_from_slice(&section);
            }
            Bytes::from(bytes)
        }
        Body::Value(v) => match v.0 {
            Value::String(s) => Bytes::from(s),
            Value::Binary(b) => Bytes::from(b.into_vec()),
            other => Bytes::from(format!("{other:?}")),
        },
        Body::Sequence(_) | Body::Empty => Bytes::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::AckInner;

    #[test]
    fn a_message_round_trips_with_its_identity_key_and_attributes() {
        let m = Message {
            destination: "partnercenter.events".into(),
            key: "https://api.partnercenter.microsoft.com/v1/customers/c/subscriptions/s".into(),
            id: "e-1".into(),
            headers: vec![
                ("pc-event-id".into(), "e-1".into()),
                ("pc-event-name".into(), "subscription-updated".into()),
            ],
            cloud_event: CloudEvent {
                id: "e-1".into(),
                source: "https://api.partnercenter.microsoft.com".into(),
                ty: "com.microsoft.partnercenter.subscription-updated".into(),
                subject: Some("https://api.partnercenter.microsoft.com/v1/customers/c/subscriptions/s".into()),
                time: None,
            },
            content_type: "application/json",
            body: Bytes::from_static(b"{\"EventName\":\"subscription-updated\"}"),
        };
        let sendable = to_sendable(&m);
        let message = sendable.message;
        assert!(message.header.as_ref().is_some_and(|h| h.durable), "durable");
        let props = message.properties.clone().expect("properties");
        assert_eq!(props.message_id, Some(MessageId::String("e-1".into())));
        assert_eq!(props.group_id.as_deref(), Some(m.key.as_str()));
        assert_eq!(props.content_type.map(|s| s.0), Some("application/json".into()));
        let app = message.application_properties.clone().expect("application properties");
        assert_eq!(app.get("cloudEvents:type"), Some(&SimpleValue::String(m.cloud_event.ty.clone())));
        assert_eq!(app.get("pc-event-name"), Some(&SimpleValue::String("subscription-updated".into())));
        // As a receiver reads it.
        let received = AmqpMessage {
            header: message.header,
            delivery_annotations: None,
            message_annotations: None,
            properties: message.properties,
            application_properties: message.application_properties,
            body: match message.body {
                Data(b) => Body::Data(vec![Data(b)].into()),
            },
            footer: None,
        };
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let d = to_delivery(&m.destination, received, AckToken(AckInner::Amqp { link: tx, id: 0 }));
        assert_eq!(d.key, m.key);
        assert_eq!(d.headers, m.headers);
        assert_eq!(d.cloud_event, Some(m.cloud_event.clone()));
        assert_eq!(d.body, m.body);
    }
}
