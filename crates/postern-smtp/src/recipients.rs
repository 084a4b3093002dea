//! Which recipients at relay domains the `mx` listener accepts. Taking
//! every local part of a relay domain means a message to a non-existent
//! user is refused later by the internal server, and the bounce goes to
//! whatever sender the stranger claimed (backscatter). Recipients are
//! therefore checked at RCPT: against a list, or by asking the next hop
//! (a call-ahead, implemented by the delivery side, which owns outbound
//! SMTP).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;

/// What the check says about one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientVerdict {
    Accept,
    /// No such recipient (the reason, for the log).
    Refuse(String),
    /// No answer now (next hop unreachable): the client tries again later.
    TryLater(String),
}

pub trait RecipientVerifier: Send + Sync {
    fn verify<'a>(
        &'a self,
        address: &'a str,
    ) -> Pin<Box<dyn Future<Output = RecipientVerdict> + Send + 'a>>;
}

/// Every address is taken (`relay.recipient_check = "any"`).
pub struct AnyRecipient;

impl RecipientVerifier for AnyRecipient {
    fn verify<'a>(
        &'a self,
        _address: &'a str,
    ) -> Pin<Box<dyn Future<Output = RecipientVerdict> + Send + 'a>> {
        Box::pin(async { RecipientVerdict::Accept })
    }
}

/// Only listed addresses, or every address of a listed `@domain`
/// (`relay.recipient_check = "list"`). Compared case-insensitively: local
/// parts are case-sensitive by RFC 5321 §2.4, but no mail system this
/// relays for treats them so, and a case mismatch would refuse real mail.
pub struct ListedRecipients {
    addresses: HashSet<String>,
    domains: HashSet<String>,
}

impl ListedRecipients {
    pub fn new(entries: &[String]) -> Self {
        let mut addresses = HashSet::new();
        let mut domains = HashSet::new();
        for e in entries {
            let e = e.trim().to_lowercase();
            match e.strip_prefix('@') {
                Some(d) => {
                    domains.insert(d.to_owned());
                }
                None => {
                    addresses.insert(e);
                }
            }
        }
        ListedRecipients { addresses, domains }
    }

    fn knows(&self, address: &str) -> bool {
        let a = address.to_lowercase();
        self.addresses.contains(&a)
            || a.rsplit_once('@')
                .is_some_and(|(_, d)| self.domains.contains(d))
    }
}

impl RecipientVerifier for ListedRecipients {
    fn verify<'a>(
        &'a self,
        address: &'a str,
    ) -> Pin<Box<dyn Future<Output = RecipientVerdict> + Send + 'a>> {
        let verdict = if self.knows(address) {
            RecipientVerdict::Accept
        } else {
            RecipientVerdict::Refuse("not in relay.recipients".into())
        };
        Box::pin(async move { verdict })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lists_match_addresses_and_whole_domains() {
        let l = ListedRecipients::new(&["Alice@Corp.example".into(), "@all.example".into()]);
        assert_eq!(
            l.verify("alice@corp.example").await,
            RecipientVerdict::Accept
        );
        assert_eq!(
            l.verify("anyone@ALL.example").await,
            RecipientVerdict::Accept
        );
        assert!(matches!(
            l.verify("bob@corp.example").await,
            RecipientVerdict::Refuse(_)
        ));
    }
}
