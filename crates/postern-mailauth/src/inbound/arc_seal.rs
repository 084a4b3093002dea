//! ARC sealing (RFC 8617 §5.1) of the inbound mail Postern passes on: the
//! next hop (often a hosted mailbox service behind the gateway) sees the
//! message come from Postern's address, where the sender's SPF fails and
//! a footer may break its DKIM; with Postern's seal, and Postern listed
//! among its trusted ARC sealers, it can take Postern's results instead.
//!
//! The seal is made with the RSA DKIM key of one domain Postern holds
//! verified (`inbound_auth.arc_seal_domain`, keys from `postern domain
//! add`): its `<selector>-rsa._domainkey` record is already published, so
//! nothing new has to go into DNS. RSA, not Ed25519: ARC verifiers
//! (RFC 8617 §4.1.3 says rsa-sha256) do not all know Ed25519.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, Done};
use mail_auth::{ArcOutput, AuthenticatedMessage, AuthenticationResults};
use postern_store::DomainStore;

use crate::sign::{rsa_key, SIGNED_HEADERS};

type Sealer = ArcSealer<RsaKey<Sha256>, Done>;

/// How long the domain's key is used before the store is asked again (a
/// rotation or removal takes effect within it)...
const REFRESH: Duration = Duration::from_secs(60);
/// ...and how long "no usable key" is, so a domain verified now seals
/// within seconds.
const REFRESH_MISSING: Duration = Duration::from_secs(5);

struct Loaded {
    at: Instant,
    sealer: Option<Arc<Sealer>>,
}

pub struct ArcSealing {
    store: Arc<dyn DomainStore>,
    domain: String,
    loaded: Mutex<Option<Loaded>>,
}

impl ArcSealing {
    pub fn new(store: Arc<dyn DomainStore>, domain: &str) -> Self {
        ArcSealing {
            store,
            domain: domain.to_ascii_lowercase(),
            loaded: Mutex::new(None),
        }
    }

    /// The sealer for the domain's current key; None while the domain is
    /// not verified (its key may not be published) or its key is unusable.
    pub async fn sealer(&self) -> Option<Arc<Sealer>> {
        if let Some(l) = self
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let fresh_for = if l.sealer.is_some() {
                REFRESH
            } else {
                REFRESH_MISSING
            };
            if l.at.elapsed() < fresh_for {
                return l.sealer.clone();
            }
        }
        let sealer = match self.store.verified_domain(self.domain.clone()).await {
            Ok(Some(record)) => match rsa_key(&record.rsa_private) {
                Ok(key) => Some(Arc::new(
                    ArcSealer::from_key(key)
                        .domain(self.domain.clone())
                        .selector(format!("{}-rsa", record.selector))
                        .headers(SIGNED_HEADERS.iter().copied())
                        .header_canonicalization(Canonicalization::Relaxed)
                        .body_canonicalization(Canonicalization::Relaxed),
                )),
                Err(e) => {
                    tracing::error!(domain = %self.domain, error = %e, "ARC sealing key unusable; not sealing");
                    None
                }
            },
            Ok(None) => {
                tracing::warn!(domain = %self.domain, "inbound_auth.arc_seal_domain is not a verified domain; not sealing");
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "ARC sealing key not read; not sealing");
                None
            }
        };
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = Some(Loaded {
            at: Instant::now(),
            sealer: sealer.clone(),
        });
        sealer
    }

    /// The ARC set (ARC-Seal, ARC-Message-Signature,
    /// ARC-Authentication-Results: CRLF-terminated fields) for a message
    /// with these results. None when the chain that came with it failed
    /// (RFC 8617 §5.1.2: a failed chain is not sealed further) or the
    /// seal cannot be made.
    pub fn seal(
        sealer: &Sealer,
        message: &AuthenticatedMessage<'_>,
        results: &AuthenticationResults<'_>,
        arc: &ArcOutput<'_>,
    ) -> Option<String> {
        if !arc.can_be_sealed() {
            metrics::counter!("postern_arc_sealed_total", "result" => "chain_failed").increment(1);
            return None;
        }
        match sealer.seal(message, results, arc) {
            Ok(set) => {
                metrics::counter!("postern_arc_sealed_total", "result" => "sealed").increment(1);
                Some(set.to_header())
            }
            Err(e) => {
                metrics::counter!("postern_arc_sealed_total", "result" => "error").increment(1);
                tracing::warn!(error = %e, "ARC seal not made");
                None
            }
        }
    }
}
