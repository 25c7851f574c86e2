//! Why a webhook request was refused, as status codes and short JSON bodies.
//!
//! The table of docs/http-interface.md lives here: signature problems are 401
//! (503 when only the certificate download failed, so Partner Center retries), bad
//! events 400, oversize bodies 413, and anything short of a broker confirm 503 — never
//! a 2xx (also when the body budget is spent).

use crate::broker::PublishError;
use crate::partner_center::{event::EventError, signature::VerifyError};
use crate::telemetry::outcome;
use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error(transparent)]
    Signature(#[from] VerifyError),
    #[error(transparent)]
    Event(#[from] EventError),
    #[error("body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("could not read the body: {0}")]
    BodyRead(String),
    #[error(transparent)]
    Broker(#[from] PublishError),
    #[error("shutting down")]
    ShuttingDown,
    /// The body budget (`ingress.max_buffered_body_bytes`) is spent: shed, do not queue.
    #[error("too many request bodies in flight; retry later")]
    Overloaded,
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::Signature(e) if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::Signature(_) => StatusCode::UNAUTHORIZED,
            Rejection::Event(_) | Rejection::BodyRead(_) => StatusCode::BAD_REQUEST,
            Rejection::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::Broker(_) | Rejection::ShuttingDown | Rejection::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A stable machine-readable code for the error body.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Signature(e) => e.reason(),
            Rejection::Event(EventError::NotJson(_)) => "body_not_json",
            Rejection::Event(EventError::NotAnObject) => "body_not_object",
            Rejection::Event(EventError::MissingEventName) => "missing_event_name",
            Rejection::TooLarge(_) => "payload_too_large",
            Rejection::BodyRead(_) => "body_unreadable",
            Rejection::Broker(PublishError::Timeout(_)) => "broker_timeout",
            Rejection::Broker(_) => "broker_unavailable",
            Rejection::ShuttingDown => "shutting_down",
            Rejection::Overloaded => "overloaded",
        }
    }

    /// The `outcome` label of `pcbridge_ingress_requests_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Rejection::Signature(e) if e.is_transient() => outcome::CERTIFICATE_UNAVAILABLE,
            Rejection::Signature(_) => outcome::UNAUTHORIZED,
            Rejection::Event(_) | Rejection::BodyRead(_) => outcome::BAD_REQUEST,
            Rejection::TooLarge(_) => outcome::TOO_LARGE,
            Rejection::Broker(_) => outcome::BROKER_UNAVAILABLE,
            Rejection::ShuttingDown => outcome::SHUTTING_DOWN,
            Rejection::Overloaded => outcome::OVERLOADED,
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(json!({ "error": self.code(), "message": self.to_string() }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
