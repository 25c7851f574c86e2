//! The `pcbridge` binary itself: configuration errors read like a person wrote them,
//! and SIGTERM drains and exits cleanly.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn pcbridge() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pcbridge"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    // Only the variables a test sets may reach the configuration.
    for (k, _) in std::env::vars() {
        if k.starts_with("PCBRIDGE_") {
            c.env_remove(k);
        }
    }
    c
}

fn fails_with(cmd: &mut Command, needle: &str) {
    let out = cmd.output().expect("run pcbridge");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail");
    assert!(stderr.contains(needle), "stderr should mention {needle:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
}

#[test]
fn configuration_errors_name_the_key() {
    let bad = common::app::temp_file("bad.toml", "[ingress]\nlisten = \"not-an-address\"\n");
    fails_with(pcbridge().arg("--config").arg(&bad).arg("ingress"), "ingress.listen");
    let typo = common::app::temp_file("typo.toml", "[ingress]\nlisen = \"0.0.0.0:1\"\n");
    fails_with(pcbridge().arg("--config").arg(&typo).arg("ingress"), "lisen");
    fails_with(
        pcbridge().arg("--config").arg("/nonexistent/pcbridge.toml").arg("ingress"),
        "/nonexistent/pcbridge.toml",
    );
    fails_with(pcbridge().arg("ingress").env("PCBRIDGE_BROKER__KIND", "nats"), "broker.kind");
    fails_with(pcbridge().arg("ingress").env("PCBRIDGE_BROKER__PREFIX", "has space"), "broker.prefix");
    let secret = common::app::temp_file("secret.toml", "[rabbitmq]\npassword = \"hunter2\"\n");
    let out = pcbridge().arg("--config").arg(&secret).arg("ingress").output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("PCBRIDGE_RABBITMQ__PASSWORD") && !stderr.contains("hunter2"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let (port, admin_port) = (common::net::closed_port().await, common::net::closed_port().await);
    let prefix = common::bus::unique_prefix();
    let mut child = pcbridge()
        .args(["--config", "config.toml", "ingress"])
        .env("PCBRIDGE_BROKER__KIND", "rabbitmq")
        .env("PCBRIDGE_BROKER__PREFIX", &prefix)
        .env("PCBRIDGE_RABBITMQ__EXCHANGE", format!("{prefix}exchange"))
        .env("PCBRIDGE_INGRESS__LISTEN", format!("127.0.0.1:{port}"))
        .env("PCBRIDGE_ADMIN__LISTEN", format!("127.0.0.1:{admin_port}"))
        .env("PCBRIDGE_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pcbridge");
    common::net::wait_process_ready(&mut child, admin_port, Duration::from_secs(15), "pcbridge ingress").await;
    let http = reqwest::Client::new();
    let (status, _) = {
        let r = http
            .post(format!("http://127.0.0.1:{port}/webhooks/partner-center"))
            .body("{}")
            .send()
            .await
            .expect("post");
        (r.status().as_u16(), ())
    };
    assert_eq!(status, 401);

    let started = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill").success());
    let exit = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut stderr).expect("read");
    assert!(exit.success(), "exit status {exit:?}\n{stderr}");
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(v.get("level").is_some() && v.get("message").is_some(), "{line}");
    }
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    assert!(stderr.contains("ingress stopped"), "{stderr}");

    let conn = common::bus::rabbitmq::connect().await;
    let mut config = pcbridge::config::Config::default();
    config.broker.prefix = prefix.clone();
    config.rabbitmq.exchange = format!("{prefix}exchange");
    common::bus::rabbitmq::cleanup(&conn, &config, &[]).await;
}

fn check_output(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run pcbridge check");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("panicked"), "{text}");
    (out.status.success(), text)
}

/// Each forwarding receiver is reached with a `HEAD` (nothing delivered) and the
/// headers of its `headers_file`; one that does not answer fails the check, by name,
/// and no line repeats a receiver's URL (its query may hold a key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reaches_each_forward_receiver() {
    use axum::{Router, http::HeaderMap, http::Method, routing::any};
    // Each request's method and `x-api-key`.
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(Method, Option<String>)>>>;
    let seen: Seen = Default::default();
    let record = seen.clone();
    let app = Router::new().fallback(any(move |method: Method, headers: HeaderMap| {
        let record = record.clone();
        async move {
            let key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::to_string);
            record.lock().expect("lock").push((method, key));
            axum::http::StatusCode::METHOD_NOT_ALLOWED
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let up = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    // A port nothing listens on.
    let down = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address");
    let headers_file = std::env::temp_dir().join(format!("pcbridge-check-headers-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&headers_file, "X-Api-Key: k-123\n").expect("write");

    let with_receivers = |c: &mut Command, down_url: &str| {
        c.arg("check")
            .env("PCBRIDGE_BROKER__KIND", "rabbitmq")
            .env("PCBRIDGE_FORWARD__ALLOW_HTTP", "true")
            .env("PCBRIDGE_FORWARD__RECEIVERS__CIPP__URL", format!("http://{up}/api/webhook?code=s3cret"))
            .env("PCBRIDGE_FORWARD__RECEIVERS__CIPP__HEADERS_FILE", &headers_file)
            .env("PCBRIDGE_FORWARD__RECEIVERS__AUDIT__URL", down_url);
    };
    let mut cmd = pcbridge();
    with_receivers(&mut cmd, &format!("http://{down}/hook?code=s3cret"));
    let (ok, text) = check_output(&mut cmd);
    assert!(!ok, "a receiver that does not answer fails the check:\n{text}");
    assert!(text.contains("ok   receiver     cipp at 127.0.0.1: answered HEAD with 405"), "{text}");
    assert!(text.contains("FAIL receiver     audit at 127.0.0.1: "), "{text}");
    assert!(!text.contains("s3cret"), "a receiver's URL is not printed: {text}");
    assert_eq!(*seen.lock().expect("lock"), vec![(Method::HEAD, Some("k-123".to_string()))]);

    // Both answering: the check passes.
    let mut cmd = pcbridge();
    with_receivers(&mut cmd, &format!("http://{up}/audit"));
    let (ok, text) = check_output(&mut cmd);
    assert!(ok && text.contains("ok   receiver     audit at 127.0.0.1"), "{text}");
    // Without any receiver, the check says so.
    let (ok, text) = check_output(pcbridge().arg("check").env("PCBRIDGE_BROKER__KIND", "rabbitmq"));
    assert!(ok && text.contains("skip receiver     no forward.receivers configured"), "{text}");
    let _ = std::fs::remove_file(&headers_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reaches_every_dependency() {
    let api = common::pc_api::PcApi::start().await;
    let pc = common::pc::Pc::new().await;
    let with_credentials = |c: &mut Command| {
        c.env("PCBRIDGE_PARTNER_CENTER__TOKEN_BASE_URL", &api.base)
            .env("PCBRIDGE_PARTNER_CENTER__TENANT_ID", "tenant-1")
            .env("PCBRIDGE_PARTNER_CENTER__CLIENT_ID", common::pc_api::CLIENT_ID)
            .env("PCBRIDGE_PARTNER_CENTER__CLIENT_SECRET", common::pc_api::CLIENT_SECRET)
            .env("PCBRIDGE_PARTNER_CENTER__REFRESH_TOKEN", common::pc_api::REFRESH_TOKEN)
            .env("PCBRIDGE_SIGNATURE__TRUSTED_CERTIFICATE_URL_PREFIXES", format!("[\"{}\"]", pc.certs.prefix))
            .env("PCBRIDGE_SIGNATURE__EXTRA_TRUST_ANCHORS_FILE", &pc.anchors_file);
    };
    // Everything reachable: RabbitMQ, the token endpoint (three grants), the certificate.
    let mut cmd = pcbridge();
    cmd.args(["check", "--certificate-url", &pc.cert_url]).env("PCBRIDGE_BROKER__KIND", "rabbitmq");
    with_credentials(&mut cmd);
    let (ok, text) = check_output(&mut cmd);
    assert!(ok, "{text}");
    for line in ["ok   config", "ok   broker       rabbitmq at amqp://127.0.0.1:5672", "ok   token", "ok   certificate"]
    {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(text.contains("app+user (fraud events): ok"), "{text}");
    assert!(!text.contains(common::pc_api::CLIENT_SECRET) && !text.contains(common::pc_api::REFRESH_TOKEN));
    assert_eq!(api.token_requests().len(), 3);

    // Kafka (the mock cluster answers metadata like a real one).
    let mock = rdkafka::mocking::MockCluster::new(1).expect("mock");
    let (ok, text) = check_output(
        pcbridge()
            .arg("check")
            .env("PCBRIDGE_BROKER__KIND", "kafka")
            .env("PCBRIDGE_KAFKA__BOOTSTRAP_SERVERS", mock.bootstrap_servers()),
    );
    assert!(ok && text.contains("ok   broker       kafka at") && text.contains("skip token"), "{text}");

    // Event Hubs creates event hubs through Azure only: with kafka.create_topics = false
    // the destinations of the layout that are missing fail the check, by name.
    let event_hubs_like = |c: &mut Command| {
        c.arg("check")
            .env("PCBRIDGE_BROKER__KIND", "kafka")
            .env("PCBRIDGE_BROKER__PREFIX", "checktest.")
            .env("PCBRIDGE_BROKER__LAYOUT", "single")
            .env("PCBRIDGE_KAFKA__CREATE_TOPICS", "false")
            .env("PCBRIDGE_KAFKA__BOOTSTRAP_SERVERS", mock.bootstrap_servers());
    };
    let mut cmd = pcbridge();
    event_hubs_like(&mut cmd);
    let (ok, text) = check_output(&mut cmd);
    assert!(!ok && text.contains("FAIL destinations 3 of 3 in the single layout missing"), "{text}");
    assert!(text.contains("checktest.events, checktest.events.enriched, checktest.dead-letter"), "{text}");
    for topic in ["checktest.events", "checktest.events.enriched", "checktest.dead-letter"] {
        mock.create_topic(topic, 1, 1).expect("create");
    }
    let mut cmd = pcbridge();
    event_hubs_like(&mut cmd);
    let (ok, text) = check_output(&mut cmd);
    assert!(ok && text.contains("ok   destinations all 3 of the single layout exist"), "{text}");

    // AMQP 1.0: the operator creates the entities (Service Bus, through Azure); the
    // missing ones fail the check, by name. Against RabbitMQ's AMQP 1.0 plugin,
    // `/amq/queue/{name}` names an existing queue only.
    let amqp = |c: &mut Command| {
        c.arg("check")
            .env("PCBRIDGE_BROKER__KIND", "amqp")
            .env("PCBRIDGE_BROKER__PREFIX", "checktest-amqp.")
            .env("PCBRIDGE_BROKER__LAYOUT", "single")
            .env("PCBRIDGE_AMQP__URL", "amqp://127.0.0.1:5672")
            .env("PCBRIDGE_AMQP__ADDRESS", "/amq/queue/{destination}");
    };
    let mut cmd = pcbridge();
    amqp(&mut cmd);
    let (ok, text) = check_output(&mut cmd);
    assert!(!ok && text.contains("ok   broker       amqp at 127.0.0.1:5672: connected"), "{text}");
    assert!(text.contains("FAIL destinations 3 of 3 in the single layout missing"), "{text}");
    let rabbit = common::bus::rabbitmq::connect().await;
    let channel = rabbit.create_channel().await.expect("channel");
    let queues = ["checktest-amqp.events", "checktest-amqp.events.enriched", "checktest-amqp.dead-letter"];
    let durable = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
    for q in &queues[..2] {
        channel.queue_declare((*q).into(), durable, Default::default()).await.expect("declare");
    }
    let mut cmd = pcbridge();
    amqp(&mut cmd);
    let (ok, text) = check_output(&mut cmd);
    assert!(
        !ok && text.contains("1 of 3 in the single layout missing") && text.contains("checktest-amqp.dead-letter"),
        "{text}"
    );
    for q in queues {
        let _ = channel.queue_delete(q.into(), Default::default()).await;
    }

    // Failures name what failed, and the exit status says so.
    let port = common::net::closed_port().await;
    let mut cmd = pcbridge();
    cmd.args(["check", "--certificate-url", &format!("{}unknown.cer", pc.certs.prefix)])
        .env("PCBRIDGE_BROKER__KIND", "rabbitmq")
        .env("PCBRIDGE_RABBITMQ__URL", format!("amqp://127.0.0.1:{port}/%2f"));
    with_credentials(&mut cmd);
    cmd.env("PCBRIDGE_PARTNER_CENTER__CLIENT_SECRET", "wrong");
    let (ok, text) = check_output(&mut cmd);
    assert!(!ok, "{text}");
    assert!(text.contains(&format!("FAIL broker       rabbitmq at amqp://127.0.0.1:{port}")), "{text}");
    assert!(text.contains("FAIL token") && text.contains("401"), "{text}");
    assert!(text.contains("FAIL certificate") && text.contains("404"), "{text}");
    assert!(!text.contains("wrong"), "the secret is not echoed: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_without_credentials_refuses_to_start() {
    // No tenant, client id or secret: the worker would dead-letter everything as
    // `permanent`, so it exits at once naming every missing key.
    let mock = rdkafka::mocking::MockCluster::new(1).expect("mock");
    let admin_port = common::net::closed_port().await;
    let mut cmd = pcbridge();
    cmd.args(["worker"])
        .env("PCBRIDGE_KAFKA__BOOTSTRAP_SERVERS", mock.bootstrap_servers())
        .env("PCBRIDGE_ADMIN__LISTEN", format!("127.0.0.1:{admin_port}"))
        .env("PCBRIDGE_PARTNER_CENTER__CLIENT_ID", "client-1");
    let started = Instant::now();
    let out = cmd.output().expect("run pcbridge worker");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "refused only after {:?}", started.elapsed());
    for key in ["partner_center.tenant_id", "PCBRIDGE_PARTNER_CENTER__CLIENT_SECRET"] {
        assert!(stderr.contains(key), "should name {key}: {stderr}");
    }
    assert!(!stderr.contains("partner_center.client_id"), "client_id is set: {stderr}");

    // A worker whose events call no API (DAP only) needs no credentials: it turns ready.
    let mut child = pcbridge()
        .args(["worker"])
        .env("PCBRIDGE_KAFKA__BOOTSTRAP_SERVERS", mock.bootstrap_servers())
        .env("PCBRIDGE_KAFKA__REPLICATION_FACTOR", "1")
        .env("PCBRIDGE_BROKER__PREFIX", common::bus::unique_prefix())
        .env("PCBRIDGE_ADMIN__LISTEN", format!("127.0.0.1:{admin_port}"))
        .env("PCBRIDGE_WORKER__EVENTS", "[\"dap-admin-relationship-approved\",\"dap-admin-relationship-terminated\"]")
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pcbridge worker");
    common::net::wait_process_ready(&mut child, admin_port, Duration::from_secs(15), "the DAP-only worker").await;
    let _ = child.kill();
    let _ = child.wait();
}
