//! `pcbridge dev` and `pcbridge simulate`, run as the real binary: the whole pipeline on
//! the embedded Kafka and on RabbitMQ, and the simulator against a separately running
//! ingress that trusts it (or does not).

mod common;

use common::{
    app::spawn_ingress,
    bus::{Bus, on_both_brokers, output_queues},
};
use pcbridge::config::BrokerKind;
use pcbridge::dev::pki::{ORGANIZATION, Pki};
use pcbridge::partner_center::event::CATALOGUE;
use std::process::Command;

fn pcbridge() -> Command {
    common::app::pcbridge_command()
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn run(mut cmd: Command) -> Run {
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run pcbridge")).await.expect("join");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Removes what a `dev --rabbitmq-prefix {prefix}` run left in the shared RabbitMQ: its
/// queues and the exchange dev names after the prefix (never the default exchange other
/// tests use). Returns that run's configuration.
async fn clean_dev_run(bus: &Bus, prefix: &str) -> pcbridge::config::Config {
    let mut config = pcbridge::config::Config::default();
    config.broker.prefix = prefix.to_string();
    // The forwarder's copy for dev's second receiver, and its member slots.
    let receiver = pcbridge::config::ReceiverConfig::default();
    config.forward.receivers.insert(pcbridge::dev::sharing::RECEIVER.into(), receiver);
    config.rabbitmq.exchange = prefix.trim_end_matches('.').to_string();
    bus.cleanup(&config, &output_queues(&config)).await;
    config
}

/// Checks a dev run's report: every event published and accounted for downstream.
fn assert_whole_run(r: &Run, count: usize) {
    assert!(r.ok, "dev should succeed\nstdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().filter(|l| l.contains(" published (200) in ")).collect();
    assert_eq!(lines.len(), count, "one line per event:\n{}", r.stdout);
    for name in CATALOGUE {
        assert!(lines.iter().any(|l| l.split_whitespace().nth(1) == Some(name)), "{name} was sent:\n{}", r.stdout);
    }
    for l in &lines {
        assert!(
            l.contains("→ enriched in") || l.contains("→ not-applicable in") || l.contains("→ resource-gone in"),
            "every event came out enriched: {l}"
        );
    }
    assert!(lines.iter().filter(|l| l.contains("dap-admin")).all(|l| l.contains("not-applicable")));
    assert!(r.stdout.contains(&format!("sent {count} · published {count} ")), "{}", r.stdout);
    assert!(r.stdout.contains("still waiting: 0 · duplicates: 0"), "{}", r.stdout);
    assert!(r.stdout.contains("event types sent: 24"), "{}", r.stdout);
}

/// The sharing of the one registration: every event forwarded to the second receiver,
/// each signature verified there, and the overwritten registration noticed.
fn assert_shared(r: &Run, count: usize) {
    let forwarded = format!("forwarding: all {count} published events reached dev-receiver");
    assert!(r.stdout.contains(&forwarded), "{forwarded}:\n{}", r.stdout);
    assert!(r.stdout.contains("signatures verified against the simulator's certificate, 0 failed"), "{}", r.stdout);
    assert!(
        r.stdout.contains("the guard noticed") && r.stdout.contains("webhook URL is https://cipp.example.invalid"),
        "{}",
        r.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_the_whole_pipeline_on_the_embedded_kafka() {
    let mut cmd = pcbridge();
    cmd.args(["dev", "--count", "60", "--rate", "40", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
    let r = run(cmd).await;
    assert_whole_run(&r, 60);
    assert_shared(&r, 60);
    assert!(r.stdout.contains("left as it is"), "restore is off by default: {}", r.stdout);
    assert!(r.stdout.contains("embedded Kafka (librdkafka mock cluster)"), "{}", r.stdout);
    // The simulator throttled some requests by default, and the worker got through them.
    assert!(r.stdout.contains("throttled)"), "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_the_whole_pipeline_on_rabbitmq() {
    let bus = Bus::new(BrokerKind::Rabbitmq).await;
    let prefix = format!("{}dev.", common::bus::unique_prefix());
    let mut cmd = pcbridge();
    cmd.args(["dev", "--broker", "rabbitmq", "--count", "48", "--rate", "40", "--quiet"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--rabbitmq-prefix", &prefix])
        .args(["--throttle-percent", "0", "--restore-registration"]);
    let r = run(cmd).await;
    // Leave nothing behind in the shared RabbitMQ.
    let config = clean_dev_run(&bus, &prefix).await;

    assert!(r.ok, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains(" published (200) in "), "--quiet prints no line per event");
    assert!(r.stdout.contains("sent 48 · published 48 "), "{}", r.stdout);
    assert!(r.stdout.contains("still waiting: 0 · duplicates: 0"), "{}", r.stdout);
    assert_shared(&r, 48);
    assert!(r.stdout.contains("registration: restored"), "--restore-registration: {}", r.stdout);
    assert!(
        r.stdout.contains(&format!("RabbitMQ at amqp://127.0.0.1:5672/%2f (exchange {}", config.rabbitmq.exchange))
    );
}

/// `pcbridge dev --give-up-percent`: Partner Center gives up on half the
/// subscription-updated deliveries; `reconcile` (run by dev, against the simulator's
/// audit log and GDAP list and the local PostgreSQL) publishes each lost change once, the
/// worker enriches it, and a second run publishes nothing.
async fn dev_recovers_the_deliveries_partner_center_gave_up(kind: BrokerKind) {
    let bus = Bus::new(kind).await;
    let prefix = format!("{}dev.", common::bus::unique_prefix());
    let mut cmd = pcbridge();
    cmd.args(["dev", "--count", "100", "--rate", "100", "--quiet", "--give-up-percent", "50"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--rabbitmq-prefix", &prefix])
        .args(["--broker", if kind == BrokerKind::Kafka { "kafka" } else { "rabbitmq" }]);
    let r = run(cmd).await;
    clean_dev_run(&bus, &prefix).await;

    assert!(r.ok, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let lost: u64 = r
        .stdout
        .split("Partner Center gave up on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no deliveries given up:\n{}", r.stdout));
    assert!(lost > 0);
    let sent = 100 - lost;
    assert!(r.stdout.contains(&format!("sent {sent} · published {sent} ")), "{}", r.stdout);
    assert!(r.stdout.contains(&format!("published {lost} · already delivered")), "the first run: {}", r.stdout);
    assert!(r.stdout.contains("again: reconciled") && r.stdout.contains("· published 0 ·"), "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!(
            "recovered {lost} of {lost} lost changes, enriched · published twice: 0 · delivered changes published again: 0"
        )),
        "{}",
        r.stdout
    );
}
on_both_brokers!(dev_recovers_the_deliveries_partner_center_gave_up);

/// `pcbridge dev --broker amqp`: the pipeline over AMQP 1.0, against the local RabbitMQ's
/// AMQP 1.0 plugin, one line per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_the_whole_pipeline_over_amqp_1_0() {
    let bus = Bus::new(BrokerKind::Amqp).await;
    let prefix = format!("{}dev.", common::bus::unique_prefix());
    let mut cmd = pcbridge();
    cmd.args(["dev", "--broker", "amqp", "--count", "48", "--rate", "40"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--rabbitmq-prefix", &prefix])
        .args(["--throttle-percent", "0", "--gone-percent", "0"]);
    let r = run(cmd).await;
    clean_dev_run(&bus, &prefix).await;

    assert_whole_run(&r, 48);
    assert!(r.stdout.contains("forward    not on this broker"), "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!(
            "AMQP 1.0 at amqp://127.0.0.1:5672 (addresses /queue/{{destination}}, prefix {prefix})"
        )),
        "{}",
        r.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_sends_signed_events_to_an_ingress_that_trusts_it() {
    let pki_dir = std::env::temp_dir().join(format!("pcbridge-sim-{}", uuid::Uuid::new_v4().simple()));
    Pki::load_or_generate(&pki_dir).expect("pki");
    let port = common::net::closed_port().await;
    let prefix = format!("http://127.0.0.1:{port}/cert/");
    let bus = Bus::new(BrokerKind::Kafka).await;
    let mut config = bus.config_trusting(&prefix, &pki_dir.join("ca.pem"));
    config.signature.issuer_organization = ORGANIZATION.into();
    let app = spawn_ingress(config.clone()).await;

    let simulate = |extra: &[&str]| {
        let mut cmd = pcbridge();
        cmd.args(["simulate", "--target", &app.url, "--rate", "50", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--pki-dir")
            .arg(&pki_dir)
            .args(extra);
        cmd
    };
    let r = run(simulate(&["--count", "30"])).await;
    assert!(r.ok, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert_eq!(r.stdout.matches(" published (200) in ").count(), 30, "{}", r.stdout);
    assert!(r.stdout.contains("PCBRIDGE_SIGNATURE__EXTRA_TRUST_ANCHORS_FILE="), "{}", r.stdout);
    assert_eq!(bus.count_all(&config, &[]).await, 30, "every event is on the broker once");

    // The signature in x-ms-signature is accepted too; the same CA is reused.
    let r = run(simulate(&["--count", "3", "--ms-signature-header"])).await;
    assert!(r.ok, "{}\n{}", r.stdout, r.stderr);

    // An ingress that trusts only Microsoft's issuer refuses the simulator, and simulate says so.
    let mut strict = config.clone();
    strict.signature.issuer_organization = "Microsoft Corporation".into();
    strict.broker.prefix = common::bus::unique_prefix();
    let strict_app = spawn_ingress(strict).await;
    let mut cmd = pcbridge();
    cmd.args(["simulate", "--target", &strict_app.url, "--count", "2", "--rate", "50"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--pki-dir")
        .arg(&pki_dir);
    let r = run(cmd).await;
    assert!(!r.ok, "refused events make simulate fail");
    assert_eq!(r.stdout.matches("NOT published: 401").count(), 2, "{}", r.stdout);
    assert!(r.stderr.contains("refused or did not answer 2 events"), "{}", r.stderr);
    let _ = std::fs::remove_dir_all(&pki_dir);
}
