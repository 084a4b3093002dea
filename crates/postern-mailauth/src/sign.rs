//! DKIM signing of a message for one domain with both of its keys.

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer};

use crate::MailAuthError;

/// The headers signed. `From` is listed twice: the second, absent
/// instance is signed as empty, so nobody can add a second From after
/// signing (RFC 6376 §8.15, "oversigning"); the others are signed as
/// empty too when absent, so they cannot be added later either.
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "From",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// A domain's signers, built once and used for every message.
pub struct DomainSigner {
    rsa: Option<DkimSigner<RsaKey<Sha256>, Done>>,
    ed25519: Option<DkimSigner<Ed25519Key, Done>>,
}

impl DomainSigner {
    /// `rsa`: selector and PKCS#1 DER; `ed25519`: selector and PKCS#8 DER.
    pub fn new(
        domain: &str,
        rsa: Option<(&str, &[u8])>,
        ed25519: Option<(&str, &[u8])>,
    ) -> Result<Self, MailAuthError> {
        let rsa = match rsa {
            Some((selector, der)) => {
                let key = RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs1(
                    PrivatePkcs1KeyDer::from(der),
                ))
                .map_err(|e| MailAuthError::BadKey {
                    what: "RSA",
                    reason: e.to_string(),
                })?;
                Some(
                    DkimSigner::from_key(key)
                        .domain(domain)
                        .selector(selector)
                        .headers(SIGNED_HEADERS.iter().copied())
                        .header_canonicalization(Canonicalization::Relaxed)
                        .body_canonicalization(Canonicalization::Relaxed),
                )
            }
            None => None,
        };
        let ed25519 = match ed25519 {
            Some((selector, der)) => {
                let key = Ed25519Key::from_pkcs8_der(der).map_err(|e| MailAuthError::BadKey {
                    what: "Ed25519",
                    reason: e.to_string(),
                })?;
                Some(
                    DkimSigner::from_key(key)
                        .domain(domain)
                        .selector(selector)
                        .headers(SIGNED_HEADERS.iter().copied())
                        .header_canonicalization(Canonicalization::Relaxed)
                        .body_canonicalization(Canonicalization::Relaxed),
                )
            }
            None => None,
        };
        Ok(DomainSigner { rsa, ed25519 })
    }

    /// `DKIM-Signature` header fields (CRLF-terminated) to put in front of
    /// the message: Ed25519 first, then RSA, both relaxed/relaxed.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, MailAuthError> {
        let mut out = Vec::new();
        if let Some(signer) = &self.ed25519 {
            let sig = signer
                .sign(message)
                .map_err(|e| MailAuthError::Signing(e.to_string()))?;
            out.extend_from_slice(sig.to_header().as_bytes());
        }
        if let Some(signer) = &self.rsa {
            let sig = signer
                .sign(message)
                .map_err(|e| MailAuthError::Signing(e.to_string()))?;
            out.extend_from_slice(sig.to_header().as_bytes());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Borrow;
    use std::collections::HashMap;
    use std::hash::Hash;
    use std::sync::{Arc, Mutex};

    use mail_auth::common::parse::TxtRecordParser;
    use mail_auth::common::verify::DomainKey;
    use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator, ResolverCache, Txt};

    use super::*;
    use crate::records::DomainSetup;
    use crate::DkimKeys;

    /// The published records, as the verifier's DNS cache (no network).
    struct Published(Mutex<HashMap<Box<str>, Txt>>);

    impl ResolverCache<Box<str>, Txt> for Published {
        fn get<Q>(&self, name: &Q) -> Option<Txt>
        where
            Box<str>: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            self.0.lock().unwrap().get(name).cloned()
        }
        fn remove<Q>(&self, name: &Q) -> Option<Txt>
        where
            Box<str>: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            self.0.lock().unwrap().remove(name)
        }
        fn insert(&self, key: Box<str>, value: Txt, _: std::time::Instant) {
            self.0.lock().unwrap().insert(key, value);
        }
    }

    #[tokio::test]
    async fn both_signatures_verify_with_the_published_records_and_break_on_change() {
        let keys = DkimKeys::generate().unwrap();
        let setup = DomainSetup {
            domain: "example.com",
            selector: "pst1",
            keys: &keys,
            mail_host: "mta.example.net",
            source_ips: &[],
            return_path_label: "pst-bounces",
            dmarc_rua: "dmarc@example.com",
        };
        let published = Published(Mutex::new(HashMap::new()));
        for r in setup
            .records()
            .iter()
            .filter(|r| r.name.contains("._domainkey."))
        {
            let key = DomainKey::parse(r.value.as_bytes()).unwrap();
            published.insert(
                format!("{}.", r.name).into_boxed_str(),
                Txt::DomainKey(Arc::new(key)),
                std::time::Instant::now(),
            );
        }
        let signer = DomainSigner::new(
            "example.com",
            Some((&setup.rsa_selector(), &keys.rsa_private)),
            Some((&setup.ed25519_selector(), &keys.ed25519_private)),
        )
        .unwrap();
        let body = b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nHello  there \r\n\r\n";
        let headers = signer.sign(body).unwrap();
        let text = String::from_utf8(headers.clone()).unwrap();
        assert_eq!(text.matches("DKIM-Signature:").count(), 2);
        assert!(text.contains("a=ed25519-sha256") && text.contains("a=rsa-sha256"));
        assert!(text.contains("c=relaxed/relaxed"));
        // From is signed twice: once present, once as absent (oversigned).
        assert!(
            text.to_ascii_lowercase().matches("from:from").count() == 2
                || text.to_ascii_lowercase().contains("from : from"),
            "{text}"
        );

        let verifier = MessageAuthenticator::new_cloudflare().unwrap();
        let verify = |message: Vec<u8>| {
            let verifier = &verifier;
            let published = &published;
            async move {
                let msg = AuthenticatedMessage::parse(&message).unwrap();
                let results = verifier
                    .verify_dkim(mail_auth::Parameters::new(&msg).with_txt_cache(published))
                    .await;
                results
                    .iter()
                    .map(|r| matches!(r.result(), DkimResult::Pass))
                    .collect::<Vec<bool>>()
            }
        };
        let mut signed = headers.clone();
        signed.extend_from_slice(body);
        assert_eq!(verify(signed).await, vec![true, true]);

        // Relaxed canonicalization forgives whitespace changes in transit…
        let mut rewrapped = headers.clone();
        rewrapped.extend_from_slice(&body[..body.len() - 2]);
        assert_eq!(verify(rewrapped).await, vec![true, true]);
        // …but not a changed word, or a second From.
        let mut tampered = headers.clone();
        tampered.extend_from_slice(
            &body
                .to_vec()
                .iter()
                .map(|b| if *b == b'H' { b'J' } else { *b })
                .collect::<Vec<u8>>(),
        );
        assert_eq!(verify(tampered).await, vec![false, false]);
        let mut second_from = headers.clone();
        second_from.extend_from_slice(b"From: mallory@evil.example\r\n");
        second_from.extend_from_slice(body);
        assert_eq!(verify(second_from).await, vec![false, false]);
    }
}
