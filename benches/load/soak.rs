//! `soak`: both roles side by side at half the target loads for
//! `PCBRIDGE_BENCH_SOAK_SECS` (600), resident memory sampled every 10 s.
//!
//! - The ingress takes signed events at a fixed rate (`PCBRIDGE_BENCH_SOAK_INGRESS_RATE`:
//!   7,500/s on Kafka, half of 15,000; 2,500/s on RabbitMQ, half of 5,000).
//! - The worker is fed raw events straight onto its broker at
//!   `PCBRIDGE_BENCH_SOAK_WORKER_RATE` (1,250/s, half of 2,500), each for a subscription
//!   of its own, and the simulated API answers every fetch in 20 ms.
//!
//! Each role has a broker (prefix or mock cluster) of its own: the worker cannot keep up
//! with the ingress's half load, and a backlog would measure the broker, not the worker.
//! Growth is the mean RSS of the last minute minus that of the third. The first two are
//! warm-up: connection pools, the certificate, allocator arenas, and the worker's dedup
//! memory filling up to `worker.dedup_max_entries` (100,000 ids: 80 s at 1,250/s).

use crate::generator::{self, Pace};
use crate::procstat::{cpu_seconds, mib, status_kib};
use crate::scenarios::{Tidy, env_or, rabbit_tidy, worker_done};
use crate::servers;
use crate::setup::{Broker, BrokerSpec, Setup};
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

const SAMPLE: Duration = Duration::from_secs(10);
const MINUTE: usize = 6;

struct Sample {
    ingress_kib: u64,
    worker_kib: u64,
    fed: u64,
    done: u64,
}

fn mean(samples: &[Sample], f: impl Fn(&Sample) -> u64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    mib(samples.iter().map(&f).sum::<u64>() / samples.len() as u64)
}

pub async fn soak() {
    let secs: u64 = env_or("PCBRIDGE_BENCH_SOAK_SECS", 600);
    let only: String = env_or("PCBRIDGE_BENCH_BROKERS", String::new());
    for kafka in [true, false] {
        let (ingress_broker, worker_broker) =
            if kafka { (Broker::kafka(), Broker::kafka()) } else { (Broker::rabbitmq(), Broker::rabbitmq()) };
        if !only.is_empty() && !ingress_broker.name().starts_with(only.as_str()) {
            continue;
        }
        let ingress_rate: f64 = env_or("PCBRIDGE_BENCH_SOAK_INGRESS_RATE", if kafka { 7500.0 } else { 2500.0 });
        let worker_rate: u64 = env_or("PCBRIDGE_BENCH_SOAK_WORKER_RATE", 1250);
        run(&ingress_broker, &worker_broker, ingress_rate, worker_rate, Duration::from_secs(secs)).await;
        rabbit_tidy(&ingress_broker, Tidy::Delete).await;
        rabbit_tidy(&worker_broker, Tidy::Delete).await;
    }
}

async fn run(ingress_broker: &Broker, worker_broker: &Broker, ingress_rate: f64, worker_rate: u64, length: Duration) {
    let setup = Setup::new(Duration::from_millis(20)).await;
    let corpus = setup.corpus(2000);
    let ingress = servers::pcbridge("ingress", &setup.env(ingress_broker));
    ingress.ready(Duration::from_secs(30)).await;
    let mut env = setup.env(worker_broker);
    env.push(("PCBRIDGE_WORKER__CONCURRENCY".into(), "64".into()));
    let worker = servers::pcbridge("worker", &env);
    worker.ready(Duration::from_secs(30)).await;
    println!(
        "Broker: {}. Ingress at {ingress_rate:.0} events/s, worker fed {worker_rate} events/s (API 20 ms, 64 in flight), for {length:?}.\n",
        ingress_broker.name()
    );

    let cpu0 = (cpu_seconds(ingress.pid()), cpu_seconds(worker.pid()));
    let started = Instant::now();
    let load = tokio::spawn({
        let corpus = corpus.clone();
        let addr = ingress.addr;
        async move { generator::run(addr, &corpus, Pace::Open(ingress_rate), 64, Duration::ZERO, length).await }
    });
    // Ten batches a second, catching up (burst) if a batch's confirms ran late.
    let fed = Arc::new(AtomicU64::new(0));
    let loader = worker_broker.loader().await;
    let feed = tokio::spawn({
        let fed = fed.clone();
        async move {
            let per_tick = (worker_rate / 10).max(1);
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while started.elapsed() < length {
                tick.tick().await;
                let from = fed.load(Ordering::Relaxed);
                loader.publish(from as usize..(from + per_tick) as usize, "soak").await;
                fed.store(from + per_tick, Ordering::Relaxed);
            }
        }
    });

    println!(
        "| minute | ingress RSS MiB (mean / max) | worker RSS MiB (mean / max) | worker fed | worker done | worker lag |"
    );
    println!("|---|---|---|---|---|---|");
    let http = reqwest::Client::new();
    let mut samples: Vec<Sample> = Vec::new();
    let mut next = started + SAMPLE;
    while started.elapsed() < length {
        tokio::time::sleep_until(next.into()).await;
        next += SAMPLE;
        samples.push(Sample {
            ingress_kib: status_kib(ingress.pid(), "VmRSS"),
            worker_kib: status_kib(worker.pid(), "VmRSS"),
            fed: fed.load(Ordering::Relaxed),
            done: worker_done(&http, &worker).await,
        });
        // What nobody consumes is dropped, so RabbitMQ's own memory stays flat.
        rabbit_tidy(ingress_broker, Tidy::Purge).await;
        rabbit_tidy(worker_broker, Tidy::PurgeOutputs).await;
        if samples.len().is_multiple_of(MINUTE) {
            let minute = &samples[samples.len() - MINUTE..];
            let last = &minute[MINUTE - 1];
            println!(
                "| {} | {:.1} / {:.1} | {:.1} / {:.1} | {} | {} | {} |",
                samples.len() / MINUTE,
                mean(minute, |s| s.ingress_kib),
                mib(minute.iter().map(|s| s.ingress_kib).max().unwrap_or(0)),
                mean(minute, |s| s.worker_kib),
                mib(minute.iter().map(|s| s.worker_kib).max().unwrap_or(0)),
                last.fed,
                last.done,
                last.fed.saturating_sub(last.done)
            );
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cores = ((cpu_seconds(ingress.pid()) - cpu0.0) / elapsed, (cpu_seconds(worker.pid()) - cpu0.1) / elapsed);
    let outcome = load.await.expect("load generator");
    let _ = feed.await;
    let done = worker_done(&http, &worker).await;

    let third = samples.get(2 * MINUTE..3 * MINUTE).unwrap_or(&[]);
    let last = samples.get(samples.len().saturating_sub(MINUTE)..).unwrap_or(&[]);
    let growth = |f: fn(&Sample) -> u64| mean(last, f) - mean(third, f);
    println!(
        "\nIngress: {:.0} events/s answered 2xx, {} failed, p50 {:.2} ms, p99 {:.2} ms, {:.2} cores, peak RSS (VmHWM) {:.1} MiB, growth (last minute − third) **{:+.1} MiB**.",
        outcome.rate(),
        outcome.failed,
        outcome.ms(0.5),
        outcome.ms(0.99),
        cores.0,
        mib(status_kib(ingress.pid(), "VmHWM")),
        growth(|s| s.ingress_kib)
    );
    println!(
        "Worker: {done} of {} fed events done, {:.2} cores, peak RSS (VmHWM) {:.1} MiB, growth (last minute − third) **{:+.1} MiB**.\n",
        fed.load(Ordering::Relaxed),
        cores.1,
        mib(status_kib(worker.pid(), "VmHWM")),
        growth(|s| s.worker_kib)
    );
    if matches!(ingress_broker.kind, BrokerSpec::Kafka(_)) {
        println!("(The mock cluster keeps the last 5 MiB of each partition, so its memory stays flat too.)\n");
    }
}
