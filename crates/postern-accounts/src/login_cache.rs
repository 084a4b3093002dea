//! What a login looks up (the API key by its hash, accounts, IP rules),
//! kept in memory on the store's `auth_version`, which triggers move on
//! every change to keys, accounts or IP rules from any process. Each login
//! reads the version first (one small inline query); while it is unchanged
//! the lookups are answered here instead of by a blocking-pool round trip
//! to the store each (about a tenth of the server's CPU per message when
//! every message comes on a new connection, in the profile of the 50 × 1
//! benchmark). When it moves, everything cached is dropped: a revoked key,
//! a disabled account or a new rule counts from the next login on.
//!
//! Only keys and accounts that exist are kept, so guessed keys, made-up
//! user names and On-Behalf-Of headers cannot fill the cache (a miss costs
//! what every lookup cost before); each map is emptied when it reaches
//! `MAX_ENTRIES`.

use std::collections::HashMap;
use std::sync::Mutex;

use postern_store::{AccountRecord, ApiKeyRecord, AuthStore, IpRule, StoreError};

const MAX_ENTRIES: usize = 4096;

#[derive(Default)]
pub(crate) struct LoginCache {
    inner: Mutex<Cached>,
}

#[derive(Default)]
struct Cached {
    version: Option<i64>,
    keys: HashMap<Vec<u8>, ApiKeyRecord>,
    accounts: HashMap<String, AccountRecord>,
    ip_rules: HashMap<String, Vec<IpRule>>,
}

impl Cached {
    /// The maps, if they hold what was read at `version`.
    fn at(&mut self, version: i64) -> Option<&mut Self> {
        (self.version == Some(version)).then_some(self)
    }
}

fn put<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, key: K, value: V) {
    if map.len() >= MAX_ENTRIES {
        map.clear();
    }
    map.insert(key, value);
}

/// The lookups of one login, all answered as of the version it began with.
pub(crate) struct Lookups<'a> {
    cache: &'a LoginCache,
    store: &'a dyn AuthStore,
    version: i64,
}

impl LoginCache {
    /// Reads the store's version and starts a login's lookups; a version
    /// other than the cached one empties the cache.
    pub(crate) async fn begin<'a>(
        &'a self,
        store: &'a dyn AuthStore,
    ) -> Result<Lookups<'a>, StoreError> {
        let version = store.auth_version().await?;
        if let Ok(mut c) = self.inner.lock() {
            if c.version != Some(version) {
                *c = Cached {
                    version: Some(version),
                    ..Cached::default()
                };
            }
        }
        Ok(Lookups {
            cache: self,
            store,
            version,
        })
    }
}

impl Lookups<'_> {
    /// Runs `f` on the cache when it still holds this login's version (a
    /// login that began on an older version neither reads nor fills it).
    fn with<T>(&self, f: impl FnOnce(&mut Cached) -> Option<T>) -> Option<T> {
        let mut c = self.cache.inner.lock().ok()?;
        f(c.at(self.version)?)
    }

    pub(crate) async fn api_key(&self, hash: Vec<u8>) -> Result<Option<ApiKeyRecord>, StoreError> {
        if let Some(k) = self.with(|c| c.keys.get(&hash).cloned()) {
            return Ok(Some(k));
        }
        let found = self.store.find_api_key_by_hash(hash.clone()).await?;
        if let Some(k) = &found {
            self.with(|c| {
                put(&mut c.keys, hash, k.clone());
                Some(())
            });
        }
        Ok(found)
    }

    pub(crate) async fn account(&self, name: &str) -> Result<Option<AccountRecord>, StoreError> {
        if let Some(a) = self.with(|c| c.accounts.get(name).cloned()) {
            return Ok(Some(a));
        }
        let found = self.store.get_account(name.to_owned()).await?;
        if let Some(a) = &found {
            self.with(|c| {
                put(&mut c.accounts, name.to_owned(), a.clone());
                Some(())
            });
        }
        Ok(found)
    }

    pub(crate) async fn ip_rules(&self, account: &str) -> Result<Vec<IpRule>, StoreError> {
        if let Some(r) = self.with(|c| c.ip_rules.get(account).cloned()) {
            return Ok(r);
        }
        let found = self.store.ip_rules(account.to_owned()).await?;
        self.with(|c| {
            put(&mut c.ip_rules, account.to_owned(), found.clone());
            Some(())
        });
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_store::{AccountStore, EmbeddedStore};

    fn held(cache: &LoginCache) -> (usize, usize, usize) {
        let c = cache.inner.lock().unwrap();
        (c.keys.len(), c.accounts.len(), c.ip_rules.len())
    }

    /// Names and keys that do not exist are never kept: a client cannot
    /// fill the cache with made-up user names, guessed keys or On-Behalf-Of
    /// headers.
    #[tokio::test]
    async fn only_what_exists_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let cache = LoginCache::default();
        let l = cache.begin(&store).await.unwrap();
        for i in 0..100 {
            assert!(l.account(&format!("ghost{i}")).await.unwrap().is_none());
            assert!(l.api_key(vec![i; 32]).await.unwrap().is_none());
        }
        assert_eq!(held(&cache), (0, 0, 0));
        assert!(l.account("admin").await.unwrap().is_some());
        assert!(l.ip_rules("admin").await.unwrap().is_empty());
        assert_eq!(held(&cache), (0, 1, 1));
        // A login that began on an older version neither reads nor fills
        // the cache once a newer one has begun.
        let old = cache.begin(&store).await.unwrap();
        store
            .add_ip_rule("admin".into(), "192.0.2.0/24".into())
            .await
            .unwrap();
        let new = cache.begin(&store).await.unwrap();
        assert_eq!(held(&cache), (0, 0, 0));
        assert!(old.account("admin").await.unwrap().is_some());
        assert_eq!(held(&cache), (0, 0, 0));
        assert_eq!(new.ip_rules("admin").await.unwrap().len(), 1);
        assert_eq!(held(&cache), (0, 0, 1));
    }
}
