//! RCPT TO (RFC 5321 §4.1.1.3) with NOTIFY/ORCPT (RFC 3461), the relay rule
//! for `mx` listeners, and the slow-down for clients that guess addresses.

use std::time::Duration;

use postern_core::config::ListenerRole;
use postern_core::{Address, AddressError, Recipient};
use smtp_proto::{
    RcptTo, RCPT_NOTIFY_DELAY, RCPT_NOTIFY_FAILURE, RCPT_NOTIFY_NEVER, RCPT_NOTIFY_SUCCESS,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Close, Session};
use crate::recipients::RecipientVerdict;
use crate::reply::{common, Reply};

/// Longest pause before answering a refused recipient.
const MAX_REFUSAL_DELAY: Duration = Duration::from_secs(5);

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(crate) async fn rcpt(&mut self, to: RcptTo<String>) -> Result<(), Close> {
        let Some(txn) = &self.txn else {
            return self.error(common::bad_sequence("need MAIL before RCPT"));
        };
        if txn.envelope.recipients.len() >= self.ctx.config.limits.max_recipients {
            // RFC 5321 §4.5.3.1.10: 452 for too many recipients.
            self.reply(Reply::new(452, (4, 5, 3), "Too many recipients"));
            return Ok(());
        }
        let address = match Address::parse(&to.address, txn.envelope.smtputf8) {
            Ok(a) => a,
            Err(AddressError::NeedsSmtpUtf8) => {
                return self
                    .refuse_recipient(
                        &to.address,
                        Reply::new(553, (5, 6, 7), "Non-ASCII recipient needs SMTPUTF8"),
                        "syntax",
                    )
                    .await;
            }
            Err(e) => {
                return self
                    .refuse_recipient(
                        &to.address,
                        Reply::new(553, (5, 1, 3), format!("Bad recipient address: {e}")),
                        "syntax",
                    )
                    .await;
            }
        };
        if self.listener.role == ListenerRole::Mx && self.conn.principal.is_none() {
            // Never an open relay (the security rules): unauthenticated mail only for
            // relay domains, and never with routing tricks in the local part.
            let local = self.ctx.relay_domains.contains(address.domain());
            // Report addresses are Postern's own mailboxes: taken whether
            // or not the next hop knows them.
            let report = self.ctx.intake.is_report_address(&address.to_string());
            let relay =
                local || report || self.ctx.intake.is_return_path(&address.to_string()).await;
            if !relay || address.check_no_routing().is_err() {
                tracing::info!(peer = %self.peer, rcpt = %to.address, "relay denied");
                return self
                    .refuse_recipient(
                        &to.address,
                        Reply::new(550, (5, 7, 1), "Relaying denied"),
                        "relay_denied",
                    )
                    .await;
            }
            if local && !report {
                // Only recipients that exist: a later refusal would bounce
                // to a sender that may be forged (backscatter).
                match self.ctx.recipients.verify(&address.to_string()).await {
                    RecipientVerdict::Accept => {}
                    RecipientVerdict::Refuse(why) => {
                        tracing::info!(peer = %self.peer, rcpt = %to.address, reason = %why, "unknown recipient");
                        return self
                            .refuse_recipient(
                                &to.address,
                                // RFC 3463 5.1.1: bad destination mailbox.
                                Reply::new(550, (5, 1, 1), "No such recipient here"),
                                "unknown_recipient",
                            )
                            .await;
                    }
                    RecipientVerdict::TryLater(why) => {
                        tracing::info!(peer = %self.peer, rcpt = %to.address, reason = %why, "recipient check unavailable");
                        metrics::counter!("postern_smtp_rejected_total", "reason" => "recipient_check_unavailable").increment(1);
                        // RFC 3463 4.4.3: directory server failure.
                        let reply = Reply::new(
                            451,
                            (4, 4, 3),
                            "Cannot check this recipient now; try again later",
                        );
                        self.record_refusal(Some(to.address.clone()), &reply).await;
                        self.reply(reply);
                        return Ok(());
                    }
                }
            }
        }
        let Some(txn) = &mut self.txn else {
            return Ok(());
        };
        let text = address.to_string();
        if !txn.envelope.recipients.iter().any(|r| r.address == text) {
            txn.envelope.recipients.push(Recipient {
                address: text,
                domain: address.domain().to_owned(),
                notify: notify_keywords(to.flags),
                orcpt: to.orcpt,
            });
        }
        self.reply(Reply::new(250, (2, 1, 5), "Recipient OK"));
        Ok(())
    }

    /// Refused recipients past `max_refused_recipients` are answered ever
    /// more slowly, and past twice that the connection is closed: a client
    /// guessing addresses (directory harvest) or probing for a relay gets
    /// little for its time.
    async fn refuse_recipient(
        &mut self,
        recipient: &str,
        reply: Reply,
        reason: &'static str,
    ) -> Result<(), Close> {
        metrics::counter!("postern_smtp_rejected_total", "reason" => reason).increment(1);
        self.record_refusal(Some(recipient.to_owned()), &reply)
            .await;
        self.conn.refused_recipients += 1;
        let max = self.ctx.config.limits.max_refused_recipients;
        let n = self.conn.refused_recipients;
        if n > max.saturating_mul(2) {
            self.reply(reply);
            self.reply(Reply::new(
                421,
                (4, 7, 0),
                "Too many refused recipients, closing connection",
            ));
            return Err(Close::Policy("too many refused recipients"));
        }
        if n > max {
            let delay = Duration::from_secs((n - max) as u64).min(MAX_REFUSAL_DELAY);
            self.flush_quietly().await;
            tokio::time::sleep(delay).await;
        }
        self.reply(reply);
        Ok(())
    }
}

fn notify_keywords(flags: u64) -> Vec<String> {
    let mut v = Vec::new();
    for (bit, word) in [
        (RCPT_NOTIFY_NEVER, "NEVER"),
        (RCPT_NOTIFY_SUCCESS, "SUCCESS"),
        (RCPT_NOTIFY_FAILURE, "FAILURE"),
        (RCPT_NOTIFY_DELAY, "DELAY"),
    ] {
        if flags & bit != 0 {
            v.push(word.to_owned());
        }
    }
    v
}
