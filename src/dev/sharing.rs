//! `pcbridge dev`'s demonstration of sharing the tenant's one registration
//! (docs/forwarding.md): `pcbridge forward` sends every event to a second local receiver,
//! which verifies each signature against the simulator's certificate as any receiver of
//! Partner Center's would; and `register watch` guards the registration, which the
//! simulator overwrites partway through, as CIPP does when it starts.

use super::report::human;
use super::simulator::Simulator;
use crate::config::{Config, ReceiverConfig};
use crate::partner_center::{
    client::ApiClient,
    event::event_id,
    registration::{Registration, RegistrationApi},
    signature::{SignatureHeaders, Verifier},
};
use crate::register::guard::{self, Check, Guard};
use crate::telemetry::Metrics;
use axum::{Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post};
use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The receiver's name in `[forward.receivers]`.
pub const RECEIVER: &str = "dev-receiver";
/// What the simulated other receiver registers.
pub const OTHER_URL: &str = "https://cipp.example.invalid/api/PublicWebhooks?CIPPID=dev";
/// Seconds between the guard's checks in the demonstration.
const CHECK_SECS: u64 = 2;

/// What the second receiver saw.
#[derive(Default)]
struct Seen {
    requests: u64,
    verified: u64,
    /// The first few verification failures.
    failures: Vec<String>,
    failed: u64,
    events: HashSet<String>,
}

struct Receiver {
    verifier: Verifier,
    seen: Mutex<Seen>,
}

/// The second receiver: verifies, then answers 200 (401 when the signature fails).
async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let verdict = match SignatureHeaders::from_headers(&headers) {
        Ok(h) => r.verifier.verify(&h, &body).await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let mut seen = r.seen.lock().unwrap_or_else(|p| p.into_inner());
    seen.requests += 1;
    match verdict {
        Ok(()) => {
            seen.verified += 1;
            seen.events.insert(event_id(&body));
            StatusCode::OK
        }
        Err(e) => {
            seen.failed += 1;
            if seen.failures.len() < 3 {
                seen.failures.push(e);
            }
            StatusCode::UNAUTHORIZED
        }
    }
}

/// When the registration was overwritten, and what the guard made of it.
#[derive(Default)]
struct Overwrite {
    at: Option<Duration>,
    noticed: Option<(Duration, Check)>,
}

/// The forwarder, its receiver and the guard, running.
pub struct Sharing {
    receiver: Arc<Receiver>,
    receiver_url: String,
    /// `None` on AMQP 1.0, where forwarding is refused.
    forward: Option<tokio::task::JoinHandle<()>>,
    forward_refused: Option<String>,
    guard: Arc<Guard>,
    guard_admin: SocketAddr,
    guard_task: tokio::task::JoinHandle<()>,
    overwrite: Arc<Mutex<Overwrite>>,
    restore: bool,
    stop: CancellationToken,
}

/// Registers `webhook` with the simulator, then starts the second receiver, the
/// forwarder (sending to it) and the guard; the simulator overwrites the registration
/// `overwrite_after` from now.
pub async fn start(
    config: &Config,
    sim: &Arc<Simulator>,
    webhook: &str,
    overwrite_after: Duration,
    restore: bool,
) -> Result<Sharing, String> {
    let stop = CancellationToken::new();
    let bind = || async { TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("cannot listen: {e}")) };
    // Partner Center's side: pcbridge's registration, every event.
    let api = RegistrationApi::new(ApiClient::new(config, Arc::new(Metrics::new())).map_err(|e| e.to_string())?);
    let events = api.events().await.map_err(|e| format!("simulator: {}", e.message))?;
    let ours = Registration { webhook_url: webhook.to_string(), events, ms_signature_header: false };
    api.save(&ours, true).await.map_err(|e| format!("cannot register with the simulator: {}", e.message))?;

    // The second receiver, trusting what the ingress trusts: the simulator's certificate.
    let verifier = Verifier::new(&config.signature).map_err(|e| e.to_string())?;
    let receiver = Arc::new(Receiver { verifier, seen: Mutex::default() });
    let listener = bind().await?;
    let receiver_url = format!("http://{}/hook", listener.local_addr().map_err(|e| e.to_string())?);
    let app = Router::new().route("/hook", post(receive)).with_state(receiver.clone());
    let until = stop.clone().cancelled_owned();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(until).await;
    });

    let mut c = config.clone();
    c.forward.allow_http = true;
    c.forward.retry_min_delay_ms = 100;
    c.forward.retry_max_delay_ms = 1_000;
    c.forward.receivers.clear();
    let r = ReceiverConfig { url: receiver_url.clone(), ..ReceiverConfig::default() };
    c.forward.receivers.insert(RECEIVER.into(), r);
    let (forward, forward_refused) =
        match crate::forward::start(&c, "pcbridge-dev-forward", bind().await?, Arc::new(Metrics::new()), stop.clone())
            .await
        {
            Ok(handle) => (Some(handle), None),
            Err(e) if c.broker.kind == crate::config::BrokerKind::Amqp => (None, Some(e.to_string())),
            Err(e) => return Err(format!("cannot start the forwarder: {e}")),
        };

    c.registration.webhook_url = webhook.to_string();
    c.registration.events.clear();
    c.registration.check_interval_secs = CHECK_SECS;
    c.registration.restore = restore;
    let guard_listener = bind().await?;
    let guard_admin = guard_listener.local_addr().map_err(|e| e.to_string())?;
    let (guard, guard_task) = guard::start(&c, guard_listener, Arc::new(Metrics::new()), stop.clone())
        .await
        .map_err(|e| format!("cannot start the registration guard: {e}"))?;

    let overwrite = Arc::new(Mutex::new(Overwrite::default()));
    tokio::spawn(overwrite_then_watch(sim.clone(), guard.clone(), overwrite.clone(), overwrite_after, stop.clone()));
    Ok(Sharing {
        receiver,
        receiver_url,
        forward,
        forward_refused,
        guard,
        guard_admin,
        guard_task,
        overwrite,
        restore,
        stop,
    })
}

/// After `after`, overwrites the registration as another receiver would, then waits for
/// the guard's first check that sees it.
async fn overwrite_then_watch(
    sim: Arc<Simulator>,
    guard: Arc<Guard>,
    state: Arc<Mutex<Overwrite>>,
    after: Duration,
    stop: CancellationToken,
) {
    let started = Instant::now();
    tokio::select! {
        () = stop.cancelled() => return,
        () = tokio::time::sleep(after) => {}
    }
    let before = guard.last().map(|c| c.at).unwrap_or_default();
    sim.overwrite_registration(OTHER_URL, &["subscription-updated"]);
    state.lock().unwrap_or_else(|p| p.into_inner()).at = Some(started.elapsed());
    while !stop.is_cancelled() {
        if let Some(check) = guard.last().filter(|c| c.at > before && c.result != guard::result::MATCH) {
            state.lock().unwrap_or_else(|p| p.into_inner()).noticed = Some((started.elapsed(), check));
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Sharing {
    /// The lines `pcbridge dev` prints at start-up.
    pub fn banner(&self, overwrite_after: Duration) -> String {
        let forward = match &self.forward_refused {
            Some(why) => format!("  forward    not on this broker: {why}\n"),
            None => {
                format!("  forward    every event, still signed, to {} (verifies each signature)\n", self.receiver_url)
            }
        };
        let restore = if self.restore { "restores it" } else { "reports it (--restore-registration to restore)" };
        format!(
            "{forward}  guard      checks the registration every {CHECK_SECS} s (http://{}/registration); the simulator overwrites it after {}, the guard {restore}\n",
            self.guard_admin,
            human(overwrite_after)
        )
    }

    /// Waits until the receiver has `published` distinct events and the guard has seen
    /// the overwritten registration, or `deadline`.
    pub async fn wait(&self, published: u64, deadline: tokio::time::Instant) {
        loop {
            let forwarded = self.forward.is_none() || self.forwarded() >= published;
            let noticed = self.overwrite.lock().unwrap_or_else(|p| p.into_inner()).noticed.is_some();
            if (forwarded && noticed) || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn forwarded(&self) -> u64 {
        self.receiver.seen.lock().unwrap_or_else(|p| p.into_inner()).events.len() as u64
    }

    /// The summary lines, and what went wrong (an event not forwarded, a signature that
    /// did not verify, an overwrite the guard did not see or put back).
    pub fn summary(&self, published: u64) -> (String, Vec<String>) {
        let mut out = String::new();
        let mut problems = Vec::new();
        if self.forward.is_some() {
            let seen = self.receiver.seen.lock().unwrap_or_else(|p| p.into_inner());
            let reached = seen.events.len() as u64;
            let of = if reached >= published {
                // A restore's test event is published (and forwarded) too.
                let extra = reached - published;
                let more =
                    if extra > 0 { format!(" (and {extra} more: the guard's test events)") } else { String::new() };
                format!("all {published} published events reached {RECEIVER}{more}")
            } else {
                format!("{reached} of {published} published events reached {RECEIVER}")
            };
            out.push_str(&format!(
                "  forwarding: {of}, in {} requests; {} signatures verified against the simulator's certificate, {} failed\n",
                seen.requests, seen.verified, seen.failed
            ));
            if (seen.events.len() as u64) < published {
                problems.push(format!("{} published events were not forwarded", published - seen.events.len() as u64));
            }
            if seen.failed > 0 {
                problems.push(format!("forwarded signatures did not verify: {}", seen.failures.join("; ")));
            }
        }
        let state = self.overwrite.lock().unwrap_or_else(|p| p.into_inner());
        match (&state.at, &state.noticed) {
            (None, _) => out.push_str("  registration: not overwritten (the stream ended first)\n"),
            (Some(at), None) => {
                out.push_str(&format!("  registration: overwritten at {}; the guard did not notice\n", human(*at)));
                problems.push("the guard did not notice the overwritten registration".into());
            }
            (Some(at), Some((when, check))) => {
                out.push_str(&format!(
                    "  registration: overwritten at {} (as CIPP does at start-up); the guard noticed {} later: {}\n",
                    human(*at),
                    human(when.saturating_sub(*at)),
                    check.changes.first().map_or("", String::as_str)
                ));
                match &check.restore {
                    Some(r) => out.push_str(&format!("  registration: {r}\n")),
                    None if self.restore => problems.push("the guard did not restore the registration".into()),
                    None => {
                        out.push_str("  registration: left as it is (run with --restore-registration to restore it)\n")
                    }
                }
            }
        }
        if let Some(last) = self.guard.last() {
            out.push_str(&format!("  registration: last check {}: {}\n", last.at, last.result));
        }
        (out, problems)
    }

    pub async fn stop(self) {
        self.stop.cancel();
        if let Some(f) = self.forward {
            let _ = f.await;
        }
        let _ = self.guard_task.await;
    }
}
