//! Turns presented credentials into a `Principal`, or a failure that the
//! caller reports without saying which part was wrong.

use std::sync::Arc;

use postern_core::Principal;
use postern_store::{CredentialStore, StoreError};
use thiserror::Error;

use crate::api_key::ApiKeys;
use crate::sasl::Credentials;

/// SendGrid's convention: the user name is the literal `apikey` and the
/// password is the key.
pub const API_KEY_USERNAME: &str = "apikey";

#[derive(Debug, Error)]
pub enum AuthFailure {
    /// Wrong, unknown, revoked or expired: deliberately one variant, so no
    /// caller can leak which it was. The reason is for logs and metrics only.
    #[error("invalid credentials ({reason})")]
    Invalid { reason: &'static str },
    /// RFC 4616 §2: acting for another identity needs a right we do not grant yet.
    #[error("authorization identity not permitted")]
    AuthzidNotPermitted,
    #[error("credential store unavailable: {0}")]
    Unavailable(#[from] StoreError),
}

#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn CredentialStore>,
    keys: ApiKeys,
}

impl Authenticator {
    pub async fn new(store: Arc<dyn CredentialStore>) -> Result<Self, StoreError> {
        let keys = ApiKeys::new(store.as_ref()).await?;
        Ok(Authenticator { store, keys })
    }

    pub fn api_keys(&self) -> &ApiKeys {
        &self.keys
    }

    /// Checks credentials. Every call does the same work (one HMAC and one
    /// indexed lookup) whether or not the user name is known, so the timing
    /// does not tell an attacker which part was wrong.
    pub async fn authenticate(&self, creds: &Credentials) -> Result<Principal, AuthFailure> {
        let result = self.check(creds).await;
        let outcome = match &result {
            Ok(_) => "success",
            Err(AuthFailure::Invalid { reason }) => reason,
            Err(AuthFailure::AuthzidNotPermitted) => "authzid",
            Err(AuthFailure::Unavailable(_)) => "unavailable",
        };
        metrics::counter!("postern_auth_attempts_total", "outcome" => outcome).increment(1);
        result
    }

    async fn check(&self, creds: &Credentials) -> Result<Principal, AuthFailure> {
        let hash = self.keys.hash(&creds.secret);
        let record = self.store.find_api_key_by_hash(hash).await?;
        if creds.username != API_KEY_USERNAME {
            return Err(AuthFailure::Invalid {
                reason: "unknown_username",
            });
        }
        let Some(record) = record else {
            return Err(AuthFailure::Invalid {
                reason: "unknown_key",
            });
        };
        if record.revoked_at.is_some() {
            return Err(AuthFailure::Invalid { reason: "revoked" });
        }
        if record
            .expires_at
            .is_some_and(|t| t <= postern_core::time::now_millis())
        {
            return Err(AuthFailure::Invalid { reason: "expired" });
        }
        if !creds.authzid.is_empty() && creds.authzid != creds.username {
            return Err(AuthFailure::AuthzidNotPermitted);
        }
        Ok(Principal {
            account: record.account,
            key_id: record.id,
            scopes: record.scopes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_store::EmbeddedStore;

    fn creds(user: &str, secret: &str) -> Credentials {
        Credentials {
            authzid: String::new(),
            username: user.into(),
            secret: secret.into(),
        }
    }

    #[tokio::test]
    async fn keys_authenticate_until_revoked_or_expired() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let auth = Authenticator::new(store.clone()).await.unwrap();
        let issued = auth
            .api_keys()
            .create(store.as_ref(), "admin", "k", vec!["mail.send".into()], None)
            .await
            .unwrap();
        let p = auth
            .authenticate(&creds("apikey", &issued.secret))
            .await
            .unwrap();
        assert_eq!(p.account, "admin");
        assert!(p.has_scope("mail.send"));

        assert!(auth
            .authenticate(&creds("admin", &issued.secret))
            .await
            .is_err());
        assert!(auth
            .authenticate(&creds("apikey", "pst_wrong"))
            .await
            .is_err());
        let mut other = creds("apikey", &issued.secret);
        other.authzid = "someone-else".into();
        assert!(matches!(
            auth.authenticate(&other).await,
            Err(AuthFailure::AuthzidNotPermitted)
        ));

        store
            .revoke_api_key(issued.record.id.clone(), 1)
            .await
            .unwrap();
        assert!(matches!(
            auth.authenticate(&creds("apikey", &issued.secret)).await,
            Err(AuthFailure::Invalid { reason: "revoked" })
        ));

        let expired = auth
            .api_keys()
            .create(store.as_ref(), "admin", "old", vec![], Some(1))
            .await
            .unwrap();
        assert!(matches!(
            auth.authenticate(&creds("apikey", &expired.secret)).await,
            Err(AuthFailure::Invalid { reason: "expired" })
        ));
    }
}
