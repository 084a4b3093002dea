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
    /// A second resolver that validates DNSSEC itself (it does not trust an
    /// upstream AD bit), for DANE; None when DANE is off.
    secure: Option<TokioResolver>,
}

/// What DNSSEC says about an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dnssec<T> {
    /// Validated from a trust anchor.
    Secure(T),
    /// Unsigned (or unprovable): DANE does not apply.
    Insecure,
    /// Signed but failing validation, or unanswerable: whoever relies on
    /// it must not go on as if it were absent.
    Bogus(String),
}

/// A TLSA record (RFC 6698 §2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
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
            secure: None,
        })
    }

    /// Also validates DNSSEC for DANE, from the built-in root anchors or
    /// from `anchors` (DNSKEY public keys; tests use their own zone's key).
    pub fn with_dnssec(
        nameservers: &[SocketAddr],
        anchors: Option<Vec<(Vec<u8>, hickory_resolver::proto::dnssec::Algorithm)>>,
    ) -> Result<Self, String> {
        let mut this = Self::new(nameservers)?;
        let provider = TokioConnectionProvider::default();
        let mut builder = if nameservers.is_empty() {
            TokioResolver::builder(provider).map_err(|e| format!("system resolver: {e}"))?
        } else {
            let mut config = ResolverConfig::new();
            for ns in nameservers {
                config.add_name_server(NameServerConfig::new(*ns, Protocol::Udp));
                config.add_name_server(NameServerConfig::new(*ns, Protocol::Tcp));
            }
            TokioResolver::builder_with_config(config, provider)
        };
        builder.options_mut().validate = true;
        if let Some(keys) = anchors {
            let mut ta = hickory_resolver::proto::dnssec::TrustAnchors::empty();
            for (bytes, algorithm) in keys {
                ta.insert(&hickory_resolver::proto::dnssec::PublicKeyBuf::new(
                    bytes, algorithm,
                ));
            }
            builder = builder.with_trust_anchor(std::sync::Arc::new(ta));
        }
        this.secure = Some(builder.build());
        Ok(this)
    }

    pub fn dnssec_enabled(&self) -> bool {
        self.secure.is_some()
    }

    /// The domain's MX host names, if DNSSEC proves them (RFC 7672 §2.2.1:
    /// DANE applies only to MX hosts learnt securely).
    pub async fn secure_mx(&self, domain: &str) -> Dnssec<Vec<String>> {
        let Some(secure) = &self.secure else {
            return Dnssec::Insecure;
        };
        match secure.mx_lookup(domain).await {
            Ok(lookup) => {
                let records = lookup.as_lookup().records();
                let mx: Vec<&hickory_resolver::proto::rr::Record> = records
                    .iter()
                    .filter(|r| r.record_type() == hickory_resolver::proto::rr::RecordType::MX)
                    .collect();
                classify(&mx, || {
                    lookup
                        .iter()
                        .map(|m| m.exchange().to_utf8().trim_end_matches('.').to_owned())
                        .collect()
                })
            }
            // No MX (or a validation failure of a lookup that the plain
            // resolver may still answer): DANE is not used for the domain.
            Err(e) => {
                tracing::debug!(%domain, error = %e, "validated MX lookup gave no answer; no DANE");
                Dnssec::Insecure
            }
        }
    }

    /// TLSA records at `_<port>._tcp.<host>` (RFC 7672 §2.2.2).
    pub async fn tlsa(&self, host: &str, port: u16) -> Dnssec<Vec<Tlsa>> {
        let Some(secure) = &self.secure else {
            return Dnssec::Insecure;
        };
        let name = format!("_{port}._tcp.{host}.");
        match secure.tlsa_lookup(name.as_str()).await {
            Ok(lookup) => {
                let records = lookup.as_lookup().records();
                let tlsa: Vec<&hickory_resolver::proto::rr::Record> = records
                    .iter()
                    .filter(|r| r.record_type() == hickory_resolver::proto::rr::RecordType::TLSA)
                    .collect();
                classify(&tlsa, || {
                    lookup
                        .iter()
                        .map(|t| Tlsa {
                            usage: t.cert_usage().into(),
                            selector: t.selector().into(),
                            matching: t.matching().into(),
                            data: t.cert_data().to_vec(),
                        })
                        .collect()
                })
            }
            // A proven absence: no DANE for this host.
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Dnssec::Insecure,
            // RFC 7672 §2.1.1: a failed TLSA lookup makes the host unusable,
            // not DANE-free (or stripping the answer would downgrade).
            Err(e) => Dnssec::Bogus(format!("TLSA lookup for {name}: {e}")),
        }
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

    /// The MX records of a name as they are ("pref host"), without the
    /// address fallback: for checking what a domain published.
    pub async fn mx_records(&self, name: &str) -> Result<Vec<String>, String> {
        match self.resolver.mx_lookup(name).await {
            Ok(l) => Ok(l
                .iter()
                .map(|mx| format!("{} {}", mx.preference(), mx.exchange().to_utf8()))
                .collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(e) => Err(format!("MX lookup for {name}: {e}")),
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

/// Secure only when every record of the answer is.
fn classify<T>(
    records: &[&hickory_resolver::proto::rr::Record],
    value: impl FnOnce() -> T,
) -> Dnssec<T> {
    use hickory_resolver::proto::dnssec::Proof;
    if records.is_empty() {
        return Dnssec::Insecure;
    }
    if records.iter().any(|r| r.proof() == Proof::Bogus) {
        return Dnssec::Bogus("DNSSEC validation failed".into());
    }
    if records.iter().all(|r| r.proof() == Proof::Secure) {
        Dnssec::Secure(value())
    } else {
        Dnssec::Insecure
    }
}
