//! Recently finished event ids, so a duplicate delivery within the window (Partner
//! Center retries, broker redeliveries) is not enriched and published twice. Per worker
//! replica and in memory: duplicates across replicas or restarts still reach consumers,
//! which deduplicate on `pc-event-id`.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

pub struct Dedup {
    window: Duration,
    max_entries: usize,
    seen: HashMap<String, Instant>,
    /// Insertion order, for expiry and the size bound.
    order: VecDeque<(Instant, String)>,
}

impl Dedup {
    pub fn new(window: Duration, max_entries: usize) -> Self {
        Self { window, max_entries, seen: HashMap::new(), order: VecDeque::new() }
    }

    /// Whether `id` finished within the window.
    pub fn contains(&mut self, id: &str) -> bool {
        self.expire(Instant::now());
        self.seen.contains_key(id)
    }

    pub fn insert(&mut self, id: &str) {
        if self.window.is_zero() || self.max_entries == 0 {
            return;
        }
        let now = Instant::now();
        self.expire(now);
        while self.seen.len() >= self.max_entries {
            match self.order.pop_front() {
                Some((_, old)) => {
                    self.seen.remove(&old);
                }
                None => break,
            }
        }
        if self.seen.insert(id.to_string(), now).is_none() {
            self.order.push_back((now, id.to_string()));
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < self.window {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.seen.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_within_the_window_and_bound() {
        let mut d = Dedup::new(Duration::from_millis(50), 2);
        d.insert("a");
        assert!(d.contains("a"));
        d.insert("b");
        d.insert("c");
        assert!(!d.contains("a"), "bounded to 2 entries");
        assert!(d.contains("b") && d.contains("c"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!d.contains("b"), "expired");
    }
}
