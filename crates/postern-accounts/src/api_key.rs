//! API keys: 256 random bits behind a recognisable prefix, shown once, stored
//! only as a keyed hash.
//!
//! A keyed SHA-256 (HMAC) is enough for keys of this entropy: nobody can
//! brute-force 2^256, so a slow hash like Argon2 would only cost CPU on every
//! AUTH. The HMAC key (a secret kept in the store) means a leaked table of
//! hashes alone cannot even be used to confirm a guessed key.

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use postern_core::principal::SCOPE_FULL_ACCESS;
use postern_store::{ApiKeyRecord, CredentialStore, StoreError};
use rand::RngCore;

/// Secret scanners (GitHub's, gitleaks) can match on this prefix.
pub const KEY_PREFIX: &str = "pst_";
/// 32 random bytes: API keys carry at least 256 bits of randomness.
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
        // 43 base64url characters carry 256 bits: the part after the prefix
        // decodes (unpadded, URL-safe alphabet) to exactly 32 bytes, and
        // re-encodes to itself (no stray bits in the last character).
        assert_eq!(a.secret.len(), KEY_PREFIX.len() + 43);
        for k in [&a, &b] {
            let raw = URL_SAFE_NO_PAD
                .decode(&k.secret[KEY_PREFIX.len()..])
                .expect("the key is base64url");
            assert_eq!(raw.len(), KEY_RANDOM_BYTES);
            assert_eq!(URL_SAFE_NO_PAD.encode(&raw), k.secret[KEY_PREFIX.len()..]);
        }
        // Random, not merely distinct: no byte position is the same across
        // 64 keys (a fixed part, e.g. a counter's high bytes or a constant
        // tail, would be). By chance one position repeats in all 64 with
        // probability 32 * 256^-63: never.
        let many: Vec<Vec<u8>> = {
            let mut v = Vec::new();
            for i in 0..64 {
                let k = keys
                    .create(&store, "admin", &format!("k{i}"), vec![], None)
                    .await
                    .unwrap();
                v.push(
                    URL_SAFE_NO_PAD
                        .decode(&k.secret[KEY_PREFIX.len()..])
                        .unwrap(),
                );
            }
            v
        };
        for pos in 0..KEY_RANDOM_BYTES {
            assert!(
                many.iter().any(|k| k[pos] != many[0][pos]),
                "byte {pos} is the same in every key"
            );
        }
        let stored = store.list_api_keys(None).await.unwrap();
        for k in &stored {
            assert!(!k
                .hash
                .windows(8)
                .any(|w| a.secret.as_bytes().windows(8).any(|s| s == w)));
        }
        assert_eq!(stored[0].scopes, vec!["full_access".to_string()]);
        // Stored is HMAC-SHA256 (RFC 2104) under the store's own secret,
        // exactly: not the key, not its plain SHA-256.
        let store_secret = store.secret(HASH_SECRET_NAME, 32).await.unwrap();
        let expected = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &store_secret),
            a.secret.as_bytes(),
        );
        assert_eq!(a.record.hash, expected.as_ref());
        let unkeyed = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, a.secret.as_bytes());
        assert_ne!(a.record.hash, unkeyed.as_ref());
        // The same store (reopened) hashes the same; another store, with a
        // secret of its own, hashes the same key differently, so a table
        // of hashes is useless without the secret.
        assert_eq!(keys.hash(&a.secret), a.record.hash);
        drop(store);
        let reopened = EmbeddedStore::open(dir.path()).unwrap();
        let again = ApiKeys::new(&reopened).await.unwrap();
        assert_eq!(again.hash(&a.secret), a.record.hash);
        let other_dir = tempfile::tempdir().unwrap();
        let other_store = EmbeddedStore::open(other_dir.path()).unwrap();
        let other = ApiKeys::new(&other_store).await.unwrap();
        assert_ne!(other.hash(&a.secret), a.record.hash);
    }
}

/// Why a key may not be made with the restrictions asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NarrowingError {
    #[error("network {0} is outside the networks of the key that creates it")]
    NetworkOutside(String),
    #[error("the new key cannot outlive the key that creates it")]
    ExpiresLater,
}

/// A key is never more powerful than the key that made it: its networks
/// lie within the creator's (and are the creator's when none are asked
/// for), and it expires no later than the creator (and when the creator
/// does, if no expiry is asked for). Scopes are checked by the caller
/// against the creator's the same way. Returns the networks and expiry the
/// new key gets.
pub fn narrow_to_creator(
    creator: &ApiKeyRecord,
    networks: Vec<postern_core::network::IpNet>,
    expires_at: Option<i64>,
) -> Result<(Vec<String>, Option<i64>), NarrowingError> {
    let bounds: Vec<_> = creator
        .networks
        .iter()
        .filter_map(|n| postern_core::network::parse_network(n))
        .collect();
    let networks = if bounds.is_empty() {
        networks
    } else if networks.is_empty() {
        bounds
    } else {
        for n in &networks {
            if !bounds.iter().any(|b| b.contains(n)) {
                return Err(NarrowingError::NetworkOutside(n.to_string()));
            }
        }
        networks
    };
    let expires_at = match (creator.expires_at, expires_at) {
        (Some(limit), Some(asked)) if asked > limit => return Err(NarrowingError::ExpiresLater),
        (Some(limit), None) => Some(limit),
        (_, asked) => asked,
    };
    Ok((networks.iter().map(|n| n.to_string()).collect(), expires_at))
}

#[cfg(test)]
mod narrowing_tests {
    use super::*;
    use postern_core::network::parse_network;

    fn creator(networks: &[&str], expires_at: Option<i64>) -> ApiKeyRecord {
        ApiKeyRecord {
            id: "k".into(),
            account: "a".into(),
            name: "k".into(),
            hash: vec![],
            scopes: vec![],
            created_at: 0,
            expires_at,
            revoked_at: None,
            networks: networks.iter().map(|s| s.to_string()).collect(),
            last_used_at: None,
        }
    }

    fn nets(s: &[&str]) -> Vec<postern_core::network::IpNet> {
        s.iter().map(|n| parse_network(n).unwrap()).collect()
    }

    #[test]
    fn children_inherit_networks_and_expiry() {
        let c = creator(&["10.1.0.0/16"], Some(1_000));
        assert_eq!(
            narrow_to_creator(&c, vec![], None),
            Ok((vec!["10.1.0.0/16".to_owned()], Some(1_000)))
        );
    }

    #[test]
    fn children_stay_inside_the_creator() {
        let c = creator(&["10.1.0.0/16", "2001:db8::/32"], Some(1_000));
        assert_eq!(
            narrow_to_creator(&c, nets(&["10.1.2.0/24", "2001:db8:1::1"]), Some(900)),
            Ok((
                vec!["10.1.2.0/24".to_owned(), "2001:db8:1::1/128".to_owned()],
                Some(900)
            ))
        );
        for wider in ["10.0.0.0/8", "10.2.0.1", "0.0.0.0/0", "::/0"] {
            assert_eq!(
                narrow_to_creator(&c, nets(&[wider]), None),
                Err(NarrowingError::NetworkOutside(
                    parse_network(wider).unwrap().to_string()
                )),
                "{wider}"
            );
        }
        assert_eq!(
            narrow_to_creator(&c, vec![], Some(1_001)),
            Err(NarrowingError::ExpiresLater)
        );
    }

    #[test]
    fn an_unrestricted_creator_passes_requests_through() {
        let c = creator(&[], None);
        assert_eq!(
            narrow_to_creator(&c, nets(&["192.0.2.0/24"]), Some(5)),
            Ok((vec!["192.0.2.0/24".to_owned()], Some(5)))
        );
    }
}
