//! `pcbridge register`, the real binary against the simulator's registration API, with
//! a real ingress receiving the test events it asks for.

mod common;

use common::{app::spawn_ingress, bus::Bus};
use pcbridge::config::BrokerKind;
use pcbridge::dev::pki::{ORGANIZATION, Pki};
use pcbridge::dev::simulator::{self, Simulator};
use std::time::{Duration, Instant};

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn register(sim: &Simulator, args: &[&str], secret: &str) -> Out {
    let mut cmd = common::app::pcbridge_command();
    cmd.arg("register")
        .args(args)
        .env("PCBRIDGE_PARTNER_CENTER__BASE_URL", sim.base_url())
        .env("PCBRIDGE_PARTNER_CENTER__TOKEN_BASE_URL", sim.base_url())
        .env("PCBRIDGE_PARTNER_CENTER__TENANT_ID", simulator::TENANT_ID)
        .env("PCBRIDGE_PARTNER_CENTER__CLIENT_ID", simulator::CLIENT_ID)
        .env("PCBRIDGE_PARTNER_CENTER__CLIENT_SECRET", secret);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run")).await.expect("join");
    let o = Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
    o
}

fn ok(o: &Out, needle: &str) {
    assert!(
        o.ok && o.stdout.contains(needle),
        "expected success with {needle:?}\nstdout:\n{}\nstderr:\n{}",
        o.stdout,
        o.stderr
    );
}

fn fails(o: &Out, needle: &str) {
    assert!(
        !o.ok && o.stderr.contains(needle),
        "expected failure with {needle:?}\nstdout:\n{}\nstderr:\n{}",
        o.stdout,
        o.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_manages_the_registration_and_follows_test_events() {
    let sim = Simulator::start(Pki::generate().expect("pki"), simulator::Options::default()).await.expect("simulator");
    let ca = common::app::temp_file("sim-ca.pem", &sim.ca_pem().expect("pem"));
    let bus = Bus::new(BrokerKind::Kafka).await;
    let mut config = bus.config_trusting(&sim.certificate_prefix(), &ca);
    config.signature.issuer_organization = ORGANIZATION.into();
    let app = spawn_ingress(config.clone()).await;
    let secret = simulator::CLIENT_SECRET;

    ok(&register(&sim, &["show"], secret).await, "No webhook registration");
    let events = register(&sim, &["events"], secret).await;
    ok(&events, "subscription-updated");
    assert_eq!(events.stdout.lines().count(), 24);
    fails(&register(&sim, &["update", "--url", &app.url, "--all-events"], secret).await, "no registration to update");
    fails(&register(&sim, &["create", "--url", &app.url], secret).await, "--events");
    fails(
        &register(&sim, &["create", "--url", &app.url, "--events", "subscription-updated,bogus-event"], secret).await,
        "\"bogus-event\"",
    );
    let created = register(&sim, &["create", "--url", &app.url, "--all-events", "--signature-header"], secret).await;
    ok(&created, "Registered.");
    assert!(created.stdout.contains("signature header: x-ms-signature") && created.stdout.contains("events (24)"));
    fails(&register(&sim, &["create", "--url", &app.url, "--all-events"], secret).await, "register update");
    let updated =
        register(&sim, &["update", "--url", &app.url, "--events", "subscription-updated,test-created"], secret).await;
    ok(&updated, "Updated.");
    let shown = register(&sim, &["show"], secret).await;
    ok(&shown, &app.url);
    assert!(shown.stdout.contains("events (2)") && shown.stdout.contains("signature header: Authorization"));

    // A test event reaches the ingress, signed, and its attempt is reported.
    let test = register(&sim, &["test"], secret).await;
    ok(&test, "correlation id: ");
    let id = test.stdout.lines().find_map(|l| l.strip_prefix("correlation id: ")).expect("id").trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        let s = register(&sim, &["status", &id], secret).await;
        if s.stdout.contains(": completed") || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ok(&status, &format!("test event {id}: completed"));
    assert!(status.stdout.contains("attempt 1: ") && status.stdout.contains("test-created → 200"), "{}", status.stdout);
    let raw = bus.read(&config.broker.destinations().raw("test-created"), 1, Duration::from_secs(10)).await;
    assert_eq!(raw.len(), 1, "the test event was published by the ingress");
    assert!(String::from_utf8_lossy(&raw[0].body).contains(&id));

    // Partner Center's throttle: 2 test events a minute.
    ok(&register(&sim, &["test"], secret).await, "correlation id: ");
    fails(&register(&sim, &["test"], secret).await, "at most 2 test events a minute");

    fails(&register(&sim, &["status", "no-such-id"], secret).await, "knows no test event");
    let bad = register(&sim, &["show"], "wrong-secret").await;
    fails(&bad, "Could not get a token from Entra ID");
    assert!(bad.stderr.contains("PCBRIDGE_PARTNER_CENTER__CLIENT_SECRET") && !bad.stderr.contains("wrong-secret"));
}
