//! A realistic stream of Partner Center webhook events: every catalogue type, shaped like
//! Microsoft's examples, with fresh ids drawn from a small population of customers,
//! subscriptions and GDAP relationships, so that several events concern one resource (and
//! their order matters) the way it does in real traffic.

use crate::partner_center::event::CATALOGUE;
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use uuid::Uuid;

/// The host Partner Center writes in ResourceUri and AuditUri.
pub const API_HOST: &str = "https://api.partnercenter.microsoft.com";

/// One generated event.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: &'static str,
    /// The body as Partner Center would send it (compact JSON).
    pub body: Vec<u8>,
    /// For `test-created`: the validation event's correlation id.
    pub correlation_id: Option<String>,
}

/// Relative frequency of each event in the random part of the stream: subscription
/// changes dominate real traffic, DAP and test events are rare.
fn weight(name: &str) -> u32 {
    match name {
        "subscription-updated" => 30,
        "usagerecords-thresholdExceeded" | "azure-fraud-event-detected" => 4,
        n if n.starts_with("new-commerce-migration") || n.contains("referral") => 3,
        "reseller-relationship-accepted-by-customer" => 3,
        n if n.starts_with("granular-admin") => 2,
        _ => 1,
    }
}

/// Generates events: first one of each catalogue type in catalogue order, then a weighted
/// random mix.
pub struct Generator {
    rng: fastrand::Rng,
    customers: Vec<Uuid>,
    /// (customer, subscription)
    subscriptions: Vec<(Uuid, Uuid)>,
    relationships: Vec<String>,
    sent: usize,
    total_weight: u32,
}

impl Generator {
    pub fn new(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut id = || Uuid::from_u128(rng.u128(..));
        let customers: Vec<Uuid> = (0..12).map(|_| id()).collect();
        let subscriptions = (0..30).map(|i| (customers[i % customers.len()], id())).collect();
        let relationships = (0..8).map(|_| format!("{}-{}", id(), id())).collect();
        Self {
            rng,
            customers,
            subscriptions,
            relationships,
            sent: 0,
            total_weight: CATALOGUE.iter().map(|n| weight(n)).sum(),
        }
    }

    /// The next event of the stream.
    pub fn next_sample(&mut self) -> Sample {
        let name = if self.sent < CATALOGUE.len() {
            CATALOGUE[self.sent]
        } else {
            let mut pick = self.rng.u32(..self.total_weight);
            let mut chosen = CATALOGUE[0];
            for n in CATALOGUE {
                if pick < weight(n) {
                    chosen = n;
                    break;
                }
                pick -= weight(n);
            }
            chosen
        };
        self.sent += 1;
        self.sample(name)
    }

    /// One event of type `name`.
    pub fn sample(&mut self, name: &'static str) -> Sample {
        let now = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
        let (customer, subscription) = self.subscriptions[self.rng.usize(..self.subscriptions.len())];
        let other_customer = self.customers[self.rng.usize(..self.customers.len())];
        let relationship = self.relationships[self.rng.usize(..self.relationships.len())].clone();
        let fresh = Uuid::from_u128(self.rng.u128(..));
        let mut correlation_id = None;
        let (resource_name, uri, audit) = match name {
            "test-created" => {
                correlation_id = Some(fresh.to_string());
                ("test", Some(format!("{API_HOST}/webhooks/v1/registration/validationEvents/{fresh}")), None)
            }
            "subscription-updated" => (
                "subscription",
                Some(format!("{API_HOST}/webhooks/v1/customers/{customer}/subscriptions/{subscription}")),
                Some(format!("{API_HOST}/v1/auditrecords/{fresh}")),
            ),
            "usagerecords-thresholdExceeded" => {
                ("usagerecords", Some(format!("{API_HOST}/v1/customers/usagerecords")), None)
            }
            n if n.contains("referral") => {
                ("referral", Some(format!("{API_HOST}/engagements/v1/referrals/{}", fresh.simple())), None)
            }
            n if n.starts_with("granular-admin-relationship") => (
                "granularAdminRelationship",
                Some(format!("https://partner.microsoft.com/granularAdminRelationships/{relationship}")),
                None,
            ),
            n if n.starts_with("granular-admin-access-assignment") => (
                "granularAdminAccessAssignment",
                Some(format!(
                    "https://partner.microsoft.com/granularAdminRelationships/{relationship}/accessAssignments/{}",
                    fresh.simple()
                )),
                None,
            ),
            "new-commerce-migration-schedule-failed" => (
                "newCommerceMigrationSchedule",
                Some(format!("{API_HOST}/v1/customers/{customer}/migrations/newcommerce/schedules/{fresh}")),
                None,
            ),
            n if n.starts_with("new-commerce-migration") => (
                "newCommerceMigration",
                Some(format!("{API_HOST}/v1/customers/{customer}/migrations/newcommerce/{fresh}")),
                None,
            ),
            "reseller-relationship-accepted-by-customer" => (
                "customer",
                Some(format!("{API_HOST}/v1/customers/{other_customer}")),
                Some(format!("{API_HOST}/auditactivity/v1/auditrecords/{fresh}_{other_customer}_resellerrelationship")),
            ),
            "azure-fraud-event-detected" => {
                ("subscription", Some(format!("{API_HOST}/v1/customers/{customer}/subscriptions/{subscription}")), None)
            }
            // DAP events name no resource.
            _ => ("PartnerCustomerDap", None, None),
        };
        let mut event = json!({
            "EventName": name,
            "ResourceUri": uri,
            "ResourceName": resource_name,
            "AuditUri": audit,
            "ResourceChangeUtcDate": now,
        });
        if name.starts_with("dap-admin") {
            event["CustomerTenantId"] = json!(other_customer.to_string());
        }
        Sample { name, body: serde_json::to_vec(&event).unwrap_or_default(), correlation_id }
    }
}

/// The event body of a `test-created` validation event for `correlation_id`.
pub fn test_created(correlation_id: &str) -> Value {
    json!({
        "EventName": "test-created",
        "ResourceUri": format!("{API_HOST}/webhooks/v1/registration/validationEvents/{correlation_id}"),
        "ResourceName": "test",
        "AuditUri": null,
        "ResourceChangeUtcDate": OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partner_center::event::Event;
    use crate::partner_center::resource::Resolver;

    #[test]
    fn every_catalogue_type_first_and_every_event_resolves() {
        let mut g = Generator::new(7);
        let resolver = Resolver::new(["api.partnercenter.microsoft.com"]);
        let first: Vec<&str> = (0..CATALOGUE.len()).map(|_| g.next_sample().name).collect();
        assert_eq!(first, CATALOGUE.to_vec());
        for _ in 0..500 {
            let s = g.next_sample();
            let e = Event::parse(&s.body).expect("parses");
            assert_eq!(e.name, s.name);
            let target = resolver.resource(&e.name, e.resource_uri.as_deref()).expect("resolves");
            assert_eq!(target.is_none(), s.name.starts_with("dap-"), "{}", s.name);
            resolver.audit(e.audit_uri.as_deref()).expect("audit resolves");
        }
    }
}
