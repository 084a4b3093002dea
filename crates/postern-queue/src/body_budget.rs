//! One budget for the message bytes every door holds in memory at once.
//!
//! Each SMTP transaction and each `/v3/mail/send` request keeps its message
//! in RAM until the store has it (at most `limits.max_message_size` each).
//! Without a shared bound, 200 connections per address × 25 MiB would be
//! 5 GiB from one client. Every body in flight therefore holds a lease on
//! this budget, grown as the body grows; when the budget is spent, the door
//! refuses the transaction with a temporary error (`452 4.3.1` in SMTP, 503
//! over HTTP) and reads the rest of the body only to discard it, so memory
//! stays at the budget plus small read buffers whatever clients send.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Leases grow in steps of this many bytes, so a growing body touches the
/// shared counter once per step, not once per read.
const STEP: usize = 64 * 1024;

#[derive(Debug)]
struct Counter {
    limit: usize,
    used: AtomicUsize,
}

/// The shared budget. Cloning shares it.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    counter: Arc<Counter>,
}

/// Bytes one body holds of the budget; given back when dropped.
#[derive(Debug)]
pub struct BodyLease {
    counter: Arc<Counter>,
    held: usize,
}

impl BodyBudget {
    pub fn new(limit_bytes: usize) -> Self {
        metrics::gauge!("postern_body_budget_bytes").set(limit_bytes as f64);
        BodyBudget {
            counter: Arc::new(Counter {
                limit: limit_bytes,
                used: AtomicUsize::new(0),
            }),
        }
    }

    /// A lease holding nothing yet.
    pub fn lease(&self) -> BodyLease {
        BodyLease {
            counter: self.counter.clone(),
            held: 0,
        }
    }

    /// Whether `bytes` more could be leased now: a door asks before it
    /// starts a transaction, so a full budget refuses early (at MAIL or
    /// before the body is sent) rather than half-way through a body.
    pub fn has_room(&self, bytes: usize) -> bool {
        self.counter
            .used
            .load(Ordering::Relaxed)
            .saturating_add(bytes)
            <= self.counter.limit
    }

    pub fn in_use(&self) -> usize {
        self.counter.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.counter.limit
    }
}

impl BodyLease {
    /// Grows the lease to cover a body of `len` bytes. False (and nothing
    /// taken) when the budget cannot cover it.
    #[must_use]
    pub fn cover(&mut self, len: usize) -> bool {
        if len <= self.held {
            return true;
        }
        let want = len.div_ceil(STEP).saturating_mul(STEP);
        let more = want - self.held;
        let c = &self.counter;
        let taken = c
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let next = used.checked_add(more)?;
                (next <= c.limit).then_some(next)
            })
            .is_ok();
        if taken {
            self.held = want;
            metrics::gauge!("postern_body_budget_in_use_bytes")
                .set(c.used.load(Ordering::Relaxed) as f64);
        }
        taken
    }

    /// Gives back everything (the body was dropped or stored).
    pub fn release(&mut self) {
        if self.held > 0 {
            let c = &self.counter;
            c.used.fetch_sub(self.held, Ordering::AcqRel);
            self.held = 0;
            metrics::gauge!("postern_body_budget_in_use_bytes")
                .set(c.used.load(Ordering::Relaxed) as f64);
        }
    }

    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for BodyLease {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_grow_in_steps_and_never_pass_the_limit() {
        let b = BodyBudget::new(4 * STEP);
        let mut one = b.lease();
        assert!(one.cover(1));
        assert_eq!(one.held(), STEP);
        assert!(one.cover(STEP + 1));
        assert_eq!(b.in_use(), 2 * STEP);
        let mut two = b.lease();
        assert!(two.cover(2 * STEP));
        assert!(!two.cover(2 * STEP + 1), "the budget is spent");
        assert_eq!(b.in_use(), 4 * STEP, "a refused cover takes nothing");
        assert!(!b.has_room(1));
        drop(one);
        assert_eq!(b.in_use(), 2 * STEP);
        assert!(two.cover(4 * STEP));
        two.release();
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn concurrent_leases_stay_within_the_limit() {
        let b = BodyBudget::new(10 * STEP);
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut max = 0;
                    for _ in 0..1000 {
                        let mut l = b.lease();
                        if l.cover(3 * STEP) {
                            max = max.max(b.in_use());
                        }
                    }
                    max
                })
            })
            .collect();
        for h in handles {
            assert!(h.join().unwrap() <= 10 * STEP);
        }
        assert_eq!(b.in_use(), 0);
    }
}
