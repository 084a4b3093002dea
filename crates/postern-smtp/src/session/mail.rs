//! MAIL FROM (RFC 5321 §4.1.1.2) with SIZE (RFC 1870), BODY=8BITMIME
//! (RFC 6152), SMTPUTF8 (RFC 6531) and the DSN parameters RET/ENVID (RFC 3461).

use postern_core::config::ListenerRole;
use postern_core::envelope::DsnReturn;
use postern_core::principal::SCOPE_MAIL_SEND;
use postern_core::{Address, AddressError, BodyType, Envelope};
use postern_queue::IntakeError;
use smtp_proto::{
    MailFrom, MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_REQUIRETLS, MAIL_RET_FULL,
    MAIL_RET_HDRS, MAIL_SMTPUTF8,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Close, Session, Transaction};
use crate::reply::{common, Reply};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(crate) async fn mail(&mut self, from: MailFrom<String>) -> Result<(), Close> {
        if self.conn.helo.is_none() {
            return self.error(common::bad_sequence("send EHLO or HELO first"));
        }
        if self.txn.is_some() {
            return self.error(common::bad_sequence("nested MAIL command"));
        }
        if matches!(
            self.listener.role,
            ListenerRole::Submission | ListenerRole::Submissions
        ) {
            match &self.conn.principal {
                None => {
                    metrics::counter!("postern_smtp_rejected_total", "reason" => "auth_required")
                        .increment(1);
                    return self.error(Reply::new(530, (5, 7, 0), "Authentication required"));
                }
                Some(p) if !p.has_scope(SCOPE_MAIL_SEND) => {
                    metrics::counter!("postern_smtp_rejected_total", "reason" => "scope")
                        .increment(1);
                    return self.error(Reply::new(
                        550,
                        (5, 7, 1),
                        "This API key may not send mail (it lacks the mail.send scope)",
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some(p) = &self.conn.principal {
            let (account, account_id) = (p.account.clone(), p.account_id);
            match self.ctx.intake.quota_check(&account, account_id).await {
                Ok(()) => {}
                Err(IntakeError::QuotaExceeded { limit, retry_after }) => {
                    metrics::counter!("postern_smtp_rejected_total", "reason" => "quota")
                        .increment(1);
                    self.reply(Reply::new(
                        450,
                        (4, 7, 1),
                        format!(
                            "This account's limit of {limit} messages per hour is used up; try again in {} minutes",
                            retry_after.as_secs().div_ceil(60).max(1)
                        ),
                    ));
                    return Ok(());
                }
                Err(e) => {
                    tracing::error!(error = %e, "quota check failed");
                    self.reply(common::queue_unavailable());
                    return Ok(());
                }
            }
        }
        if !self.conn.esmtp && (from.flags != 0 || from.size != 0 || from.env_id.is_some()) {
            return self.error(Reply::new(555, (5, 5, 4), "Parameters need EHLO"));
        }
        if from.flags & (MAIL_BODY_BINARYMIME | MAIL_REQUIRETLS) != 0 {
            return self.error(Reply::new(555, (5, 5, 4), "Unsupported MAIL parameter"));
        }
        let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
        let mail_from = if from.address.is_empty() {
            String::new()
        } else {
            match Address::parse(&from.address, smtputf8) {
                Ok(a) => a.to_string(),
                Err(AddressError::NeedsSmtpUtf8) => {
                    // RFC 6531 §3.7.4.1
                    return self.error(Reply::new(
                        553,
                        (5, 6, 7),
                        "Non-ASCII sender needs SMTPUTF8",
                    ));
                }
                Err(e) => {
                    return self.error(Reply::new(
                        553,
                        (5, 1, 7),
                        format!("Bad sender address: {e}"),
                    ));
                }
            }
        };
        let max = self.ctx.config.limits.max_message_size;
        if from.size != 0 && from.size > max {
            // RFC 1870 §6.1
            metrics::counter!("postern_smtp_rejected_total", "reason" => "size").increment(1);
            self.reply(Reply::new(
                552,
                (5, 3, 4),
                format!("Message size exceeds fixed maximum message size of {max} octets"),
            ));
            return Ok(());
        }
        // The body will need memory from the shared budget: with none left,
        // the transaction is refused now, before the client sends the body
        // (RFC 5321 §4.2.2 452, RFC 3463 4.3.1 mail system full).
        let budget = self.ctx.intake.body_budget();
        // Counted against the account when authenticated (one tenant's
        // uploads never starve another's), else against the client's
        // network.
        let holder = match &self.conn.principal {
            Some(p) if p.account_id != 0 => postern_queue::Holder::Account(p.account_id),
            _ => postern_queue::Holder::network_of(self.peer.ip()),
        };
        if !budget.has_room(holder, if from.size != 0 { from.size } else { 1 }) {
            metrics::counter!("postern_smtp_rejected_total", "reason" => "memory_budget")
                .increment(1);
            self.reply(common::insufficient_storage());
            return Ok(());
        }
        let lease = budget.lease(holder);
        let ret = if from.flags & MAIL_RET_FULL != 0 {
            Some(DsnReturn::Full)
        } else if from.flags & MAIL_RET_HDRS != 0 {
            Some(DsnReturn::Headers)
        } else {
            None
        };
        self.txn = Some(Transaction {
            envelope: Envelope {
                mail_from,
                recipients: Vec::new(),
                body_type: if from.flags & MAIL_BODY_8BITMIME != 0 {
                    BodyType::EightBitMime
                } else {
                    BodyType::SevenBit
                },
                smtputf8,
                envid: from.env_id,
                ret,
                return_path: None,
            },
            body: Vec::new(),
            lease,
            failed: None,
            bare_scanner: Default::default(),
            used_bdat: false,
        });
        self.reply(Reply::new(250, (2, 1, 0), "Sender OK"));
        Ok(())
    }
}
