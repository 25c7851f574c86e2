//! `pcbridge register watch`: the registration guard. A tenant has one webhook
//! registration, and saving another (CIPP at start-up, a co-sell connector) replaces it
//! silently: Partner Center then delivers elsewhere and pcbridge hears nothing. Every
//! `registration.check_interval_secs` the guard reads the registration and compares its
//! URL, events and signature header with `[registration]`. A difference sets
//! `pcbridge_registration_mismatch` and logs an error naming what changed; with
//! `registration.restore` it puts the registration back (an update, then a test event),
//! at most once per interval. The last check is served at `/registration` on the admin
//! listener, which `pcbridge register status` reads.

use super::RegisterError;
use crate::config::{Config, RegistrationConfig};
use crate::partner_center::{
    client::ApiClient,
    registration::{Registration, RegistrationApi},
};
use crate::shutdown::CancellationToken;
use crate::telemetry::Metrics;
use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use serde::{Deserialize, Serialize};
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use time::{OffsetDateTime, format_description::BorrowedFormatItem, macros::format_description};
use tokio::net::TcpListener;

/// The result of one check: `result` label of `pcbridge_registration_checks_total`.
pub mod result {
    pub const MATCH: &str = "match";
    pub const MISMATCH: &str = "mismatch";
    /// No registration at all.
    pub const MISSING: &str = "missing";
    /// The registration could not be read; nothing is known.
    pub const FAILED: &str = "failed";
}

/// [`Check::at`]: RFC 3339 UTC to the millisecond, fixed width, so that later checks
/// sort after earlier ones as text too.
const AT: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// One check, as `/registration` serves it and `register status` prints it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Check {
    /// When it was made, RFC 3339 UTC, to the millisecond.
    pub at: String,
    /// See [`result`].
    pub result: String,
    /// What differs from `[registration]`, one line each.
    pub changes: Vec<String>,
    /// Why the registration could not be read (`failed`).
    pub error: Option<String>,
    /// What a restore did, when one was made at this check.
    pub restore: Option<String>,
    /// Seconds between checks.
    pub interval_secs: u64,
}

/// What differs between the `expected` registration and the `actual` one, one line each;
/// empty when they agree. Events are compared as sets.
pub fn differences(expected: &Registration, actual: Option<&Registration>) -> Vec<String> {
    let Some(actual) = actual else {
        return vec![format!("there is no registration (expected {})", expected.webhook_url)];
    };
    let mut out = Vec::new();
    if actual.webhook_url.trim() != expected.webhook_url.trim() {
        out.push(format!("webhook URL is {} (expected {})", actual.webhook_url, expected.webhook_url));
    }
    let missing: Vec<&str> =
        expected.events.iter().filter(|e| !actual.events.contains(e)).map(String::as_str).collect();
    if !missing.is_empty() {
        out.push(format!("events missing: {}", missing.join(", ")));
    }
    let extra: Vec<&str> = actual.events.iter().filter(|e| !expected.events.contains(e)).map(String::as_str).collect();
    if !extra.is_empty() {
        out.push(format!("events not configured: {}", extra.join(", ")));
    }
    if actual.ms_signature_header != expected.ms_signature_header {
        out.push(format!(
            "SignatureTokenToMsSignatureHeader is {} (expected {})",
            actual.ms_signature_header, expected.ms_signature_header
        ));
    }
    out
}

/// The guard's state, shared with the `/registration` handler.
pub struct Guard {
    api: RegistrationApi,
    config: RegistrationConfig,
    metrics: Arc<Metrics>,
    /// The last check; a plain mutex, never held across an await.
    last: Mutex<Option<Check>>,
    /// When a restore was last attempted: no second one within an interval, so a
    /// receiver that re-registers in a loop is not fought at the API's pace.
    last_restore: Mutex<Option<Instant>>,
}

impl Guard {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Self, RegisterError> {
        let client = ApiClient::new(config, metrics.clone())?;
        Ok(Self {
            api: RegistrationApi::new(client),
            config: config.registration.clone(),
            metrics,
            last: Mutex::new(None),
            last_restore: Mutex::new(None),
        })
    }

    /// The last check, if one was made.
    pub fn last(&self) -> Option<Check> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The registration `[registration]` asks for (every offered event when it names none).
    async fn expected(&self) -> Result<Registration, String> {
        let events = if self.config.events.is_empty() {
            self.api.events().await.map_err(|e| e.message)?
        } else {
            self.config.events.clone()
        };
        Ok(Registration {
            webhook_url: self.config.webhook_url.clone(),
            events,
            ms_signature_header: self.config.ms_signature_header,
        })
    }

    /// Reads the registration, compares, reports, and restores when enabled and due.
    pub async fn check(&self) -> Check {
        let at = OffsetDateTime::now_utc();
        let read = async { Ok::<_, String>((self.expected().await?, self.api.show().await.map_err(|e| e.message)?)) };
        let mut check = Check {
            at: at.format(AT).unwrap_or_default(),
            result: result::FAILED.into(),
            changes: Vec::new(),
            error: None,
            restore: None,
            interval_secs: self.config.check_interval_secs,
        };
        match read.await {
            Err(e) => {
                tracing::warn!(error = %e, "could not read the webhook registration");
                check.error = Some(e);
            }
            Ok((expected, actual)) => {
                self.metrics.registration_last_check.set(at.unix_timestamp());
                check.changes = differences(&expected, actual.as_ref());
                check.result = match (&actual, check.changes.is_empty()) {
                    (None, _) => result::MISSING,
                    (Some(_), true) => result::MATCH,
                    (Some(_), false) => result::MISMATCH,
                }
                .into();
                self.metrics.registration_mismatch.set(i64::from(!check.changes.is_empty()));
                if !check.changes.is_empty() {
                    tracing::error!(
                        changes = %check.changes.join("; "),
                        "the webhook registration is not the configured one: Partner Center is not delivering to pcbridge as configured"
                    );
                    if self.config.restore && self.restore_due() {
                        check.restore = Some(self.restore(&expected, actual.is_none()).await);
                    }
                }
            }
        }
        self.metrics.registration_checks.with_label_values(&[&check.result]).inc();
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(check.clone());
        check
    }

    /// Whether a restore may be attempted now (none within the last interval); if so,
    /// records the attempt.
    fn restore_due(&self) -> bool {
        let mut last = self.last_restore.lock().unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= self.config.check_interval());
        if due {
            *last = Some(Instant::now());
        } else {
            tracing::warn!("not restoring: the registration was restored less than one interval ago");
        }
        due
    }

    /// Saves `expected` (creating it when `missing`), then asks for a test event.
    async fn restore(&self, expected: &Registration, missing: bool) -> String {
        if let Err(e) = self.api.save(expected, missing).await {
            self.metrics.registration_restores.with_label_values(&["failed"]).inc();
            tracing::error!(error = %e.message, "could not restore the webhook registration");
            return format!("failed: {}", e.message);
        }
        self.metrics.registration_restores.with_label_values(&["restored"]).inc();
        let test = match self.api.send_test().await {
            Ok(id) => format!("test event {id}"),
            Err(e) => format!("no test event ({})", e.message),
        };
        tracing::warn!(url = %expected.webhook_url, test = %test, "webhook registration restored");
        format!("restored {} with {} events; {test}", expected.webhook_url, expected.events.len())
    }
}

/// `/registration`: the last check, or 503 before the first.
async fn last_check(State(guard): State<Arc<Guard>>) -> impl IntoResponse {
    match guard.last() {
        Some(check) => (StatusCode::OK, Json(serde_json::to_value(check).unwrap_or_default())),
        None => (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "checked": false }))),
    }
}

/// The one start-up path of the guard, for the CLI, `dev` and the tests alike: serves
/// the admin endpoints (with `/registration`), then checks at once and every interval
/// until `shutdown`. Ready once a check was made.
pub async fn start(
    config: &Config,
    admin_listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(Arc<Guard>, tokio::task::JoinHandle<()>), RegisterError> {
    if config.registration.webhook_url.trim().is_empty() {
        return Err(RegisterError::Usage(
            "registration.webhook_url is empty: set it to this ingress's public URL \
             (PCBRIDGE_REGISTRATION__WEBHOOK_URL) so there is something to watch"
                .into(),
        ));
    }
    let guard = Arc::new(Guard::new(config, metrics.clone())?);
    let routes = Router::new().route("/registration", get(last_check)).with_state(guard.clone());
    let ready = |guard: &Arc<Guard>| {
        let (guard, stop) = (guard.clone(), shutdown.clone());
        Box::new(move || !stop.is_cancelled() && guard.last().is_some()) as Box<dyn Fn() -> bool + Send + Sync>
    };
    let started = async { Ok::<_, RegisterError>(guard.clone()) };
    let (admin, _) =
        crate::admin::Admin::serve_with_routes_while(admin_listener, metrics, routes, started, ready).await?;
    let interval = config.registration.check_interval();
    let task_guard = guard.clone();
    let handle = tokio::spawn(async move {
        tracing::info!(interval_secs = interval.as_secs(), "watching the webhook registration");
        loop {
            task_guard.check().await;
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(interval) => {}
            }
        }
        admin.stop().await;
        tracing::info!("registration watch stopped");
    });
    Ok((guard, handle))
}

/// The admin URL of a guard started with this configuration, seen from the same host.
pub fn local_admin_url(config: &Config) -> String {
    let addr = config.admin.listen;
    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
    format!("http://{host}:{}", addr.port())
}

/// Reads the last check of the guard at `admin_url`.
pub async fn fetch_last(admin_url: &str) -> Result<Check, String> {
    crate::partner_center::install_crypto_provider();
    let url = format!("{}/registration", admin_url.trim_end_matches('/'));
    let answer = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("no `pcbridge register watch` answers at {url} ({e})"))?;
    if answer.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
        return Err(format!("the guard at {url} has not finished its first check yet"));
    }
    let body = answer.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    serde_json::from_slice::<Check>(&body).map_err(|e| format!("{url} did not answer with a check: {e}"))
}

/// A check, for a person.
pub fn describe(check: &Check) -> String {
    let mut s = format!("last check: {} (every {} s): {}\n", check.at, check.interval_secs, check.result);
    for change in &check.changes {
        s.push_str(&format!("  {change}\n"));
    }
    if let Some(e) = &check.error {
        s.push_str(&format!("  could not read the registration: {e}\n"));
    }
    if let Some(r) = &check.restore {
        s.push_str(&format!("  restore: {r}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(url: &str, events: &[&str], header: bool) -> Registration {
        Registration {
            webhook_url: url.into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            ms_signature_header: header,
        }
    }

    #[test]
    fn differences_name_what_changed() {
        let expected = reg("https://pcbridge.example.com/webhooks/partner-center", &["a", "b"], false);
        assert!(differences(&expected, Some(&reg(&expected.webhook_url, &["b", "a"], false))).is_empty());
        let cipp = reg("https://cipp.example.com/api/PublicWebhooks", &["a", "c"], true);
        assert_eq!(
            differences(&expected, Some(&cipp)),
            [
                "webhook URL is https://cipp.example.com/api/PublicWebhooks (expected https://pcbridge.example.com/webhooks/partner-center)",
                "events missing: b",
                "events not configured: c",
                "SignatureTokenToMsSignatureHeader is true (expected false)",
            ]
        );
        assert_eq!(differences(&expected, None).len(), 1);
    }
}
