//! Scope names, as SendGrid names them.

use postern_core::principal::SCOPE_FULL_ACCESS;

/// Every scope this server knows; `full_access` stands for all of them.
pub const ALL: &[&str] = &[
    "mail.send",
    "api_keys.create",
    "api_keys.read",
    "api_keys.update",
    "api_keys.delete",
    "subusers.create",
    "subusers.read",
    "subusers.update",
    "subusers.delete",
    "access_settings.whitelist.create",
    "access_settings.whitelist.read",
    "access_settings.whitelist.update",
    "access_settings.whitelist.delete",
    "suppression.bounces.read",
    "suppression.bounces.delete",
    "messages.read",
    "queue.read",
    "queue.update",
    "queue.delete",
    "quarantine.read",
    "quarantine.update",
    "quarantine.delete",
    "reports.read",
    "user.webhooks.event.settings.read",
    "user.webhooks.event.settings.update",
    "user.webhooks.event.test.create",
    "whitelabel.create",
    "whitelabel.read",
    "whitelabel.update",
    "whitelabel.delete",
    "verified_senders.create",
    "verified_senders.read",
    "verified_senders.update",
    "verified_senders.delete",
];

pub fn is_known(scope: &str) -> bool {
    scope == SCOPE_FULL_ACCESS || ALL.contains(&scope)
}

/// The scopes a key really has, with `full_access` expanded.
pub fn expand(scopes: &[String]) -> Vec<String> {
    if scopes.iter().any(|s| s == SCOPE_FULL_ACCESS) {
        return ALL.iter().map(|s| s.to_string()).collect();
    }
    scopes.to_vec()
}
