//! A Partner Center simulator on one HTTP listener: the signing certificate (like
//! Partner Center's `.cer` URL), an Entra ID token endpoint, the Partner Center API
//! (resources, the audit log of the changes it reported, fraud events, the webhook
//! registration API), and Microsoft Graph's GDAP resources and relationships list. It signs events the way Partner Center does, and delivers
//! validation (`test-created`) events to the registered webhook URL.
//!
//! It is an ordinary HTTP server: an ingress trusts it through its configuration
//! (certificate URL prefix, trust anchor, issuer organization), a worker reaches it
//! through `partner_center.*_base_url`. Nothing in the product knows it exists.

mod api;
mod records;
mod registration;

use super::pki::{Pki, PkiError};
use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use serde_json::json;
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use api::percentile_of;

/// The tenant, application and credentials the simulator's token endpoint accepts.
pub const TENANT_ID: &str = "00000000-5151-4000-8000-00000000beef";
pub const CLIENT_ID: &str = "pcbridge-simulator";
pub const CLIENT_SECRET: &str = "simulator-client-secret";
pub const REFRESH_TOKEN: &str = "simulator-refresh-token";
/// Path of the signing certificate.
pub const CERTIFICATE_PATH: &str = "/cert/pcnotifications-dispatch.cer";

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
    /// The base URL others reach it at (certificate URLs are built on it); by default
    /// `http://{the bound address}`.
    pub public_url: Option<String>,
    /// Percentage of resource requests answered `429 Too Many Requests` with
    /// `Retry-After: 1`, as Partner Center throttles.
    pub throttle_percent: u32,
    /// Percentage of resources that no longer exist (404), chosen by path, so a
    /// resource is consistently gone.
    pub gone_percent: u32,
    /// Added to every resource answer (Partner Center, Graph, fraud events), as a
    /// remote API's own latency: the worker benchmark measures against it.
    pub latency: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_url: None,
            throttle_percent: 0,
            gone_percent: 0,
            latency: Duration::ZERO,
        }
    }
}

/// A simulator problem: the listener, or the PKI.
#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    #[error("the simulator cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// Counters of what the simulator answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub token_requests: u64,
    pub api_requests: u64,
    pub throttled: u64,
    pub certificate_downloads: u64,
}

pub(crate) struct World {
    options: Options,
    /// Issued access tokens → (grant type, scope).
    tokens: HashMap<String, (String, String)>,
    pub(crate) registration: registration::Registrations,
    /// The audit log and the GDAP relationships: what Partner Center recorded.
    records: records::Records,
    stats: Stats,
}

/// Shared by the handlers and the [`Simulator`] handle.
pub(crate) struct Shared {
    world: Mutex<World>,
    pki: Pki,
    cert_der: Vec<u8>,
    base_url: String,
    http: reqwest::Client,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, World> {
        // A handler that panicked while holding the lock leaves consistent data here:
        // every update is a single insert or counter increment.
        self.world.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running simulator. Dropping it stops the server.
pub struct Simulator {
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Simulator {
    /// Binds `options.listen` and serves until dropped.
    pub async fn start(pki: Pki, options: Options) -> Result<Self, SimulatorError> {
        crate::partner_center::install_crypto_provider();
        let listener =
            TcpListener::bind(options.listen).await.map_err(|e| SimulatorError::Listen(options.listen, e))?;
        let bound = listener.local_addr().map_err(|e| SimulatorError::Listen(options.listen, e))?;
        let base_url = options.public_url.clone().unwrap_or_else(|| format!("http://{bound}"));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| PkiError::new(format!("HTTP client: {e}")))?;
        let shared = Arc::new(Shared {
            cert_der: pki.signing_cert_der()?,
            pki,
            base_url: base_url.trim_end_matches('/').to_string(),
            http,
            world: Mutex::new(World {
                options,
                tokens: HashMap::new(),
                registration: registration::Registrations::default(),
                records: records::Records::default(),
                stats: Stats::default(),
            }),
        });
        let stop = CancellationToken::new();
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let until = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(until).await {
                tracing::error!(error = %e, "simulator listener failed");
            }
        });
        Ok(Self { shared, stop })
    }

    /// The base URL of every simulated API (Partner Center, Graph, Entra ID).
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    /// The `X-MS-Certificate-Url` the simulator signs with.
    pub fn certificate_url(&self) -> String {
        format!("{}{CERTIFICATE_PATH}", self.shared.base_url)
    }

    /// The prefix an ingress must trust (`signature.trusted_certificate_url_prefixes`).
    pub fn certificate_prefix(&self) -> String {
        format!("{}/cert/", self.shared.base_url)
    }

    /// The CA certificate (PEM) an ingress must trust.
    pub fn ca_pem(&self) -> Result<String, PkiError> {
        self.shared.pki.ca_pem()
    }

    /// The headers Partner Center sends with `body`: the signature in `Authorization`
    /// (or `x-ms-signature` when `ms_signature_header`), the certificate URL and the
    /// algorithm.
    pub fn signed_headers(&self, body: &[u8], ms_signature_header: bool) -> Result<Vec<(String, String)>, PkiError> {
        signed_headers(&self.shared, body, ms_signature_header)
    }

    /// Makes `GET …/validationEvents/{correlation_id}` answer, as after a test event.
    pub fn expect_validation(&self, correlation_id: &str) {
        self.shared.lock().registration.record_sent(correlation_id, None);
    }

    /// Records the change webhook `body` reports in the audit log or the GDAP list, as
    /// Partner Center records every change whether or not its webhook gets through.
    pub fn record_change(&self, body: &[u8]) {
        if let Ok(event) = serde_json::from_slice(body) {
            self.shared.lock().records.record(&event);
        }
    }

    /// Replaces the tenant's registration with `webhook_url` for `events`, as another
    /// receiver saving its own registration does (CIPP at start-up): Partner Center
    /// keeps one registration, and says nothing to the one it replaced.
    pub fn overwrite_registration(&self, webhook_url: &str, events: &[&str]) {
        self.shared.lock().registration.overwrite(webhook_url, events);
    }

    pub fn stats(&self) -> Stats {
        self.shared.lock().stats
    }
}

pub(crate) fn signed_headers(
    shared: &Shared,
    body: &[u8],
    ms_signature_header: bool,
) -> Result<Vec<(String, String)>, PkiError> {
    let signature = format!("Signature {}", shared.pki.sign(body)?);
    let name = if ms_signature_header { "x-ms-signature" } else { "authorization" };
    Ok(vec![
        (name.to_string(), signature),
        ("x-ms-certificate-url".to_string(), format!("{}{CERTIFICATE_PATH}", shared.base_url)),
        ("x-ms-signature-algorithm".to_string(), "rsa-sha256".to_string()),
        ("content-type".to_string(), "application/json".to_string()),
    ])
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"code": status.as_u16(), "description": message}))).into_response()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    if method == Method::GET && path == CERTIFICATE_PATH {
        shared.lock().stats.certificate_downloads += 1;
        return ([(http::header::CONTENT_TYPE, "application/pkix-cert")], shared.cert_der.clone()).into_response();
    }
    if method == Method::POST && path.ends_with("/oauth2/v2.0/token") {
        return token(&shared, path, &body);
    }
    // The referrals API shares Graph's /v1.0 paths and wants an App+User token.
    let referrals = path.starts_with("/v1.0/engagements/");
    let graph = path.starts_with("/v1.0/") && !referrals;
    let fraud = path == "/v1/fraudEvents";
    let (want_grant, want_scope) = match (fraud || referrals, graph) {
        (true, _) => ("refresh_token", "https://api.partnercenter.microsoft.com/.default"),
        (false, true) => ("client_credentials", "https://graph.microsoft.com/.default"),
        _ => ("client_credentials", "https://api.partnercenter.microsoft.com/.default"),
    };
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let throttle = {
        let mut w = shared.lock();
        w.stats.api_requests += 1;
        match w.tokens.get(bearer) {
            Some((g, s)) if g == want_grant && s == want_scope => {}
            Some(_) => return error(StatusCode::FORBIDDEN, "this token's grant or scope does not allow this API"),
            None => return error(StatusCode::UNAUTHORIZED, "missing or unknown bearer token"),
        }
        let throttle = method == Method::GET && fastrand::u32(..100) < w.options.throttle_percent;
        if throttle {
            w.stats.throttled += 1;
        }
        throttle
    };
    if path.starts_with("/webhooks/v1/registration") {
        return registration::handle(&shared, &method, path, &body).await;
    }
    if method != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "only GET is simulated here");
    }
    let latency = shared.lock().options.latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if throttle {
        return (StatusCode::TOO_MANY_REQUESTS, [(http::header::RETRY_AFTER, "1")], "throttled").into_response();
    }
    if fraud {
        let new_model = headers.get("x-neweventsmodel").and_then(|v| v.to_str().ok()) == Some("true");
        return match api::fraud_page(uri.query().unwrap_or_default(), new_model) {
            Ok(page) => axum::Json(page).into_response(),
            Err(message) => error(StatusCode::BAD_REQUEST, message),
        };
    }
    if path == "/v1/auditrecords" {
        let continuation = headers.get("ms-continuationtoken").and_then(|v| v.to_str().ok());
        return match shared.lock().records.audit_page(uri.query().unwrap_or_default(), continuation) {
            Ok(page) => axum::Json(page).into_response(),
            Err(message) => error(StatusCode::BAD_REQUEST, message),
        };
    }
    if path == "/v1.0/tenantRelationships/delegatedAdminRelationships" {
        return axum::Json(shared.lock().records.relationships_page()).into_response();
    }
    if path == "/v1.0/engagements/referrals" {
        return axum::Json(shared.lock().records.referrals_page()).into_response();
    }
    let gone_percent = shared.lock().options.gone_percent;
    match api::resource(path) {
        Some(_) if percentile_of(path) < gone_percent => error(StatusCode::NOT_FOUND, "the resource no longer exists"),
        Some(value) => axum::Json(value).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such resource"),
    }
}

fn token(shared: &Shared, path: &str, body: &[u8]) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let mut w = shared.lock();
    w.stats.token_requests += 1;
    if path != format!("/{TENANT_ID}/oauth2/v2.0/token") {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_request", "error_description": "unknown tenant"})),
        )
            .into_response();
    }
    let grant_ok = match field("grant_type") {
        "client_credentials" => true,
        "refresh_token" => field("refresh_token") == REFRESH_TOKEN,
        _ => false,
    };
    if field("client_id") != CLIENT_ID || field("client_secret") != CLIENT_SECRET || !grant_ok {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_client"}))).into_response();
    }
    let access = format!("sim-{}", uuid::Uuid::new_v4().simple());
    w.tokens.insert(access.clone(), (field("grant_type").to_string(), field("scope").to_string()));
    axum::Json(json!({"token_type": "Bearer", "expires_in": 3599, "access_token": access})).into_response()
}

/// Time since `start`, for delivery records.
pub(crate) fn millis_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}
