//! What the demo prints: one line per event as it completes (sent → published →
//! enriched or dead-lettered, with latencies), a progress line every few seconds, and a
//! summary with counts and latency percentiles.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    fmt::Write as _,
    sync::Mutex,
    time::{Duration, Instant},
};

/// How an event ended downstream, as read from the enriched or dead-letter destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `enrichment.status` of the enriched message, and its attempts.
    Enriched { status: String, attempts: u64 },
    /// `pc-error-kind` and `pc-attempts` of the dead letter.
    DeadLettered { kind: String, attempts: u64 },
}

#[derive(Debug)]
struct Pending {
    seq: u64,
    name: String,
    sent: Instant,
    answer: Option<(u16, Duration)>,
    outcome: Option<(Outcome, Duration)>,
}

/// A latency histogram with 5 % wide logarithmic buckets from 0.1 ms to about 10 min.
#[derive(Debug, Clone)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max: Duration,
}

const BUCKET_GROWTH: f64 = 1.05;
const BUCKET_FLOOR_US: f64 = 100.0;
const BUCKETS: usize = 330;

impl Default for Histogram {
    fn default() -> Self {
        Self { buckets: vec![0; BUCKETS], count: 0, max: Duration::ZERO }
    }
}

impl Histogram {
    pub fn record(&mut self, d: Duration) {
        let us = d.as_secs_f64() * 1e6;
        let i =
            if us <= BUCKET_FLOOR_US { 0 } else { ((us / BUCKET_FLOOR_US).ln() / BUCKET_GROWTH.ln()).ceil() as usize };
        self.buckets[i.min(BUCKETS - 1)] += 1;
        self.count += 1;
        self.max = self.max.max(d);
    }

    /// The `q` quantile (0..=1), as the upper bound of its bucket (at most 5 % high).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let upper = Duration::from_secs_f64(BUCKET_FLOOR_US * BUCKET_GROWTH.powi(i as i32) / 1e6);
                return Some(upper.min(self.max));
            }
        }
        Some(self.max)
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    fn line(&self) -> String {
        let f = |q| self.quantile(q).map_or("-".into(), human);
        format!("p50 {} · p95 {} · p99 {} · max {}", f(0.5), f(0.95), f(0.99), human(self.max))
    }
}

/// A duration the way a person reads it: `830 µs`, `12 ms`, `1.4 s`.
pub fn human(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1.0 {
        format!("{} µs", d.as_micros())
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// Counts of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub sent: u64,
    pub published: u64,
    /// Non-2xx answers or no answer, by status ("no answer" as 0).
    pub refused: BTreeMap<u16, u64>,
    /// Enriched outputs by `enrichment.status`.
    pub enriched: BTreeMap<String, u64>,
    /// Dead letters by `pc-error-kind`.
    pub dead_lettered: BTreeMap<String, u64>,
    /// Outputs for an event already completed (at-least-once delivery at work).
    pub duplicates: u64,
}

impl Totals {
    /// Events published whose outcome has not been seen.
    pub fn waiting(&self) -> u64 {
        let done: u64 = self.enriched.values().sum::<u64>() + self.dead_lettered.values().sum::<u64>();
        self.published.saturating_sub(done)
    }
}

struct Inner {
    pending: HashMap<String, Pending>,
    /// Recently completed ids (duplicate detection), oldest first, bounded.
    completed: VecDeque<String>,
    completed_set: HashSet<String>,
    totals: Totals,
    by_name: BTreeMap<String, u64>,
    publish_latency: Histogram,
    end_to_end: Histogram,
    seq: u64,
}

const REMEMBER_COMPLETED: usize = 100_000;

/// Tracks every event from send to outcome, printing as they complete.
pub struct Tracker {
    inner: Mutex<Inner>,
    started: Instant,
    /// Whether outcomes are observed (dev) or the answer is the end (simulate).
    observes_outcomes: bool,
    /// Print a line per event (off with `--quiet`).
    per_event: bool,
}

impl Tracker {
    pub fn new(observes_outcomes: bool, per_event: bool) -> Self {
        Self {
            inner: Mutex::new(Inner {
                pending: HashMap::new(),
                completed: VecDeque::new(),
                completed_set: HashSet::new(),
                totals: Totals::default(),
                by_name: BTreeMap::new(),
                publish_latency: Histogram::default(),
                end_to_end: Histogram::default(),
                seq: 0,
            }),
            started: Instant::now(),
            observes_outcomes,
            per_event,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An event is about to be sent; returns its sequence number.
    pub fn sent(&self, id: &str, name: &str) -> u64 {
        let mut g = self.lock();
        g.seq += 1;
        let seq = g.seq;
        g.totals.sent += 1;
        *g.by_name.entry(name.to_string()).or_default() += 1;
        g.pending.insert(
            id.to_string(),
            Pending { seq, name: name.into(), sent: Instant::now(), answer: None, outcome: None },
        );
        seq
    }

    /// The ingress answered `status` (0: no answer).
    pub fn answered(&self, id: &str, status: u16, detail: &str) {
        let mut g = self.lock();
        let Some(p) = g.pending.get_mut(id) else { return };
        let latency = p.sent.elapsed();
        p.answer = Some((status, latency));
        if (200..300).contains(&status) {
            g.totals.published += 1;
            g.publish_latency.record(latency);
            if self.observes_outcomes && g.pending.get(id).is_some_and(|p| p.outcome.is_none()) {
                return;
            }
        } else {
            *g.totals.refused.entry(status).or_default() += 1;
        }
        self.complete(&mut g, id, detail);
    }

    /// An output for event `id` was read downstream.
    pub fn observed(&self, id: &str, outcome: Outcome) {
        let mut g = self.lock();
        if g.completed_set.contains(id) {
            g.totals.duplicates += 1;
            return;
        }
        let Some(p) = g.pending.get_mut(id) else { return };
        if p.outcome.is_some() {
            g.totals.duplicates += 1;
            return;
        }
        let latency = p.sent.elapsed();
        p.outcome = Some((outcome.clone(), latency));
        g.end_to_end.record(latency);
        match &outcome {
            Outcome::Enriched { status, .. } => *g.totals.enriched.entry(status.clone()).or_default() += 1,
            Outcome::DeadLettered { kind, .. } => *g.totals.dead_lettered.entry(kind.clone()).or_default() += 1,
        }
        if g.pending.get(id).is_some_and(|p| p.answer.is_some()) {
            self.complete(&mut g, id, "");
        }
    }

    fn complete(&self, g: &mut Inner, id: &str, detail: &str) {
        let Some(p) = g.pending.remove(id) else { return };
        g.completed_set.insert(id.to_string());
        g.completed.push_back(id.to_string());
        if g.completed.len() > REMEMBER_COMPLETED
            && let Some(old) = g.completed.pop_front()
        {
            g.completed_set.remove(&old);
        }
        if self.per_event {
            println!("{}", line(&p, detail));
        }
    }

    pub fn totals(&self) -> Totals {
        self.lock().totals.clone()
    }

    /// `elapsed: sent … · published … · enriched … · dead-lettered … · waiting … · rate`.
    pub fn progress(&self) -> String {
        let g = self.lock();
        let t = &g.totals;
        let secs = self.started.elapsed().as_secs_f64();
        let mut s = format!("… {secs:.0} s: sent {} · published {}", t.sent, t.published);
        if self.observes_outcomes {
            let enriched: u64 = t.enriched.values().sum();
            let dead: u64 = t.dead_lettered.values().sum();
            let _ = write!(s, " · enriched {enriched} · dead-lettered {dead} · waiting {}", t.waiting());
        }
        let refused: u64 = t.refused.values().sum();
        if refused > 0 {
            let _ = write!(s, " · refused {refused}");
        }
        let _ = write!(s, " · {:.1} events/s", t.sent as f64 / secs.max(0.001));
        s
    }

    /// The end-of-run summary.
    pub fn summary(&self) -> String {
        let g = self.lock();
        let t = &g.totals;
        let mut s = format!("\nSummary after {}\n", human(self.started.elapsed()));
        let refused: u64 = t.refused.values().sum();
        let _ = writeln!(
            s,
            "  sent {} · published {} (answered 2xx after the broker confirmed) · refused {refused}",
            t.sent, t.published
        );
        for (status, n) in &t.refused {
            let what = if *status == 0 { "no answer".to_string() } else { format!("HTTP {status}") };
            let _ = writeln!(s, "    {what}: {n}");
        }
        if self.observes_outcomes {
            let list = |m: &BTreeMap<String, u64>| {
                if m.is_empty() {
                    "0".to_string()
                } else {
                    m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
                }
            };
            let _ = writeln!(s, "  enriched messages: {}", list(&t.enriched));
            let _ = writeln!(s, "  dead-lettered: {}", list(&t.dead_lettered));
            let _ = writeln!(s, "  still waiting: {} · duplicates: {}", t.waiting(), t.duplicates);
        }
        let _ = writeln!(s, "  send → published: {}", g.publish_latency.line());
        if self.observes_outcomes {
            let _ = writeln!(s, "  send → enriched or dead-lettered: {}", g.end_to_end.line());
        }
        let kinds = g.by_name.len();
        let _ = writeln!(s, "  event types sent: {kinds}");
        s
    }
}

fn line(p: &Pending, detail: &str) -> String {
    let mut s = format!("{:>6}  {:<46}", p.seq, p.name);
    match p.answer {
        Some((status, latency)) if (200..300).contains(&status) => {
            let _ = write!(s, " published ({status}) in {:>6}", human(latency));
        }
        Some((0, latency)) => {
            let _ = write!(s, " NOT published: no answer after {} ({detail})", human(latency));
        }
        Some((status, latency)) => {
            let _ = write!(s, " NOT published: {status} in {} {detail}", human(latency));
        }
        None => s.push_str(" (no answer yet)"),
    }
    match &p.outcome {
        Some((Outcome::Enriched { status, attempts }, latency)) => {
            let plural = if *attempts == 1 { "" } else { "s" };
            let _ = write!(s, " → {status} in {:>6} ({attempts} attempt{plural})", human(*latency));
        }
        Some((Outcome::DeadLettered { kind, attempts }, latency)) => {
            let _ = write!(s, " → DEAD-LETTERED ({kind}, {attempts} attempts) in {}", human(*latency));
        }
        None => {}
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_five_percent() {
        let mut h = Histogram::default();
        for ms in 1..=1000 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile(0.5).expect("p50").as_secs_f64() * 1e3;
        let p99 = h.quantile(0.99).expect("p99").as_secs_f64() * 1e3;
        assert!((500.0..=525.0).contains(&p50), "{p50}");
        assert!((990.0..=1000.0).contains(&p99), "{p99}");
        assert_eq!(h.quantile(1.0), Some(Duration::from_millis(1000)));
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn an_event_completes_when_both_answer_and_outcome_are_in_whatever_their_order() {
        let t = Tracker::new(true, false);
        t.sent("a", "subscription-updated");
        t.sent("b", "referral-created");
        t.observed("a", Outcome::Enriched { status: "enriched".into(), attempts: 1 });
        t.answered("a", 200, "");
        t.answered("b", 200, "");
        assert_eq!(t.totals().waiting(), 1);
        t.observed("b", Outcome::DeadLettered { kind: "permanent".into(), attempts: 1 });
        t.observed("b", Outcome::DeadLettered { kind: "permanent".into(), attempts: 1 });
        let totals = t.totals();
        assert_eq!((totals.published, totals.waiting(), totals.duplicates), (2, 0, 1));
        assert!(t.summary().contains("dead-lettered: permanent 1"));
    }
}
