//! Which Kafka offsets may be committed: per partition, the highest offset below which
//! every consumed message is done. Messages finish out of order (many are in flight at
//! once); the committed position must never pass one that is not finished, or a crash
//! would lose it.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Condvar, Mutex},
    time::{Duration, Instant},
};

type Partition = (String, i32);

#[derive(Default)]
struct State {
    /// Offsets handed out and not yet done.
    in_flight: BTreeSet<i64>,
    /// Highest offset handed out.
    highest: i64,
    /// Highest offset already reported as done-through.
    reported: i64,
}

/// Tracks consumed offsets until they are done.
#[derive(Default)]
pub(crate) struct OffsetTracker {
    partitions: Mutex<HashMap<Partition, State>>,
    /// Signalled whenever an offset is done, for [`OffsetTracker::wait_idle`].
    done: Condvar,
}

impl OffsetTracker {
    /// Records that `offset` was handed to the application.
    pub fn begin(&self, topic: &str, partition: i32, offset: i64) {
        let mut parts = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        let s = parts.entry((topic.to_string(), partition)).or_insert_with(|| State {
            in_flight: BTreeSet::new(),
            highest: offset - 1,
            reported: offset - 1,
        });
        s.in_flight.insert(offset);
        s.highest = s.highest.max(offset);
    }

    /// Records that `offset` is done. Returns the offset through which the partition is
    /// now entirely done, when that moved forward (the caller stores it for commit).
    pub fn done(&self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let mut parts = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        let s = parts.get_mut(&(topic.to_string(), partition))?;
        if !s.in_flight.remove(&offset) {
            return None;
        }
        let through = match s.in_flight.first() {
            Some(first) => first - 1,
            None => s.highest,
        };
        self.done.notify_all();
        (through > s.reported).then(|| {
            s.reported = through;
            through
        })
    }

    /// Waits until none of `partitions` has work in flight, or `timeout` passes.
    /// Returns whether they are idle.
    pub fn wait_idle(&self, partitions: &[Partition], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut parts = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let busy = partitions.iter().any(|p| parts.get(p).is_some_and(|s| !s.in_flight.is_empty()));
            let now = Instant::now();
            if !busy {
                return true;
            }
            if now >= deadline {
                return false;
            }
            parts = match self.done.wait_timeout(parts, deadline - now) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Forgets partitions (revoked): their late completions are ignored.
    pub fn forget(&self, partitions: &[Partition]) {
        let mut parts = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        for p in partitions {
            parts.remove(p);
        }
    }

    /// Forgets every partition (closing): nothing will finish any more.
    pub fn forget_all(&self) {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_passes_an_unfinished_offset() {
        let t = OffsetTracker::default();
        for o in 10..15 {
            t.begin("t", 0, o);
        }
        assert_eq!(t.done("t", 0, 12), None, "10 and 11 are not done");
        assert_eq!(t.done("t", 0, 11), None);
        assert_eq!(t.done("t", 0, 10), Some(12));
        assert_eq!(t.done("t", 0, 14), None, "13 is not done");
        assert_eq!(t.done("t", 0, 13), Some(14));
        assert_eq!(t.done("t", 0, 13), None, "twice is nothing");
        assert_eq!(t.done("t", 1, 1), None, "unknown partition");
        assert!(t.wait_idle(&[("t".to_string(), 0)], Duration::ZERO), "nothing left in flight");
    }

    #[test]
    fn waits_for_in_flight_and_forgets() {
        let t = std::sync::Arc::new(OffsetTracker::default());
        t.begin("t", 0, 5);
        let p = vec![("t".to_string(), 0)];
        assert!(!t.wait_idle(&p, Duration::from_millis(20)));
        let t2 = t.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            t2.done("t", 0, 5)
        });
        assert!(t.wait_idle(&p, Duration::from_secs(5)));
        assert_eq!(h.join().unwrap(), Some(5));
        t.begin("t", 0, 6);
        t.forget(&p);
        assert_eq!(t.done("t", 0, 6), None);
    }
}
