//! Traffic shaping: how many connections and messages a destination gets,
//! and which source address (IP pool) a message leaves from.
//!
//! A destination is one MX host (so every domain a provider serves shares
//! its limits and connections, as receivers count them) or one route's next
//! hop, seen from one source address.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use postern_core::config::DestinationConfig;
use postern_core::Config;

use crate::client::Source;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_messages_per_connection: u32,
    pub max_messages_per_hour: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Shaping {
    pub defaults: Limits,
    pub rules: Vec<DestinationConfig>,
    /// How long an idle connection waits for more mail.
    pub connection_idle: Duration,
    pub pools: HashMap<String, Vec<Source>>,
    pub default_pool: Option<String>,
    /// Hourly caps per source address.
    pub source_limits: HashMap<std::net::IpAddr, u32>,
}

impl Default for Shaping {
    fn default() -> Self {
        Shaping::from_config(&Config::default())
    }
}

impl Shaping {
    pub fn from_config(config: &Config) -> Shaping {
        let q = &config.queue;
        Shaping {
            defaults: Limits {
                max_connections: q.max_connections_per_destination,
                max_messages_per_connection: q.max_messages_per_connection,
                max_messages_per_hour: None,
            },
            rules: config.destination.clone(),
            connection_idle: q.connection_idle,
            pools: config
                .ip_pool
                .iter()
                .map(|p| {
                    let sources = p
                        .address
                        .iter()
                        .map(|a| Source {
                            ip: a.ip,
                            ehlo_name: a
                                .ehlo_name
                                .clone()
                                .unwrap_or_else(|| config.server.hostname.clone()),
                        })
                        .collect();
                    (p.name.clone(), sources)
                })
                .collect(),
            default_pool: q.default_ip_pool.clone(),
            source_limits: config
                .ip_pool
                .iter()
                .flat_map(|p| p.address.iter())
                .filter_map(|a| a.max_messages_per_hour.map(|n| (a.ip, n)))
                .collect(),
        }
    }

    /// The defaults, overridden field by field by the first rule whose
    /// `match` fits the host (exactly, or as `*.suffix`).
    pub fn limits_for(&self, host: &str) -> Limits {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let mut limits = self.defaults;
        if let Some(rule) = self.rules.iter().find(|r| host_matches(&r.host, &host)) {
            if let Some(n) = rule.max_connections {
                limits.max_connections = n;
            }
            if let Some(n) = rule.max_messages_per_connection {
                limits.max_messages_per_connection = n;
            }
            limits.max_messages_per_hour = rule.max_messages_per_hour;
        }
        limits
    }

    /// The source address for mail of `pool` to the destination `host`:
    /// always the same one for the same destination (a receiver sees a
    /// steady sender, and its connections can be reused).
    pub fn source_for(&self, pool: Option<&str>, host: &str) -> Option<Source> {
        let pool = pool.or(self.default_pool.as_deref())?;
        let sources = self.pools.get(pool)?;
        if sources.is_empty() {
            return None;
        }
        let mut h = DefaultHasher::new();
        host.hash(&mut h);
        Some(sources[(h.finish() % sources.len() as u64) as usize].clone())
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(&format!(".{suffix}")),
        None => pattern == host,
    }
}

/// Messages sent in the last hour, in one-minute buckets (a rolling window
/// that costs the same at 10 or 100,000 messages an hour).
#[derive(Debug, Default)]
pub struct HourWindow {
    buckets: VecDeque<(Instant, u32)>,
    total: u32,
}

const HOUR: Duration = Duration::from_secs(3600);
const BUCKET: Duration = Duration::from_secs(60);

impl HourWindow {
    fn expire(&mut self, now: Instant) {
        while let Some(&(start, n)) = self.buckets.front() {
            if now.duration_since(start) < HOUR {
                break;
            }
            self.total -= n;
            self.buckets.pop_front();
        }
    }

    /// Nothing sent in the last hour: the window can be forgotten.
    pub fn is_idle(&mut self, now: Instant) -> bool {
        self.expire(now);
        self.total == 0
    }

    /// Whether one more message fits, without taking it.
    pub fn check(&mut self, max: u32, now: Instant) -> Result<(), Duration> {
        self.expire(now);
        if self.total >= max {
            return Err(self
                .buckets
                .front()
                .map(|(start, _)| HOUR.saturating_sub(now.duration_since(*start)))
                .unwrap_or(BUCKET)
                .max(Duration::from_secs(1)));
        }
        Ok(())
    }

    /// Takes one message from the hour's allowance, or says when there
    /// will be room again.
    pub fn take(&mut self, max: u32, now: Instant) -> Result<(), Duration> {
        self.expire(now);
        if self.total >= max {
            let wait = self
                .buckets
                .front()
                .map(|(start, _)| HOUR.saturating_sub(now.duration_since(*start)))
                .unwrap_or(BUCKET);
            return Err(wait.max(Duration::from_secs(1)));
        }
        match self.buckets.back_mut() {
            Some((start, n)) if now.duration_since(*start) < BUCKET => *n += 1,
            _ => self.buckets.push_back((now, 1)),
        }
        self.total += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shaping(text: &str) -> Shaping {
        Shaping::from_config(&Config::parse(text).unwrap())
    }

    #[test]
    fn rules_override_the_defaults_for_matching_hosts() {
        let s = shaping(
            "[[destination]]\nmatch = \"*.google.com\"\nmax_connections = 3\nmax_messages_per_hour = 100\n",
        );
        let g = s.limits_for("gmail-smtp-in.l.google.com.");
        assert_eq!(g.max_connections, 3);
        assert_eq!(g.max_messages_per_hour, Some(100));
        assert_eq!(g.max_messages_per_connection, 100);
        assert_eq!(
            s.limits_for("google.com"),
            s.defaults,
            "*.x matches below x only"
        );
        assert_eq!(s.limits_for("mx.example.net"), s.defaults);
    }

    #[test]
    fn sources_are_stable_per_destination_and_spread_across_the_pool() {
        let s = shaping(
            "[server]\nhostname = \"mta.example\"\n[queue]\ndefault_ip_pool = \"p\"\n[[ip_pool]]\nname = \"p\"\n[[ip_pool.address]]\nip = \"127.0.0.2\"\nehlo_name = \"two.example\"\n[[ip_pool.address]]\nip = \"127.0.0.3\"\n",
        );
        let a = s.source_for(None, "mx1.example").unwrap();
        assert_eq!(s.source_for(None, "mx1.example").unwrap(), a);
        let used: std::collections::HashSet<_> = (0..50)
            .map(|i| s.source_for(Some("p"), &format!("mx{i}.example")).unwrap())
            .collect();
        assert_eq!(used.len(), 2);
        let three = used
            .iter()
            .find(|s| s.ip.to_string() == "127.0.0.3")
            .unwrap();
        assert_eq!(
            three.ehlo_name, "mta.example",
            "default EHLO is server.hostname"
        );
        assert!(s.source_for(Some("nope"), "mx1.example").is_none());
        assert!(Shaping::default().source_for(None, "x").is_none());
    }

    #[test]
    fn the_hour_window_refuses_beyond_the_limit_and_frees_up() {
        let mut w = HourWindow::default();
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(w.take(3, t0 + Duration::from_secs(i * 30)).is_ok());
        }
        let wait = w.take(3, t0 + Duration::from_secs(100)).unwrap_err();
        assert!(wait <= HOUR && wait > Duration::from_secs(3000), "{wait:?}");
        assert!(w.take(3, t0 + HOUR + Duration::from_secs(1)).is_ok());
    }
}
