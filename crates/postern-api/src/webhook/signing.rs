//! SendGrid's signed event webhook: an ECDSA P-256 / SHA-256 signature over
//! the timestamp header's value followed by the request body, sent base64
//! (ASN.1 DER) in `X-Twilio-Email-Event-Webhook-Signature`; receivers hold
//! the public key as base64 DER SubjectPublicKeyInfo. `ring` does the
//! cryptography; only the SPKI wrapping of the public key is written here.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use base64::Engine;

pub const SIGNATURE_HEADER: &str = "X-Twilio-Email-Event-Webhook-Signature";
pub const TIMESTAMP_HEADER: &str = "X-Twilio-Email-Event-Webhook-Timestamp";

/// The DER prefix of a SubjectPublicKeyInfo for an uncompressed P-256 point
/// (RFC 5480 §2: id-ecPublicKey with the prime256v1 curve, then a BIT
/// STRING of 66 bytes). `ring` exposes the bare point only, and the prefix
/// is a constant, so it is spelled out rather than pulling in an ASN.1
/// encoder.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("could not generate a signing key")]
    Generate,
    #[error("the stored signing key is unreadable: {0}")]
    BadKey(String),
    #[error("signing failed")]
    Sign,
}

/// A new private key, PKCS#8 DER.
pub fn generate_key() -> Result<Vec<u8>, SigningError> {
    let rng = SystemRandom::new();
    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map(|d| d.as_ref().to_vec())
        .map_err(|_| SigningError::Generate)
}

fn key_pair(pkcs8: &[u8]) -> Result<EcdsaKeyPair, SigningError> {
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8)
        .map_err(|e| SigningError::BadKey(e.to_string()))
}

/// The verification key a receiver configures: base64 DER SPKI, the form
/// SendGrid shows ("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE…").
pub fn public_key_base64(pkcs8: &[u8]) -> Result<String, SigningError> {
    let pair = key_pair(pkcs8)?;
    let mut der = P256_SPKI_PREFIX.to_vec();
    der.extend_from_slice(pair.public_key().as_ref());
    Ok(base64::engine::general_purpose::STANDARD.encode(der))
}

/// The signature header value for `timestamp` + `body`.
pub fn sign(pkcs8: &[u8], timestamp: &str, body: &[u8]) -> Result<String, SigningError> {
    let pair = key_pair(pkcs8)?;
    let mut signed = Vec::with_capacity(timestamp.len() + body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.extend_from_slice(body);
    let sig = pair
        .sign(&SystemRandom::new(), &signed)
        .map_err(|_| SigningError::Sign)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(sig.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};

    #[test]
    fn signatures_verify_with_the_published_key_and_only_for_the_same_bytes() {
        let key = generate_key().unwrap();
        let public = public_key_base64(&key).unwrap();
        assert!(public.starts_with("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE"));
        let der = base64::engine::general_purpose::STANDARD
            .decode(&public)
            .unwrap();
        assert_eq!(der.len(), 91);
        let point = &der[P256_SPKI_PREFIX.len()..];
        let verifier = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point);

        let body = br#"[{"event":"delivered"}]"#;
        let sig = sign(&key, "1700000000", body).unwrap();
        let sig = base64::engine::general_purpose::STANDARD
            .decode(sig)
            .unwrap();
        assert!(verifier
            .verify(b"1700000000[{\"event\":\"delivered\"}]", &sig)
            .is_ok());
        assert!(verifier
            .verify(b"1700000001[{\"event\":\"delivered\"}]", &sig)
            .is_err());
        assert!(verifier
            .verify(b"1700000000[{\"event\":\"bounce\"}]", &sig)
            .is_err());
    }

    #[test]
    fn a_corrupt_key_is_an_error_not_a_panic() {
        assert!(matches!(
            sign(b"not a key", "1", b"x"),
            Err(SigningError::BadKey(_))
        ));
    }
}
