//! The MTA-STS policies (RFC 8461) Postern serves for the company's own
//! domains (`[[mta_sts]]`), and the id their `_mta-sts` TXT record carries.

use std::collections::BTreeMap;

use postern_core::config::MtaStsPolicyConfig;

/// One domain's policy as served, and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedPolicy {
    /// The policy file (RFC 8461 §3.2), lines ending in CRLF.
    pub text: String,
    /// For `v=STSv1; id=…` (RFC 8461 §3.1).
    pub id: String,
}

impl ServedPolicy {
    pub fn new(policy: &MtaStsPolicyConfig, hostname: &str) -> Self {
        let mut text = format!("version: STSv1\r\nmode: {}\r\n", policy.mode.as_str());
        for mx in policy.mx_hosts(hostname) {
            text.push_str(&format!("mx: {mx}\r\n"));
        }
        text.push_str(&format!("max_age: {}\r\n", policy.max_age.as_secs()));
        let id = policy_id(&text);
        ServedPolicy { text, id }
    }
}

/// RFC 8461 §3.1: the id "MUST" change whenever the policy does, and is 1
/// to 32 letters and digits. Taken from the policy's own content (the first
/// 128 bits of its SHA-256, in hex), so every change of mode, MX host or
/// max_age gives a new id and an unchanged policy keeps its id across
/// restarts, without a counter to store.
pub fn policy_id(text: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The served policies by policy domain (lowercase).
pub fn served_policies(
    policies: &[MtaStsPolicyConfig],
    hostname: &str,
) -> BTreeMap<String, ServedPolicy> {
    policies
        .iter()
        .map(|p| (p.domain.to_lowercase(), ServedPolicy::new(p, hostname)))
        .collect()
}

/// The policy domain a request's `Host` names (`mta-sts.<domain>`, any
/// port and letter case; RFC 8461 §3.3), if it has the prefix.
pub fn policy_domain_of_host(host: &str) -> Option<String> {
    let host = host.trim().trim_end_matches('.');
    // A port after the last colon (no IPv6 literal can name a policy host).
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.trim_end_matches('.').to_lowercase();
    host.strip_prefix("mta-sts.")
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_core::config::MtaStsMode;
    use std::time::Duration;

    fn policy(mode: MtaStsMode, mx: &[&str], max_age: u64) -> MtaStsPolicyConfig {
        MtaStsPolicyConfig {
            domain: "Corp.Example".into(),
            mode,
            mx: mx.iter().map(|s| s.to_string()).collect(),
            max_age: Duration::from_secs(max_age),
        }
    }

    #[test]
    fn the_policy_is_rfc_8461_text() {
        let p = ServedPolicy::new(
            &policy(
                MtaStsMode::Enforce,
                &["mx1.corp.example", "*.backup.example"],
                604_800,
            ),
            "ignored.example",
        );
        assert_eq!(
            p.text,
            "version: STSv1\r\nmode: enforce\r\nmx: mx1.corp.example\r\nmx: *.backup.example\r\nmax_age: 604800\r\n"
        );
        // RFC 8461 §3.1: 1*32(ALPHA / DIGIT).
        assert_eq!(p.id.len(), 32);
        assert!(p.id.bytes().all(|b| b.is_ascii_alphanumeric()));
        // Without mx: the server's host name.
        let d = ServedPolicy::new(&policy(MtaStsMode::Testing, &[], 86_400), "MX.Corp.Example");
        assert_eq!(
            d.text,
            "version: STSv1\r\nmode: testing\r\nmx: mx.corp.example\r\nmax_age: 86400\r\n"
        );
    }

    /// Any change of mode, MX hosts or max_age changes the id; the same
    /// policy keeps it.
    #[test]
    fn the_id_follows_the_content() {
        let base = ServedPolicy::new(&policy(MtaStsMode::Testing, &["a.example"], 86_400), "h");
        let same = ServedPolicy::new(&policy(MtaStsMode::Testing, &["a.example"], 86_400), "h");
        assert_eq!(base.id, same.id);
        for changed in [
            policy(MtaStsMode::Enforce, &["a.example"], 86_400),
            policy(MtaStsMode::Testing, &["b.example"], 86_400),
            policy(MtaStsMode::Testing, &["a.example", "b.example"], 86_400),
            policy(MtaStsMode::Testing, &["a.example"], 86_401),
        ] {
            assert_ne!(ServedPolicy::new(&changed, "h").id, base.id, "{changed:?}");
        }
    }

    #[test]
    fn hosts_name_their_policy_domain() {
        assert_eq!(
            policy_domain_of_host("MTA-STS.Corp.Example:8025").as_deref(),
            Some("corp.example")
        );
        assert_eq!(
            policy_domain_of_host("mta-sts.corp.example.").as_deref(),
            Some("corp.example")
        );
        assert_eq!(policy_domain_of_host("corp.example"), None);
        assert_eq!(policy_domain_of_host("mta-sts."), None);
        assert_eq!(policy_domain_of_host("127.0.0.1:8025"), None);
    }
}
