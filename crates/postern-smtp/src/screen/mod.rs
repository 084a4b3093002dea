//! Screening of `mx` clients before the greeting, as Postfix's postscreen
//! does: DNS block and allow lists with weights (`dnsbl`), a client that
//! talks before the banner (`gate`), forward-confirmed reverse DNS
//! (`fcrdns`) and the HELO name (`helo`). Submission listeners are never
//! screened: only an `mx` listener is given a [`Screener`].
//!
//! Every DNS lookup has a time limit (`screen.lookup_timeout`) and goes
//! through a cache (`cache`); one that times out or fails counts as "not
//! listed" and is counted, so a slow or dead list delays a client by at
//! most the limit and never refuses it.
//!
//! Each refusal is a log line naming the client and the reason, a metric
//! (`postern_screen_rejected_total{reason}`), and a `refused` event in the
//! send log (written by the listener, rate-bounded by the intake).

pub mod cache;
pub mod dnsbl;
mod fcrdns;
mod gate;
pub mod helo;
#[cfg(test)]
mod testing;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use postern_core::config::{ScreenAction, ScreenConfig};
use postern_core::network::IpNet;

pub use fcrdns::Fcrdns;
pub use gate::{admit, Admission};
pub use helo::HeloProblem;

/// What the screening asks of DNS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Query {
    /// The A records of a name (a DNSBL listing, RFC 5782 §2.1).
    Ipv4(String),
    /// The PTR names of an address.
    Ptr(IpAddr),
    /// The A and AAAA records of a host name.
    Addresses(String),
}

impl Query {
    /// The metric label of the lookup.
    fn kind(&self) -> &'static str {
        match self {
            Query::Ipv4(_) => "dnsbl",
            Query::Ptr(_) => "ptr",
            Query::Addresses(_) => "address",
        }
    }
}

/// DNS as the screening needs it; the server passes its resolver (the one
/// built for `[dns] nameservers`).
pub trait ScreenDns: Send + Sync {
    /// The records as text (addresses, or host names): Ok(empty) when the
    /// name has none (NXDOMAIN or no data), Err when the lookup failed.
    fn resolve<'a>(
        &'a self,
        query: &'a Query,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<String>, String>> + Send + 'a>>;
}

/// How one lookup went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Records(Vec<String>),
    TimedOut,
    Failed(String),
}

pub struct Screener {
    config: ScreenConfig,
    hostname: String,
    exempt: Vec<IpNet>,
    dns: Arc<dyn ScreenDns>,
    cache: cache::TtlCache<Query, Vec<String>>,
    /// Clients that waited for a held greeting, not held again while kept.
    passed_pregreet: cache::TtlCache<IpAddr, ()>,
}

impl Screener {
    /// `hostname` is this server's own name (`server.hostname`), which no
    /// client may claim in HELO.
    pub fn new(config: &ScreenConfig, hostname: &str, dns: Arc<dyn ScreenDns>) -> Arc<Self> {
        Arc::new(Screener {
            exempt: config
                .exempt_networks
                .iter()
                .filter_map(|n| postern_core::network::parse_network(n))
                .collect(),
            cache: cache::TtlCache::new(
                config.cache_ttl,
                config.negative_cache_ttl,
                config.cache_entries,
            ),
            passed_pregreet: cache::TtlCache::new(
                config.pregreet_pass_ttl,
                config.pregreet_pass_ttl,
                config.cache_entries,
            ),
            config: config.clone(),
            hostname: hostname.to_owned(),
            dns,
        })
    }

    /// Whether `ip` waited for a held greeting within
    /// `screen.pregreet_pass_ttl`.
    pub fn passed_pregreet(&self, ip: IpAddr) -> bool {
        self.passed_pregreet.get(&ip).is_some()
    }

    /// `ip` waited for a held greeting and was greeted.
    pub fn remember_pregreet_pass(&self, ip: IpAddr) {
        if !self.config.pregreet_pass_ttl.is_zero() {
            self.passed_pregreet.put(ip, (), true);
        }
    }

    /// A client in `screen.exempt_networks`: never screened.
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.exempt.iter().any(|n| n.contains(&ip))
    }

    pub fn helo_action(&self) -> ScreenAction {
        self.config.helo
    }

    /// The problem with a client's HELO name, when checks are on.
    pub fn check_helo(&self, helo: &str, client: IpAddr) -> Option<HeloProblem> {
        if self.config.helo == ScreenAction::Off {
            return None;
        }
        helo::check(helo, client, &self.hostname)
    }

    /// One lookup: from the cache, else from DNS within the time limit.
    pub async fn lookup(&self, query: Query) -> Answer {
        let kind = query.kind();
        if let Some(records) = self.cache.get(&query) {
            metrics::counter!("postern_screen_lookups_total", "lookup" => kind, "result" => "cached")
                .increment(1);
            return Answer::Records(records);
        }
        let result =
            tokio::time::timeout(self.config.lookup_timeout, self.dns.resolve(&query)).await;
        match result {
            Ok(Ok(records)) => {
                metrics::counter!("postern_screen_lookups_total", "lookup" => kind, "result" => "answered")
                    .increment(1);
                let positive = !records.is_empty();
                self.cache.put(query, records.clone(), positive);
                Answer::Records(records)
            }
            Ok(Err(e)) => {
                metrics::counter!("postern_screen_lookups_total", "lookup" => kind, "result" => "failed")
                    .increment(1);
                tracing::debug!(?query, error = %e, "screening lookup failed");
                Answer::Failed(e)
            }
            Err(_) => {
                metrics::counter!("postern_screen_lookups_total", "lookup" => kind, "result" => "timeout")
                    .increment(1);
                metrics::counter!("postern_screen_lookup_timeouts_total", "lookup" => kind)
                    .increment(1);
                tracing::info!(?query, timeout = ?self.config.lookup_timeout,
                    "screening lookup timed out; counted as not listed");
                Answer::TimedOut
            }
        }
    }

    /// Several lookups at once; the answers in the order asked.
    async fn lookup_all(self: &Arc<Self>, queries: Vec<Query>) -> Vec<Answer> {
        let mut tasks = tokio::task::JoinSet::new();
        let n = queries.len();
        for (i, q) in queries.into_iter().enumerate() {
            let this = self.clone();
            tasks.spawn(async move { (i, this.lookup(q).await) });
        }
        let mut answers = vec![Answer::TimedOut; n];
        while let Some(done) = tasks.join_next().await {
            // A lookup task cannot panic short of a bug; its slot then
            // stays "timed out", which counts as not listed.
            if let Ok((i, answer)) = done {
                answers[i] = answer;
            }
        }
        answers
    }

    /// The client's standing with the configured lists (RFC 5782), every
    /// zone asked at once.
    pub async fn dnsbl(self: &Arc<Self>, ip: IpAddr) -> dnsbl::Standing {
        let zones = &self.config.dnsbl;
        let queries = zones
            .iter()
            .map(|z| Query::Ipv4(dnsbl::query_name(ip, &z.zone)))
            .collect();
        let answers = self.lookup_all(queries).await;
        let mut listed = Vec::new();
        for (zone, answer) in zones.iter().zip(&answers) {
            let Answer::Records(records) = answer else {
                continue;
            };
            let addresses: Vec<Ipv4Addr> = records.iter().filter_map(|r| r.parse().ok()).collect();
            if dnsbl::is_listing(zone, &addresses) {
                metrics::counter!("postern_dnsbl_listed_total", "zone" => zone.zone.clone())
                    .increment(1);
                listed.push(zone);
            }
        }
        dnsbl::standing(
            &listed,
            self.config.threshold,
            self.config.allowlist_threshold,
        )
    }

    fn has_lists(&self) -> bool {
        !self.config.dnsbl.is_empty()
    }

    fn greet_delay(&self) -> Duration {
        self.config.greet_delay
    }

    fn fcrdns_action(&self) -> ScreenAction {
        self.config.fcrdns
    }
}

/// Records one refusal: a log line naming the client and why, and the
/// metric by reason.
fn record_refusal(ip: IpAddr, reason: &'static str, detail: &str) {
    metrics::counter!("postern_screen_rejected_total", "reason" => reason).increment(1);
    tracing::info!(peer = %ip, reason, detail, "screen: client refused");
}

/// Records a failed check in `log` mode: it is logged and counted, and
/// the client goes on.
fn record_logged(ip: IpAddr, reason: &'static str, detail: &str) {
    metrics::counter!("postern_screen_logged_total", "reason" => reason).increment(1);
    tracing::info!(peer = %ip, reason, detail, "screen: check failed (logged only)");
}

/// Records a HELO check that failed: refused or only logged per
/// `screen.helo`. Returns the reply to refuse with, if refused.
pub fn helo_verdict(
    screener: &Screener,
    ip: IpAddr,
    helo: &str,
    problem: &HeloProblem,
) -> Option<crate::reply::Reply> {
    let detail = format!(
        "HELO {} {}",
        postern_core::printable::Printable(helo),
        problem.describe()
    );
    if screener.helo_action() != ScreenAction::Reject {
        record_logged(ip, problem.label(), &detail);
        return None;
    }
    record_refusal(ip, problem.label(), &detail);
    Some(match problem {
        // RFC 5321 §4.1.1.1: the argument must be a domain or an address
        // literal; a syntax error in the argument is 501.
        HeloProblem::Invalid => crate::reply::Reply::new(
            501,
            (5, 5, 2),
            format!("HELO/EHLO name rejected: it {}", problem.describe()),
        ),
        _ => crate::reply::Reply::new(
            550,
            (5, 7, 1),
            format!("HELO/EHLO name rejected: it {}", problem.describe()),
        ),
    })
}
