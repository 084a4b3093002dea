//! The screening lookups' cache: answers kept for a bounded time (longer
//! for answers that name something than for empty ones) and in bounded
//! number, so a flood of new clients cannot grow it without limit.
//! Failed and timed-out lookups are never kept: the next client asks again.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub struct TtlCache<K, V> {
    positive_ttl: Duration,
    negative_ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(positive_ttl: Duration, negative_ttl: Duration, capacity: usize) -> Self {
        TtlCache {
            positive_ttl,
            negative_ttl,
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The kept answer, unless it has expired.
    pub fn get(&self, key: &K) -> Option<V> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(key) {
            Some((until, v)) if *until > Instant::now() => Some(v.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `value` for the positive or the negative time to live.
    pub fn put(&self, key: K, value: V, positive: bool) {
        let ttl = if positive {
            self.positive_ttl
        } else {
            self.negative_ttl
        };
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, (until, _)| *until > now);
            if entries.len() >= self.capacity {
                // Still full of live answers: the eighth that expires
                // soonest goes, so this sweep runs once per capacity/8
                // insertions rather than on each.
                let mut expiries: Vec<Instant> = entries.values().map(|(u, _)| *u).collect();
                let cut = (self.capacity / 8).max(1).min(expiries.len()) - 1;
                let (_, boundary, _) = expiries.select_nth_unstable(cut);
                let boundary = *boundary;
                entries.retain(|_, (until, _)| *until > boundary);
            }
        }
        entries.insert(key, (now + ttl, value));
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(capacity: usize) -> TtlCache<u32, &'static str> {
        TtlCache::new(Duration::from_secs(600), Duration::from_secs(60), capacity)
    }

    /// On a paused clock: an empty answer is gone after the negative time
    /// to live, one that names something only after the positive one, and
    /// each is still there just before its end.
    #[tokio::test(start_paused = true)]
    async fn answers_expire_after_their_time_to_live() {
        let c = cache(10);
        c.put(1, "listed", true);
        c.put(2, "", false);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(c.get(&1), Some("listed"));
        assert_eq!(c.get(&2), Some(""));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(c.get(&2), None, "negative answer kept past 60 s");
        assert_eq!(c.get(&1), Some("listed"));
        tokio::time::advance(Duration::from_secs(538)).await;
        assert_eq!(c.get(&1), Some("listed"), "599 s: still inside 600 s");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(c.get(&1), None, "positive answer kept past 600 s");
        assert!(c.is_empty(), "expired entries are removed when met");
    }

    /// Full: expired answers go first; if none has expired, the ones that
    /// expire soonest go; the cache never holds more than its capacity.
    #[tokio::test(start_paused = true)]
    async fn the_number_of_answers_is_bounded() {
        let c = cache(16);
        for k in 0..8 {
            c.put(k, "neg", false);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        for k in 8..16 {
            c.put(k, "pos", true);
        }
        assert_eq!(c.len(), 16);
        tokio::time::advance(Duration::from_secs(61)).await;
        c.put(100, "new", true);
        assert_eq!(c.len(), 9, "the 8 expired answers made room");
        for k in 200..207 {
            c.put(k, "pos", true);
        }
        assert_eq!(c.len(), 16);
        // None expired: the soonest to expire (8..16, put first) go.
        c.put(300, "pos", true);
        assert!(c.len() <= 16, "{}", c.len());
        assert_eq!(c.get(&8), None, "the oldest live answer was evicted");
        assert_eq!(c.get(&300), Some("pos"));
        assert_eq!(c.get(&206), Some("pos"), "the newest stay");
        for k in 0..10_000 {
            c.put(1000 + k, "pos", true);
            assert!(c.len() <= 16);
        }
    }
}
