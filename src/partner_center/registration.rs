//! The webhook registration API (`/webhooks/v1/registration…`), for `pcbridge register`:
//! the tenant's registration (URL, events, signature header), the event names Partner
//! Center offers, test (validation) events and their delivery attempts.

use super::client::{Api, ApiClient, FetchError, Fetched};
use http::Method;
use serde_json::{Value, json};
use uuid::Uuid;

const REGISTRATION: &str = "/webhooks/v1/registration";

/// What a registration says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub webhook_url: String,
    pub events: Vec<String>,
    /// `SignatureTokenToMsSignatureHeader`: the signature comes in `x-ms-signature`.
    pub ms_signature_header: bool,
}

impl Registration {
    /// The API's body.
    pub fn to_json(&self) -> Value {
        json!({
            "WebhookUrl": self.webhook_url,
            "WebhookEvents": self.events,
            "SignatureTokenToMsSignatureHeader": self.ms_signature_header,
        })
    }

    /// Reads an API answer tolerantly (keys in any case, missing fields empty).
    pub fn from_json(v: &Value) -> Self {
        let field = |name: &str| {
            v.as_object().and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
        };
        Self {
            webhook_url: field("WebhookUrl").and_then(Value::as_str).unwrap_or_default().to_string(),
            events: field("WebhookEvents")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default(),
            ms_signature_header: field("SignatureTokenToMsSignatureHeader")
                .and_then(|v| v.as_bool().or_else(|| v.as_str().map(|s| s.eq_ignore_ascii_case("true"))))
                .unwrap_or(false),
        }
    }
}

/// One delivery attempt of a validation event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub event_name: String,
    pub at: String,
    /// The webhook's HTTP status ("" when it did not answer).
    pub response_code: String,
    pub message: String,
}

/// The state of a validation event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    pub correlation_id: String,
    pub status: String,
    pub attempts: Vec<Attempt>,
}

impl Validation {
    /// Reads `GET …/validationEvents/{id}` tolerantly: attempts may be listed per event
    /// (`webhookResponses`) or be the events themselves.
    pub fn from_json(v: &Value) -> Self {
        let text = |v: &Value, keys: &[&str]| {
            keys.iter()
                .find_map(|k| v.get(*k))
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                })
                .unwrap_or_default()
        };
        let mut attempts = Vec::new();
        for event in v.get("events").and_then(Value::as_array).into_iter().flatten() {
            let name = text(event, &["eventName", "EventName"]);
            let responses = event.get("webhookResponses").and_then(Value::as_array);
            for r in responses.map(|r| r.iter().collect::<Vec<_>>()).unwrap_or_else(|| vec![event]) {
                let message = [text(r, &["responseMessage", "message"]), text(r, &["systemMessage"])]
                    .into_iter()
                    .filter(|m| !m.is_empty())
                    .collect::<Vec<_>>()
                    .join(" — ");
                attempts.push(Attempt {
                    event_name: name.clone(),
                    at: text(r, &["dateTimeUtc", "timestamp"]),
                    response_code: text(r, &["responseCode", "statusCode"]),
                    message,
                });
            }
        }
        Self {
            correlation_id: text(v, &["correlationId", "CorrelationId"]),
            status: text(v, &["status", "Status"]),
            attempts,
        }
    }
}

/// The registration API, with the client's tokens and MS-* headers.
pub struct RegistrationApi {
    client: ApiClient,
}

impl RegistrationApi {
    pub fn new(client: ApiClient) -> Self {
        Self { client }
    }

    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Fetched, FetchError> {
        self.client.call(method, Api::PartnerCenter, path, body, Uuid::new_v4()).await
    }

    /// The tenant's registration; `None` when there is none.
    pub async fn show(&self) -> Result<Option<Registration>, FetchError> {
        Ok(match self.call(Method::GET, REGISTRATION, None).await? {
            Fetched::Found(v) => Some(Registration::from_json(&v)),
            Fetched::Gone => None,
        })
    }

    /// The event names one can register for.
    pub async fn events(&self) -> Result<Vec<String>, FetchError> {
        match self.call(Method::GET, &format!("{REGISTRATION}/events"), None).await? {
            Fetched::Found(Value::Array(names)) => {
                Ok(names.iter().filter_map(Value::as_str).map(str::to_string).collect())
            }
            other => Err(unexpected("the list of events", &other)),
        }
    }

    /// Creates (`POST`) or replaces (`PUT`) the registration; returns what was stored.
    pub async fn save(&self, registration: &Registration, create: bool) -> Result<Registration, FetchError> {
        let method = if create { Method::POST } else { Method::PUT };
        match self.call(method, REGISTRATION, Some(&registration.to_json())).await? {
            Fetched::Found(v) if v.is_object() => Ok(Registration::from_json(&v)),
            Fetched::Found(_) => Ok(registration.clone()),
            Fetched::Gone => Err(FetchError {
                class: super::client::ErrorClass::Permanent,
                status: Some(404),
                message: "the registration API answered 404 Not Found".into(),
            }),
        }
    }

    /// Asks Partner Center to send a `test-created` event; returns its correlation id.
    pub async fn send_test(&self) -> Result<String, FetchError> {
        match self.call(Method::POST, &format!("{REGISTRATION}/validationEvents"), None).await? {
            Fetched::Found(Value::String(id)) => Ok(id),
            Fetched::Found(v) => v
                .get("correlationId")
                .or_else(|| v.get("CorrelationId"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| unexpected("a correlation id", &Fetched::Found(v.clone()))),
            other => Err(unexpected("a correlation id", &other)),
        }
    }

    /// A validation event's delivery attempts; `None` when the id is unknown (or older
    /// than the 7 days Partner Center keeps them).
    pub async fn status(&self, correlation_id: &str) -> Result<Option<Validation>, FetchError> {
        let id: String = url::form_urlencoded::byte_serialize(correlation_id.as_bytes()).collect();
        Ok(match self.call(Method::GET, &format!("{REGISTRATION}/validationEvents/{id}"), None).await? {
            Fetched::Found(v) => Some(Validation::from_json(&v)),
            Fetched::Gone => None,
        })
    }
}

fn unexpected(what: &str, got: &Fetched) -> FetchError {
    let got = match got {
        Fetched::Found(v) => format!("{:.200}", v.to_string()),
        Fetched::Gone => "404 Not Found".to_string(),
    };
    FetchError {
        class: super::client::ErrorClass::Permanent,
        status: None,
        message: format!("expected {what} from the registration API, got {got}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_attempts_read_in_either_shape() {
        let nested = json!({"correlationId": "c", "status": "completed", "events": [{"eventName": "test-created",
            "webhookResponses": [{"dateTimeUtc": "t1", "responseCode": "503", "responseMessage": "down"},
                                 {"dateTimeUtc": "t2", "responseCode": "200", "responseMessage": ""}]}]});
        let v = Validation::from_json(&nested);
        assert_eq!(v.attempts.len(), 2);
        assert_eq!((v.attempts[0].response_code.as_str(), v.attempts[0].message.as_str()), ("503", "down"));
        let flat = json!({"correlationId": "c", "status": "failed", "events": [{"eventName": "test-created", "statusCode": "NotFound", "message": "no route"}]});
        let v = Validation::from_json(&flat);
        assert_eq!((v.status.as_str(), v.attempts[0].response_code.as_str()), ("failed", "NotFound"));
    }

    #[test]
    fn registration_reads_loosely() {
        let r = Registration::from_json(
            &json!({"webhookUrl": "https://x", "WebhookEvents": ["a"], "SignatureTokenToMsSignatureHeader": "True"}),
        );
        assert_eq!(
            r,
            Registration { webhook_url: "https://x".into(), events: vec!["a".into()], ms_signature_header: true }
        );
    }
}
