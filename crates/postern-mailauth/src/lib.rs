//! Sender authentication: the DKIM keys of a sending domain, the DNS
//! records its owner publishes, and DKIM signing of outbound mail
//! (RFC 6376, with Ed25519 beside RSA as RFC 8463 allows). Built on
//! `mail-auth`; what is written here is only the choice of defaults.
//! Inbound, the same library verifies SPF, DKIM, DMARC and ARC on mail
//! that arrives without AUTH (`inbound`).

pub mod authority;
pub mod check;
pub mod domain_check;
pub mod header_from;
pub mod inbound;
pub mod keys;
pub mod records;
pub mod reports;
pub mod return_path;
pub mod sign;
pub mod single_sender;

pub use authority::SenderAuthority;
pub use keys::DkimKeys;
pub use records::{DnsRecord, DomainSetup};
pub use sign::DomainSigner;

#[derive(Debug, thiserror::Error)]
pub enum MailAuthError {
    #[error("key generation failed: {0}")]
    KeyGeneration(String),
    #[error("unusable {what} key: {reason}")]
    BadKey { what: &'static str, reason: String },
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("DNS resolver for inbound checks: {0}")]
    Resolver(String),
}
