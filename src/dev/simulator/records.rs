//! What the simulated Partner Center records of the changes it reports, whether or not
//! it delivers their webhooks: the audit log (`GET /v1/auditrecords`, windows of at most
//! 30 days, pages through `links.next` and `MS-ContinuationToken`), Graph's GDAP
//! relationships (`GET /v1.0/tenantRelationships/delegatedAdminRelationships`) and the
//! referrals (`GET /v1.0/engagements/referrals`).
//! Reconciliation reads them back.

use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// The audit log and the relationships list.
#[derive(Debug, Default)]
pub(crate) struct Records {
    /// Audit records, oldest first.
    audit: Vec<Value>,
    /// Relationship id → the relationship as Graph lists it.
    relationships: BTreeMap<String, Value>,
    /// Referral id → the referral as the referrals API lists it.
    referrals: BTreeMap<String, Value>,
}

impl Records {
    /// Records what the webhook `event` reports: a `subscription-updated` is an
    /// `update_subscription` audit record (named by the id its `AuditUri` ends in); a
    /// `granular-admin-relationship-activated` makes the relationship active since then.
    pub(crate) fn record(&mut self, event: &Value) {
        let text = |k: &str| event.get(k).and_then(Value::as_str).unwrap_or_default();
        let (name, uri, at) = (text("EventName"), text("ResourceUri"), text("ResourceChangeUtcDate"));
        let segments: Vec<&str> = uri.split('/').collect();
        match name {
            "subscription-updated" => {
                let Some(id) = text("AuditUri").rsplit('/').next().filter(|s| !s.is_empty()) else { return };
                let (Some(customer), Some(subscription)) =
                    (segment_after(&segments, "customers"), segment_after(&segments, "subscriptions"))
                else {
                    return;
                };
                self.audit.push(json!({
                    "id": id,
                    "partnerId": "3b33e682-00c3-41ee-9dd2-a548adf56438",
                    "customerId": customer,
                    "resourceType": "subscription",
                    "operationType": "update_subscription",
                    "operationStatus": "succeeded",
                    "operationDate": at,
                    "resourceNewValue": json!({"id": subscription, "quantity": 5}).to_string(),
                    "userPrincipalName": "admin@partner.onmicrosoft.com",
                }));
            }
            "granular-admin-relationship-activated" => {
                let Some(id) = segment_after(&segments, "granularAdminRelationships") else { return };
                self.relationships.insert(
                    id.to_string(),
                    json!({"id": id, "status": "active", "activatedDateTime": at, "lastModifiedDateTime": at,
                           "displayName": format!("GDAP {id}"), "duration": "P730D"}),
                );
            }
            "referral-created" | "referral-updated" => {
                let Some(id) = segment_after(&segments, "referrals") else { return };
                // An update of a referral this run never saw created: created long ago.
                let created = if name == "referral-created" { at.to_string() } else { "2025-01-01T00:00:00Z".into() };
                let referral = self.referrals.entry(id.to_string()).or_insert_with(
                    || json!({"id": id, "createdDateTime": created, "status": "New", "direction": "Incoming"}),
                );
                referral["updatedDateTime"] = json!(at);
            }
            _ => {}
        }
    }

    /// The audit log page `query` and `continuation` ask for, or why Partner Center
    /// would refuse it. Returns the body.
    pub(crate) fn audit_page(&self, query: &str, continuation: Option<&str>) -> Result<Value, &'static str> {
        let q: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let date = |k: &str| q.get(k).and_then(|d| OffsetDateTime::parse(d, &Rfc3339).ok());
        let (Some(start), Some(end)) = (date("startDate"), date("endDate")) else {
            return Err("startDate and endDate (RFC 3339) are required");
        };
        if end - start > time::Duration::days(30) || OffsetDateTime::now_utc() - start > time::Duration::days(90) {
            return Err("at most 30 days per request, within the last 90 days");
        }
        let size: usize = q.get("size").and_then(|s| s.parse().ok()).filter(|s| *s > 0).unwrap_or(500);
        let offset: usize = continuation.and_then(|c| c.parse().ok()).unwrap_or(0);
        let in_range: Vec<&Value> = self
            .audit
            .iter()
            .filter(|r| {
                let at = r["operationDate"].as_str().and_then(|d| OffsetDateTime::parse(d, &Rfc3339).ok());
                at.is_some_and(|t| t >= start && t < end)
            })
            .collect();
        let items: Vec<&Value> = in_range.iter().skip(offset).take(size).copied().collect();
        let mut page = json!({"totalCount": items.len(), "items": items, "attributes": {"objectType": "Collection"}});
        if offset + size < in_range.len() {
            page["links"] = json!({"next": {
                "uri": format!("/v1/auditrecords?{query}"),
                "method": "GET",
                "headers": [{"key": "MS-ContinuationToken", "value": (offset + size).to_string()}],
            }});
        }
        Ok(page)
    }

    /// The referrals list (one page), most recently updated first.
    pub(crate) fn referrals_page(&self) -> Value {
        let mut items: Vec<&Value> = self.referrals.values().collect();
        items.sort_by(|a, b| b["updatedDateTime"].as_str().cmp(&a["updatedDateTime"].as_str()));
        json!({"value": items})
    }

    /// Graph's relationships list (one page).
    pub(crate) fn relationships_page(&self) -> Value {
        json!({"value": self.relationships.values().collect::<Vec<_>>()})
    }
}

fn segment_after<'a>(segments: &[&'a str], name: &str) -> Option<&'a str> {
    let i = segments.iter().position(|s| *s == name)?;
    segments.get(i + 1).copied().filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_update_is_audited_and_paged() {
        let mut records = Records::default();
        let now = OffsetDateTime::now_utc();
        for i in 0..3 {
            let at = (now - time::Duration::minutes(10 - i)).format(&Rfc3339).unwrap_or_default();
            records.record(&json!({
                "EventName": "subscription-updated",
                "ResourceUri": format!("https://api.partnercenter.microsoft.com/webhooks/v1/customers/c-1/subscriptions/s-{i}"),
                "AuditUri": format!("https://api.partnercenter.microsoft.com/v1/auditrecords/a-{i}"),
                "ResourceChangeUtcDate": at,
            }));
        }
        let fmt = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("startDate", &fmt(now - time::Duration::hours(1)))
            .append_pair("endDate", &fmt(now))
            .append_pair("size", "2")
            .finish();
        let first = records.audit_page(&query, None).expect("page");
        assert_eq!(first["items"].as_array().map(Vec::len), Some(2));
        assert_eq!(first["items"][0]["id"], "a-0");
        assert_eq!(first["items"][0]["customerId"], "c-1");
        let token = first["links"]["next"]["headers"][0]["value"].as_str().expect("continuation");
        let second = records.audit_page(&query, Some(token)).expect("page");
        assert_eq!(second["items"][0]["id"], "a-2");
        assert!(second.get("links").is_none(), "the last page");
        assert!(records.audit_page("size=2", None).is_err());
    }
}
