//! API keys: 256 random bits behind a recognisable prefix, shown once, stored
//! only as a keyed hash.
//!
//! A keyed SHA-256 (HMAC) is enough for keys of this entropy: nobody can
//! brute-force 2^256, so a slow hash like Argon2 would only cost CPU on every
//! AUTH. The HMAC key (a secret kept in the store) means a leaked table of
//! hashes alone cannot even be used to confirm a guessed key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use postern_core::principal::SCOPE_FULL_ACCESS;
use postern_store::{ApiKeyRecord, CredentialStore, StoreError};
use rand::RngCore;
use ring::hmac;

/// Secret scanners (GitHub's, gitleaks) can match on this prefix.
pub const KEY_PREFIX: &str = "pst_";
/// 32 random bytes: 256 bits (DESIGN §4).
const KEY_RANDOM_BYTES: usize = 32;
const HASH_SECRET_NAME: &str = "api-key-hmac";

/// A freshly created key: `secret` is shown to the user once and never stored.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    pub record: ApiKeyRecord,
    pub secret: String,
}

/// Creates and checks API keys against a store.
#[derive(Clone)]
pub struct ApiKeys {
    hmac_key: hmac::Key,
}

impl ApiKeys {
    pub async fn new(store: &dyn CredentialStore) -> Result<Self, StoreError> {
        let secret = store.secret(HASH_SECRET_NAME, 32).await?;
        Ok(ApiKeys {
            hmac_key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
        })
    }

    pub fn hash(&self, presented: &str) -> Vec<u8> {
        hmac::sign(&self.hmac_key, presented.as_bytes())
            .as_ref()
            .to_vec()
    }

    /// Whether a string has the shape of one of our keys (cheap pre-check; it
    /// says nothing about validity).
    pub fn looks_like_key(presented: &str) -> bool {
        presented.len() == KEY_PREFIX.len() + 43
            && presented.starts_with(KEY_PREFIX)
            && presented[KEY_PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    pub async fn create(
        &self,
        store: &dyn CredentialStore,
        account: &str,
        name: &str,
        scopes: Vec<String>,
        expires_at: Option<i64>,
    ) -> Result<IssuedKey, StoreError> {
        self.create_restricted(store, account, name, scopes, expires_at, Vec::new())
            .await
    }

    /// A key usable only from `networks` (CIDRs; empty means anywhere).
    pub async fn create_restricted(
        &self,
        store: &dyn CredentialStore,
        account: &str,
        name: &str,
        scopes: Vec<String>,
        expires_at: Option<i64>,
        networks: Vec<String>,
    ) -> Result<IssuedKey, StoreError> {
        let mut random = [0u8; KEY_RANDOM_BYTES];
        rand::rng().fill_bytes(&mut random);
        let secret = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(random));
        let mut id_bytes = [0u8; 8];
        rand::rng().fill_bytes(&mut id_bytes);
        let id: String = id_bytes.iter().map(|b| format!("{b:02x}")).collect();
        let scopes = if scopes.is_empty() {
            vec![SCOPE_FULL_ACCESS.to_owned()]
        } else {
            scopes
        };
        let record = ApiKeyRecord {
            id,
            account: account.to_owned(),
            name: name.to_owned(),
            hash: self.hash(&secret),
            scopes,
            created_at: postern_core::time::now_millis(),
            expires_at,
            revoked_at: None,
            networks,
            last_used_at: None,
        };
        store.insert_api_key(record.clone()).await?;
        Ok(IssuedKey { record, secret })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_store::EmbeddedStore;

    #[tokio::test]
    async fn keys_are_long_random_and_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let keys = ApiKeys::new(&store).await.unwrap();
        let a = keys
            .create(&store, "admin", "a", vec![], None)
            .await
            .unwrap();
        let b = keys
            .create(&store, "admin", "b", vec![], None)
            .await
            .unwrap();
        assert_ne!(a.secret, b.secret);
        assert!(ApiKeys::looks_like_key(&a.secret), "{}", a.secret);
        // 43 base64url characters carry 256 bits.
        assert_eq!(a.secret.len(), KEY_PREFIX.len() + 43);
        let stored = store.list_api_keys(None).await.unwrap();
        for k in &stored {
            assert!(!k
                .hash
                .windows(8)
                .any(|w| a.secret.as_bytes().windows(8).any(|s| s == w)));
        }
        assert_eq!(stored[0].scopes, vec!["full_access".to_string()]);
        // The same secret is the same hash only with the same store secret.
        assert_eq!(keys.hash(&a.secret), a.record.hash);
    }
}
