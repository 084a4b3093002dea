//! What the quarantine's doors share (the CLI, `/v3/quarantine`, the
//! server's retention task): its metrics, the expiry of old entries, and
//! the safe preview shown to whoever inspects a held message.
//!
//! Held messages are suspect by definition: a preview is text only, taken
//! from the text/plain part (an HTML-only message is shown as its source,
//! never rendered), with every control character made visible and its
//! length capped, so what a sender wrote can neither drive a terminal nor
//! forge lines of the output.

use std::sync::Arc;
use std::time::Duration;

use postern_core::printable::printable;
use postern_store::{AuditEntry, QuarantinedMessage, Store, StoreError};
use tokio::sync::watch;

/// Held messages right now (a gauge).
pub const HELD_GAUGE: &str = "postern_quarantine_held";
/// Recipients held, released, deleted and expired, by `action`.
pub const ACTIONS_COUNTER: &str = "postern_quarantine_total";

/// Sets the quarantine's metrics from the store, where every action is
/// counted in its own commit, whichever process took it (the server, or
/// the CLI from another process): the counter follows the store's count.
pub async fn refresh_metrics(store: &dyn Store) {
    match store.quarantine_stats().await {
        Ok(stats) => {
            metrics::gauge!(HELD_GAUGE).set(stats.held as f64);
            for (action, n) in stats.actions {
                metrics::counter!(ACTIONS_COUNTER, "action" => action).absolute(n);
            }
        }
        Err(e) => tracing::warn!(error = %e, "quarantine: cannot read its counts"),
    }
}

/// How often expired entries are looked for: a hundredth of the retention
/// (an entry outlives it by at most that much), between one second and
/// ten seconds (the metrics are refreshed on the same tick, so what the
/// CLI did shows within that).
pub fn sweep_interval(retention: Duration) -> Duration {
    (retention / 100).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// The audit actor of expiries: the server itself.
pub const EXPIRY_ACTOR: &str = "server:quarantine-retention";

/// Deletes every entry held longer than `retention` (a `dropped` event per
/// recipient, in the same commit), then audits and counts each. Returns
/// how many messages expired.
pub async fn expire(store: &dyn Store, retention: Duration, now: i64) -> Result<usize, StoreError> {
    let held_before = now.saturating_sub(retention.as_millis() as i64);
    let reason = format!(
        "expired from quarantine after {}",
        postern_core::duration::format(retention)
    );
    let mut total = 0;
    loop {
        let expired = store
            .expire_quarantined(held_before, now, reason.clone())
            .await?;
        for m in &expired {
            audit_expiry(store, m, now).await;
        }
        total += expired.len();
        // The store deletes in bounded batches; a short one was the last.
        if expired.len() < 500 {
            return Ok(total);
        }
    }
}

/// One audit entry per account whose recipients expired (the operator's
/// recipients under no account), so each tenant's audit log has its own.
async fn audit_expiry(store: &dyn Store, m: &QuarantinedMessage, now: i64) {
    for account in m.accounts() {
        let recipients: Vec<&str> = m
            .recipients
            .iter()
            .filter(|r| r.account == account)
            .map(|r| r.address.as_str())
            .collect();
        let entry = AuditEntry {
            at: now,
            kind: "quarantine.expire".into(),
            actor: EXPIRY_ACTOR.into(),
            account,
            client_ip: None,
            detail: format!(
                "message={} recipients={} held={} reason={}",
                m.id,
                recipients.join(","),
                postern_core::time::rfc3339(m.held_at),
                m.reason
            ),
        };
        if let Err(e) = store.append_audit(entry).await {
            tracing::error!(error = %e, message = %m.id, "quarantine: audit of an expiry failed");
        }
    }
}

/// The server's retention task: expires entries and refreshes the
/// metrics every `sweep_interval(retention)` until shutdown.
pub async fn run_retention(
    store: Arc<dyn Store>,
    retention: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(sweep_interval(retention));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = postern_core::time::now_millis();
        match expire(store.as_ref(), retention, now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(messages = n, "quarantine: expired entries deleted"),
            Err(e) => tracing::warn!(error = %e, "quarantine: expiry failed"),
        }
        refresh_metrics(store.as_ref()).await;
    }
}

/// Most characters of text shown in a preview.
pub const PREVIEW_CHARS: usize = 4000;
/// Most header fields shown, and most characters of each value.
const PREVIEW_HEADERS: usize = 100;
const HEADER_VALUE_CHARS: usize = 998;

/// What an operator or tenant sees of a held message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    /// (name, value) of the top-level header fields, unfolded, every
    /// control character escaped.
    pub headers: Vec<(String, String)>,
    /// Where `text` came from: `text/plain`, `text/html (source, not
    /// rendered)`, or `none`.
    pub source: &'static str,
    /// The text, one line per line of the part, each line's control
    /// characters escaped; at most `PREVIEW_CHARS` characters.
    pub text: String,
    /// The text was longer than the preview.
    pub truncated: bool,
}

impl Preview {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "headers": self.headers.iter().map(|(n, v)| serde_json::json!({"name": n, "value": v})).collect::<Vec<_>>(),
            "text_source": self.source,
            "text": self.text,
            "truncated": self.truncated,
        })
    }
}

/// Builds the preview of a stored message (`raw`: trace header and all).
pub fn preview(raw: &[u8]) -> Preview {
    let Some(message) = mail_parser::MessageParser::default().parse(raw) else {
        return Preview {
            headers: Vec::new(),
            source: "none",
            text: String::new(),
            truncated: false,
        };
    };
    let headers = message
        .headers_raw()
        .take(PREVIEW_HEADERS)
        .map(|(name, value)| {
            // RFC 5322 §2.2.3: unfolding removes the CRLF before folding
            // whitespace; what is left is one logical line (its folding
            // tabs shown as spaces, other controls escaped below).
            let unfolded = value
                .replace("\r\n", "")
                .replace('\n', "")
                .replace('\t', " ");
            let value: String = unfolded.trim().chars().take(HEADER_VALUE_CHARS).collect();
            (printable(name), printable(&value))
        })
        .collect();
    let text_part = message
        .text_body
        .iter()
        .find_map(|&id| match &message.part(id)?.body {
            mail_parser::PartType::Text(t) => Some(t.as_ref()),
            _ => None,
        });
    let html_part = message
        .html_body
        .iter()
        .find_map(|&id| match &message.part(id)?.body {
            mail_parser::PartType::Html(t) => Some(t.as_ref()),
            _ => None,
        });
    let (source, body) = match (text_part, html_part) {
        (Some(t), _) => ("text/plain", t),
        (None, Some(h)) => ("text/html (source, not rendered)", h),
        (None, None) => ("none", ""),
    };
    let (text, truncated) = safe_text(body, PREVIEW_CHARS);
    Preview {
        headers,
        source,
        text,
        truncated,
    }
}

/// The first `max` characters of `s`, line by line with each line's
/// control characters (CR, ESC, C1, bidirectional overrides...) escaped,
/// lines joined with a plain LF.
fn safe_text(s: &str, max: usize) -> (String, bool) {
    let mut out = String::new();
    let mut taken = 0;
    let mut truncated = false;
    for (i, line) in s.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let room = max.saturating_sub(taken);
        let count = line.chars().count();
        if i > 0 {
            out.push('\n');
        }
        if count > room {
            let part: String = line.chars().take(room).collect();
            out.push_str(&printable(&part));
            truncated = true;
            break;
        }
        out.push_str(&printable(line));
        taken += count;
    }
    (out, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preview_is_the_text_part_with_controls_escaped() {
        let raw = b"Received: from x\r\n\tby y; Mon, 1 Jan 2024 00:00:00 +0000\r\n\
Subject: =?utf-8?q?hi?= \x1b[31mred\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/alternative; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nline one\r\nbell\x07 and \x1b[2Jclear \xe2\x80\xaeevil\r\n\
--b\r\nContent-Type: text/html\r\n\r\n<script>alert(1)</script>\r\n--b--\r\n";
        let p = preview(raw);
        assert_eq!(p.source, "text/plain");
        assert_eq!(
            p.text, "line one\nbell\\x07 and \\x1b[2Jclear \\u{202e}evil",
            "{p:?}"
        );
        assert!(!p.text.contains("script"));
        assert!(!p.truncated);
        let subject = p.headers.iter().find(|(n, _)| n == "Subject").unwrap();
        assert_eq!(subject.1, "=?utf-8?q?hi?= \\x1b[31mred");
        // The folded trace header is one logical line.
        let received = p.headers.iter().find(|(n, _)| n == "Received").unwrap();
        assert_eq!(received.1, "from x by y; Mon, 1 Jan 2024 00:00:00 +0000");
    }

    #[test]
    fn html_only_is_shown_as_its_source_and_long_text_is_cut() {
        let raw = b"Content-Type: text/html\r\n\r\n<b>bold</b>\r\n";
        let p = preview(raw);
        assert_eq!(p.source, "text/html (source, not rendered)");
        assert!(p.text.starts_with("<b>bold</b>"), "{p:?}");

        let long = format!("Subject: x\r\n\r\n{}\r\n", "a".repeat(PREVIEW_CHARS + 50));
        let p = preview(long.as_bytes());
        assert!(p.truncated);
        assert_eq!(p.text.chars().count(), PREVIEW_CHARS);
    }

    #[test]
    fn the_sweep_follows_the_retention_within_bounds() {
        assert_eq!(
            sweep_interval(Duration::from_secs(30 * 86_400)),
            Duration::from_secs(10)
        );
        assert_eq!(
            sweep_interval(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        assert_eq!(
            sweep_interval(Duration::from_secs(500)),
            Duration::from_secs(5)
        );
    }
}
