//! Who may send: API keys (generation, hashing, checks), passwords (Argon2id
//! on a bounded pool), SASL payload decoding, the brute-force defence, and
//! the `Authenticator` that every login path goes through.

pub mod api_key;
pub mod authenticator;
pub mod cram_md5;
pub mod defense;
mod login_cache;
pub mod oauth;
pub mod password;
pub mod sasl;
pub mod totp;

pub use api_key::{ApiKeys, IssuedKey};
pub use authenticator::{Authenticator, LoginAttempt, Proof, Rejection};

/// Account and subuser names double as SMTP user names: 1–64 letters,
/// digits, '.', '_' and '-', and never the API-key user name `apikey`.
pub fn valid_account_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != authenticator::API_KEY_USERNAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// What `valid_account_name` requires, for error messages.
pub const ACCOUNT_NAME_RULE: &str =
    "1–64 characters of letters, digits, '.', '_' and '-' (and not \"apikey\")";
