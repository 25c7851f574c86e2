//! Load with faults: signed events sent at a steady rate through a real ingress and a real
//! worker (retrying every non-2xx like Partner Center does), then an account of every
//! accepted event: found in the raw destination, and in the enriched or dead-letter
//! destination, with duplicates counted.

use super::{
    app::{TestApp, TestWorker, spawn_ingress, spawn_worker, worker_config},
    bus::{Bus, amqp, kafka, output_queues, rabbitmq},
    pc::Pc,
    pc_api::PcApi,
};
use lapin::Connection;
use pcbridge::config::Config;
use pcbridge::partner_center::event::event_id;
use serde_json::json;
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::Semaphore;

/// Events per scenario: a short run in `make test`, a long one in `make soak`
/// (`PCBRIDGE_SOAK_EVENTS`).
pub fn events_per_scenario(short: usize) -> usize {
    std::env::var("PCBRIDGE_SOAK_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(short)
}

/// What the sender saw.
#[derive(Debug, Default)]
pub struct Sent {
    pub sent: usize,
    /// Event ids answered 2xx (after retries).
    pub accepted: HashSet<String>,
    /// Non-2xx answers or no answer, each retried.
    pub refusals: usize,
    /// Events never accepted within the retries.
    pub gave_up: usize,
}

/// Where the accepted events were found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub raw_found: usize,
    pub raw_duplicates: usize,
    pub out_found: usize,
    pub out_duplicates: usize,
    pub dead_lettered: usize,
    pub missing_raw: usize,
    pub missing_out: usize,
}

impl Report {
    pub fn line(&self, name: &str, sent: &Sent) -> String {
        format!(
            "{name}: sent {} · answered 2xx {} · refused-then-retried {} · never accepted {} · raw found {} (dup {}) · out found {} (dup {}, dead letters {}) · missing raw {} · missing out {}",
            sent.sent,
            sent.accepted.len(),
            sent.refusals,
            sent.gave_up,
            self.raw_found,
            self.raw_duplicates,
            self.out_found,
            self.out_duplicates,
            self.dead_lettered,
            self.missing_raw,
            self.missing_out
        )
    }
}

/// Raw ids → times seen, output ids → times seen, dead letters seen.
type Seen = (HashMap<String, usize>, HashMap<String, usize>, usize);

/// An ingress and a worker on one broker, with the API stand-in.
pub struct Rig {
    pub bus: Bus,
    pub pc: Pc,
    pub api: PcApi,
    pub config: Config,
    pub app: TestApp,
    pub worker: Option<TestWorker>,
    run: String,
    /// RabbitMQ: a queue bound to `{prefix}*` (raw destinations and dead letters), read
    /// as a downstream audit would, since the worker consumes the raw queues.
    audit: Option<String>,
    /// RabbitMQ: what was taken from the queues so far.
    seen: Mutex<Seen>,
}

impl Rig {
    pub async fn start(bus: Bus, tweak: impl FnOnce(&mut Config)) -> Self {
        let pc = Pc::new().await;
        let api = PcApi::start().await;
        let mut config = worker_config(bus.config(&pc), &api);
        config.worker.max_attempts = 8;
        tweak(&mut config);
        let mut ingress_config = config.clone();
        let audit = match &bus {
            Bus::Rabbit(conn) => Some(audit_queue(conn, &config, &[]).await),
            // AMQP 1.0: the ingress sends through a topic exchange the test made (as an
            // operator makes Service Bus entities), so that an audit queue sees every raw
            // message; the worker reads and writes the queues themselves.
            Bus::Amqp(conn) => {
                let raw = config.broker.destinations().all_raw();
                let audit = audit_queue(conn, &config, &raw).await;
                ingress_config.amqp.address = format!("/exchange/{}/{{destination}}", config.rabbitmq.exchange);
                Some(audit)
            }
            Bus::Kafka(_) => None,
        };
        let app = spawn_ingress(ingress_config).await;
        let worker = Some(spawn_worker(&config).await);
        let run = uuid::Uuid::new_v4().simple().to_string();
        Self { bus, pc, api, config, app, worker, run, audit, seen: Mutex::new(Default::default()) }
    }

    pub fn body(&self, i: usize) -> Vec<u8> {
        let path = format!("/v1/customers/c-{}/subscriptions/s-{i}", i % 40);
        serde_json::to_vec(&json!({
            "EventName": "subscription-updated",
            "ResourceUri": format!("https://api.partnercenter.microsoft.com{path}"),
            "ResourceName": "subscription",
            "AuditUri": null,
            "ResourceChangeUtcDate": "2026-01-01T00:00:00Z",
            "Run": self.run,
            "Seq": i,
        }))
        .unwrap_or_default()
    }

    /// Sends `n` events at `rate` per second; each non-2xx is retried (up to 10
    /// attempts, like Partner Center, with shorter pauses).
    pub async fn load(&self, n: usize, rate: f64) -> Sent {
        for i in 0..n {
            let path = format!("/v1/customers/c-{}/subscriptions/s-{i}", i % 40);
            self.api.put(&path, json!({"id": format!("s-{i}"), "status": "active"}));
        }
        let bodies: Vec<Vec<u8>> = (0..n).map(|i| self.body(i)).collect();
        drive(&self.app.http, &self.app.url, &self.pc, bodies, rate).await
    }

    /// Where each accepted event is, waiting up to `wait` for the worker to finish.
    pub async fn account(&self, sent: &Sent, wait: Duration) -> Report {
        let deadline = Instant::now() + wait;
        loop {
            let report = self.look(sent).await;
            if (report.missing_out == 0 && report.missing_raw == 0) || Instant::now() > deadline {
                return report;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn look(&self, sent: &Sent) -> Report {
        let d = self.config.broker.destinations();
        let ours = |body: &[u8], headers: &std::collections::BTreeMap<String, String>| {
            String::from_utf8_lossy(body).contains(&self.run).then(|| headers.get("pc-event-id").cloned()).flatten()
        };
        let (raw, out, dead) = match &self.bus {
            Bus::Kafka(m) => {
                let (mut raw, mut out, mut dead) = (HashMap::new(), HashMap::new(), 0);
                let raw_topic = d.raw("subscription-updated");
                for r in
                    kafka::read(&m.bootstrap_servers(), &[raw_topic.as_str()], usize::MAX, Duration::from_secs(2)).await
                {
                    if let Some(id) = ours(&r.body, &r.headers) {
                        *raw.entry(id).or_insert(0) += 1;
                    }
                }
                let outputs = [d.enriched("subscription-updated"), d.dead_letter()];
                let names: Vec<&str> = outputs.iter().map(String::as_str).collect();
                for r in kafka::read(&m.bootstrap_servers(), &names, usize::MAX, Duration::from_secs(2)).await {
                    if let Some(id) = ours(&r.body, &r.headers) {
                        dead += usize::from(r.destination == d.dead_letter());
                        *out.entry(id).or_insert(0) += 1;
                    }
                }
                (raw, out, dead)
            }
            Bus::Rabbit(_) | Bus::Amqp(_) => {
                let mut seen = self.seen.lock().unwrap().clone();
                let queues =
                    [(self.audit.clone().unwrap_or_default(), true), (d.enriched("subscription-updated"), false)];
                for (queue, audit) in queues {
                    let taken = match &self.bus {
                        Bus::Rabbit(conn) => rabbitmq::drain(conn, &queue).await,
                        _ => amqp::read(&queue, usize::MAX, Duration::ZERO).await,
                    };
                    for m in taken {
                        let headers = &m.headers;
                        let Some(id) = ours(&m.body, headers) else { continue };
                        if audit && headers.contains_key("pc-error-kind") {
                            seen.2 += 1;
                            *seen.1.entry(id).or_insert(0) += 1;
                        } else if audit {
                            *seen.0.entry(id).or_insert(0) += 1;
                        } else {
                            *seen.1.entry(id).or_insert(0) += 1;
                        }
                    }
                }
                *self.seen.lock().unwrap() = seen.clone();
                seen
            }
        };
        let dups = |m: &HashMap<String, usize>| m.values().map(|n| n - 1).sum();
        Report {
            raw_found: sent.accepted.iter().filter(|id| raw.contains_key(*id)).count(),
            raw_duplicates: dups(&raw),
            out_found: sent.accepted.iter().filter(|id| out.contains_key(*id)).count(),
            out_duplicates: dups(&out),
            dead_lettered: dead,
            missing_raw: sent.accepted.iter().filter(|id| !raw.contains_key(*id)).count(),
            missing_out: sent.accepted.iter().filter(|id| !out.contains_key(*id)).count(),
        }
    }

    /// Events the worker finished, by its metrics (for diagnosing a missing output).
    pub fn worker_finished(&self) -> u64 {
        self.worker.as_ref().map_or(0, TestWorker::events_finished)
    }

    /// A new test connection to RabbitMQ (after a broker restart killed the old one).
    pub async fn reconnect_bus(mut self) -> Self {
        if let Bus::Rabbit(_) = self.bus {
            self.bus = Bus::new(pcbridge::config::BrokerKind::Rabbitmq).await;
        }
        self
    }

    /// Stops the worker and removes the test's queues.
    pub async fn finish(mut self) {
        if let Some(w) = self.worker.take() {
            let _ = w.stop().await;
        }
        let mut extra = output_queues(&self.config);
        extra.extend(self.audit.clone());
        self.bus.cleanup(&self.config, &extra).await;
    }
}

/// A durable queue bound on the test's topic exchange to `{prefix}*` (dead letters, and
/// raw destinations on AMQP 1.0) and to `{prefix}*.{shard}` (the raw destinations' shards
/// on RabbitMQ), read as a downstream audit would, since the worker consumes the raw
/// queues; `queues` are declared too, each bound by its own name.
async fn audit_queue(conn: &Connection, config: &Config, queues: &[String]) -> String {
    let name = format!("{}audit", config.broker.prefix);
    let prefix = &config.broker.prefix;
    let patterns: Vec<String> = std::iter::once(format!("{prefix}*"))
        .chain((0..config.rabbitmq.shards).map(|k| format!("{prefix}*.{k}")))
        .collect();
    rabbitmq::bind_on_topic_exchange(conn, config, &name, &patterns).await;
    for q in queues {
        rabbitmq::bind_on_topic_exchange(conn, config, q, std::slice::from_ref(q)).await;
    }
    name
}

/// Posts `bodies`, signed, at `rate` per second to `url`; each non-2xx (or no answer)
/// is retried up to 10 attempts, as Partner Center would, with shorter pauses.
pub async fn drive(http: &reqwest::Client, url: &str, pc: &Pc, bodies: Vec<Vec<u8>>, rate: f64) -> Sent {
    let sent = Arc::new(Mutex::new(Sent::default()));
    let permits = Arc::new(Semaphore::new(256));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for body in bodies {
        tick.tick().await;
        let permit = permits.clone().acquire_owned().await.expect("permit");
        let headers = pc.headers(&body);
        let (http, url, sent) = (http.clone(), url.to_string(), sent.clone());
        sent.lock().unwrap().sent += 1;
        tokio::spawn(async move {
            let id = event_id(&body);
            for attempt in 1..=10u64 {
                let mut rq = http.post(&url).timeout(Duration::from_secs(10)).body(body.clone());
                for (k, v) in &headers {
                    rq = rq.header(*k, v);
                }
                match rq.send().await {
                    Ok(r) if r.status().is_success() => {
                        sent.lock().unwrap().accepted.insert(id);
                        drop(permit);
                        return;
                    }
                    _ => sent.lock().unwrap().refusals += 1,
                }
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            sent.lock().unwrap().gave_up += 1;
            drop(permit);
        });
    }
    let _ = permits.acquire_many(256).await.expect("all answered");
    let g = sent.lock().unwrap();
    Sent { sent: g.sent, accepted: g.accepted.clone(), refusals: g.refusals, gave_up: g.gave_up }
}

/// Asserts that nothing accepted was lost, and prints the report line (collected into
/// docs/RELIABILITY.md).
pub fn assert_nothing_lost(name: &str, sent: &Sent, report: &Report) {
    let line = report.line(name, sent);
    println!("RELIABILITY {line}");
    assert!(!sent.accepted.is_empty(), "{line}");
    assert_eq!(report.missing_raw, 0, "accepted events missing from the raw destination: {line}");
    assert_eq!(report.missing_out, 0, "accepted events never enriched or dead-lettered: {line}");
}
