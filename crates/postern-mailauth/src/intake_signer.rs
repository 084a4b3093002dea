//! The intake's DKIM signer: an authenticated account's message is signed
//! for the domain of its header `From` when that domain is verified and
//! belongs to the account (or, for a subuser, to its parent).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use mail_auth::AuthenticatedMessage;
use postern_queue::MessageSigner;
use postern_store::{AccountStore, DomainStore};

use crate::sign::DomainSigner;

pub trait SigningStore: AccountStore + DomainStore {}
impl<T: AccountStore + DomainStore> SigningStore for T {}

pub struct IntakeSigner {
    store: Arc<dyn SigningStore>,
    /// Loaded signers by domain and selector (a new selector after a key
    /// rotation loads afresh).
    signers: Mutex<HashMap<(String, String), Arc<DomainSigner>>>,
}

impl IntakeSigner {
    pub fn new(store: Arc<dyn SigningStore>) -> Self {
        IntakeSigner {
            store,
            signers: Mutex::new(HashMap::new()),
        }
    }

    async fn sign_for(&self, account: &str, message: &[u8]) -> Option<Vec<u8>> {
        // The domain of the (first) header From address (RFC 5322 §3.6.2).
        let parsed = AuthenticatedMessage::parse(message)?;
        let from = parsed.from.first()?;
        let domain = from
            .rsplit_once('@')?
            .1
            .trim_end_matches('>')
            .to_ascii_lowercase();
        let record = self.store.get_domain(domain.clone()).await.ok()??;
        record.verified_at?;
        if record.account != account {
            let parent = self
                .store
                .get_account(account.to_owned())
                .await
                .ok()??
                .parent;
            if parent.as_deref() != Some(record.account.as_str()) {
                return None;
            }
        }
        let key = (domain.clone(), record.selector.clone());
        let cached = self
            .signers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let signer = match cached {
            Some(s) => s,
            None => {
                let rsa_selector = format!("{}-rsa", record.selector);
                let ed_selector = format!("{}-ed", record.selector);
                let signer = match DomainSigner::new(
                    &domain,
                    Some((&rsa_selector, &record.rsa_private)),
                    Some((&ed_selector, &record.ed25519_private)),
                ) {
                    Ok(s) => Arc::new(s),
                    Err(e) => {
                        tracing::error!(%domain, error = %e, "DKIM keys unusable; sending unsigned");
                        return None;
                    }
                };
                self.signers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, signer.clone());
                signer
            }
        };
        match signer.sign(message) {
            Ok(headers) => {
                metrics::counter!("postern_dkim_signed_total").increment(1);
                Some(headers)
            }
            Err(e) => {
                tracing::error!(%domain, error = %e, "DKIM signing failed; sending unsigned");
                None
            }
        }
    }
}

impl MessageSigner for IntakeSigner {
    fn sign<'a>(
        &'a self,
        account: &'a str,
        message: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = Option<Vec<u8>>> + Send + 'a>> {
        Box::pin(self.sign_for(account, message))
    }
}
