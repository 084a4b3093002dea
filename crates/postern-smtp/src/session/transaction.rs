//! The end of a transaction: RSET (RFC 5321 §4.1.1.5), and handing a finished
//! message to intake.

use postern_core::config::BareLineEndings;
use postern_queue::{ClientInfo, Submission};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::Session;
use crate::body::normalize_line_endings;
use crate::reply::{common, Reply};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(crate) fn rset(&mut self) {
        self.txn = None;
        self.reply(Reply::new(250, (2, 0, 0), "Reset OK"));
    }

    /// RFC 3848 protocol keyword for the `Received:` header.
    fn protocol(&self) -> &'static str {
        match (
            self.conn.esmtp,
            self.tls.is_some(),
            self.conn.principal.is_some(),
        ) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        }
    }

    /// Checks the complete body and queues it; answers 250 only once intake
    /// says the message is durable.
    pub(crate) async fn finish_body(&mut self, body: Vec<u8>, had_bare_line_endings: bool) {
        let Some(txn) = self.txn.take() else {
            return;
        };
        if body.contains(&0) {
            metrics::counter!("postern_smtp_rejected_total", "reason" => "nul_byte").increment(1);
            self.reply(Reply::new(
                554,
                (5, 6, 0),
                "Message contains NUL bytes; refused",
            ));
            return;
        }
        let body = if had_bare_line_endings
            && self.ctx.config.smtp.bare_line_endings == BareLineEndings::Normalize
        {
            // The original goes as soon as the copy exists: shadowing would
            // keep both alive for the rest of the transaction.
            let normalized = normalize_line_endings(&body);
            drop(body);
            normalized
        } else {
            body
        };
        let mut envelope = txn.envelope;
        if self.conn.principal.is_none() {
            // Bounces to VERP return paths are recorded, not queued.
            match self.ctx.intake.take_returned(&mut envelope, &body).await {
                Ok(0) => {}
                Ok(n) if envelope.recipients.is_empty() => {
                    tracing::info!(peer = %self.peer, returned = n, "report to a return path taken");
                    self.reply(Reply::new(250, (2, 0, 0), "OK, report received"));
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    metrics::counter!("postern_smtp_rejected_total", "reason" => "bounce")
                        .increment(1);
                    tracing::info!(peer = %self.peer, reason = %e, "bounce refused");
                    // RFC 3463 5.1.1: no such (return-path) mailbox.
                    self.reply(Reply::new(550, (5, 1, 1), e.to_string()));
                    return;
                }
            }
        }
        if self.conn.principal.is_none() {
            // Reports to the [reports] addresses are parsed and stored,
            // and (unless forwarded) not queued.
            match self.ctx.intake.take_reports(&mut envelope, &body).await {
                Ok(n) if n > 0 && envelope.recipients.is_empty() => {
                    tracing::info!(peer = %self.peer, "report taken");
                    self.reply(Reply::new(250, (2, 0, 0), "OK, report received"));
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    metrics::counter!("postern_smtp_rejected_total", "reason" => "report")
                        .increment(1);
                    tracing::info!(peer = %self.peer, reason = %e, "report refused");
                    // RFC 3463 5.6.0: a media (content) error; permanent,
                    // since the same report will not parse next time
                    // either, and the reporter learns why.
                    self.reply(Reply::new(554, (5, 6, 0), e.to_string()));
                    return;
                }
            }
        }
        let nrcpt = envelope.recipients.len();
        let submission = Submission {
            envelope,
            principal: self.conn.principal.clone(),
            client: ClientInfo {
                ip: self.peer.ip(),
                helo: self.conn.helo.clone().unwrap_or_default(),
                protocol: self.protocol(),
                tls: self.tls.clone(),
            },
            body,
        };
        // Replies queued so far go out now: the client should not wait for
        // the fsync to learn about earlier pipelined commands.
        self.flush_quietly().await;
        match self.ctx.intake.submit(submission).await {
            Ok(id) => {
                tracing::info!(peer = %self.peer, id = %id, nrcpt, "message queued");
                self.reply(Reply::new(250, (2, 0, 0), format!("OK queued as {id}")));
            }
            Err(postern_queue::IntakeError::SenderRefused(reason)) => {
                metrics::counter!("postern_smtp_rejected_total", "reason" => "sender").increment(1);
                tracing::info!(peer = %self.peer, %reason, "sender refused");
                // RFC 3463 5.7.1: delivery not authorized, message refused.
                self.reply(Reply::new(550, (5, 7, 1), reason));
            }
            Err(postern_queue::IntakeError::InboundRefused(reason)) => {
                metrics::counter!("postern_smtp_rejected_total", "reason" => "authentication")
                    .increment(1);
                tracing::info!(peer = %self.peer, %reason, "inbound message refused");
                // RFC 7489 §6.7 (DMARC p=reject) and RFC 3463 5.7.1:
                // delivery not authorized, message refused.
                self.reply(Reply::new(550, (5, 7, 1), reason));
            }
            Err(postern_queue::IntakeError::InboundDeferred(reason)) => {
                metrics::counter!("postern_smtp_rejected_total", "reason" => "check_unavailable")
                    .increment(1);
                tracing::warn!(peer = %self.peer, %reason, "inbound message deferred");
                // RFC 5321 §4.2.5: after the final dot a 4yz reply means the
                // client keeps the message; RFC 3463 4.3.0: a mail system
                // problem here, not one of the message's.
                let reply = Reply::new(
                    451,
                    (4, 3, 0),
                    format!("Message not checked ({reason}); try again later"),
                );
                self.record_refusal(None, &reply).await;
                self.reply(reply);
            }
            Err(postern_queue::IntakeError::QuotaExceeded { limit, .. }) => {
                metrics::counter!("postern_smtp_rejected_total", "reason" => "quota").increment(1);
                self.reply(Reply::new(
                    450,
                    (4, 7, 1),
                    format!("This account's limit of {limit} messages per hour is used up; try again later"),
                ));
            }
            Err(e) => {
                tracing::error!(peer = %self.peer, error = %e, "intake failed");
                metrics::counter!("postern_smtp_rejected_total", "reason" => "queue_error")
                    .increment(1);
                self.reply(common::queue_unavailable());
            }
        }
    }

    /// Flushes pending replies, ignoring errors (the next read will see them).
    pub(crate) async fn flush_quietly(&mut self) {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            let _ = self.stream.write_all(&out).await;
            let _ = self.stream.flush().await;
        }
    }
}
