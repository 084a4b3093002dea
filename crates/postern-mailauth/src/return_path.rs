//! Bounces that come back to VERP return paths (`b-<id>-<tag>@pst-bounces.
//! example.com`, see postern_core::verp): the address names the message and,
//! through its tag, the recipient; the report (RFC 3464) says what happened.
//! A failure is recorded as a `bounce` event of the sending account with its
//! status and class, and a hard "no such user" bounce suppresses the address,
//! as a bounce during our own SMTP transaction would.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use postern_core::bounce::{self, BounceClass};
use postern_core::event::{AttemptInfo, EventKind};
use postern_core::verp::{self, Verp};
use postern_core::Event;
use postern_queue::BounceReceiver;
use postern_store::{DomainStore, EventFilter, EventStore, Suppression, SuppressionStore};

pub trait ReturnPathStore: DomainStore + EventStore + SuppressionStore {}
impl<T: DomainStore + EventStore + SuppressionStore> ReturnPathStore for T {}

pub struct ReturnPaths {
    store: Arc<dyn ReturnPathStore>,
    verp: Arc<Verp>,
}

/// One per-recipient group of a delivery-status report (RFC 3464 §2.3).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecipientReport {
    pub final_recipient: Option<String>,
    pub action: Option<String>,
    pub status: Option<String>,
    pub diagnostic: Option<String>,
}

/// Reads the per-recipient fields of a `message/delivery-status` body.
/// Written here because neither mail-parser nor mail-auth parses RFC 3464
/// reports; the format is header-like field groups separated by blank
/// lines, the first group being per-message (§2.2).
pub fn parse_delivery_status(text: &str) -> Vec<RecipientReport> {
    let mut groups: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if groups.last().is_some_and(|g| !g.is_empty()) {
                groups.push(Vec::new());
            }
            continue;
        }
        let group = groups.last_mut().expect("never empty");
        if line.starts_with([' ', '\t']) {
            // RFC 5322 §2.2.3 folding: a continuation of the last field.
            if let Some((_, v)) = group.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            group.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    groups
        .into_iter()
        .filter(|g| {
            g.iter()
                .any(|(n, _)| n == "final-recipient" || n == "action")
        })
        .map(|g| {
            let get = |name: &str| g.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
            // "rfc822; user@example.net" → the address.
            let address = |v: String| {
                v.split_once(';')
                    .map(|(_, a)| a.trim().to_owned())
                    .unwrap_or(v)
            };
            RecipientReport {
                final_recipient: get("final-recipient").map(address),
                action: get("action").map(|a| a.to_ascii_lowercase()),
                status: get("status").and_then(|s| s.split_whitespace().next().map(str::to_owned)),
                diagnostic: get("diagnostic-code").map(address),
            }
        })
        .collect()
}

/// The delivery-status part of a report, if the message is one.
pub fn delivery_report(message: &[u8]) -> Option<Vec<RecipientReport>> {
    use mail_parser::MimeHeaders;
    let parsed = mail_parser::MessageParser::default().parse(message)?;
    parsed.parts.iter().find_map(|part| {
        let ct = part.content_type()?;
        let is_status = ct.ctype().eq_ignore_ascii_case("message")
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("delivery-status"));
        is_status.then(|| parse_delivery_status(&String::from_utf8_lossy(part.contents())))
    })
}

impl ReturnPaths {
    pub fn new(store: Arc<dyn ReturnPathStore>, verp: Arc<Verp>) -> Self {
        ReturnPaths { store, verp }
    }

    /// `b-…@<label>.<domain>` where `<domain>` is a verified domain whose
    /// return-path label is `<label>`.
    async fn owns(&self, address: &str) -> bool {
        let Some((local, domain)) = address.rsplit_once('@') else {
            return false;
        };
        if verp::parse_local(local).is_none() {
            return false;
        }
        let domain = domain.to_ascii_lowercase();
        let Some((label, parent)) = domain.split_once('.') else {
            return false;
        };
        matches!(
            self.store.verified_domain(parent.to_owned()).await,
            Ok(Some(d)) if d.return_path == label && d.verified_at.is_some()
        )
    }

    /// A return path of ours whose tag names a recipient of the message it
    /// names: what RCPT accepts, so a forged or guessed return path is
    /// refused before the client may send a body.
    async fn valid(&self, address: &str) -> bool {
        if !self.owns(address).await {
            return false;
        }
        match self.sent_event(address).await {
            Ok(Some(_)) => true,
            Ok(None) => {
                metrics::counter!("postern_returned_bounces_total", "outcome" => "unknown")
                    .increment(1);
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "return-path check failed");
                false
            }
        }
    }

    /// The `processed` event of the recipient a return path's tag names.
    async fn sent_event(&self, address: &str) -> Result<Option<Event>, String> {
        let (local, _) = address.rsplit_once('@').ok_or("no domain")?;
        let parsed = verp::parse_local(local).ok_or("not a return-path address")?;
        let events = self
            .store
            .events(EventFilter {
                message_id: Some(parsed.message_id.clone()),
                kinds: vec![EventKind::Processed],
                ..Default::default()
            })
            .await
            .map_err(|e| format!("event lookup failed: {e}"))?;
        // The tag names the recipient among the message's own.
        Ok(events.into_iter().find(|e| {
            e.recipient
                .as_deref()
                .is_some_and(|r| self.verp.matches(&parsed, r))
        }))
    }

    async fn take(&self, address: &str, message: &[u8]) -> Result<(), String> {
        let (local, _) = address.rsplit_once('@').ok_or("no domain")?;
        let parsed = verp::parse_local(local).ok_or("not a return-path address")?;
        let Some(sent) = self.sent_event(address).await? else {
            metrics::counter!("postern_returned_bounces_total", "outcome" => "unknown")
                .increment(1);
            return Err("no such return path".into());
        };
        let recipient = sent.recipient.clone().unwrap_or_default();
        let Some(reports) = delivery_report(message) else {
            // An auto-reply or a report in no standard form: taken, not
            // recorded (nothing says the address failed).
            metrics::counter!("postern_returned_bounces_total", "outcome" => "not_a_report")
                .increment(1);
            tracing::info!(message = %parsed.message_id, %recipient, "mail to a return path that is not a delivery report");
            return Ok(());
        };
        let report = reports
            .iter()
            .find(|r| {
                r.final_recipient
                    .as_deref()
                    .is_some_and(|f| f.eq_ignore_ascii_case(&recipient))
            })
            .or(reports.first())
            .cloned()
            .unwrap_or_default();
        let failed = report.action.as_deref() == Some("failed")
            || report.status.as_deref().is_some_and(|s| s.starts_with('5'));
        if !failed {
            // "delayed", "delivered", "relayed", "expanded": nothing to record.
            metrics::counter!("postern_returned_bounces_total", "outcome" => "not_failed")
                .increment(1);
            return Ok(());
        }
        let status = report.status.clone().unwrap_or_else(|| "5.0.0".into());
        let diagnostic = report.diagnostic.clone().unwrap_or_default();
        let class = bounce::classify(&status, &diagnostic);
        metrics::counter!("postern_returned_bounces_total", "outcome" => "recorded").increment(1);
        metrics::counter!("postern_bounces_total", "class" => class.label(), "severity" => bounce::severity(&status)).increment(1);
        let now = postern_core::time::now_millis();
        self.store
            .append_event(Event {
                seq: 0,
                at_millis: now,
                message_id: parsed.message_id.clone(),
                kind: EventKind::Bounce,
                recipient: Some(recipient.clone()),
                detail: format!("reported after delivery (return path): {status} {diagnostic}"),
                account: sent.account.clone(),
                info: AttemptInfo {
                    status: Some(status.clone()),
                    classification: Some(class.label().to_owned()),
                    ..Default::default()
                },
            })
            .await
            .map_err(|e| format!("could not record the bounce: {e}"))?;
        if let (Some(account), "hard", BounceClass::InvalidAddress) =
            (&sent.account, bounce::severity(&status), class)
        {
            let entry = Suppression {
                address: recipient.clone(),
                status: status.clone(),
                reason: diagnostic,
                created_at: now,
            };
            if let Err(e) = self.store.suppress(account.clone(), entry).await {
                tracing::error!(error = %e, "could not record a suppression");
            }
        }
        tracing::info!(message = %parsed.message_id, %recipient, %status, class = class.label(), "bounce reported to the return path");
        Ok(())
    }
}

impl BounceReceiver for ReturnPaths {
    fn is_return_path<'a>(
        &'a self,
        address: &'a str,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(self.valid(address))
    }

    fn receive<'a>(
        &'a self,
        recipients: &'a [String],
        message: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            for r in recipients {
                self.take(r, message).await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_delivery_status_report() {
        let text = "Reporting-MTA: dns; mx.example.net\r\nArrival-Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n\
                    Final-Recipient: rfc822; alice@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n\
                    Diagnostic-Code: smtp; 550 5.1.1 <alice@example.net>:\r\n  user unknown\r\n";
        let r = parse_delivery_status(text);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].final_recipient.as_deref(), Some("alice@example.net"));
        assert_eq!(r[0].action.as_deref(), Some("failed"));
        assert_eq!(r[0].status.as_deref(), Some("5.1.1"));
        assert_eq!(
            r[0].diagnostic.as_deref(),
            Some("550 5.1.1 <alice@example.net>: user unknown")
        );
    }

    #[test]
    fn finds_the_report_in_a_multipart_message() {
        let msg = b"From: MAILER-DAEMON@mx.example.net\r\nTo: b-x@pst-bounces.example.org\r\n\
            Subject: Undelivered\r\nMIME-Version: 1.0\r\n\
            Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n\
            --B\r\nContent-Type: text/plain\r\n\r\nSorry.\r\n\
            --B\r\nContent-Type: message/delivery-status\r\n\r\n\
            Reporting-MTA: dns; mx.example.net\r\n\r\n\
            Final-Recipient: rfc822; bob@example.net\r\nAction: failed\r\nStatus: 5.2.2\r\n\r\n\
            --B--\r\n";
        let r = delivery_report(msg).expect("a report");
        assert_eq!(r[0].status.as_deref(), Some("5.2.2"));
        assert!(delivery_report(b"Subject: out of office\r\n\r\nback monday\r\n").is_none());
    }
}
