//! TOTP second factor (RFC 6238) for human logins to the management plane:
//! enrolment with recovery codes, verification without replays, disabling.
//!
//! HMAC-SHA-1 with 6 digits and 30-second steps: what every authenticator
//! app implements. Codes one step early or late are accepted (clock skew);
//! a step once used is never accepted again.

use std::sync::Arc;

use data_encoding::BASE32_NOPAD;
use postern_store::{StoreError, TotpRecord, TotpStore};
use rand::RngCore;
use ring::digest::{digest, SHA256};
use ring::hmac;

const STEP_SECONDS: i64 = 30;
const DIGITS: u32 = 6;
/// RFC 4226 §4 R6: at least 128 bits; 160 bits as the RFC's examples use.
const SECRET_BYTES: usize = 20;
const RECOVERY_CODES: usize = 10;
/// Steps either side of now that are accepted (RFC 6238 §5.2).
const SKEW_STEPS: i64 = 1;

#[derive(Debug, Clone)]
pub struct Enrollment {
    /// Base32, for typing into an app.
    pub secret_base32: String,
    /// `otpauth://` URI, for a QR code.
    pub uri: String,
    /// Shown once; each works once.
    pub recovery_codes: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum TotpOutcome {
    Accepted,
    /// The enrolment was pending and is now active.
    Confirmed,
    AcceptedRecoveryCode,
    Rejected,
    NotEnrolled,
}

/// RFC 4226 §5.3 HOTP value for a counter.
pub fn hotp(secret: &[u8], counter: u64) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let mac = hmac::sign(&key, &counter.to_be_bytes());
    let h = mac.as_ref();
    let offset = (h[h.len() - 1] & 0x0f) as usize;
    let bin = u32::from_be_bytes([
        h[offset] & 0x7f,
        h[offset + 1],
        h[offset + 2],
        h[offset + 3],
    ]);
    bin % 10u32.pow(DIGITS)
}

fn step_at(unix_seconds: i64) -> i64 {
    unix_seconds.div_euclid(STEP_SECONDS)
}

fn recovery_hash(code: &str) -> String {
    let normalized: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_lowercase();
    digest(&SHA256, normalized.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn recovery_code() -> String {
    // 10 characters of base32: 50 bits, plenty for a single-use code that
    // sits behind the brute-force defence.
    let mut raw = [0u8; 8];
    rand::rng().fill_bytes(&mut raw);
    let s = BASE32_NOPAD.encode(&raw).to_lowercase();
    format!("{}-{}", &s[..5], &s[5..10])
}

pub struct Totp {
    store: Arc<dyn TotpStore>,
    issuer: String,
}

impl Totp {
    pub fn new(store: Arc<dyn TotpStore>, issuer: impl Into<String>) -> Self {
        Totp {
            store,
            issuer: issuer.into(),
        }
    }

    /// Starts an enrolment (replacing any earlier one); active once a code
    /// from the app has been verified.
    pub async fn enroll(&self, account: &str) -> Result<Enrollment, StoreError> {
        let mut secret = vec![0u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut secret);
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| recovery_code()).collect();
        self.store
            .put_totp(TotpRecord {
                account: account.to_owned(),
                secret: secret.clone(),
                confirmed: false,
                last_step: 0,
                recovery_hashes: codes.iter().map(|c| recovery_hash(c)).collect(),
                created_at: postern_core::time::now_millis(),
            })
            .await?;
        let b32 = BASE32_NOPAD.encode(&secret);
        let uri = format!(
            "otpauth://totp/{issuer}:{account}?secret={b32}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}",
            issuer = self.issuer
        );
        Ok(Enrollment {
            secret_base32: b32,
            uri,
            recovery_codes: codes,
        })
    }

    /// Checks a 6-digit code (or a recovery code) at `unix_seconds`.
    pub async fn verify_at(
        &self,
        account: &str,
        code: &str,
        unix_seconds: i64,
    ) -> Result<TotpOutcome, StoreError> {
        let Some(record) = self.store.get_totp(account.to_owned()).await? else {
            return Ok(TotpOutcome::NotEnrolled);
        };
        let code = code.trim();
        if code.len() == DIGITS as usize && code.bytes().all(|b| b.is_ascii_digit()) {
            let Ok(value) = code.parse::<u32>() else {
                return Ok(TotpOutcome::Rejected);
            };
            let now = step_at(unix_seconds);
            for step in (now - SKEW_STEPS)..=(now + SKEW_STEPS) {
                if step > record.last_step && hotp(&record.secret, step as u64) == value {
                    if !self
                        .store
                        .accept_totp_step(account.to_owned(), step)
                        .await?
                    {
                        return Ok(TotpOutcome::Rejected);
                    }
                    return Ok(if record.confirmed {
                        TotpOutcome::Accepted
                    } else {
                        TotpOutcome::Confirmed
                    });
                }
            }
            return Ok(TotpOutcome::Rejected);
        }
        // Recovery codes only once the factor is active.
        if record.confirmed
            && self
                .store
                .use_recovery_code(account.to_owned(), recovery_hash(code))
                .await?
        {
            return Ok(TotpOutcome::AcceptedRecoveryCode);
        }
        Ok(TotpOutcome::Rejected)
    }

    pub async fn verify(&self, account: &str, code: &str) -> Result<TotpOutcome, StoreError> {
        self.verify_at(account, code, postern_core::time::now_millis() / 1000)
            .await
    }

    pub async fn disable(&self, account: &str) -> Result<bool, StoreError> {
        self.store.delete_totp(account.to_owned()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_store::EmbeddedStore;

    #[test]
    fn rfc_6238_vectors() {
        // RFC 6238 Appendix B, SHA-1 seed; the last 6 of the 8-digit values.
        let seed = b"12345678901234567890";
        for (t, expected) in [
            (59, 287_082),
            (1_111_111_109, 81_804),
            (1_234_567_890, 5_924),
            (2_000_000_000, 279_037),
        ] {
            assert_eq!(hotp(seed, step_at(t) as u64), expected, "t={t}");
        }
    }

    #[tokio::test]
    async fn enroll_confirm_verify_no_replay_recovery_disable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let totp = Totp::new(store.clone(), "Postern");
        let e = totp.enroll("admin").await.unwrap();
        assert!(e.uri.starts_with("otpauth://totp/Postern:admin?secret="));
        let secret = BASE32_NOPAD.decode(e.secret_base32.as_bytes()).unwrap();
        let t = 1_800_000_000;
        let code = |t: i64| format!("{:06}", hotp(&secret, step_at(t) as u64));

        // A recovery code does nothing before the factor is confirmed.
        assert_eq!(
            totp.verify_at("admin", &e.recovery_codes[0], t)
                .await
                .unwrap(),
            TotpOutcome::Rejected
        );
        assert_eq!(
            totp.verify_at("admin", &code(t), t).await.unwrap(),
            TotpOutcome::Confirmed
        );
        assert_eq!(
            totp.verify_at("admin", &code(t), t).await.unwrap(),
            TotpOutcome::Rejected,
            "replay"
        );
        assert_eq!(
            totp.verify_at("admin", &code(t + 30), t).await.unwrap(),
            TotpOutcome::Accepted,
            "skew +1"
        );
        assert_eq!(
            totp.verify_at("admin", &code(t + 300), t).await.unwrap(),
            TotpOutcome::Rejected
        );
        assert_eq!(
            totp.verify_at("admin", "000000", t + 60).await.unwrap() == TotpOutcome::Accepted,
            code(t + 60) == "000000"
        );
        let rc = e.recovery_codes[3].to_uppercase();
        assert_eq!(
            totp.verify_at("admin", &rc, t).await.unwrap(),
            TotpOutcome::AcceptedRecoveryCode
        );
        assert_eq!(
            totp.verify_at("admin", &rc, t).await.unwrap(),
            TotpOutcome::Rejected,
            "single use"
        );
        assert!(totp.disable("admin").await.unwrap());
        assert_eq!(
            totp.verify_at("admin", &code(t + 90), t + 90)
                .await
                .unwrap(),
            TotpOutcome::NotEnrolled
        );
        assert!(matches!(
            totp.enroll("nobody").await,
            Err(StoreError::NotFound)
        ));
    }
}
