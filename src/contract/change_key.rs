//! The change key (`pc-change-key`): one name for one change Partner Center recorded,
//! whichever way it reached the broker — by webhook or, later, by reconciliation from the
//! audit log and lists (docs/message-contract.md). Downstream services can deduplicate on
//! it across both paths; `pc-event-id` (the body's hash) cannot, since a reconciled event
//! is not byte-identical to the webhook Partner Center would have sent.
//!
//! - A change with an audit record is named by the record's id: `audit:{id}`, taken from
//!   the last path segment of the webhook's `AuditUri` (`…/auditrecords/{id}`).
//! - Otherwise by the event, the resource and its version: `{EventName}|{resource}|{version}`,
//!   the resource being the `ResourceUri` and the version the change time
//!   (`ResourceChangeUtcDate` as RFC 3339 UTC, the CloudEvents `time`) — or, for a change found in a
//!   list, the state that list reports (GDAP: status and `lastModifiedDateTime`).
//! - An event with neither (a test event without a resource) is named by its event id:
//!   `event:{pc-event-id}`.

/// `audit:{id}`: the key of a change that has an audit record.
pub fn from_audit_record(id: &str) -> String {
    format!("audit:{id}")
}

/// `{EventName}|{resource}|{version}`: the key of a change known by its resource's state.
pub fn from_state(event_name: &str, resource: &str, version: &str) -> String {
    format!("{event_name}|{resource}|{version}")
}

/// The audit record id an `AuditUri` names (`…/auditrecords/{id}`), if it names one.
pub fn audit_record_id(audit_uri: &str) -> Option<&str> {
    let path = audit_uri.split(['?', '#']).next()?.trim_end_matches('/');
    let (parent, id) = path.rsplit_once('/')?;
    (parent.ends_with("/auditrecords") && !id.is_empty()).then_some(id)
}

/// The key of a webhook: its audit record, else its event, resource and change time
/// (`change_time`: RFC 3339 UTC), else its event id.
pub fn of_webhook(
    event_name: &str,
    audit_uri: Option<&str>,
    resource_uri: Option<&str>,
    change_time: Option<&str>,
    event_id: &str,
) -> String {
    if let Some(id) = audit_uri.and_then(audit_record_id) {
        return from_audit_record(id);
    }
    match (resource_uri, change_time) {
        (Some(resource), Some(time)) => from_state(event_name, resource, time),
        _ => format!("event:{event_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_is_named_by_its_audit_record_else_by_its_resource_and_time() {
        let audit = "https://api.partnercenter.microsoft.com/v1/auditrecords/4b2a6e33-8791";
        assert_eq!(audit_record_id(audit), Some("4b2a6e33-8791"));
        let other = "https://api.partnercenter.microsoft.com/auditactivity/v1/auditrecords/a_b_c_638331855840159088/";
        assert_eq!(audit_record_id(other), Some("a_b_c_638331855840159088"));
        assert_eq!(audit_record_id("https://api.partnercenter.microsoft.com/v1/customers/c"), None);
        assert_eq!(audit_record_id("https://api.partnercenter.microsoft.com/v1/auditrecords/"), None);
        let resource = "https://api.partnercenter.microsoft.com/v1/customers/c/subscriptions/s";
        let time = "2026-12-01T10:00:00Z";
        assert_eq!(
            of_webhook("subscription-updated", Some(audit), Some(resource), Some(time), "e"),
            "audit:4b2a6e33-8791"
        );
        assert_eq!(
            of_webhook("subscription-updated", None, Some(resource), Some(time), "e"),
            format!("subscription-updated|{resource}|{time}")
        );
        assert_eq!(of_webhook("test-created", None, None, None, "abc"), "event:abc");
        assert_eq!(of_webhook("test-created", Some("not a uri"), Some(resource), None, "abc"), "event:abc");
    }
}
