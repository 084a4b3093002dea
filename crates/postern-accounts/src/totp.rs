//! TOTP second factor (RFC 6238) for human logins to the management plane:
//! enrolment with recovery codes, verification without replays, disabling.
//!
//! HMAC-SHA-1 with 6 digits and 30-second steps: what every authenticator
//! app implements. Codes one step early or late are accepted (clock skew);
//! a step once used is never accepted again.

use std::sync::Arc;
use std::time::Duration;

use data_encoding::BASE32_NOPAD;
use postern_core::Principal;
use postern_store::{AccountRecord, StoreError, TotpRecord, TotpStore};
use thiserror::Error;

use crate::authenticator::PASSWORD_KEY_ID;
use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::hmac;
use rand::RngCore;

const STEP_SECONDS: i64 = 30;
const DIGITS: u32 = 6;
/// RFC 4226 §4 R6: at least 128 bits; 160 bits as the RFC's examples use.
const SECRET_BYTES: usize = 20;
const RECOVERY_CODES: usize = 10;
/// Steps either side of now that are accepted (RFC 6238 §5.2).
const SKEW_STEPS: i64 = 1;
/// Failed verifications an account may have within `FAILURE_WINDOW`; the
/// next attempt is refused unchecked until the oldest of them leaves the
/// window. RFC 6238 §5.2 asks the verifier to throttle: six digits are a
/// million codes, three of which are accepted at any moment, so without a
/// limit a few hundred thousand guesses find one. With 5 per 15 minutes an
/// attacker gets 480 guesses a day: a 0.14% chance.
pub const MAX_FAILURES: usize = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

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
    /// Wrong, replayed or used up; counted. `locked_until` is set when this
    /// failure used up the allowance (the lockout starts now).
    Rejected {
        locked_until: Option<i64>,
    },
    /// Too many recent failures: not checked at all (a right code too is
    /// refused) until `until` (unix milliseconds).
    Locked {
        until: i64,
    },
    NotEnrolled,
}

impl TotpOutcome {
    pub fn accepted(&self) -> bool {
        matches!(
            self,
            TotpOutcome::Accepted | TotpOutcome::Confirmed | TotpOutcome::AcceptedRecoveryCode
        )
    }
}

/// Why a credential-minting action was refused for want of a second factor.
#[derive(Debug, Error)]
pub enum SecondFactorError {
    #[error("a second factor is required: this account requires a current TOTP code for actions that create credentials when logged in with a password")]
    Missing,
    #[error("a second factor is required, but this account has no active TOTP enrolment")]
    NotEnrolled,
    #[error("the TOTP code was rejected")]
    Rejected { locked_until: Option<i64> },
    #[error("too many failed TOTP codes; try again later")]
    Locked { until: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether an action that mints credentials (API keys, sending domains)
/// needs a second factor: only when the account asks for it
/// (`require_2fa_for_credentials`) and the caller logged in with a
/// password. An API key is itself a credential the account issued, so a
/// key-authenticated call is not asked again.
pub fn second_factor_needed(principal: &Principal, account: &AccountRecord) -> bool {
    account.require_2fa_for_credentials && principal.key_id == PASSWORD_KEY_ID
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

    /// Checks a 6-digit code (or a recovery code) at `unix_seconds`,
    /// within the attempt limit: a failure is recorded, a success forgets
    /// earlier failures, and while the account is locked nothing is checked.
    pub async fn verify_at(
        &self,
        account: &str,
        code: &str,
        unix_seconds: i64,
    ) -> Result<TotpOutcome, StoreError> {
        let Some(record) = self.store.get_totp(account.to_owned()).await? else {
            return Ok(TotpOutcome::NotEnrolled);
        };
        let now_ms = unix_seconds.saturating_mul(1000);
        let window = FAILURE_WINDOW.as_millis() as i64;
        let since = now_ms - window;
        // The attempt is counted as a failure before its code is checked
        // (and forgotten if it succeeds): checking first and counting after
        // would let concurrent guesses all pass a count none had raised yet.
        let (attempt, failures) = self
            .store
            .begin_totp_attempt(account.to_owned(), now_ms, since)
            .await?;
        if failures.len() > MAX_FAILURES {
            // Locked until enough earlier failures have aged out of the
            // window; this attempt, refused unchecked, does not extend it.
            self.store
                .forget_totp_attempt(account.to_owned(), attempt)
                .await?;
            let earlier = &failures[..failures.len() - 1];
            let until = earlier[earlier.len() - MAX_FAILURES] + window;
            return Ok(TotpOutcome::Locked { until });
        }
        let outcome = self.check(account, &record, code, unix_seconds).await?;
        if outcome.accepted() {
            self.store.clear_totp_failures(account.to_owned()).await?;
            return Ok(outcome);
        }
        let locked_until = (failures.len() >= MAX_FAILURES)
            .then(|| failures[failures.len() - MAX_FAILURES] + window);
        Ok(TotpOutcome::Rejected { locked_until })
    }

    /// The check itself, without the attempt limit.
    async fn check(
        &self,
        account: &str,
        record: &TotpRecord,
        code: &str,
        unix_seconds: i64,
    ) -> Result<TotpOutcome, StoreError> {
        let rejected = TotpOutcome::Rejected { locked_until: None };
        let code = code.trim();
        if code.len() == DIGITS as usize && code.bytes().all(|b| b.is_ascii_digit()) {
            let Ok(value) = code.parse::<u32>() else {
                return Ok(rejected);
            };
            let now = step_at(unix_seconds);
            for step in (now - SKEW_STEPS)..=(now + SKEW_STEPS) {
                if step > record.last_step && hotp(&record.secret, step as u64) == value {
                    if !self
                        .store
                        .accept_totp_step(account.to_owned(), step)
                        .await?
                    {
                        return Ok(rejected);
                    }
                    return Ok(if record.confirmed {
                        TotpOutcome::Accepted
                    } else {
                        TotpOutcome::Confirmed
                    });
                }
            }
            return Ok(rejected);
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
        Ok(rejected)
    }

    /// Whether the account has an active (confirmed) second factor: then
    /// removing or replacing it needs a code.
    pub async fn active(&self, account: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .get_totp(account.to_owned())
            .await?
            .is_some_and(|r| r.confirmed))
    }

    /// Enforces `second_factor_needed` for an action that mints
    /// credentials: Ok when no second factor is needed or `code` is
    /// accepted (the attempt counts against the limit like any other).
    pub async fn require_for_credentials(
        &self,
        principal: &Principal,
        account: &AccountRecord,
        code: Option<&str>,
    ) -> Result<(), SecondFactorError> {
        if !second_factor_needed(principal, account) {
            return Ok(());
        }
        let Some(code) = code else {
            return Err(SecondFactorError::Missing);
        };
        match self.verify(&account.name, code).await? {
            o if o.accepted() => Ok(()),
            TotpOutcome::NotEnrolled => Err(SecondFactorError::NotEnrolled),
            TotpOutcome::Locked { until } => Err(SecondFactorError::Locked { until }),
            TotpOutcome::Rejected { locked_until } => {
                Err(SecondFactorError::Rejected { locked_until })
            }
            _ => Err(SecondFactorError::Rejected { locked_until: None }),
        }
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
            TotpOutcome::Rejected { locked_until: None }
        );
        assert_eq!(
            totp.verify_at("admin", &code(t), t).await.unwrap(),
            TotpOutcome::Confirmed
        );
        assert_eq!(
            totp.verify_at("admin", &code(t), t).await.unwrap(),
            TotpOutcome::Rejected { locked_until: None },
            "replay"
        );
        assert_eq!(
            totp.verify_at("admin", &code(t + 30), t).await.unwrap(),
            TotpOutcome::Accepted,
            "skew +1"
        );
        assert_eq!(
            totp.verify_at("admin", &code(t + 300), t).await.unwrap(),
            TotpOutcome::Rejected { locked_until: None }
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
            TotpOutcome::Rejected { locked_until: None },
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

    fn code_at(secret: &[u8], t: i64) -> String {
        format!("{:06}", hotp(secret, step_at(t) as u64))
    }

    /// A code that is none of those accepted around `t`.
    fn wrong_at(secret: &[u8], t: i64) -> String {
        let valid: Vec<String> = (-2..=2).map(|d| code_at(secret, t + 30 * d)).collect();
        (0..1_000_000)
            .map(|n| format!("{n:06}"))
            .find(|c| !valid.contains(c))
            .unwrap()
    }

    /// Twenty wrong codes at once: no more than the limit are ever checked;
    /// the rest find the account locked.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_attempts_cannot_pass_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let totp = Arc::new(Totp::new(store.clone(), "Postern"));
        let e = totp.enroll("admin").await.unwrap();
        let secret = BASE32_NOPAD.decode(e.secret_base32.as_bytes()).unwrap();
        let t = 1_800_000_000;
        let wrong = wrong_at(&secret, t);
        let barrier = Arc::new(tokio::sync::Barrier::new(20));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (totp, wrong, barrier) = (totp.clone(), wrong.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    totp.verify_at("admin", &wrong, t).await.unwrap()
                })
            })
            .collect();
        let mut checked = 0;
        for task in tasks {
            if matches!(task.await.unwrap(), TotpOutcome::Rejected { .. }) {
                checked += 1;
            }
        }
        assert_eq!(
            checked, MAX_FAILURES,
            "codes checked among 20 racing attempts"
        );
    }

    #[tokio::test]
    async fn failures_lock_the_account_until_the_window_passes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let totp = Totp::new(store.clone(), "Postern");
        let e = totp.enroll("admin").await.unwrap();
        let secret = BASE32_NOPAD.decode(e.secret_base32.as_bytes()).unwrap();
        let t = 1_800_000_000;
        assert!(totp
            .verify_at("admin", &code_at(&secret, t), t)
            .await
            .unwrap()
            .accepted());
        let wrong = wrong_at(&secret, t + 60);
        for i in 1..MAX_FAILURES {
            assert_eq!(
                totp.verify_at("admin", &wrong, t + 60).await.unwrap(),
                TotpOutcome::Rejected { locked_until: None },
                "failure {i}"
            );
        }
        let window = FAILURE_WINDOW.as_millis() as i64;
        let until = (t + 60) * 1000 + window;
        assert_eq!(
            totp.verify_at("admin", &wrong, t + 60).await.unwrap(),
            TotpOutcome::Rejected {
                locked_until: Some(until)
            },
            "the fifth failure locks"
        );
        // Locked: even the right code (or a recovery code) is not checked.
        assert_eq!(
            totp.verify_at("admin", &code_at(&secret, t + 90), t + 90)
                .await
                .unwrap(),
            TotpOutcome::Locked { until }
        );
        assert_eq!(
            totp.verify_at("admin", &e.recovery_codes[0], t + 90)
                .await
                .unwrap(),
            TotpOutcome::Locked { until }
        );
        // The state is in the store: another process sees the same lock.
        let other = Totp::new(store.clone(), "Postern");
        assert!(matches!(
            other.verify_at("admin", &wrong, t + 120).await.unwrap(),
            TotpOutcome::Locked { .. }
        ));
        // Once the window has passed, a right code works and resets the count.
        let later = until / 1000 + 1;
        assert_eq!(
            totp.verify_at("admin", &code_at(&secret, later), later)
                .await
                .unwrap(),
            TotpOutcome::Accepted
        );
        assert!(store
            .totp_failures("admin".into(), 0)
            .await
            .unwrap()
            .is_empty());
        // Re-enrolling does not reset a count in progress.
        totp.verify_at("admin", &wrong, later).await.unwrap();
        totp.enroll("admin").await.unwrap();
        assert_eq!(
            store.totp_failures("admin".into(), 0).await.unwrap().len(),
            1
        );
    }

    fn principal(key_id: &str) -> Principal {
        Principal {
            account_id: 0,
            account: "admin".into(),
            key_id: key_id.into(),
            scopes: vec![postern_core::principal::SCOPE_FULL_ACCESS.into()],
        }
    }

    #[tokio::test]
    async fn credential_minting_needs_a_second_factor_after_a_password_login() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let totp = Totp::new(store.clone(), "Postern");
        use postern_store::AccountStore;
        let mut account = store.get_account("admin".into()).await.unwrap().unwrap();
        let password = principal(PASSWORD_KEY_ID);
        let api_key = principal("k1");

        // Off (the default): nothing is asked.
        assert!(!second_factor_needed(&password, &account));
        totp.require_for_credentials(&password, &account, None)
            .await
            .unwrap();

        account.require_2fa_for_credentials = true;
        assert!(second_factor_needed(&password, &account));
        assert!(
            !second_factor_needed(&api_key, &account),
            "API keys are not asked"
        );
        totp.require_for_credentials(&api_key, &account, None)
            .await
            .unwrap();
        assert!(matches!(
            totp.require_for_credentials(&password, &account, None)
                .await,
            Err(SecondFactorError::Missing)
        ));
        assert!(matches!(
            totp.require_for_credentials(&password, &account, Some("123456"))
                .await,
            Err(SecondFactorError::NotEnrolled)
        ));

        let e = totp.enroll("admin").await.unwrap();
        let secret = BASE32_NOPAD.decode(e.secret_base32.as_bytes()).unwrap();
        let now = postern_core::time::now_millis() / 1000;
        assert!(totp
            .verify_at("admin", &code_at(&secret, now - 30), now)
            .await
            .unwrap()
            .accepted());
        let wrong = wrong_at(&secret, now);
        assert!(matches!(
            totp.require_for_credentials(&password, &account, Some(&wrong))
                .await,
            Err(SecondFactorError::Rejected { .. })
        ));
        totp.require_for_credentials(&password, &account, Some(&code_at(&secret, now)))
            .await
            .unwrap();
    }
}
