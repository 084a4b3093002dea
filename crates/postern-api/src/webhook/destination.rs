//! Where a webhook may point. An account sets the URL, the server makes the
//! request: without a rule, any API user could make Postern call into the
//! operator's own network (SSRF). So by default the URL must be https and
//! every address it resolves to must be public, checked when the URL is set
//! and again at every connection (the resolver below hands the connector only
//! addresses that pass, so a DNS answer that changes later cannot slip an
//! internal address in).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;
use postern_core::config::WebhooksConfig;
use postern_core::network::{parse_network, IpNet};

#[derive(Debug, Clone, Default)]
pub struct DestinationPolicy {
    pub allow_plain_http: bool,
    pub allow_private: bool,
    /// Internal networks allowed anyway (`webhooks.allowed_internal_networks`):
    /// the operator's own receiver, without opening the rest of the network.
    pub internal_allowed: Vec<IpNet>,
}

/// How webhook host names become addresses: the system's resolver, or the
/// one Postern is configured with (`dns.nameservers`).
pub trait HostLookup: Send + Sync {
    fn addresses<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, String>> + Send + 'a>>;
}

/// The system's resolver (getaddrinfo: /etc/hosts, then DNS).
pub struct SystemLookup;

impl HostLookup for SystemLookup {
    fn addresses<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, String>> + Send + 'a>> {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host, 0))
                .await
                .map_err(|e| format!("{host}: {e}"))?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// Loopback, private (RFC 1918, RFC 4193), link-local, CGNAT (RFC 6598),
/// unspecified, multicast, documentation and other special ranges: nothing
/// a public webhook receiver lives at. An IPv6 address that carries an IPv4
/// address (see [`embedded_ipv4`]) is judged by that IPv4 address too: the
/// packet ends up there, so `2002:7f00:1::` must be as internal as
/// `127.0.0.1`.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            if v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local (RFC 4193)
                || (seg[0] & 0xffc0) == 0xfe80 // link-local (RFC 4291)
                || (seg[0] & 0xffc0) == 0xfec0 // site-local, deprecated (RFC 3879)
                || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation (RFC 3849)
                || (seg[0] == 0x0100 && seg[1..4] == [0, 0, 0])
            // discard-only (RFC 6666)
            {
                return true;
            }
            match embedded_ipv4(v6) {
                Embedded::None => false,
                Embedded::Internal => true,
                Embedded::V4(list) => list.iter().flatten().any(|v4| is_internal_v4(*v4)),
            }
        }
    }
}

fn is_internal_v4(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (64..128).contains(&o[1]))
        || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
        || o[0] >= 240
}

/// What an IPv6 address says about an IPv4 address inside it.
#[derive(Debug, PartialEq, Eq)]
enum Embedded {
    /// Not one of the forms that carry an IPv4 address.
    None,
    /// A form whose IPv4 address cannot be known from outside (a local NAT64
    /// prefix): treated as internal whatever it carries.
    Internal,
    /// The IPv4 addresses the packet may reach (Teredo names two).
    V4([Option<Ipv4Addr>; 2]),
}

/// The IPv4 address(es) an IPv6 address embeds, for the forms that route a
/// packet to (or through) that IPv4 address.
fn embedded_ipv4(v6: Ipv6Addr) -> Embedded {
    let seg = v6.segments();
    let o = v6.octets();
    let last32 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    let one = |v4| Embedded::V4([Some(v4), None]);
    // IPv4-mapped ::ffff:0:0/96 (RFC 4291 §2.5.5.2): a dual-stack socket
    // connects to the IPv4 address itself.
    if seg[..6] == [0, 0, 0, 0, 0, 0xffff] {
        return one(last32);
    }
    // IPv4-compatible ::/96 (RFC 4291 §2.5.5.1, deprecated but still
    // parsed by stacks and tunnels). `::` and `::1` are caught before.
    if seg[..6] == [0, 0, 0, 0, 0, 0] {
        return one(last32);
    }
    // IPv4-translated ::ffff:0:0:0/96 (SIIT, RFC 6145 §2.1 / RFC 2765).
    if seg[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return one(last32);
    }
    // NAT64 well-known prefix 64:ff9b::/96 (RFC 6052 §2.1): the IPv4
    // address is the last 32 bits; the translator sends to it.
    if seg[..6] == [0x0064, 0xff9b, 0, 0, 0, 0] {
        return one(last32);
    }
    // NAT64 local-use prefix 64:ff9b:1::/48 (RFC 8215): the operator picks
    // the prefix length inside it, so where the IPv4 sits cannot be known;
    // and the rest of 64:ff9b::/32 is not allocated. Internal as a whole.
    if seg[0] == 0x0064 && seg[1] == 0xff9b {
        return Embedded::Internal;
    }
    // 6to4 2002::/16 (RFC 3056 §2): the relay's IPv4 address is bits 16..48.
    if seg[0] == 0x2002 {
        return one(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    // Teredo 2001::/32 (RFC 4380 §4): the server's IPv4 address is bits
    // 32..64 and the client's is the last 32 bits, each bit inverted. The
    // packet goes through both, so either being internal is enough.
    if seg[0] == 0x2001 && seg[1] == 0 {
        let server = Ipv4Addr::new(o[4], o[5], o[6], o[7]);
        let client = Ipv4Addr::from(!u32::from(last32));
        return Embedded::V4([Some(server), Some(client)]);
    }
    Embedded::None
}

impl DestinationPolicy {
    /// The policy `webhooks.*` describes. Networks that do not parse are
    /// refused by config validation before this is reached; here they are
    /// skipped (allowing less, never more).
    pub fn from_config(config: &WebhooksConfig) -> Self {
        DestinationPolicy {
            allow_plain_http: config.allow_plain_http,
            allow_private: config.allow_private_destinations,
            internal_allowed: config
                .allowed_internal_networks
                .iter()
                .filter_map(|n| parse_network(n))
                .collect(),
        }
    }

    /// Checks the URL's form: absolute, https (or http when allowed), a
    /// host, no credentials in it.
    pub fn check_url(&self, url: &str) -> Result<http::Uri, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if self.allow_plain_http => {}
            Some("http") => {
                return Err(
                    "the URL must be https:// (events carry recipient addresses); the operator can allow http with webhooks.allow_plain_http".into(),
                )
            }
            _ => return Err("the URL must start with https://".into()),
        }
        let Some(authority) = uri.authority() else {
            return Err("the URL has no host".into());
        };
        if authority.as_str().contains('@') {
            return Err("credentials in the URL are not accepted".into());
        }
        if let Ok(ip) = host_of(&uri).parse::<IpAddr>() {
            self.check_ip(ip)?;
        }
        Ok(uri)
    }

    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        if !self.allow_private
            && is_internal(ip)
            && !self.internal_allowed.iter().any(|n| n.contains(&ip))
        {
            return Err(format!(
                "{ip} is an internal address; webhooks go to public addresses only (the operator can allow internal ones with webhooks.allow_private_destinations)"
            ));
        }
        Ok(())
    }
}

/// The host of a URI without IPv6 brackets.
pub fn host_of(uri: &http::Uri) -> &str {
    uri.host()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']')
}

/// The addresses of `host` that the policy allows (port 0: the connector
/// sets the URL's). Err when it has addresses and none is allowed.
async fn resolve(
    host: &str,
    policy: &DestinationPolicy,
    lookup: &dyn HostLookup,
) -> Result<Vec<SocketAddr>, String> {
    let found = lookup.addresses(host).await?;
    let allowed: Vec<SocketAddr> = found
        .iter()
        .filter(|ip| policy.check_ip(**ip).is_ok())
        .map(|ip| SocketAddr::new(*ip, 0))
        .collect();
    if allowed.is_empty() && !found.is_empty() {
        return Err(format!(
            "{host} resolves only to internal addresses ({}); webhooks go to public addresses only",
            found
                .iter()
                .map(|ip| ip.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(allowed)
}

/// The destination policy with the lookup it resolves names through. As a
/// hyper resolver it is the per-connection guard: every connection the
/// webhook client opens asks it for addresses, and gets only allowed ones.
#[derive(Clone)]
pub struct PolicyResolver {
    policy: Arc<DestinationPolicy>,
    lookup: Arc<dyn HostLookup>,
}

impl PolicyResolver {
    pub fn new(policy: DestinationPolicy, lookup: Arc<dyn HostLookup>) -> Self {
        PolicyResolver {
            policy: Arc::new(policy),
            lookup,
        }
    }

    pub fn policy(&self) -> &DestinationPolicy {
        &self.policy
    }

    /// What a URL must pass when it is set: its form, and its host's
    /// addresses now, so the caller hears at once that it will not work.
    /// (Delivery checks again at every connection: a later answer may differ.)
    pub async fn check(&self, url: &str) -> Result<http::Uri, String> {
        let uri = self.policy.check_url(url)?;
        let host = host_of(&uri);
        if host.parse::<IpAddr>().is_err() {
            let addrs = resolve(host, &self.policy, self.lookup.as_ref()).await?;
            if addrs.is_empty() {
                return Err(format!("{host} has no address"));
            }
        }
        Ok(uri)
    }
}

type ResolveFuture =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, std::io::Error>> + Send>>;

impl tower_service::Service<Name> for PolicyResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = ResolveFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            resolve(name.as_str(), &this.policy, this.lookup.as_ref())
                .await
                .map(Vec::into_iter)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111", "8.8.8.8"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    /// Every IPv6 form that carries an IPv4 address is judged by that
    /// address: internal inside means refused, public inside means the
    /// ordinary rules decide (allowed by the strict policy).
    #[test]
    fn ipv6_embedding_an_ipv4_address_is_judged_by_it() {
        let strict = DestinationPolicy::default();
        let refused = [
            // IPv4-mapped (RFC 4291 §2.5.5.2)
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            // IPv4-compatible (RFC 4291 §2.5.5.1)
            "::127.0.0.1",
            "::169.254.169.254",
            "::192.168.0.1",
            // IPv4-translated (RFC 6145)
            "::ffff:0:127.0.0.1",
            // 6to4 (RFC 3056): bits 16..48
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2002:c0a8:101:1::1",
            // NAT64 well-known prefix (RFC 6052)
            "64:ff9b::127.0.0.1",
            "64:ff9b::10.1.2.3",
            "64:ff9b::100.64.0.1",
            // NAT64 local-use prefix (RFC 8215): internal whatever it carries
            "64:ff9b:1::8.8.8.8",
            "64:ff9b:1:2:3:4:5:6",
            // Teredo (RFC 4380): internal client (last 32 bits inverted) ...
            "2001:0:808:808:0:0:80ff:fffe", // client 127.0.0.1
            "2001:0:808:808:0:0:f5ff:fffe", // client 10.0.0.1
            // ... or internal server (bits 32..64)
            "2001:0:a00:1::f7f7:fbfb", // server 10.0.0.1
            // other special IPv6 ranges
            "fec0::1",
            "100::1",
        ];
        for ip in refused {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(is_internal(ip), "{ip}");
            assert!(strict.check_ip(ip).is_err(), "{ip}");
            assert!(
                strict.check_url(&format!("https://[{ip}]/hook")).is_err(),
                "{ip}"
            );
        }
        let allowed = [
            "::ffff:8.8.8.8",
            "::8.8.8.8",
            "::ffff:0:8.8.8.8",
            "2002:808:808::1",
            "64:ff9b::8.8.8.8",
            "2001:0:808:808:0:0:f7f7:fbfb", // server 8.8.8.8, client 8.8.4.4
        ];
        for ip in allowed {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!is_internal(ip), "{ip}");
            assert!(strict.check_ip(ip).is_ok(), "{ip}");
            assert!(
                strict.check_url(&format!("https://[{ip}]/hook")).is_ok(),
                "{ip}"
            );
        }
        // The operator's allowance still applies to the embedded forms.
        let lax = DestinationPolicy {
            allow_private: true,
            ..Default::default()
        };
        assert!(lax.check_ip("2002:7f00:1::".parse().unwrap()).is_ok());
    }

    /// The per-connection guard (the resolver the connector uses) applies
    /// the same rule: an embedded internal address never reaches connect().
    #[tokio::test]
    async fn resolver_guard_refuses_embedded_internal_addresses() {
        use tower_service::Service;
        let mut resolver =
            PolicyResolver::new(DestinationPolicy::default(), Arc::new(SystemLookup));
        for host in ["2002:7f00:1::", "64:ff9b::7f00:1", "::127.0.0.1"] {
            let name: Name = host.parse().unwrap();
            let err = resolver.call(name).await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{host}");
        }
        let name: Name = "2002:808:808::1".parse().unwrap();
        let addrs: Vec<_> = resolver.call(name).await.unwrap().collect();
        assert_eq!(addrs.len(), 1);
    }

    #[test]
    fn url_rules() {
        let strict = DestinationPolicy::default();
        assert!(strict.check_url("https://hooks.example.com/sg").is_ok());
        assert!(strict
            .check_url("http://hooks.example.com/sg")
            .unwrap_err()
            .contains("https"));
        assert!(strict
            .check_url("https://127.0.0.1:8443/x")
            .unwrap_err()
            .contains("internal"));
        assert!(strict
            .check_url("https://[::1]/x")
            .unwrap_err()
            .contains("internal"));
        assert!(strict.check_url("https://u:p@hooks.example.com/").is_err());
        assert!(strict.check_url("ftp://hooks.example.com/").is_err());
        assert!(strict.check_url("/relative").is_err());
        let lax = DestinationPolicy {
            allow_plain_http: true,
            allow_private: true,
            ..Default::default()
        };
        assert!(lax.check_url("http://127.0.0.1:9000/hook").is_ok());
    }

    #[tokio::test]
    async fn names_that_resolve_inward_are_refused() {
        let strict = PolicyResolver::new(DestinationPolicy::default(), Arc::new(SystemLookup));
        let err = strict.check("https://localhost/hook").await.unwrap_err();
        assert!(err.contains("internal"), "{err}");
        let lax = DestinationPolicy {
            allow_private: true,
            ..Default::default()
        };
        let lax = PolicyResolver::new(lax, Arc::new(SystemLookup));
        assert!(lax.check("https://localhost/hook").await.is_ok());
    }

    /// A lookup whose answer the test changes, as DNS rebinding does.
    struct Changing(std::sync::Mutex<Vec<IpAddr>>);

    impl HostLookup for Changing {
        fn addresses<'a>(
            &'a self,
            _host: &'a str,
        ) -> Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, String>> + Send + 'a>> {
            let now = self.0.lock().map(|a| a.clone()).unwrap_or_default();
            Box::pin(async move { Ok(now) })
        }
    }

    /// A name that passed when the URL was set is asked again at connect
    /// time, and an answer that has since turned internal yields nothing to
    /// connect to.
    #[tokio::test]
    async fn the_connect_time_guard_sees_a_changed_answer() {
        use tower_service::Service;
        let public: IpAddr = "93.184.216.34".parse().unwrap();
        let lookup = Arc::new(Changing(std::sync::Mutex::new(vec![public])));
        let mut guard = PolicyResolver::new(DestinationPolicy::default(), lookup.clone());
        guard.check("https://hooks.example.com/x").await.unwrap();
        let name: Name = "hooks.example.com".parse().unwrap();
        let addrs: Vec<_> = guard.call(name.clone()).await.unwrap().collect();
        assert_eq!(addrs, [SocketAddr::new(public, 0)]);
        *lookup.0.lock().unwrap() = vec!["10.0.0.7".parse().unwrap()];
        let err = guard.call(name.clone()).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("10.0.0.7"), "{err}");
        // Mixed answers: only the allowed address is handed out.
        *lookup.0.lock().unwrap() = vec!["127.0.0.1".parse().unwrap(), public];
        let addrs: Vec<_> = guard.call(name).await.unwrap().collect();
        assert_eq!(addrs, [SocketAddr::new(public, 0)]);
    }

    /// `webhooks.allowed_internal_networks` opens exactly the networks it
    /// names: the rest of the internal ranges stay refused.
    #[test]
    fn allowed_internal_networks_open_only_themselves() {
        let config = WebhooksConfig {
            allowed_internal_networks: vec!["10.20.0.0/16".into(), "127.0.0.2".into()],
            ..Default::default()
        };
        let policy = DestinationPolicy::from_config(&config);
        for ip in ["10.20.3.4", "127.0.0.2"] {
            assert!(policy.check_ip(ip.parse().unwrap()).is_ok(), "{ip}");
        }
        for ip in ["10.21.0.1", "127.0.0.1", "127.0.0.3", "192.168.1.1", "::1"] {
            assert!(policy.check_ip(ip.parse().unwrap()).is_err(), "{ip}");
        }
        assert!(policy.check_url("https://127.0.0.2:8443/x").is_ok());
        assert!(policy.check_url("https://127.0.0.3:8443/x").is_err());
    }
}
