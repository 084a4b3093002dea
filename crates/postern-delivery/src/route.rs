//! Static routes (smart hosts, internal servers) from `[[route]]`, else MX.

use std::collections::HashMap;
use std::path::PathBuf;

use postern_core::config::{split_host_port, RouteConfig, RouteProtocol, RouteTls};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Static(StaticRoute),
    Mx,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticRoute {
    pub host: String,
    pub port: u16,
    pub tls: RouteTls,
    pub protocol: RouteProtocol,
    pub ca_file: Option<PathBuf>,
    pub auth: Option<(String, String)>,
}

pub struct Router {
    exact: HashMap<String, StaticRoute>,
    wildcard: Option<StaticRoute>,
}

impl Router {
    /// Routes were validated with the config; an unparsable one is skipped
    /// with a log line rather than taking the node down.
    pub fn new(routes: &[RouteConfig]) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = None;
        for r in routes {
            let Some((host, port)) = split_host_port(&r.next_hop) else {
                tracing::error!(domain = %r.domain, next_hop = %r.next_hop, "route skipped: bad next_hop");
                continue;
            };
            let route = StaticRoute {
                host,
                port,
                tls: r.tls,
                protocol: r.protocol,
                ca_file: r.ca_file.clone(),
                auth: r.auth_username.clone().zip(r.auth_password.clone()),
            };
            if r.domain == "*" {
                wildcard = Some(route);
            } else {
                exact.insert(r.domain.to_lowercase(), route);
            }
        }
        Router { exact, wildcard }
    }

    /// Whether a `"*"` route sends every domain to a fixed next hop (so
    /// nothing is delivered through MX, and DANE never applies).
    pub fn routes_every_domain(&self) -> bool {
        self.wildcard.is_some()
    }

    pub fn route(&self, domain: &str) -> Destination {
        match self.exact.get(domain).or(self.wildcard.as_ref()) {
            Some(r) => Destination::Static(r.clone()),
            None => Destination::Mx,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(domain: &str, hop: &str) -> RouteConfig {
        RouteConfig {
            domain: domain.into(),
            next_hop: hop.into(),
            tls: RouteTls::None,
            protocol: RouteProtocol::Smtp,
            ca_file: None,
            auth_username: None,
            auth_password: None,
        }
    }

    #[test]
    fn exact_then_wildcard_then_mx() {
        let r = Router::new(&[route("example.net", "127.0.0.1:2626")]);
        assert!(matches!(r.route("example.net"), Destination::Static(s) if s.port == 2626));
        assert_eq!(r.route("other.example"), Destination::Mx);
        let r = Router::new(&[
            route("example.net", "127.0.0.1:2626"),
            route("*", "[::1]:25"),
        ]);
        assert!(matches!(r.route("other.example"), Destination::Static(s) if s.host == "::1"));
    }
}
