//! DANE for SMTP (RFC 7672): when an MX host's TLSA records are proven by
//! DNSSEC, they — not the Web PKI — decide which certificate the host may
//! present, and TLS becomes mandatory (no fallback to plaintext).
//!
//! Usable records (§3.1): DANE-EE(3), matching the host's own certificate
//! or key, with no name or expiry checks (§3.1.1); and DANE-TA(2), matching
//! a trust anchor in the chain the host sends, which must then validate the
//! chain and the host name (§3.1.2). PKIX-TA(0) and PKIX-EE(1) are not
//! usable for SMTP (§3.1.3).

use std::sync::Arc;

use aws_lc_rs::digest;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::mx::Tlsa;

pub const DANE_TA: u8 = 2;
pub const DANE_EE: u8 = 3;

/// Whether a record can be used for SMTP at all (RFC 7672 §3.1.3 and RFC
/// 6698: known selectors and matching types).
pub fn usable(t: &Tlsa) -> bool {
    matches!(t.usage, DANE_TA | DANE_EE) && t.selector <= 1 && t.matching <= 2
}

/// Whether `cert` (DER) is what the record names.
pub fn matches(t: &Tlsa, cert: &[u8]) -> bool {
    let selected: &[u8] = match t.selector {
        0 => cert,
        1 => match X509Certificate::from_der(cert) {
            Ok((_, c)) => c.tbs_certificate.subject_pki.raw,
            Err(_) => return false,
        },
        _ => return false,
    };
    let digest_of = |alg| digest::digest(alg, selected);
    match t.matching {
        0 => selected == t.data.as_slice(),
        1 => digest_of(&digest::SHA256).as_ref() == t.data.as_slice(),
        2 => digest_of(&digest::SHA512).as_ref() == t.data.as_slice(),
        _ => false,
    }
}

/// A rustls verifier that accepts exactly what the TLSA records allow.
#[derive(Debug)]
pub struct DaneVerifier {
    records: Vec<Tlsa>,
    provider: Arc<CryptoProvider>,
}

impl DaneVerifier {
    pub fn new(records: Vec<Tlsa>) -> Self {
        DaneVerifier {
            records: records.into_iter().filter(usable).collect(),
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        }
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // DANE-EE: the host's own certificate (or key) is pinned.
        if self
            .records
            .iter()
            .any(|t| t.usage == DANE_EE && matches(t, end_entity))
        {
            return Ok(ServerCertVerified::assertion());
        }
        // DANE-TA: a certificate the host sends is the trust anchor; the
        // chain must validate to it and name the host.
        for ta in intermediates.iter().filter(|c| {
            self.records
                .iter()
                .any(|t| t.usage == DANE_TA && matches(t, c))
        }) {
            let mut roots = RootCertStore::empty();
            if roots.add(ta.clone()).is_err() {
                continue;
            }
            let Ok(webpki) = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                self.provider.clone(),
            )
            .build() else {
                continue;
            };
            if webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
                .is_ok()
            {
                return Ok(ServerCertVerified::assertion());
            }
        }
        Err(rustls::Error::General(
            "certificate does not match the host's DANE TLSA records".into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration that verifies with the TLSA records.
pub fn client_config(records: Vec<Tlsa>) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(DaneVerifier::new(records)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_and_matching_types() {
        let ck = rcgen::generate_simple_self_signed(vec!["mx.example".into()]).unwrap();
        let der = ck.cert.der().to_vec();
        // SPKI DER from the PEM rcgen gives for the key.
        let spki = {
            use base64::Engine;
            let pem = ck.signing_key.public_key_pem();
            let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap()
        };
        let t = |usage, selector, matching, data: Vec<u8>| Tlsa {
            usage,
            selector,
            matching,
            data,
        };
        assert!(matches(&t(3, 0, 0, der.clone()), &der));
        assert!(matches(&t(3, 1, 0, spki.clone()), &der));
        assert!(matches(
            &t(
                3,
                1,
                1,
                digest::digest(&digest::SHA256, &spki).as_ref().to_vec()
            ),
            &der
        ));
        assert!(matches(
            &t(
                3,
                0,
                2,
                digest::digest(&digest::SHA512, &der).as_ref().to_vec()
            ),
            &der
        ));
        assert!(!matches(&t(3, 1, 1, vec![0; 32]), &der));
        assert!(!matches(&t(3, 1, 1, spki.clone()), b"not a certificate"));
        assert!(usable(&t(3, 1, 1, vec![])) && usable(&t(2, 0, 1, vec![])));
        assert!(!usable(&t(1, 1, 1, vec![])), "PKIX-EE is not for SMTP");
        assert!(!usable(&t(0, 1, 1, vec![])), "PKIX-TA is not for SMTP");
    }
}
