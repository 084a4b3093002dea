//! `[[mta_sts]]`: the MTA-STS policies (RFC 8461) Postern serves for the
//! company's own domains, at `https://mta-sts.<domain>/.well-known/mta-sts.txt`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};
use crate::address::normalize_domain;

/// RFC 8461 §3.2: `max_age` is at most 31557600 seconds (about a year).
pub const MTA_STS_MAX_AGE_LIMIT: Duration = Duration::from_secs(31_557_600);

/// RFC 8461 §5: what a sending MTA does when a delivery fails the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtaStsMode {
    /// Deliver only to the listed MX hosts, over TLS with a valid certificate.
    Enforce,
    /// Deliver anyway; report the failures (TLS-RPT).
    Testing,
    /// No policy in force (used to withdraw one, RFC 8461 §8.3).
    None,
}

impl MtaStsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtaStsMode::Enforce => "enforce",
            MtaStsMode::Testing => "testing",
            MtaStsMode::None => "none",
        }
    }
}

/// One domain's policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtaStsPolicyConfig {
    /// The policy domain (the one mail is addressed to).
    pub domain: String,
    pub mode: MtaStsMode,
    /// The inbound MX host names (`*.example.net` allowed, RFC 8461 §4.1);
    /// empty: `server.hostname`, the name Postern answers to as MX.
    #[serde(default)]
    pub mx: Vec<String>,
    /// How long senders may cache the policy.
    #[serde(default = "default_max_age", with = "crate::duration")]
    pub max_age: Duration,
}

fn default_max_age() -> Duration {
    Duration::from_secs(7 * 86_400)
}

impl MtaStsPolicyConfig {
    /// The MX patterns served: the configured ones, else `hostname`.
    pub fn mx_hosts(&self, hostname: &str) -> Vec<String> {
        if self.mx.is_empty() {
            vec![hostname.to_lowercase()]
        } else {
            self.mx.iter().map(|m| m.to_lowercase()).collect()
        }
    }
}

pub(super) fn validate(policies: &[MtaStsPolicyConfig]) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for (i, p) in policies.iter().enumerate() {
        let domain = normalize_domain(&p.domain)
            .map_err(|_| invalid(format!("mta_sts[{i}].domain"), "must be a domain name"))?;
        if !seen.insert(domain) {
            return Err(invalid(
                format!("mta_sts[{i}].domain"),
                format!("{} has two policies", p.domain),
            ));
        }
        for (j, mx) in p.mx.iter().enumerate() {
            // RFC 8461 §3.2: a host name, or a wildcard for one label
            // (`*.example.net`); nothing else may match.
            let host = mx.strip_prefix("*.").unwrap_or(mx);
            if normalize_domain(host).is_err() || host.contains('*') {
                return Err(invalid(
                    format!("mta_sts[{i}].mx[{j}]"),
                    "must be a host name or *.domain",
                ));
            }
        }
        // RFC 8461 §3.2: max_age is a whole number of seconds up to 31557600.
        if p.max_age.as_secs() == 0 || p.max_age > MTA_STS_MAX_AGE_LIMIT {
            return Err(invalid(
                format!("mta_sts[{i}].max_age"),
                "must be from 1s to 31557600s (RFC 8461 §3.2)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, MtaStsMode};

    #[test]
    fn policies_parse_with_their_defaults() {
        let c = Config::parse(
            "[[mta_sts]]\ndomain = \"Corp.example\"\nmode = \"enforce\"\n\n[[mta_sts]]\ndomain = \"b.example\"\nmode = \"testing\"\nmx = [\"mx1.b.example\", \"*.mx.b.example\"]\nmax_age = \"1d\"\n",
        )
        .unwrap();
        assert_eq!(c.mta_sts[0].mode, MtaStsMode::Enforce);
        assert_eq!(c.mta_sts[0].max_age.as_secs(), 7 * 86_400);
        assert_eq!(
            c.mta_sts[0].mx_hosts("MX.corp.example"),
            ["mx.corp.example"]
        );
        assert_eq!(
            c.mta_sts[1].mx_hosts("ignored"),
            ["mx1.b.example", "*.mx.b.example"]
        );
    }

    #[test]
    fn bad_policies_are_refused_by_key() {
        for (text, key) in [
            (
                "domain = \"no domain\"\nmode = \"none\"",
                "mta_sts[0].domain",
            ),
            (
                "domain = \"a.example\"\nmode = \"enforce\"\nmx = [\"mx.*.a.example\"]",
                "mta_sts[0].mx[0]",
            ),
            (
                "domain = \"a.example\"\nmode = \"enforce\"\nmx = [\"*\"]",
                "mta_sts[0].mx[0]",
            ),
            (
                "domain = \"a.example\"\nmode = \"enforce\"\nmax_age = \"366d\"",
                "mta_sts[0].max_age",
            ),
            (
                "domain = \"a.example\"\nmode = \"enforce\"\nmax_age = \"500ms\"",
                "mta_sts[0].max_age",
            ),
        ] {
            let e = Config::parse(&format!("[[mta_sts]]\n{text}\n")).unwrap_err();
            assert!(e.to_string().starts_with(key), "{text}: {e}");
        }
        let twice = "[[mta_sts]]\ndomain = \"a.example\"\nmode = \"none\"\n[[mta_sts]]\ndomain = \"A.example\"\nmode = \"enforce\"\n";
        let e = Config::parse(twice).unwrap_err();
        assert!(e.to_string().starts_with("mta_sts[1].domain"), "{e}");
        assert!(Config::parse("[[mta_sts]]\ndomain = \"a.example\"\nmode = \"strict\"\n").is_err());
    }
}
