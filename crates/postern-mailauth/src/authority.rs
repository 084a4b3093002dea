//! The intake's sender authority: decides whether an authenticated account
//! may send as the senders a message names, and DKIM-signs what it may send.
//!
//! Anti-spoofing: the envelope sender and every header From address must be
//! in a verified domain of the account (a subuser may use its parent's), or
//! be one of its verified single senders; the envelope may also be in a
//! verified domain's return-path subdomain. Under the account's alignment
//! rule "strict" (the default) the envelope must also match the From: the
//! same domain (or its return path), or the same single sender address, as
//! DMARC alignment wants.
//!
//! Domains are compared as ASCII after lower-casing: a lookalike domain (an
//! IDN homograph such as "exаmple.org" with a Cyrillic "а") is a different
//! domain and is refused unless itself verified.
//!
//! Signing: a message is signed for the domain of its first header From
//! when that domain is verified for the account or its parent.
//!
//! The account's verified senders (domains with their keys, addresses) are
//! cached: reading them from the store for every message cost more than the
//! rest of the intake. The cache is keyed on the store's senders version,
//! which every change bumps (from the server or the CLI), so one cheap read
//! per message keeps it exact: a domain verified, rotated or removed a
//! moment ago is seen by the next message.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use postern_queue::{Authorized, SenderAuthority as AuthorityTrait};
use postern_store::{AccountStore, AuditEntry, AuditStore, DomainRecord, DomainStore, SenderStore};

use crate::header_from::header_from;
use crate::sign::DomainSigner;

pub trait AuthorityStore: AccountStore + DomainStore + SenderStore + AuditStore {}
impl<T: AccountStore + DomainStore + SenderStore + AuditStore> AuthorityStore for T {}

/// What an account may send as, read from the store.
struct AccountSenders {
    strict: bool,
    /// Verified domains of the account and of its parent.
    domains: Vec<DomainRecord>,
    /// Verified single sender addresses (lower-cased), the account's and
    /// its parent's.
    addresses: Vec<String>,
}

pub struct SenderAuthority {
    store: Arc<dyn AuthorityStore>,
    /// Refuse unverified senders (`smtp.require_verified_senders`); when
    /// false, mail is only signed.
    enforce: bool,
    /// By account, with the senders version they were read at.
    cache: Mutex<HashMap<String, (i64, Arc<AccountSenders>)>>,
    /// Loaded signers by domain and selector (a new selector after a key
    /// rotation loads afresh).
    signers: Mutex<HashMap<SignerKey, Arc<DomainSigner>>>,
}

/// The lower-cased domain of an address, without brackets or a final dot.
pub fn domain_of(address: &str) -> Option<String> {
    let address = bare(address);
    let (_, domain) = address.rsplit_once('@')?;
    Some(domain.trim_end_matches('.').to_ascii_lowercase())
}

fn bare(address: &str) -> &str {
    address.trim().trim_start_matches('<').trim_end_matches('>')
}

/// The verified domain that covers `domain`: the domain itself, or (for the
/// envelope only) its return-path subdomain.
fn covering<'a>(
    domain: &str,
    verified: &'a [DomainRecord],
    envelope: bool,
) -> Option<&'a DomainRecord> {
    verified.iter().find(|d| {
        d.domain == domain
            || (envelope
                && domain
                    .strip_suffix(d.domain.as_str())
                    .and_then(|l| l.strip_suffix('.'))
                    == Some(d.return_path.as_str()))
    })
}

/// Domain, selector, and the digest of the keys a signer was made from.
type SignerKey = (String, String, [u8; 32]);

/// SHA-256 over both private keys: what a cached signer was made from.
fn key_digest(rsa_private: &[u8], ed25519_private: &[u8]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(&(rsa_private.len() as u64).to_be_bytes());
    ctx.update(rsa_private);
    ctx.update(ed25519_private);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl AccountSenders {
    fn single(&self, address: &str) -> bool {
        let a = bare(address).to_ascii_lowercase();
        self.addresses.contains(&a)
    }

    /// Ok, or the reason the senders are refused.
    fn decide(&self, mail_from: &str, from: &[String]) -> Result<(), String> {
        let envelope_domain = if mail_from.is_empty() {
            None
        } else {
            let d = domain_of(mail_from).ok_or("the envelope sender has no domain")?;
            if covering(&d, &self.domains, true).is_none() && !self.single(mail_from) {
                return Err(format!(
                    "the envelope sender domain {d} is not verified for this account (postern domain add / verify, or a verified single sender)"
                ));
            }
            Some(d)
        };
        for address in from {
            let d = domain_of(address).unwrap_or_default();
            if covering(&d, &self.domains, false).is_none() && !self.single(address) {
                return Err(format!(
                    "the From header domain {d} is not verified for this account"
                ));
            }
        }
        if let (true, Some(env), Some(header)) = (self.strict, &envelope_domain, from.first()) {
            let header_domain = domain_of(header).unwrap_or_default();
            let aligned = covering(env, &self.domains, true)
                .is_some_and(|d| d.domain == header_domain)
                || bare(mail_from).eq_ignore_ascii_case(bare(header));
            if !aligned {
                return Err(format!(
                    "the envelope sender domain {env} and the From domain {header_domain} differ (alignment is strict for this account)"
                ));
            }
        }
        Ok(())
    }
}

impl SenderAuthority {
    pub fn new(store: Arc<dyn AuthorityStore>, enforce: bool) -> Self {
        SenderAuthority {
            store,
            enforce,
            cache: Mutex::new(HashMap::new()),
            signers: Mutex::new(HashMap::new()),
        }
    }

    async fn load(&self, account: &str, version: i64) -> Result<Arc<AccountSenders>, String> {
        let me = self
            .store
            .get_account(account.to_owned())
            .await
            .map_err(|e| format!("account lookup failed: {e}"))?
            .ok_or_else(|| "unknown account".to_owned())?;
        let mut domains = Vec::new();
        let mut addresses = Vec::new();
        for owner in std::iter::once(me.name.clone()).chain(me.parent.clone()) {
            let list = self
                .store
                .list_domains(Some(owner.clone()))
                .await
                .map_err(|e| format!("domain lookup failed: {e}"))?;
            domains.extend(list.into_iter().filter(|d| d.verified_at.is_some()));
            let senders = self
                .store
                .list_senders(Some(owner))
                .await
                .map_err(|e| format!("sender lookup failed: {e}"))?;
            addresses.extend(
                senders
                    .into_iter()
                    .filter(|s| s.verified_at.is_some())
                    .map(|s| s.address),
            );
        }
        let senders = Arc::new(AccountSenders {
            strict: me.sender_alignment.as_deref() != Some("relaxed"),
            domains,
            addresses,
        });
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(account.to_owned(), (version, senders.clone()));
        Ok(senders)
    }

    async fn senders(&self, account: &str) -> Result<Arc<AccountSenders>, String> {
        let version = self
            .store
            .senders_version()
            .await
            .map_err(|e| format!("sender lookup failed: {e}"))?;
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(account)
            .filter(|(v, _)| *v == version)
            .map(|(_, s)| s.clone());
        match cached {
            Some(s) => Ok(s),
            None => self.load(account, version).await,
        }
    }

    async fn authorize_message(
        &self,
        account: &str,
        mail_from: &str,
        message: &[u8],
    ) -> Result<Authorized, String> {
        // The header From addresses (RFC 5322 §3.6.2), parsed once for both
        // the check and the signature, strictly (see header_from): a From
        // that is not exactly one mailbox-list field is refused, since
        // readers disagree on what it says. A message without From (which
        // RFC 5322 §3.6 requires, but which this server has always passed
        // on as submitted) is checked on its envelope sender alone and
        // goes unsigned: it claims no sender that the envelope does not.
        let from: Vec<String> = match header_from(message) {
            Ok(list) => list
                .unwrap_or_default()
                .into_iter()
                .map(|m| m.address)
                .collect(),
            Err(e) if self.enforce => {
                let reason = e.to_string();
                self.refused(account, mail_from, &reason).await;
                return Err(reason);
            }
            // Not enforcing: sent as it is, but never signed for whatever a
            // lenient reading would find in it.
            Err(_) => Vec::new(),
        };
        let senders = self.senders(account).await?;
        if self.enforce {
            if let Err(reason) = senders.decide(mail_from, &from) {
                self.refused(account, mail_from, &reason).await;
                return Err(reason);
            }
        }
        // The return path: the envelope sender's verified domain (or the
        // return-path subdomain it already uses), when it has one.
        let return_path = domain_of(mail_from)
            .and_then(|d| covering(&d, &senders.domains, true))
            .filter(|d| d.return_path_mode.is_on())
            .map(|d| format!("{}.{}", d.return_path, d.domain));
        Ok(Authorized {
            dkim_headers: self
                .sign(&senders, &from, message)
                .await
                .unwrap_or_default(),
            return_path,
        })
    }

    async fn refused(&self, account: &str, mail_from: &str, reason: &str) {
        let entry = AuditEntry {
            at: postern_core::time::now_millis(),
            kind: "sender.refused".into(),
            actor: account.to_owned(),
            account: Some(account.to_owned()),
            client_ip: None,
            detail: format!("mail_from=<{mail_from}> {reason}"),
        };
        if let Err(e) = self.store.append_audit(entry).await {
            tracing::error!(error = %e, "audit append failed");
        }
    }

    async fn sign(
        &self,
        senders: &AccountSenders,
        from: &[String],
        message: &[u8],
    ) -> Option<Vec<u8>> {
        let domain = domain_of(from.first()?)?;
        let record = senders.domains.iter().find(|d| d.domain == domain)?;
        // Keyed by the keys themselves, not only the domain and selector:
        // every domain starts at selector `pst1`, and another account (or
        // the same one, after removing and re-adding the domain) may own it
        // later with other keys; a signer loaded for the first must never
        // sign for the second.
        let key = (
            domain.clone(),
            record.selector.clone(),
            key_digest(&record.rsa_private, &record.ed25519_private),
        );
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
        // RSA signing is about half a millisecond of CPU: on the blocking
        // pool, so the runtime's workers go on serving sessions meanwhile.
        let owned = message.to_vec();
        let signed = tokio::task::spawn_blocking(move || signer.sign(&owned))
            .await
            .unwrap_or_else(|e| Err(crate::MailAuthError::Signing(e.to_string())));
        match signed {
            Ok(headers) => {
                metrics::counter!("postern_dkim_signed_total", "selector" => record.selector.clone())
                    .increment(1);
                Some(headers)
            }
            Err(e) => {
                tracing::error!(%domain, error = %e, "DKIM signing failed; sending unsigned");
                None
            }
        }
    }
}

impl AuthorityTrait for SenderAuthority {
    fn authorize<'a>(
        &'a self,
        account: &'a str,
        mail_from: &'a str,
        message: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = Result<Authorized, String>> + Send + 'a>> {
        Box::pin(self.authorize_message(account, mail_from, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(name: &str) -> DomainRecord {
        DomainRecord {
            id: 1,
            domain: name.into(),
            account: "a".into(),
            selector: "pst1".into(),
            rsa_private: vec![],
            rsa_public: vec![],
            ed25519_private: vec![],
            ed25519_public: vec![],
            return_path: "pst-bounces".into(),
            return_path_mode: Default::default(),
            created_at: 0,
            verified_at: Some(1),
            verified_by: Some("dns".into()),
            next: None,
            previous: None,
        }
    }

    fn senders(strict: bool) -> AccountSenders {
        AccountSenders {
            strict,
            domains: vec![domain("example.org")],
            addresses: vec!["alice@gmail.example".into()],
        }
    }

    /// A domain's signer is never reused for other keys: A verifies
    /// example.com and sends, removes it, and B (same selector `pst1`,
    /// its own keys) takes it; B's mail must be signed with B's keys.
    #[tokio::test]
    async fn a_cached_signer_never_signs_with_another_owners_keys() {
        use postern_store::EmbeddedStore;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        for name in ["a", "b"] {
            store
                .create_account(postern_store::AccountRecord::new(name, None, 0))
                .await
                .unwrap();
        }
        let authority = SenderAuthority::new(store.clone(), true);
        let msg = b"From: x@example.com\r\nTo: y@example.net\r\nSubject: s\r\n\r\nhi\r\n";
        let mut signed_with = Vec::new();
        for owner in ["a", "b"] {
            let keys = crate::DkimKeys::generate().unwrap();
            let id = store
                .add_domain(DomainRecord {
                    id: 0,
                    domain: "example.com".into(),
                    account: owner.into(),
                    selector: "pst1".into(),
                    rsa_private: keys.rsa_private.clone(),
                    rsa_public: keys.rsa_public.clone(),
                    ed25519_private: keys.ed25519_private.clone(),
                    ed25519_public: keys.ed25519_public.clone(),
                    return_path: "pst-bounces".into(),
                    return_path_mode: Default::default(),
                    created_at: 0,
                    verified_at: None,
                    verified_by: None,
                    next: None,
                    previous: None,
                })
                .await
                .unwrap();
            store.verify_domain(id, 1, "dns".into()).await.unwrap();
            let authorized = authority
                .authorize_message(owner, "x@example.com", msg)
                .await
                .unwrap();
            assert!(
                !authorized.dkim_headers.is_empty(),
                "{owner}'s mail is signed"
            );
            signed_with.push(key_digest(&keys.rsa_private, &keys.ed25519_private));
            let cached: Vec<[u8; 32]> = authority
                .signers
                .lock()
                .unwrap()
                .keys()
                .map(|k| k.2)
                .collect();
            assert!(
                cached.contains(signed_with.last().unwrap()),
                "{owner}'s own keys signed"
            );
            store.delete_domain(id).await.unwrap();
        }
        assert_ne!(signed_with[0], signed_with[1]);
    }

    #[test]
    fn verified_domains_and_single_senders() {
        let s = senders(true);
        let from = |a: &str| vec![a.to_owned()];
        assert!(s.decide("x@example.org", &from("y@example.org")).is_ok());
        assert!(s
            .decide("b@pst-bounces.example.org", &from("y@example.org"))
            .is_ok());
        assert!(s.decide("", &from("y@example.org")).is_ok());
        // A single sender: that address only, not its domain.
        assert!(s
            .decide("Alice@Gmail.Example", &from("<alice@gmail.example>"))
            .is_ok());
        let e = s
            .decide("bob@gmail.example", &from("bob@gmail.example"))
            .unwrap_err();
        assert!(e.contains("envelope sender domain gmail.example"), "{e}");
        let e = s
            .decide("x@example.org", &from("bob@gmail.example"))
            .unwrap_err();
        assert!(e.contains("From header domain gmail.example"), "{e}");
        // The return path label must be the domain's own, whole.
        assert!(s
            .decide("b@xpst-bounces.example.org", &from("y@example.org"))
            .is_err());
        // A lookalike (Cyrillic а) is another domain.
        assert!(s.decide("x@exаmple.org", &from("y@exаmple.org")).is_err());
    }

    /// README, anti-spoofing: every mailbox of the header From must be
    /// verified for the account, not only the first (RFC 5322 §3.6.2
    /// allows a From with several authors, and readers may show any).
    /// Relaxed alignment, so only the From check can refuse.
    #[test]
    fn every_from_mailbox_must_be_verified() {
        let s = senders(false);
        let from = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        for list in [
            ["y@example.org", "ceo@evil.example"],
            ["ceo@evil.example", "y@example.org"],
        ] {
            let e = s.decide("x@example.org", &from(&list)).unwrap_err();
            assert!(
                e.contains("From header domain evil.example"),
                "{list:?}: {e}"
            );
        }
        // A verified domain and a verified single sender together pass.
        assert!(s
            .decide(
                "x@example.org",
                &from(&["y@example.org", "alice@gmail.example"])
            )
            .is_ok());
    }

    #[test]
    fn strict_alignment_and_relaxed() {
        let strict = senders(true);
        let from = vec!["y@example.org".to_owned()];
        let e = strict.decide("alice@gmail.example", &from).unwrap_err();
        assert!(e.contains("alignment is strict"), "{e}");
        assert!(senders(false).decide("alice@gmail.example", &from).is_ok());
    }
}
