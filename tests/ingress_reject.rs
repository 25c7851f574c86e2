//! Every refusal in docs/http-interface.md's table, and proof that nothing was published.

mod common;

use common::{
    app::spawn_ingress,
    bus::{Bus, on_every_broker},
    net::{self, CertMode},
    pc::{Pc, signed_headers},
    pki,
};
use pcbridge::config::BrokerKind;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const EVENT: &[u8] = br#"{"EventName":"subscription-updated","ResourceUri":"https://api.partnercenter.microsoft.com/v1/customers/c/subscriptions/s","ResourceName":"subscription","AuditUri":null,"ResourceChangeUtcDate":"2017-11-16T16:19:06.3520276+00:00"}"#;

/// (what, body, headers, expected status, expected error code)
type Case = (&'static str, Vec<u8>, Vec<(&'static str, String)>, u16, &'static str);

fn with(headers: &[(&'static str, String)], name: &'static str, value: &str) -> Vec<(&'static str, String)> {
    let mut h: Vec<_> = headers.iter().filter(|(k, _)| *k != name).cloned().collect();
    h.push((name, value.to_string()));
    h
}

fn without(headers: &[(&'static str, String)], name: &str) -> Vec<(&'static str, String)> {
    headers.iter().filter(|(k, _)| *k != name).cloned().collect()
}

async fn rejections_publish_nothing(kind: BrokerKind) {
    let contoso = pki::Ca::new("Contoso Ltd");
    let pc = Pc::with_extra_anchors(&[contoso.pem()]).await;
    let bus = Bus::new(kind).await;
    let tripwire = net::Tripwire::start().await;
    let refused_port = net::closed_port().await;
    let refused_prefix = format!("http://127.0.0.1:{refused_port}/cert/");
    let mut config = bus.config(&pc);
    config.signature.trusted_certificate_url_prefixes.push(refused_prefix.clone());
    config.ingress.max_body_bytes = 4096;
    let app = spawn_ingress(config).await;

    let good = pc.headers(EVENT);
    // Certificates that must each be refused, served from the trusted host.
    let expired = pc.ca.signing_cert(0, -30, -1);
    let expired_url = pc.certs.put("expired.cer", expired.der.clone());
    let foreign_ca = pki::Ca::new("Microsoft Corporation");
    let foreign = foreign_ca.signing_cert(0, -1, 30);
    let foreign_url = pc.certs.put("foreign.cer", foreign.der.clone());
    let wrong_org = contoso.signing_cert(0, -1, 30);
    let wrong_org_url = pc.certs.put("contoso.cer", wrong_org.der.clone());
    let other_key = pc.ca.signing_cert(1, -1, 30);
    let untrusted_url = format!("http://{}/cert/pcnotifications-dispatch.test.cer", tripwire.addr);
    let userinfo_url = format!(
        "http://{}@{}/cert/x.cer",
        pc.certs.prefix.trim_start_matches("http://").trim_end_matches("/cert/"),
        tripwire.addr
    );
    let mut tampered = EVENT.to_vec();
    tampered[20] ^= 0x01;
    let not_json = b"EventName=subscription-updated".to_vec();
    let no_name = br#"{"ResourceUri":"https://api.partnercenter.microsoft.com/v1/customers/c"}"#.to_vec();
    let oversize = {
        let mut b = br#"{"EventName":"subscription-updated","Padding":""#.to_vec();
        b.extend(std::iter::repeat_n(b'a', 4096));
        b.extend(br#""}"#);
        b
    };

    // (what, body, headers, status, error code)
    let cases: Vec<Case> = vec![
        ("body tampered by one byte", tampered.clone(), good.clone(), 401, "signature_mismatch"),
        (
            "signature from another key",
            EVENT.to_vec(),
            signed_headers(&other_key.signer, &pc.cert_url, EVENT),
            401,
            "signature_mismatch",
        ),
        (
            "certificate URL outside the trusted prefixes",
            EVENT.to_vec(),
            with(&good, "x-ms-certificate-url", &untrusted_url),
            401,
            "untrusted_certificate_url",
        ),
        (
            "userinfo trick in the certificate URL",
            EVENT.to_vec(),
            with(&good, "x-ms-certificate-url", &userinfo_url),
            401,
            "untrusted_certificate_url",
        ),
        (
            "expired certificate",
            EVENT.to_vec(),
            signed_headers(&expired.signer, &expired_url, EVENT),
            401,
            "certificate_expired",
        ),
        (
            "certificate not chaining to the trust anchors",
            EVENT.to_vec(),
            signed_headers(&foreign.signer, &foreign_url, EVENT),
            401,
            "untrusted_chain",
        ),
        (
            "wrong issuer organization",
            EVENT.to_vec(),
            signed_headers(&wrong_org.signer, &wrong_org_url, EVENT),
            401,
            "wrong_issuer",
        ),
        ("rsa-sha1", EVENT.to_vec(), with(&good, "x-ms-signature-algorithm", "rsa-sha1"), 401, "unsupported_algorithm"),
        ("missing Authorization", EVENT.to_vec(), without(&good, "authorization"), 401, "missing_header"),
        ("missing X-MS-Certificate-Url", EVENT.to_vec(), without(&good, "x-ms-certificate-url"), 401, "missing_header"),
        (
            "missing X-MS-Signature-Algorithm",
            EVENT.to_vec(),
            without(&good, "x-ms-signature-algorithm"),
            401,
            "missing_header",
        ),
        (
            "invalid base64",
            EVENT.to_vec(),
            with(&good, "authorization", "Signature %%%not-base64%%%"),
            401,
            "malformed_signature",
        ),
        (
            "wrong authorization scheme",
            EVENT.to_vec(),
            with(&good, "authorization", "Bearer abc"),
            401,
            "malformed_signature",
        ),
        ("body not JSON", not_json.clone(), pc.headers(&not_json), 400, "body_not_json"),
        ("no EventName", no_name.clone(), pc.headers(&no_name), 400, "missing_event_name"),
        ("body over the limit", oversize.clone(), pc.headers(&oversize), 413, "payload_too_large"),
        (
            "certificate host refuses connections",
            EVENT.to_vec(),
            with(&good, "x-ms-certificate-url", &format!("{refused_prefix}x.cer")),
            503,
            "certificate_unavailable",
        ),
    ];
    for (what, body, headers, status, code) in cases {
        let (got, json) = app.post(body, &headers).await;
        assert_eq!((got, json["error"].as_str()), (status, Some(code)), "{what}: {json}");
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: the body names the problem");
    }
    assert_eq!(tripwire.connections(), 0, "no connection may be made to an untrusted certificate host");

    // The certificate host failing (5xx, or too slow) is transient: 503, not 401.
    for (mode, name) in
        [(CertMode::Status(500), "fail500.cer"), (CertMode::Status(503), "fail503.cer"), (CertMode::Hang, "hang.cer")]
    {
        let url = pc.certs.put(name, pc.cert.der.clone());
        pc.certs.set_mode(mode.clone());
        let (got, json) = app.post(EVENT.to_vec(), &with(&good, "x-ms-certificate-url", &url)).await;
        assert_eq!((got, json["error"].as_str()), (503, Some("certificate_unavailable")), "{mode:?}: {json}");
    }
    pc.certs.set_mode(CertMode::Serve);

    // A chunked body (no Content-Length) over the limit is cut off too.
    let status = chunked_post(&app.url, &oversize, &pc.headers(&oversize)).await;
    assert_eq!(status, 413, "chunked oversize body");

    let metrics = app.metrics_text().await;
    for reason in [
        "signature_mismatch",
        "untrusted_certificate_url",
        "certificate_expired",
        "untrusted_chain",
        "wrong_issuer",
        "unsupported_algorithm",
        "missing_header",
        "malformed_signature",
        "certificate_unavailable",
    ] {
        assert!(
            metrics.contains(&format!("pcbridge_signature_verification_failures_total{{reason=\"{reason}\"}}")),
            "metric for {reason}"
        );
    }
    assert!(!metrics.contains("outcome=\"published\""), "nothing was published");

    let config = app.config.clone();
    assert_eq!(bus.count_all(&config, &[]).await, 0, "a refused request must publish nothing");
    // The same ingress still accepts a good delivery afterwards.
    let (status, json) = app.post(EVENT.to_vec(), &good).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(bus.read_all(&config, &[], 1, Duration::from_secs(10)).await.len(), 1);
    app.stop().await.expect("clean stop");
    bus.cleanup(&config, &[]).await;
}

/// POSTs `body` with `Transfer-Encoding: chunked` over a raw connection; returns the status.
async fn chunked_post(url: &str, body: &[u8], headers: &[(&'static str, String)]) -> u16 {
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').expect("url");
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    let mut req =
        format!("POST /{path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    for chunk in body.chunks(1000) {
        let _ = stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await;
        let _ = stream.write_all(chunk).await;
        let _ = stream.write_all(b"\r\n").await;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

on_every_broker!(rejections_publish_nothing);
