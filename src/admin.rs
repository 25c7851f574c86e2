//! The admin listener of every role: `/healthz` (the process is alive), `/readyz`
//! (the broker is connected and the role is not shutting down; 503 otherwise),
//! `/metrics` (Prometheus text format), and whatever a role adds (`register watch`:
//! `/registration`, its last check).

use crate::shutdown::CancellationToken;
use crate::telemetry::Metrics;
use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use std::{
    future::Future,
    sync::{Arc, OnceLock},
};
use tokio::net::TcpListener;

/// Whether the role can do its work right now, answered by a check the role installs
/// once it is connected. The admin listener is served from the first moment of start-up
/// (so `/healthz` and `/metrics` answer while the broker connects and destinations are
/// created), and `/readyz` says 503 until the check is there.
#[derive(Clone, Default)]
pub struct Readiness {
    /// Set once, when the role's broker clients exist; shared with the admin handler.
    check: Arc<OnceLock<Box<dyn Fn() -> bool + Send + Sync>>>,
}

impl Readiness {
    /// Ready only once a check is installed and it passes.
    pub fn is_ready(&self) -> bool {
        self.check.get().is_some_and(|check| check())
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    ready: Readiness,
}

pub fn router(metrics: Arc<Metrics>, ready: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState { metrics, ready })
}

async fn readyz(State(s): State<AdminState>) -> Response {
    if s.ready.is_ready() {
        (StatusCode::OK, Json(json!({ "ready": true }))).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "ready": false }))).into_response()
    }
}

async fn metrics_text(State(s): State<AdminState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render()).into_response()
}

/// Serves the admin endpoints until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Readiness,
    routes: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "admin listening (/healthz /readyz /metrics)");
    let app = router(metrics, ready).merge(routes);
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

/// A role's admin endpoints, served in a task of their own from start-up until the role
/// has drained, so probes and scrapes keep answering while it shuts down.
pub struct Admin {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Admin {
    /// A role's start-up with its admin endpoints served from the first moment:
    /// `/healthz` and `/metrics` answer while `start` connects and creates destinations,
    /// `/readyz` says 503 until `start` has returned the role's state and `ready` (a check
    /// on that state) is installed. If start-up fails, the endpoints stop and the error is
    /// the caller's.
    pub async fn serve_while<T, E>(
        listener: TcpListener,
        metrics: Arc<Metrics>,
        start: impl Future<Output = Result<T, E>>,
        ready: impl FnOnce(&T) -> Box<dyn Fn() -> bool + Send + Sync>,
    ) -> Result<(Self, T), E> {
        Self::serve_with_routes_while(listener, metrics, Router::new(), start, ready).await
    }

    /// [`Admin::serve_while`], serving the role's own `routes` beside the usual three.
    pub async fn serve_with_routes_while<T, E>(
        listener: TcpListener,
        metrics: Arc<Metrics>,
        routes: Router,
        start: impl Future<Output = Result<T, E>>,
        ready: impl FnOnce(&T) -> Box<dyn Fn() -> bool + Send + Sync>,
    ) -> Result<(Self, T), E> {
        let readiness = Readiness::default();
        let admin = Self::spawn(listener, metrics, readiness.clone(), routes);
        match start.await {
            Ok(state) => {
                let _ = readiness.check.set(ready(&state));
                Ok((admin, state))
            }
            Err(e) => {
                admin.stop().await;
                Err(e)
            }
        }
    }

    fn spawn(listener: TcpListener, metrics: Arc<Metrics>, ready: Readiness, routes: Router) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(listener, metrics, ready, routes, stop.clone()));
        Self { stop, task }
    }

    /// Stops serving, once the role is done.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Ok(Err(e)) = self.task.await {
            tracing::warn!(error = %e, "admin listener failed");
        }
    }
}
