//! MTA-STS (RFC 8461): a receiving domain publishes, over DNS and HTTPS,
//! that its MX hosts take mail only over TLS with valid certificates.
//!
//! Discovery: a TXT record at `_mta-sts.<domain>` (`v=STSv1; id=…`); the
//! policy itself from `https://mta-sts.<domain>/.well-known/mta-sts.txt`
//! with a certificate valid for that name. Policies are cached for their
//! `max_age`, refetched when the TXT id changes, and kept when the TXT
//! record disappears (§5.1: an attacker who strips DNS must not strip the
//! policy too).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use postern_store::TlsPolicyStore;

use crate::mx::MxResolver;

/// RFC 8461 §3.2: policies larger than 64 KiB are not read.
const MAX_POLICY_BYTES: usize = 64 * 1024;
/// RFC 8461 §3.2: max_age is at most 31557600 seconds (a year).
const MAX_AGE_CAP: u64 = 31_557_600;
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub id: String,
    pub mode: Mode,
    /// MX patterns: a host name, or `*.example.com` for one label below it.
    pub mx: Vec<String>,
    pub max_age: Duration,
}

impl Policy {
    /// Parses a policy body (RFC 8461 §3.2): `key: value` lines.
    pub fn parse(id: &str, text: &str) -> Result<Policy, String> {
        let mut version = None;
        let mut mode = None;
        let mut mx = Vec::new();
        let mut max_age = None;
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key.trim() {
                "version" => version = Some(value.to_owned()),
                "mode" => {
                    mode = Some(match value {
                        "enforce" => Mode::Enforce,
                        "testing" => Mode::Testing,
                        "none" => Mode::None,
                        other => return Err(format!("unknown mode {other:?}")),
                    })
                }
                "mx" => mx.push(value.trim_end_matches('.').to_ascii_lowercase()),
                "max_age" => {
                    max_age = Some(
                        value
                            .parse::<u64>()
                            .map_err(|_| format!("max_age {value:?} is not a number"))?
                            .min(MAX_AGE_CAP),
                    )
                }
                _ => {} // §3.2: unknown fields are ignored
            }
        }
        if version.as_deref() != Some("STSv1") {
            return Err("version is not STSv1".into());
        }
        let mode = mode.ok_or("no mode")?;
        let max_age = max_age.ok_or("no max_age")?;
        if mode != Mode::None && mx.is_empty() {
            return Err("no mx patterns".into());
        }
        Ok(Policy {
            id: id.to_owned(),
            mode,
            mx,
            max_age: Duration::from_secs(max_age),
        })
    }

    /// RFC 8461 §4.1: an MX host matches a pattern exactly, or a `*.`
    /// pattern covers exactly one leftmost label.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            None => *p == host,
        })
    }
}

/// The id of an `_mta-sts` TXT record (RFC 8461 §3.1), when exactly one
/// record starts with `v=STSv1`.
pub fn txt_id(records: &[String]) -> Option<String> {
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| r.starts_with("v=STSv1"))
        .collect();
    if sts.len() != 1 {
        return None;
    }
    // RFC 8461 §3.1: id = 1*32(ALPHA / DIGIT); anything else is no record.
    sts[0].split(';').find_map(|field| {
        let (k, v) = field.trim().split_once('=')?;
        let v = v.trim();
        (k.trim() == "id"
            && (1..=32).contains(&v.len())
            && v.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| v.to_owned())
    })
}

struct Cached {
    policy: Policy,
    expires: Instant,
}

pub struct MtaSts {
    resolver: Arc<MxResolver>,
    tls: Arc<ClientConfig>,
    /// 443 in service; tests point it at a server on loopback.
    port: u16,
    cache: Mutex<HashMap<String, Cached>>,
    /// Where policies outlive the process (None: memory only).
    store: Option<Arc<dyn TlsPolicyStore>>,
}

impl MtaSts {
    pub fn new(
        resolver: Arc<MxResolver>,
        tls: Arc<ClientConfig>,
        port: u16,
        store: Option<Arc<dyn TlsPolicyStore>>,
    ) -> Self {
        MtaSts {
            resolver,
            tls,
            port,
            cache: Mutex::new(HashMap::new()),
            store,
        }
    }

    /// The unexpired policy held for a domain: in memory, else in the store
    /// (a policy fetched before a restart still binds).
    async fn cached(&self, domain: &str) -> Option<Policy> {
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cache.get(domain).filter(|c| c.expires > Instant::now()) {
                return Some(c.policy.clone());
            }
        }
        let store = self.store.as_ref()?;
        let now = postern_core::time::now_millis();
        let (id, text, expires_at) = match store.mta_sts_policy(domain.to_owned(), now).await {
            Ok(found) => found?,
            Err(e) => {
                tracing::warn!(%domain, error = %e, "could not read the stored MTA-STS policy");
                return None;
            }
        };
        let policy = Policy::parse(&id, &text).ok()?;
        let left = Duration::from_millis((expires_at - now).max(0) as u64);
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(
            domain.to_owned(),
            Cached {
                policy: policy.clone(),
                expires: Instant::now() + left,
            },
        );
        Some(policy)
    }

    /// The domain's policy in force, if any.
    pub async fn policy(&self, domain: &str) -> Option<Policy> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let cached = self.cached(&domain).await;
        let id = match self.resolver.txt(&format!("_mta-sts.{domain}")).await {
            Ok(records) => txt_id(&records),
            Err(e) => {
                tracing::info!(%domain, error = %e, "MTA-STS TXT lookup failed; using the cached policy if any");
                return cached;
            }
        };
        let Some(id) = id else {
            // §5.1: no record does not end a cached policy.
            return cached;
        };
        if let Some(p) = cached.as_ref().filter(|p| p.id == id) {
            return Some(p.clone());
        }
        match self.fetch(&domain, &id).await {
            Ok((policy, text)) => {
                metrics::counter!("postern_mta_sts_fetch_total", "result" => "ok").increment(1);
                tracing::info!(%domain, %id, mode = ?policy.mode, "MTA-STS policy fetched");
                self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(
                    domain.clone(),
                    Cached {
                        policy: policy.clone(),
                        expires: Instant::now() + policy.max_age,
                    },
                );
                if let Some(store) = &self.store {
                    let expires_at =
                        postern_core::time::now_millis() + policy.max_age.as_millis() as i64;
                    if let Err(e) = store
                        .put_mta_sts_policy(domain.clone(), id.clone(), text, expires_at)
                        .await
                    {
                        tracing::warn!(%domain, error = %e, "could not store the MTA-STS policy");
                    }
                }
                Some(policy)
            }
            Err(e) => {
                metrics::counter!("postern_mta_sts_fetch_total", "result" => "failed").increment(1);
                tracing::warn!(%domain, error = %e, "MTA-STS policy fetch failed; using the cached policy if any");
                cached
            }
        }
    }

    /// GET https://mta-sts.<domain>/.well-known/mta-sts.txt with a
    /// certificate valid for that name, no redirects (§3.3).
    async fn fetch(&self, domain: &str, id: &str) -> Result<(Policy, String), String> {
        let host = format!("mta-sts.{domain}");
        let ips = self
            .resolver
            .addresses(&host)
            .await
            .map_err(|o| o.detail().to_owned())?;
        let ip = *ips
            .first()
            .ok_or_else(|| format!("{host} has no address"))?;
        let text = tokio::time::timeout(
            FETCH_TIMEOUT,
            self.get(&host, SocketAddr::new(ip, self.port)),
        )
        .await
        .map_err(|_| format!("{host}: timed out"))??;
        let policy = Policy::parse(id, &text).map_err(|e| format!("{host}: bad policy: {e}"))?;
        Ok((policy, text))
    }

    async fn get(&self, host: &str, addr: SocketAddr) -> Result<String, String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("{host} [{addr}]: {e}"))?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("{host}: {e}"))?;
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("{host}: TLS: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("{host}: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = http::Request::get("/.well-known/mta-sts.txt")
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "Postern MTA-STS")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("{host}: {e}"))?;
        // §3.3: only 200 counts; redirects are not followed.
        if response.status() != http::StatusCode::OK {
            return Err(format!("{host}: HTTP {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_POLICY_BYTES)
            .collect()
            .await
            .map_err(|e| format!("{host}: {e}"))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| format!("{host}: policy is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_policies() {
        let p = Policy::parse(
            "20261123",
            "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.net\r\nmx: *.mail.example.net\r\nmax_age: 86400\r\nextra: ignored\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, Duration::from_secs(86400));
        assert!(p.allows("mx1.example.net"));
        assert!(p.allows("MX1.example.net."));
        assert!(p.allows("a.mail.example.net"));
        assert!(!p.allows("a.b.mail.example.net"), "one label only");
        assert!(!p.allows("mail.example.net"));
        assert!(!p.allows("mx2.example.net"));
        let capped = Policy::parse(
            "x",
            "version: STSv1\nmode: testing\nmx: a.b\nmax_age: 99999999999\n",
        )
        .unwrap();
        assert_eq!(capped.max_age, Duration::from_secs(MAX_AGE_CAP));
        for bad in [
            "mode: enforce\nmx: a\nmax_age: 1\n",
            "version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmx: a\n",
        ] {
            assert!(Policy::parse("x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn finds_the_txt_id() {
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(txt_id(&r(&["v=STSv1; id=2026a;"])), Some("2026a".into()));
        assert_eq!(
            txt_id(&r(&["v=spf1 -all", "v=STSv1;id=7"])),
            Some("7".into())
        );
        assert_eq!(
            txt_id(&r(&["v=STSv1; id=1", "v=STSv1; id=2"])),
            None,
            "two records: none"
        );
        assert_eq!(txt_id(&r(&["v=STSv1;"])), None);
        assert_eq!(txt_id(&r(&["v=STSv1; id=a-b"])), None, "id is alphanumeric");
        assert_eq!(
            txt_id(&r(&[&format!("v=STSv1; id={}", "9".repeat(33))])),
            None
        );
        assert_eq!(txt_id(&r(&[])), None);
    }
}
