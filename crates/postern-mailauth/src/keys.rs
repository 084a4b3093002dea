//! A sending domain's two DKIM keys: RSA-2048 (what every verifier
//! understands) and Ed25519 (RFC 8463: short, fast, and what verifiers are
//! moving to). Messages are signed with both.

use mail_auth::dkim::generate::DkimKeyPair;

use crate::MailAuthError;

/// RFC 8301 §3.2: at least 1024 bits, 2048 recommended.
pub const RSA_BITS: usize = 2048;

#[derive(Clone)]
pub struct DkimKeys {
    /// PKCS#1 DER.
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
    /// Generates both keys. RSA generation uses the `rsa` crate through
    /// mail-auth's `generate` feature, because ring cannot generate RSA
    /// keys; signing then uses ring. It takes about a second in a release
    /// build, so callers run it off the async runtime.
    pub fn generate() -> Result<DkimKeys, MailAuthError> {
        let rsa = DkimKeyPair::generate_rsa(RSA_BITS)
            .map_err(|e| MailAuthError::KeyGeneration(e.to_string()))?;
        let ed = DkimKeyPair::generate_ed25519()
            .map_err(|e| MailAuthError::KeyGeneration(e.to_string()))?;
        let (rsa_private, rsa_public) = rsa.into_inner();
        let (ed25519_private, ed25519_public) = ed.into_inner();
        Ok(DkimKeys {
            rsa_private,
            rsa_public,
            ed25519_private,
            ed25519_public,
        })
    }
}
