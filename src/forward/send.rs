//! One receiver's HTTP side: the request that repeats Partner Center's delivery (the
//! body and signature headers as they came, plus the receiver's extra headers), and
//! what an answer means — delivered, worth retrying (with the receiver's `Retry-After`),
//! or permanent.

use crate::broker::Delivery;
use crate::config::{ForwardConfig, ReceiverConfig};
use crate::contract::headers;
use crate::partner_center::{client::retry_after, error_chain, signature};
use crate::telemetry::metrics::forward_result;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use std::time::Duration;

/// Headers a receiver's `headers_file` may not set: they carry Partner Center's
/// delivery (or are the transport's own).
const RESERVED: [&str; 7] = [
    "authorization",
    "x-ms-signature",
    "x-ms-certificate-url",
    "x-ms-signature-algorithm",
    "content-type",
    "content-length",
    "host",
];

/// Why a receiver could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error("forward.receivers.{receiver}.headers_file {file:?}: {why}")]
    HeadersFile { receiver: String, file: String, why: String },
    #[error("forward.receivers.{receiver}: HTTP client: {source}")]
    Client {
        receiver: String,
        #[source]
        source: reqwest::Error,
    },
}

/// A receiver, ready to send to.
pub struct Receiver {
    /// The configured name: metric label and log field.
    pub name: String,
    /// The URL's host, in every log line of the receiver.
    pub host: String,
    pub url: String,
    /// Event names wanted; empty: all.
    pub events: Vec<String>,
    signature_header: HeaderName,
    /// From `headers_file`: never logged.
    extra: HeaderMap,
    http: reqwest::Client,
}

/// What one request came to.
#[derive(Debug)]
pub enum Answer {
    Delivered,
    /// Worth another attempt, not before `after` when the receiver said so.
    Retry {
        reason: String,
        result: &'static str,
        after: Option<Duration>,
    },
    /// Another attempt would get the same answer (4xx, a redirect).
    Permanent {
        reason: String,
        result: &'static str,
    },
}

impl Answer {
    /// The `result` label of `pcbridge_forward_requests_total`.
    pub fn result(&self) -> &'static str {
        match self {
            Answer::Delivered => forward_result::SUCCESS,
            Answer::Retry { result, .. } | Answer::Permanent { result, .. } => result,
        }
    }
}

impl Receiver {
    pub fn new(name: &str, r: &ReceiverConfig, forward: &ForwardConfig) -> Result<Self, ReceiverError> {
        crate::partner_center::install_crypto_provider();
        let extra = match r.headers_file.as_str() {
            "" => HeaderMap::new(),
            file => read_headers_file(file).map_err(|why| ReceiverError::HeadersFile {
                receiver: name.to_string(),
                file: file.to_string(),
                why,
            })?,
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .https_only(!forward.allow_http)
            .timeout(r.timeout())
            .connect_timeout(r.timeout().min(Duration::from_secs(10)))
            .user_agent(concat!("pcbridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| ReceiverError::Client { receiver: name.to_string(), source })?;
        let host = reqwest::Url::parse(&r.url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default();
        let signature_header = if r.signature_header == signature::HEADER_MS_SIGNATURE {
            HeaderName::from_static(signature::HEADER_MS_SIGNATURE)
        } else {
            HeaderName::from_static(signature::HEADER_AUTHORIZATION)
        };
        Ok(Self {
            name: name.to_string(),
            host,
            url: r.url.clone(),
            events: r.events.iter().map(|e| e.trim().to_string()).collect(),
            signature_header,
            extra,
            http,
        })
    }

    /// Whether this receiver wants `event_name`.
    pub fn wants(&self, event_name: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event_name)
    }

    /// POSTs the delivery's body with its signature headers; `None` when it has no
    /// signature (a change found by `reconcile`: nothing a receiver could verify).
    pub async fn send(&self, d: &Delivery) -> Option<Answer> {
        let signature = d.header(headers::SIGNATURE)?;
        let certificate_url = d.header(headers::CERTIFICATE_URL)?;
        let algorithm = d.header(headers::SIGNATURE_ALGORITHM)?;
        let mut request = self
            .http
            .post(&self.url)
            .headers(self.extra.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(signature::HEADER_CERTIFICATE_URL, certificate_url)
            .header(signature::HEADER_ALGORITHM, algorithm)
            .header(self.signature_header.clone(), signature_value(signature));
        if let Some(id) = d.header(headers::EVENT_ID) {
            request = request.header("x-pcbridge-event-id", id);
        }
        Some(match request.body(d.body.clone()).send().await {
            Ok(answer) => classify(answer.status(), answer.headers()),
            Err(e) if e.is_timeout() => {
                Answer::Retry { reason: "no answer in time".into(), result: forward_result::TIMEOUT, after: None }
            }
            // Without the URL: a receiver's URL may carry a key in its query.
            Err(e) => Answer::Retry {
                reason: format!("request failed: {}", error_chain(&e.without_url())),
                result: forward_result::CONNECTION,
                after: None,
            },
        })
    }

    /// Reaches the receiver without delivering anything (`pcbridge check`): a `HEAD` of
    /// its URL with the `headers_file` headers. Any HTTP answer proves the name resolves,
    /// the port answers and, on https, the certificate is trusted — a receiver that
    /// verifies signatures may well refuse a `HEAD` that carries none, so the status is
    /// reported, not judged. Redirects are not followed here either.
    pub async fn probe(&self) -> Result<String, String> {
        match self.http.head(&self.url).headers(self.extra.clone()).send().await {
            Ok(answer) => Ok(format!("answered HEAD with {}", answer.status())),
            Err(e) if e.is_timeout() => Err("no answer in time".into()),
            Err(e) => Err(error_chain(&e.without_url())),
        }
    }
}

/// The signature header's value as Partner Center sends it, `Signature <base64>`
/// (`pc-signature` holds the base64 alone).
fn signature_value(signature: &str) -> String {
    if signature.starts_with("Signature ") { signature.to_string() } else { format!("Signature {signature}") }
}

/// What a receiver's answer means.
fn classify(status: reqwest::StatusCode, headers: &HeaderMap) -> Answer {
    let code = status.as_u16();
    let reason = format!("answered {status}");
    match code {
        200..=299 => Answer::Delivered,
        300..=399 => Answer::Permanent {
            reason: format!("{reason}: redirects are not followed"),
            result: forward_result::REDIRECT,
        },
        429 => Answer::Retry { reason, result: forward_result::THROTTLED, after: retry_after(headers) },
        408 => Answer::Retry { reason, result: forward_result::CLIENT_ERROR, after: retry_after(headers) },
        400..=499 => Answer::Permanent { reason, result: forward_result::CLIENT_ERROR },
        _ => Answer::Retry { reason, result: forward_result::SERVER_ERROR, after: retry_after(headers) },
    }
}

/// Reads `Name: value` lines; blank lines and `#` comments are skipped.
fn read_headers_file(file: &str) -> Result<HeaderMap, String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let mut map = HeaderMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |why: &str| format!("line {}: {why}", n + 1);
        let (name, value) = line.split_once(':').ok_or_else(|| at("not `Name: value`"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| at("not a header name"))?;
        if RESERVED.contains(&name.as_str()) {
            return Err(at(&format!("{name} carries Partner Center's delivery and cannot be set")));
        }
        // The value is a secret: the error does not repeat it.
        let mut value =
            HeaderValue::from_str(value.trim()).map_err(|_| at("the value has characters a header cannot"))?;
        value.set_sensitive(true);
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn answers() {
        let none = HeaderMap::new();
        assert!(matches!(classify(StatusCode::NO_CONTENT, &none), Answer::Delivered));
        assert!(matches!(classify(StatusCode::FOUND, &none), Answer::Permanent { result: "3xx", .. }));
        assert!(matches!(classify(StatusCode::UNAUTHORIZED, &none), Answer::Permanent { result: "4xx", .. }));
        assert!(matches!(classify(StatusCode::REQUEST_TIMEOUT, &none), Answer::Retry { .. }));
        let mut later = HeaderMap::new();
        later.insert("retry-after", HeaderValue::from_static("7"));
        match classify(StatusCode::SERVICE_UNAVAILABLE, &later) {
            Answer::Retry { after, result, .. } => assert_eq!((after, result), (Some(Duration::from_secs(7)), "5xx")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(classify(StatusCode::TOO_MANY_REQUESTS, &none), Answer::Retry { result: "429", .. }));
    }

    #[test]
    fn headers_files() {
        let dir = std::env::temp_dir().join(format!("pcbridge-headers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("h");
        std::fs::write(&file, "# key\nX-Api-Key: s3cret\n\nX-Tenant:  a b \n").unwrap();
        let map = read_headers_file(file.to_str().unwrap()).unwrap();
        assert_eq!(map.get("x-api-key").unwrap(), "s3cret");
        assert!(map.get("x-api-key").unwrap().is_sensitive());
        assert_eq!(map.get("x-tenant").unwrap(), "a b");
        std::fs::write(&file, "Authorization: Bearer s3cret\n").unwrap();
        let e = read_headers_file(file.to_str().unwrap()).unwrap_err();
        assert!(e.contains("authorization") && !e.contains("s3cret"), "{e}");
        std::fs::write(&file, "no colon here\n").unwrap();
        assert!(read_headers_file(file.to_str().unwrap()).unwrap_err().contains("line 1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
