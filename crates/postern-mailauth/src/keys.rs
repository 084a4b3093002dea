//! A sending domain's two DKIM keys: RSA-2048 (what every verifier
//! understands) and Ed25519 (RFC 8463: short, fast, and what verifiers are
//! moving to). Messages are signed with both.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};

use crate::MailAuthError;

/// RFC 8301 §3.2: at least 1024 bits, 2048 recommended.
pub const RSA_BITS: usize = 2048;

#[derive(Clone)]
pub struct DkimKeys {
    /// PKCS#8 DER (keys made before aws-lc-rs generated them are PKCS#1
    /// DER; both load).
    pub rsa_private: Vec<u8>,
    /// PKCS#1 DER (RSAPublicKey), as DKIM's `p=` carries it.
    pub rsa_public: Vec<u8>,
    /// PKCS#8 DER.
    pub ed25519_private: Vec<u8>,
    /// The raw 32-byte key (RFC 8463 §4).
    pub ed25519_public: Vec<u8>,
}

impl std::fmt::Debug for DkimKeys {
    /// Never prints the private halves.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimKeys")
            .field("rsa_public_bytes", &self.rsa_public.len())
            .field("ed25519_public_bytes", &self.ed25519_public.len())
            .finish_non_exhaustive()
    }
}

impl DkimKeys {
    /// Generates both keys with aws-lc-rs, the one crypto provider (RSA
    /// generation takes tens of milliseconds; callers still run it off the
    /// async runtime).
    pub fn generate() -> Result<DkimKeys, MailAuthError> {
        let failed = |what: &str| MailAuthError::KeyGeneration(format!("{what} failed"));
        let rsa = KeyPair::generate(KeySize::Rsa2048).map_err(|_| failed("RSA-2048 generation"))?;
        let rsa_private = rsa
            .as_der()
            .map_err(|_| failed("RSA key encoding"))?
            .as_ref()
            .to_vec();
        // RFC 8017 RSAPublicKey, the form `p=` has always carried here.
        let rsa_public = rsa.public_key().as_ref().to_vec();
        let ed25519_private = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .map_err(|_| failed("Ed25519 generation"))?
            .as_ref()
            .to_vec();
        let ed25519_public = Ed25519KeyPair::from_pkcs8(&ed25519_private)
            .map_err(|_| failed("Ed25519 key decoding"))?
            .public_key()
            .as_ref()
            .to_vec();
        Ok(DkimKeys {
            rsa_private,
            rsa_public,
            ed25519_private,
            ed25519_public,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README: `postern domain add` generates RSA-2048 and Ed25519 keys.
    /// The sizes are read back from what is stored and published, not from
    /// the constant the generator was given.
    #[test]
    fn generated_keys_are_rsa_2048_and_ed25519() {
        let keys = DkimKeys::generate().unwrap();
        let rsa = KeyPair::from_pkcs8(&keys.rsa_private).unwrap();
        assert_eq!(rsa.public_modulus_len() * 8, 2048);
        // The published `p=` (RFC 8017 RSAPublicKey) is the same key.
        assert_eq!(rsa.public_key().as_ref(), keys.rsa_public.as_slice());
        let ed = Ed25519KeyPair::from_pkcs8(&keys.ed25519_private).unwrap();
        assert_eq!(ed.public_key().as_ref(), keys.ed25519_public.as_slice());
        // RFC 8463 §4: the raw 32-byte Ed25519 public key.
        assert_eq!(keys.ed25519_public.len(), 32);
        // Fresh keys each time.
        let again = DkimKeys::generate().unwrap();
        assert_ne!(again.rsa_public, keys.rsa_public);
        assert_ne!(again.ed25519_public, keys.ed25519_public);
    }
}
