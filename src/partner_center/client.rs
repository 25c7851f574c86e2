//! Authenticated requests (GETs, and the registration API's POST/PUT) to the Partner Center API, Microsoft Graph and the fraud events
//! API. Every request carries `Authorization: Bearer`, `Accept: application/json`, a new
//! `MS-CorrelationId` and the caller's `MS-RequestId` (stable across the retries of one
//! call). Requests go only to the configured base URLs and follow no redirects, so the
//! token never leaves them. This module classifies every failure; `worker::retry`
//! decides what to do with the class.

use super::token::{Grant, TokenProvider};
use super::{BodyError, error_chain, read_limited};
use crate::config::Config;
use crate::telemetry::Metrics;
use serde_json::Value;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use uuid::Uuid;

/// Largest API response accepted.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Which API a request goes to: decides the base URL, the token and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    PartnerCenter,
    Graph,
    /// The fraud events API: Partner Center's base URL, an App+User token.
    Fraud,
    /// The referrals API (`partner_center.referrals_base_url`), an App+User token.
    Referrals,
}

impl Api {
    pub fn label(self) -> &'static str {
        match self {
            Api::PartnerCenter => "partner_center",
            Api::Graph => "graph",
            Api::Fraud => "fraud_events",
            Api::Referrals => "referrals",
        }
    }
}

/// Whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Timeouts, connection errors, 408, 429, 5xx, an expired token: retry, waiting at
    /// least `retry_after` when the server said so.
    Transient { retry_after: Option<Duration> },
    /// Other 4xx, an unusable answer, a missing credential: retrying cannot help.
    Permanent,
}

/// A failed request.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct FetchError {
    pub class: ErrorClass,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    pub message: String,
}

impl FetchError {
    fn transient(message: String, status: Option<u16>, retry_after: Option<Duration>) -> Self {
        Self { class: ErrorClass::Transient { retry_after }, status, message }
    }
    fn permanent(message: String, status: Option<u16>) -> Self {
        Self { class: ErrorClass::Permanent, status, message }
    }
}

/// A successful request: the resource, or `Gone` (404 — a result, not a failure).
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    Found(Value),
    Gone,
}

/// The client. Cheap to clone.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    partner_center_base: String,
    graph_base: String,
    referrals_base: String,
    partner_center_scope: String,
    graph_scope: String,
    tokens: TokenProvider,
    metrics: Arc<Metrics>,
}

impl ApiClient {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Self, super::BuildError> {
        super::install_crypto_provider();
        let pc = &config.partner_center;
        let http = reqwest::Client::builder()
            .timeout(pc.request_timeout())
            .connect_timeout(pc.request_timeout().min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("pcbridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| super::BuildError::Http { what: "API", source })?;
        let m = metrics.clone();
        let tokens = TokenProvider::new(
            http.clone(),
            &pc.token_base_url,
            &pc.tenant_id,
            &pc.client_id,
            config.client_secret()?,
            config.refresh_token()?,
        )
        .with_observer(move |grant, ok| {
            let grant = if grant == Grant::ClientCredentials { "client_credentials" } else { "refresh_token" };
            m.token_requests.with_label_values(&[grant, if ok { "ok" } else { "error" }]).inc();
        });
        Ok(Self {
            http,
            partner_center_base: pc.base_url.trim_end_matches('/').to_string(),
            graph_base: pc.graph_base_url.trim_end_matches('/').to_string(),
            referrals_base: pc.referrals_base_url.trim_end_matches('/').to_string(),
            partner_center_scope: pc.scope.clone(),
            graph_scope: pc.graph_scope.clone(),
            tokens,
            metrics,
        })
    }

    fn route(&self, api: Api) -> (&str, Grant, &str) {
        match api {
            Api::PartnerCenter => (&self.partner_center_base, Grant::ClientCredentials, &self.partner_center_scope),
            Api::Graph => (&self.graph_base, Grant::ClientCredentials, &self.graph_scope),
            Api::Fraud => (&self.partner_center_base, Grant::RefreshToken, &self.partner_center_scope),
            Api::Referrals => (&self.referrals_base, Grant::RefreshToken, &self.partner_center_scope),
        }
    }

    /// `GET {base}{path_and_query}`. `request_id` must stay the same across the retries
    /// of one call.
    pub async fn get(&self, api: Api, path_and_query: &str, request_id: Uuid) -> Result<Fetched, FetchError> {
        self.call(http::Method::GET, api, path_and_query, None, request_id).await
    }

    /// `GET {base}{path_and_query}` with extra request headers (a page's
    /// `MS-ContinuationToken`).
    pub async fn get_with(
        &self,
        api: Api,
        path_and_query: &str,
        headers: &[(String, String)],
        request_id: Uuid,
    ) -> Result<Fetched, FetchError> {
        Ok(self.call_with(http::Method::GET, api, path_and_query, None, headers, request_id).await?.0)
    }

    /// [`ApiClient::get_with`], also returning the `MS-ContinuationToken` response header
    /// (Partner Center's lists that page through it: new-commerce migrations).
    pub async fn get_paged(
        &self,
        api: Api,
        path_and_query: &str,
        headers: &[(String, String)],
        request_id: Uuid,
    ) -> Result<(Fetched, Option<String>), FetchError> {
        self.call_with(http::Method::GET, api, path_and_query, None, headers, request_id).await
    }

    /// `{method} {base}{path_and_query}` with an optional JSON body (the registration
    /// API's POST and PUT).
    pub async fn call(
        &self,
        method: http::Method,
        api: Api,
        path_and_query: &str,
        body: Option<&Value>,
        request_id: Uuid,
    ) -> Result<Fetched, FetchError> {
        Ok(self.call_with(method, api, path_and_query, body, &[], request_id).await?.0)
    }

    async fn call_with(
        &self,
        method: http::Method,
        api: Api,
        path_and_query: &str,
        body: Option<&Value>,
        headers: &[(String, String)],
        request_id: Uuid,
    ) -> Result<(Fetched, Option<String>), FetchError> {
        let (base, grant, scope) = self.route(api);
        let token = self.tokens.token(grant, scope).await.map_err(|e| {
            let class = if e.transient { ErrorClass::Transient { retry_after: None } } else { ErrorClass::Permanent };
            FetchError { class, status: None, message: e.to_string() }
        })?;
        let url = format!("{base}{path_and_query}");
        let mut request = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(token.expose())
            .header(http::header::ACCEPT, "application/json")
            .header("MS-CorrelationId", Uuid::new_v4().to_string())
            .header("MS-RequestId", request_id.to_string());
        if api == Api::Fraud {
            request = request.header("X-NewEventsModel", "true");
        }
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(body) = body {
            request = request
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(body).unwrap_or_default());
        }
        let started = Instant::now();
        let result = self.send(request, &method, &url).await;
        let status = match &result {
            Ok((Fetched::Found(_), _)) => "200".to_string(),
            Ok((Fetched::Gone, _)) => "404".to_string(),
            Err(FetchError { status: Some(code), .. }) => code.to_string(),
            Err(_) => "network".to_string(),
        };
        self.metrics
            .api_request_duration
            .with_label_values(&[api.label(), &status])
            .observe(started.elapsed().as_secs_f64());
        if matches!(result, Err(FetchError { status: Some(401), .. })) {
            self.tokens.invalidate(grant, scope);
        }
        result
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        method: &http::Method,
        url: &str,
    ) -> Result<(Fetched, Option<String>), FetchError> {
        let mut response = request
            .send()
            .await
            .map_err(|e| FetchError::transient(format!("{method} {url}: {}", describe(&e)), None, None))?;
        let status = response.status();
        let code = status.as_u16();
        if code == 404 {
            return Ok((Fetched::Gone, None));
        }
        let retry_after = retry_after(response.headers());
        let continuation = response
            .headers()
            .get("MS-ContinuationToken")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        if !status.is_success() {
            let detail = read_limited(&mut response, 2048).await.unwrap_or_else(|_| b"(unreadable body)".to_vec());
            let detail: String = String::from_utf8_lossy(&detail).chars().take(300).collect();
            let message = format!("{method} {url} answered {status}: {}", detail.trim());
            return Err(match code {
                408 | 429 | 401 | 500..=599 => FetchError::transient(message, Some(code), retry_after),
                _ => FetchError::permanent(message, Some(code)),
            });
        }
        let body = read_limited(&mut response, MAX_RESPONSE_BYTES).await.map_err(|e| match e {
            BodyError::TooLarge => FetchError::permanent(
                format!("{method} {url}: answer larger than {MAX_RESPONSE_BYTES} bytes"),
                Some(code),
            ),
            BodyError::Read(e) => {
                FetchError::transient(format!("{method} {url}: reading the body: {e}"), Some(code), None)
            }
        })?;
        if body.is_empty() {
            return Ok((Fetched::Found(Value::Null), continuation));
        }
        serde_json::from_slice(&body)
            .map(|v| (Fetched::Found(v), continuation))
            .map_err(|e| FetchError::permanent(format!("{method} {url}: the answer is not JSON: {e}"), Some(code)))
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let format = time::format_description::well_known::Rfc2822;
    let when = time::OffsetDateTime::parse(value, &format).ok()?;
    let delta = when - time::OffsetDateTime::now_utc();
    Some(Duration::try_from(delta).unwrap_or(Duration::ZERO))
}

fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    format!("{kind}: {}", error_chain(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after(&h), Some(Duration::ZERO), "a date in the past means now");
        h.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }
}
