//! Checks of the name a client gives in HELO or EHLO (RFC 5321 §4.1.1.1:
//! its fully-qualified domain name, or an address literal when it has
//! none).

use std::net::IpAddr;

/// What is wrong with a HELO name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeloProblem {
    /// Neither a fully-qualified domain name (RFC 5321 §4.1.2 `Domain`,
    /// with a dot) nor an address literal (§4.1.3).
    Invalid,
    /// Our own host name: no other host is entitled to it.
    OurName,
    /// An address literal that is not the client's address.
    ForeignLiteral(IpAddr),
}

impl HeloProblem {
    /// The metric label and the reason logged.
    pub fn label(&self) -> &'static str {
        match self {
            HeloProblem::Invalid => "helo_invalid",
            HeloProblem::OurName => "helo_our_name",
            HeloProblem::ForeignLiteral(_) => "helo_foreign_literal",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            HeloProblem::Invalid => {
                "is neither a fully-qualified domain name nor an address literal".into()
            }
            HeloProblem::OurName => "is this server's own name".into(),
            HeloProblem::ForeignLiteral(ip) => format!("names the address {ip}, not the client's"),
        }
    }
}

/// The first problem with `helo` from `client`, where `ours` is this
/// server's host name; None when the name passes.
pub fn check(helo: &str, client: IpAddr, ours: &str) -> Option<HeloProblem> {
    if let Some(inner) = helo.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        // RFC 5321 §4.1.3: [a.b.c.d] or [IPv6:...].
        let ip = match inner.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => inner[5..]
                .parse::<std::net::Ipv6Addr>()
                .ok()
                .map(IpAddr::V6),
            _ => inner.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4),
        };
        return match ip {
            None => Some(HeloProblem::Invalid),
            Some(ip) if ip.to_canonical() != client.to_canonical() => {
                Some(HeloProblem::ForeignLiteral(ip))
            }
            Some(_) => None,
        };
    }
    let name = helo.strip_suffix('.').unwrap_or(helo);
    if !is_fqdn(name) {
        return Some(HeloProblem::Invalid);
    }
    if name.eq_ignore_ascii_case(ours.trim_end_matches('.')) {
        return Some(HeloProblem::OurName);
    }
    None
}

/// RFC 5321 §4.1.2: `Domain = sub-domain *("." sub-domain)`, a sub-domain
/// being letters, digits and inner hyphens (63 octets at most, RFC 1035
/// §2.3.4); fully qualified, so at least two labels, and not all digits
/// (a bare IPv4 address must be written as a literal).
fn is_fqdn(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    labels.len() >= 2
        && name.len() <= 253
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !labels.iter().all(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "mx.postern.test";

    fn client() -> IpAddr {
        "192.0.2.7".parse().unwrap()
    }

    #[test]
    fn good_names_pass() {
        for helo in [
            "mail.example.com",
            "mail.example.com.",
            "a-b.example",
            "[192.0.2.7]",
        ] {
            assert_eq!(check(helo, client(), OURS), None, "{helo}");
        }
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        assert_eq!(check("[IPv6:2001:db8::7]", v6, OURS), None);
        assert_eq!(check("[ipv6:2001:DB8::7]", v6, OURS), None);
        // A dual-stack listener's mapped client matches its IPv4 literal.
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(check("[192.0.2.7]", mapped, OURS), None);
    }

    #[test]
    fn bad_syntax_is_invalid() {
        for helo in [
            "localhost",
            "192.0.2.7",
            "under_score.example",
            "-lead.example",
            "double..dot",
            "[192.0.2.300]",
            "[IPv6:nonsense]",
            "[2001:db8::7]",
            "sp ace.example",
        ] {
            assert_eq!(
                check(helo, client(), OURS),
                Some(HeloProblem::Invalid),
                "{helo}"
            );
        }
    }

    #[test]
    fn our_name_and_foreign_literals_are_caught() {
        assert_eq!(
            check("MX.Postern.Test", client(), OURS),
            Some(HeloProblem::OurName)
        );
        assert_eq!(
            check("mx.postern.test.", client(), OURS),
            Some(HeloProblem::OurName)
        );
        assert_eq!(
            check("[192.0.2.8]", client(), OURS),
            Some(HeloProblem::ForeignLiteral("192.0.2.8".parse().unwrap()))
        );
    }
}
