//! From an audit record to the webhook Partner Center would have sent for it: which
//! event an operation is (by name: [`event_for_operation`]), whether it is a change at all
//! (only `succeeded` operations are), and the webhook body — `EventName`, `ResourceUri`,
//! `ResourceName`, `AuditUri`, `ResourceChangeUtcDate` — with the change key both paths
//! share, so the worker enriches a reconciled event exactly as a delivered one.

use super::audit::AuditRecord;
use crate::contract::change_key;
use crate::partner_center::event::{CATALOGUE, Event};

/// The `source` of changes found in the audit log.
pub const AUDIT: &str = "audit";
/// The one event whose webhooks carry an `AuditUri` (of those reconciliation finds).
const AUDITED_EVENT: &str = "subscription-updated";
use serde_json::{Value, json};

/// Why a record is not published. Each is counted; none is an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// `failed`, `progress`, `decline`, or anything but `succeeded`: no change happened
    /// (yet).
    NotSucceeded(String),
    /// An operation that no webhook event reports (kept as it came, for the summary).
    Unmapped(String),
    /// A mapped operation whose record names no resource the event could point at.
    NoResource(String),
}

impl Skip {
    /// The `reason` label of the skipped-records metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Skip::NotSucceeded(_) => "not-succeeded",
            Skip::Unmapped(_) => "unmapped",
            Skip::NoResource(_) => "no-resource",
        }
    }
}

/// A change to publish: the webhook body and the change key.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub event_name: &'static str,
    pub change_key: String,
    /// The webhook Partner Center would have sent, as JSON.
    pub body: Value,
    /// Where it was found: `audit`, `gdap`, `referrals`, `migrations` (a metric label).
    pub source: &'static str,
}

/// The webhook event an audit operation is reported by, if any.
pub fn event_for_operation(operation: &str) -> Option<&'static str> {
    let named = match operation {
        "update_subscription" | "upgrade_subscription" | "convert_trial_subscription" => "subscription-updated",
        "create_referral" => "referral-created",
        "update_referral" => "referral-updated",
        "create_related_referral" => "related-referral-created",
        "update_related_referral" => "related-referral-updated",
        "create_new_commerce_migration" => "new-commerce-migration-created",
        // GDAP, DAP and fraud operations are named as their events, with underscores.
        other
            if other.starts_with("granular_admin_")
                || other.starts_with("dap_admin_relationship_")
                || other == "azure_fraud_event_detected" =>
        {
            let dashed = other.replace('_', "-");
            return CATALOGUE.iter().copied().find(|name| *name == dashed);
        }
        _ => return None,
    };
    Some(named)
}

/// The change `record` reports, or why it is skipped. `api_base` is Partner Center's
/// base URL as the webhooks write it (`https://api.partnercenter.microsoft.com`).
pub fn change_of(record: &AuditRecord, api_base: &str) -> Result<Change, Skip> {
    if !record.operation_status.eq_ignore_ascii_case("succeeded") {
        return Err(Skip::NotSucceeded(record.operation_status.clone()));
    }
    let event_name =
        event_for_operation(&record.operation_type).ok_or_else(|| Skip::Unmapped(record.operation_type.clone()))?;
    let no_resource = || Skip::NoResource(record.operation_type.clone());
    let new_value = record.new_value();
    let id = new_value.as_ref().and_then(|v| text(v, "id"));
    let customer = record.customer_id.clone().filter(|c| !c.is_empty());
    let base = api_base.trim_end_matches('/');
    let (resource_name, resource_uri) = match event_name {
        "subscription-updated" => {
            let (customer, id) = (customer.clone().ok_or_else(no_resource)?, id.ok_or_else(no_resource)?);
            ("subscription", Some(format!("{base}/webhooks/v1/customers/{customer}/subscriptions/{id}")))
        }
        n if n.contains("referral") => {
            ("referral", Some(format!("{base}/engagements/v1/referrals/{}", id.ok_or_else(no_resource)?)))
        }
        n if n.starts_with("granular-admin-relationship") => (
            "GranularAdminRelationship",
            Some(format!("https://partner.microsoft.com/granularAdminRelationships/{}", id.ok_or_else(no_resource)?)),
        ),
        n if n.starts_with("granular-admin-access-assignment") => {
            let relationship = new_value
                .as_ref()
                .and_then(|v| text(v, "relationshipId").or_else(|| text(v, "delegatedAdminRelationshipId")))
                .ok_or_else(no_resource)?;
            let id = id.ok_or_else(no_resource)?;
            (
                "GranularAdminAccessAssignment",
                Some(format!(
                    "https://partner.microsoft.com/granularAdminRelationships/{relationship}/accessAssignments/{id}"
                )),
            )
        }
        "new-commerce-migration-created" => {
            let (customer, id) = (customer.clone().ok_or_else(no_resource)?, id.ok_or_else(no_resource)?);
            ("NewCommerceMigration", Some(format!("{base}/v1/customers/{customer}/migrations/newcommerce/{id}")))
        }
        "azure-fraud-event-detected" => {
            let subscription = new_value.as_ref().and_then(|v| text(v, "subscriptionId")).ok_or_else(no_resource)?;
            let customer = customer.clone().ok_or_else(no_resource)?;
            ("subscription", Some(format!("{base}/v1/customers/{customer}/subscriptions/{subscription}")))
        }
        // DAP events name no resource, only the customer.
        _ => ("PartnerCustomerDap", None),
    };
    // Only subscription-updated webhooks name their audit record; the others are named
    // by event, resource and change time, and so is their reconciled twin.
    let audit_uri = (event_name == AUDITED_EVENT).then(|| format!("{base}/v1/auditrecords/{}", record.id));
    let mut body = json!({
        "EventName": event_name,
        "ResourceUri": resource_uri,
        "ResourceName": resource_name,
        "AuditUri": audit_uri,
        "ResourceChangeUtcDate": record.operation_date,
    });
    if event_name.starts_with("dap-admin") {
        body["CustomerTenantId"] = json!(customer.ok_or_else(no_resource)?);
    }
    let change_key = key_of(&body).unwrap_or_else(|| change_key::from_audit_record(&record.id));
    Ok(Change { event_name, change_key, body, source: AUDIT })
}

/// The key the webhook `body` would carry (its audit record, else its event, resource
/// and change time); `None` when it names neither (a DAP event: no resource).
pub fn key_of(body: &Value) -> Option<String> {
    let event = Event::from_value(body).ok()?;
    let time = event.change_time_rfc3339();
    let key = change_key::of_webhook(
        &event.name,
        event.audit_uri.as_deref(),
        event.resource_uri.as_deref(),
        time.as_deref(),
        "",
    );
    (key != "event:").then_some(key)
}

/// A field as text: a string, or a number's JSON form.
fn text(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(operation: &str, status: &str, new_value: Value) -> AuditRecord {
        AuditRecord {
            id: "r-1".into(),
            operation_type: operation.into(),
            operation_date: "2026-12-01T10:00:00Z".into(),
            operation_status: status.into(),
            resource_type: String::new(),
            resource_new_value: Some(new_value.to_string()),
            customer_id: Some("c-1".into()),
        }
    }

    const BASE: &str = "https://api.partnercenter.microsoft.com";

    #[test]
    fn operations_map_to_events_by_name() {
        for (op, event) in [
            ("update_subscription", "subscription-updated"),
            ("upgrade_subscription", "subscription-updated"),
            ("convert_trial_subscription", "subscription-updated"),
            ("create_referral", "referral-created"),
            ("update_related_referral", "related-referral-updated"),
            ("granular_admin_relationship_activated", "granular-admin-relationship-activated"),
            ("granular_admin_access_assignment_deleted", "granular-admin-access-assignment-deleted"),
            ("dap_admin_relationship_terminated", "dap-admin-relationship-terminated"),
            ("azure_fraud_event_detected", "azure-fraud-event-detected"),
            ("create_new_commerce_migration", "new-commerce-migration-created"),
        ] {
            assert_eq!(event_for_operation(op), Some(event), "{op}");
        }
        for op in ["create_customer", "granular_admin_relationship_renamed", "update_subscription_", ""] {
            assert_eq!(event_for_operation(op), None, "{op}");
        }
    }

    #[test]
    fn a_succeeded_record_becomes_the_webhook_with_the_shared_change_key() {
        let r = record("update_subscription", "succeeded", json!({"id": "s-1", "quantity": 5}));
        let change = change_of(&r, BASE).expect("a change");
        assert_eq!(change.event_name, "subscription-updated");
        assert_eq!(change.change_key, "audit:r-1");
        assert_eq!(change.body["ResourceUri"], format!("{BASE}/webhooks/v1/customers/c-1/subscriptions/s-1"));
        assert_eq!(change.body["AuditUri"], format!("{BASE}/v1/auditrecords/r-1"));
        assert_eq!(change.body["ResourceChangeUtcDate"], "2026-12-01T10:00:00Z");
        // The webhook of the same change gets the same key from its AuditUri.
        let webhook_key = change_key::of_webhook(
            "subscription-updated",
            change.body["AuditUri"].as_str(),
            change.body["ResourceUri"].as_str(),
            Some("2026-12-01T10:00:00Z"),
            "e",
        );
        assert_eq!(webhook_key, change.change_key);
    }

    #[test]
    fn failed_unmapped_and_resourceless_records_are_skipped() {
        for status in ["failed", "progress", "decline"] {
            let r = record("update_subscription", status, json!({"id": "s"}));
            assert_eq!(change_of(&r, BASE), Err(Skip::NotSucceeded(status.into())));
        }
        let r = record("reset_customer_password", "succeeded", json!({}));
        assert_eq!(change_of(&r, BASE).map_err(|s| s.reason()), Err("unmapped"));
        let r = record("update_subscription", "succeeded", json!({"quantity": 5}));
        assert_eq!(change_of(&r, BASE).map_err(|s| s.reason()), Err("no-resource"));
        let mut r = record("dap_admin_relationship_approved", "succeeded", json!({}));
        assert_eq!(change_of(&r, BASE).expect("dap").body["CustomerTenantId"], "c-1");
        r.customer_id = None;
        assert_eq!(change_of(&r, BASE).map_err(|s| s.reason()), Err("no-resource"));
    }
}
