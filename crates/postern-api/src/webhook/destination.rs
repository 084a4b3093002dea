//! Where a webhook may point. An account sets the URL, the server makes the
//! request: without a rule, any API user could make Postern call into the
//! operator's own network (SSRF). So by default the URL must be https and
//! every address it resolves to must be public, checked when the URL is set
//! and again at every connection (the resolver below hands the connector only
//! addresses that pass, so a DNS answer that changes later cannot slip an
//! internal address in).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

#[derive(Debug, Clone, Copy, Default)]
pub struct DestinationPolicy {
    pub allow_plain_http: bool,
    pub allow_private: bool,
}

/// Loopback, private (RFC 1918, RFC 4193), link-local, CGNAT (RFC 6598),
/// unspecified, multicast, documentation and other special ranges: nothing
/// a public webhook receiver lives at.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
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
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local
                || (seg[0] & 0xffc0) == 0xfe80 // link-local
                || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
                || (seg[0] == 0x0064 && seg[1] == 0xff9b) // NAT64 to anything
        }
    }
}

impl DestinationPolicy {
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
        if !self.allow_private && is_internal(ip) {
            return Err(format!(
                "{ip} is an internal address; webhooks go to public addresses only (the operator can allow internal ones with webhooks.allow_private_destinations)"
            ));
        }
        Ok(())
    }

    /// Resolves the URL's host now and checks every address: when a URL is
    /// set, so that the caller hears at once that it will not work.
    pub async fn check_resolves(&self, uri: &http::Uri) -> Result<(), String> {
        let host = host_of(uri);
        if host.parse::<IpAddr>().is_ok() {
            return Ok(());
        }
        let addrs = resolve(host, *self).await?;
        if addrs.is_empty() {
            return Err(format!("{host} has no address"));
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

async fn resolve(host: &str, policy: DestinationPolicy) -> Result<Vec<SocketAddr>, String> {
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| format!("{host}: {e}"))?
        .collect();
    let allowed: Vec<SocketAddr> = found
        .iter()
        .copied()
        .filter(|a| policy.check_ip(a.ip()).is_ok())
        .collect();
    if allowed.is_empty() && !found.is_empty() {
        return Err(format!(
            "{host} resolves only to internal addresses ({}); webhooks go to public addresses only",
            found
                .iter()
                .map(|a| a.ip().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(allowed)
}

/// A hyper resolver that returns only the addresses the policy allows.
#[derive(Clone, Copy)]
pub struct PolicyResolver(pub DestinationPolicy);

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
        let policy = self.0;
        Box::pin(async move {
            resolve(name.as_str(), policy)
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
        };
        assert!(lax.check_url("http://127.0.0.1:9000/hook").is_ok());
    }

    #[tokio::test]
    async fn names_that_resolve_inward_are_refused() {
        let strict = DestinationPolicy::default();
        let uri = strict.check_url("https://localhost/hook").unwrap();
        let err = strict.check_resolves(&uri).await.unwrap_err();
        assert!(err.contains("internal"), "{err}");
        let lax = DestinationPolicy {
            allow_plain_http: false,
            allow_private: true,
        };
        assert!(lax.check_resolves(&uri).await.is_ok());
    }
}
