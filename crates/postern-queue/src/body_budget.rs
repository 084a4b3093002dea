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
//!
//! A bound on the total alone would let one client spend all of it: slow
//! uploads hold their leases until the data timeout, and every other
//! client would get `452` meanwhile. Each lease therefore also counts
//! against its holder's share (`limits.body_memory_per_client`): an
//! authenticated account, or for unauthenticated mail the client's
//! network (/24, /64), so one tenant or one network never holds more than
//! that share while others wait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use postern_core::network::{counting_network, IpNet};

/// Leases grow in steps of this many bytes, so a growing body touches the
/// shared counter once per step, not once per read.
const STEP: usize = 64 * 1024;

#[derive(Debug)]
struct Counter {
    limit: usize,
    used: AtomicUsize,
    /// Most any one holder may hold.
    share: usize,
    /// What each holder holds now; an entry exists only while it holds
    /// something, so the map is never larger than the leases alive.
    held_by: Mutex<HashMap<Holder, usize>>,
}

/// Whom a lease's bytes are counted against, besides the whole budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Holder {
    /// An authenticated account, by its permanent id.
    Account(i64),
    /// An unauthenticated client, by its counting network.
    Network(IpNet),
    /// Postern itself (bounces it builds): only the total applies.
    Server,
}

impl Holder {
    pub fn network_of(ip: std::net::IpAddr) -> Self {
        Holder::Network(counting_network(ip))
    }
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
    holder: Holder,
    held: usize,
}

impl BodyBudget {
    /// A budget of `limit_bytes` in which no one holder holds more than
    /// `share_bytes` (clamped to the limit).
    pub fn new(limit_bytes: usize, share_bytes: usize) -> Self {
        metrics::gauge!("postern_body_budget_bytes").set(limit_bytes as f64);
        BodyBudget {
            counter: Arc::new(Counter {
                limit: limit_bytes,
                used: AtomicUsize::new(0),
                share: share_bytes.min(limit_bytes),
                held_by: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A lease holding nothing yet, counted against `holder`'s share.
    pub fn lease(&self, holder: Holder) -> BodyLease {
        BodyLease {
            counter: self.counter.clone(),
            holder,
            held: 0,
        }
    }

    /// Whether `bytes` more could be leased now by `holder`: a door asks
    /// before it starts a transaction, so a full budget (or share) refuses
    /// early (at MAIL or before the body is sent) rather than half-way
    /// through a body.
    pub fn has_room(&self, holder: Holder, bytes: usize) -> bool {
        let c = &self.counter;
        if c.used.load(Ordering::Relaxed).saturating_add(bytes) > c.limit {
            return false;
        }
        holder == Holder::Server || c.holding(holder).saturating_add(bytes) <= c.share
    }

    /// What `holder` holds now.
    pub fn held_by(&self, holder: Holder) -> usize {
        self.counter.holding(holder)
    }

    pub fn in_use(&self) -> usize {
        self.counter.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.counter.limit
    }
}

impl Counter {
    fn holders(&self) -> std::sync::MutexGuard<'_, HashMap<Holder, usize>> {
        // The map holds plain counts: a panic elsewhere cannot leave it
        // half-updated, so a poisoned lock is still sound to use.
        self.held_by.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn holding(&self, holder: Holder) -> usize {
        self.holders().get(&holder).copied().unwrap_or(0)
    }

    /// Takes `more` bytes of the total, all or nothing.
    fn take(&self, more: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let next = used.checked_add(more)?;
                (next <= self.limit).then_some(next)
            })
            .is_ok()
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
        let refused_by = if self.holder == Holder::Server {
            (!c.take(more)).then_some("total")
        } else {
            // The share is checked and taken under the map's lock, so two
            // leases of one holder cannot both slip under it. A holder's
            // only lease may always grow to one whole message (the share
            // is at least the largest message); only the total stops it.
            let mut holders = c.holders();
            let mine = holders.get(&self.holder).copied().unwrap_or(0);
            if mine != self.held && mine.saturating_add(more) > c.share {
                Some("share")
            } else if !c.take(more) {
                Some("total")
            } else {
                holders.insert(self.holder, mine + more);
                None
            }
        };
        let taken = refused_by.is_none();
        if let Some(by) = refused_by {
            metrics::counter!("postern_body_budget_refused_total", "by" => by).increment(1);
        }
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
            if self.holder != Holder::Server {
                let mut holders = c.holders();
                if let Some(mine) = holders.get_mut(&self.holder) {
                    *mine = mine.saturating_sub(self.held);
                    if *mine == 0 {
                        holders.remove(&self.holder);
                    }
                }
            }
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
        let b = BodyBudget::new(4 * STEP, 4 * STEP);
        let mut one = b.lease(Holder::Server);
        assert!(one.cover(1));
        assert_eq!(one.held(), STEP);
        assert!(one.cover(STEP + 1));
        assert_eq!(b.in_use(), 2 * STEP);
        let mut two = b.lease(Holder::Server);
        assert!(two.cover(2 * STEP));
        assert!(!two.cover(2 * STEP + 1), "the budget is spent");
        assert_eq!(b.in_use(), 4 * STEP, "a refused cover takes nothing");
        assert!(!b.has_room(Holder::Server, 1));
        drop(one);
        assert_eq!(b.in_use(), 2 * STEP);
        assert!(two.cover(4 * STEP));
        two.release();
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn concurrent_leases_stay_within_the_limit() {
        let b = BodyBudget::new(10 * STEP, 10 * STEP);
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut max = 0;
                    for _ in 0..1000 {
                        let mut l = b.lease(Holder::Account(i % 3));
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

    fn network(s: &str) -> Holder {
        Holder::network_of(s.parse().unwrap())
    }

    /// One holder (a network of slow uploads, or one tenant) stops at its
    /// share while another still gets room; its one lease may always hold
    /// a whole message; the share frees as its leases end.
    #[test]
    fn one_holder_stops_at_its_share_and_others_keep_room() {
        let b = BodyBudget::new(16 * STEP, 4 * STEP);
        let slow = network("192.0.2.10");
        assert_eq!(slow, network("192.0.2.200"), "a /24 is one holder");
        let mut leases: Vec<_> = (0..4).map(|_| b.lease(slow)).collect();
        for l in &mut leases {
            assert!(l.cover(STEP));
        }
        assert_eq!(b.held_by(slow), 4 * STEP);
        let mut fifth = b.lease(slow);
        assert!(!fifth.cover(1), "the share is spent");
        assert!(!b.has_room(slow, 1));
        assert!(!leases[0].cover(2 * STEP), "nor may a lease grow past it");
        assert_eq!(b.held_by(slow), 4 * STEP, "refusals take nothing");

        let other = Holder::Account(7);
        assert!(b.has_room(other, 4 * STEP));
        let mut theirs = b.lease(other);
        assert!(theirs.cover(4 * STEP));
        assert!(b.has_room(network("198.51.100.1"), STEP));
        assert_eq!(b.in_use(), 8 * STEP);

        leases.clear();
        assert_eq!(b.held_by(slow), 0);
        assert!(fifth.cover(3 * STEP));
        // Alone, a holder's lease grows past the share (a share is at least
        // one largest message); only the total bounds it.
        assert!(fifth.cover(12 * STEP));
        assert!(!fifth.cover(13 * STEP), "the total still applies");
        drop(fifth);
        drop(theirs);
        assert_eq!(b.in_use(), 0);
        assert!(
            b.counter.holders().is_empty(),
            "no entry outlives its leases"
        );
    }

    /// Many threads of one holder racing never hold more than the share
    /// together (beyond one lone lease).
    #[test]
    fn a_share_holds_under_concurrency() {
        let b = BodyBudget::new(100 * STEP, 6 * STEP);
        let peak = std::sync::Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (b, peak) = (b.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        let mut l = b.lease(Holder::Account(1));
                        if l.cover(2 * STEP) {
                            peak.fetch_max(b.held_by(Holder::Account(1)), Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= 6 * STEP);
        assert_eq!(b.in_use(), 0);
    }
}
