//! `[inbound_auth]`: authenticating mail that arrives without AUTH on `mx`
//! listeners (SPF, DKIM, DMARC, ARC), and what is done when it fails.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, CheckFailure, ConfigError};
use crate::address::normalize_domain;

/// What is done with a message that failed a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InboundAction {
    /// Delivered; the result is only recorded (Authentication-Results).
    Accept,
    /// Delivered with an `X-Postern-Verdict:` header beside the
    /// Authentication-Results, for the internal server to file or flag.
    Tag,
    /// Held in the quarantine (`postern quarantine`, `/v3/quarantine`)
    /// until released or deleted; the client gets its 250.
    Quarantine,
    /// Refused at the end of DATA with `550 5.7.1` and the reason.
    Reject,
}

impl InboundAction {
    /// The word the configuration, headers, summaries and metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            InboundAction::Accept => "accept",
            InboundAction::Tag => "tag",
            InboundAction::Quarantine => "quarantine",
            InboundAction::Reject => "reject",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboundAuthConfig {
    /// Verify unauthenticated mail on `mx` listeners and add an
    /// Authentication-Results header (RFC 8601) with the results.
    pub enabled: bool,
    /// Time limit of one DNS lookup (through `[dns] nameservers`); a lookup
    /// that runs out is a temporary error (RFC 7208 §2.6.6, RFC 7489 §6.6.2).
    #[serde(with = "crate::duration")]
    pub dns_timeout: Duration,
    /// Time limit of each check (SPF, DKIM, ARC, DMARC) of one message,
    /// all its lookups together; past it the check is a temporary error.
    #[serde(with = "crate::duration")]
    pub check_timeout: Duration,
    /// Apply the sender's DMARC policy (RFC 7489 §6.3 `p=`): `reject`
    /// refuses, `quarantine` holds in the quarantine, `none` accepts. `dmarc_fail` may be stricter, never weaker.
    pub honor_dmarc_policy: bool,
    /// The least that is done with mail failing DMARC, whatever the
    /// sender's policy says (local policy stricter than the sender's).
    pub dmarc_fail: InboundAction,
    /// What is done with mail whose MAIL FROM identity fails SPF.
    pub spf_fail: InboundAction,
    /// What is done when DMARC cannot be evaluated for now (RFC 7489
    /// §6.6.2: a temporary DNS error or a check past its time limit):
    /// `defer` answers 451 and the sender tries again, so a spoofed
    /// `p=reject` domain is not let through while its record cannot be
    /// read; `accept` delivers with `dmarc=temperror` recorded.
    pub dmarc_temperror: CheckFailure,
    /// Networks (CIDR) of forwarders whose ARC seals are trusted.
    pub trusted_forwarders: Vec<String>,
    /// Domains (the ARC-Seal `d=`) of sealers whose ARC results are trusted.
    pub trusted_arc_sealers: Vec<String>,
    /// Seal the mail passed on with ARC (RFC 8617) in this domain's name,
    /// with its RSA DKIM key: a domain `postern domain add` created and
    /// that is verified. Unset: no seal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arc_seal_domain: Option<String>,
    /// Per relay domain: overrides of the actions above.
    pub domain: Vec<InboundDomainPolicy>,
    /// Per sender (the RFC 5322 From domain): overrides applied over the
    /// relay domain's, for a domain to be held to more than it publishes
    /// (a much-spoofed bank on `p=none`) or to less (a partner whose
    /// DMARC is broken).
    pub sender: Vec<InboundSenderPolicy>,
}

/// `[[inbound_auth.sender]]`: the actions for mail whose From domain is
/// `domain` or one of its subdomains.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundSenderPolicy {
    pub domain: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub honor_dmarc_policy: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmarc_fail: Option<InboundAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spf_fail: Option<InboundAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmarc_temperror: Option<CheckFailure>,
}

impl InboundSenderPolicy {
    /// Whether a From domain is this sender's (itself or a subdomain,
    /// compared without regard to case).
    pub fn covers(&self, from_domain: &str) -> bool {
        let d = from_domain.to_ascii_lowercase();
        let own = self.domain.to_ascii_lowercase();
        d == own || d.ends_with(&format!(".{own}"))
    }
}

/// `[[inbound_auth.domain]]`: a relay domain's own actions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundDomainPolicy {
    pub domain: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub honor_dmarc_policy: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmarc_fail: Option<InboundAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spf_fail: Option<InboundAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmarc_temperror: Option<CheckFailure>,
}

impl Default for InboundAuthConfig {
    fn default() -> Self {
        InboundAuthConfig {
            enabled: true,
            dns_timeout: Duration::from_secs(5),
            check_timeout: Duration::from_secs(20),
            honor_dmarc_policy: true,
            dmarc_fail: InboundAction::Accept,
            spf_fail: InboundAction::Tag,
            dmarc_temperror: CheckFailure::Defer,
            trusted_forwarders: Vec::new(),
            trusted_arc_sealers: Vec::new(),
            arc_seal_domain: None,
            domain: Vec::new(),
            sender: Vec::new(),
        }
    }
}

impl InboundAuthConfig {
    pub(super) fn validate(&self, relay_domains: &[String]) -> Result<(), ConfigError> {
        if self.dns_timeout.is_zero() {
            return Err(invalid("inbound_auth.dns_timeout", "must be above zero"));
        }
        if self.check_timeout < self.dns_timeout {
            return Err(invalid(
                "inbound_auth.check_timeout",
                "must be at least inbound_auth.dns_timeout",
            ));
        }
        for (i, n) in self.trusted_forwarders.iter().enumerate() {
            if crate::network::parse_network(n).is_none() {
                return Err(invalid(
                    format!("inbound_auth.trusted_forwarders[{i}]"),
                    "must be an IP address or CIDR",
                ));
            }
        }
        for (i, d) in self.trusted_arc_sealers.iter().enumerate() {
            if normalize_domain(d).is_err() {
                return Err(invalid(
                    format!("inbound_auth.trusted_arc_sealers[{i}]"),
                    "must be a domain name",
                ));
            }
        }
        if let Some(d) = &self.arc_seal_domain {
            if normalize_domain(d).is_err() {
                return Err(invalid(
                    "inbound_auth.arc_seal_domain",
                    "must be a domain name",
                ));
            }
        }
        let mut senders = std::collections::HashSet::new();
        for (i, p) in self.sender.iter().enumerate() {
            if normalize_domain(&p.domain).is_err() {
                return Err(invalid(
                    format!("inbound_auth.sender[{i}].domain"),
                    "must be a domain name",
                ));
            }
            if !senders.insert(p.domain.to_ascii_lowercase()) {
                return Err(invalid(
                    format!("inbound_auth.sender[{i}].domain"),
                    format!("{} has more than one [[inbound_auth.sender]]", p.domain),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.domain.iter().enumerate() {
            let d = p.domain.to_lowercase();
            if !relay_domains.iter().any(|r| r.eq_ignore_ascii_case(&d)) {
                return Err(invalid(
                    format!("inbound_auth.domain[{i}].domain"),
                    format!("{} is not one of relay.domains", p.domain),
                ));
            }
            if !seen.insert(d) {
                return Err(invalid(
                    format!("inbound_auth.domain[{i}].domain"),
                    format!("{} has more than one [[inbound_auth.domain]]", p.domain),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    #[test]
    fn every_action_is_accepted_globally_and_per_domain() {
        for word in ["accept", "tag", "quarantine", "reject"] {
            let c = Config::parse(&format!(
                "[relay]\ndomains = [\"a.test\"]\nrecipient_check = \"any\"\n[inbound_auth]\ndmarc_fail = \"{word}\"\nspf_fail = \"{word}\"\n[[inbound_auth.domain]]\ndomain = \"A.test\"\ndmarc_fail = \"{word}\"\n"
            ))
            .unwrap();
            assert_eq!(c.inbound_auth.dmarc_fail, c.inbound_auth.spf_fail);
            assert_eq!(
                c.inbound_auth.domain[0].dmarc_fail,
                Some(c.inbound_auth.dmarc_fail)
            );
        }
        let e = Config::parse("[inbound_auth]\ndmarc_fail = \"hold\"\n").unwrap_err();
        assert!(e.to_string().contains("dmarc_fail"), "{e}");
    }

    #[test]
    fn overrides_name_relay_domains_and_forwarders_parse() {
        let e = Config::parse("[[inbound_auth.domain]]\ndomain = \"other.test\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("inbound_auth.domain[0].domain"), "{e}");
        let e = Config::parse("[inbound_auth]\ntrusted_forwarders = [\"10.0.0.0/40\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("inbound_auth.trusted_forwarders[0]"), "{e}");
        let e = Config::parse("[inbound_auth]\ntrusted_arc_sealers = [\"bad domain\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("inbound_auth.trusted_arc_sealers[0]"), "{e}");
        let e = Config::parse("[inbound_auth]\ndns_timeout = \"10s\"\ncheck_timeout = \"5s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("inbound_auth.check_timeout"), "{e}");
    }
}
