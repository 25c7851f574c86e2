//! The simulated webhook registration API (`/webhooks/v1/registration…`): one
//! registration per tenant, the list of event names, and validation events: a POST
//! delivers a signed `test-created` event to the registered URL (up to 3 attempts, a
//! second apart) and records each attempt; at most 2 a minute, as Partner Center throttles.

use super::{Shared, error, millis_since, signed_headers};
use crate::partner_center::event::CATALOGUE;
use axum::{
    http::{Method, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// Test events allowed per [`THROTTLE_WINDOW`].
pub const TESTS_PER_WINDOW: usize = 2;
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(60);
const DELIVERY_ATTEMPTS: usize = 3;

#[derive(Default)]
pub(crate) struct Registrations {
    current: Option<Value>,
    /// When the last test events were requested (throttling).
    tests: VecDeque<Instant>,
    validations: HashMap<String, Validation>,
}

struct Validation {
    status: &'static str,
    webhook_url: Option<String>,
    attempts: Vec<Value>,
}

impl Registrations {
    /// Records a validation event that was (or is being) sent.
    pub(crate) fn record_sent(&mut self, correlation_id: &str, webhook_url: Option<String>) {
        let status = if webhook_url.is_some() { "pending" } else { "completed" };
        self.validations.insert(correlation_id.to_string(), Validation { status, webhook_url, attempts: Vec::new() });
    }

    /// Stores another receiver's registration in place of the current one.
    pub(crate) fn overwrite(&mut self, webhook_url: &str, events: &[&str]) {
        self.current = Some(json!({
            "SubscriberId": super::TENANT_ID,
            "WebhookUrl": webhook_url,
            "WebhookEvents": events,
            "SignatureTokenToMsSignatureHeader": false,
        }));
    }

    fn view(&self, correlation_id: &str) -> Option<Value> {
        let v = self.validations.get(correlation_id)?;
        Some(json!({
            "correlationId": correlation_id,
            "partnerId": super::TENANT_ID,
            "status": v.status,
            "events": [{
                "eventName": "test-created",
                "webhookUrl": v.webhook_url,
                "webhookResponses": v.attempts,
            }],
        }))
    }
}

pub(crate) async fn handle(shared: &Arc<Shared>, method: &Method, path: &str, body: &[u8]) -> Response {
    let rest = path.trim_start_matches("/webhooks/v1/registration").trim_end_matches('/');
    match (method.as_str(), rest) {
        ("GET", "/events") => axum::Json(json!(CATALOGUE)).into_response(),
        ("GET", "") => match &shared.lock().registration.current {
            Some(r) => axum::Json(r.clone()).into_response(),
            None => error(StatusCode::NOT_FOUND, "this tenant has no webhook registration"),
        },
        ("POST" | "PUT", "") => {
            let wanted = match parse_registration(body) {
                Ok(r) => r,
                Err(message) => return error(StatusCode::BAD_REQUEST, &message),
            };
            let mut w = shared.lock();
            let exists = w.registration.current.is_some();
            if method == Method::POST && exists {
                return error(StatusCode::CONFLICT, "a registration exists already: update it (PUT)");
            }
            if method == Method::PUT && !exists {
                return error(StatusCode::NOT_FOUND, "there is no registration to update: create one (POST)");
            }
            w.registration.current = Some(wanted.clone());
            axum::Json(wanted).into_response()
        }
        ("POST", "/validationEvents") => post_test(shared),
        ("GET", id) if id.starts_with("/validationEvents/") => {
            let id = id.trim_start_matches("/validationEvents/");
            match shared.lock().registration.view(id) {
                Some(v) => axum::Json(v).into_response(),
                None => error(StatusCode::NOT_FOUND, "no validation event with this correlation id"),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "no such registration API"),
    }
}

/// Validates a registration body the way the API does, and returns what it stores.
fn parse_registration(body: &[u8]) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let url = v.get("WebhookUrl").and_then(Value::as_str).ok_or("WebhookUrl is required")?;
    let parsed = url::Url::parse(url).map_err(|e| format!("WebhookUrl is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err("WebhookUrl must be an https URL".into());
    }
    let events: Vec<String> = v
        .get("WebhookEvents")
        .and_then(Value::as_array)
        .ok_or("WebhookEvents (a list of event names) is required")?
        .iter()
        .map(|e| e.as_str().map(str::to_string).ok_or("WebhookEvents must hold strings"))
        .collect::<Result<_, _>>()?;
    if events.is_empty() {
        return Err("WebhookEvents is empty".into());
    }
    if let Some(unknown) = events.iter().find(|e| !CATALOGUE.contains(&e.as_str())) {
        return Err(format!("unknown event name {unknown:?}"));
    }
    let ms_header = v.get("SignatureTokenToMsSignatureHeader").and_then(Value::as_bool).unwrap_or(false);
    Ok(json!({
        "SubscriberId": super::TENANT_ID,
        "WebhookUrl": url,
        "WebhookEvents": events,
        "SignatureTokenToMsSignatureHeader": ms_header,
    }))
}

fn post_test(shared: &Arc<Shared>) -> Response {
    let (url, ms_header, correlation_id) = {
        let mut w = shared.lock();
        let now = Instant::now();
        let tests = &mut w.registration.tests;
        while tests.front().is_some_and(|t| now.duration_since(*t) >= THROTTLE_WINDOW) {
            tests.pop_front();
        }
        if tests.len() >= TESTS_PER_WINDOW {
            let wait =
                tests.front().map_or(THROTTLE_WINDOW, |t| THROTTLE_WINDOW.saturating_sub(now.duration_since(*t)));
            let secs = wait.as_secs() + 1;
            let message = format!("at most {TESTS_PER_WINDOW} test events a minute; try again in {secs} s");
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, &message);
            if let Ok(v) = http::HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
            return r;
        }
        let Some(reg) = w.registration.current.clone() else {
            return error(StatusCode::BAD_REQUEST, "register a webhook URL before sending a test event");
        };
        w.registration.tests.push_back(now);
        let url = reg.get("WebhookUrl").and_then(Value::as_str).unwrap_or_default().to_string();
        let ms_header = reg.get("SignatureTokenToMsSignatureHeader").and_then(Value::as_bool).unwrap_or(false);
        let id = uuid::Uuid::new_v4().to_string();
        w.registration.record_sent(&id, Some(url.clone()));
        (url, ms_header, id)
    };
    tokio::spawn(deliver(shared.clone(), url, ms_header, correlation_id.clone()));
    axum::Json(json!({"correlationId": correlation_id})).into_response()
}

/// Delivers the `test-created` event, recording each attempt.
async fn deliver(shared: Arc<Shared>, url: String, ms_header: bool, correlation_id: String) {
    let body = serde_json::to_vec(&crate::dev::events::test_created(&correlation_id)).unwrap_or_default();
    for attempt in 0..DELIVERY_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let started = Instant::now();
        let mut request = shared.http.post(&url).body(body.clone());
        match signed_headers(&shared, &body, ms_header) {
            Ok(headers) => {
                for (k, v) in headers {
                    request = request.header(k, v);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "simulator cannot sign");
                break;
            }
        }
        let (code, message, system) = match request.send().await {
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                (status.as_u16().to_string(), text.chars().take(300).collect::<String>(), String::new())
            }
            Err(e) => (String::new(), String::new(), crate::partner_center::error_chain(&e)),
        };
        let delivered = code.starts_with('2');
        let record = json!({
            "dateTimeUtc": OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default(),
            "responseCode": code,
            "responseMessage": message,
            "systemMessage": system,
            "latencyMs": millis_since(started),
        });
        let mut w = shared.lock();
        if let Some(v) = w.registration.validations.get_mut(&correlation_id) {
            v.attempts.push(record);
            if delivered {
                v.status = "completed";
            }
        }
        drop(w);
        if delivered {
            return;
        }
    }
    if let Some(v) = shared.lock().registration.validations.get_mut(&correlation_id) {
        v.status = "failed";
    }
}
