//! MX resolution (RFC 5321 §5.1): MX records by preference, the domain's own
//! address when there is no MX, and null MX (RFC 7505) as a permanent failure.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::dnssec::{Algorithm, PublicKeyBuf, TrustAnchors};
use hickory_resolver::proto::rr::Name;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolverBuilder, TokioResolver};
use rand::seq::SliceRandom;

use crate::dnssec_probe::DnssecProbe;
use crate::outcome::Outcome;

/// RFC 5321 §5.1 leaves the cap to us; more than this many MX hosts never
/// helps a delivery, it only prolongs a failing one.
const MAX_MX_HOSTS: usize = 5;

pub struct MxResolver {
    resolver: TokioResolver,
    /// DNSSEC validation for DANE; None when DANE is off.
    secure: Option<SecureDns>,
}

/// The validating side: a resolver that validates DNSSEC itself (it does
/// not trust an upstream AD bit), and the probe deciding whether what it
/// says counts (crate::dnssec_probe).
struct SecureDns {
    resolver: TokioResolver,
    probe: Arc<DnssecProbe>,
    /// `dns.dane_required`: defer MX mail while DANE is not active.
    required: bool,
}

/// Trust anchors other than the built-in root keys (tests sign their own
/// zone): the DNSKEY public keys, and the zone they are the keys of (the
/// DNSSEC probe asks for that zone's SOA).
#[derive(Debug, Clone)]
pub struct TrustAnchor {
    pub zone: String,
    pub keys: Vec<(Vec<u8>, Algorithm)>,
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

/// A resolver builder for `nameservers`, or the system's configuration
/// when there are none.
fn builder(nameservers: &[SocketAddr]) -> Result<ResolverBuilder<TokioConnectionProvider>, String> {
    let provider = TokioConnectionProvider::default();
    if nameservers.is_empty() {
        return TokioResolver::builder(provider).map_err(|e| format!("system resolver: {e}"));
    }
    let mut config = ResolverConfig::new();
    for ns in nameservers {
        config.add_name_server(NameServerConfig::new(*ns, Protocol::Udp));
        config.add_name_server(NameServerConfig::new(*ns, Protocol::Tcp));
    }
    Ok(TokioResolver::builder_with_config(config, provider))
}

/// A resolver that validates DNSSEC from `anchor`'s keys, else from the
/// built-in root anchors.
fn validating(
    nameservers: &[SocketAddr],
    anchor: Option<&TrustAnchor>,
) -> Result<TokioResolver, String> {
    let mut builder = builder(nameservers)?;
    builder.options_mut().validate = true;
    if let Some(anchor) = anchor {
        let mut ta = TrustAnchors::empty();
        for (bytes, algorithm) in &anchor.keys {
            ta.insert(&PublicKeyBuf::new(bytes.clone(), *algorithm));
        }
        builder = builder.with_trust_anchor(Arc::new(ta));
    }
    Ok(builder.build())
}

impl MxResolver {
    /// Uses `nameservers` when given (tests point this at a DNS server on
    /// loopback), else the system's resolver configuration.
    pub fn new(nameservers: &[SocketAddr]) -> Result<Self, String> {
        Ok(MxResolver {
            resolver: builder(nameservers)?.build(),
            secure: None,
        })
    }

    /// Also validates DNSSEC for DANE, from the built-in root anchors or
    /// from `anchor` (tests use their own zone's key). DANE is in force
    /// only once the path has been seen to validate (crate::dnssec_probe).
    pub fn with_dnssec(
        nameservers: &[SocketAddr],
        anchor: Option<TrustAnchor>,
    ) -> Result<Self, String> {
        let mut this = Self::new(nameservers)?;
        // The probe asks for the anchor's zone; the built-in anchors are
        // the root's.
        let zone = match &anchor {
            Some(a) => Name::from_str(&a.zone)
                .map_err(|e| format!("trust anchor zone {:?}: {e}", a.zone))?,
            None => Name::root(),
        };
        let probe = DnssecProbe::new(validating(nameservers, anchor.as_ref())?, zone);
        this.secure = Some(SecureDns {
            resolver: validating(nameservers, anchor.as_ref())?,
            probe: Arc::new(probe),
            required: false,
        });
        Ok(this)
    }

    /// `dns.dane_required`: while DANE is not active, MX mail is deferred
    /// rather than sent under the usual TLS policy. No effect without DNSSEC.
    pub fn require_dane(mut self, required: bool) -> Self {
        if let Some(s) = &mut self.secure {
            s.required = required;
        }
        self
    }

    pub fn dnssec_enabled(&self) -> bool {
        self.secure.is_some()
    }

    pub fn dane_required(&self) -> bool {
        self.secure.as_ref().is_some_and(|s| s.required)
    }

    /// The probe deciding whether DANE is in force (for the periodic task
    /// and health reports); None when DANE is off.
    pub fn dane_probe(&self) -> Option<Arc<DnssecProbe>> {
        self.secure.as_ref().map(|s| s.probe.clone())
    }

    /// The domain's MX host names, if DNSSEC proves them (RFC 7672 §2.2.1:
    /// DANE applies only to MX hosts learnt securely).
    pub async fn secure_mx(&self, domain: &str) -> Dnssec<Vec<String>> {
        let Some(secure) = &self.secure else {
            return Dnssec::Insecure;
        };
        secure.probe.current().await;
        let answer = match secure.resolver.mx_lookup(domain).await {
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
            // A proven absence: no MX records to be secure (the plain
            // resolver's A/AAAA fallback or null-MX handling decides).
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Dnssec::Insecure,
            // Anything else failed to validate or to answer. Once the path
            // has validated, that is what stripped or forged answers look
            // like, so it must not quietly mean "no DANE" (RFC 7672 §2.1.1):
            // bogus, and the probe decides whether DANE is active at all.
            Err(e) => {
                tracing::debug!(%domain, error = %e, "validated MX lookup failed");
                Dnssec::Bogus(format!("MX lookup for {domain}: {e}"))
            }
        };
        secure.probe.admit(answer, domain)
    }

    /// TLSA records at `_<port>._tcp.<host>` (RFC 7672 §2.2.2).
    pub async fn tlsa(&self, host: &str, port: u16) -> Dnssec<Vec<Tlsa>> {
        let Some(secure) = &self.secure else {
            return Dnssec::Insecure;
        };
        secure.probe.current().await;
        let name = format!("_{port}._tcp.{host}.");
        let answer = match secure.resolver.tlsa_lookup(name.as_str()).await {
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
        };
        secure.probe.admit(answer, &name)
    }

    /// Host names to try, best first; equal preferences in random order
    /// (RFC 5321 §5.1 asks senders to spread load across them).
    pub async fn mx_hosts(&self, domain: &str) -> Result<Vec<String>, Outcome> {
        let answer = match self.resolver.mx_lookup(domain).await {
            Ok(lookup) => MxAnswer::Records(
                lookup
                    .iter()
                    .map(|mx| (mx.preference(), mx.exchange().to_utf8()))
                    .collect(),
            ),
            Err(e) if e.is_nx_domain() => MxAnswer::NoSuchDomain,
            Err(e) if e.is_no_records_found() => MxAnswer::NoRecords,
            Err(e) => MxAnswer::Failed(e.to_string()),
        };
        hosts_to_try(domain, answer, &mut rand::rng())
    }

    /// The MX records of a name as they are ("pref host"), without the
    /// address fallback: for checking what a domain published.
    pub async fn mx_records(&self, name: &str) -> Result<Vec<String>, String> {
        records_or_none(self.resolver.mx_lookup(name).await, "MX", name, |l| {
            l.iter()
                .map(|mx| format!("{} {}", mx.preference(), mx.exchange().to_utf8()))
                .collect()
        })
    }

    /// TXT records of a name, each joined from its strings (RFC 7208 §3.3
    /// style). Ok(empty) when the name has none; Err for lookup trouble.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, String> {
        records_or_none(self.resolver.txt_lookup(name).await, "TXT", name, |l| {
            l.iter()
                .map(|t| {
                    t.txt_data()
                        .iter()
                        .map(|part| String::from_utf8_lossy(part).into_owned())
                        .collect::<String>()
                })
                .collect()
        })
    }

    /// The IPv4 addresses (A records) of `name`, asked as a fully-qualified
    /// name (no search domains): for DNSBL queries (RFC 5782 §2.1).
    /// Ok(empty) when the name has none.
    pub async fn ipv4(&self, name: &str) -> Result<Vec<std::net::Ipv4Addr>, String> {
        let answer = self.resolver.ipv4_lookup(absolute(name)).await;
        records_or_none(answer, "A", name, |l| l.iter().map(|a| a.0).collect())
    }

    /// The PTR names of an address (for forward-confirmed reverse DNS).
    /// Ok(empty) when it has none.
    pub async fn ptr_names(&self, ip: IpAddr) -> Result<Vec<String>, String> {
        let answer = self.resolver.reverse_lookup(ip).await;
        records_or_none(answer, "PTR", &ip.to_string(), |l| {
            l.iter().map(|p| p.0.to_utf8()).collect()
        })
    }

    /// The A and AAAA records of a host name asked as fully qualified;
    /// Ok(empty) when it has none.
    pub async fn host_addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let answer = self.resolver.lookup_ip(absolute(host)).await;
        records_or_none(answer, "address", host, |l| l.iter().collect())
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

/// A lookup's records, or none when the name does not exist or has none
/// of the type asked (NXDOMAIN, no data); Err for any other failure.
fn records_or_none<L, T>(
    answer: Result<L, hickory_resolver::ResolveError>,
    rtype: &str,
    name: &str,
    records: impl FnOnce(L) -> Vec<T>,
) -> Result<Vec<T>, String> {
    match answer {
        Ok(l) => Ok(records(l)),
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
        Err(e) => Err(format!("{rtype} lookup for {name}: {e}")),
    }
}

/// `name` with a trailing dot, so the resolver asks it as it is and never
/// with a search domain appended.
fn absolute(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

/// What the MX lookup of a domain found, apart from how it was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MxAnswer {
    /// MX records as (preference, exchange) in the order the answer had.
    Records(Vec<(u16, String)>),
    /// The name exists and has no MX records.
    NoRecords,
    /// NXDOMAIN.
    NoSuchDomain,
    /// The lookup did not answer (timeout, SERVFAIL, ...).
    Failed(String),
}

/// The hosts to try for `domain`, best first (RFC 5321 §5.1), at most
/// MAX_MX_HOSTS; `rng` orders hosts of equal preference (injected so tests
/// can fix it).
fn hosts_to_try(
    domain: &str,
    answer: MxAnswer,
    rng: &mut impl rand::Rng,
) -> Result<Vec<String>, Outcome> {
    let mut records = match answer {
        MxAnswer::Records(records) => records,
        // RFC 5321 §5.1: no MX records means the domain itself is the host
        // (the "implicit MX"; its A/AAAA records are looked up next).
        MxAnswer::NoRecords => return Ok(vec![domain.to_owned()]),
        MxAnswer::NoSuchDomain => {
            return Err(Outcome::Permanent(format!(
                "5.1.2 {domain}: no such domain"
            )))
        }
        MxAnswer::Failed(e) => {
            return Err(Outcome::Transient(format!("MX lookup for {domain}: {e}")))
        }
    };
    // RFC 7505 §3: a single MX of "." says the domain takes no mail.
    if records.len() == 1 && (records[0].1 == "." || records[0].1.is_empty()) {
        // RFC 7505 §4.1: 5.1.10 for a domain with a null MX.
        return Err(Outcome::Permanent(format!(
            "5.1.10 {domain} does not accept mail (null MX, RFC 7505)"
        )));
    }
    records.retain(|(_, h)| h != "." && !h.is_empty());
    // Shuffle, then a stable sort by preference: lower preference first
    // (RFC 5321 §5.1), equal preferences left in the shuffled order.
    records.shuffle(rng);
    records.sort_by_key(|(p, _)| *p);
    Ok(records
        .into_iter()
        .take(MAX_MX_HOSTS)
        .map(|(_, h)| h.trim_end_matches('.').to_owned())
        .collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn records(list: &[(u16, &str)]) -> MxAnswer {
        MxAnswer::Records(list.iter().map(|(p, h)| (*p, h.to_string())).collect())
    }

    fn order(list: &[(u16, &str)], seed: u64) -> Vec<String> {
        hosts_to_try("d.example", records(list), &mut StdRng::seed_from_u64(seed)).expect("hosts")
    }

    /// RFC 5321 §5.1: the lowest preference is the most preferred, whatever
    /// order the answer listed the records in.
    #[test]
    fn lower_preference_comes_first() {
        let answer = [
            (30, "c.mx.example."),
            (10, "a.mx.example."),
            (20, "b.mx.example."),
            (0, "z.mx.example."),
        ];
        for seed in 0..20 {
            assert_eq!(
                order(&answer, seed),
                [
                    "z.mx.example",
                    "a.mx.example",
                    "b.mx.example",
                    "c.mx.example"
                ],
                "seed {seed}"
            );
        }
    }

    /// RFC 5321 §5.1: hosts of equal preference are tried in random order,
    /// so load spreads across them; but always after every more preferred
    /// host and before every less preferred one. With the RNG fixed the
    /// order is reproducible; across draws both orders occur about equally.
    #[test]
    fn equal_preferences_are_shuffled_within_their_rank() {
        let answer = [
            (20, "backup.example."),
            (10, "one.example."),
            (10, "two.example."),
        ];
        assert_eq!(
            order(&answer, 7),
            order(&answer, 7),
            "same seed, same order"
        );
        let mut rng = StdRng::seed_from_u64(1);
        let mut one_first = 0;
        const DRAWS: usize = 1000;
        for _ in 0..DRAWS {
            let hosts = hosts_to_try("d.example", records(&answer), &mut rng).unwrap();
            assert_eq!(hosts.len(), 3);
            assert_eq!(hosts[2], "backup.example", "{hosts:?}");
            match hosts[0].as_str() {
                "one.example" => {
                    assert_eq!(hosts[1], "two.example");
                    one_first += 1;
                }
                "two.example" => assert_eq!(hosts[1], "one.example"),
                other => panic!("{other} first: {hosts:?}"),
            }
        }
        // A fair shuffle puts either first half of the time; 1000 draws of
        // a fixed seed stay well inside 40–60 %, while a sort that kept the
        // answer's order (or always swapped it) would give 0 % or 100 %.
        assert!(
            (400..=600).contains(&one_first),
            "one.example first in {one_first} of {DRAWS} draws"
        );
    }

    /// Only the MAX_MX_HOSTS most preferred hosts are kept.
    #[test]
    fn at_most_the_best_few_hosts_are_kept() {
        let answer: Vec<(u16, String)> = (0..8u16)
            .rev()
            .map(|i| (i * 10, format!("mx{i}.example.")))
            .collect();
        let hosts = hosts_to_try(
            "d.example",
            MxAnswer::Records(answer),
            &mut StdRng::seed_from_u64(3),
        )
        .unwrap();
        assert_eq!(
            hosts,
            [
                "mx0.example",
                "mx1.example",
                "mx2.example",
                "mx3.example",
                "mx4.example"
            ]
        );
        assert_eq!(hosts.len(), MAX_MX_HOSTS);
    }

    /// RFC 7505 §3: a single MX of "." with preference 0 says the domain
    /// accepts no mail; §4.1: the failure is permanent, with 5.1.10.
    #[test]
    fn null_mx_is_a_permanent_failure() {
        let mut rng = StdRng::seed_from_u64(0);
        for exchange in [".", ""] {
            let outcome = hosts_to_try("null.example", records(&[(0, exchange)]), &mut rng)
                .expect_err("null MX");
            match outcome {
                Outcome::Permanent(detail) => {
                    assert!(detail.starts_with("5.1.10 "), "{detail}");
                    assert!(detail.contains("null.example"), "{detail}");
                }
                other => panic!("not permanent: {other:?}"),
            }
        }
        // A "." among real MX records is not a null MX (RFC 7505 §3 defines
        // it as the only record): it is skipped and the real hosts are used.
        assert_eq!(
            order(&[(0, "."), (10, "real.example.")], 0),
            ["real.example"]
        );
    }

    /// RFC 5321 §5.1: with no MX records the domain itself is the single
    /// host (its A/AAAA records are then looked up); a domain that does not
    /// exist fails permanently; a lookup that did not answer is retried.
    #[test]
    fn no_mx_means_the_domain_itself_and_errors_are_classified() {
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(
            hosts_to_try("bare.example", MxAnswer::NoRecords, &mut rng).unwrap(),
            ["bare.example"]
        );
        match hosts_to_try("gone.example", MxAnswer::NoSuchDomain, &mut rng) {
            Err(Outcome::Permanent(d)) => assert!(d.contains("no such domain"), "{d}"),
            other => panic!("{other:?}"),
        }
        match hosts_to_try(
            "slow.example",
            MxAnswer::Failed("timed out".into()),
            &mut rng,
        ) {
            Err(Outcome::Transient(d)) => assert!(d.contains("timed out"), "{d}"),
            other => panic!("{other:?}"),
        }
    }
}
