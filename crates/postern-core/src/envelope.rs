//! The SMTP envelope as it is stored with a message: sender, recipients and
//! the RFC 3461 DSN parameters that later bounce generation needs.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
}

/// RFC 3461 §4.3 RET: whether a DSN carries the full message or its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DsnReturn {
    Full,
    Headers,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Envelope {
    /// Empty for the null reverse-path (RFC 5321 §4.5.5).
    pub mail_from: String,
    pub recipients: Vec<Recipient>,
    pub body_type: BodyType,
    pub smtputf8: bool,
    /// RFC 3461 §4.4 ENVID.
    pub envid: Option<String>,
    pub ret: Option<DsnReturn>,
    /// The verified return-path domain (`pst-bounces.example.com`) the
    /// envelope sender is rewritten into per recipient at delivery
    /// (crate::verp); None: sent with `mail_from` as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    pub domain: String,
    /// RFC 3461 §4.1 NOTIFY, as the keywords given (empty when absent).
    pub notify: Vec<String>,
    /// RFC 3461 §4.2 ORCPT: the original address, xtext-decoded. Only the
    /// `rfc822` address type is accepted, so the type is not stored.
    pub orcpt: Option<String>,
}
