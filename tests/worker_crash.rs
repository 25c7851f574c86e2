//! The worker process killed with SIGKILL in the middle of a batch, three times at random moments, and
//! restarted: every event the ingress answered 2xx still ends enriched.

mod common;

use common::{
    app::{WorkerProcess, spawn_ingress, worker_config},
    bus::{Bus, on_every_broker, output_queues},
    net,
    pc::Pc,
    pc_api::PcApi,
};
use pcbridge::config::BrokerKind;
use serde_json::json;
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

async fn worker_killed_mid_batch_loses_nothing(kind: BrokerKind) {
    let pc = Pc::new().await;
    let bus = Bus::new(kind).await;
    let api = PcApi::start().await;
    let config = worker_config(bus.config(&pc), &api);
    let app = spawn_ingress(config.clone()).await;
    api.set_latency(Duration::from_millis(40));
    let n = 200;
    let mut ids = Vec::new();
    for i in 0..n {
        let path = format!("/engagements/v1/referrals/r{i}");
        api.put(&path, json!({ "id": i }));
        let body = serde_json::to_vec(&json!({
            "EventName": "referral-created",
            "ResourceUri": format!("https://api.partnercenter.microsoft.com{path}"),
        }))
        .unwrap();
        let (status, json) = app.post(body.clone(), &pc.headers(&body)).await;
        assert_eq!(status, 200);
        ids.push(json["eventId"].as_str().unwrap().to_string());
    }

    let port = net::closed_port().await;
    let mut done_before_kills = 0;
    // Three kills at random moments: after a random 10–25 % of the batch was finished by
    // the process being killed (the seed is printed, to replay a failure).
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    eprintln!("kill points seed: {seed}");
    for round in 1..=3 {
        let threshold = rng.usize(n / 10..=n / 4);
        let mut child = WorkerProcess::spawn(&config, &api, port);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let done = child.finished().await;
            if done >= threshold {
                done_before_kills += done;
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: only {done} events finished");
            assert!(child.is_running(), "worker exited on its own");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill();
        eprintln!("round {round}: SIGKILL after this process finished ≥ {threshold} events");
    }
    assert!(done_before_kills < n, "the kills happened mid-batch ({done_before_kills} of {n} finished)");
    let child = WorkerProcess::spawn(&config, &api, port);
    let queues = output_queues(&config);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen: HashMap<String, usize> = HashMap::new();
    loop {
        // RabbitMQ queues drain as they are read; Kafka topics are read whole each time.
        if matches!(bus, Bus::Kafka(_)) {
            seen.clear();
        }
        for m in bus.read_from(&queues, n, Duration::from_secs(3)).await {
            assert!(m.destination.ends_with(".enriched"), "unexpected dead letter: {:?}", m.headers);
            *seen.entry(m.headers["pc-event-id"].clone()).or_default() += 1;
        }
        if seen.len() >= n || Instant::now() > deadline {
            break;
        }
    }
    let total: usize = seen.values().sum();
    let mut child = child;
    let exit = child.terminate();
    let missing: Vec<&String> = ids.iter().filter(|id| !seen.contains_key(*id)).collect();
    assert!(missing.is_empty(), "{} events were lost: {missing:?}", missing.len());
    eprintln!(
        "{kind:?}: {n} events, {total} enriched messages, {} duplicates after three SIGKILLs",
        total - seen.len()
    );
    assert!(exit.success(), "the last worker drains and exits cleanly on SIGTERM: {exit:?}");
    let cfg = app.config.clone();
    app.stop().await.expect("ingress stops");
    bus.cleanup(&cfg, &output_queues(&cfg)).await;
}

on_every_broker!(worker_killed_mid_batch_loses_nothing);
