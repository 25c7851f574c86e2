//! CloudEvents 1.0 in binary content mode: each message's context attributes travel as
//! headers named by the broker's protocol binding — `ce_*` record headers and
//! `content-type` on Kafka, `cloudEvents_*` headers on RabbitMQ (AMQP 0-9-1) and
//! `cloudEvents:*` application properties on AMQP 1.0 (docs/message-contract.md).

/// The CloudEvents spec version written on every message.
pub const SPEC_VERSION: &str = "1.0";

/// The content type (`datacontenttype`) of every message pcbridge publishes: raw
/// webhooks, enriched envelopes and dead letters are all JSON.
pub const CONTENT_TYPE: &str = "application/json";

/// CloudEvents context attributes of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudEvent {
    /// The event id (`pc-event-id`).
    pub id: String,
    /// `partner_center.base_url`.
    pub source: String,
    /// `com.microsoft.partnercenter.{EventName}`, suffixed for enriched messages and
    /// dead letters.
    pub ty: String,
    /// The ResourceUri, when there is one.
    pub subject: Option<String>,
    /// ResourceChangeUtcDate, when it parses.
    pub time: Option<String>,
}

/// A protocol binding: the header name of each attribute.
pub struct Binding {
    /// What every attribute's header starts with.
    prefix: &'static str,
    specversion: &'static str,
    id: &'static str,
    source: &'static str,
    ty: &'static str,
    subject: &'static str,
    time: &'static str,
    /// The content type's header (`datacontenttype`), when the binding has one besides
    /// the protocol's own property.
    pub content_type: Option<&'static str>,
}

/// The Kafka protocol binding: `ce_` record headers and `content-type`.
pub const KAFKA: Binding = Binding {
    prefix: "ce_",
    specversion: "ce_specversion",
    id: "ce_id",
    source: "ce_source",
    ty: "ce_type",
    subject: "ce_subject",
    time: "ce_time",
    content_type: Some("content-type"),
};

/// The AMQP protocol binding: `cloudEvents_` application properties (the content type
/// is the message's own `content_type` property).
pub const AMQP: Binding = Binding {
    prefix: "cloudEvents_",
    specversion: "cloudEvents_specversion",
    id: "cloudEvents_id",
    source: "cloudEvents_source",
    ty: "cloudEvents_type",
    subject: "cloudEvents_subject",
    time: "cloudEvents_time",
    content_type: None,
};

/// The AMQP 1.0 protocol binding (Azure Service Bus): `cloudEvents:` application
/// properties, as the CloudEvents AMQP binding names them (the content type is the
/// message's own `content-type` property).
pub const AMQP_1_0: Binding = Binding {
    prefix: "cloudEvents:",
    specversion: "cloudEvents:specversion",
    id: "cloudEvents:id",
    source: "cloudEvents:source",
    ty: "cloudEvents:type",
    subject: "cloudEvents:subject",
    time: "cloudEvents:time",
    content_type: None,
};

impl CloudEvent {
    /// The attributes as `(header, value)` under `binding`, spec version first.
    pub fn headers<'a>(&'a self, binding: &Binding) -> impl Iterator<Item = (&'static str, &'a str)> {
        [
            Some((binding.specversion, SPEC_VERSION)),
            Some((binding.id, self.id.as_str())),
            Some((binding.source, self.source.as_str())),
            Some((binding.ty, self.ty.as_str())),
            self.subject.as_deref().map(|s| (binding.subject, s)),
            self.time.as_deref().map(|t| (binding.time, t)),
        ]
        .into_iter()
        .flatten()
    }

    /// Splits the binding's headers off the others: the application headers, and the
    /// attributes when `id`, `source` and `type` are all there (other attributes, such
    /// as extensions, are dropped).
    pub fn split(headers: Vec<(String, String)>, binding: &Binding) -> (Vec<(String, String)>, Option<CloudEvent>) {
        let mut rest = Vec::with_capacity(headers.len());
        let (mut id, mut source, mut ty, mut subject, mut time) = (None, None, None, None, None);
        for (k, v) in headers {
            match k.as_str() {
                k if k == binding.id => id = Some(v),
                k if k == binding.source => source = Some(v),
                k if k == binding.ty => ty = Some(v),
                k if k == binding.subject => subject = Some(v),
                k if k == binding.time => time = Some(v),
                // The spec version, extension attributes and the content type.
                k if k.starts_with(binding.prefix) || Some(k) == binding.content_type => {}
                _ => rest.push((k, v)),
            }
        }
        let ce = match (id, source, ty) {
            (Some(id), Some(source), Some(ty)) => Some(CloudEvent { id, source, ty, subject, time }),
            _ => None,
        };
        (rest, ce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_through_each_binding() {
        let ce = CloudEvent {
            id: "abc".into(),
            source: "https://api.partnercenter.microsoft.com".into(),
            ty: "com.microsoft.partnercenter.test-created".into(),
            subject: Some("https://api.partnercenter.microsoft.com/v1/x".into()),
            time: None,
        };
        for binding in [&KAFKA, &AMQP, &AMQP_1_0] {
            let mut headers: Vec<(String, String)> = vec![("pc-event-id".into(), "abc".into())];
            headers.extend(ce.headers(binding).map(|(k, v)| (k.to_string(), v.to_string())));
            if let Some(content_type) = binding.content_type {
                headers.push((content_type.into(), "application/json".into()));
            }
            let (rest, parsed) = CloudEvent::split(headers, binding);
            assert_eq!(parsed.as_ref(), Some(&ce));
            assert_eq!(rest, vec![("pc-event-id".to_string(), "abc".to_string())]);
        }
    }
}
