//! `scaling`: 1, 2 and 3 worker processes on each broker, bound by API latency (every
//! answer 50 ms, concurrency 4 per replica, every event a resource of its own), with
//! per-resource order kept across replicas (Kafka: partitions; RabbitMQ: shards). It
//! reports the steady-state rate once every replica works, the efficiency against one
//! replica, and how long a replica added to two working ones takes to finish its first
//! event (Kafka: a consumer-group rebalance; RabbitMQ: a shard hand-over).

use crate::scenarios::{Tidy, env_or, rabbit_tidy, worker_done};
use crate::servers::{self, Server};
use crate::setup::{Broker, Setup};
use std::time::{Duration, Instant};

const LATENCY: Duration = Duration::from_millis(50);
const CONCURRENCY: u64 = 4;

/// What one run of `replicas` workers measured.
struct Run {
    /// Events/s over the middle of the run, once every replica was working.
    rate: f64,
    /// Spawn of the last replica to its first finished event.
    join: Duration,
    per_replica: Vec<u64>,
}

pub async fn run() {
    let n: u64 = env_or("PCBRIDGE_BENCH_SCALING_EVENTS", 3000);
    println!(
        "{n} events preloaded, each for a resource of its own; API latency {LATENCY:?}; concurrency {CONCURRENCY} per replica \
         (ideal {:.0} events/s per replica). Steady state: from the moment every replica has finished an event to 90 % done.\n",
        CONCURRENCY as f64 / LATENCY.as_secs_f64()
    );
    println!(
        "| broker | replicas | events/s | efficiency vs 1 replica | events per replica | last replica's first event after |"
    );
    println!("|---|---|---|---|---|---|");
    let only: String = env_or("PCBRIDGE_BENCH_BROKERS", String::new());
    for make in [Broker::kafka as fn() -> Broker, Broker::rabbitmq] {
        let mut single = None;
        for replicas in 1..=3 {
            let broker = make();
            if !only.is_empty() && !broker.name().starts_with(only.as_str()) {
                break;
            }
            let Some(run) = measure(&broker, replicas, n).await else {
                println!("| {} | {replicas} | did not finish |", broker.name());
                continue;
            };
            let one = *single.get_or_insert(run.rate);
            println!(
                "| {} | {replicas} | {:.0} | **{:.2}** | {:?} | {:.1?} |",
                broker.name(),
                run.rate,
                run.rate / (one * replicas as f64),
                run.per_replica,
                run.join
            );
            rabbit_tidy(&broker, Tidy::Delete).await;
        }
    }
}

/// Preloads `n` events, starts `replicas` workers (the last one once the others work)
/// and times them.
async fn measure(broker: &Broker, replicas: usize, n: u64) -> Option<Run> {
    let setup = Setup::new(LATENCY).await;
    broker.preload(n as usize, "s").await;
    let mut env = setup.env(broker);
    env.push(("PCBRIDGE_WORKER__CONCURRENCY".into(), CONCURRENCY.to_string()));
    env.push(("PCBRIDGE_WORKER__GROUP_ID".into(), format!("bench-scaling-{}", uuid::Uuid::new_v4().simple())));
    // librdkafka's mock coordinator completes a rebalance only when the session timeout
    // (45 s by default) runs out; 6 s, as in the tests, keeps a join near a real broker's.
    env.push(("PCBRIDGE_KAFKA__PROPERTIES__SESSION_TIMEOUT_MS".into(), "6000".into()));
    let http = reqwest::Client::new();
    let mut workers: Vec<Server> = (0..replicas - 1).map(|_| servers::pcbridge("worker", &env)).collect();
    // The others first, working, then the last: its join time is a scale-out's.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !workers.is_empty() && !all_working(&http, &workers).await {
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    workers.push(servers::pcbridge("worker", &env));
    let last_spawned = Instant::now();
    let mut join = None;
    let (mut start, mut t90) = (None, None);
    loop {
        let counts = counts(&http, &workers).await;
        let done: u64 = counts.iter().sum();
        let now = Instant::now();
        if join.is_none() && counts.last().is_some_and(|&c| c > 0) {
            join = Some(last_spawned.elapsed());
            start = Some((now, done));
        }
        if done >= n * 9 / 10 && t90.is_none() {
            t90 = Some((now, done));
        }
        if done >= n {
            let ((t0, d0), (t1, d1)) = (start?, t90?);
            return Some(Run { rate: (d1 - d0) as f64 / (t1 - t0).as_secs_f64(), join: join?, per_replica: counts });
        }
        if now > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn counts(http: &reqwest::Client, workers: &[Server]) -> Vec<u64> {
    let mut out = Vec::with_capacity(workers.len());
    for w in workers {
        out.push(worker_done(http, w).await);
    }
    out
}

async fn all_working(http: &reqwest::Client, workers: &[Server]) -> bool {
    counts(http, workers).await.iter().all(|&c| c > 0)
}
