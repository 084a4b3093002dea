//! `[reports]`: the DMARC aggregate (RFC 7489 §7.2) and TLS-RPT (RFC 8460)
//! reports Postern sends about the mail it saw (to the senders of inbound
//! mail, to the recipient domains of outbound mail), and the addresses at
//! which it takes such reports for the company's own domains, on `mx`
//! listeners.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};
use crate::address::Address;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportsConfig {
    /// Send DMARC aggregate reports to the `rua` of each sending domain
    /// whose policy applied to inbound mail. Off: nothing is recorded.
    pub dmarc_aggregate: bool,
    /// Send TLS-RPT reports (RFC 8460) about Postern's own deliveries to
    /// each recipient domain's MX hosts, to the domain's `_smtp._tls` rua.
    /// Off: nothing is recorded.
    pub tls_rpt: bool,
    /// How often reports are sent; each covers what was recorded since the
    /// last (RFC 7489 §7.2: 24 hours by default).
    #[serde(with = "crate::duration")]
    pub interval: Duration,
    /// What could not be reported (no destination would take it) is
    /// dropped after this.
    #[serde(with = "crate::duration")]
    pub retention: Duration,
    /// The reporting organisation named in each report; empty:
    /// `server.hostname`.
    pub org_name: String,
    /// The From address of report mail and the report's contact (RFC 7489
    /// §7.2.1.1 `email`); empty: `postmaster@<server.hostname>`.
    pub from: String,
    /// Let TLS-RPT reports be posted to `https:` destinations at internal
    /// addresses. The destinations are named by recipient domains' DNS,
    /// which anyone Postern mails controls, so the webhooks' own
    /// exceptions (`webhooks.allow_private_destinations`,
    /// `allowed_internal_networks`) never apply to them.
    pub allow_private_destinations: bool,
    /// Addresses that receive DMARC aggregate reports (the `rua` of the
    /// domains' `_dmarc` records).
    pub receive_dmarc: Vec<String>,
    /// Addresses that receive TLS-RPT reports (the `rua` of `_smtp._tls`).
    pub receive_tlsrpt: Vec<String>,
    /// Also pass report mail on to the address's relay next hop; default:
    /// consumed here, as bounces to return paths are.
    pub forward: bool,
}

impl Default for ReportsConfig {
    fn default() -> Self {
        ReportsConfig {
            dmarc_aggregate: true,
            tls_rpt: true,
            interval: Duration::from_secs(86_400),
            retention: Duration::from_secs(7 * 86_400),
            org_name: String::new(),
            from: String::new(),
            allow_private_destinations: false,
            receive_dmarc: Vec::new(),
            receive_tlsrpt: Vec::new(),
            forward: false,
        }
    }
}

impl ReportsConfig {
    /// The organisation name in reports.
    pub fn org_name_for(&self, hostname: &str) -> String {
        if self.org_name.is_empty() {
            hostname.to_owned()
        } else {
            self.org_name.clone()
        }
    }

    /// The From address of report mail.
    pub fn from_for(&self, hostname: &str) -> String {
        if self.from.is_empty() {
            format!("postmaster@{hostname}")
        } else {
            self.from.clone()
        }
    }

    /// Every receiving address, lowercase, with the key it is under.
    pub fn addresses(&self) -> impl Iterator<Item = (String, String)> + '_ {
        let dmarc = self
            .receive_dmarc
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("reports.receive_dmarc[{i}]"), a.to_lowercase()));
        let tlsrpt = self
            .receive_tlsrpt
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("reports.receive_tlsrpt[{i}]"), a.to_lowercase()));
        dmarc.chain(tlsrpt)
    }

    /// Whether `address` receives reports of any kind.
    pub fn receives(&self, address: &str) -> bool {
        self.addresses()
            .any(|(_, a)| a.eq_ignore_ascii_case(address))
    }

    /// The address's domain, lowercase.
    pub fn domain_of(address: &str) -> String {
        address
            .rsplit_once('@')
            .map(|(_, d)| d.to_lowercase())
            .unwrap_or_default()
    }

    pub(super) fn validate(&self, relay_domains: &[String]) -> Result<(), ConfigError> {
        // Reports are sent at most once a minute: a shorter interval would
        // mail every reporting domain about a handful of messages each time.
        if self.interval < Duration::from_secs(60) {
            return Err(invalid("reports.interval", "must be at least 1m"));
        }
        if self.retention < self.interval {
            return Err(invalid(
                "reports.retention",
                "must be at least reports.interval (else records go before they are reported)",
            ));
        }
        if !self.from.is_empty() && crate::address::Address::parse(&self.from, false).is_err() {
            return Err(invalid("reports.from", "must be an e-mail address"));
        }
        if self.org_name.chars().any(char::is_control) {
            return Err(invalid(
                "reports.org_name",
                "must not hold control characters",
            ));
        }
        for (key, a) in self.addresses() {
            let parsed = Address::parse(&a, false).map_err(|e| invalid(&key, e.to_string()))?;
            if parsed.check_no_routing().is_err() {
                return Err(invalid(&key, "must be a plain address"));
            }
            let domain = Self::domain_of(&a);
            let relayed = relay_domains
                .iter()
                .any(|r| r.eq_ignore_ascii_case(&domain));
            // Forwarding needs a next hop, which only relay domains have.
            // (Other domains are checked against `postern domain add` at
            // start, where the store is open.)
            if self.forward && !relayed {
                return Err(invalid(
                    &key,
                    format!("{domain} is not one of relay.domains, so there is no next hop to forward to (reports.forward = true)"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn report_addresses_are_checked() {
        let c = Config::parse(
            "[relay]\ndomains = [\"corp.test\"]\nrecipient_check = \"any\"\n[reports]\nreceive_dmarc = [\"DMARC@corp.test\"]\nreceive_tlsrpt = [\"tls@other.test\"]\n",
        )
        .unwrap();
        assert!(c.reports.receives("dmarc@CORP.test"));
        assert!(c.reports.receives("tls@other.test"));
        assert!(!c.reports.receives("postmaster@corp.test"));
        for (text, key) in [
            (
                "receive_dmarc = [\"no-at-sign\"]",
                "reports.receive_dmarc[0]",
            ),
            (
                "receive_tlsrpt = [\"a@corp.test\", \"b%x.test@corp.test\"]",
                "reports.receive_tlsrpt[1]",
            ),
            // Forwarding needs a relay domain's next hop.
            (
                "forward = true\nreceive_dmarc = [\"d@corp.test\", \"d@other.test\"]",
                "reports.receive_dmarc[1]",
            ),
        ] {
            let e = Config::parse(&format!(
                "[relay]\ndomains = [\"corp.test\"]\nrecipient_check = \"any\"\n[reports]\n{text}\n"
            ))
            .unwrap_err();
            assert!(e.to_string().starts_with(key), "{text}: {e}");
        }
    }
}
