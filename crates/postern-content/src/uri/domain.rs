//! What a URL host is looked up as in a URI list: its registrable domain
//! (the public suffix list: `www.shop.example.co.uk` is `example.co.uk`,
//! which is what SURBL and URIBL list), or an address host as DNSBLs are
//! asked (RFC 5782 §2.1: 192.0.2.99 → `99.2.0.192.<zone>`).

use std::fmt;
use std::net::IpAddr;

use super::extract::UrlHost;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LookupKey {
    Domain(String),
    Address(IpAddr),
}

impl LookupKey {
    /// The key of a URL host; None for a host that is itself a public
    /// suffix (`co.uk`, `github.io`): no one's domain, nothing a list
    /// would name.
    pub fn of(host: &UrlHost) -> Option<LookupKey> {
        match host {
            UrlHost::Domain(d) => {
                // A name under a suffix the list does not know (`.test`,
                // an internal TLD) is reduced by its implicit rule `*`:
                // the last label is the suffix.
                let domain = psl::domain_str(d)?;
                Some(LookupKey::Domain(domain.to_owned()))
            }
            // An IPv4-mapped address is its IPv4 address.
            UrlHost::Address(ip) => Some(LookupKey::Address(ip.to_canonical())),
        }
    }

    /// The name asked in `zone`.
    pub fn query_name(&self, zone: &str) -> String {
        match self {
            LookupKey::Domain(d) => format!("{d}.{}", zone.trim_end_matches('.')),
            LookupKey::Address(ip) => postern_smtp::screen::dnsbl::query_name(*ip, zone),
        }
    }
}

/// As the reason names it: `URL domain example.test`, `URL address
/// 192.0.2.1`.
impl fmt::Display for LookupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookupKey::Domain(d) => write!(f, "URL domain {d}"),
            LookupKey::Address(ip) => write!(f, "URL address {ip}"),
        }
    }
}
