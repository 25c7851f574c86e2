//! Partner Center's audit log (`GET /v1/auditrecords`): the records of a time range, read
//! in windows of at most 30 days (the API's limit per request) within the 90 days it
//! keeps, page after page through `links.next` and its `MS-ContinuationToken`.

use serde::Deserialize;
use serde_json::Value;
use time::{Duration, OffsetDateTime, format_description::well_known::Rfc3339};

/// The longest range one request may ask for.
pub const MAX_WINDOW: Duration = Duration::days(30);
/// How long Partner Center keeps audit records: a `startDate` older than this is refused.
pub const RETENTION: Duration = Duration::days(90);

/// One audit record, with the fields reconciliation reads. Unknown operation types and
/// statuses are kept as they come.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub id: String,
    pub operation_type: String,
    /// RFC 3339.
    pub operation_date: String,
    /// `succeeded`, `failed`, `progress`, `decline`.
    pub operation_status: String,
    #[serde(default)]
    pub resource_type: String,
    /// The resource after the change: JSON, in a string.
    #[serde(default)]
    pub resource_new_value: Option<String>,
    #[serde(default)]
    pub customer_id: Option<String>,
}

impl AuditRecord {
    /// `resourceNewValue` parsed, when it is JSON.
    pub fn new_value(&self) -> Option<Value> {
        serde_json::from_str(self.resource_new_value.as_deref()?).ok()
    }
}

/// A range that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("--since is after --until")]
    Empty,
    #[error("--since reaches back {days} days; Partner Center keeps audit records for 90")]
    TooOld { days: i64 },
}

/// `[since, until)` cut into windows of at most 30 days, oldest first.
pub fn windows(
    since: OffsetDateTime,
    until: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<Vec<(OffsetDateTime, OffsetDateTime)>, RangeError> {
    if since >= until {
        return Err(RangeError::Empty);
    }
    if now - since > RETENTION {
        return Err(RangeError::TooOld { days: (now - since).whole_days() });
    }
    let mut out = Vec::new();
    let mut start = since;
    while start < until {
        let end = (start + MAX_WINDOW).min(until);
        out.push((start, end));
        start = end;
    }
    Ok(out)
}

/// One page of records, and how to ask for the next.
#[derive(Debug, Default)]
pub struct Page {
    pub records: Vec<AuditRecord>,
    /// Records that did not parse (counted, not fatal).
    pub unreadable: usize,
    /// The next page: its path and query, and its headers (`MS-ContinuationToken`).
    pub next: Option<(String, Vec<(String, String)>)>,
}

/// The path of the first page of a window.
pub fn first_page(start: OffsetDateTime, end: OffsetDateTime, size: u32) -> String {
    let fmt = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("startDate", &fmt(start))
        .append_pair("endDate", &fmt(end))
        .append_pair("size", &size.to_string())
        .finish();
    format!("/v1/auditrecords?{query}")
}

/// A page's records and its `links.next` (a relative or absolute URI, with headers).
pub fn parse_page(body: &Value) -> Page {
    let mut page = Page::default();
    for item in body.get("items").and_then(Value::as_array).into_iter().flatten() {
        match serde_json::from_value::<AuditRecord>(item.clone()) {
            Ok(record) => page.records.push(record),
            Err(_) => page.unreadable += 1,
        }
    }
    let next = body.pointer("/links/next");
    if let Some(uri) = next.and_then(|n| n.get("uri")).and_then(Value::as_str) {
        let headers = next
            .and_then(|n| n.get("headers"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|h| Some((h.get("key")?.as_str()?.to_string(), h.get("value")?.as_str()?.to_string())))
            .collect();
        page.next = Some((path_of(uri), headers));
    }
    page
}

/// `/v1/auditrecords?…` of a next link, whether written relative (`/v1/…`, `v1/…`) or
/// absolute (`https://api.partnercenter.microsoft.com/v1/…`).
fn path_of(uri: &str) -> String {
    let rest = match uri.find("://") {
        Some(scheme) => uri[scheme + 3..].find('/').map_or("/", |slash| &uri[scheme + 3 + slash..]),
        None => uri,
    };
    if rest.starts_with('/') { rest.to_string() } else { format!("/{rest}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    #[test]
    fn ranges_are_cut_into_windows_of_thirty_days_within_ninety() {
        let now = datetime!(2026-12-04 12:00 UTC);
        let w = windows(now - Duration::hours(48), now, now).expect("48 h");
        assert_eq!(w, vec![(now - Duration::hours(48), now)]);
        let w = windows(now - Duration::days(75), now, now).expect("75 days");
        assert_eq!(w.len(), 3);
        assert!(w.iter().all(|(a, b)| *b - *a <= MAX_WINDOW));
        assert_eq!((w[0].0, w[2].1), (now - Duration::days(75), now));
        assert!(w.windows(2).all(|p| p[0].1 == p[1].0), "contiguous");
        assert_eq!(windows(now - Duration::days(91), now, now), Err(RangeError::TooOld { days: 91 }));
        assert_eq!(windows(now, now - Duration::hours(1), now), Err(RangeError::Empty));
    }

    #[test]
    fn a_page_gives_its_records_and_the_next_link_with_its_continuation() {
        let body = json!({
            "totalCount": 3,
            "items": [
                {"id": "a", "operationType": "update_subscription", "operationDate": "2026-12-01T10:00:00Z",
                 "operationStatus": "succeeded", "resourceType": "subscription",
                 "resourceNewValue": "{\"id\":\"s-1\"}", "customerId": "c-1"},
                {"id": "b", "operationType": "some_future_operation", "operationDate": "2026-12-01T11:00:00Z",
                 "operationStatus": "progress"},
                {"operationType": "no id"}
            ],
            "links": {"next": {"uri": "/v1/auditrecords?size=2&startDate=x", "method": "GET",
                               "headers": [{"key": "MS-ContinuationToken", "value": "tok=="}]}}
        });
        let page = parse_page(&body);
        assert_eq!(page.records.len(), 2);
        assert_eq!(page.unreadable, 1);
        assert_eq!(page.records[0].new_value(), Some(json!({"id": "s-1"})));
        assert_eq!(page.records[1].operation_type, "some_future_operation", "unknown types are kept");
        let (path, headers) = page.next.expect("next");
        assert_eq!(path, "/v1/auditrecords?size=2&startDate=x");
        assert_eq!(headers, vec![("MS-ContinuationToken".to_string(), "tok==".to_string())]);
        assert_eq!(path_of("https://api.partnercenter.microsoft.com/v1/auditrecords?x=1"), "/v1/auditrecords?x=1");
        assert_eq!(path_of("v1/auditrecords?x=1"), "/v1/auditrecords?x=1");
        assert!(parse_page(&json!({"items": []})).next.is_none());
    }

    #[test]
    fn the_first_page_asks_for_the_window() {
        let p = first_page(datetime!(2026-12-01 0:00 UTC), datetime!(2026-12-03 0:00 UTC), 500);
        assert_eq!(p, "/v1/auditrecords?startDate=2026-12-01T00%3A00%3A00Z&endDate=2026-12-03T00%3A00%3A00Z&size=500");
    }
}
