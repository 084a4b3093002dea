//! Intake: adds the trace header and writes message and envelope durably.
//! The SMTP session calls `submit` after DATA; the HTTP API will call the
//! same function. Neither door writes to the queue any other way.

use std::net::IpAddr;
use std::sync::Arc;

use postern_core::{Envelope, MessageId, Principal};
use postern_store::{HeldMessage, NewMessage, QueueStore, StoreError};
use thiserror::Error;
use tokio::sync::Notify;

use crate::body_budget::BodyBudget;
use crate::quota::{QuotaCheck, Quotas, Reserve};
use crate::refusals::RefusalLog;

#[derive(Debug, Error)]
pub enum IntakeError {
    #[error("message has no recipients")]
    NoRecipients,
    #[error("queue unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("sender not allowed: {0}")]
    SenderRefused(String),
    #[error("bounce not accepted: {0}")]
    BounceRefused(String),
    #[error("report not accepted: {0}")]
    ReportRefused(String),
    /// Unauthenticated mail that failed SPF/DKIM/DMARC where the policy
    /// says reject; the reason is given to the client.
    #[error("message refused: {0}")]
    InboundRefused(String),
    /// Unauthenticated mail that could not be checked now (a scanner did
    /// not answer and `content.on_error = "defer"`): nothing is queued and
    /// the client is told to try again later.
    #[error("message not checked: {0}")]
    InboundDeferred(String),
    #[error("the account's limit of {limit} messages per hour is used up")]
    QuotaExceeded {
        limit: u32,
        retry_after: std::time::Duration,
    },
}

/// Where a message came from, for the `Received:` header and the event log.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub ip: IpAddr,
    /// The EHLO/HELO argument as given.
    pub helo: String,
    /// RFC 3848 protocol keyword: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA, HTTP…
    pub protocol: &'static str,
    /// TLS version and cipher suite, when the session was encrypted.
    pub tls: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Submission {
    pub envelope: Envelope,
    pub principal: Option<Principal>,
    pub client: ClientInfo,
    pub body: Vec<u8>,
}

/// What the sender authority decided for an accepted message.
#[derive(Debug, Clone, Default)]
pub struct Authorized {
    /// `DKIM-Signature` header fields to put in front of the message
    /// (empty: sent unsigned).
    pub dkim_headers: Vec<u8>,
    /// The verified return-path domain to rewrite the envelope sender
    /// into (VERP, per recipient, at delivery).
    pub return_path: Option<String>,
}

/// Decides whether an authenticated account may send a message as the
/// sender it names (envelope and header From), and signs what it may send.
/// Implemented by postern-mailauth; one call per message, so the message
/// is parsed once for both. Err carries the reason given to the client.
pub trait SenderAuthority: Send + Sync {
    fn authorize<'a>(
        &'a self,
        account: &'a str,
        mail_from: &'a str,
        message: &'a [u8],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Authorized, String>> + Send + 'a>>;
}

/// What the inbound authenticator found for a message that came in without
/// AUTH (on an `mx` listener).
#[derive(Debug, Clone, Default)]
pub struct InboundVerdict {
    /// Header fields to put in front of the message: Authentication-Results
    /// (RFC 8601), and X-Postern-Verdict when the message is tagged.
    pub headers: Vec<u8>,
    /// Some(reason): refused (`550 5.7.1` with the reason), nothing queued.
    pub refused: Option<String>,
    /// Some(reason): held in the quarantine with `headers` in front, not
    /// queued; the client is told 250 (the message is accepted, and kept).
    pub quarantined: Option<String>,
    /// Some(reason): could not be checked now; answered with a 4xx so the
    /// client tries again, nothing queued (a check that fails open would
    /// let through exactly the mail it is there to stop).
    pub deferred: Option<String>,
    /// The results and the action, for the message's `processed` event.
    pub summary: String,
}

impl InboundVerdict {
    /// Adds what a later check found: its header fields go below ours,
    /// its reasons count only where ours left none (the first check to
    /// refuse, defer or quarantine gives the reason), the summaries join.
    pub fn merge(&mut self, later: InboundVerdict) {
        self.headers.extend_from_slice(&later.headers);
        self.refused = self.refused.take().or(later.refused);
        self.deferred = self.deferred.take().or(later.deferred);
        self.quarantined = self.quarantined.take().or(later.quarantined);
        if !later.summary.is_empty() {
            if !self.summary.is_empty() {
                self.summary.push(' ');
            }
            self.summary.push_str(&later.summary);
        }
    }
}

/// Verifies unauthenticated mail (SPF, DKIM, DMARC, ARC) and decides what
/// is done with it. Implemented by postern-mailauth. `message` is the body
/// as received; the authenticator verifies it first, then removes in place
/// any header fields only this server may write (an Authentication-Results
/// claiming our authserv-id, RFC 8601 §5), so no second copy is made.
pub trait InboundAuthenticator: Send + Sync {
    fn authenticate<'a>(
        &'a self,
        client: &'a ClientInfo,
        envelope: &'a Envelope,
        message: &'a mut Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = InboundVerdict> + Send + 'a>>;
}

/// Inspects the content of unauthenticated mail once it is authenticated:
/// viruses, spam, listed URLs, refused attachments. Implemented by
/// postern-content, which parses the message once for all its checks and
/// runs them side by side. `message` is the body as received, with forged
/// Authentication-Results already removed; the inspector removes in place
/// any copy of the header fields it writes itself (a sender could
/// otherwise arrive pre-marked clean). Its verdict is merged with the
/// authenticator's (`InboundVerdict::merge`); a refusal wins over a
/// deferral, which wins over the quarantine.
pub trait ContentInspector: Send + Sync {
    fn inspect<'a>(
        &'a self,
        client: &'a ClientInfo,
        envelope: &'a Envelope,
        message: &'a mut Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = InboundVerdict> + Send + 'a>>;
}

/// Takes bounces that come back to VERP return paths (postern-mailauth
/// implements it): unauthenticated mail to those addresses is consumed
/// here, recorded as events, never queued.
pub trait BounceReceiver: Send + Sync {
    /// Whether `address` is a return-path address of this server.
    fn is_return_path<'a>(
        &'a self,
        address: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>;
    /// Processes a message for return-path recipients; Err: the reason it
    /// is refused.
    fn receive<'a>(
        &'a self,
        recipients: &'a [String],
        message: &'a [u8],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;
}

/// Takes DMARC aggregate and TLS-RPT reports sent to the `[reports]`
/// addresses (postern-mailauth implements it): unauthenticated mail to
/// those addresses is parsed and stored here, and by default not queued.
pub trait ReportReceiver: Send + Sync {
    /// Whether `address` receives reports.
    fn is_report_address(&self, address: &str) -> bool;
    /// Whether report mail also goes on to the next hop (queued as usual).
    fn forwards(&self) -> bool;
    /// Parses and stores the report sent to `recipients`; Err: why it is
    /// refused.
    fn receive<'a>(
        &'a self,
        recipients: &'a [String],
        message: &'a [u8],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;
}

#[derive(Clone)]
pub struct Intake {
    store: Arc<dyn QueueStore>,
    hostname: String,
    wakeup: Arc<Notify>,
    quotas: Option<Quotas>,
    senders: Option<Arc<dyn SenderAuthority>>,
    bounces: Option<Arc<dyn BounceReceiver>>,
    reports: Option<Arc<dyn ReportReceiver>>,
    inbound: Option<Arc<dyn InboundAuthenticator>>,
    content: Option<Arc<dyn ContentInspector>>,
    refusals: Arc<RefusalLog>,
    budget: BodyBudget,
}

impl Intake {
    pub fn new(store: Arc<dyn QueueStore>, hostname: String) -> Self {
        Intake {
            refusals: Arc::new(RefusalLog::new(store.clone())),
            store,
            hostname,
            wakeup: Arc::new(Notify::new()),
            quotas: None,
            senders: None,
            bounces: None,
            reports: None,
            inbound: None,
            content: None,
            // Unbounded until the node sets `limits.body_memory_budget`.
            budget: BodyBudget::new(usize::MAX / 2, usize::MAX / 2),
        }
    }

    /// The memory budget every door's message bodies are leased from.
    pub fn with_body_budget(mut self, budget: BodyBudget) -> Self {
        self.budget = budget;
        self
    }

    pub fn body_budget(&self) -> &BodyBudget {
        &self.budget
    }

    /// Checks and signs authenticated accounts' mail: refuses senders the
    /// account has not verified (when the authority enforces), DKIM-signs
    /// for its verified domains.
    pub fn with_sender_authority(mut self, authority: Arc<dyn SenderAuthority>) -> Self {
        self.senders = Some(authority);
        self
    }

    /// Verifies mail that arrives without AUTH (`mx` listeners) and
    /// enforces what the results call for.
    pub fn with_inbound_authenticator(mut self, inbound: Arc<dyn InboundAuthenticator>) -> Self {
        self.inbound = Some(inbound);
        self
    }

    /// Records what an `mx` listener turned away before accepting a
    /// message, as a `refused` event of `session` (rate-bounded: see
    /// `refusals`). `detail` is the reply the client was given.
    pub async fn record_refusal(
        &self,
        session: &MessageId,
        client: IpAddr,
        recipient: Option<String>,
        detail: &str,
    ) {
        self.refusals
            .record(session, client, recipient, detail)
            .await;
    }

    /// Inspects the content of unauthenticated mail (after the
    /// authenticator, on what it let through).
    pub fn with_content_inspector(mut self, content: Arc<dyn ContentInspector>) -> Self {
        self.content = Some(content);
        self
    }

    /// Consumes bounces sent to VERP return paths.
    pub fn with_bounce_receiver(mut self, receiver: Arc<dyn BounceReceiver>) -> Self {
        self.bounces = Some(receiver);
        self
    }

    /// Takes DMARC and TLS-RPT reports sent to the `[reports]` addresses.
    pub fn with_report_receiver(mut self, receiver: Arc<dyn ReportReceiver>) -> Self {
        self.reports = Some(receiver);
        self
    }

    /// Whether `address` receives reports (its mail is accepted on `mx`
    /// listeners, and taken by the report receiver).
    pub fn is_report_address(&self, address: &str) -> bool {
        self.reports
            .as_ref()
            .is_some_and(|r| r.is_report_address(address))
    }

    /// Hands an unauthenticated message to the report receiver when any
    /// recipient is a report address. Those recipients are taken out of
    /// `envelope` unless the receiver forwards (then they are queued for
    /// the next hop too). Returns how many were taken out; Err: the report
    /// was refused (nothing is stored or queued).
    pub async fn take_reports(
        &self,
        envelope: &mut Envelope,
        body: &[u8],
    ) -> Result<usize, IntakeError> {
        let Some(receiver) = &self.reports else {
            return Ok(0);
        };
        let addressed: Vec<String> = envelope
            .recipients
            .iter()
            .filter(|r| receiver.is_report_address(&r.address))
            .map(|r| r.address.clone())
            .collect();
        if addressed.is_empty() {
            return Ok(0);
        }
        receiver
            .receive(&addressed, body)
            .await
            .map_err(IntakeError::ReportRefused)?;
        if receiver.forwards() {
            return Ok(0);
        }
        envelope
            .recipients
            .retain(|r| !receiver.is_report_address(&r.address));
        Ok(addressed.len())
    }

    /// Whether `address` is one of this server's return paths (its mail is
    /// accepted on `mx` listeners without a relay domain).
    pub async fn is_return_path(&self, address: &str) -> bool {
        match &self.bounces {
            Some(b) => b.is_return_path(address).await,
            None => false,
        }
    }

    /// Takes the recipients of an unauthenticated message that are return
    /// paths out of `envelope` and hands the message to the bounce
    /// receiver for them (recorded, never queued). Returns how many were
    /// taken; the rest, if any, go to `submit`.
    pub async fn take_returned(
        &self,
        envelope: &mut Envelope,
        body: &[u8],
    ) -> Result<usize, IntakeError> {
        let Some(receiver) = &self.bounces else {
            return Ok(0);
        };
        let mut returned = Vec::new();
        let mut rest = Vec::new();
        for r in std::mem::take(&mut envelope.recipients) {
            if receiver.is_return_path(&r.address).await {
                returned.push(r.address);
            } else {
                rest.push(r);
            }
        }
        envelope.recipients = rest;
        if !returned.is_empty() {
            receiver
                .receive(&returned, body)
                .await
                .map_err(IntakeError::BounceRefused)?;
        }
        Ok(returned.len())
    }

    /// Enforces each account's own sending limit.
    pub fn with_quotas(mut self, quotas: Quotas) -> Self {
        self.quotas = Some(quotas);
        self
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Queues a message Postern generated itself (a DSN): null reverse-path
    /// (RFC 5321 §4.5.5, so it can never bounce in turn), one recipient.
    pub async fn submit_generated(
        &self,
        to: &str,
        body: Vec<u8>,
        detail: String,
    ) -> Result<MessageId, IntakeError> {
        let domain = to
            .rsplit_once('@')
            .map(|(_, d)| d.to_lowercase())
            .unwrap_or_default();
        let id = MessageId::generate();
        let now = postern_core::time::now_millis();
        // RFC 5321 §4.4: a locally generated message carries only "by".
        let received = format!(
            "Received: by {} (Postern) id {id};\r\n\t{}\r\n",
            self.hostname,
            postern_core::time::rfc5322_date(now)
        );
        let mut full = received.into_bytes();
        full.extend_from_slice(&body);
        self.store
            .enqueue(NewMessage {
                account_id: None,
                head: Vec::new(),
                id: id.clone(),
                received_at: now,
                envelope: Envelope {
                    mail_from: String::new(),
                    recipients: vec![postern_core::Recipient {
                        address: to.to_owned(),
                        domain,
                        notify: vec![],
                        orcpt: None,
                    }],
                    ..Default::default()
                },
                account: None,
                body: full,
                detail,
                dropped: Vec::new(),
            })
            .await?;
        metrics::counter!("postern_messages_queued_total", "protocol" => "DSN").increment(1);
        self.wakeup.notify_one();
        Ok(id)
    }

    /// Whether `account` may send one more message now; doors call this
    /// early (SMTP at MAIL) so a client learns before it sends the body.
    pub async fn quota_check(&self, account: &str, account_id: i64) -> Result<(), IntakeError> {
        match &self.quotas {
            Some(q) => match q.check(account, account_id, 1).await? {
                QuotaCheck::Allowed => Ok(()),
                QuotaCheck::Exceeded { limit, retry_after } => {
                    metrics::counter!("postern_quota_exceeded_total").increment(1);
                    Err(IntakeError::QuotaExceeded { limit, retry_after })
                }
            },
            None => Ok(()),
        }
    }

    /// Signalled whenever a message is queued; the scheduler waits on it.
    pub fn wakeup(&self) -> Arc<Notify> {
        self.wakeup.clone()
    }

    /// Queues a message. Returns only once it is durable: the caller may
    /// acknowledge it to the client.
    pub async fn submit(&self, mut sub: Submission) -> Result<MessageId, IntakeError> {
        if sub.principal.is_none() && self.bounces.is_some() {
            // Unauthenticated doors hand return-path recipients to
            // `take_returned` first; none may be queued.
            for r in &sub.envelope.recipients {
                if self.is_return_path(&r.address).await {
                    return Err(IntakeError::BounceRefused(
                        "return-path recipients are not queued".into(),
                    ));
                }
            }
        }
        if sub.envelope.recipients.is_empty() {
            return Err(IntakeError::NoRecipients);
        }
        // Counted now, atomically with the check; given back if the message
        // is not queued after all (dropped on any early return below).
        let reservation = match (&self.quotas, &sub.principal) {
            (Some(q), Some(p)) => match q.reserve(&p.account, p.account_id, 1).await? {
                Reserve::Granted(r) => Some(r),
                Reserve::Exceeded { limit, retry_after } => {
                    metrics::counter!("postern_quota_exceeded_total").increment(1);
                    return Err(IntakeError::QuotaExceeded { limit, retry_after });
                }
            },
            _ => None,
        };
        let id = MessageId::generate();
        let now = postern_core::time::now_millis();
        // Only `mx` listeners take mail without AUTH (submission listeners
        // and the HTTP API always have a principal): that is inbound mail.
        let mut verdict = InboundVerdict::default();
        if sub.principal.is_none() {
            if let Some(inbound) = &self.inbound {
                verdict = inbound
                    .authenticate(&sub.client, &sub.envelope, &mut sub.body)
                    .await;
            }
            // Mail refused for its sender is not worth a scan.
            if let (Some(content), None) = (&self.content, &verdict.refused) {
                let found = content
                    .inspect(&sub.client, &sub.envelope, &mut sub.body)
                    .await;
                verdict.merge(found);
            }
            if let (None, Some(reason)) = (&verdict.refused, verdict.deferred.take()) {
                // Neither queued nor recorded: the client keeps the message
                // and brings it back.
                metrics::counter!("postern_inbound_deferred_total").increment(1);
                return Err(IntakeError::InboundDeferred(reason));
            }
            if let Some(reason) = verdict.refused.take() {
                // Recorded like refused senders' mail (processed, then
                // dropped for every recipient with the reason); nothing
                // is queued.
                let dropped = (0..sub.envelope.recipients.len())
                    .map(|i| (i, format!("dropped: {reason}")))
                    .collect();
                self.store
                    .enqueue(NewMessage {
                        account_id: None,
                        head: Vec::new(),
                        id,
                        received_at: now,
                        detail: format!(
                            "from=<{}> client={} refused: {reason} {}",
                            sub.envelope.mail_from, sub.client.ip, verdict.summary
                        ),
                        envelope: sub.envelope,
                        account: None,
                        body: Vec::new(),
                        dropped,
                    })
                    .await?;
                return Err(IntakeError::InboundRefused(reason));
            }
            if let Some(reason) = verdict.quarantined.take() {
                let summary = std::mem::take(&mut verdict.summary);
                let headers = std::mem::take(&mut verdict.headers);
                return self
                    .hold_with(sub, format!("{reason} ({summary})"), headers)
                    .await;
            }
        }
        let mut signature = Vec::new();
        if let (Some(authority), Some(p)) = (&self.senders, &sub.principal) {
            match authority
                .authorize(&p.account, &sub.envelope.mail_from, &sub.body)
                .await
            {
                Ok(authorized) => {
                    signature = authorized.dkim_headers;
                    sub.envelope.return_path = authorized.return_path;
                }
                Err(reason) => {
                    metrics::counter!("postern_sender_refused_total").increment(1);
                    // Recorded like any message (processed, then dropped for
                    // every recipient with the reason), so the account sees it
                    // in its send log; nothing is queued.
                    let dropped = (0..sub.envelope.recipients.len())
                        .map(|i| (i, format!("dropped: {reason}")))
                        .collect();
                    self.store
                        .enqueue(NewMessage {
                            account_id: (p.account_id != 0).then_some(p.account_id),
                            head: Vec::new(),
                            id,
                            received_at: now,
                            detail: format!(
                                "from=<{}> refused: {reason} account={} key={}",
                                sub.envelope.mail_from, p.account, p.key_id
                            ),
                            envelope: sub.envelope,
                            account: Some(p.account.clone()),
                            body: Vec::new(),
                            dropped,
                        })
                        .await?;
                    return Err(IntakeError::SenderRefused(reason));
                }
            }
        }
        let received = self.received_header(&sub, &id, now);
        // The headers go in front of the body in the store, not by copying
        // the body here: a second copy of every large message would double
        // what the memory budget lets the doors hold.
        // RFC 8601 §4.1: Authentication-Results is prepended, as trace
        // fields are: at the top, above those already there.
        let mut head = Vec::with_capacity(verdict.headers.len() + received.len() + signature.len());
        head.extend_from_slice(&verdict.headers);
        head.extend_from_slice(received.as_bytes());
        head.extend_from_slice(&signature);
        let size = head.len() + sub.body.len();
        let detail = format!(
            "from=<{}> size={} nrcpt={} client={} proto={}{}{}{}",
            sub.envelope.mail_from,
            size,
            sub.envelope.recipients.len(),
            sub.client.ip,
            sub.client.protocol,
            sub.principal
                .as_ref()
                .map(|p| format!(" account={} key={}", p.account, p.key_id))
                .unwrap_or_default(),
            if verdict.summary.is_empty() { "" } else { " " },
            verdict.summary,
        );
        let account_id = sub
            .principal
            .as_ref()
            .and_then(|p| (p.account_id != 0).then_some(p.account_id));
        let queued = self
            .store
            .enqueue(NewMessage {
                account_id,
                head,
                id: id.clone(),
                received_at: now,
                envelope: sub.envelope,
                account: sub.principal.map(|p| p.account),
                body: sub.body,
                detail,
                dropped: Vec::new(),
            })
            .await;
        match queued {
            Ok(()) => {}
            // The account this session authenticated as is gone (its name
            // may belong to another account by now): refused for good.
            Err(StoreError::NotFound) if account_id.is_some() => {
                return Err(IntakeError::SenderRefused(
                    "the account this session authenticated as no longer exists".into(),
                ))
            }
            Err(e) => return Err(e.into()),
        }
        if let Some(r) = reservation {
            r.commit();
        }
        metrics::counter!("postern_messages_queued_total", "protocol" => sub.client.protocol)
            .increment(1);
        metrics::histogram!("postern_message_size_bytes").record(size as f64);
        self.wakeup.notify_one();
        Ok(id)
    }

    /// Holds an inbound message in quarantine instead of queueing it (a
    /// check found it doubtful: DMARC `p=quarantine`, a virus, spam), with
    /// the reason, the client and the trace header `submit` would add.
    /// Returns only once it is durable, as `submit` does: the caller may
    /// then say 250, since accepting a message takes responsibility for it
    /// (RFC 5321 §4.1.1.4, §6.1) and held mail is kept until released,
    /// deleted or expired. Each recipient gets a `quarantined` event with
    /// the reason. Inbound only: mail from an authenticated account is
    /// refused here (the quarantine's release queues mail as relay mail).
    pub async fn hold(&self, sub: Submission, reason: String) -> Result<MessageId, IntakeError> {
        self.hold_with(sub, reason, Vec::new()).await
    }

    /// `hold`, with header fields (the inbound checks' results) in front of
    /// the trace field, as `submit` puts them on queued mail.
    async fn hold_with(
        &self,
        sub: Submission,
        reason: String,
        headers: Vec<u8>,
    ) -> Result<MessageId, IntakeError> {
        if sub.principal.is_some() {
            return Err(IntakeError::SenderRefused(
                "the quarantine holds inbound mail only (received without authentication)".into(),
            ));
        }
        if sub.envelope.recipients.is_empty() {
            return Err(IntakeError::NoRecipients);
        }
        // As in `submit`: return-path recipients go to `take_returned`.
        for r in &sub.envelope.recipients {
            if self.is_return_path(&r.address).await {
                return Err(IntakeError::BounceRefused(
                    "return-path recipients are not held".into(),
                ));
            }
        }
        let id = MessageId::generate();
        let now = postern_core::time::now_millis();
        let mut head = headers;
        head.extend_from_slice(self.received_header(&sub, &id, now).as_bytes());
        self.store
            .hold(HeldMessage {
                id: id.clone(),
                held_at: now,
                client_ip: Some(sub.client.ip.to_string()),
                helo: Some(sub.client.helo),
                reason,
                head,
                body: sub.body,
                envelope: sub.envelope,
            })
            .await?;
        Ok(id)
    }

    /// RFC 5321 §4.4 trace information, with the RFC 3848 protocol keyword.
    /// The HELO name is peer-controlled: anything but printable ASCII is
    /// replaced so the header cannot be broken or folded by it.
    fn received_header(&self, sub: &Submission, id: &MessageId, now: i64) -> String {
        let helo: String = sub
            .client
            .helo
            .chars()
            .take(255)
            .map(|c| {
                if c.is_ascii_graphic() && c != '(' && c != ')' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        let tls = sub
            .client
            .tls
            .as_ref()
            .map(|t| format!("\r\n\t(using {t})"))
            .unwrap_or_default();
        format!(
            "Received: from {helo} ([{ip}])\r\n\tby {host} (Postern) with {proto} id {id}{tls};\r\n\t{date}\r\n",
            ip = sub.client.ip,
            host = self.hostname,
            proto = sub.client.protocol,
            date = postern_core::time::rfc5322_date(now),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_core::Recipient;
    use postern_store::{EmbeddedStore, EventStore, QuarantineStore};

    #[tokio::test]
    async fn submit_prepends_trace_header_and_queues_durably() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let intake = Intake::new(store.clone(), "relay.example".into());
        let sub = Submission {
            envelope: Envelope {
                mail_from: "a@example.org".into(),
                recipients: vec![Recipient {
                    address: "b@example.net".into(),
                    domain: "example.net".into(),
                    notify: vec![],
                    orcpt: None,
                }],
                ..Default::default()
            },
            principal: None,
            client: ClientInfo {
                ip: "127.0.0.1".parse().unwrap(),
                helo: "evil\r\nX-Injected: yes (x)".into(),
                protocol: "ESMTPS",
                tls: Some("TLSv1.3 TLS13_AES_256_GCM_SHA384".into()),
            },
            body: b"Subject: hi\r\n\r\nbody\r\n".to_vec(),
        };
        let id = intake.submit(sub).await.unwrap();
        let jobs = store.claim_due(i64::MAX / 2, 10, 1000).await.unwrap();
        assert_eq!(jobs.len(), 1);
        let body = String::from_utf8(jobs[0].body.to_vec()).unwrap();
        assert!(
            body.starts_with("Received: from evil??X-Injected:?yes??x? ([127.0.0.1])\r\n"),
            "{body}"
        );
        assert!(body.contains(&format!("with ESMTPS id {id}")));
        assert!(body.ends_with("\r\nSubject: hi\r\n\r\nbody\r\n"));
        // Every header line of the trace is CRLF-terminated, with no bare LF.
        assert!(!body.replace("\r\n", "").contains('\n'));
    }

    fn inbound(rcpts: &[&str]) -> Submission {
        Submission {
            envelope: Envelope {
                mail_from: "ceo@forged.example".into(),
                recipients: rcpts
                    .iter()
                    .map(|a| Recipient {
                        address: (*a).into(),
                        domain: a.rsplit_once('@').unwrap().1.into(),
                        notify: vec![],
                        orcpt: None,
                    })
                    .collect(),
                ..Default::default()
            },
            principal: None,
            client: ClientInfo {
                ip: "192.0.2.77".parse().unwrap(),
                helo: "mx.forged.example".into(),
                protocol: "ESMTP",
                tls: None,
            },
            body: b"Subject: wire transfer\r\n\r\nurgent\r\n".to_vec(),
        }
    }

    #[tokio::test]
    async fn hold_keeps_the_message_with_its_trace_and_reason_and_queues_nothing() {
        use postern_store::{EventFilter, EventStore, QuarantineFilter, QuarantineStore};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let intake = Intake::new(store.clone(), "gw.example".into());
        let id = intake
            .hold(inbound(&["ap@corp.example"]), "DMARC p=quarantine".into())
            .await
            .unwrap();
        assert!(store
            .claim_due(i64::MAX / 2, 10, 1000)
            .await
            .unwrap()
            .is_empty());
        let all = QuarantineFilter::default();
        let m = store
            .quarantined_message(id.to_string(), all.clone())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.reason, "DMARC p=quarantine");
        assert_eq!(m.client_ip.as_deref(), Some("192.0.2.77"));
        assert_eq!(m.helo.as_deref(), Some("mx.forged.example"));
        assert_eq!(m.mail_from, "ceo@forged.example");
        let body = store
            .quarantined_body(id.to_string(), all)
            .await
            .unwrap()
            .unwrap();
        let body = String::from_utf8(body).unwrap();
        assert!(
            body.starts_with("Received: from mx.forged.example ([192.0.2.77])\r\n\tby gw.example (Postern) with ESMTP id "),
            "{body}"
        );
        assert!(body.ends_with("\r\nSubject: wire transfer\r\n\r\nurgent\r\n"));
        let events = store
            .events(EventFilter {
                message_id: Some(id.to_string()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, postern_core::EventKind::Quarantined);
        assert!(events[0]
            .detail
            .starts_with("DMARC p=quarantine from=<ceo@forged.example>"));
    }

    #[tokio::test]
    async fn hold_refuses_authenticated_mail_and_no_recipients() {
        use postern_store::{QuarantineFilter, QuarantineStore};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let intake = Intake::new(store.clone(), "gw.example".into());
        assert!(matches!(
            intake.hold(inbound(&[]), "r".into()).await,
            Err(IntakeError::NoRecipients)
        ));
        let mut sub = inbound(&["ap@corp.example"]);
        sub.principal = Some(Principal {
            account: "acme".into(),
            account_id: 1,
            key_id: "k".into(),
            scopes: vec![],
        });
        assert!(matches!(
            intake.hold(sub, "r".into()).await,
            Err(IntakeError::SenderRefused(_))
        ));
        assert!(store
            .quarantined(QuarantineFilter::default())
            .await
            .unwrap()
            .is_empty());
    }

    /// Stands in for postern-mailauth's checks: removes a header in place,
    /// as the real one removes forged results, and refuses or tags.
    struct FakeInbound {
        refuse: bool,
    }

    impl InboundAuthenticator for FakeInbound {
        fn authenticate<'a>(
            &'a self,
            _client: &'a ClientInfo,
            _envelope: &'a Envelope,
            message: &'a mut Vec<u8>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = InboundVerdict> + Send + 'a>>
        {
            Box::pin(async move {
                message.drain(..b"X-Forged: 1\r\n".len());
                InboundVerdict {
                    quarantined: None,
                    headers: b"Authentication-Results: relay.example; spf=fail\r\nX-Postern-Verdict: tag\r\n".to_vec(),
                    refused: self.refuse.then(|| "DMARC says no".to_owned()),
                    deferred: None,
                    summary: "auth: spf=fail action=tag".into(),
                }
            })
        }
    }

    fn inbound_with_body(body: &[u8]) -> Submission {
        Submission {
            envelope: Envelope {
                mail_from: "a@example.org".into(),
                recipients: vec![Recipient {
                    address: "b@relay.example".into(),
                    domain: "relay.example".into(),
                    notify: vec![],
                    orcpt: None,
                }],
                ..Default::default()
            },
            principal: None,
            client: ClientInfo {
                ip: "127.0.0.1".parse().unwrap(),
                helo: "mta.example.org".into(),
                protocol: "ESMTP",
                tls: None,
            },
            body: body.to_vec(),
        }
    }

    /// Stands in for postern-content: sees the message as the
    /// authenticator left it, and answers with a fixed verdict.
    struct FakeContent {
        verdict: InboundVerdict,
        seen: std::sync::Mutex<Vec<Vec<u8>>>,
    }

    impl ContentInspector for FakeContent {
        fn inspect<'a>(
            &'a self,
            _client: &'a ClientInfo,
            _envelope: &'a Envelope,
            message: &'a mut Vec<u8>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = InboundVerdict> + Send + 'a>>
        {
            self.seen.lock().unwrap().push(message.clone());
            let verdict = self.verdict.clone();
            Box::pin(async move { verdict })
        }
    }

    fn content(verdict: InboundVerdict) -> Arc<FakeContent> {
        Arc::new(FakeContent {
            verdict,
            seen: Default::default(),
        })
    }

    #[tokio::test]
    async fn content_findings_join_the_authentication_results_or_refuse_hold_or_defer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let body = b"X-Forged: 1\r\nSubject: hi\r\n\r\nbody\r\n";
        let intake = |c: Arc<FakeContent>| {
            Intake::new(store.clone(), "relay.example".into())
                .with_inbound_authenticator(Arc::new(FakeInbound { refuse: false }))
                .with_content_inspector(c)
        };

        // Tagged: the scanner's header goes below the Authentication-Results,
        // the summaries join, and the scanner saw the forged field removed.
        let tag = content(InboundVerdict {
            headers: b"X-Spam-Score: 7.5\r\n".to_vec(),
            summary: "content: spam=7.5 action=tag".into(),
            ..Default::default()
        });
        let id = intake(tag.clone())
            .submit(inbound_with_body(body))
            .await
            .unwrap();
        assert_eq!(tag.seen.lock().unwrap()[0], b"Subject: hi\r\n\r\nbody\r\n");
        let jobs = store.claim_due(i64::MAX / 2, 10, 1000).await.unwrap();
        let queued = String::from_utf8(jobs[0].body.to_vec()).unwrap();
        assert!(
            queued.starts_with("Authentication-Results: relay.example; spf=fail\r\nX-Postern-Verdict: tag\r\nX-Spam-Score: 7.5\r\nReceived: "),
            "{queued}"
        );
        let events = store
            .events(postern_store::EventFilter {
                message_id: Some(id.to_string()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(
            events[0]
                .detail
                .ends_with(" auth: spf=fail action=tag content: spam=7.5 action=tag"),
            "{}",
            events[0].detail
        );

        // Refused by the content check: the reason goes to the client.
        let refuse = content(InboundVerdict {
            refused: Some("virus found: Eicar-Signature".into()),
            ..Default::default()
        });
        match intake(refuse).submit(inbound_with_body(body)).await {
            Err(IntakeError::InboundRefused(r)) => assert_eq!(r, "virus found: Eicar-Signature"),
            other => panic!("{other:?}"),
        }

        // Deferred: nothing queued, nothing held, the client retries.
        let defer = content(InboundVerdict {
            deferred: Some("virus scanner unavailable".into()),
            quarantined: Some("spam".into()),
            ..Default::default()
        });
        match intake(defer).submit(inbound_with_body(body)).await {
            Err(IntakeError::InboundDeferred(r)) => assert_eq!(r, "virus scanner unavailable"),
            other => panic!("{other:?}"),
        }
        assert!(store
            .claim_due(i64::MAX / 2, 10, 1000)
            .await
            .unwrap()
            .is_empty());
        assert!(store
            .quarantined(postern_store::QuarantineFilter::default())
            .await
            .unwrap()
            .is_empty());

        // Quarantined by the content check: held with the reason, not queued.
        let hold = content(InboundVerdict {
            quarantined: Some("spam score 12.0".into()),
            summary: "content: spam=12.0 action=quarantine".into(),
            ..Default::default()
        });
        intake(hold).submit(inbound_with_body(body)).await.unwrap();
        let held = store
            .quarantined(postern_store::QuarantineFilter::default())
            .await
            .unwrap();
        assert_eq!(held.len(), 1);
        assert!(
            held[0].reason.starts_with("spam score 12.0 ("),
            "{}",
            held[0].reason
        );
        assert!(store
            .claim_due(i64::MAX / 2, 10, 1000)
            .await
            .unwrap()
            .is_empty());
    }

    /// The authenticator refusing means the scanner is never asked.
    #[tokio::test]
    async fn mail_refused_for_its_sender_is_not_scanned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let scanner = content(InboundVerdict::default());
        let intake = Intake::new(store.clone(), "relay.example".into())
            .with_inbound_authenticator(Arc::new(FakeInbound { refuse: true }))
            .with_content_inspector(scanner.clone());
        let r = intake
            .submit(inbound_with_body(b"X-Forged: 1\r\n\r\nx\r\n"))
            .await;
        assert!(matches!(r, Err(IntakeError::InboundRefused(_))), "{r:?}");
        assert!(scanner.seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn inbound_mail_gets_the_verdict_headers_on_top_or_is_refused_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let tagging = Intake::new(store.clone(), "relay.example".into())
            .with_inbound_authenticator(Arc::new(FakeInbound { refuse: false }));
        let body = b"X-Forged: 1\r\nSubject: hi\r\n\r\nbody\r\n";
        let id = tagging.submit(inbound_with_body(body)).await.unwrap();
        let jobs = store.claim_due(i64::MAX / 2, 10, 1000).await.unwrap();
        assert_eq!(jobs.len(), 1);
        let queued = String::from_utf8(jobs[0].body.to_vec()).unwrap();
        // RFC 8601 §4.1: the results above every trace field, ours included.
        assert!(
            queued.starts_with("Authentication-Results: relay.example; spf=fail\r\nX-Postern-Verdict: tag\r\nReceived: from mta.example.org"),
            "{queued}"
        );
        assert!(
            queued.ends_with("\r\nSubject: hi\r\n\r\nbody\r\n"),
            "{queued}"
        );
        assert!(
            !queued.contains("X-Forged"),
            "removed in place before queueing"
        );
        let events = store
            .events(postern_store::EventFilter {
                message_id: Some(id.to_string()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(
            events[0].detail.ends_with(" auth: spf=fail action=tag"),
            "{}",
            events[0].detail
        );

        // Refused: an error with the reason, nothing queued, and the send
        // log has it as processed then dropped with the reason.
        let refusing = Intake::new(store.clone(), "relay.example".into())
            .with_inbound_authenticator(Arc::new(FakeInbound { refuse: true }));
        match refusing.submit(inbound_with_body(body)).await {
            Err(IntakeError::InboundRefused(reason)) => assert_eq!(reason, "DMARC says no"),
            other => panic!("{other:?}"),
        }
        assert!(store
            .claim_due(i64::MAX / 2, 10, 1000)
            .await
            .unwrap()
            .is_empty());
        let dropped = store
            .events(postern_store::EventFilter {
                kinds: vec![postern_core::EventKind::Dropped],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].detail, "dropped: DMARC says no");
        let refused = store
            .events(postern_store::EventFilter {
                message_id: Some(dropped[0].message_id.clone()),
                kinds: vec![postern_core::EventKind::Processed],
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(
            refused[0]
                .detail
                .contains("refused: DMARC says no auth: spf=fail"),
            "{}",
            refused[0].detail
        );

        // Authenticated mail is never given to the inbound checks.
        let mut authenticated = inbound_with_body(body);
        authenticated.principal = Some(Principal {
            account: "acct".into(),
            account_id: 0,
            key_id: "k".into(),
            scopes: vec![],
        });
        refusing.submit(authenticated).await.unwrap();
    }

    #[tokio::test]
    async fn refuses_a_message_without_recipients() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let intake = Intake::new(store, "relay.example".into());
        let sub = Submission {
            envelope: Envelope::default(),
            principal: None,
            client: ClientInfo {
                ip: "127.0.0.1".parse().unwrap(),
                helo: "x".into(),
                protocol: "ESMTP",
                tls: None,
            },
            body: vec![],
        };
        assert!(matches!(
            intake.submit(sub).await,
            Err(IntakeError::NoRecipients)
        ));
    }
}
