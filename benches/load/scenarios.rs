//! The scenarios: each prints Markdown table rows for docs/BENCHMARKS.md.

use crate::generator::{self, Corpus, Outcome, Pace};
use crate::procstat::{RssPeak, cpu_seconds, find_pid, mib, status_kib};
use crate::servers::{self, Server};
use crate::setup::{AMQP_URL, Broker, BrokerSpec, RABBITMQ_URL, Setup};
use pcbridge::contract::destinations::Destinations;
use pcbridge::contract::shards::raw_exchange;
use std::time::{Duration, Instant};

const WARMUP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(5);
/// Connections of the closed loop (the calibration's wrk used 32).
const CLOSED_CONNECTIONS: usize = 32;
/// Connections of the open loop: enough that a rate is never limited by them.
const OPEN_CONNECTIONS: usize = 64;

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One measurement of one server.
struct Row {
    outcome: Outcome,
    /// CPU cores the server used over the run.
    cores: f64,
    /// CPU cores of this process (load generator, simulator, mock Kafka) and of RabbitMQ.
    bench_cores: f64,
    rabbitmq_cores: Option<f64>,
    peak_rss_kib: u64,
}

async fn measure(server: &Server, broker: &Broker, corpus: &Corpus, pace: Pace, connections: usize) -> Row {
    let pid = server.pid();
    let rabbit = (!matches!(broker.kind, BrokerSpec::Kafka(_))).then(|| find_pid("beam.smp")).flatten();
    let me = std::process::id();
    let cpu = || (cpu_seconds(pid), cpu_seconds(me), rabbit.map(cpu_seconds));
    let (cpu0, started, rss) = (cpu(), Instant::now(), RssPeak::start(pid));
    let outcome = generator::run(server.addr, corpus, pace, connections, WARMUP, MEASURE).await;
    let (cpu1, secs) = (cpu(), started.elapsed().as_secs_f64());
    Row {
        outcome,
        cores: (cpu1.0 - cpu0.0) / secs,
        bench_cores: (cpu1.1 - cpu0.1) / secs,
        rabbitmq_cores: cpu1.2.zip(cpu0.2).map(|(b, a)| (b - a) / secs),
        peak_rss_kib: rss.finish(),
    }
}

fn print_header() {
    println!(
        "| server | load | events/s | p50 ms | p99 ms | p99.9 ms | failed | server CPU (cores) | server peak RSS MiB | bench process CPU | RabbitMQ CPU |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
}

fn print_row(name: &str, load: &str, r: &Row) {
    let o = &r.outcome;
    println!(
        "| {name} | {load} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {:.1} | {:.2} | {} |",
        o.rate(),
        o.ms(0.5),
        o.ms(0.99),
        o.ms(0.999),
        o.failed,
        r.cores,
        mib(r.peak_rss_kib),
        r.bench_cores,
        r.rabbitmq_cores.map_or("—".to_string(), |c| format!("{c:.2}"))
    );
}

/// How the minimal pipeline publishes on RabbitMQ.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// Through this run's raw exchange (direct), as the contract routes raw messages.
    Raw,
    /// Straight to the queue through the default exchange, as issue 19's reference did.
    DefaultExchange,
    /// Through the raw exchange, one publish in flight at a time.
    RawSerial,
}

fn minimal_args(setup: &Setup, broker: &Broker, via: Via) -> Vec<String> {
    let mut a = vec!["serve-minimal".to_string(), setup.cert_der.display().to_string(), broker.prefix.clone()];
    match &broker.kind {
        BrokerSpec::Kafka(bootstrap) => a.extend(["kafka".into(), bootstrap.clone()]),
        BrokerSpec::Rabbit { exchange } => {
            let exchange = if via == Via::DefaultExchange { String::new() } else { raw_exchange(exchange) };
            a.extend(["rabbitmq".into(), RABBITMQ_URL.into(), exchange]);
            if via == Via::RawSerial {
                a.push("serial".into());
            }
        }
        BrokerSpec::Amqp => a.extend(["amqp".into(), AMQP_URL.into()]),
    }
    a
}

/// What [`rabbit_tidy`] does to this run's RabbitMQ queues.
#[derive(Clone, Copy, PartialEq)]
pub enum Tidy {
    /// Empties every queue, so stored messages do not pile up between measurements.
    Purge,
    /// Empties only what the worker writes (enriched, dead letter); leaves its input.
    PurgeOutputs,
    /// Deletes the queues and the exchange: the run is over.
    Delete,
}

/// Tidies this run's RabbitMQ queues; nothing to do on Kafka (the mock cluster caps each
/// partition's log and goes away with the run).
pub async fn rabbit_tidy(broker: &Broker, tidy: Tidy) {
    let exchange = match &broker.kind {
        BrokerSpec::Rabbit { exchange } => exchange.as_str(),
        BrokerSpec::Amqp => "",
        BrokerSpec::Kafka(_) => return,
    };
    let conn = lapin::Connection::connect(RABBITMQ_URL, Default::default()).await.expect("rabbitmq");
    let d = Destinations::new(broker.prefix.clone());
    let config = broker.config();
    let stems = pcbridge::worker::stems(&config);
    // RabbitMQ splits each raw destination into shards; AMQP 1.0 does not.
    let shards = if exchange.is_empty() { 0 } else { config.rabbitmq.shards };
    let raw = stems
        .iter()
        // The raw name too: the minimal pipeline's own queue on RabbitMQ, the queue on AMQP 1.0.
        .flat_map(|s| {
            let mut queues = vec![d.raw(s)];
            if shards > 0 {
                queues.extend(pcbridge::contract::shards::shard_names(&d.raw(s), shards));
            }
            queues
        })
        .filter(|_| tidy != Tidy::PurgeOutputs);
    let queues = raw.chain(stems.iter().map(|s| d.enriched(s))).chain([d.dead_letter()]);
    for q in queues {
        // A missing queue closes the channel: one channel per queue.
        let Ok(ch) = conn.create_channel().await else { continue };
        let _ = if tidy == Tidy::Delete {
            ch.queue_delete(q.as_str().into(), Default::default()).await.map(|_| ())
        } else {
            ch.queue_purge(q.as_str().into(), Default::default()).await.map(|_| ())
        };
    }
    if tidy == Tidy::Delete
        && !exchange.is_empty()
        && let Ok(ch) = conn.create_channel().await
    {
        for x in [exchange.to_string(), raw_exchange(exchange)] {
            let _ = ch.exchange_delete(x.as_str().into(), Default::default()).await;
        }
    }
    let _ = conn.close(200, "done".into()).await;
}

/// The ingress next to the bare HTTP limit and the minimal pipeline.
pub async fn ingress(broker: Broker) {
    let setup = Setup::new(Duration::ZERO).await;
    let corpus = setup.corpus(env_or("PCBRIDGE_BENCH_CORPUS", 2000));
    let ingress = servers::pcbridge("ingress", &setup.env(&broker));
    let startup = ingress.ready(Duration::from_secs(30)).await;
    // Warm-up: the certificate download, topic metadata, and (RabbitMQ) the queues the
    // minimal pipeline will publish to.
    generator::run(ingress.addr, &corpus, Pace::Closed, CLOSED_CONNECTIONS, Duration::ZERO, Duration::from_secs(2))
        .await;
    rabbit_tidy(&broker, Tidy::Purge).await;
    let bare = servers::reference(&["serve-bare"]);
    let reference = |via| {
        let args = minimal_args(&setup, &broker, via);
        servers::reference(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let minimal = reference(Via::Raw);
    let rabbit = matches!(broker.kind, BrokerSpec::Rabbit { .. });
    // RabbitMQ: also the reference issue 19 was measured against, which skips the
    // exchange the contract routes raw messages through.
    let direct = rabbit.then(|| reference(Via::DefaultExchange));
    println!(
        "Broker: {}. Ingress ready {startup:?} after spawn. Corpus: {} distinct signed events.\n",
        broker.name(),
        corpus.items.len()
    );

    let rounds: usize = env_or("PCBRIDGE_BENCH_ROUNDS", 2).max(1);
    println!("### As fast as answers come back ({CLOSED_CONNECTIONS} connections, closed loop, best of {rounds})\n");
    print_header();
    let load = format!("closed, {CLOSED_CONNECTIONS} conn");
    let mut servers = vec![("bare axum 200", &bare), ("minimal pipeline", &minimal)];
    if let Some(direct) = &direct {
        servers.push(("minimal, default exchange", direct));
    }
    servers.push(("pcbridge ingress", &ingress));
    let ingress_at = servers.len() - 1;
    // `PCBRIDGE_BENCH_INGRESS_ALT="PCBRIDGE_X=1 PCBRIDGE_Y=2"`: a second ingress with these
    // variables too, in the same rounds (an experiment against the first).
    let alt_env: Vec<(String, String)> = std::env::var("PCBRIDGE_BENCH_INGRESS_ALT")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let alt = (!alt_env.is_empty()).then(|| {
        let mut env = setup.env(&broker);
        env.extend(alt_env.iter().cloned());
        servers::pcbridge("ingress", &env)
    });
    if let Some(alt) = &alt {
        alt.ready(Duration::from_secs(30)).await;
        generator::run(alt.addr, &corpus, Pace::Closed, CLOSED_CONNECTIONS, Duration::ZERO, Duration::from_secs(2))
            .await;
        rabbit_tidy(&broker, Tidy::Purge).await;
        servers.push(("pcbridge ingress, alternative", alt));
    }
    let mut best = vec![0.0f64; servers.len()];
    // Ingress / each minimal within each round: they ran back to back, so a round's
    // ratio is less exposed to the machine's drift than the ratio of the bests.
    let mut ratios = vec![Vec::with_capacity(rounds); servers.len()];
    let mut alt_ratios = ratios.clone();
    for _round in 0..rounds {
        let mut rates = vec![0.0f64; servers.len()];
        for (i, (name, server)) in servers.iter().enumerate() {
            let row = measure(server, &broker, &corpus, Pace::Closed, CLOSED_CONNECTIONS).await;
            print_row(name, &load, &row);
            rates[i] = row.outcome.rate();
            best[i] = best[i].max(rates[i]);
            rabbit_tidy(&broker, Tidy::Purge).await;
        }
        for i in 1..ingress_at {
            ratios[i].push(rates[ingress_at] / rates[i]);
            if alt.is_some() {
                alt_ratios[i].push(rates[ingress_at + 1] / rates[i]);
            }
        }
    }
    if rabbit {
        let serial = reference(Via::RawSerial);
        let row = measure(&serial, &broker, &corpus, Pace::Closed, CLOSED_CONNECTIONS).await;
        print_row("minimal, one publish in flight", &load, &row);
        rabbit_tidy(&broker, Tidy::Purge).await;
    }
    let listed: Vec<String> = servers.iter().zip(&best).map(|((name, _), b)| format!("{name} {b:.0}")).collect();
    println!("\nBest events/s: {}. Ingress / bare = {:.3}.\n", listed.join(", "), best[ingress_at] / best[0]);
    for i in 1..ingress_at {
        let (listed, median) = sorted_with_median(std::mem::take(&mut ratios[i]));
        println!(
            "Ingress / {}: best against best **{:.2}**; per round, sorted: {listed}; median **{median:.2}**.\n",
            servers[i].0,
            best[ingress_at] / best[i],
        );
        if alt.is_some() {
            let (listed, median) = sorted_with_median(std::mem::take(&mut alt_ratios[i]));
            println!(
                "Alternative ingress ({alt_env:?}) / {}: per round, sorted: {listed}; median **{median:.2}**.\n",
                servers[i].0,
            );
        }
    }

    println!("### Fixed rates ({OPEN_CONNECTIONS} connections, open loop)\n");
    print_header();
    let default_rates = match broker.kind {
        BrokerSpec::Kafka(_) => "1000,2500,5000,10000,15000,20000",
        BrokerSpec::Rabbit { .. } => "1000,2500,5000,7500,10000",
        BrokerSpec::Amqp => "1000,2500,5000,7500",
    };
    // `PCBRIDGE_BENCH_INGRESS_RATES=5000` (or empty, to skip the open loop) when profiling.
    let rates: Vec<f64> = std::env::var("PCBRIDGE_BENCH_INGRESS_RATES")
        .unwrap_or_else(|_| default_rates.to_string())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    for rate in rates {
        for (name, server) in [("minimal pipeline", &minimal), ("pcbridge ingress", &ingress)] {
            let row = measure(server, &broker, &corpus, Pace::Open(rate), OPEN_CONNECTIONS).await;
            print_row(name, &format!("{rate:.0}/s"), &row);
            rabbit_tidy(&broker, Tidy::Purge).await;
        }
    }
    println!("\nIngress peak RSS since start (VmHWM): {:.1} MiB", mib(status_kib(ingress.pid(), "VmHWM")));
    drop((ingress, alt, minimal, direct, bare));
    rabbit_tidy(&broker, Tidy::Delete).await;
}

/// Per-round ratios, sorted and listed, and their median.
fn sorted_with_median(mut ratios: Vec<f64>) -> (String, f64) {
    ratios.sort_by(f64::total_cmp);
    let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    (listed.join(", "), ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN))
}

/// Sum of `pcbridge_worker_events_total` from a worker's /metrics.
pub async fn worker_done(http: &reqwest::Client, worker: &Server) -> u64 {
    let url = format!("http://{}/metrics", worker.admin.expect("admin"));
    let Ok(r) = http.get(url).send().await else { return 0 };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("pcbridge_worker_events_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// N events preloaded; the API answers in a fixed 20 ms; 64 events enriched at once.
pub async fn worker() {
    // The mock cluster keeps at most 5 MiB of each partition's log (`rdkafka_mock.c`):
    // about 15,600 of these raw messages over 3 partitions. More are dropped from the
    // front before the worker reads them, and the run never completes.
    let n: u64 = env_or("PCBRIDGE_BENCH_WORKER_EVENTS", 10_000);
    let latency = Duration::from_millis(20);
    let concurrency = 64u64;
    let ideal = concurrency as f64 / latency.as_secs_f64();
    println!(
        "| broker | events | API latency | concurrency | ideal events/s | events/s (10 %→90 %) | ratio | all done in | worker CPU (cores) | worker peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let only: String = env_or("PCBRIDGE_BENCH_BROKERS", String::new());
    for broker in [Broker::kafka(), Broker::rabbitmq()] {
        if !only.is_empty() && !broker.name().starts_with(only.as_str()) {
            continue;
        }
        let setup = Setup::new(latency).await;
        broker.preload(n as usize, "w").await;
        let mut env = setup.env(&broker);
        env.push(("PCBRIDGE_WORKER__CONCURRENCY".into(), concurrency.to_string()));
        if let Ok(prefetch) = std::env::var("PCBRIDGE_BENCH_WORKER_PREFETCH") {
            env.push(("PCBRIDGE_WORKER__PREFETCH".into(), prefetch));
        }
        let worker = servers::pcbridge("worker", &env);
        let pid = worker.pid();
        let rss = RssPeak::start(pid);
        let http = reqwest::Client::new();
        let (mut t10, mut t90, mut first) = (None, None, None);
        let deadline = Instant::now() + Duration::from_secs(300);
        let done = loop {
            let done = worker_done(&http, &worker).await;
            let now = Instant::now();
            if done > 0 && first.is_none() {
                first = Some((now, cpu_seconds(pid)));
            }
            if done >= n / 10 && t10.is_none() {
                t10 = Some(now);
            }
            if done >= n * 9 / 10 && t90.is_none() {
                t90 = Some(now);
            }
            if done >= n || now > deadline {
                break done;
            }
            if std::env::var_os("PCBRIDGE_BENCH_VERBOSE").is_some() {
                eprintln!("{:?} {done}", worker.spawned.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let peak = rss.finish();
        let (Some((t0, cpu0)), Some(t10), Some(t90)) = (first, t10, t90) else {
            println!("| {} | {n} | worker finished only {done} within 300 s |", broker.name());
            continue;
        };
        let all = t0.elapsed();
        let cores = (cpu_seconds(pid) - cpu0) / all.as_secs_f64();
        let rate = (n * 8 / 10) as f64 / (t90 - t10).as_secs_f64();
        println!(
            "| {} | {done} | {latency:?} | {concurrency} | {ideal:.0} | {rate:.0} | **{:.2}** | {all:.1?} | {cores:.2} | {:.1} |",
            broker.name(),
            rate / ideal,
            mib(peak)
        );
        drop(worker);
        rabbit_tidy(&broker, Tidy::Delete).await;
    }
}

/// Spawn to `/readyz`, ten times per role and broker.
pub async fn startup() {
    println!("| role | broker | runs | min | median | max |");
    println!("|---|---|---|---|---|---|");
    let setup = Setup::new(Duration::ZERO).await;
    for broker in [Broker::kafka(), Broker::rabbitmq()] {
        for role in ["ingress", "worker"] {
            let mut times: Vec<Duration> = Vec::new();
            for _ in 0..10 {
                // A group of its own: joining one whose previous member was just killed
                // waits out that member's session, which is not start-up.
                let mut env = setup.env(&broker);
                env.push((
                    "PCBRIDGE_WORKER__GROUP_ID".into(),
                    format!("bench-startup-{}", uuid::Uuid::new_v4().simple()),
                ));
                let server = servers::pcbridge(role, &env);
                times.push(server.ready(Duration::from_secs(30)).await);
            }
            times.sort();
            println!(
                "| {role} | {} | {} | {:.0?} | {:.0?} | {:.0?} |",
                broker.name(),
                times.len(),
                times[0],
                times[times.len() / 2],
                times[times.len() - 1]
            );
        }
        rabbit_tidy(&broker, Tidy::Delete).await;
    }
}
