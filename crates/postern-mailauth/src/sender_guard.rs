//! Anti-spoofing: an authenticated account sends only as senders it has
//! verified — the envelope sender and every header From address in a
//! verified domain of the account (a subuser may use its parent's), or the
//! envelope in that domain's return-path subdomain. Under the account's
//! alignment rule "strict" (the default) the envelope sender must also be
//! in the From domain (or its return path), as DMARC alignment wants.
//!
//! Domains are compared as ASCII after lower-casing: a lookalike domain
//! (an IDN homograph such as "exаmple.org" with a Cyrillic "а") is a
//! different domain and is refused unless itself verified.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use mail_auth::AuthenticatedMessage;
use postern_queue::SenderPolicy;
use postern_store::{AccountStore, AuditEntry, AuditStore, DomainRecord, DomainStore};

pub trait GuardStore: AccountStore + DomainStore + AuditStore {}
impl<T: AccountStore + DomainStore + AuditStore> GuardStore for T {}

pub struct SenderGuard {
    store: Arc<dyn GuardStore>,
}

fn domain_of(address: &str) -> Option<String> {
    let address = address.trim().trim_start_matches('<').trim_end_matches('>');
    let (_, domain) = address.rsplit_once('@')?;
    Some(domain.trim_end_matches('.').to_ascii_lowercase())
}

/// Whether `domain` is a verified domain, or the return-path subdomain of
/// one (for the envelope only).
fn covered<'a>(
    domain: &str,
    verified: &'a [DomainRecord],
    envelope: bool,
) -> Option<&'a DomainRecord> {
    verified.iter().find(|d| {
        d.domain == domain || (envelope && domain == format!("{}.{}", d.return_path, d.domain))
    })
}

impl SenderGuard {
    pub fn new(store: Arc<dyn GuardStore>) -> Self {
        SenderGuard { store }
    }

    async fn decide(&self, account: &str, mail_from: &str, message: &[u8]) -> Result<(), String> {
        let me = self
            .store
            .get_account(account.to_owned())
            .await
            .map_err(|e| format!("account lookup failed: {e}"))?
            .ok_or_else(|| "unknown account".to_owned())?;
        let mut verified: Vec<DomainRecord> = Vec::new();
        for owner in std::iter::once(me.name.clone()).chain(me.parent.clone()) {
            let list = self
                .store
                .list_domains(Some(owner))
                .await
                .map_err(|e| format!("domain lookup failed: {e}"))?;
            verified.extend(list.into_iter().filter(|d| d.verified_at.is_some()));
        }
        let envelope_domain = if mail_from.is_empty() {
            None
        } else {
            let d = domain_of(mail_from).ok_or("the envelope sender has no domain")?;
            if covered(&d, &verified, true).is_none() {
                return Err(format!(
                    "the envelope sender domain {d} is not verified for this account (postern domain add / verify)"
                ));
            }
            Some(d)
        };
        let from: Vec<String> = AuthenticatedMessage::parse(message)
            .map(|m| m.from.iter().filter_map(|a| domain_of(a)).collect())
            .unwrap_or_default();
        for d in &from {
            if covered(d, &verified, false).is_none() {
                return Err(format!(
                    "the From header domain {d} is not verified for this account"
                ));
            }
        }
        let strict = me.sender_alignment.as_deref() != Some("relaxed");
        if let (true, Some(env), Some(header)) = (strict, &envelope_domain, from.first()) {
            let aligned = covered(env, &verified, true).is_some_and(|d| d.domain == *header);
            if !aligned {
                return Err(format!(
                    "the envelope sender domain {env} and the From domain {header} differ (alignment is strict for this account)"
                ));
            }
        }
        Ok(())
    }

    async fn check_and_audit(
        &self,
        account: &str,
        mail_from: &str,
        message: &[u8],
    ) -> Result<(), String> {
        let result = self.decide(account, mail_from, message).await;
        if let Err(reason) = &result {
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
        result
    }
}

impl SenderPolicy for SenderGuard {
    fn check<'a>(
        &'a self,
        account: &'a str,
        mail_from: &'a str,
        message: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(self.check_and_audit(account, mail_from, message))
    }
}
