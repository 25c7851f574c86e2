//! The fraud events API (`GET /v1/fraudEvents` with `X-NewEventsModel: true`): the
//! query of one page, and the events typed tolerantly — numbers and booleans may come as
//! strings, `activityLogs` comes as a JSON document inside a string, and fields this
//! model does not know are kept as they are.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Path and query of one page of a subscription's active fraud events.
pub fn page_path(subscription_id: &str, page_size: u32, page_number: u32) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("SubscriptionId", subscription_id)
        .append_pair("EventStatus", "Active")
        .append_pair("PageSize", &page_size.to_string())
        .append_pair("PageNumber", &page_number.to_string())
        .finish();
    format!("/v1/fraudEvents?{query}")
}

/// One fraud event. Known fields are typed; the rest are in `other`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FraudEvent {
    #[serde(default, deserialize_with = "text", skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(default, deserialize_with = "text", skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
    #[serde(default, deserialize_with = "text", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(default, deserialize_with = "text", skip_serializing_if = "Option::is_none")]
    pub event_status: Option<String>,
    #[serde(default, deserialize_with = "text", skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    #[serde(default, deserialize_with = "text", skip_serializing_if = "Option::is_none")]
    pub customer_tenant_id: Option<String>,
    #[serde(default, deserialize_with = "text", skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// Connections seen between firstObserved and lastObserved (sent as a string).
    #[serde(default, deserialize_with = "number", skip_serializing_if = "Option::is_none")]
    pub hit_count: Option<u64>,
    /// Sent as `"IsTest": "false"`.
    #[serde(default, alias = "IsTest", deserialize_with = "boolean", skip_serializing_if = "Option::is_none")]
    pub is_test: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affected_resources: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_details: Option<Value>,
    /// Decoded from its string form; kept as the string when it is not JSON.
    #[serde(default, deserialize_with = "json_in_string", skip_serializing_if = "Option::is_none")]
    pub activity_logs: Option<Value>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// The events of one page: a bare array, or a collection object (`items` / `value`).
pub fn parse_page(page: Value) -> Result<Vec<FraudEvent>, String> {
    let items = match page {
        Value::Array(items) => items,
        Value::Object(mut o) => match o.remove("items").or_else(|| o.remove("value")).or_else(|| o.remove("Items")) {
            Some(Value::Array(items)) => items,
            _ => return Err("a fraud events page is neither an array nor an object with items".into()),
        },
        Value::Null => Vec::new(),
        _ => return Err("a fraud events page is not an array".into()),
    };
    items.into_iter().map(|v| serde_json::from_value(v).map_err(|e| format!("fraud event: {e}"))).collect()
}

fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    })
}

fn number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Bool(b) => Some(b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => None,
        },
        Value::Number(n) => n.as_u64().map(|n| n != 0),
        _ => None,
    })
}

fn json_in_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Null => None,
        Value::String(s) if s.trim().is_empty() => None,
        Value::String(s) => Some(serde_json::from_str(&s).unwrap_or(Value::String(s))),
        other => Some(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typed_tolerantly() {
        let page = json!([{
            "eventId": "e1", "subscriptionId": "s1", "hitCount": "10", "IsTest": "false",
            "eventStatus": "Active", "eventType": "NetworkConnectionsToCryptoMiningPools",
            "activityLogs": "[{\"statusFrom\":\"Active\",\"statusTo\":\"Investigating\"}]",
            "additionalDetails": {"connectionCount": "31"}, "brandNewField": {"x": 1}
        }]);
        let events = parse_page(page).unwrap();
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!((e.hit_count, e.is_test), (Some(10), Some(false)));
        assert_eq!(e.activity_logs, Some(json!([{"statusFrom": "Active", "statusTo": "Investigating"}])));
        assert_eq!(e.other["brandNewField"], json!({"x": 1}));
        let out = serde_json::to_value(e).unwrap();
        assert_eq!(out["hitCount"], json!(10));
        assert_eq!(out["isTest"], json!(false));
        assert_eq!(out["brandNewField"], json!({"x": 1}));
    }

    #[test]
    fn odd_shapes() {
        assert_eq!(parse_page(json!({"totalCount": 0, "items": []})).unwrap(), vec![]);
        assert_eq!(parse_page(Value::Null).unwrap(), vec![]);
        assert!(parse_page(json!("nope")).is_err());
        let e = &parse_page(json!([{"activityLogs": "not json", "hitCount": 3, "isTest": true}])).unwrap()[0];
        assert_eq!(e.activity_logs, Some(json!("not json")));
        assert_eq!((e.hit_count, e.is_test), (Some(3), Some(true)));
    }

    #[test]
    fn page_query() {
        assert_eq!(
            page_path("a b", 50, 2),
            "/v1/fraudEvents?SubscriptionId=a+b&EventStatus=Active&PageSize=50&PageNumber=2"
        );
    }
}
