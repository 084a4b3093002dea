//! Spam scoring by rspamd (`[content.rspamd]`) over its HTTP protocol:
//! the message is POSTed to `/checkv2` with what the SMTP session knows
//! of it in request headers (rspamd's protocol: `IP`, `Helo`, `From`,
//! one `Rcpt` per recipient, `MTA-Name`, the TLS version and cipher), and
//! the JSON reply's score and symbols go on the message. Postern's own
//! thresholds (per relay domain) decide what is done, not the action
//! rspamd suggests: the operator sets them in one place.
//!
//! Header fields written, on every scanned message (a score under the
//! threshold is worth having too):
//!
//! ```text
//! X-Spam-Score: 7.50
//! X-Spam-Status: Yes, score=7.50 action=tag
//! X-Spam-Symbols: POSTERN_TEST_SCORE(7.50), MIME_GOOD(-0.10)
//! ```
//!
//! `X-Spam-Status` says `Yes` when the score reached a threshold (tag or
//! stricter) for the message's domains. Copies of these and of the other
//! spam verdict fields filters act on (`X-Spam-Flag`, `X-Spam-Level`,
//! `X-Spam`, `X-Spamd-Result`, `X-Spamd-Bar`, `X-Rspamd-Score`) that
//! arrive with the message are removed first: a sender could otherwise
//! mark its own mail clean for the internal server.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use postern_core::config::{ContentConfig, InboundAction, RspamdConfig};
use serde::Deserialize;

use crate::{Check, Finding, Inspected, SetupError};

/// The fields this check writes, and the spam verdicts of other filters
/// that downstream rules act on: all removed from arriving mail.
pub const OWNED_FIELDS: &[&str] = &[
    "X-Spam-Score",
    "X-Spam-Status",
    "X-Spam-Symbols",
    "X-Spam-Flag",
    "X-Spam-Level",
    "X-Spam",
    "X-Spamd-Result",
    "X-Spamd-Bar",
    "X-Rspamd-Score",
];

/// A reply larger than this is not rspamd's (it runs to a few KiB with
/// every symbol and its options).
const MAX_REPLY: usize = 1 << 20;

/// Symbols listed in `X-Spam-Symbols` at most (the highest scores first).
const MAX_SYMBOLS: usize = 50;

pub struct Rspamd {
    config: ContentConfig,
    rspamd: RspamdConfig,
    endpoint: http::Uri,
    hostname: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// The parts of rspamd's `/checkv2` reply Postern uses.
#[derive(Debug, Deserialize)]
struct Reply {
    score: f64,
    #[serde(default)]
    is_skipped: bool,
    #[serde(default)]
    symbols: BTreeMap<String, Symbol>,
}

#[derive(Debug, Deserialize)]
struct Symbol {
    #[serde(default)]
    score: f64,
}

impl Rspamd {
    /// None when `config` has no `[content.rspamd]`.
    pub fn new(config: &ContentConfig, hostname: &str) -> Result<Option<Self>, SetupError> {
        let Some(rspamd) = &config.rspamd else {
            return Ok(None);
        };
        let endpoint: http::Uri = format!("{}/checkv2", rspamd.url.trim_end_matches('/'))
            .parse()
            .map_err(|e: http::uri::InvalidUri| SetupError::RspamdUrl(e.to_string()))?;
        if endpoint.host().is_none() {
            return Err(SetupError::RspamdUrl(format!("{}: no host", rspamd.url)));
        }
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(rspamd.timeout));
        http.set_nodelay(true);
        // A new connection per message: on loopback it costs little, and a
        // kept one that rspamd closed while idle would fail the next scan
        // (a deferred message) in the race between its close and our send.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(http);
        Ok(Some(Rspamd {
            config: config.clone(),
            rspamd: rspamd.clone(),
            endpoint,
            hostname: hostname.to_owned(),
            client,
        }))
    }

    /// The request: the message and what the session knows of it.
    fn request(&self, m: &Inspected<'_>) -> Result<http::Request<Full<Bytes>>, String> {
        let mut fields: Vec<(&str, &str)> = Vec::new();
        let ip = m.client.ip.to_canonical().to_string();
        fields.push(("IP", &ip));
        if !m.client.helo.is_empty() {
            fields.push(("Helo", &m.client.helo));
        }
        // The null reverse-path (bounces) is sent as no From: rspamd then
        // checks SPF on the HELO name, as RFC 7208 §2.4 says to.
        if !m.envelope.mail_from.is_empty() {
            fields.push(("From", &m.envelope.mail_from));
        }
        for r in &m.envelope.recipients {
            fields.push(("Rcpt", &r.address));
        }
        // The authserv-id of the results rspamd may write, and its logs.
        fields.push(("MTA-Name", &self.hostname));
        if let Some((version, cipher)) = m.client.tls.as_deref().and_then(|t| t.split_once(' ')) {
            fields.push(("TLS-Version", version));
            fields.push(("TLS-Cipher", cipher));
        }
        // Every rule runs even past rspamd's own reject score: Postern's
        // thresholds decide, and may lie above it.
        fields.push(("Pass", "all"));
        if let Some(p) = &self.rspamd.password {
            fields.push(("Password", p));
        }
        let mut request = http::Request::post(self.endpoint.clone());
        for (name, value) in fields {
            // A value with a control character (a HELO argument is the
            // client's to choose) is no valid header: left out.
            if let Ok(v) = http::HeaderValue::from_str(value) {
                request = request.header(name, v);
            }
        }
        request
            .body(Full::new(Bytes::copy_from_slice(m.raw)))
            .map_err(|e| format!("request: {e}"))
    }

    async fn scan(&self, m: &Inspected<'_>) -> Result<Reply, String> {
        let request = self.request(m)?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| describe_client_error(&e))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_REPLY)
            .collect()
            .await
            .map_err(|e| format!("reading the reply: {e}"))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(format!("HTTP {status}: {}", printable(&text)));
        }
        let reply: Reply =
            serde_json::from_slice(&body).map_err(|e| format!("reply not understood: {e}"))?;
        if !reply.score.is_finite() {
            return Err("reply not understood: the score is not a number".into());
        }
        if reply.is_skipped {
            // rspamd passes over a message above its own size limit or one
            // a settings rule exempts, with a score of 0: not a verdict,
            // so not "clean" either.
            return Err("rspamd skipped the message (its size limit or a settings rule)".into());
        }
        Ok(reply)
    }

    fn finding(&self, m: &Inspected<'_>, reply: &Reply) -> Finding {
        let score = reply.score;
        let action = self.config.spam_action(m.domains(), score);
        let headers = spam_headers(reply, action);
        match action {
            InboundAction::Accept => Finding::Clean {
                note: format!("score={score:.2}"),
                headers,
            },
            _ => Finding::Found {
                action,
                reason: format!("spam score {score:.2}"),
                headers,
            },
        }
    }
}

/// The error's cause chain in one line ("connection refused"), which
/// hyper's own Display leaves out.
fn describe_client_error(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Control characters made spaces: the text goes in logs and replies.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `X-Spam-Score`, `X-Spam-Status` and `X-Spam-Symbols`, CRLF-terminated,
/// folded (RFC 5322 §2.2.3) to stay under 78 characters a line.
fn spam_headers(reply: &Reply, action: InboundAction) -> Vec<u8> {
    let score = reply.score;
    let flag = if action >= InboundAction::Tag {
        "Yes"
    } else {
        "No"
    };
    let mut out = format!(
        "X-Spam-Score: {score:.2}\r\nX-Spam-Status: {flag}, score={score:.2} action={}\r\n",
        action.as_str(),
    );
    let mut symbols: Vec<(&String, f64)> =
        reply.symbols.iter().map(|(n, s)| (n, s.score)).collect();
    // The weightiest first, so a cut loses the least telling ones.
    symbols.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then(a.0.cmp(b.0)));
    let items: Vec<String> = symbols
        .iter()
        .take(MAX_SYMBOLS)
        .map(|(name, s)| {
            // rspamd's symbol names are upper-case words; anything else
            // in one must not reach the header.
            let name: String = name
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .take(64)
                .collect();
            format!("{name}({s:.2})")
        })
        .collect();
    if !items.is_empty() {
        let mut line = String::from("X-Spam-Symbols:");
        let mut first = true;
        for item in items {
            let piece = if first {
                format!(" {item}")
            } else {
                format!(", {item}")
            };
            // Fold before a piece that would pass 78 characters.
            if !first && line.len() + piece.len() > 78 {
                line.push_str(",\r\n");
                out.push_str(&line);
                line = format!("\t{item}");
            } else {
                line.push_str(&piece);
            }
            first = false;
        }
        out.push_str(&line);
        out.push_str("\r\n");
    }
    out.into_bytes()
}

impl Check for Rspamd {
    fn name(&self) -> &'static str {
        "spam"
    }

    fn owned_fields(&self) -> &'static [&'static str] {
        OWNED_FIELDS
    }

    fn run<'a>(
        &'a self,
        message: &'a Inspected<'a>,
    ) -> Pin<Box<dyn Future<Output = Finding> + Send + 'a>> {
        Box::pin(async move {
            let started = Instant::now();
            let outcome = tokio::time::timeout(self.rspamd.timeout, self.scan(message)).await;
            metrics::histogram!("postern_spam_scan_seconds")
                .record(started.elapsed().as_secs_f64());
            match outcome {
                Ok(Ok(reply)) => {
                    metrics::histogram!("postern_spam_score").record(reply.score);
                    self.finding(message, &reply)
                }
                Ok(Err(e)) => {
                    metrics::counter!("postern_spam_scan_failures_total", "reason" => "error")
                        .increment(1);
                    tracing::warn!(error = %e, url = %self.rspamd.url, "rspamd scan failed");
                    Finding::Failed {
                        reason: format!("rspamd: {e}"),
                    }
                }
                Err(_) => {
                    metrics::counter!("postern_spam_scan_failures_total", "reason" => "timeout")
                        .increment(1);
                    tracing::warn!(timeout = ?self.rspamd.timeout, url = %self.rspamd.url, "rspamd scan timed out");
                    Finding::Failed {
                        reason: format!("rspamd: no answer within {}", secs(self.rspamd.timeout)),
                    }
                }
            }
        })
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests;
