//! No secret in the logs or the metrics: the real worker binary, logging everything
//! (`trace`, JSON, every crate), enriches events that need every credential (client
//! secret for Partner Center and Graph tokens, the refresh token for fraud events) and
//! goes through a token-endpoint failure and a 401; then its whole output and /metrics
//! are searched for the client secret, the refresh token and every access token issued.

mod common;

use common::{
    app::{pcbridge_command, spawn_ingress, worker_config, worker_events_total},
    bus::Bus,
    pc::Pc,
    pc_api::{self, PcApi},
};
use pcbridge::config::BrokerKind;
use serde_json::json;
use std::{
    process::Stdio,
    time::{Duration, Instant},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_or_metrics() {
    let pc = Pc::new().await;
    let bus = Bus::new(BrokerKind::Kafka).await;
    let api = PcApi::start().await;
    let config = worker_config(bus.config(&pc), &api);
    let app = spawn_ingress(config.clone()).await;
    api.fail_token_endpoint(1);
    api.script("/engagements/v1/referrals/r1", vec![pc_api::Reply::Status(401)]);
    api.put("/engagements/v1/referrals/r1", json!({"id": "r1"}));
    api.put("/v1.0/tenantRelationships/delegatedAdminRelationships/rel-1", json!({"id": "rel-1"}));
    api.put_fraud("sub-1", vec![json!({"id": "f1", "eventStatus": "Active"})]);
    let bodies = [
        json!({"EventName": "referral-created", "ResourceUri": "https://api.partnercenter.microsoft.com/engagements/v1/referrals/r1"}),
        json!({"EventName": "granular-admin-relationship-approved", "ResourceUri": "https://partner.microsoft.com/granularAdminRelationships/rel-1"}),
        json!({"EventName": "azure-fraud-event-detected", "ResourceUri": "https://api.partnercenter.microsoft.com/v1/customers/c/subscriptions/sub-1"}),
    ];
    for b in &bodies {
        let body = serde_json::to_vec(b).expect("json");
        let headers = pc.headers(&body);
        assert_eq!(app.post(body, &headers).await.0, 200);
    }

    let admin_port = common::net::closed_port().await;
    let mut cmd = pcbridge_command();
    cmd.arg("worker")
        .env("PCBRIDGE_KAFKA__BOOTSTRAP_SERVERS", &config.kafka.bootstrap_servers)
        .env("PCBRIDGE_KAFKA__CREATE_TOPICS", "false")
        .env("PCBRIDGE_BROKER__PREFIX", &config.broker.prefix)
        .envs(api.env())
        .env("PCBRIDGE_WORKER__RETRY_MIN_DELAY_MS", "20")
        .env("PCBRIDGE_ADMIN__LISTEN", format!("127.0.0.1:{admin_port}"))
        .env("PCBRIDGE_LOG__FORMAT", "json")
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn worker");
    // Read the output while the worker runs: trace logging fills a pipe's 64 KiB long
    // before the test ends, and a worker blocked on a full pipe stops answering.
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let metrics_url = format!("http://127.0.0.1:{admin_port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut metrics = String::new();
    while Instant::now() < deadline {
        if let Ok(r) = http.get(&metrics_url).send().await {
            metrics = r.text().await.unwrap_or_default();
            if worker_events_total(&metrics) >= 3 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(worker_events_total(&metrics) >= 3, "the worker enriched the three events");
    let pid = child.id().to_string();
    let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
    let logs = tokio::task::spawn_blocking(move || {
        child.wait().expect("wait");
        format!("{}{}", stdout.join().expect("stdout"), stderr.join().expect("stderr"))
    })
    .await
    .expect("join");
    assert!(logs.lines().count() > 100, "trace logging was on: {} lines", logs.lines().count());
    let tokens = api.issued_tokens();
    assert!(tokens.len() >= 3, "a token per grant and scope, and one after the 401: {tokens:?}");
    let mut secrets = vec![pc_api::CLIENT_SECRET.to_string(), pc_api::REFRESH_TOKEN.to_string()];
    secrets.extend(tokens);
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret is in the logs: {secret}");
        assert!(!metrics.contains(secret.as_str()), "a secret is in the metrics: {secret}");
    }
}
