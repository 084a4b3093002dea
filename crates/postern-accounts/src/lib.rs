//! Who may send: API keys (generation, hashing, checks), passwords (Argon2id
//! on a bounded pool), SASL payload decoding, the brute-force defence, and
//! the `Authenticator` that every login path goes through.

pub mod api_key;
pub mod authenticator;
pub mod cram_md5;
pub mod defense;
pub mod oauth;
pub mod password;
pub mod sasl;
pub mod totp;

pub use api_key::{ApiKeys, IssuedKey};
pub use authenticator::{Authenticator, LoginAttempt, Proof, Rejection};
