//! Recipient checks at RCPT by asking the next hop (`relay.recipient_check
//! = "callahead"`): the `mx` listener takes a recipient at a relay domain
//! only if the internal server that owns the domain would take it, so
//! mail to unknown users is refused while the sender is still connected
//! instead of bounced later to a sender that may be forged.
//!
//! The answer comes from the delivery client (same route, TLS policy and
//! credentials as delivery; MAIL FROM:<> and RCPT TO, then RSET, no
//! message), and is cached: accepted addresses for `relay.callahead_cache`,
//! refused ones for a tenth of it (a new mailbox appears soon enough), and
//! failures to get an answer not at all.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postern_delivery::outcome::Outcome;
use postern_delivery::route::{Destination, Router};
use postern_delivery::SmtpClient;
use postern_smtp::{RecipientVerdict, RecipientVerifier};

/// Addresses cached at most; past it expired entries go, then all.
const MAX_CACHED: usize = 100_000;
/// Call-aheads in progress at once: each is an outbound session to the
/// internal server, started by a stranger's RCPT, so they are capped; past
/// the cap a recipient gets "try again later" rather than a new session.
const MAX_CONCURRENT: usize = 32;

pub struct CallAhead {
    client: Arc<SmtpClient>,
    router: Router,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, bool)>>,
    slots: tokio::sync::Semaphore,
}

impl CallAhead {
    pub fn new(client: Arc<SmtpClient>, router: Router, ttl: Duration) -> Self {
        CallAhead {
            client,
            router,
            ttl,
            cache: Mutex::new(HashMap::new()),
            slots: tokio::sync::Semaphore::new(MAX_CONCURRENT),
        }
    }

    fn cached(&self, key: &str) -> Option<bool> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(key)
            .filter(|(until, _)| *until > Instant::now())
            .map(|(_, ok)| *ok)
    }

    fn remember(&self, key: String, ok: bool) {
        let ttl = if ok { self.ttl } else { self.ttl / 10 };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED {
            let now = Instant::now();
            cache.retain(|_, (until, _)| *until > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(key, (Instant::now() + ttl, ok));
    }

    async fn check(&self, address: &str) -> RecipientVerdict {
        // The domain is case-insensitive, the local part may not be (RFC
        // 5321 §2.4): only the domain is folded, so one spelling's answer
        // is never taken for another's.
        let key = match address.rsplit_once('@') {
            Some((local, domain)) => format!("{local}@{}", domain.to_lowercase()),
            None => address.to_owned(),
        };
        if let Some(ok) = self.cached(&key) {
            metrics::counter!("postern_callahead_total", "result" => "cached").increment(1);
            return verdict(ok);
        }
        let Ok(_slot) = self.slots.try_acquire() else {
            metrics::counter!("postern_callahead_total", "result" => "busy").increment(1);
            return RecipientVerdict::TryLater("too many recipient checks in progress".into());
        };
        let domain = key.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
        let Destination::Static(route) = self.router.route(domain) else {
            // Config validation requires a route for every relay domain
            // with call-ahead; asking the domain's MX would ask ourselves.
            return RecipientVerdict::TryLater(format!("no route for {domain}"));
        };
        match self.client.probe_recipient(&route, address).await {
            Outcome::Delivered(_) => {
                metrics::counter!("postern_callahead_total", "result" => "accepted").increment(1);
                self.remember(key, true);
                RecipientVerdict::Accept
            }
            Outcome::Permanent(why) => {
                metrics::counter!("postern_callahead_total", "result" => "refused").increment(1);
                self.remember(key, false);
                RecipientVerdict::Refuse(why)
            }
            Outcome::Transient(why) => {
                metrics::counter!("postern_callahead_total", "result" => "unavailable")
                    .increment(1);
                RecipientVerdict::TryLater(why)
            }
        }
    }
}

fn verdict(ok: bool) -> RecipientVerdict {
    if ok {
        RecipientVerdict::Accept
    } else {
        RecipientVerdict::Refuse("refused by the next hop (cached)".into())
    }
}

impl RecipientVerifier for CallAhead {
    fn verify<'a>(
        &'a self,
        address: &'a str,
    ) -> Pin<Box<dyn Future<Output = RecipientVerdict> + Send + 'a>> {
        Box::pin(self.check(address))
    }
}
