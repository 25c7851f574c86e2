//! The thin HTTP front: `POST /webhooks/partner-center` verifies each signed webhook
//! and publishes it, byte for byte, to `{prefix}{EventName}`, answering 2xx only after
//! the broker confirmed. It knows the broker only through [`Publisher`].

pub mod error;
pub mod handler;
pub mod message;

use crate::broker::Publisher;
use crate::change_store::Recorder;
use crate::config::Config;
use crate::contract::destinations::Destinations;
use crate::partner_center::{BuildError, signature::Verifier};
use crate::shutdown::CancellationToken;
use crate::telemetry::Metrics;
use axum::{Router, routing::post};
use std::{sync::Arc, time::Duration};
use tokio::{net::TcpListener, sync::Semaphore};
use tower::limit::ConcurrencyLimitLayer;
use tower_http::timeout::TimeoutLayer;

/// The path Partner Center posts to.
pub const WEBHOOK_PATH: &str = "/webhooks/partner-center";

/// hyper's per-connection read buffer limit (headers, and body bytes not yet consumed).
const HTTP1_MAX_BUF_BYTES: usize = 64 * 1024;

/// What every request needs, shared.
pub struct IngressState {
    pub verifier: Verifier,
    /// Where accepted events go; `publish` resolves only after the broker's confirm.
    pub publisher: Arc<dyn Publisher>,
    pub destinations: Destinations,
    /// CloudEvents `source`: the Partner Center base URL.
    pub source: String,
    pub max_body_bytes: usize,
    /// Body bytes that may be buffered at once, as permits: a request holds its share
    /// from before its body is read until it is answered. Bounding the bytes (not only
    /// the requests) is what keeps unauthenticated clients trickling large bodies from
    /// pushing the pod past its memory limit; past the budget requests get 503.
    pub body_budget: Arc<Semaphore>,
    /// Upper bound on waiting for the confirm; past it the answer is 503, never 2xx.
    pub publish_timeout: Duration,
    pub request_timeout: Duration,
    pub max_concurrent_requests: usize,
    pub metrics: Arc<Metrics>,
    /// Cancelled at shutdown: requests arriving after it get 503 while the ones in
    /// flight finish (each still waiting for its confirm).
    pub shutdown: CancellationToken,
    /// Where the change key of each published webhook is recorded (when a change store
    /// is configured), so reconciliation does not publish that change again. Written
    /// after the broker's confirm and off the request path.
    pub delivered: Option<Recorder>,
}

impl IngressState {
    pub fn new(
        config: &Config,
        verifier: Verifier,
        publisher: Arc<dyn Publisher>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            verifier,
            publisher,
            destinations: config.broker.destinations(),
            source: config.partner_center.base_url.clone(),
            max_body_bytes: config.ingress.max_body_bytes,
            body_budget: Arc::new(Semaphore::new(config.ingress.max_buffered_body_bytes.min(Semaphore::MAX_PERMITS))),
            publish_timeout: config.ingress.publish_timeout(),
            request_timeout: config.ingress.request_timeout(),
            max_concurrent_requests: config.ingress.max_concurrent_requests,
            metrics,
            shutdown,
            delivered: None,
        }
    }

    /// Whether the ingress should receive traffic (`/readyz`).
    pub fn is_ready(&self) -> bool {
        !self.shutdown.is_cancelled() && self.publisher.is_ready()
    }
}

/// The webhook router.
pub fn router(state: Arc<IngressState>) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(handler::receive))
        .layer(ConcurrencyLimitLayer::new(state.max_concurrent_requests))
        .layer(TimeoutLayer::with_status_code(http::StatusCode::REQUEST_TIMEOUT, state.request_timeout))
        .with_state(state)
}

/// Serves the webhook endpoint on `listener` until `shutdown` is cancelled, then
/// stops accepting and returns once every in-flight request has been answered.
///
/// A connection must send its request headers within `ingress.request_timeout_ms`
/// (hyper's header read timeout), so slow-header clients (slowloris) cannot hold
/// connections open; the body and the handler are bounded by the same timeout and by
/// `ingress.max_body_bytes`.
pub async fn run(listener: TcpListener, state: Arc<IngressState>, shutdown: CancellationToken) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    tracing::info!(addr = %listener.local_addr()?, path = WEBHOOK_PATH, "ingress listening");
    let header_timeout = state.request_timeout;
    let app = router(state);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // hyper buffers up to ~400 KiB per connection by default when the handler reads
    // slower than the client writes; a webhook needs a fraction of that.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout).max_buf_size(HTTP1_MAX_BUF_BYTES);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Why the ingress could not start, or stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// The publisher could not connect; its kind says whether waiting can help.
    #[error(transparent)]
    Broker(#[from] crate::broker::SetupError),
    /// The signature verifier could not be built (trust anchors, URL prefixes).
    #[error(transparent)]
    Verifier(#[from] BuildError),
    /// Accepting connections failed for good.
    #[error("webhook listener failed: {0}")]
    Listener(#[source] std::io::Error),
}

/// The one start-up path of the ingress, for the CLI, `dev` and the tests alike: serves
/// the admin endpoints (liveness answers from here on), builds the verifier and connects
/// the publisher (an error here is the caller's to report), creates the raw
/// destinations, turns ready, then serves webhooks in a task of its own until
/// `shutdown` and the drain are done.
pub async fn start(
    config: &Config,
    client_id: &str,
    listener: TcpListener,
    admin_listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<Result<(), IngressError>>, IngressError> {
    let start = async {
        let verifier = Verifier::new(&config.signature)?;
        let publisher = crate::broker::connect(config, client_id, metrics.clone()).await?;
        let mut state = IngressState::new(config, verifier, publisher, metrics.clone(), shutdown.clone());
        let recorder = (!config.reconcile.store_url.is_empty()).then(|| {
            let (recorder, task) = Recorder::start(config, metrics.clone());
            state.delivered = Some(recorder);
            task
        });
        let state = Arc::new(state);
        ensure_raw_destinations(&state).await;
        Ok::<_, IngressError>((state, recorder))
    };
    let ready = |(state, _): &(Arc<IngressState>, _)| {
        let state = state.clone();
        Box::new(move || state.is_ready()) as Box<dyn Fn() -> bool + Send + Sync>
    };
    let (admin, (state, recorder)) =
        crate::admin::Admin::serve_while(admin_listener, metrics.clone(), start, ready).await?;
    let config = config.clone();
    Ok(tokio::spawn(async move {
        let server = run(listener, state.clone(), shutdown.clone());
        tokio::pin!(server);
        let served = match crate::shutdown::drain(&mut server, &shutdown, config.shutdown.drain_deadline()).await {
            Some(r) => r.map_err(IngressError::Listener),
            // Those requests were not answered 2xx: Partner Center delivers them again.
            None => Ok(()),
        };
        state.publisher.close(Duration::from_secs(5).min(config.shutdown.drain_deadline())).await;
        if let Some(recorder) = recorder {
            recorder.finish(Duration::from_secs(5)).await;
        }
        admin.stop().await;
        tracing::info!("ingress stopped");
        served
    }))
}

/// Creates every raw destination before the first webhook, so that a topic exists when
/// a consumer subscribes; failing that, publishing creates it on first use.
async fn ensure_raw_destinations(state: &IngressState) {
    let raw = state.destinations.all_raw();
    match tokio::time::timeout(Duration::from_secs(15), state.publisher.ensure_destinations(&raw)).await {
        Ok(Ok(())) => tracing::info!(count = raw.len(), kind = state.publisher.kind(), "raw destinations ready"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not create destinations at start-up; will retry on first use")
        }
        Err(_) => tracing::warn!("creating destinations timed out; will retry on first use"),
    }
}
