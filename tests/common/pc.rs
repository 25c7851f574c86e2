//! The Partner Center side of a webhook delivery: a signing certificate served from a
//! trusted host ([`Pc`]), the signed headers of a delivery, the catalogue of example
//! events and a way to make their placeholders concrete. The APIs the worker calls back
//! are in [`super::pc_api`]; the certificates themselves in [`super::pki`].

use super::{app::temp_file, net, pki};
use std::path::PathBuf;

/// The 24 catalogue examples, as the JSON bodies Partner Center would send.
pub fn catalogue() -> Vec<(String, Vec<u8>)> {
    let text = include_str!("../fixtures/catalogue.json");
    let values: Vec<serde_json::Value> = serde_json::from_str(text).expect("catalogue.json");
    values
        .into_iter()
        .map(|v| {
            let name = v["EventName"].as_str().expect("EventName").to_string();
            (name, serde_json::to_vec_pretty(&v).expect("serialize"))
        })
        .collect()
}

/// Replaces `{{Name}}` and `{name}` placeholders with concrete ids (`name-1`).
pub fn concrete(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let inner_start = after.find(|c| c != '{').unwrap_or(after.len());
        let Some(end) = after[inner_start..].find('}') else {
            out.push_str(after);
            return out;
        };
        let name = &after[inner_start..inner_start + end];
        out.push_str(&format!("{}-1", name.to_ascii_lowercase()));
        let close = inner_start + end;
        let close_end = close + after[close..].find(|c| c != '}').unwrap_or(after.len() - close);
        rest = &after[close_end..];
    }
    out.push_str(rest);
    out
}

/// The per-test world: a CA trusted by the ingress, a signing certificate served by a
/// local certificate server, and the trusted prefix pointing at it.
pub struct Pc {
    pub ca: pki::Ca,
    pub cert: pki::SigningCert,
    pub certs: net::CertServer,
    pub cert_url: String,
    pub anchors_file: PathBuf,
}

impl Pc {
    pub async fn new() -> Self {
        Self::with_extra_anchors(&[]).await
    }

    /// Like [`Pc::new`], with more trust anchors (PEM) in the anchors file.
    pub async fn with_extra_anchors(extra: &[String]) -> Self {
        let ca = pki::Ca::new("Microsoft Corporation");
        let cert = ca.signing_cert(0, -1, 30);
        let certs = net::CertServer::start().await;
        let cert_url = certs.put("pcnotifications-dispatch.test.cer", cert.der.clone());
        let anchors = std::iter::once(ca.pem()).chain(extra.iter().cloned()).collect::<Vec<_>>().join("\n");
        let anchors_file = temp_file("anchors.pem", &anchors);
        Self { ca, cert, certs, cert_url, anchors_file }
    }

    /// Headers of a genuine delivery of `body`.
    pub fn headers(&self, body: &[u8]) -> Vec<(&'static str, String)> {
        signed_headers(&self.cert.signer, &self.cert_url, body)
    }
}

/// Headers of a delivery of `body` signed by `signer`, naming `cert_url`.
pub fn signed_headers(signer: &pki::Signer, cert_url: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("authorization", format!("Signature {}", signer.sign(body))),
        ("x-ms-certificate-url", cert_url.to_string()),
        ("x-ms-signature-algorithm", "rsa-sha256".into()),
        ("content-type", "application/json".into()),
    ]
}
