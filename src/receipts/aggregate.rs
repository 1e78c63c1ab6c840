//! Receipt aggregation without IO: changes are noted as they happen and released per key at
//! most once per interval, so a storm (a thousand members reading a room at once) becomes one
//! update per room per interval listing every member that moved, not one frame per read per
//! member. `now` is passed in; the service's ticker calls [`Aggregator::due`].

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

struct Pending {
    /// What changed since the last release.
    changed: BTreeSet<String>,
    /// When the key was last released.
    last: Option<u64>,
}

pub struct Aggregator<K> {
    interval_ms: u64,
    keys: HashMap<K, Pending>,
}

impl<K: Hash + Eq + Clone> Aggregator<K> {
    pub fn new(interval_ms: u64) -> Self {
        Aggregator { interval_ms: interval_ms.max(1), keys: HashMap::new() }
    }

    /// `item` of `key` changed.
    pub fn note(&mut self, key: &K, item: &str) {
        let pending = self.keys.entry(key.clone()).or_insert_with(|| Pending { changed: BTreeSet::new(), last: None });
        if !pending.changed.contains(item) {
            pending.changed.insert(item.to_owned());
        }
    }

    /// The keys to release now, with what changed: those with changes whose last release is at
    /// least an interval ago. Keys quiet for an interval are forgotten.
    pub fn due(&mut self, now_ms: u64) -> Vec<(K, Vec<String>)> {
        let interval = self.interval_ms;
        let mut out = Vec::new();
        self.keys.retain(|key, pending| {
            let ready = pending.last.is_none_or(|last| now_ms >= last.saturating_add(interval));
            if !ready {
                return true;
            }
            if pending.changed.is_empty() {
                return false;
            }
            out.push((key.clone(), std::mem::take(&mut pending.changed).into_iter().collect()));
            pending.last = Some(now_ms);
            true
        });
        out
    }

    /// Whether `key` has changes waiting.
    pub fn holds(&self, key: &K) -> bool {
        self.keys.get(key).is_some_and(|p| !p.changed.is_empty())
    }

    /// Keys with changes waiting.
    pub fn pending(&self) -> usize {
        self.keys.values().filter(|p| !p.changed.is_empty()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1,000 members reading one room over 2 s, polled every 10 ms: at most one release per
    /// interval (plus the first), and every member is in one of them.
    #[test]
    fn a_read_storm_is_released_at_most_once_per_interval() {
        let interval = 250;
        let mut agg = Aggregator::new(interval);
        let mut releases = 0;
        let mut seen = BTreeSet::new();
        for t in 0..=2_000u64 {
            // Every millisecond, half a member reads.
            if t % 2 == 0 && t / 2 < 1_000 {
                agg.note(&"room", &format!("user{}", t / 2));
            }
            if t % 10 == 0 {
                for (_, users) in agg.due(t) {
                    releases += 1;
                    seen.extend(users);
                }
            }
        }
        for (_, users) in agg.due(10_000) {
            releases += 1;
            seen.extend(users);
        }
        assert_eq!(seen.len(), 1_000, "every read is released");
        // 2 s of reads at one release per 250 ms: 9 at most, plus the final flush.
        assert!(releases <= 2_000 / interval as usize + 2, "{releases} releases");
        assert_eq!(agg.pending(), 0);
    }

    #[test]
    fn a_quiet_key_is_released_at_once_then_waits_an_interval() {
        let mut agg = Aggregator::new(100);
        agg.note(&1, "a");
        assert_eq!(agg.due(1_000), vec![(1, vec!["a".to_owned()])]);
        agg.note(&1, "b");
        agg.note(&1, "b");
        assert!(agg.due(1_050).is_empty(), "within the interval");
        assert_eq!(agg.due(1_100), vec![(1, vec!["b".to_owned()])]);
        assert!(agg.due(1_300).is_empty());
        assert!(agg.keys.is_empty(), "forgotten once quiet");
    }
}
