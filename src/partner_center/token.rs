//! Entra ID access tokens: client credentials (app-only, with a client secret or, for
//! workload identity, the federated token file Kubernetes mounts) or refresh token
//! (App+User), per scope, cached and refreshed before they expire, one request at a time
//! per scope (single flight) however many calls need a token at once. The Partner Center
//! and Graph calls and the Event Hubs sign-in share this code. Tokens are never logged.

use crate::config::Secret;
use serde::Deserialize;
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

/// How a token is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Grant {
    /// App-only: the webhook, audit and customer APIs, and Graph.
    ClientCredentials,
    /// App+User, from a refresh token: the fraud events API.
    RefreshToken,
}

/// Why no token could be had. `transient` says whether trying later may help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("token endpoint: {message}")]
pub struct TokenError {
    pub message: String,
    pub transient: bool,
}

/// Tokens are cached per grant and scope.
type Key = (Grant, String);

/// Refresh a token when less than this remains of its lifetime.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

#[derive(Clone)]
struct Cached {
    token: Secret,
    refresh_at: Instant,
    /// When Entra ID says the token expires (what librdkafka is told).
    expires_at: SystemTime,
}

/// Fetches and caches tokens. Clones share one cache.
#[derive(Clone)]
pub struct TokenProvider {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    client_secret: Option<Secret>,
    /// Workload identity: a file holding a federated token (a JWT Kubernetes rotates),
    /// presented as the client assertion instead of a secret; read on every request.
    federated_token_file: Option<PathBuf>,
    /// The current refresh token; Entra ID may rotate it on every use.
    refresh_token: Mutex<Option<Secret>>,
    cache: Mutex<HashMap<Key, Cached>>,
    /// One lock per (grant, scope): the holder fetches, the others wait and then read
    /// the cache, so a burst of calls makes one token request.
    flights: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    /// Called after every token request (for the refreshes metric), with its grant.
    on_refresh: Option<Arc<dyn Fn(Grant, bool) + Send + Sync>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default, deserialize_with = "lenient_u64")]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
}

fn lenient_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

impl TokenProvider {
    pub fn new(
        http: reqwest::Client,
        token_base_url: &str,
        tenant_id: &str,
        client_id: &str,
        client_secret: Option<Secret>,
        refresh_token: Option<Secret>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                http,
                token_url: format!("{}/{}/oauth2/v2.0/token", token_base_url.trim_end_matches('/'), tenant_id),
                client_id: client_id.to_string(),
                client_secret,
                federated_token_file: None,
                refresh_token: Mutex::new(refresh_token),
                cache: Mutex::default(),
                flights: Mutex::default(),
                on_refresh: None,
            }),
        }
    }

    /// Reports every token request (grant, success) — for metrics.
    pub fn with_observer(mut self, f: impl Fn(Grant, bool) + Send + Sync + 'static) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.on_refresh = Some(Arc::new(f));
        }
        self
    }

    /// Signs in with the federated token in `file` (workload identity: AKS mounts it at
    /// `AZURE_FEDERATED_TOKEN_FILE`) when there is no client secret.
    pub fn with_federated_token_file(mut self, file: impl Into<PathBuf>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.federated_token_file = Some(file.into());
        }
        self
    }

    /// A valid token for `scope`.
    pub async fn token(&self, grant: Grant, scope: &str) -> Result<Secret, TokenError> {
        Ok(self.token_expiring(grant, scope).await?.0)
    }

    /// A valid token for `scope`, and when it expires.
    pub async fn token_expiring(&self, grant: Grant, scope: &str) -> Result<(Secret, SystemTime), TokenError> {
        let key = (grant, scope.to_string());
        if let Some(t) = self.cached(&key) {
            return Ok(t);
        }
        let flight = {
            let mut flights = self.inner.flights.lock().unwrap_or_else(|p| p.into_inner());
            flights.entry(key.clone()).or_default().clone()
        };
        let _guard = flight.lock().await;
        if let Some(t) = self.cached(&key) {
            return Ok(t);
        }
        let result = self.request(grant, scope).await;
        if let Some(observe) = &self.inner.on_refresh {
            observe(grant, result.is_ok());
        }
        let (token, lifetime) = result?;
        let refresh_at = Instant::now() + lifetime.saturating_sub(REFRESH_MARGIN.min(lifetime / 2));
        let expires_at = SystemTime::now() + lifetime;
        self.inner
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, Cached { token: token.clone(), refresh_at, expires_at });
        Ok((token, expires_at))
    }

    /// Forgets the token for `scope` (after the API answered 401 with it).
    pub fn invalidate(&self, grant: Grant, scope: &str) {
        self.inner.cache.lock().unwrap_or_else(|p| p.into_inner()).remove(&(grant, scope.to_string()));
    }

    fn cached(&self, key: &Key) -> Option<(Secret, SystemTime)> {
        let cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(key).filter(|c| Instant::now() < c.refresh_at).map(|c| (c.token.clone(), c.expires_at))
    }

    async fn request(&self, grant: Grant, scope: &str) -> Result<(Secret, Duration), TokenError> {
        let permanent = |m: String| TokenError { message: m, transient: false };
        let mut form: Vec<(&str, String)> =
            vec![("client_id", self.inner.client_id.clone()), ("scope", scope.to_string())];
        match (&self.inner.client_secret, &self.inner.federated_token_file) {
            (Some(secret), _) => form.push(("client_secret", secret.expose().to_string())),
            (None, Some(file)) => {
                // Kubernetes rotates the file: read it for every request.
                let assertion = std::fs::read_to_string(file).map_err(|e| TokenError {
                    message: format!("cannot read the federated token file {}: {e}", file.display()),
                    transient: true,
                })?;
                form.push(("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into()));
                form.push(("client_assertion", assertion.trim().to_string()));
            }
            (None, None) => {
                return Err(permanent(
                    "no client secret configured (PCBRIDGE_PARTNER_CENTER__CLIENT_SECRET or partner_center.client_secret_file)".into(),
                ));
            }
        }
        match grant {
            Grant::ClientCredentials => form.push(("grant_type", "client_credentials".into())),
            Grant::RefreshToken => {
                let refresh = self.inner.refresh_token.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let refresh = refresh.ok_or_else(|| {
                    permanent("the fraud events API needs App+User: set PCBRIDGE_PARTNER_CENTER__REFRESH_TOKEN".into())
                })?;
                form.push(("grant_type", "refresh_token".into()));
                form.push(("refresh_token", refresh.expose().to_string()));
            }
        }
        let body = form_urlencode(&form);
        let response = self
            .inner
            .http
            .post(&self.inner.token_url)
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(http::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| TokenError {
                message: format!("{}: {}", self.inner.token_url, e.without_url()),
                transient: true,
            })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| TokenError { message: format!("reading the answer: {}", e.without_url()), transient: true })?;
        if !status.is_success() {
            // Entra's error body names the problem (AADSTS…) and holds no secret.
            let detail: String = String::from_utf8_lossy(&bytes).chars().take(300).collect();
            let transient = status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408;
            return Err(TokenError {
                message: format!("{} answered {status}: {detail}", self.inner.token_url),
                transient,
            });
        }
        let parsed: TokenResponse = serde_json::from_slice(&bytes)
            .map_err(|e| TokenError { message: format!("unreadable token response: {e}"), transient: true })?;
        if let Some(rotated) = parsed.refresh_token.filter(|r| !r.is_empty()) {
            *self.inner.refresh_token.lock().unwrap_or_else(|p| p.into_inner()) = Some(Secret::new(rotated));
        }
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(3600));
        tracing::debug!(?grant, scope, lifetime_s = lifetime.as_secs(), "token obtained");
        Ok((Secret::new(parsed.access_token), lifetime))
    }
}

/// `application/x-www-form-urlencoded` encoding.
fn form_urlencode(pairs: &[(&str, String)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())))
        .finish()
}
