//! MX resolution (RFC 5321 §5.1): MX records by preference, the domain's own
//! address when there is no MX, and null MX (RFC 7505) as a permanent failure.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use rand::seq::SliceRandom;

use crate::outcome::Outcome;

/// RFC 5321 §5.1 leaves the cap to us; more than this many MX hosts never
/// helps a delivery, it only prolongs a failing one.
const MAX_MX_HOSTS: usize = 5;

pub struct MxResolver {
    resolver: TokioResolver,
}

impl MxResolver {
    /// Uses `nameservers` when given (tests point this at a DNS server on
    /// loopback), else the system's resolver configuration.
    pub fn new(nameservers: &[SocketAddr]) -> Result<Self, String> {
        let provider = TokioConnectionProvider::default();
        let builder = if nameservers.is_empty() {
            TokioResolver::builder(provider).map_err(|e| format!("system resolver: {e}"))?
        } else {
            let mut config = ResolverConfig::new();
            for ns in nameservers {
                config.add_name_server(NameServerConfig::new(*ns, Protocol::Udp));
                config.add_name_server(NameServerConfig::new(*ns, Protocol::Tcp));
            }
            TokioResolver::builder_with_config(config, provider)
        };
        Ok(MxResolver {
            resolver: builder.build(),
        })
    }

    /// Host names to try, best first; equal preferences in random order
    /// (RFC 5321 §5.1 asks senders to spread load across them).
    pub async fn mx_hosts(&self, domain: &str) -> Result<Vec<String>, Outcome> {
        match self.resolver.mx_lookup(domain).await {
            Ok(lookup) => {
                let mut records: Vec<(u16, String)> = lookup
                    .iter()
                    .map(|mx| (mx.preference(), mx.exchange().to_utf8()))
                    .collect();
                // RFC 7505 §3: a single MX of "." says the domain takes no mail.
                if records.len() == 1 && (records[0].1 == "." || records[0].1.is_empty()) {
                    // RFC 7505 §4.1: 5.1.10 for a domain with a null MX.
                    return Err(Outcome::Permanent(format!(
                        "5.1.10 {domain} does not accept mail (null MX, RFC 7505)"
                    )));
                }
                records.retain(|(_, h)| h != "." && !h.is_empty());
                records.shuffle(&mut rand::rng());
                records.sort_by_key(|(p, _)| *p);
                Ok(records
                    .into_iter()
                    .take(MAX_MX_HOSTS)
                    .map(|(_, h)| h.trim_end_matches('.').to_owned())
                    .collect())
            }
            // RFC 5321 §5.1: no MX records means the domain itself is the host.
            Err(e) if e.is_no_records_found() && !e.is_nx_domain() => Ok(vec![domain.to_owned()]),
            Err(e) if e.is_nx_domain() => Err(Outcome::Permanent(format!(
                "5.1.2 {domain}: no such domain"
            ))),
            Err(e) => Err(Outcome::Transient(format!("MX lookup for {domain}: {e}"))),
        }
    }

    /// TXT records of a name, each joined from its strings (RFC 7208 §3.3
    /// style). Ok(empty) when the name has none; Err for lookup trouble.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, String> {
        match self.resolver.txt_lookup(name).await {
            Ok(l) => Ok(l
                .iter()
                .map(|t| {
                    t.txt_data()
                        .iter()
                        .map(|part| String::from_utf8_lossy(part).into_owned())
                        .collect::<String>()
                })
                .collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(e) => Err(format!("TXT lookup for {name}: {e}")),
        }
    }

    /// Addresses of one host.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, Outcome> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        match self.resolver.lookup_ip(host).await {
            Ok(l) => Ok(l.iter().collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                Err(Outcome::Permanent(format!("{host}: no address records")))
            }
            Err(e) => Err(Outcome::Transient(format!(
                "address lookup for {host}: {e}"
            ))),
        }
    }
}
