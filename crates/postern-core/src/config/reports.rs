//! `[reports]`: the reports Postern sends about the mail it saw: DMARC
//! aggregate reports (RFC 7489 §7.2) to the senders of inbound mail, and
//! TLS-RPT reports (RFC 8460) to the recipient domains of outbound mail.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

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

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }
}
