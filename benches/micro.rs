//! Criterion micro-benchmarks of the hot path (`make bench`, docs/BENCHMARKS.md).
//!
//! - `signature/*`: webhook signature verification with the certificate already cached,
//!   for RSA-2048 and RSA-4096 signing keys, through the product's own path
//!   ([`Verifier::verify`], [`CertificateStore::get`], [`TrustedKey::verify`]), each next
//!   to `ring_bare`: a bare `ring` verify of the same key, body and signature — the
//!   reference of the target "cached verify within 10 % of a bare ring verify". Plus
//!   header parsing ([`SignatureHeaders::from_headers`]).
//! - `event_parse/*`: [`Event::parse`] of a realistic body of every catalogue event, and
//!   the event id (SHA-256 of the body).
//! - `header_key/*`: building the raw broker message as the ingress does
//!   ([`message::raw_message`]: destination, partition key, `pc-*` headers, CloudEvents
//!   attributes, traceparent).
//! - `envelope/*`: the enriched envelope of a subscription event with a ~2 KB resource,
//!   built and serialized as `contract::envelope` and `worker::output::enriched` do (those
//!   need the network or a broker `Delivery`, so the two steps are mirrored here).
//! - `ingress/cpu_path`: headers → verify → parse → id → raw message, one request's CPU
//!   work without body reading and broker.
//!
//! The certificate is served by a local HTTP server and validated against a throwaway CA
//! (`signature.extra_trust_anchors_file`); one verify per key warms the cache before
//! measuring. A counting allocator reports allocations per call at start-up.

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use pcbridge::contract::{
    destinations::Destinations,
    envelope::{self, Outcome, RawEvent, status},
    headers,
};
use pcbridge::ingress::message::{self, Accepted};
use pcbridge::partner_center::certificate::{CacheUse, CertificateStore};
use pcbridge::partner_center::event::{CATALOGUE, Event, event_id};
use pcbridge::partner_center::signature::{SignatureHeaders, Verifier};
use pcbridge::{broker::Message, config::SignatureConfig, dev::events::Generator};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaKeyPair, UnparsedPublicKey};
use serde_json::{Value, json};
use std::sync::{LazyLock, atomic::AtomicUsize, atomic::Ordering::Relaxed};
use std::{alloc::GlobalAlloc, alloc::Layout, alloc::System, hint::black_box, time::Duration, time::Instant};
use tokio::runtime::{Builder, Runtime};

/// Counts heap allocations (to check that a certificate cache hit allocates nothing).
struct Counting;
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call, with the caller's arguments and contract, to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ORGANIZATION: &str = "pcbridge bench CA";
static DESTINATIONS: LazyLock<Destinations> = LazyLock::new(|| Destinations::new("partnercenter."));
const SOURCE: &str = "/partner-center/webhooks";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// One signing key: its certificate URL, a signed body and what the ingress receives.
struct Signed {
    label: &'static str,
    body: Bytes,
    headers: HeaderMap,
    parsed: SignatureHeaders,
    /// RSAPublicKey DER, as `TrustedKey` hands it to ring.
    public_key: Vec<u8>,
}

/// Everything the benchmarks share; `_server` keeps the certificate server running.
struct Fixture {
    _server: Runtime,
    rt: Runtime,
    verifier: Verifier,
    store: CertificateStore,
    keys: Vec<Signed>,
}

/// A CA (O=[`ORGANIZATION`]), an RSA leaf per key size served over HTTP, a warmed verifier.
fn fixture() -> Fixture {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.distinguished_name.push(DnType::OrganizationName, ORGANIZATION);
    ca_params.distinguished_name.push(DnType::CommonName, "bench root");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key")).expect("CA");
    let anchors = std::env::temp_dir().join(format!("pcbridge-micro-{}-ca.pem", std::process::id()));
    std::fs::write(&anchors, ca.pem()).expect("write the CA PEM");

    let server = Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("server runtime");
    let listener = server.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let prefix = format!("http://{}/cert/", listener.local_addr().expect("local addr"));
    let mut router = axum::Router::new();
    let mut keys = Vec::new();
    let body = Bytes::from(Generator::new(7).sample("subscription-updated").body);
    for (label, bits) in [("rsa2048", 2048), ("rsa4096", 4096)] {
        let rsa = openssl::rsa::Rsa::generate(bits).expect("RSA keygen");
        let pkcs8 = openssl::pkey::PKey::from_rsa(rsa).expect("pkey").private_key_to_pkcs8().expect("PKCS#8");
        let leaf_key = KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.as_slice().into(), &rcgen::PKCS_RSA_SHA256)
            .expect("rcgen RSA key");
        let mut params = CertificateParams::new(vec!["pcnotifications-dispatch.bench".into()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, "pcnotifications-dispatch.bench");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365);
        let der = params.signed_by(&leaf_key, &ca).expect("leaf certificate").der().to_vec();
        router = router.route(&format!("/cert/{label}.cer"), axum::routing::get(move || async move { der }));

        let signer = RsaKeyPair::from_pkcs8(&pkcs8).expect("ring RSA key");
        let mut sig = vec![0; signer.public().modulus_len()];
        signer.sign(&RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), &body, &mut sig).expect("sign");
        let headers = request_headers(&format!("{prefix}{label}.cer"), &sig, body.len());
        let parsed = SignatureHeaders::from_headers(&headers).expect("signature headers");
        keys.push(Signed { label, body: body.clone(), headers, parsed, public_key: signer.public().as_ref().to_vec() });
    }
    server.spawn(async move { axum::serve(listener, router).await });

    let config = SignatureConfig {
        trusted_certificate_url_prefixes: vec![prefix],
        issuer_organization: ORGANIZATION.into(),
        microsoft_roots: false,
        extra_trust_anchors_file: anchors.display().to_string(),
        ..Default::default()
    };
    let verifier = Verifier::new(&config).expect("verifier");
    let store = CertificateStore::new(&config).expect("certificate store");
    let _ = std::fs::remove_file(&anchors);
    let rt = Builder::new_current_thread().enable_all().build().expect("bench runtime");
    rt.block_on(async {
        for k in &keys {
            verifier.verify(&k.parsed, &k.body).await.expect("warm-up verify (certificate fetch)");
            store.get(&k.parsed.certificate_url).await.expect("warm-up certificate fetch");
            let (_, cache) = store.get(&k.parsed.certificate_url).await.expect("cached certificate");
            assert_eq!(cache, CacheUse::Hit, "the certificate must be cached before measuring");
        }
    });
    Fixture { _server: server, rt, verifier, store, keys }
}

/// The headers of a Partner Center delivery.
fn request_headers(certificate_url: &str, signature: &[u8], len: usize) -> HeaderMap {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(signature);
    let mut h = HeaderMap::new();
    for (name, value) in [
        ("host", "pcbridge.example.com".to_string()),
        ("content-type", "application/json; charset=utf-8".into()),
        ("content-length", len.to_string()),
        ("authorization", format!("Signature {b64}")),
        ("x-ms-certificate-url", certificate_url.into()),
        ("x-ms-signature-algorithm", "rsa-sha256".into()),
        ("user-agent", "Microsoft-PartnerCenter-Webhooks/1.0".into()),
        ("x-forwarded-for", "20.37.0.12".into()),
        ("traceparent", TRACEPARENT.into()),
    ] {
        h.insert(name, HeaderValue::from_str(&value).expect("header value"));
    }
    h
}

/// Runs `f` `iters` times inside one `block_on`, so runtime entry is not measured.
fn async_iters<F: AsyncFn()>(rt: &Runtime, iters: u64, f: F) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            f().await;
        }
        start.elapsed()
    })
}

/// The raw message the ingress builds (`id` and `at`, the receive time, moved in as it does).
fn raw_message(body: &Bytes, event: &Event, sig: &SignatureHeaders, id: String, at: String) -> Message {
    let (body, traceparent) = (body.clone(), pcbridge::contract::headers::traceparent(Some(TRACEPARENT)));
    let accepted = Accepted { event, event_id: id, body, signature: sig, received_at: at, traceparent };
    message::raw_message(accepted, &DESTINATIONS, SOURCE)
}

/// Average allocations of `f` over 100 calls (after the first).
fn allocations(rt: &Runtime, f: impl AsyncFn()) -> f64 {
    rt.block_on(async {
        f().await;
        let before = ALLOCATIONS.load(Relaxed);
        for _ in 0..100 {
            f().await;
        }
        (ALLOCATIONS.load(Relaxed) - before) as f64 / 100.0
    })
}

fn signature(c: &mut Criterion, fx: &Fixture) {
    let k0 = &fx.keys[0];
    let url = k0.parsed.certificate_url.as_str();
    let ring_bare = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &k0.public_key);
    eprintln!(
        "allocations per call: CertificateStore::get (hit) {}, Verifier::verify (cached, rsa2048) {}, \
         bare ring verify (rsa2048) {}, SignatureHeaders::from_headers {}",
        allocations(&fx.rt, async || drop(fx.store.get(url).await)),
        allocations(&fx.rt, async || drop(fx.verifier.verify(&k0.parsed, &k0.body).await)),
        allocations(&fx.rt, async || ring_bare.verify(&k0.body, &k0.parsed.signature).expect("ring verifies")),
        allocations(&fx.rt, async || drop(SignatureHeaders::from_headers(&k0.headers))),
    );
    let mut g = c.benchmark_group("signature");
    g.bench_function("from_headers", |b| b.iter(|| SignatureHeaders::from_headers(black_box(&k0.headers))));
    g.bench_function("cache_get", |b| {
        b.iter_custom(|n| async_iters(&fx.rt, n, async || drop(black_box(fx.store.get(black_box(url)).await))))
    });
    for k in &fx.keys {
        let (body, sig) = (&k.body[..], k.parsed.signature.as_slice());
        g.bench_function(BenchmarkId::new("verify_cached", k.label), |b| {
            b.iter_custom(|n| {
                async_iters(&fx.rt, n, async || {
                    fx.verifier.verify(black_box(&k.parsed), black_box(body)).await.expect("signature verifies");
                })
            })
        });
        let trusted = fx.rt.block_on(fx.store.get(&k.parsed.certificate_url)).expect("cached key").0;
        g.bench_function(BenchmarkId::new("trusted_key", k.label), |b| {
            b.iter(|| assert!(trusted.verify(black_box(body), black_box(sig))))
        });
        g.bench_function(BenchmarkId::new("ring_bare", k.label), |b| {
            b.iter(|| {
                UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, black_box(&k.public_key))
                    .verify(black_box(body), black_box(sig))
                    .expect("ring verifies")
            })
        });
    }
    g.finish();
}

fn events(c: &mut Criterion) {
    let mut generator = Generator::new(42);
    let samples = CATALOGUE.map(|name| generator.sample(name));
    let mut g = c.benchmark_group("event_parse");
    for s in &samples {
        g.bench_function(s.name, |b| b.iter(|| Event::parse(black_box(&s.body)).expect("event parses")));
    }
    g.finish();
    let body = &samples[1].body;
    c.bench_function("event_id/subscription-updated", |b| b.iter(|| event_id(black_box(body))));
}

fn header_key(c: &mut Criterion, fx: &Fixture) {
    let mut g = c.benchmark_group("header_key");
    let sig = &fx.keys[0].parsed;
    let mut generator = Generator::new(9);
    for name in ["subscription-updated", "dap-admin-relationship-approved"] {
        let body = Bytes::from(generator.sample(name).body);
        let event = Event::parse(&body).expect("event parses");
        let (id, at) = (event_id(&body), "2026-01-01T00:00:00.123456789Z".to_string());
        g.bench_function(BenchmarkId::new("raw_message", name), |b| {
            b.iter_batched(
                || (id.clone(), at.clone()),
                |(id, at)| raw_message(&body, &event, sig, id, at),
                BatchSize::SmallInput,
            )
        });
    }
    g.bench_function("destination_raw", |b| b.iter(|| DESTINATIONS.raw(black_box("subscription-updated"))));
    for (name, incoming) in [("continued", Some(TRACEPARENT)), ("new", None)] {
        g.bench_function(BenchmarkId::new("traceparent", name), |b| {
            b.iter(|| headers::traceparent(black_box(incoming)))
        });
    }
    g.finish();
}

/// A Partner Center subscription resource (~2 KB), as `GET /v1/customers/{c}/subscriptions/{s}` returns it.
fn subscription_resource() -> Value {
    let links = ["offer", "entitlement", "product", "sku", "availability", "self"].map(|rel| {
        let uri = format!("/customers/0c3b5a1e-7f2d-4b8a-9c1d-2e3f4a5b6c7d/subscriptions/a1b2c3d4/{rel}?country=US");
        (rel.to_string(), json!({"uri": uri, "method": "GET", "headers": []}))
    });
    json!({
        "id": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d", "entitlementId": "9f8e7d6c-5b4a-4938-8271-605f4e3d2c1b",
        "offerId": "CFQ7TTC0LH18:0001:CFQ7TTC0HDNQ", "offerName": "Microsoft 365 Business Basic",
        "friendlyName": "M365 Basic (Contoso)", "quantity": 25, "unitType": "Licenses",
        "hasPurchasableAddons": true, "creationDate": "2025-03-01T10:12:31.1234567Z",
        "effectiveStartDate": "2025-03-01T00:00:00Z", "commitmentEndDate": "2026-02-28T00:00:00Z",
        "status": "active", "autoRenewEnabled": true, "isTrial": false, "billingType": "license",
        "billingCycle": "monthly", "termDuration": "P1Y", "contractType": "subscription",
        "refundOptions": [{"type": "Full", "expiresAt": "2025-03-08T10:12:31Z"}],
        "isMicrosoftProduct": true, "attentionNeeded": false, "actionTaken": false,
        "partnerId": "3b33e682-00c3-41ee-9dd2-a548adf56438", "orderId": "f3e2d1c0b9a8",
        "publisherName": "Microsoft Corporation", "productType": {"id": "OnlineServicesNCE", "displayName": "NCE"},
        "scheduledNextTermInstructions": {"product": {"productId": "CFQ7TTC0LH18", "skuId": "0001",
            "availabilityId": "CFQ7TTC0HDNQ", "billingCycle": "monthly", "termDuration": "P1Y"}, "quantity": 30},
        "links": links.into_iter().collect::<serde_json::Map<_, _>>(),
        "attributes": {"etag": "eyJpZCI6ImExYjJjM2Q0IiwidmVyc2lvbiI6MTR9", "objectType": "Subscription"},
    })
}

fn envelope(c: &mut Criterion) {
    let body = Generator::new(3).sample("subscription-updated").body;
    let resource = subscription_resource();
    let audit = json!({"id": "5e4d3c2b", "partnerId": "3b33e682-00c3-41ee-9dd2-a548adf56438",
        "operationType": "update_subscription", "operationStatus": "succeeded",
        "userPrincipalName": "admin@partner.onmicrosoft.com", "operationDate": "2026-01-01T00:00:00Z"});
    let id = event_id(&body);
    // As `Enricher::enrich` does after the fetches: parse the raw body, then the product's
    // own `envelope`, which moves the three documents in.
    let raw = RawEvent { event_id: &id, received_at: "2026-01-01T00:00:00Z", body: &body };
    let build = |resource: Value, audit: Value| {
        let value: Value = serde_json::from_slice(&body).expect("raw body is JSON");
        let event = Event::from_value(&value).expect("event");
        let outcome = Outcome { resource, audit, fraud_events: None, status: status::ENRICHED, attempts: 1 };
        envelope::envelope(&raw, event.name, value, outcome)
    };
    let sample = build(resource.clone(), audit.clone());
    let size = serde_json::to_vec(&sample).expect("serializes").len();
    eprintln!("envelope/subscription-updated: {size} bytes");
    let mut g = c.benchmark_group("envelope");
    // `worker::output::enriched`: `serde_json::to_vec(&e.envelope)` into `Bytes`.
    g.bench_function("serialize/subscription-updated", |b| {
        b.iter(|| bytes::Bytes::from(serde_json::to_vec(black_box(&sample)).expect("serializes")))
    });
    g.bench_function(BenchmarkId::new("build_serialize", "subscription-updated"), |b| {
        b.iter_batched(
            || (resource.clone(), audit.clone()),
            |(r, a)| bytes::Bytes::from(serde_json::to_vec(&build(r, a)).expect("serializes")),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn ingress_path(c: &mut Criterion, fx: &Fixture) {
    let k = &fx.keys[0];
    let one = async || {
        let sig = SignatureHeaders::from_headers(black_box(&k.headers)).expect("headers");
        fx.verifier.verify(&sig, &k.body).await.expect("verifies");
        let event = Event::parse(&k.body).expect("event");
        let at = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339);
        black_box(raw_message(&k.body, &event, &sig, event_id(&k.body), at.unwrap_or_default()));
    };
    eprintln!("allocations per call: ingress cpu_path (rsa2048) {}", allocations(&fx.rt, one));
    c.bench_function("ingress/cpu_path/rsa2048", |b| b.iter_custom(|n| async_iters(&fx.rt, n, one)));
}

fn all(c: &mut Criterion) {
    let fx = fixture();
    signature(c, &fx);
    events(c);
    header_key(c, &fx);
    envelope(c);
    ingress_path(c, &fx);
}

criterion_group!(benches, all);
criterion_main!(benches);
