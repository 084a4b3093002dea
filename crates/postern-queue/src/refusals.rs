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
//! knocking.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use postern_core::{AttemptInfo, Event, EventKind, MessageId};
use postern_store::QueueStore;

/// Sustained refusal events written per second, all clients together.
const PER_SECOND: f64 = 20.0;
/// Refusal events written in a burst above that rate.
const BURST: f64 = 500.0;

struct Bucket {
    tokens: f64,
    last: Instant,
}

pub(crate) struct RefusalLog {
    store: Arc<dyn QueueStore>,
    bucket: Mutex<Bucket>,
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
            bucket: Mutex::new(Bucket {
                tokens: burst,
                last: Instant::now(),
            }),
            per_second,
            burst,
        }
    }

    fn take(&self) -> bool {
        let Ok(mut b) = self.bucket.lock() else {
            return false;
        };
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() * self.per_second;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
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
        if !self.take() {
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
}
