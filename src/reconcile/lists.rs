//! Changes the audit log does not record, read from the lists that state them:
//!
//! - **GDAP relationships** (Microsoft Graph `delegatedAdminRelationships`, every page
//!   through `@odata.nextLink`): a relationship whose status is `approved`, `active`,
//!   `terminated` or `expired` reports the event of that name, at the time that status
//!   began (`activatedDateTime`, `endDateTime`, else `lastModifiedDateTime`) — a
//!   customer's approval and an expiry are in no partner audit record. Graph documents no
//!   filter on time, so the list is read whole and filtered here.
//! - **New-commerce migrations** of the customers whose `create_new_commerce_migration`
//!   records the audit log holds (`/v1/migrations/newcommerce?CustomerTenantId=…`, paged
//!   through the `MS-ContinuationToken` header): `Completed` and `Failed` report
//!   `new-commerce-migration-completed` / `-failed`, at `completedTime`.
//!
//! - **Referrals** (`GET {referrals_base_url}/v1.0/engagements/referrals`, newest update
//!   first, through `@odata.nextLink`, App+User): one created or updated within the
//!   range reports `referral-created` / `referral-updated` — incoming referrals are in no
//!   partner audit record. Only a referral's latest update is listed.
//!
//! Each is named like its webhook, by event, resource and change time
//! ([`crate::contract::change_key`]); the change store matches it to a delivered webhook
//! within `reconcile.match_window_secs`.

use super::mapping::{Change, key_of};
use crate::partner_center::resource::GDAP_HOST;
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// The `source` of changes found in Graph's GDAP relationships.
pub const GDAP: &str = "gdap";
/// The `source` of changes found in the new-commerce migrations.
pub const MIGRATIONS: &str = "migrations";

/// The first page of the GDAP relationships (Graph's largest page).
pub const GDAP_FIRST_PAGE: &str = "/v1.0/tenantRelationships/delegatedAdminRelationships?$top=300";

/// The `source` of changes found in the referrals list.
pub const REFERRALS: &str = "referrals";

/// The first page of the referrals, most recently updated first.
pub const REFERRALS_FIRST_PAGE: &str = "/v1.0/engagements/referrals?$orderby=updatedDateTime%20desc&$top=100";

/// The first page of one customer's new-commerce migrations.
pub fn migrations_first_page(customer: &str) -> String {
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("CustomerTenantId", customer)
        .append_pair("PageSize", "300")
        .finish();
    format!("/v1/migrations/newcommerce?{query}")
}

/// A Graph page's items and the path of its `@odata.nextLink`.
pub fn graph_page(body: &Value) -> (Vec<Value>, Option<String>) {
    let items = body.get("value").and_then(Value::as_array).cloned().unwrap_or_default();
    let next = body.get("@odata.nextLink").and_then(Value::as_str).map(path_of);
    (items, next)
}

/// The path and query of an absolute URL (Graph's next links are absolute).
fn path_of(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        },
        Err(_) => url.to_string(),
    }
}

/// What a GDAP relationship's status says, if it is an event, within `[since, until)`.
pub fn gdap_change(item: &Value, since: OffsetDateTime, until: OffsetDateTime) -> Option<Change> {
    let id = item.get("id")?.as_str()?;
    let at = |field: &str| time_of(item, field);
    let (event_name, time) = match item.get("status")?.as_str()? {
        "approved" => ("granular-admin-relationship-approved", at("lastModifiedDateTime")),
        "active" => ("granular-admin-relationship-activated", at("activatedDateTime").or(at("lastModifiedDateTime"))),
        "terminated" => ("granular-admin-relationship-terminated", at("endDateTime").or(at("lastModifiedDateTime"))),
        "expired" => ("granular-admin-relationship-expired", at("endDateTime").or(at("lastModifiedDateTime"))),
        _ => return None,
    };
    let uri = format!("https://{GDAP_HOST}/granularAdminRelationships/{id}");
    listed(event_name, uri, "GranularAdminRelationship", time.filter(|t| (since..until).contains(t))?, GDAP)
}

/// What a migration's status says, if it is an event, within `[since, until)`.
pub fn migration_change(item: &Value, api_base: &str, since: OffsetDateTime, until: OffsetDateTime) -> Option<Change> {
    let id = item.get("id")?.as_str()?;
    let customer = item.get("customerTenantId")?.as_str()?;
    let status = item.get("status")?.as_str()?;
    let event_name = if status.eq_ignore_ascii_case("completed") {
        "new-commerce-migration-completed"
    } else if status.eq_ignore_ascii_case("failed") {
        "new-commerce-migration-failed"
    } else {
        return None;
    };
    let time = time_of(item, "completedTime").or(time_of(item, "startedTime"));
    let uri = format!("{}/v1/customers/{customer}/migrations/newcommerce/{id}", api_base.trim_end_matches('/'));
    listed(event_name, uri, "NewCommerceMigration", time.filter(|t| (since..until).contains(t))?, MIGRATIONS)
}

/// What a referral says within `[since, until)`: created then, updated then (its latest
/// update only: the list keeps no history), or both.
pub fn referral_changes(item: &Value, api_base: &str, since: OffsetDateTime, until: OffsetDateTime) -> Vec<Change> {
    let Some(id) = item.get("id").and_then(Value::as_str) else { return Vec::new() };
    let (created, updated) = (time_of(item, "createdDateTime"), time_of(item, "updatedDateTime"));
    let uri = format!("{}/engagements/v1/referrals/{id}", api_base.trim_end_matches('/'));
    [("referral-created", created), ("referral-updated", updated.filter(|u| Some(*u) != created))]
        .into_iter()
        .filter_map(|(event_name, time)| {
            let time = time.filter(|t| (since..until).contains(t))?;
            listed(event_name, uri.clone(), "referral", time, REFERRALS)
        })
        .collect()
}

/// The webhook a listed change would have been — without an `AuditUri`, as these
/// events' webhooks come — named by the key such a webhook carries.
fn listed(
    event_name: &'static str,
    resource_uri: String,
    resource_name: &str,
    time: OffsetDateTime,
    source: &'static str,
) -> Option<Change> {
    let body = json!({
        "EventName": event_name,
        "ResourceUri": resource_uri,
        "ResourceName": resource_name,
        "AuditUri": null,
        "ResourceChangeUtcDate": time.format(&Rfc3339).ok()?,
    });
    Some(Change { event_name, change_key: key_of(&body)?, body, source })
}

/// A time field of a list item, in UTC.
fn time_of(item: &Value, field: &str) -> Option<OffsetDateTime> {
    item.get(field).and_then(Value::as_str).and_then(parse_time)
}

/// Whether a referrals page (newest update first) reached back before `since`: the
/// pages after it hold only older updates.
pub fn referrals_done(items: &[Value], since: OffsetDateTime) -> bool {
    items.last().and_then(|i| time_of(i, "updatedDateTime")).is_some_and(|t| t < since)
}

fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok().map(|t| t.to_offset(time::UtcOffset::UTC))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const SINCE: OffsetDateTime = datetime!(2026-12-01 0:00 UTC);
    const UNTIL: OffsetDateTime = datetime!(2026-12-03 0:00 UTC);

    #[test]
    fn a_relationship_reports_the_event_of_its_status_when_it_began() {
        let item = |status: &str| {
            json!({"id": "rel-1", "status": status, "lastModifiedDateTime": "2026-12-02T10:00:00Z",
                   "activatedDateTime": "2026-12-02T09:00:00Z", "endDateTime": "2028-12-02T09:00:00Z"})
        };
        let active = gdap_change(&item("active"), SINCE, UNTIL).expect("activated");
        assert_eq!(active.event_name, "granular-admin-relationship-activated");
        assert_eq!(active.body["ResourceChangeUtcDate"], "2026-12-02T09:00:00Z", "when it became active");
        assert_eq!(
            active.change_key,
            "granular-admin-relationship-activated|https://partner.microsoft.com/granularAdminRelationships/rel-1|2026-12-02T09:00:00Z"
        );
        assert_eq!(
            gdap_change(&item("approved"), SINCE, UNTIL).map(|c| c.event_name),
            Some("granular-admin-relationship-approved")
        );
        assert!(gdap_change(&item("expired"), SINCE, UNTIL).is_none(), "ends outside the range");
        for status in ["approvalPending", "activating", "created", "terminationRequested", "somethingNew"] {
            assert!(gdap_change(&item(status), SINCE, UNTIL).is_none(), "{status}");
        }
        assert!(gdap_change(&json!({"status": "active"}), SINCE, UNTIL).is_none(), "no id");
    }

    #[test]
    fn a_finished_migration_reports_completed_or_failed() {
        let item = |status: &str, completed: &str| {
            json!({"id": "m-1", "customerTenantId": "c-1", "status": status,
                   "startedTime": "2026-12-01T08:00:00Z", "completedTime": completed})
        };
        let base = "https://api.partnercenter.microsoft.com";
        let done = migration_change(&item("Completed", "2026-12-01T09:00:00Z"), base, SINCE, UNTIL).expect("completed");
        assert_eq!(done.event_name, "new-commerce-migration-completed");
        assert_eq!(done.body["ResourceUri"], format!("{base}/v1/customers/c-1/migrations/newcommerce/m-1"));
        let failed = migration_change(&item("Failed", "2026-12-01T09:00:00Z"), base, SINCE, UNTIL);
        assert_eq!(failed.map(|c| c.event_name), Some("new-commerce-migration-failed"));
        assert!(migration_change(&item("Processing", ""), base, SINCE, UNTIL).is_none());
        assert!(migration_change(&item("Completed", "2026-11-01T09:00:00Z"), base, SINCE, UNTIL).is_none());
    }

    #[test]
    fn a_referral_reports_its_creation_and_its_latest_update_in_range() {
        let base = "https://api.partnercenter.microsoft.com";
        let item =
            json!({"id": "r-1", "createdDateTime": "2026-12-01T08:00:00Z", "updatedDateTime": "2026-12-02T08:00:00Z"});
        let names: Vec<&str> = referral_changes(&item, base, SINCE, UNTIL).iter().map(|c| c.event_name).collect();
        assert_eq!(names, ["referral-created", "referral-updated"]);
        let fresh =
            json!({"id": "r-2", "createdDateTime": "2026-12-01T08:00:00Z", "updatedDateTime": "2026-12-01T08:00:00Z"});
        assert_eq!(referral_changes(&fresh, base, SINCE, UNTIL).len(), 1, "never updated");
        let old =
            json!({"id": "r-3", "createdDateTime": "2026-10-01T08:00:00Z", "updatedDateTime": "2026-12-02T08:00:00Z"});
        let changes = referral_changes(&old, base, SINCE, UNTIL);
        assert_eq!(changes.iter().map(|c| c.event_name).collect::<Vec<_>>(), ["referral-updated"]);
        assert_eq!(changes[0].body["ResourceUri"], format!("{base}/engagements/v1/referrals/r-3"));
        assert!(referrals_done(&[old.clone(), json!({"updatedDateTime": "2026-11-01T00:00:00Z"})], SINCE));
        assert!(!referrals_done(&[old], SINCE));
    }

    #[test]
    fn graph_pages_follow_the_next_link() {
        let body = json!({"value": [{"id": 1}], "@odata.nextLink":
            "https://graph.microsoft.com/v1.0/tenantRelationships/delegatedAdminRelationships?$top=300&$skiptoken=abc"});
        let (items, next) = graph_page(&body);
        assert_eq!(items.len(), 1);
        assert_eq!(
            next.as_deref(),
            Some("/v1.0/tenantRelationships/delegatedAdminRelationships?$top=300&$skiptoken=abc")
        );
        assert_eq!(graph_page(&json!({"value": []})).1, None);
    }
}
