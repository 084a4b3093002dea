//! DNS block and allow lists (RFC 5782): the name a client's address is
//! looked up as, which answers count as a listing, and the weighted score
//! that decides.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};

use postern_core::config::DnsblConfig;

/// The name `ip` is looked up as in `zone`: RFC 5782 §2.1, an IPv4
/// address's octets in reverse order (192.0.2.99 → 99.2.0.192.zone);
/// §2.4, an IPv6 address's 32 nibbles in reverse order, one label each.
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    let zone = zone.trim_end_matches('.');
    let mut name = String::with_capacity(72 + zone.len());
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            let _ = write!(name, "{d}.{c}.{b}.{a}.");
        }
        IpAddr::V6(v6) => {
            for byte in v6.octets().iter().rev() {
                let _ = write!(name, "{:x}.{:x}.", byte & 0x0f, byte >> 4);
            }
        }
    }
    name.push_str(zone);
    name
}

/// Whether a zone's answer lists the client. RFC 5782 §2.1: a listing is
/// an A record in 127.0.0.0/8. Without a `codes` filter any such answer
/// counts except 127.255.255.0/24, where lists put their error replies
/// (Spamhaus: refused query, over quota), which say nothing of the
/// client; with one, only the codes given count.
pub fn is_listing(zone: &DnsblConfig, answers: &[Ipv4Addr]) -> bool {
    answers.iter().any(|a| {
        if zone.codes.is_empty() {
            let [first, second, third, _] = a.octets();
            first == 127 && !(second == 255 && third == 255)
        } else {
            zone.codes.contains(a)
        }
    })
}

/// A client's standing with the configured lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// The score is at or below `allowlist_threshold`: every other check
    /// is skipped.
    Allowlisted { score: i32 },
    /// The score reached `threshold`; the block lists (positive weight)
    /// that listed the client, in configured order.
    Refused { score: i32, zones: Vec<String> },
    /// Neither.
    Clean { score: i32 },
}

/// Postscreen's arithmetic: the weights of the zones that list the
/// client are added up (allow lists weigh less than zero); a sum at or
/// above `threshold` refuses, one at or below `allowlist_threshold`
/// allowlists. `listed` holds the listing zones.
pub fn standing(listed: &[&DnsblConfig], threshold: i32, allowlist_threshold: i32) -> Standing {
    let score = listed
        .iter()
        .fold(0i32, |sum, z| sum.saturating_add(z.weight));
    if score <= allowlist_threshold {
        Standing::Allowlisted { score }
    } else if score >= threshold {
        Standing::Refused {
            score,
            zones: listed
                .iter()
                .filter(|z| z.weight > 0)
                .map(|z| z.zone.clone())
                .collect(),
        }
    } else {
        Standing::Clean { score }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str, weight: i32, codes: &[&str]) -> DnsblConfig {
        DnsblConfig {
            zone: name.into(),
            weight,
            codes: codes.iter().map(|c| c.parse().unwrap()).collect(),
        }
    }

    /// RFC 5782 §2.1: 192.0.2.99 is looked up as
    /// 99.2.0.192.<zone>.
    #[test]
    fn ipv4_octets_are_reversed() {
        let ip: IpAddr = "192.0.2.99".parse().unwrap();
        assert_eq!(
            query_name(ip, "bad.example.com"),
            "99.2.0.192.bad.example.com"
        );
        // A trailing dot on the zone is not doubled.
        assert_eq!(query_name(ip, "bl.test."), "99.2.0.192.bl.test");
        // A dual-stack listener's IPv4-mapped client is its IPv4 address.
        let mapped: IpAddr = "::ffff:192.0.2.99".parse().unwrap();
        assert_eq!(query_name(mapped, "bl.test"), "99.2.0.192.bl.test");
    }

    /// RFC 5782 §2.4: 2001:db8:1:2:3:4:567:89ab is looked up
    /// with its 32 nibbles reversed, one label each.
    #[test]
    fn ipv6_nibbles_are_reversed() {
        let ip: IpAddr = "2001:db8:1:2:3:4:567:89ab".parse().unwrap();
        assert_eq!(
            query_name(ip, "ugly.example.com"),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com"
        );
        let loopback: IpAddr = "::1".parse().unwrap();
        let name = query_name(loopback, "z");
        assert!(name.starts_with("1.0.0.0."), "{name}");
        assert_eq!(name.split('.').count(), 33, "{name}");
    }

    /// Without a filter any 127/8 answer lists, except the lists' error
    /// codes in 127.255.255.0/24; with one, only its codes do.
    #[test]
    fn which_answers_count_as_a_listing() {
        let any = zone("bl.test", 1, &[]);
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert!(is_listing(&any, &[ip("127.0.0.2")]));
        assert!(is_listing(&any, &[ip("127.0.1.4")]));
        assert!(!is_listing(&any, &[]));
        assert!(!is_listing(&any, &[ip("127.255.255.254")]));
        assert!(!is_listing(&any, &[ip("192.0.2.1")]));
        let filtered = zone("bl.test", 1, &["127.0.0.4", "127.0.0.10"]);
        assert!(!is_listing(&filtered, &[ip("127.0.0.2")]));
        assert!(is_listing(&filtered, &[ip("127.0.0.2"), ip("127.0.0.10")]));
    }

    /// The weights of the listing zones add up; the sum is compared with
    /// both thresholds; only block lists are named in a refusal.
    #[test]
    fn weights_add_up_against_the_thresholds() {
        let a = zone("a.bl", 1, &[]);
        let b = zone("b.bl", 2, &[]);
        let wl = zone("wl.test", -5, &[]);
        let (t, w) = (3, -1);
        assert_eq!(standing(&[], t, w), Standing::Clean { score: 0 });
        assert_eq!(standing(&[&a], t, w), Standing::Clean { score: 1 });
        assert_eq!(standing(&[&b], t, w), Standing::Clean { score: 2 });
        assert_eq!(
            standing(&[&a, &b], t, w),
            Standing::Refused {
                score: 3,
                zones: vec!["a.bl".into(), "b.bl".into()]
            }
        );
        // Listed by both block lists and the allow list: -2, allowlisted.
        assert_eq!(
            standing(&[&a, &b, &wl], t, w),
            Standing::Allowlisted { score: -2 }
        );
        // Exactly at the allowlist threshold counts; just above does not.
        let wl1 = zone("wl1.test", -1, &[]);
        assert_eq!(standing(&[&wl1], t, w), Standing::Allowlisted { score: -1 });
        let wl4 = zone("wl4.test", -4, &[]);
        assert_eq!(
            standing(&[&a, &b, &wl4], t, -2),
            Standing::Clean { score: -1 }
        );
        // An allow list outweighed still leaves the block lists named.
        let big = zone("big.bl", 10, &[]);
        assert_eq!(
            standing(&[&big, &wl], t, w),
            Standing::Refused {
                score: 5,
                zones: vec!["big.bl".into()]
            }
        );
        // Extreme weights saturate instead of overflowing.
        let huge = zone("huge.bl", i32::MAX, &[]);
        assert!(matches!(
            standing(&[&huge, &huge], t, w),
            Standing::Refused {
                score: i32::MAX,
                ..
            }
        ));
    }
}
