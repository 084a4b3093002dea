//! URI block lists (SURBL/URIBL style, `[[content.uribl]]`): the domains
//! of the URLs a message links to, looked up in DNS zones that list the
//! domains spam advertises. Lookups go through the server's resolver on
//! `[dns] nameservers` (the one the `mx` screening uses), each with a time
//! limit, and their answers are kept in a cache shared by every message.

pub mod domain;
pub mod extract;

use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use postern_core::config::{ContentConfig, UriblZone};
use postern_smtp::screen::cache::TtlCache;
use postern_smtp::screen::{Query, ScreenDns};

use crate::{Check, Finding, Inspected};
use domain::LookupKey;

/// Answers kept at most; each is a short name and a few addresses.
const CACHE_ENTRIES: usize = 50_000;

pub struct UriBlocklists {
    config: ContentConfig,
    dns: Arc<dyn ScreenDns>,
    cache: TtlCache<String, Vec<String>>,
}

/// How one lookup went.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Listed,
    NotListed,
    /// Timed out or failed: no answer.
    Unanswered(String),
}

impl UriBlocklists {
    /// None when `config` names no zone.
    pub fn new(config: &ContentConfig, dns: Arc<dyn ScreenDns>) -> Option<Self> {
        if config.uribl.is_empty() {
            return None;
        }
        Some(UriBlocklists {
            cache: TtlCache::new(
                config.uribl_cache_ttl,
                config.uribl_negative_cache_ttl,
                CACHE_ENTRIES,
            ),
            config: config.clone(),
            dns,
        })
    }

    /// The distinct lookup keys of a message's URLs, at most
    /// `uribl_max_domains` of them (the first found). The cap bounds what
    /// one message costs: a message with thousands of links would
    /// otherwise send thousands of questions per zone to the name server
    /// (and fill the cache), and spam needs only one listed domain to be
    /// caught, which its first links almost always are.
    pub fn keys(&self, message: &mail_parser::Message<'_>) -> Vec<LookupKey> {
        let mut keys: Vec<LookupKey> = Vec::new();
        for host in extract::message_hosts(message) {
            let Some(key) = LookupKey::of(&host) else {
                continue;
            };
            if keys.contains(&key) {
                continue;
            }
            if keys.len() == self.config.uribl_max_domains {
                metrics::counter!("postern_uribl_domains_capped_total").increment(1);
                tracing::debug!(
                    cap = self.config.uribl_max_domains,
                    "more URL domains than uribl_max_domains; the rest not looked up"
                );
                break;
            }
            keys.push(key);
        }
        keys
    }

    /// One lookup: from the cache, else from DNS within the time limit.
    async fn lookup(&self, name: String, zone: &UriblZone) -> Outcome {
        if !representable(&name) {
            // No list can hold a name DNS cannot carry; asking would only
            // fail, and a failed lookup defers the message (on_error) on
            // every retry: a link with a 64-octet label would hold up any
            // mail that quotes it.
            metrics::counter!("postern_uribl_lookups_total", "result" => "unrepresentable")
                .increment(1);
            return Outcome::NotListed;
        }
        let answers = match self.cache.get(&name) {
            Some(records) => {
                metrics::counter!("postern_uribl_lookups_total", "result" => "cached").increment(1);
                records
            }
            None => {
                let query = Query::Ipv4(name.clone());
                match tokio::time::timeout(
                    self.config.uribl_lookup_timeout,
                    self.dns.resolve(&query),
                )
                .await
                {
                    Ok(Ok(records)) => {
                        metrics::counter!("postern_uribl_lookups_total", "result" => "answered")
                            .increment(1);
                        self.cache
                            .put(name.clone(), records.clone(), !records.is_empty());
                        records
                    }
                    Ok(Err(e)) => {
                        metrics::counter!("postern_uribl_lookups_total", "result" => "failed")
                            .increment(1);
                        return Outcome::Unanswered(format!("lookup of {name} failed: {e}"));
                    }
                    Err(_) => {
                        metrics::counter!("postern_uribl_lookups_total", "result" => "timeout")
                            .increment(1);
                        return Outcome::Unanswered(format!(
                            "lookup of {name} timed out after {}",
                            human(self.config.uribl_lookup_timeout)
                        ));
                    }
                }
            }
        };
        let addresses: Vec<Ipv4Addr> = answers.iter().filter_map(|a| a.parse().ok()).collect();
        if is_listing(zone, &addresses) {
            Outcome::Listed
        } else {
            Outcome::NotListed
        }
    }
}

/// Whether `name` fits in DNS (RFC 1035 §2.3.4: labels of 1 to 63
/// octets, 253 in all without the root's dot), as ASCII.
fn representable(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    name.is_ascii() && name.len() <= 253 && name.split('.').all(|l| !l.is_empty() && l.len() <= 63)
}

fn human(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// Whether a zone's answer lists the name: an A record in 127.0.0.0/8
/// (RFC 5782 §2.1, which URI lists follow). With `codes`, only those
/// answers; with `mask`, an answer whose last octet shares a bit with it
/// (SURBL's multi list: one bit per list). Without either, any 127/8
/// answer except 127.0.0.1, which SURBL and URIBL answer to queries they
/// refuse (too many, or from a public resolver), and 127.255.255.0/24,
/// where Spamhaus puts its error replies: those say nothing of the name.
pub fn is_listing(zone: &UriblZone, answers: &[Ipv4Addr]) -> bool {
    answers.iter().any(|a| {
        let [first, second, third, last] = a.octets();
        if first != 127 {
            return false;
        }
        if !zone.codes.is_empty() {
            return zone.codes.contains(a);
        }
        if let Some(mask) = zone.mask {
            return second == 0 && third == 0 && last & mask != 0;
        }
        *a != Ipv4Addr::new(127, 0, 0, 1) && !(second == 255 && third == 255)
    })
}

impl Check for UriBlocklists {
    fn name(&self) -> &'static str {
        "uri"
    }

    fn run<'a>(
        &'a self,
        message: &'a Inspected<'a>,
    ) -> Pin<Box<dyn Future<Output = Finding> + Send + 'a>> {
        Box::pin(async move {
            // A message that does not parse has no parts to find URLs in.
            let Some(parsed) = message.parsed else {
                return Finding::clean();
            };
            let keys = self.keys(parsed);
            // Every name in every zone, side by side: the check takes one
            // time limit, not one per lookup.
            let lookups = keys.iter().flat_map(|key| {
                self.config.uribl.iter().map(move |zone| async move {
                    let outcome = self.lookup(key.query_name(&zone.zone), zone).await;
                    (key, zone, outcome)
                })
            });
            let outcomes = futures_util::future::join_all(lookups).await;
            let mut listed = Vec::new();
            let mut unanswered = Vec::new();
            for (key, zone, outcome) in &outcomes {
                match outcome {
                    Outcome::Listed => {
                        metrics::counter!("postern_uribl_listed_total", "zone" => zone.zone.clone())
                            .increment(1);
                        listed.push(format!("{key} listed by {}", zone.zone));
                    }
                    Outcome::NotListed => {}
                    Outcome::Unanswered(why) => unanswered.push(why.clone()),
                }
            }
            if !listed.is_empty() {
                // A listing is an answer whatever the other lookups did.
                let action =
                    self.config
                        .action(message.domains(), |p| p.uri_listed, self.config.uri_listed);
                return Finding::Found {
                    action,
                    reason: listed.join("; "),
                    headers: Vec::new(),
                };
            }
            if let Some(first) = unanswered.first() {
                // The first is enough to say why; the rest are counted.
                let more = match unanswered.len() {
                    1 => String::new(),
                    n => format!(" (and {} more)", n - 1),
                };
                return Finding::Failed {
                    reason: format!("URI list {first}{more}"),
                };
            }
            Finding::Clean {
                note: format!("{} domains", keys.len()),
                headers: Vec::new(),
            }
        })
    }
}

#[cfg(test)]
mod tests;
