//! The registration guard (`pcbridge register watch`) against the simulator's
//! registration API, overwritten the way CIPP overwrites it: the change is seen within
//! one interval, reported (metric, `/registration`, `register status`), put back when
//! `registration.restore` is on, and never put back twice within an interval.

mod common;

use pcbridge::config::{Config, Secret};
use pcbridge::dev::pki::Pki;
use pcbridge::dev::simulator::{self, Simulator};
use pcbridge::partner_center::{
    client::ApiClient,
    registration::{Registration, RegistrationApi},
};
use pcbridge::register::guard::{self, Check};
use pcbridge::shutdown::CancellationToken;
use pcbridge::telemetry::Metrics;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

const OURS: &str = "https://pcbridge.example.com/webhooks/partner-center";
const CIPP: &str = "https://cipp.example.com/api/PublicWebhooks?CIPPID=1";
const INTERVAL_SECS: u64 = 2;

fn config(sim: &Simulator, restore: bool) -> Config {
    let mut c = Config::default();
    c.partner_center.base_url = sim.base_url().to_string();
    c.partner_center.token_base_url = sim.base_url().to_string();
    c.partner_center.tenant_id = simulator::TENANT_ID.into();
    c.partner_center.client_id = simulator::CLIENT_ID.into();
    c.partner_center.client_secret = Secret::new(simulator::CLIENT_SECRET);
    c.partner_center.request_timeout_ms = 3_000;
    c.registration.webhook_url = OURS.into();
    c.registration.events = vec!["subscription-updated".into(), "referral-created".into()];
    c.registration.check_interval_secs = INTERVAL_SECS;
    c.registration.restore = restore;
    c
}

fn ours(c: &Config) -> Registration {
    Registration { webhook_url: OURS.into(), events: c.registration.events.clone(), ms_signature_header: false }
}

/// What CIPP saves when it starts: its own URL, its own events.
fn cipp() -> Registration {
    Registration { webhook_url: CIPP.into(), events: vec!["subscription-updated".into()], ms_signature_header: false }
}

struct Watch {
    guard: Arc<guard::Guard>,
    admin: String,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

async fn watch(c: &Config) -> Watch {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = format!("http://{}", listener.local_addr().expect("addr"));
    let metrics = Arc::new(Metrics::new());
    let stop = CancellationToken::new();
    let (guard, handle) = guard::start(c, listener, metrics.clone(), stop.clone()).await.expect("guard starts");
    Watch { guard, admin, metrics, stop, handle }
}

impl Watch {
    /// Waits for a check made after `since` that `pred` accepts.
    async fn check_after(&self, since: &str, within: Duration, pred: impl Fn(&Check) -> bool) -> Check {
        let started = Instant::now();
        loop {
            if let Some(c) = self.guard.last()
                && c.at.as_str() > since
                && pred(&c)
            {
                return c;
            }
            assert!(started.elapsed() < within, "no such check within {within:?}; last: {:?}", self.guard.last());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.handle.await.expect("guard task");
    }
}

fn api(c: &Config) -> RegistrationApi {
    RegistrationApi::new(ApiClient::new(c, Arc::new(Metrics::new())).expect("client"))
}

/// Now, as [`Check::at`] writes it.
fn now() -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::OffsetDateTime::now_utc().format(format).expect("time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overwritten_registration_is_reported_within_one_interval() {
    let sim = Simulator::start(Pki::generate().expect("pki"), simulator::Options::default()).await.expect("simulator");
    let c = config(&sim, false);
    let api = api(&c);
    api.save(&ours(&c), true).await.expect("registered");
    let w = watch(&c).await;
    let first = w.check_after("", Duration::from_secs(10), |_| true).await;
    assert_eq!(first.result, "match", "{first:?}");
    assert!(w.metrics.render().contains("pcbridge_registration_mismatch 0"));

    let overwritten_at = (Instant::now(), now());
    api.save(&cipp(), false).await.expect("CIPP overwrites");
    let seen = w.check_after(&overwritten_at.1, Duration::from_secs(INTERVAL_SECS + 5), |c| c.result != "match").await;
    let delay = overwritten_at.0.elapsed();
    eprintln!("overwrite seen after {delay:?}: {seen:?}");
    assert!(
        delay <= Duration::from_secs(INTERVAL_SECS) + Duration::from_millis(1500),
        "within one interval: {delay:?}"
    );
    assert_eq!(seen.result, "mismatch");
    assert!(seen.changes.iter().any(|l| l.contains(CIPP) && l.contains(OURS)), "{:?}", seen.changes);
    assert!(seen.changes.iter().any(|l| l == "events missing: referral-created"), "{:?}", seen.changes);
    assert_eq!(seen.restore, None, "restore is off");
    let metrics = w.metrics.render();
    assert!(metrics.contains("pcbridge_registration_mismatch 1"), "{metrics}");
    assert!(metrics.contains("pcbridge_registration_checks_total{result=\"mismatch\"}"), "{metrics}");

    // `register status` shows the last check.
    let mut cmd = common::app::pcbridge_command();
    cmd.args(["register", "status", "--guard", &w.admin]);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run")).await.expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("mismatch") && stdout.contains(CIPP), "{stdout}");

    // Not restored: the other receiver's registration stays until a person decides.
    w.check_after(&now(), Duration::from_secs(INTERVAL_SECS + 5), |_| true).await;
    assert_eq!(api.show().await.expect("show").expect("registered").webhook_url, CIPP);
    w.stop().await;
}

/// A CIPP that re-registers as soon as it sees pcbridge's registration: the guard
/// restores at each interval, never twice within one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_puts_it_back_at_most_once_per_interval() {
    let sim = Simulator::start(Pki::generate().expect("pki"), simulator::Options::default()).await.expect("simulator");
    let c = config(&sim, true);
    let api = api(&c);
    api.save(&cipp(), true).await.expect("CIPP registered first");
    let w = watch(&c).await;
    let first = w.check_after("", Duration::from_secs(10), |c| c.restore.is_some()).await;
    assert_eq!(first.result, "mismatch");
    assert!(first.restore.as_deref().is_some_and(|r| r.starts_with("restored")), "{first:?}");
    let back = api.show().await.expect("show").expect("registration");
    assert_eq!((back.webhook_url.as_str(), back.events.len()), (OURS, 2), "restored");

    // CIPP fights back for 3 intervals, re-registering whenever it sees ours.
    let stop_cipp = CancellationToken::new();
    let fighter = {
        let (api, stop) = (self::api(&c), stop_cipp.clone());
        tokio::spawn(async move {
            let mut overwrites = 0;
            while !stop.is_cancelled() {
                if api.show().await.ok().flatten().is_some_and(|r| r.webhook_url == OURS) {
                    api.save(&cipp(), false).await.expect("overwrite");
                    overwrites += 1;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            overwrites
        })
    };
    let started = Instant::now();
    let mut restores: Vec<Check> = Vec::new();
    let mut last_at = first.at.clone();
    while started.elapsed() < Duration::from_secs(3 * INTERVAL_SECS + 1) {
        if let Some(check) = w.guard.last()
            && check.at > last_at
        {
            last_at = check.at.clone();
            if check.restore.is_some() {
                restores.push(check);
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop_cipp.cancel();
    let overwrites = fighter.await.expect("fighter");
    let restored = w
        .metrics
        .render()
        .lines()
        .find(|l| l.starts_with("pcbridge_registration_restores_total{result=\"restored\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0);
    eprintln!("CIPP overwrote {overwrites} times; the guard restored {restored} times: {restores:?}");
    assert!(overwrites >= 2, "CIPP kept overwriting: {overwrites}");
    assert!(restores.len() >= 2, "restored again at later intervals: {restores:?}");
    let times: Vec<time::OffsetDateTime> = std::iter::once(&first)
        .chain(&restores)
        .map(|c| time::OffsetDateTime::parse(&c.at, &time::format_description::well_known::Rfc3339).expect("time"))
        .collect();
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= time::Duration::seconds(INTERVAL_SECS as i64), "two restores {gap} apart");
    }
    assert_eq!(restored as usize, restores.len() + 1, "every restore is one check's");
    w.stop().await;
}
