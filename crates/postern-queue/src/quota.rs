//! Per-account sending limits: each account (and each subuser) has its own
//! hourly message limit, so one stream's volume never eats another's.
//!
//! Counted in memory in fixed one-hour windows, which is exact for one node;
//! with several nodes each enforces the limit on its own share (the shared
//! PostgreSQL store will hold the counters). Limits are read from the store
//! and cached briefly, so a change takes effect within `LIMIT_CACHE`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postern_store::{AccountStore, StoreError};

const WINDOW: Duration = Duration::from_secs(3600);
const LIMIT_CACHE: Duration = Duration::from_secs(5);

#[derive(Debug, PartialEq, Eq)]
pub enum QuotaCheck {
    Allowed,
    /// The account has used its hourly limit; retry after this long.
    Exceeded {
        limit: u32,
        retry_after: Duration,
    },
}

struct Usage {
    window_start: Instant,
    count: u32,
}

/// When each account's limit was read, and what it was.
type LimitCache = HashMap<String, (Instant, Option<u32>)>;

#[derive(Clone)]
pub struct Quotas {
    store: Arc<dyn AccountStore>,
    limits: Arc<Mutex<LimitCache>>,
    usage: Arc<Mutex<HashMap<String, Usage>>>,
}

impl Quotas {
    pub fn new(store: Arc<dyn AccountStore>) -> Self {
        Quotas {
            store,
            limits: Arc::default(),
            usage: Arc::default(),
        }
    }

    async fn limit(&self, account: &str) -> Result<Option<u32>, StoreError> {
        let now = Instant::now();
        if let Some((at, limit)) = self
            .limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(account)
        {
            if now.duration_since(*at) < LIMIT_CACHE {
                return Ok(*limit);
            }
        }
        let limit = self
            .store
            .get_account(account.to_owned())
            .await?
            .and_then(|a| a.max_messages_per_hour);
        self.limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(account.to_owned(), (now, limit));
        Ok(limit)
    }

    /// Whether `account` may send `n` more messages now (nothing is counted).
    pub async fn check(&self, account: &str, n: u32) -> Result<QuotaCheck, StoreError> {
        let Some(limit) = self.limit(account).await? else {
            return Ok(QuotaCheck::Allowed);
        };
        let now = Instant::now();
        let usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let (used, retry_after) = match usage.get(account) {
            Some(u) if now.duration_since(u.window_start) < WINDOW => {
                (u.count, WINDOW - now.duration_since(u.window_start))
            }
            _ => (0, Duration::ZERO),
        };
        if used.saturating_add(n) > limit {
            return Ok(QuotaCheck::Exceeded { limit, retry_after });
        }
        Ok(QuotaCheck::Allowed)
    }

    /// Counts `n` messages accepted for `account`.
    pub fn record(&self, account: &str, n: u32) {
        let now = Instant::now();
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let u = usage.entry(account.to_owned()).or_insert(Usage {
            window_start: now,
            count: 0,
        });
        if now.duration_since(u.window_start) >= WINDOW {
            u.window_start = now;
            u.count = 0;
        }
        u.count = u.count.saturating_add(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_store::{AccountRecord, AccountUpdate, EmbeddedStore};

    #[tokio::test]
    async fn each_account_has_its_own_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        for name in ["a", "b"] {
            store
                .create_account(AccountRecord {
                    name: name.into(),
                    parent: None,
                    disabled: false,
                    allow_password_auth: false,
                    password_hash: None,
                    created_at: 0,
                    email: None,
                    cram_md5: None,
                    max_messages_per_hour: None,
                    ip_pool: None,
                    sender_alignment: None,
                })
                .await
                .unwrap();
        }
        store
            .update_account(
                "a".into(),
                AccountUpdate {
                    max_messages_per_hour: Some(Some(2)),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let q = Quotas::new(store);
        for _ in 0..2 {
            assert_eq!(q.check("a", 1).await.unwrap(), QuotaCheck::Allowed);
            q.record("a", 1);
        }
        assert!(matches!(
            q.check("a", 1).await.unwrap(),
            QuotaCheck::Exceeded { limit: 2, .. }
        ));
        for _ in 0..100 {
            q.record("b", 1);
        }
        assert_eq!(
            q.check("b", 1).await.unwrap(),
            QuotaCheck::Allowed,
            "b has no limit"
        );
    }
}
