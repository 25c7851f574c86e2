//! The webhook event: tolerant parsing, the catalogue of event names and the event id.
//! (What pcbridge names its destinations is its own contract: `crate::contract`.)
//!
//! Partner Center's documented payloads are loose (stray whitespace, `null` or missing
//! fields, numbers as strings), so parsing asks only for `EventName` and reads every
//! other field leniently: keys case-insensitively, strings trimmed, numbers and booleans
//! accepted where a string is expected, and empty strings treated as absent.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::{OffsetDateTime, PrimitiveDateTime, format_description::well_known::Rfc3339, macros::format_description};

/// Every event name in Microsoft's webhook catalogue.
pub const CATALOGUE: [&str; 24] = [
    "test-created",
    "subscription-updated",
    "usagerecords-thresholdExceeded",
    "referral-created",
    "referral-updated",
    "related-referral-created",
    "related-referral-updated",
    "granular-admin-relationship-approved",
    "granular-admin-relationship-activated",
    "granular-admin-relationship-terminated",
    "granular-admin-relationship-expired",
    "granular-admin-access-assignment-created",
    "granular-admin-access-assignment-activated",
    "granular-admin-access-assignment-updated",
    "granular-admin-access-assignment-deleted",
    "new-commerce-migration-created",
    "new-commerce-migration-completed",
    "new-commerce-migration-failed",
    "new-commerce-migration-schedule-failed",
    "reseller-relationship-accepted-by-customer",
    "dap-admin-relationship-terminated-by-microsoft",
    "dap-admin-relationship-approved",
    "dap-admin-relationship-terminated",
    "azure-fraud-event-detected",
];

/// Whether enriching this event calls an API. Only the DAP events carry no resource
/// (their catalogue entries have no `ResourceUri`); any other name, `unrecognized`
/// included, may point at one.
pub fn needs_api(event_name: &str) -> bool {
    !event_name.trim().starts_with("dap-admin-relationship-")
}

/// Why a body is not a usable event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error("body is not a JSON object")]
    NotAnObject,
    #[error("EventName is missing or empty")]
    MissingEventName,
}

/// The fields of a webhook event that pcbridge uses. The body itself is kept by the
/// caller, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    pub resource_uri: Option<String>,
    pub resource_name: Option<String>,
    pub audit_uri: Option<String>,
    /// `ResourceChangeUtcDate` as sent.
    pub resource_change_utc_date: Option<String>,
}

impl Event {
    /// Parses a webhook body.
    pub fn parse(body: &[u8]) -> Result<Self, EventError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| EventError::NotJson(e.to_string()))?;
        Self::from_value(&value)
    }

    /// Reads an already-parsed webhook.
    pub fn from_value(value: &Value) -> Result<Self, EventError> {
        let map = value.as_object().ok_or(EventError::NotAnObject)?;
        let name = field(map, "EventName").ok_or(EventError::MissingEventName)?;
        Ok(Event {
            name,
            resource_uri: field(map, "ResourceUri"),
            resource_name: field(map, "ResourceName"),
            audit_uri: field(map, "AuditUri"),
            resource_change_utc_date: field(map, "ResourceChangeUtcDate"),
        })
    }

    /// `ResourceChangeUtcDate` as RFC 3339 UTC, when it parses (with or without an
    /// offset; without one it is taken as UTC, as the field's name says).
    pub fn change_time_rfc3339(&self) -> Option<String> {
        let raw = self.resource_change_utc_date.as_deref()?;
        let parsed = OffsetDateTime::parse(raw, &Rfc3339).ok().or_else(|| {
            let naive = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]");
            PrimitiveDateTime::parse(raw, naive).ok().map(|p| p.assume_utc())
        })?;
        parsed.to_offset(time::UtcOffset::UTC).format(&Rfc3339).ok()
    }
}

/// A field by case-insensitive key, as a trimmed non-empty string. Numbers and booleans
/// are accepted in their JSON text form; `null`, objects and arrays are absent.
fn field(map: &Map<String, Value>, key: &str) -> Option<String> {
    let value =
        map.get(key).or_else(|| map.iter().find(|(k, _)| k.trim().eq_ignore_ascii_case(key)).map(|(_, v)| v))?;
    let text = match value {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    (!text.is_empty() && !text.eq_ignore_ascii_case("null")).then_some(text)
}

/// The event id: lowercase hex SHA-256 of the exact body — the deduplication key.
pub fn event_id(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_leniently() {
        let e = Event::parse(
            br#"{"eventname":" subscription-updated ","ResourceUri":"  https://x/v1/a  ","AuditUri":null,
                "ResourceName":42,"Extra":{"a":1},"ResourceChangeUtcDate":"2017-11-16T16:19:06.3520276+00:00"}"#,
        )
        .unwrap();
        assert_eq!(e.name, "subscription-updated");
        assert_eq!(e.resource_uri.as_deref(), Some("https://x/v1/a"));
        assert_eq!(e.resource_name.as_deref(), Some("42"));
        assert_eq!(e.audit_uri, None);
        assert_eq!(e.change_time_rfc3339().as_deref(), Some("2017-11-16T16:19:06.3520276Z"));
    }

    #[test]
    fn times_without_offset_are_utc() {
        let e = Event::parse(br#"{"EventName":"x","ResourceChangeUtcDate":"2018-02-17T00:05:39.5485487"}"#).unwrap();
        assert_eq!(e.change_time_rfc3339().as_deref(), Some("2018-02-17T00:05:39.5485487Z"));
        let e = Event::parse(br#"{"EventName":"x","ResourceChangeUtcDate":"yesterday"}"#).unwrap();
        assert_eq!(e.change_time_rfc3339(), None);
    }

    #[test]
    fn rejects_what_is_not_an_event() {
        assert!(matches!(Event::parse(b"not json"), Err(EventError::NotJson(_))));
        assert_eq!(Event::parse(b"[1]"), Err(EventError::NotAnObject));
        assert_eq!(Event::parse(b"{}"), Err(EventError::MissingEventName));
        assert_eq!(Event::parse(br#"{"EventName":"  "}"#), Err(EventError::MissingEventName));
        assert_eq!(Event::parse(br#"{"EventName":null}"#), Err(EventError::MissingEventName));
    }

    #[test]
    fn event_id_is_sha256_hex() {
        assert_eq!(event_id(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
