//! Who may send: API keys (generation, hashing, checks) and SASL payload
//! decoding. Passwords, CRAM-MD5, OAuth and brute-force defence build on the
//! same `Authenticator` in later work; the credential model leaves room for
//! them (a key belongs to an account, carries scopes and an expiry).

pub mod api_key;
pub mod authenticator;
pub mod sasl;

pub use api_key::{ApiKeys, IssuedKey};
pub use authenticator::{AuthFailure, Authenticator};
