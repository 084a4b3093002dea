//! IP networks as written in config files and access rules: CIDR, or a bare
//! address meaning just that address.

use std::net::{IpAddr, SocketAddr};

pub use ipnet::IpNet;

/// A peer as every rule sees it. A dual-stack listener (`[::]`) reports an
/// IPv4 client as an IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, RFC 4291
/// §2.5.5.2); that client is the IPv4 address, so IPv4 deny lists,
/// allowlists, per-address limits and per-/24 counts must apply to it (as
/// a mapped address it would match none of them, and every IPv4 client
/// would share one /64). Listeners pass each accepted peer through this.
pub fn canonical_peer(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

pub fn parse_network(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(net.trunc());
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

/// The network an address is counted in for brute-force defence: /24 for
/// IPv4, /64 for IPv6 (one customer's allocation, typically).
pub fn counting_network(ip: IpAddr) -> IpNet {
    let prefix = match ip {
        IpAddr::V4(_) => 24,
        IpAddr::V6(_) => 64,
    };
    IpNet::new(ip, prefix)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_peers_are_their_ipv4_address() {
        let mapped: SocketAddr = "[::ffff:203.0.113.7]:4000".parse().unwrap();
        assert_eq!(
            canonical_peer(mapped),
            "203.0.113.7:4000".parse::<SocketAddr>().unwrap()
        );
        let v6: SocketAddr = "[2001:db8::1]:25".parse().unwrap();
        assert_eq!(canonical_peer(v6), v6);
        let v4: SocketAddr = "192.0.2.1:25".parse().unwrap();
        assert_eq!(canonical_peer(v4), v4);
    }

    #[test]
    fn parses_and_groups() {
        let n = parse_network("192.0.2.77/24").unwrap();
        assert_eq!(n.to_string(), "192.0.2.0/24");
        assert!(n.contains(&"192.0.2.1".parse::<IpAddr>().unwrap()));
        assert_eq!(
            parse_network("2001:db8::1").unwrap().to_string(),
            "2001:db8::1/128"
        );
        assert!(parse_network("nonsense").is_none());
        assert_eq!(
            counting_network("2001:db8:1:2:3:4:5:6".parse().unwrap()).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            counting_network("198.51.100.9".parse().unwrap()).to_string(),
            "198.51.100.0/24"
        );
    }
}
