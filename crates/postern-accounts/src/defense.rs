//! Brute-force defence for every login path (SMTP AUTH now, HTTP logins
//! later). Failures are counted per client IP, per network (/24, /64), per
//! account and across all accounts; they slow replies down, then block.
//! Password spraying (one source, many accounts) and credential stuffing
//! (many sources, one account) are detected and reported.
//!
//! The state is in memory, which is right for one node: a restart forgets
//! it. (The PostgreSQL backend will share it between nodes.)

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use postern_core::config::AuthConfig;
use postern_core::network::{counting_network, IpNet};

/// Tracked sources and accounts before expired entries are pruned; bounds
/// memory under an attack from very many addresses.
const PRUNE_ABOVE: usize = 100_000;
/// The first slow-down step; each further failure doubles it.
const BASE_DELAY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Blocked(&'static str),
}

/// Something an operator should hear about (audit entry, metric, log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detection {
    IpBlocked { ip: IpAddr, failures: u32 },
    NetworkBlocked { network: IpNet, failures: u32 },
    Spraying { ip: IpAddr, accounts: usize },
    Stuffing { account: String, sources: usize },
}

impl Detection {
    pub fn kind(&self) -> &'static str {
        match self {
            Detection::IpBlocked { .. } => "defense.ip_blocked",
            Detection::NetworkBlocked { .. } => "defense.network_blocked",
            Detection::Spraying { .. } => "defense.password_spraying",
            Detection::Stuffing { .. } => "defense.credential_stuffing",
        }
    }
}

#[derive(Debug, Default)]
pub struct FailureOutcome {
    /// How long to wait before answering the failure.
    pub delay: Duration,
    pub detections: Vec<Detection>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    count: u32,
    since: Instant,
}

impl Window {
    fn bump(&mut self, now: Instant, window: Duration) -> u32 {
        if now.duration_since(self.since) > window {
            self.count = 0;
            self.since = now;
        }
        self.count += 1;
        self.count
    }

    fn fresh(now: Instant) -> Self {
        Window {
            count: 0,
            since: now,
        }
    }
}

#[derive(Debug)]
struct SourceState {
    failures: Window,
    accounts: HashSet<String>,
    blocked_until: Option<Instant>,
    spraying_reported: bool,
}

#[derive(Debug)]
struct NetworkState {
    failures: Window,
    blocked_until: Option<Instant>,
}

#[derive(Debug)]
struct AccountState {
    since: Instant,
    sources: HashSet<IpAddr>,
    stuffing_reported: bool,
}

#[derive(Debug, Default)]
struct State {
    sources: HashMap<IpAddr, SourceState>,
    networks: HashMap<IpNet, NetworkState>,
    accounts: HashMap<String, AccountState>,
}

pub struct Defense {
    config: AuthConfig,
    deny: Vec<IpNet>,
    state: Mutex<State>,
}

impl Defense {
    pub fn new(config: AuthConfig) -> Self {
        let deny = config
            .deny_networks
            .iter()
            .filter_map(|n| postern_core::network::parse_network(n))
            .collect();
        Defense {
            config,
            deny,
            state: Mutex::new(State::default()),
        }
    }

    /// Before credentials are checked at all.
    pub fn check(&self, ip: IpAddr, account: &str) -> Verdict {
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return Verdict::Blocked("denied_network");
        }
        let now = Instant::now();
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = state.sources.get(&ip) {
            if s.blocked_until.is_some_and(|t| t > now) {
                return Verdict::Blocked("ip");
            }
        }
        if let Some(n) = state.networks.get(&counting_network(ip)) {
            if n.blocked_until.is_some_and(|t| t > now) {
                return Verdict::Blocked("network");
            }
        }
        if let Some(a) = state.accounts.get(account) {
            // Under credential stuffing, the sources that already failed on
            // this account are shut out of it; everyone else is unaffected.
            if a.stuffing_reported
                && now.duration_since(a.since) <= self.config.failure_window
                && a.sources.contains(&ip)
            {
                return Verdict::Blocked("account_under_attack");
            }
        }
        Verdict::Allow
    }

    pub fn record_failure(&self, ip: IpAddr, account: &str) -> FailureOutcome {
        let c = &self.config;
        let now = Instant::now();
        let mut out = FailureOutcome::default();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.sources.len() > PRUNE_ABOVE || state.accounts.len() > PRUNE_ABOVE {
            prune(&mut state, now, c.failure_window.max(c.block_duration));
        }

        let source = state.sources.entry(ip).or_insert_with(|| SourceState {
            failures: Window::fresh(now),
            accounts: HashSet::new(),
            blocked_until: None,
            spraying_reported: false,
        });
        if now.duration_since(source.failures.since) > c.failure_window {
            source.accounts.clear();
            source.spraying_reported = false;
        }
        let failures = source.failures.bump(now, c.failure_window);
        if source.accounts.len() < 1024 {
            source.accounts.insert(account.to_owned());
        }
        if failures > c.delay_after_failures {
            let steps = (failures - c.delay_after_failures - 1).min(16);
            out.delay = BASE_DELAY.saturating_mul(1 << steps).min(c.max_delay);
        }
        if failures >= c.block_ip_after_failures && source.blocked_until.is_none_or(|t| t <= now) {
            source.blocked_until = Some(now + c.block_duration);
            out.detections.push(Detection::IpBlocked { ip, failures });
        }
        if source.accounts.len() >= c.spraying_accounts as usize && !source.spraying_reported {
            source.spraying_reported = true;
            source.blocked_until = Some(now + c.block_duration);
            out.detections.push(Detection::Spraying {
                ip,
                accounts: source.accounts.len(),
            });
        }

        let network = counting_network(ip);
        let net = state
            .networks
            .entry(network)
            .or_insert_with(|| NetworkState {
                failures: Window::fresh(now),
                blocked_until: None,
            });
        let net_failures = net.failures.bump(now, c.failure_window);
        if net_failures >= c.block_network_after_failures
            && net.blocked_until.is_none_or(|t| t <= now)
        {
            net.blocked_until = Some(now + c.block_duration);
            out.detections.push(Detection::NetworkBlocked {
                network,
                failures: net_failures,
            });
        }

        let acct = state
            .accounts
            .entry(account.to_owned())
            .or_insert_with(|| AccountState {
                since: now,
                sources: HashSet::new(),
                stuffing_reported: false,
            });
        if now.duration_since(acct.since) > c.failure_window {
            acct.since = now;
            acct.sources.clear();
            acct.stuffing_reported = false;
        }
        if acct.sources.len() < 65_536 {
            acct.sources.insert(ip);
        }
        if acct.sources.len() >= c.stuffing_sources as usize && !acct.stuffing_reported {
            acct.stuffing_reported = true;
            out.detections.push(Detection::Stuffing {
                account: account.to_owned(),
                sources: acct.sources.len(),
            });
        }
        out
    }
}

fn prune(state: &mut State, now: Instant, keep: Duration) {
    state.sources.retain(|_, s| {
        now.duration_since(s.failures.since) <= keep || s.blocked_until.is_some_and(|t| t > now)
    });
    state.networks.retain(|_, n| {
        now.duration_since(n.failures.since) <= keep || n.blocked_until.is_some_and(|t| t > now)
    });
    state
        .accounts
        .retain(|_, a| now.duration_since(a.since) <= keep);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn slows_down_then_blocks_one_ip_only() {
        let d = Defense::new(AuthConfig::default());
        let attacker = ip("198.51.100.7");
        let mut delays = Vec::new();
        let mut blocked_at = None;
        for i in 1..=25 {
            if d.check(attacker, "apikey") != Verdict::Allow {
                blocked_at = Some(i);
                break;
            }
            delays.push(d.record_failure(attacker, "apikey").delay);
        }
        assert_eq!(blocked_at, Some(21), "blocked after 20 failures");
        assert_eq!(delays[..3], [Duration::ZERO; 3]);
        assert!(delays[3] > Duration::ZERO && delays[4] > delays[3]);
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(5)));
        // Another network is not affected.
        assert_eq!(d.check(ip("203.0.113.9"), "apikey"), Verdict::Allow);
    }

    #[test]
    fn detects_spraying_and_stuffing() {
        let d = Defense::new(AuthConfig::default());
        let sprayer = ip("198.51.100.7");
        let mut found = Vec::new();
        for a in ["ann", "bob", "cid", "dan", "eve"] {
            found.extend(d.record_failure(sprayer, a).detections);
        }
        assert!(
            matches!(found.last(), Some(Detection::Spraying { accounts: 5, .. })),
            "{found:?}"
        );
        assert_eq!(d.check(sprayer, "zed"), Verdict::Blocked("ip"));

        let mut found = Vec::new();
        for i in 0..10 {
            found.extend(
                d.record_failure(ip(&format!("10.{i}.0.1")), "victim")
                    .detections,
            );
        }
        assert!(
            matches!(found.last(), Some(Detection::Stuffing { sources: 10, .. })),
            "{found:?}"
        );
        // The stuffing sources are shut out of the victim account...
        assert_eq!(
            d.check(ip("10.3.0.1"), "victim"),
            Verdict::Blocked("account_under_attack")
        );
        // ...while its real owner, from elsewhere, is not.
        assert_eq!(d.check(ip("192.0.2.50"), "victim"), Verdict::Allow);
    }

    /// README: with the defaults, a network (/24) is blocked after 100
    /// failures, though no one address in it reached its own 20.
    #[test]
    fn a_network_is_blocked_after_100_failures_by_default() {
        let d = Defense::new(AuthConfig::default());
        // 99 failures from ten addresses of 198.51.100.0/24, at most ten
        // each (an address alone is blocked only after 20).
        for i in 0..99 {
            d.record_failure(ip(&format!("198.51.100.{}", i % 10)), "apikey");
        }
        let newcomer = ip("198.51.100.200");
        assert_eq!(d.check(newcomer, "apikey"), Verdict::Allow, "99 failures");
        d.record_failure(ip("198.51.100.9"), "apikey");
        assert_eq!(d.check(newcomer, "apikey"), Verdict::Blocked("network"));
        // The next network is not affected.
        assert_eq!(d.check(ip("198.51.101.1"), "apikey"), Verdict::Allow);
    }

    #[test]
    fn blocks_a_network_and_honours_the_denylist() {
        let config = AuthConfig {
            block_network_after_failures: 30,
            deny_networks: vec!["203.0.113.0/24".into()],
            ..AuthConfig::default()
        };
        let d = Defense::new(config);
        for i in 0..30 {
            d.record_failure(ip(&format!("198.51.100.{}", i % 10)), "apikey");
        }
        assert_eq!(
            d.check(ip("198.51.100.200"), "apikey"),
            Verdict::Blocked("network")
        );
        assert_eq!(d.check(ip("198.51.101.1"), "apikey"), Verdict::Allow);
        assert_eq!(
            d.check(ip("203.0.113.5"), "apikey"),
            Verdict::Blocked("denied_network")
        );
    }
}
