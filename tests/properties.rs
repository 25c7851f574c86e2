//! Hostile and malformed input, generated: the parsers that read what the network sends
//! (signature headers, the event, fraud pages, ResourceUris, certificate URLs) never
//! panic, and their security properties hold for every generated input. cargo fuzz needs
//! a nightly toolchain this machine cannot fetch, so these are proptest properties:
//! `make test` runs proptest's default number of cases, `make soak` many more
//! (PROPTEST_CASES). A failing input proptest finds is kept in
//! `tests/properties.proptest-regressions` and replayed on every run.

use http::{HeaderMap, HeaderName, HeaderValue};
use pcbridge::config::SignatureConfig;
use pcbridge::contract::destinations::{Destinations, is_safe_name};
use pcbridge::partner_center::certificate::CertificateStore;
use pcbridge::partner_center::event::Event;
use pcbridge::partner_center::fraud::parse_page;
use pcbridge::partner_center::resource::{Resolver, Target};
use pcbridge::partner_center::signature::{SignatureHeaders, VerifyError};
use proptest::prelude::*;
use serde_json::Value;

/// Any JSON value, nested a few levels.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,12}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// URL-ish text aimed at the host checks: other hosts, schemes, userinfo, IP literals,
/// encodings and dot segments around the allowed names.
fn hostile_url() -> impl Strategy<Value = String> {
    let scheme = prop_oneof![Just("https"), Just("http"), Just("file"), Just("ftp"), Just("HTTPS"), Just("gopher")];
    let userinfo = prop_oneof![Just(""), Just("api.partnercenter.microsoft.com@"), Just("127.0.0.1:1@"), Just("u:p@")];
    let host = prop_oneof![
        Just("api.partnercenter.microsoft.com".to_string()),
        Just("API.PartnerCenter.Microsoft.com".to_string()),
        Just("api.partnercenter.microsoft.com.evil.test".to_string()),
        Just("evil.test".to_string()),
        Just("127.0.0.1".to_string()),
        Just("127.0.0.1:1".to_string()),
        Just("[::1]".to_string()),
        Just("2130706433".to_string()),
        Just("0x7f.0.0.1".to_string()),
        Just("partner.microsoft.com".to_string()),
        // Names that resolve to loopback: refused by name, never resolved first.
        Just("localhost".to_string()),
        Just("127.0.0.1.nip.io".to_string()),
        Just("localtest.me".to_string()),
        Just("api.partnercenter.microsoft.com%2eevil.test".to_string()),
        "[a-z0-9.-]{0,20}",
    ];
    let path = prop_oneof![
        Just("/cert/x.cer".to_string()),
        Just("/cert/../admin".to_string()),
        Just("/cert/%2e%2e/admin".to_string()),
        Just("/certificates/x".to_string()),
        Just("/v1/customers/c/subscriptions/s".to_string()),
        "(/[a-zA-Z0-9%._~-]{0,10}){0,4}",
    ];
    let tail = prop_oneof![Just(""), Just("?a=1"), Just("#frag"), Just("\\@evil.test")];
    (scheme, userinfo, host, path, tail).prop_map(|(s, u, h, p, t)| format!("{s}://{u}{h}{p}{t}"))
}

proptest! {
    #[test]
    fn signature_headers_never_panic(
        auth in ".{0,300}", url in ".{0,120}", alg in ".{0,30}", ms in proptest::option::of(".{0,300}"),
        bytes in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut h = HeaderMap::new();
        for (name, value) in [("authorization", auth.as_bytes()), ("x-ms-certificate-url", url.as_bytes()),
                              ("x-ms-signature-algorithm", alg.as_bytes()), ("x-ms-signature", &bytes)] {
            if let Ok(v) = HeaderValue::from_bytes(value) {
                h.insert(HeaderName::from_static(name), v);
            }
        }
        if let Some(ms) = ms.and_then(|m| HeaderValue::from_str(&m).ok()) {
            h.insert(HeaderName::from_static("x-ms-signature"), ms);
        }
        let _ = SignatureHeaders::from_headers(&h);
    }

    #[test]
    fn a_well_formed_signature_header_round_trips(sig in prop::collection::vec(any::<u8>(), 1..600)) {
        use base64::Engine;
        let text = base64::engine::general_purpose::STANDARD.encode(&sig);
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_str(&format!("Signature {text}")).unwrap());
        h.insert("x-ms-certificate-url", HeaderValue::from_static("https://x/cert/a.cer"));
        h.insert("x-ms-signature-algorithm", HeaderValue::from_static("RSA-SHA256"));
        let parsed = SignatureHeaders::from_headers(&h).unwrap();
        prop_assert_eq!(parsed.signature, sig);
    }

    #[test]
    fn event_parser_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Event::parse(&body);
    }

    #[test]
    fn event_parser_reads_any_object_with_an_event_name(mut v in json(), name in "[ ]{0,2}[a-zA-Z0-9._-]{1,40}[ ]{0,2}") {
        if !v.is_object() {
            v = serde_json::json!({"other": v});
        }
        v["EventName"] = Value::String(name.clone());
        let body = serde_json::to_vec(&v).unwrap();
        let e = Event::parse(&body).unwrap();
        prop_assert_eq!(e.name.as_str(), name.trim());
        // Whatever the name, its destination is a safe name under the prefix.
        let raw = Destinations::new("p.").raw(&e.name);
        prop_assert!(raw.starts_with("p.") && is_safe_name(&raw[2..]));
    }

    #[test]
    fn any_json_as_event_or_fraud_page_never_panics(v in json()) {
        let _ = Event::from_value(&v);
        let _ = parse_page(v);
    }

    /// SSRF: a ResourceUri is only ever turned into a request on a configured base, and
    /// only when its host is an allowed API host (or the GDAP host, mapped to Graph).
    #[test]
    fn resource_uris_resolve_only_for_allowed_hosts(uri in hostile_url(), name in "[a-z-]{1,30}") {
        let resolver = Resolver::new(["api.partnercenter.microsoft.com"]);
        let parsed = url::Url::parse(&uri).ok();
        let host = parsed.as_ref().and_then(|u| u.host_str()).map(str::to_ascii_lowercase);
        let userinfo = parsed.as_ref().is_some_and(|u| !u.username().is_empty() || u.password().is_some());
        match resolver.resource(&name, Some(&uri)) {
            Ok(Some(Target::PartnerCenter { path_and_query })) | Ok(Some(Target::FraudEvents { subscription_id: path_and_query, .. })) => {
                prop_assert_eq!(host.as_deref(), Some("api.partnercenter.microsoft.com"), "{} → {}", uri, path_and_query);
                prop_assert!(!userinfo, "userinfo accepted: {}", uri);
            }
            Ok(Some(Target::Graph { path })) => {
                prop_assert_eq!(host.as_deref(), Some("partner.microsoft.com"), "{} → {}", uri, path);
                prop_assert!(path.starts_with("/v1.0/tenantRelationships/delegatedAdminRelationships/"));
            }
            Ok(None) | Err(_) => {}
        }
        let _ = resolver.audit(Some(&uri));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// SSRF: a certificate URL outside the trusted prefix is refused before any
    /// connection; one inside it is fetched (here: a closed port, so 503-class).
    #[test]
    fn certificate_urls_are_fetched_only_under_the_trusted_prefix(url in hostile_url()) {
        let config = SignatureConfig {
            trusted_certificate_url_prefixes: vec!["https://127.0.0.1:1/cert/".into()],
            fetch_timeout_ms: 500,
            ..SignatureConfig::default()
        };
        let store = CertificateStore::new(&config).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let result = rt.block_on(store.get(&url));
        let parsed = url::Url::parse(&url).ok();
        let trusted = parsed.as_ref().is_some_and(|u| {
            u.scheme() == "https" && u.host_str() == Some("127.0.0.1") && u.port() == Some(1)
                && u.username().is_empty() && u.password().is_none() && u.path().starts_with("/cert/")
        });
        match result {
            Err(VerifyError::UntrustedCertificateUrl(_)) => prop_assert!(!trusted, "refused a trusted URL: {}", url),
            Err(e) => prop_assert!(trusted && e.is_transient(), "{} → {:?}", url, e),
            Ok(_) => prop_assert!(false, "nothing serves certificates here: {}", url),
        }
    }
}
