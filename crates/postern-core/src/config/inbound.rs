//! `[inbound_auth]`: authenticating mail that arrives without AUTH on `mx`
//! listeners (SPF, DKIM, DMARC, ARC), and what is done when it fails.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};
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
    /// Held in the quarantine. Not available yet: the quarantine store is
    /// being built, and validation refuses this value until it lands.
    Quarantine,
    /// Refused at the end of DATA with `550 5.7.1` and the reason.
    Reject,
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
    /// refuses, `quarantine` tags (until the quarantine exists), `none`
    /// accepts. `dmarc_fail` may be stricter, never weaker.
    pub honor_dmarc_policy: bool,
    /// The least that is done with mail failing DMARC, whatever the
    /// sender's policy says (local policy stricter than the sender's).
    pub dmarc_fail: InboundAction,
    /// What is done with mail whose MAIL FROM identity fails SPF.
    pub spf_fail: InboundAction,
    /// Networks (CIDR) of forwarders whose ARC seals are trusted.
    pub trusted_forwarders: Vec<String>,
    /// Domains (the ARC-Seal `d=`) of sealers whose ARC results are trusted.
    pub trusted_arc_sealers: Vec<String>,
    /// Per relay domain: overrides of the three actions above.
    pub domain: Vec<InboundDomainPolicy>,
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
            trusted_forwarders: Vec::new(),
            trusted_arc_sealers: Vec::new(),
            domain: Vec::new(),
        }
    }
}

/// The quarantine is built in parallel; until it lands, no check may send
/// mail there.
fn no_quarantine(key: String, action: Option<InboundAction>) -> Result<(), ConfigError> {
    if action == Some(InboundAction::Quarantine) {
        return Err(invalid(
            key,
            "\"quarantine\" is not available yet (the quarantine store has not landed); use \"tag\" (delivered with an X-Postern-Verdict header) or \"reject\"",
        ));
    }
    Ok(())
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
        no_quarantine("inbound_auth.dmarc_fail".into(), Some(self.dmarc_fail))?;
        no_quarantine("inbound_auth.spf_fail".into(), Some(self.spf_fail))?;
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
            no_quarantine(format!("inbound_auth.domain[{i}].dmarc_fail"), p.dmarc_fail)?;
            no_quarantine(format!("inbound_auth.domain[{i}].spf_fail"), p.spf_fail)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    #[test]
    fn quarantine_is_refused_until_it_lands_and_names_its_key() {
        for (text, key) in [
            (
                "[inbound_auth]\ndmarc_fail = \"quarantine\"\n",
                "inbound_auth.dmarc_fail",
            ),
            (
                "[inbound_auth]\nspf_fail = \"quarantine\"\n",
                "inbound_auth.spf_fail",
            ),
            (
                "[relay]\ndomains = [\"a.test\"]\nrecipient_check = \"any\"\n[[inbound_auth.domain]]\ndomain = \"a.test\"\ndmarc_fail = \"quarantine\"\n",
                "inbound_auth.domain[0].dmarc_fail",
            ),
        ] {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.starts_with(key), "{e}");
            assert!(e.contains("not available yet"), "{e}");
        }
        let ok = Config::parse(
            "[relay]\ndomains = [\"a.test\"]\nrecipient_check = \"any\"\n[[inbound_auth.domain]]\ndomain = \"A.test\"\ndmarc_fail = \"reject\"\n",
        )
        .unwrap();
        assert_eq!(
            ok.inbound_auth.domain[0].dmarc_fail,
            Some(super::InboundAction::Reject)
        );
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
