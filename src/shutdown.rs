//! Graceful shutdown: SIGTERM or Ctrl-C cancel one [`CancellationToken`]; each role
//! stops taking new work when it fires, drains what is in flight, and the process exits
//! when draining is done or the configured deadline passes, whichever comes first.

use std::{future::Future, time::Duration};
pub use tokio_util::sync::CancellationToken;

/// Resolves on the first SIGTERM or Ctrl-C.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// A token cancelled by the first shutdown signal.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let child = token.clone();
    tokio::spawn(async move {
        signal().await;
        child.cancel();
    });
    token
}

/// The drain every role goes through: runs `work` until it ends by itself or, once
/// `shutdown` fires, for at most `deadline` more. `None` means the deadline cut it off;
/// `work` is the caller's still, to give a last chance or drop.
pub async fn drain<F: Future + Unpin>(
    work: &mut F,
    shutdown: &CancellationToken,
    deadline: Duration,
) -> Option<F::Output> {
    tokio::select! {
        out = &mut *work => Some(out),
        () = shutdown.cancelled() => {
            tracing::info!(deadline_ms = deadline.as_millis() as u64, "draining in-flight work");
            match tokio::time::timeout(deadline, work).await {
                Ok(out) => Some(out),
                Err(_) => {
                    tracing::warn!(deadline_ms = deadline.as_millis() as u64, "drain deadline passed with work in flight");
                    None
                }
            }
        }
    }
}
