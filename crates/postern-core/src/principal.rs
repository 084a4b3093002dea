//! Who is sending: the identity an authenticated session or API call acts as.

use serde::{Deserialize, Serialize};

/// The scope that allows sending mail, named as SendGrid names it.
pub const SCOPE_MAIL_SEND: &str = "mail.send";
/// Full access: every scope, including managing other credentials.
pub const SCOPE_FULL_ACCESS: &str = "full_access";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub account: String,
    /// The immutable id `account` had when it authenticated (0: not known,
    /// as in tests). The store refuses a message whose account by that
    /// name is no longer this one (deleted, and the name taken again while
    /// a session stayed open).
    pub account_id: i64,
    /// The API key this principal authenticated with.
    pub key_id: String,
    pub scopes: Vec<String>,
}

impl Principal {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes
            .iter()
            .any(|s| s == scope || s == SCOPE_FULL_ACCESS)
    }
}
