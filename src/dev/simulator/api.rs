//! The simulator's resources: plausible Partner Center, Graph and fraud-events answers,
//! made up from the path alone so that any event the generator (or a real Partner
//! Center payload) names can be fetched. The same path always gives the same answer.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// A number from 0 to 99 derived from `text`: stable across runs and processes.
pub fn percentile_of(text: &str) -> u32 {
    let digest = Sha256::digest(text.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % 100
}

/// One of `choices`, by `n`.
fn pick(choices: &[&'static str], n: u32) -> &'static str {
    choices[n as usize % choices.len()]
}

/// The resource at `path` (Partner Center or Graph), or `None` (404).
pub fn resource(path: &str) -> Option<Value> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let n = percentile_of(path);
    let value = match parts.as_slice() {
        ["v1", "customers", "usagerecords"] => json!({
            "totalCount": 2,
            "items": [
                {"customerId": "c0ffee00-0000-4000-8000-000000000001", "budget": {"amount": 500}, "totalCost": 512.3 + f64::from(n), "currencyLocale": "en-US", "attributes": {"objectType": "CustomerMonthlyUsageRecord"}},
                {"customerId": "c0ffee00-0000-4000-8000-000000000002", "budget": {"amount": 1000}, "totalCost": 1010.0, "currencyLocale": "en-US", "attributes": {"objectType": "CustomerMonthlyUsageRecord"}}
            ],
            "attributes": {"objectType": "Collection"}
        }),
        ["v1", "customers", customer, "subscriptions", subscription] => json!({
            "id": subscription,
            "entitlementId": format!("{subscription}-e"),
            "offerId": "CFQ7TTC0LH18:0001:CFQ7TTC0HDNQ",
            "offerName": "Microsoft 365 Business Basic",
            "friendlyName": format!("M365 Basic ({})", &customer[..8.min(customer.len())]),
            "quantity": 5 + n,
            "unitType": "Licenses",
            "status": if n < 90 { "active" } else { "suspended" },
            "autoRenewEnabled": true,
            "billingCycle": "monthly",
            "termDuration": "P1Y",
            "links": {"self": {"uri": format!("/customers/{customer}/subscriptions/{subscription}"), "method": "GET"}},
            "attributes": {"objectType": "Subscription"}
        }),
        ["v1", "customers", customer, "migrations", "newcommerce", "schedules", id] => json!({
            "id": id, "customerTenantId": customer, "status": "Failed",
            "errorCode": 1001 + n, "errorDescription": "The current subscription is not eligible for migration.",
            "attributes": {"objectType": "NewCommerceMigrationSchedule"}
        }),
        ["v1", "customers", customer, "migrations", "newcommerce", id] => json!({
            "id": id, "customerTenantId": customer,
            "status": pick(&["Processing", "Completed", "Failed"], n),
            "currentSubscriptionId": format!("{:08x}-0000-4000-8000-{:012x}", n, n),
            "purchaseDuration": "P1Y", "billingCycle": "Monthly",
            "attributes": {"objectType": "NewCommerceMigration"}
        }),
        ["v1", "customers", customer] => json!({
            "id": customer,
            "companyProfile": {"tenantId": customer, "domain": format!("contoso{n}.onmicrosoft.com"), "companyName": format!("Contoso {n}")},
            "relationshipToPartner": "reseller",
            "attributes": {"objectType": "Customer"}
        }),
        ["v1", "auditrecords", id] | ["auditactivity", "v1", "auditrecords", id] => json!({
            "id": id, "partnerId": "3b33e682-00c3-41ee-9dd2-a548adf56438",
            "operationType": "update_subscription", "operationStatus": "succeeded",
            "userPrincipalName": "admin@partner.onmicrosoft.com",
            "operationDate": "2026-01-01T00:00:00Z",
            "attributes": {"objectType": "AuditRecord"}
        }),
        ["engagements", "v1", "referrals", id] => json!({
            "id": id, "name": format!("Referral {n}"), "status": pick(&["New", "Active", "Closed"], n),
            "substatus": "Accepted", "type": "Shared",
            "customerProfile": {"name": format!("Fabrikam {n}"), "size": "100to500employees"},
            "details": {"dealValue": 10000 + n * 100, "currency": "USD"}
        }),
        ["v1.0", "tenantRelationships", "delegatedAdminRelationships", id] => json!({
            "@odata.type": "#microsoft.graph.delegatedAdminRelationship",
            "id": id, "displayName": format!("GDAP {n}"), "duration": "P730D",
            "status": pick(&["approvalPending", "active", "terminated", "expired"], n),
            "customer": {"tenantId": format!("{:08x}-0000-4000-8000-000000000000", n), "displayName": format!("Contoso {n}")},
            "accessDetails": {"unifiedRoles": [{"roleDefinitionId": "729827e3-9c14-49f7-bb1b-9608f156bbb8"}]}
        }),
        ["v1.0", "tenantRelationships", "delegatedAdminRelationships", _, "accessAssignments", id] => json!({
            "@odata.type": "#microsoft.graph.delegatedAdminAccessAssignment",
            "id": id, "status": pick(&["pending", "active", "deleted"], n),
            "accessContainer": {"accessContainerId": format!("{:08x}-1111-4000-8000-000000000000", n), "accessContainerType": "securityGroup"},
            "accessDetails": {"unifiedRoles": [{"roleDefinitionId": "729827e3-9c14-49f7-bb1b-9608f156bbb8"}]}
        }),
        _ => return None,
    };
    Some(value)
}

/// One page of a subscription's fraud events (new events model), or an error message
/// for a request Partner Center would refuse.
pub fn fraud_page(query: &str, new_model: bool) -> Result<Value, &'static str> {
    let q: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let subscription = q.get("SubscriptionId").ok_or("SubscriptionId is required")?;
    let size: u32 = q.get("PageSize").and_then(|s| s.parse().ok()).filter(|s| *s > 0).ok_or("PageSize > 0")?;
    let number: u32 = q.get("PageNumber").and_then(|s| s.parse().ok()).filter(|s| *s > 0).ok_or("PageNumber > 0")?;
    // Most subscriptions have a handful of alerts; a few have several pages.
    let n = percentile_of(subscription);
    let total = if n < 10 { 120 + n * 10 } else { n % 7 };
    let first = (number - 1).saturating_mul(size);
    let events: Vec<Value> = (first..total.min(first.saturating_add(size)))
        .map(|i| {
            let mut e = json!({
                "id": format!("{subscription}-{i}"),
                "eventTime": "2026-01-01T00:00:00Z",
                "eventType": "AzureFraudEvent",
                "eventStatus": "Active",
                "subscriptionId": subscription,
                "severity": pick(&["Low", "Medium", "High"], i),
                "hitCount": (10 + i).to_string(),
                "resourceName": format!("vm-{i}"),
            });
            if new_model {
                let logs = json!([{"activity": "Microsoft.Compute/virtualMachines/write", "count": i}]);
                e["activityLogs"] = Value::String(logs.to_string());
                e["isTest"] = Value::String("false".into());
            }
            e
        })
        .collect();
    Ok(Value::Array(events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partner_center::fraud::parse_page;

    #[test]
    fn every_generated_resource_path_has_an_answer() {
        for p in [
            "/v1/customers/usagerecords",
            "/v1/customers/c/subscriptions/s",
            "/v1/customers/c/migrations/newcommerce/m",
            "/v1/customers/c/migrations/newcommerce/schedules/s",
            "/v1/customers/c",
            "/v1/auditrecords/a",
            "/auditactivity/v1/auditrecords/a",
            "/engagements/v1/referrals/r",
            "/v1.0/tenantRelationships/delegatedAdminRelationships/r",
            "/v1.0/tenantRelationships/delegatedAdminRelationships/r/accessAssignments/a",
        ] {
            assert!(resource(p).is_some(), "{p}");
        }
        assert!(resource("/v1/nothing/here").is_none());
    }

    #[test]
    fn fraud_pages_parse_and_end_with_a_short_page() {
        let sub = (0..1000).map(|i| format!("sub-{i}")).find(|s| percentile_of(s) < 10).expect("a busy subscription");
        let mut seen = 0;
        for page in 1.. {
            let q = format!("SubscriptionId={sub}&EventStatus=Active&PageSize=50&PageNumber={page}");
            let events = parse_page(fraud_page(&q, true).expect("page")).expect("parses");
            seen += events.len();
            if events.len() < 50 {
                break;
            }
        }
        assert_eq!(seen as u32, 120 + percentile_of(&sub) * 10);
        assert!(fraud_page("PageSize=1&PageNumber=1", true).is_err());
    }
}
