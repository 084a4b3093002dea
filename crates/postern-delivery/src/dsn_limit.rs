//! Bounces for mail that arrived without authentication are backscatter
//! when its sender was forged: whoever the spammer named gets our DSN.
//! Such DSNs carry the headers only (never the body a stranger sent) and
//! are rate-limited, per address they go to and in all; past the limit
//! the failure is recorded in the send log and no DSN is sent.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(3600);
/// Addresses tracked at most; past it the oldest windows are dropped, so
/// forged senders cannot grow the table without bound.
const MAX_TRACKED: usize = 100_000;

pub struct DsnLimiter {
    per_address: u32,
    total: u32,
    state: Mutex<State>,
}

struct State {
    window_start: Instant,
    sent: u32,
    by_address: HashMap<String, (Instant, u32)>,
}

impl DsnLimiter {
    /// At most `per_address` DSNs an hour to one address and `total` in all.
    pub fn new(per_address: u32, total: u32) -> Self {
        DsnLimiter {
            per_address,
            total,
            state: Mutex::new(State {
                window_start: Instant::now(),
                sent: 0,
                by_address: HashMap::new(),
            }),
        }
    }

    /// Whether a DSN to `to` may go now; counts it when it may.
    pub fn allow(&self, to: &str) -> bool {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now.duration_since(s.window_start) >= WINDOW {
            s.window_start = now;
            s.sent = 0;
        }
        if s.sent >= self.total {
            return false;
        }
        if s.by_address.len() >= MAX_TRACKED {
            s.by_address
                .retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if s.by_address.len() >= MAX_TRACKED {
                // Still full of live windows: a flood of distinct forged
                // senders; refusing is the safe answer.
                return false;
            }
        }
        let entry = s
            .by_address
            .entry(to.to_ascii_lowercase())
            .or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        if entry.1 >= self.per_address {
            return false;
        }
        entry.1 += 1;
        s.sent += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_address_and_in_all() {
        let l = DsnLimiter::new(2, 5);
        assert!(l.allow("a@x.example"));
        assert!(l.allow("A@X.example"));
        assert!(!l.allow("a@x.example"), "third to the same address");
        assert!(l.allow("b@x.example"));
        assert!(l.allow("c@x.example"));
        assert!(l.allow("d@x.example"));
        assert!(!l.allow("e@x.example"), "the total is spent");
    }
}
