//! Worker replicas scaled out keep each resource's order: on Kafka one replica per
//! partition, on RabbitMQ one replica per shard queue at a time. Three `pcbridge worker`
//! processes share the work while numbered events of a few resources arrive, the API
//! answering each call after an uneven delay (so that, were two events of one resource in
//! two replicas at once, the later one would often overtake). On RabbitMQ a replica is
//! SIGKILLed mid-run, and another is added mid-run; nothing is lost and order holds.

mod common;

use common::{
    app::{TestApp, WorkerProcess, spawn_ingress, worker_config},
    bus::{Bus, on_both_brokers, output_queues},
    net,
    pc::Pc,
    pc_api::{PcApi, Reply},
    wait,
};
use pcbridge::config::{BrokerKind, Config};
use serde_json::{Value, json};
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

const RESOURCES: usize = 12;
const PER_RESOURCE: usize = 30;

/// A run: the ingress, the stand-in API with every resource's uneven answer times.
struct Run {
    pc: Pc,
    bus: Bus,
    api: PcApi,
    config: Config,
    app: TestApp,
}

impl Run {
    async fn new(kind: BrokerKind) -> Self {
        let pc = Pc::new().await;
        let bus = Bus::new(kind).await;
        let api = PcApi::start().await;
        let mut config = worker_config(bus.config(&pc), &api);
        // Six shards for three replicas: two each. A short interval keeps hand-overs quick.
        config.rabbitmq.shards = 6;
        config.rabbitmq.rebalance_interval_ms = 200;
        let app = spawn_ingress(config.clone()).await;
        api.set_latency(Duration::from_millis(20));
        for r in 0..RESOURCES {
            let path = format!("/v1/customers/c/subscriptions/s{r}");
            api.put(&path, json!({ "id": r }));
            let delays = (0..PER_RESOURCE)
                .map(|i| Reply::Slow(Duration::from_millis(((i * 37 + r * 11) % 60) as u64)))
                .collect();
            api.script(&path, delays);
        }
        Self { pc, bus, api, config, app }
    }

    async fn replica(&self) -> WorkerProcess {
        WorkerProcess::spawn(&self.config, &self.api, net::closed_port().await)
    }

    /// Posts event `seq` of every resource; the ids it was given.
    async fn post_round(&self, seq: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for r in 0..RESOURCES {
            let body = serde_json::to_vec(&json!({
                "EventName": "subscription-updated",
                "ResourceUri": format!("https://api.partnercenter.microsoft.com/v1/customers/c/subscriptions/s{r}"),
                "Seq": seq,
            }))
            .unwrap();
            let (status, json) = self.app.post(body.clone(), &self.pc.headers(&body)).await;
            assert_eq!(status, 200);
            ids.push(json["eventId"].as_str().unwrap().to_string());
        }
        ids
    }

    /// Reads the enriched events until every id in `ids` was seen, and checks that each
    /// resource's events were first published in their order. Returns the duplicates.
    async fn check(&self, ids: &HashSet<String>) -> usize {
        let queues = output_queues(&self.config);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut got = Vec::new();
        loop {
            if matches!(self.bus, Bus::Kafka(_)) {
                got.clear();
            }
            got.extend(self.bus.read_from(&queues, ids.len(), Duration::from_secs(3)).await);
            let seen: HashSet<&str> = got.iter().map(|m| m.headers["pc-event-id"].as_str()).collect();
            if ids.iter().all(|id| seen.contains(id.as_str())) || Instant::now() > deadline {
                break;
            }
        }
        let mut first: HashMap<String, Vec<u64>> = HashMap::new();
        let mut seen = HashSet::new();
        for m in &got {
            assert!(m.destination.ends_with(".enriched"), "unexpected dead letter: {:?}", m.headers);
            if !seen.insert(m.headers["pc-event-id"].clone()) {
                continue;
            }
            let env: Value = serde_json::from_slice(&m.body).unwrap();
            let uri = env["event"]["ResourceUri"].as_str().unwrap().to_string();
            first.entry(uri).or_default().push(env["event"]["Seq"].as_u64().unwrap());
        }
        let missing = ids.iter().filter(|id| !seen.contains(*id)).count();
        assert_eq!(missing, 0, "{missing} of {} events were lost", ids.len());
        let late: usize = first.values().map(|seqs| seqs.windows(2).filter(|w| w[1] < w[0]).count()).sum();
        for (uri, seqs) in &first {
            assert_eq!(
                seqs,
                &(0..PER_RESOURCE as u64).collect::<Vec<_>>(),
                "{uri}: the events of one resource are published in their order ({late} out of order in all)"
            );
        }
        got.len() - seen.len()
    }

    async fn stop(self) {
        let cfg = self.app.config.clone();
        self.app.stop().await.expect("ingress stops");
        self.bus.cleanup(&cfg, &output_queues(&cfg)).await;
    }
}

/// Posts the rounds of events `from..to`, 60 ms apart.
async fn post_rounds(run: &Run, ids: &mut HashSet<String>, rounds: std::ops::Range<usize>) {
    for seq in rounds {
        ids.extend(run.post_round(seq).await);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
}

async fn three_replicas_keep_each_resources_order(kind: BrokerKind) {
    let run = Run::new(kind).await;
    let mut replicas = vec![run.replica().await, run.replica().await, run.replica().await];
    // Kafka: the group forms before the events come, or one member does everything.
    if kind == BrokerKind::Kafka {
        tokio::time::sleep(Duration::from_secs(8)).await;
    }
    let mut ids = HashSet::new();
    post_rounds(&run, &mut ids, 0..PER_RESOURCE).await;
    let duplicates = run.check(&ids).await;
    let mut done = Vec::new();
    for r in &replicas {
        done.push(r.finished().await);
    }
    eprintln!("{kind:?}: {} events over 3 replicas {done:?}, {duplicates} duplicates", ids.len());
    // On Kafka a replica whose partitions got none of the 12 keys has nothing to do.
    let working = done.iter().filter(|&&d| d > 0).count();
    let least = if kind == BrokerKind::Kafka { 2 } else { 3 };
    assert!(working >= least, "the replicas shared the work: {done:?}");
    for r in &mut replicas {
        assert!(r.terminate().success(), "a replica drains and exits cleanly");
    }
    run.stop().await;
}

on_both_brokers!(three_replicas_keep_each_resources_order);

/// One of three replicas SIGKILLed mid-run: its shards move to the other two, nothing
/// is lost and every resource's order holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_hands_its_shards_to_the_others() {
    let run = Run::new(BrokerKind::Rabbitmq).await;
    let mut replicas = [run.replica().await, run.replica().await, run.replica().await];
    let mut ids = HashSet::new();
    post_rounds(&run, &mut ids, 0..PER_RESOURCE / 3).await;
    let victim = &mut replicas[0];
    wait::until("the replica to kill is working", Duration::from_secs(30), async || victim.finished().await > 0).await;
    let before = victim.finished().await;
    victim.kill();
    post_rounds(&run, &mut ids, PER_RESOURCE / 3..PER_RESOURCE).await;
    let duplicates = run.check(&ids).await;
    let (a, b) = (replicas[1].finished().await, replicas[2].finished().await);
    eprintln!("killed after {before} events; survivors {a} and {b}; {duplicates} duplicates of {}", ids.len());
    assert!(a + b >= ids.len() - before, "the survivors took the killed replica's shards");
    for r in &mut replicas[1..] {
        assert!(r.terminate().success());
    }
    run.stop().await;
}

/// A third replica started mid-run takes shards from the two running; order holds
/// through the hand-over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_replica_takes_shards() {
    let run = Run::new(BrokerKind::Rabbitmq).await;
    let mut replicas = vec![run.replica().await, run.replica().await];
    let mut ids = HashSet::new();
    post_rounds(&run, &mut ids, 0..PER_RESOURCE / 3).await;
    let added_at = Instant::now();
    replicas.push(run.replica().await);
    post_rounds(&run, &mut ids, PER_RESOURCE / 3..PER_RESOURCE).await;
    let duplicates = run.check(&ids).await;
    let mut done = Vec::new();
    for r in &replicas {
        done.push(r.finished().await);
    }
    eprintln!("added after {:?}: {done:?} of {} events, {duplicates} duplicates", added_at.elapsed(), ids.len());
    assert!(done[2] > 0, "the added replica took shards: {done:?}");
    for r in &mut replicas {
        assert!(r.terminate().success());
    }
    run.stop().await;
}
