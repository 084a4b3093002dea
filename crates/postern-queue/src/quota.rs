//! Per-account sending limits: each account (and each subuser) has its own
//! hourly message limit, so one stream's volume never eats another's.
//!
//! Counted in memory in fixed one-hour windows, which is exact for one node;
//! with several nodes each enforces the limit on its own share (the shared
//! PostgreSQL store will hold the counters). Limits are read from the store
//! and cached briefly, so a change takes effect within `LIMIT_CACHE` (an
//! account re-created under a cached name is read afresh at once).

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

/// When each account's limit was read, and what it was, with the account's
/// immutable id: the id keys the usage (a deleted account's usage never
/// counts against a new account that takes its name), and an entry read
/// for another id than the caller's is stale (the name was re-used within
/// `LIMIT_CACHE`) and read again.
type LimitCache = HashMap<String, (Instant, Option<(i64, Option<u32>)>)>;

#[derive(Clone)]
pub struct Quotas {
    store: Arc<dyn AccountStore>,
    limits: Arc<Mutex<LimitCache>>,
    usage: Arc<Mutex<UsageTable>>,
}

/// Messages counted per account id in the current window.
type UsageTable = HashMap<i64, Usage>;

/// Messages counted against an account's limit before they are queued.
/// Dropped without `commit` (the message was refused or the store failed),
/// it gives them back; so concurrent submissions can never all pass a check
/// that each made before any of them was counted.
#[must_use = "a reservation is released when dropped; commit it once the message is queued"]
pub struct Reservation {
    /// The table, the account id, the window it was counted in, how many.
    held: Option<(Arc<Mutex<UsageTable>>, i64, Instant, u32)>,
}

impl Reservation {
    /// The messages were queued: they stay counted.
    pub fn commit(mut self) {
        self.held = None;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some((usage, id, window_start, n)) = self.held.take() {
            let mut usage = usage.lock().unwrap_or_else(|e| e.into_inner());
            // Only from the window it was taken in: a new window starts at 0.
            if let Some(u) = usage.get_mut(&id) {
                if u.window_start == window_start {
                    u.count = u.count.saturating_sub(n);
                }
            }
        }
    }
}

/// What asking for a reservation gave.
pub enum Reserve {
    Granted(Reservation),
    Exceeded { limit: u32, retry_after: Duration },
}

impl Quotas {
    pub fn new(store: Arc<dyn AccountStore>) -> Self {
        Quotas {
            store,
            limits: Arc::default(),
            usage: Arc::default(),
        }
    }

    /// The account's id and hourly limit, if it has one. `account_id` is
    /// the id the caller authenticated as (0 when unknown).
    async fn limit(
        &self,
        account: &str,
        account_id: i64,
    ) -> Result<Option<(i64, u32)>, StoreError> {
        let now = Instant::now();
        let limit_of =
            |read: &Option<(i64, Option<u32>)>| read.and_then(|(id, limit)| limit.map(|l| (id, l)));
        if let Some((at, read)) = self
            .limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(account)
        {
            let same_account = account_id == 0 || read.is_some_and(|(id, _)| id == account_id);
            if now.duration_since(*at) < LIMIT_CACHE && same_account {
                return Ok(limit_of(read));
            }
        }
        let read = self
            .store
            .get_account(account.to_owned())
            .await?
            .map(|a| (a.id, a.max_messages_per_hour));
        self.limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(account.to_owned(), (now, read));
        Ok(limit_of(&read))
    }

    /// Whether `account` may send `n` more messages now (nothing is
    /// counted): an early answer for a client, before it sends the body.
    pub async fn check(
        &self,
        account: &str,
        account_id: i64,
        n: u32,
    ) -> Result<QuotaCheck, StoreError> {
        let Some((id, limit)) = self.limit(account, account_id).await? else {
            return Ok(QuotaCheck::Allowed);
        };
        let now = Instant::now();
        let usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let (used, retry_after) = match usage.get(&id) {
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

    /// Checks and counts `n` messages in one step under one lock, so that
    /// the limit holds however many submissions race.
    pub async fn reserve(
        &self,
        account: &str,
        account_id: i64,
        n: u32,
    ) -> Result<Reserve, StoreError> {
        let Some((id, limit)) = self.limit(account, account_id).await? else {
            return Ok(Reserve::Granted(Reservation { held: None }));
        };
        let now = Instant::now();
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let u = usage.entry(id).or_insert(Usage {
            window_start: now,
            count: 0,
        });
        if now.duration_since(u.window_start) >= WINDOW {
            u.window_start = now;
            u.count = 0;
        }
        if u.count.saturating_add(n) > limit {
            let retry_after = WINDOW.saturating_sub(now.duration_since(u.window_start));
            return Ok(Reserve::Exceeded { limit, retry_after });
        }
        u.count += n;
        Ok(Reserve::Granted(Reservation {
            held: Some((self.usage.clone(), id, u.window_start, n)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_store::{AccountRecord, AccountUpdate, EmbeddedStore};

    async fn granted(q: &Quotas, account: &str) -> Reservation {
        match q.reserve(account, 0, 1).await.unwrap() {
            Reserve::Granted(r) => r,
            Reserve::Exceeded { .. } => panic!("{account}: over its limit"),
        }
    }

    async fn store_with_limit(limit: u32) -> Arc<EmbeddedStore> {
        let dir = tempfile::tempdir().unwrap().keep();
        let store = Arc::new(EmbeddedStore::open(&dir).unwrap());
        store
            .create_account(AccountRecord {
                max_messages_per_hour: Some(limit),
                ..AccountRecord::new("a", None, 0)
            })
            .await
            .unwrap();
        store
    }

    /// Twenty submissions racing against a limit of 3: exactly 3 pass.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reservations_never_exceed_the_limit() {
        let q = Quotas::new(store_with_limit(3).await);
        let barrier = Arc::new(tokio::sync::Barrier::new(20));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (q, barrier) = (q.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    match q.reserve("a", 0, 1).await.unwrap() {
                        Reserve::Granted(r) => {
                            tokio::task::yield_now().await;
                            r.commit();
                            true
                        }
                        Reserve::Exceeded { .. } => false,
                    }
                })
            })
            .collect();
        let mut passed = 0;
        for t in tasks {
            passed += t.await.unwrap() as u32;
        }
        assert_eq!(passed, 3);
    }

    /// A reservation dropped without commit (the message was refused)
    /// gives its place back.
    #[tokio::test]
    async fn a_dropped_reservation_is_released() {
        let q = Quotas::new(store_with_limit(1).await);
        drop(granted(&q, "a").await);
        granted(&q, "a").await.commit();
        assert!(matches!(
            q.reserve("a", 0, 1).await.unwrap(),
            Reserve::Exceeded { limit: 1, .. }
        ));
    }

    #[tokio::test]
    async fn each_account_has_its_own_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        for name in ["a", "b"] {
            store
                .create_account(AccountRecord::new(name, None, 0))
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
            assert_eq!(q.check("a", 0, 1).await.unwrap(), QuotaCheck::Allowed);
            granted(&q, "a").await.commit();
        }
        assert!(matches!(
            q.check("a", 0, 1).await.unwrap(),
            QuotaCheck::Exceeded { limit: 2, .. }
        ));
        assert!(matches!(
            q.reserve("a", 0, 1).await.unwrap(),
            Reserve::Exceeded { limit: 2, .. }
        ));
        for _ in 0..100 {
            granted(&q, "b").await.commit();
        }
        assert_eq!(
            q.check("b", 0, 1).await.unwrap(),
            QuotaCheck::Allowed,
            "b has no limit"
        );
    }

    /// A name deleted and re-created within the limit cache's lifetime is a
    /// new account: the cached entry of the old one (its id, its usage) is
    /// not applied to it.
    #[tokio::test]
    async fn a_re_created_name_is_not_served_the_old_accounts_entry() {
        let store = store_with_limit(1).await;
        let old = store.get_account("a".into()).await.unwrap().unwrap().id;
        let q = Quotas::new(store.clone());
        match q.reserve("a", old, 1).await.unwrap() {
            Reserve::Granted(r) => r.commit(),
            Reserve::Exceeded { .. } => panic!("the first message is within the limit"),
        }
        assert!(matches!(
            q.reserve("a", old, 1).await.unwrap(),
            Reserve::Exceeded { limit: 1, .. }
        ));
        store.delete_account("a".into()).await.unwrap();
        store
            .create_account(AccountRecord {
                max_messages_per_hour: Some(1),
                ..AccountRecord::new("a", None, 0)
            })
            .await
            .unwrap();
        let new = store.get_account("a".into()).await.unwrap().unwrap().id;
        assert_ne!(old, new);
        match q.reserve("a", new, 1).await.unwrap() {
            Reserve::Granted(r) => r.commit(),
            Reserve::Exceeded { .. } => panic!("the new account inherited the old one's usage"),
        }
    }
}
