//! The worker's start-up: which raw destinations it consumes, the credentials it needs
//! before it may start, and [`start`], the one start-up path of the role.

use super::{WorkerState, run};
use crate::config::Config;
use crate::contract::destinations::all_stems;
use crate::partner_center::event::needs_api;
use crate::shutdown::CancellationToken;
use crate::telemetry::Metrics;
use std::{sync::Arc, time::Duration};
use tokio::net::TcpListener;

/// The event names a worker handles, as destination stems: `worker.events`, or every
/// catalogue event plus `unrecognized`.
pub fn stems(config: &Config) -> Vec<String> {
    let d = config.broker.destinations();
    let names: Vec<&str> = if config.worker.events.is_empty() {
        all_stems().collect()
    } else {
        config.worker.events.iter().map(|e| e.trim()).collect()
    };
    let mut stems: Vec<String> = names.into_iter().map(|n| d.stem(n).to_string()).collect();
    stems.sort();
    stems.dedup();
    stems
}

/// The raw destinations a worker consumes: those holding [`stems`], once each. In a
/// shared layout (`per-category`, `single`) a worker reads whole destinations, so it
/// enriches every event in them, named in `worker.events` or not.
pub fn sources(config: &Config) -> Vec<String> {
    config.broker.destinations().sources(&stems(config))
}

/// The credential keys a worker lacks, as the operator sets them; empty when it has them
/// or when none of its events calls an API (a DAP-only worker). Without them every
/// event would be dead-lettered as `permanent`, so the worker refuses to start instead.
pub fn missing_credentials(config: &Config) -> Vec<&'static str> {
    // In a shared layout the worker reads every event of its destinations.
    let d = config.broker.destinations();
    let sources = sources(config);
    let mut read = all_stems().map(str::to_string).chain(stems(config)).filter(|s| sources.contains(&d.raw(s)));
    if !read.any(|s| needs_api(&s)) {
        return Vec::new();
    }
    let pc = &config.partner_center;
    let mut missing = Vec::new();
    if pc.tenant_id.trim().is_empty() {
        missing.push("partner_center.tenant_id (PCBRIDGE_PARTNER_CENTER__TENANT_ID)");
    }
    if pc.client_id.trim().is_empty() {
        missing.push("partner_center.client_id (PCBRIDGE_PARTNER_CENTER__CLIENT_ID)");
    }
    if !matches!(config.client_secret(), Ok(Some(_))) {
        missing.push("PCBRIDGE_PARTNER_CENTER__CLIENT_SECRET (or partner_center.client_secret_file)");
    }
    missing
}

/// [`missing_credentials`] as a start-up error naming every missing key.
pub fn check_credentials(config: &Config) -> Result<(), MissingCredentials> {
    let keys = missing_credentials(config);
    if keys.is_empty() { Ok(()) } else { Err(MissingCredentials { keys }) }
}

/// The worker has events that need the Partner Center API and no credentials to call
/// it: every event would be dead-lettered, so it does not start.
#[derive(Debug, thiserror::Error)]
#[error(
    "the worker has no Partner Center credentials, so every event would be dead-lettered; set {}",
    .keys.join(", ")
)]
pub struct MissingCredentials {
    /// The keys to set, each with its environment variable.
    pub keys: Vec<&'static str>,
}

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// No Partner Center credentials for events that need them ([`check_credentials`]).
    #[error(transparent)]
    Credentials(#[from] MissingCredentials),
    /// The publisher or the consumer could not connect; its kind says whether waiting
    /// can help.
    #[error(transparent)]
    Broker(#[from] crate::broker::SetupError),
    /// The Partner Center API client could not be built.
    #[error(transparent)]
    Client(#[from] crate::partner_center::BuildError),
}

/// The one start-up path of the worker, for the CLI, `dev` and the tests alike: checks
/// the credentials, serves the admin endpoints (liveness from here on), connects the
/// publisher, creates the raw destinations it consumes (subscribing to a topic that does
/// not exist yet would leave it unread until the next metadata refresh), subscribes,
/// creates the output destinations, turns ready, then runs in a task of its own:
/// consumes until `shutdown`, drains within `shutdown.drain_deadline_ms` and commits
/// what finished.
pub async fn start(
    config: &Config,
    client_id: &str,
    admin_listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, WorkerError> {
    check_credentials(config)?;
    let start = async {
        let publisher = crate::broker::connect(config, client_id, metrics.clone()).await?;
        let sources = sources(config);
        if let Err(e) = publisher.ensure_destinations(&sources).await {
            tracing::warn!(error = %e, "could not create the source destinations");
        }
        let consumer = crate::broker::consume(config, sources, client_id, metrics.clone()).await?;
        let state = Arc::new(WorkerState::new(config, consumer, publisher, metrics.clone())?);
        let outputs = state.destinations.outputs(&stems(config));
        if let Err(e) = state.publisher.ensure_destinations(&outputs).await {
            tracing::warn!(error = %e, "could not create output destinations at start-up; will retry on first use");
        }
        Ok::<_, WorkerError>(state)
    };
    let ready = |state: &Arc<WorkerState>| {
        let (state, stop) = (state.clone(), shutdown.clone());
        Box::new(move || !stop.is_cancelled() && state.consumer.is_ready() && state.publisher.is_ready())
            as Box<dyn Fn() -> bool + Send + Sync>
    };
    let (admin, state) = crate::admin::Admin::serve_while(admin_listener, metrics.clone(), start, ready).await?;
    let config = config.clone();
    Ok(tokio::spawn(async move {
        tracing::info!(sources = stems(&config).len(), concurrency = config.worker.concurrency, "worker consuming");
        let work = run(state.clone(), shutdown.clone());
        tokio::pin!(work);
        if crate::shutdown::drain(&mut work, &shutdown, config.shutdown.drain_deadline()).await.is_none() {
            // Unfinished events stay unacknowledged and are delivered again.
            state.abandon.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut work).await;
        }
        state.consumer.close().await;
        state.publisher.close(Duration::from_secs(5).min(config.shutdown.drain_deadline())).await;
        admin.stop().await;
        tracing::info!("worker stopped");
    }))
}
