//! ResourceUri → what to fetch. A URI is resolved by its host, never fetched as given:
//! a Partner Center API host maps to the same path and query on the configured Partner
//! Center base URL, `partner.microsoft.com` (GDAP) maps to Microsoft Graph, and any other
//! host is a permanent error for which no request is made. So the scheme and host of
//! every request come from configuration, and the token only goes to configured hosts.

use url::Url;

/// The GDAP portal host whose URIs name Graph resources.
pub const GDAP_HOST: &str = "partner.microsoft.com";
/// Event whose resource is the subscription's fraud events.
pub const FRAUD_EVENT: &str = "azure-fraud-event-detected";

/// What an event's resource is and where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `GET {partner_center.base_url}{path_and_query}`.
    PartnerCenter { path_and_query: String },
    /// `GET {graph_base_url}{path}` with a Graph token.
    Graph { path: String },
    /// `GET {partner_center.base_url}/v1/fraudEvents?SubscriptionId=…` (every page), and
    /// the subscription itself.
    FraudEvents {
        subscription_id: String,
        /// The subscription's path when the URI names its customer
        /// (`…/customers/{c}/subscriptions/{s}`); otherwise the customer comes from the
        /// fraud events ([`subscription_path`]).
        subscription: Option<String>,
    },
}

/// The Partner Center path of a customer's subscription.
pub fn subscription_path(customer_id: &str, subscription_id: &str) -> String {
    let segment = |s: &str| url::form_urlencoded::byte_serialize(s.trim().as_bytes()).collect::<String>();
    format!("/v1/customers/{}/subscriptions/{}", segment(customer_id), segment(subscription_id))
}

/// Why a URI cannot be resolved. Both are permanent: retrying cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("host {0:?} is not an allowed Partner Center API host; nothing was fetched")]
    ForeignHost(String),
    #[error("cannot resolve {0:?}: {1}")]
    Unresolvable(String, &'static str),
}

/// Resolves URIs against the allow-listed Partner Center API hosts.
#[derive(Debug, Clone)]
pub struct Resolver {
    /// Lowercase host names treated as the Partner Center API.
    api_hosts: Vec<String>,
}

impl Resolver {
    pub fn new(api_hosts: impl IntoIterator<Item = impl AsRef<str>>) -> Self {
        Self { api_hosts: api_hosts.into_iter().map(|h| h.as_ref().trim().to_ascii_lowercase()).collect() }
    }

    /// The resource of an event, `None` when there is nothing to fetch (no ResourceUri).
    pub fn resource(&self, event_name: &str, uri: Option<&str>) -> Result<Option<Target>, ResourceError> {
        let Some(uri) = uri else { return Ok(None) };
        let url = parse(uri)?;
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if host == GDAP_HOST {
            return gdap(&url, uri).map(Some);
        }
        if !self.api_hosts.contains(&host) {
            return Err(ResourceError::ForeignHost(host));
        }
        if event_name == FRAUD_EVENT {
            let names_customer =
                url.query().is_none() && url.path().split('/').any(|segment| segment.eq_ignore_ascii_case("customers"));
            let subscription = names_customer.then(|| api_path(&url));
            return fraud_subscription(&url)
                .map(|subscription_id| Some(Target::FraudEvents { subscription_id, subscription }))
                .ok_or_else(|| {
                    ResourceError::Unresolvable(uri.to_string(), "no subscription id in a fraud event URI")
                });
        }
        Ok(Some(Target::PartnerCenter { path_and_query: api_path(&url) }))
    }

    /// The audit record of an event (`AuditUri`), which is always a Partner Center API URI.
    pub fn audit(&self, uri: Option<&str>) -> Result<Option<Target>, ResourceError> {
        let Some(uri) = uri else { return Ok(None) };
        let url = parse(uri)?;
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if !self.api_hosts.contains(&host) {
            return Err(ResourceError::ForeignHost(host));
        }
        Ok(Some(Target::PartnerCenter { path_and_query: api_path(&url) }))
    }
}

fn parse(uri: &str) -> Result<Url, ResourceError> {
    let url = Url::parse(uri.trim()).map_err(|_| ResourceError::Unresolvable(uri.to_string(), "not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ResourceError::Unresolvable(uri.to_string(), "not an http(s) URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ResourceError::Unresolvable(uri.to_string(), "userinfo is not allowed"));
    }
    if url.host_str().is_none() {
        return Err(ResourceError::Unresolvable(uri.to_string(), "no host"));
    }
    Ok(url)
}

/// Path and query to request on the API base. The catalogue writes some paths with a
/// `/webhooks` prefix (`/webhooks/v1/customers/…`) while the documented GET APIs are
/// `/v1/customers/…`: the prefix is dropped there (but kept for `/webhooks/v1/registration`).
fn api_path(url: &Url) -> String {
    let path = url.path();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let is_version = |s: &str| s.len() > 1 && s.starts_with('v') && s[1..].bytes().all(|b| b.is_ascii_digit());
    let path = if segments.len() > 2
        && segments[0].eq_ignore_ascii_case("webhooks")
        && is_version(segments[1])
        && segments[2].eq_ignore_ascii_case("customers")
    {
        &path["/webhooks".len()..]
    } else {
        path
    };
    match url.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }
}

/// `/granularAdminRelationships/{r}[/accessAssignments/{a}]` → the Graph resource.
fn gdap(url: &Url, uri: &str) -> Result<Target, ResourceError> {
    let segments: Vec<&str> = url.path().trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let base = "/v1.0/tenantRelationships/delegatedAdminRelationships";
    match segments.as_slice() {
        [rel, id] if rel.eq_ignore_ascii_case("granularAdminRelationships") => {
            Ok(Target::Graph { path: format!("{base}/{id}") })
        }
        [rel, id, aa, aid]
            if rel.eq_ignore_ascii_case("granularAdminRelationships")
                && aa.eq_ignore_ascii_case("accessAssignments") =>
        {
            Ok(Target::Graph { path: format!("{base}/{id}/accessAssignments/{aid}") })
        }
        _ => Err(ResourceError::Unresolvable(uri.to_string(), "not a GDAP relationship or access assignment")),
    }
}

/// The subscription of a fraud event: `…/customers/{c}/subscriptions/{s}` or
/// `…/fraudEvents?SubscriptionId={s}`.
fn fraud_subscription(url: &Url) -> Option<String> {
    if let Some((_, v)) = url.query_pairs().find(|(k, _)| k.eq_ignore_ascii_case("SubscriptionId")) {
        let v = v.trim();
        return (!v.is_empty()).then(|| v.to_string());
    }
    let segments: Vec<&str> = url.path().split('/').filter(|s| !s.is_empty()).collect();
    segments
        .windows(2)
        .find(|w| w[0].eq_ignore_ascii_case("subscriptions"))
        .map(|w| w[1].to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> Resolver {
        Resolver::new(["api.partnercenter.microsoft.com", "partner.partnercenterapi.microsoftonline.cn"])
    }

    fn pc(p: &str) -> Option<Target> {
        Some(Target::PartnerCenter { path_and_query: p.into() })
    }

    #[test]
    fn partner_center_uris_keep_path_and_query_and_lose_the_webhooks_prefix() {
        let r = r();
        assert_eq!(
            r.resource(
                "subscription-updated",
                Some("http://api.partnercenter.microsoft.com/webhooks/v1/customers/c1/subscriptions/s1")
            ),
            Ok(pc("/v1/customers/c1/subscriptions/s1"))
        );
        assert_eq!(
            r.resource(
                "x",
                Some("https://API.PartnerCenter.microsoft.com/webhooks/v2/customers/c/migrations/newcommerce/m")
            ),
            Ok(pc("/v2/customers/c/migrations/newcommerce/m"))
        );
        assert_eq!(
            r.resource(
                "test-created",
                Some("http://api.partnercenter.microsoft.com/webhooks/v1/registration/validationEvents/abc")
            ),
            Ok(pc("/webhooks/v1/registration/validationEvents/abc"))
        );
        assert_eq!(
            r.resource(
                "referral-created",
                Some("https://api.partnercenter.microsoft.com/engagements/v1/referrals/r?x=1")
            ),
            Ok(pc("/engagements/v1/referrals/r?x=1"))
        );
        assert_eq!(
            r.resource("x", Some("https://partner.partnercenterapi.microsoftonline.cn/v1/customers/c")),
            Ok(pc("/v1/customers/c"))
        );
        assert_eq!(r.resource("dap-admin-relationship-approved", None), Ok(None));
        assert_eq!(
            r.audit(Some("https://api.partnercenter.microsoft.com/auditactivity/v1/auditrecords/a")),
            Ok(pc("/auditactivity/v1/auditrecords/a"))
        );
    }

    #[test]
    fn gdap_maps_to_graph() {
        let r = r();
        assert_eq!(
            r.resource(
                "granular-admin-relationship-approved",
                Some("https://partner.microsoft.com/granularAdminRelationships/rel-1")
            ),
            Ok(Some(Target::Graph { path: "/v1.0/tenantRelationships/delegatedAdminRelationships/rel-1".into() }))
        );
        assert_eq!(
            r.resource(
                "x",
                Some("https://partner.microsoft.com/granularAdminRelationships/rel-1/accessAssignments/a-2")
            ),
            Ok(Some(Target::Graph {
                path: "/v1.0/tenantRelationships/delegatedAdminRelationships/rel-1/accessAssignments/a-2".into()
            }))
        );
        assert!(r.resource("x", Some("https://partner.microsoft.com/somewhere/else")).is_err());
    }

    #[test]
    fn fraud_events_name_their_subscription() {
        let r = r();
        let want = |subscription: Option<&str>| {
            Ok(Some(Target::FraudEvents { subscription_id: "s-1".into(), subscription: subscription.map(Into::into) }))
        };
        assert_eq!(
            r.resource(FRAUD_EVENT, Some("https://api.partnercenter.microsoft.com/v1/customers/c/subscriptions/s-1 ")),
            want(Some("/v1/customers/c/subscriptions/s-1"))
        );
        assert_eq!(
            r.resource(FRAUD_EVENT, Some("https://api.partnercenter.microsoft.com/v1/fraudEvents?SubscriptionId=s-1")),
            want(None)
        );
        assert_eq!(subscription_path("c 1", "s-1"), "/v1/customers/c+1/subscriptions/s-1");
        assert!(r.resource(FRAUD_EVENT, Some("https://api.partnercenter.microsoft.com/v1/customers/c")).is_err());
    }

    #[test]
    fn foreign_and_tricky_hosts_are_refused() {
        let r = r();
        for uri in [
            "https://evil.example/v1/customers/c",
            "https://api.partnercenter.microsoft.com.evil.example/v1/customers/c",
            "https://127.0.0.1/v1/customers/c",
        ] {
            assert!(matches!(r.resource("x", Some(uri)), Err(ResourceError::ForeignHost(_))), "{uri}");
        }
        for uri in [
            "ftp://api.partnercenter.microsoft.com/x",
            "not a url",
            "https://u:p@api.partnercenter.microsoft.com/x",
            "https://api.partnercenter.microsoft.com@evil.example/v1/customers/c",
        ] {
            assert!(r.resource("x", Some(uri)).is_err(), "{uri}");
        }
        assert!(matches!(r.audit(Some("https://partner.microsoft.com/x")), Err(ResourceError::ForeignHost(_))));
    }
}
