//! `refused` events: what an `mx` listener turned away before any message
//! was accepted (a screened client, a recipient at RCPT, a message whose
//! checks had no answer), so the send log shows every decision, not only
//! those about accepted mail.
//!
//! Refusals are what a hostile client produces at will, so they are
//! written at a bounded rate: a token bucket lets bursts through and
//! holds the sustained rate at `PER_SECOND`; past it a refusal is only
//! logged and counted (`postern_refusal_events_skipped_total`). The
//! store's writer and disk then never work harder because someone is
//! knocking. Each client network (IPv4 /24, IPv6 /48) has a smaller bucket
//! of its own first, so one noisy network cannot spend the whole budget
//! and hide everyone else's refusals from the log.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use postern_core::{AttemptInfo, Event, EventKind, MessageId};
use postern_store::QueueStore;

/// Sustained refusal events written per second, all clients together.
const PER_SECOND: f64 = 20.0;
/// Refusal events written in a burst above that rate.
const BURST: f64 = 500.0;
/// The same, per client network.
const NETWORK_PER_SECOND: f64 = 1.0;
const NETWORK_BURST: f64 = 50.0;
/// Networks tracked at once; past it the table starts afresh (a client
/// spreading over more networks than this gets a fresh small bucket per
/// network, and the global bucket still holds).
const MAX_NETWORKS: usize = 10_000;

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(tokens: f64) -> Self {
        Bucket {
            tokens,
            last: Instant::now(),
        }
    }

    /// One token, after refilling at `per_second` up to `burst`.
    fn take(&mut self, per_second: f64, burst: f64) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * per_second;
        self.tokens = (self.tokens + refill).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The network a client is counted under: its /24 (IPv4) or /48 (IPv6).
fn network_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], 0, 0, 0, 0, 0])
        }
    }
}

pub(crate) struct RefusalLog {
    store: Arc<dyn QueueStore>,
    bucket: Mutex<Bucket>,
    networks: Mutex<HashMap<IpAddr, Bucket>>,
    per_second: f64,
    burst: f64,
}

impl RefusalLog {
    pub(crate) fn new(store: Arc<dyn QueueStore>) -> Self {
        Self::with_rate(store, PER_SECOND, BURST)
    }

    fn with_rate(store: Arc<dyn QueueStore>, per_second: f64, burst: f64) -> Self {
        RefusalLog {
            store,
            bucket: Mutex::new(Bucket::full(burst)),
            networks: Mutex::new(HashMap::new()),
            per_second,
            burst,
        }
    }

    /// A token of the client's network, then one of everyone's.
    fn take(&self, client: IpAddr) -> bool {
        {
            let Ok(mut networks) = self.networks.lock() else {
                return false;
            };
            if networks.len() >= MAX_NETWORKS {
                networks.clear();
            }
            let own = networks
                .entry(network_of(client))
                .or_insert_with(|| Bucket::full(NETWORK_BURST));
            if !own.take(NETWORK_PER_SECOND, NETWORK_BURST) {
                return false;
            }
        }
        let Ok(mut b) = self.bucket.lock() else {
            return false;
        };
        b.take(self.per_second, self.burst)
    }

    /// Records one refusal of `session` (the SMTP session's id) from
    /// `client`: `detail` is the reply the client was given and why.
    /// Never fails the caller: the client has its answer either way.
    pub(crate) async fn record(
        &self,
        session: &MessageId,
        client: IpAddr,
        recipient: Option<String>,
        detail: &str,
    ) {
        if !self.take(client) {
            metrics::counter!("postern_refusal_events_skipped_total").increment(1);
            return;
        }
        let event = Event {
            seq: 0,
            at_millis: postern_core::time::now_millis(),
            message_id: session.to_string(),
            kind: EventKind::Refused,
            recipient,
            detail: format!("client={client} {detail}"),
            account: None,
            info: AttemptInfo::default(),
        };
        if let Err(e) = self.store.record_refusal(event).await {
            tracing::warn!(error = %e, "refused event not recorded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_store::{EmbeddedStore, EventFilter, EventStore};

    #[tokio::test]
    async fn refusals_are_events_until_the_burst_is_spent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        // 2 a second, bursts of 10 (the real rate, 20 and 500, would make
        // this test write 500 events).
        let (per_second, burst) = (2.0, 10.0);
        let log = RefusalLog::with_rate(store.clone(), per_second, burst);
        let session = MessageId::generate();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        log.record(
            &session,
            ip,
            Some("nobody@relay.test".into()),
            "550 5.1.1 No such recipient here",
        )
        .await;
        let events = store
            .events(EventFilter {
                kinds: vec![EventKind::Refused],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].message_id, session.to_string());
        assert_eq!(events[0].recipient.as_deref(), Some("nobody@relay.test"));
        assert_eq!(
            events[0].detail,
            "client=192.0.2.7 550 5.1.1 No such recipient here"
        );
        assert_eq!(events[0].account, None);

        // A flood: the burst is written, then the rate holds. Well under a
        // second passes here, so at most a few tokens come back.
        let started = Instant::now();
        for _ in 0..40 {
            log.record(&session, ip, None, "554 5.7.1 listed").await;
        }
        let allowed = burst + started.elapsed().as_secs_f64() * per_second;
        let written = store
            .events(EventFilter {
                kinds: vec![EventKind::Refused],
                limit: Some(10_000),
                ..Default::default()
            })
            .await
            .unwrap()
            .len();
        assert!(
            written as f64 <= allowed,
            "{written} written, {allowed} allowed"
        );
        assert!(written >= burst as usize, "{written}");
        assert!(written < 41, "the flood was held back: {written}");
    }

    #[tokio::test]
    async fn one_network_cannot_spend_everyone_s_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let log = RefusalLog::new(store.clone());
        let session = MessageId::generate();
        let noisy: IpAddr = "192.0.2.7".parse().unwrap();
        // Well under a second: the noisy /24 gets its burst and about
        // nothing more, whichever of its addresses it uses.
        let started = Instant::now();
        for i in 0..(NETWORK_BURST as usize + 30) {
            let ip = IpAddr::from([192, 0, 2, (i % 250) as u8 + 1]);
            log.record(&session, ip, None, "550 5.7.1 Relaying denied")
                .await;
        }
        let allowed = NETWORK_BURST + started.elapsed().as_secs_f64() * NETWORK_PER_SECOND;
        let quiet: IpAddr = "198.51.100.9".parse().unwrap();
        log.record(&session, quiet, None, "554 5.7.1 listed").await;
        let events = store
            .events(EventFilter {
                kinds: vec![EventKind::Refused],
                limit: Some(10_000),
                ..Default::default()
            })
            .await
            .unwrap();
        let from_noisy = events
            .iter()
            .filter(|e| e.detail.starts_with("client=192.0.2."))
            .count();
        assert!(from_noisy >= NETWORK_BURST as usize, "{from_noisy}");
        assert!(from_noisy as f64 <= allowed, "{from_noisy} > {allowed}");
        assert!(
            events
                .iter()
                .any(|e| e.detail == "client=198.51.100.9 554 5.7.1 listed"),
            "another network's refusal is still written"
        );
        assert_eq!(
            network_of(noisy),
            network_of("192.0.2.200".parse().unwrap())
        );
        assert_eq!(
            network_of("2001:db8:1:2::5".parse().unwrap()),
            network_of("2001:db8:1:ffff::9".parse().unwrap())
        );
        assert_ne!(
            network_of("2001:db8:1::5".parse().unwrap()),
            network_of("2001:db8:2::5".parse().unwrap())
        );
    }
}
