//! Records that cross the store boundary.

use std::sync::Arc;

use postern_core::{AttemptInfo, Envelope, EventKind, MessageId};

/// A message on its way into the queue.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: MessageId,
    pub received_at: i64,
    pub envelope: Envelope,
    /// The authenticated account, when there was one.
    pub account: Option<String>,
    /// The id that account had when it authenticated, when known: the
    /// message is refused (`StoreError::NotFound`) if the account of that
    /// name is no longer this one.
    pub account_id: Option<i64>,
    /// Stored before `body`: trace and signature headers. Kept apart so
    /// the intake never copies a large body just to prepend them; the store
    /// writes both into one row.
    pub head: Vec<u8>,
    /// The message as the client sent it; delivered as `head` + `body`.
    pub body: Vec<u8>,
    /// Recipients (by index) not to deliver to, with the reason: they are
    /// recorded as `dropped` at once. The store adds those on the sending
    /// account's suppression list itself.
    pub dropped: Vec<(usize, String)>,
    /// Detail of the `received` event.
    pub detail: String,
}

/// Recipients of one message in one domain, leased for one delivery attempt.
#[derive(Debug, Clone)]
pub struct DeliveryJob {
    pub message_id: MessageId,
    pub received_at: i64,
    pub mail_from: String,
    pub domain: String,
    pub recipients: Vec<JobRecipient>,
    pub body: Arc<Vec<u8>>,
    pub smtputf8: bool,
    pub eight_bit: bool,
    /// RFC 3461 ENVID, for DSNs.
    pub envid: Option<String>,
    /// RFC 3461 RET: whether a DSN returns the full message (else headers).
    pub ret: Option<postern_core::envelope::DsnReturn>,
    /// The account that sent it, if any (for its suppression list).
    pub account: Option<String>,
    /// The return-path domain of a VERP-rewritten envelope sender; such a
    /// job has exactly one recipient, since the sender differs per recipient.
    pub return_path: Option<String>,
}

#[derive(Debug, Clone)]
pub struct JobRecipient {
    pub index: u32,
    pub address: String,
    /// Attempts made before this one.
    pub attempts: u32,
    pub notify: Vec<String>,
    pub orcpt: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    Delivered,
    /// Try again at this time (Unix millis).
    Deferred {
        next_attempt: i64,
    },
    Failed,
}

#[derive(Debug, Clone)]
pub struct RecipientOutcome {
    pub message_id: MessageId,
    pub index: u32,
    pub recipient: String,
    pub settlement: Settlement,
    /// The remote reply or local error, recorded with the event.
    pub detail: String,
    pub at: i64,
    /// Attempt number, remote host, TLS, status, classification.
    pub info: AttemptInfo,
}

impl RecipientOutcome {
    pub fn event_kind(&self) -> EventKind {
        match self.settlement {
            Settlement::Delivered => EventKind::Delivered,
            Settlement::Deferred { .. } => EventKind::Deferred,
            Settlement::Failed => EventKind::Bounce,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSummary {
    pub messages: u64,
    pub recipients_queued: u64,
    pub recipients_leased: u64,
    /// When the oldest message still queued arrived.
    pub oldest_received_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub account: String,
    pub name: String,
    pub hash: Vec<u8>,
    pub scopes: Vec<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// CIDRs the key may be used from; empty means anywhere.
    pub networks: Vec<String>,
    pub last_used_at: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub message_id: Option<String>,
    /// Only events of messages sent by this account (or subuser).
    pub account: Option<String>,
    /// With `account`: its subusers' events too.
    pub include_subusers: bool,
    /// Events about this recipient (case-insensitive).
    pub recipient: Option<String>,
    pub kinds: Vec<EventKind>,
    /// Unix millis, inclusive.
    pub since: Option<i64>,
    /// Unix millis, exclusive.
    pub until: Option<i64>,
    /// Only events after this position in the log; with `limit`, the
    /// oldest N after it (how a webhook walks the log).
    pub after_seq: Option<i64>,
    /// Without `after_seq`: the most recent N. Results are oldest first.
    pub limit: Option<usize>,
}

/// A message still in the queue, with its recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    pub id: String,
    pub received_at: i64,
    pub mail_from: String,
    pub account: Option<String>,
    pub size: u64,
    pub recipients: Vec<QueuedRecipient>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRecipient {
    pub index: u32,
    pub address: String,
    pub domain: String,
    /// queued, delivered or bounce.
    pub status: &'static str,
    pub attempts: u32,
    pub next_attempt: i64,
    /// A delivery attempt holds it now.
    pub in_flight: bool,
    pub last_reply: Option<String>,
}

impl QueuedMessage {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "message_id": self.id,
            "received": postern_core::time::rfc3339(self.received_at),
            "from": self.mail_from,
            "account": self.account,
            "size": self.size,
            "recipients": self.recipients.iter().map(|r| serde_json::json!({
                "email": r.address,
                "domain": r.domain,
                "status": r.status,
                "attempts": r.attempts,
                "next_attempt": (r.status == "queued").then(|| postern_core::time::rfc3339(r.next_attempt)),
                "in_flight": r.in_flight,
                "last_reply": r.last_reply,
            })).collect::<Vec<_>>(),
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct QueueFilter {
    /// Messages of this account (or subuser) only.
    pub account: Option<String>,
    /// With `account`: its subusers' messages too (what the account sees
    /// over the API, as with events).
    pub with_subusers: bool,
    /// Messages with a queued recipient in this domain.
    pub domain: Option<String>,
    pub limit: Option<usize>,
}

/// An account, or a subuser when `parent` is set. Subusers have their own
/// credentials, events and limits; disabling a parent disables its subusers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    /// Immutable internal id, assigned by the store when the account is
    /// created (the value given to `create_account` is ignored) and never
    /// given to another account. Everything the account owns goes by it.
    pub id: i64,
    pub name: String,
    pub parent: Option<String>,
    pub disabled: bool,
    /// Off by default: only API keys work until an operator allows passwords.
    pub allow_password_auth: bool,
    /// Argon2id PHC string.
    pub password_hash: Option<String>,
    pub created_at: i64,
    /// Contact address (SendGrid's subuser `email`).
    pub email: Option<String>,
    /// CRAM-MD5 HMAC intermediate state (32 bytes) when the account opted
    /// in; password-equivalent for CRAM-MD5 (see postern-accounts).
    pub cram_md5: Option<Vec<u8>>,
    /// Messages this account may submit per hour (None: no limit). Its own
    /// limit, whatever its parent's or siblings' traffic.
    pub max_messages_per_hour: Option<u32>,
    /// The IP pool its mail leaves from (a subuser without one uses its
    /// parent's; then `queue.default_ip_pool`).
    pub ip_pool: Option<String>,
    /// Envelope/header alignment: None or "strict" (same domain), or
    /// "relaxed" (each merely verified).
    pub sender_alignment: Option<String>,
    /// Management actions that mint credentials (API keys, sending
    /// domains) made with a password login need a current TOTP code too.
    pub require_2fa_for_credentials: bool,
}

impl AccountRecord {
    /// An enabled account with nothing set but its name, parent and
    /// creation time (what the CLI and the API create, before options).
    pub fn new(name: impl Into<String>, parent: Option<String>, created_at: i64) -> Self {
        AccountRecord {
            id: 0,
            name: name.into(),
            parent,
            disabled: false,
            allow_password_auth: false,
            password_hash: None,
            created_at,
            email: None,
            cram_md5: None,
            max_messages_per_hour: None,
            ip_pool: None,
            sender_alignment: None,
            require_2fa_for_credentials: false,
        }
    }
}

/// Fields to change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct AccountUpdate {
    pub disabled: Option<bool>,
    pub allow_password_auth: Option<bool>,
    pub password_hash: Option<Option<String>>,
    pub cram_md5: Option<Option<Vec<u8>>>,
    pub max_messages_per_hour: Option<Option<u32>>,
    pub ip_pool: Option<Option<String>>,
    pub sender_alignment: Option<Option<String>>,
    pub require_2fa_for_credentials: Option<bool>,
}

/// What happened, by whom, to whom, from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: i64,
    /// e.g. `auth.success`, `auth.failure`, `key.create`, `account.disable`.
    pub kind: String,
    /// Who did it: a principal, `cli`, or the attempted user name.
    pub actor: String,
    pub account: Option<String>,
    pub client_ip: Option<String>,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: i64,
    pub entry: AuditEntry,
    pub hash: Vec<u8>,
}

impl AuditRecord {
    /// The JSON form shared by `postern audit --json` and `/v3/audit`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "seq": self.seq,
            "time": postern_core::time::rfc3339(self.entry.at),
            "kind": self.entry.kind,
            "actor": self.entry.actor,
            "account": self.entry.account,
            "client_ip": self.entry.client_ip,
            "detail": self.entry.detail,
            "hash": self.hash.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub account: Option<String>,
    /// A kind, or a prefix ending in `.` (`auth.` for every AUTH outcome).
    pub kind: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// The most recent N, when set.
    pub limit: Option<usize>,
}

/// The result of checking the audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditVerification {
    Intact {
        entries: u64,
    },
    /// The first row whose hash does not match its content and predecessor.
    BrokenAt {
        seq: i64,
    },
}

/// One entry of an account's IP allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpRule {
    pub id: i64,
    pub cidr: String,
    pub created_at: i64,
}

/// An account's TOTP enrolment (RFC 6238).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotpRecord {
    pub account: String,
    pub secret: Vec<u8>,
    /// False until a first code has been verified.
    pub confirmed: bool,
    /// The last time step a code was accepted for (no replays).
    pub last_step: i64,
    /// Hashes of the recovery codes not used yet.
    pub recovery_hashes: Vec<String>,
    pub created_at: i64,
}

/// An address an account no longer sends to (a hard bounce).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    pub address: String,
    pub status: String,
    pub reason: String,
    pub created_at: i64,
}

/// An account's event webhook (SendGrid's event webhook settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    pub account: String,
    pub url: String,
    pub enabled: bool,
    /// The event kinds sent.
    pub kinds: Vec<EventKind>,
    /// PKCS#8 ECDSA P-256 private key when the webhook is signed.
    pub signing_key: Option<Vec<u8>>,
    /// The last event position delivered; set by the store on creation.
    pub cursor: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_success_at: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
}

/// When a domain's return-path subdomain is used (stored as 0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReturnPathMode {
    /// Not used: the envelope sender stays as the client gave it.
    #[default]
    Off,
    /// Its MX and SPF records were found by the last DNS check.
    FoundInDns,
    /// Turned on by an operator, whatever DNS says.
    Operator,
}

impl ReturnPathMode {
    pub fn is_on(self) -> bool {
        self != ReturnPathMode::Off
    }

    pub fn as_i64(self) -> i64 {
        match self {
            ReturnPathMode::Off => 0,
            ReturnPathMode::FoundInDns => 1,
            ReturnPathMode::Operator => 2,
        }
    }

    pub fn from_i64(v: i64) -> Self {
        match v {
            1 => ReturnPathMode::FoundInDns,
            2 => ReturnPathMode::Operator,
            _ => ReturnPathMode::Off,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReturnPathMode::Off => "off",
            ReturnPathMode::FoundInDns => "dns",
            ReturnPathMode::Operator => "operator",
        }
    }
}

/// A sending domain of an account, with its DKIM keys.
#[derive(Clone, PartialEq, Eq)]
pub struct DomainRecord {
    /// Assigned by the store (0 before it is added).
    pub id: i64,
    pub domain: String,
    pub account: String,
    /// Selector base: `<selector>-rsa` and `<selector>-ed`.
    pub selector: String,
    /// PKCS#1 DER.
    pub rsa_private: Vec<u8>,
    pub rsa_public: Vec<u8>,
    /// PKCS#8 DER.
    pub ed25519_private: Vec<u8>,
    pub ed25519_public: Vec<u8>,
    /// Label of the return-path subdomain.
    pub return_path: String,
    /// Whether mail from the domain leaves with a VERP return path in that
    /// subdomain: only once its MX and SPF were found (or an operator says
    /// so), or bounces would be lost and the envelope domain have no SPF.
    pub return_path_mode: ReturnPathMode,
    pub created_at: i64,
    pub verified_at: Option<i64>,
    /// "dns", or "operator:<actor>" when marked verified without DNS.
    pub verified_by: Option<String>,
    /// Keys generated by a rotation, published but not yet signing.
    pub next: Option<NextKeys>,
    /// The keys a rotation replaced: still published (mail signed with
    /// them may be in transit or in queues) until `retire_at`.
    pub previous: Option<PreviousKeys>,
}

/// A rotation's new keys under a new selector base, waiting until their
/// records are found in DNS before they sign.
#[derive(Clone, PartialEq, Eq)]
pub struct NextKeys {
    pub selector: String,
    pub rsa_private: Vec<u8>,
    pub rsa_public: Vec<u8>,
    pub ed25519_private: Vec<u8>,
    pub ed25519_public: Vec<u8>,
    pub created_at: i64,
}

impl std::fmt::Debug for NextKeys {
    /// Never prints private keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NextKeys")
            .field("selector", &self.selector)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// The replaced keys' public halves, kept for the records to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousKeys {
    pub selector: String,
    pub rsa_public: Vec<u8>,
    pub ed25519_public: Vec<u8>,
    pub retire_at: i64,
}

/// A single verified sender: one address an account may send as without
/// a verified domain (SendGrid's "single sender verification").
#[derive(Clone, PartialEq, Eq)]
pub struct SenderRecord {
    /// Assigned by the store (0 before it is added).
    pub id: i64,
    pub account: String,
    /// Lower-cased.
    pub address: String,
    pub nickname: String,
    pub from_name: String,
    pub reply_to: String,
    pub reply_to_name: String,
    /// The rest of SendGrid's fields (postal address, company…), as JSON.
    pub details: String,
    pub created_at: i64,
    pub verified_at: Option<i64>,
    /// SHA-256 of the outstanding one-time token; None once used.
    pub token_hash: Option<Vec<u8>>,
    pub token_expires_at: Option<i64>,
    /// Verification mails sent: the last one, and how many in the current
    /// day-long window (the rate limit).
    pub last_sent_at: Option<i64>,
    pub window_start: i64,
    pub window_sends: i64,
}

impl std::fmt::Debug for SenderRecord {
    /// Never prints the token hash.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderRecord")
            .field("id", &self.id)
            .field("account", &self.account)
            .field("address", &self.address)
            .field("verified_at", &self.verified_at)
            .finish_non_exhaustive()
    }
}

/// What a presented verification token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenUse {
    /// The sender is now verified (the token is used up).
    Verified(Box<SenderRecord>),
    /// The token was right but has expired.
    Expired,
    /// No sender has this token (never issued, already used, or replaced).
    Unknown,
}

impl std::fmt::Debug for DomainRecord {
    /// Never prints private keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainRecord")
            .field("id", &self.id)
            .field("domain", &self.domain)
            .field("account", &self.account)
            .field("selector", &self.selector)
            .field("verified_at", &self.verified_at)
            .field("verified_by", &self.verified_by)
            .finish_non_exhaustive()
    }
}

/// A message held in quarantine instead of being queued: inbound mail a
/// check found doubtful, kept whole until someone releases or deletes it,
/// or it expires.
#[derive(Debug, Clone)]
pub struct HeldMessage {
    pub id: MessageId,
    pub held_at: i64,
    pub envelope: Envelope,
    /// The client's address and its EHLO/HELO argument.
    pub client_ip: Option<String>,
    pub helo: Option<String>,
    /// Why it is held (shown to operators and tenants, and in the
    /// `quarantined` events).
    pub reason: String,
    /// Stored before `body` (the trace header), as for `NewMessage`.
    pub head: Vec<u8>,
    pub body: Vec<u8>,
}

/// Which quarantined recipients a caller may see and act on.
#[derive(Debug, Clone, Default)]
pub struct QuarantineFilter {
    /// Recipients of this account's domains only (None: every recipient,
    /// the operator's view).
    pub account: Option<String>,
    /// With `account`: its subusers' recipients too.
    pub with_subusers: bool,
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedRecipient {
    pub address: String,
    /// The account that held the recipient's domain verified when the
    /// message was held; None: the operator's alone.
    pub account: Option<String>,
}

/// A quarantined message, with the recipients the caller may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedMessage {
    pub id: String,
    pub held_at: i64,
    pub mail_from: String,
    pub client_ip: Option<String>,
    pub helo: Option<String>,
    pub reason: String,
    pub size: u64,
    pub recipients: Vec<QuarantinedRecipient>,
}

impl QuarantinedMessage {
    /// The form `postern quarantine list --json` and `/v3/quarantine` show.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "held": postern_core::time::rfc3339(self.held_at),
            "from": self.mail_from,
            "client_ip": self.client_ip,
            "helo": self.helo,
            "reason": self.reason,
            "size": self.size,
            "recipients": self.recipients.iter().map(|r| serde_json::json!({
                "email": r.address,
                "account": r.account,
            })).collect::<Vec<_>>(),
        })
    }

    /// The distinct owners of its recipients, in order (None: the
    /// operator's), for audit entries made per account.
    pub fn accounts(&self) -> Vec<Option<String>> {
        let mut out: Vec<Option<String>> = Vec::new();
        for r in &self.recipients {
            if !out.contains(&r.account) {
                out.push(r.account.clone());
            }
        }
        out
    }
}

/// What moving a queued message into quarantine did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldQueued {
    Held(QuarantinedMessage),
    /// No such message in the queue (or none of its recipients waits).
    NotFound,
    /// An account sent it: the quarantine holds inbound mail, which
    /// arrives without authentication.
    SentByAccount(String),
    /// A delivery attempt holds one of its recipients now.
    InFlight,
}

/// The quarantine's size and what has been done with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuarantineStats {
    /// Messages held now.
    pub held: u64,
    /// Recipients per action (`held`, `released`, `deleted`, `expired`),
    /// ever: counted in the commit of each action.
    pub actions: Vec<(String, u64)>,
}

/// A received report, summarised, to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReport {
    /// "dmarc" or "tlsrpt".
    pub kind: String,
    /// The reporting organisation.
    pub org: String,
    pub report_id: String,
    /// The domain the report is about (lowercase).
    pub policy_domain: String,
    /// The period covered, unix seconds.
    pub begin: i64,
    pub end: i64,
    /// Unix ms.
    pub received_at: i64,
    /// The counts, as JSON text.
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRecord {
    pub id: i64,
    pub report: NewReport,
}

impl ReportRecord {
    /// As the CLI's `--json` and `/v3/reports` give it.
    pub fn to_json(&self) -> serde_json::Value {
        let r = &self.report;
        serde_json::json!({
            "id": self.id,
            "kind": r.kind,
            "org": r.org,
            "report_id": r.report_id,
            "policy_domain": r.policy_domain,
            "begin": postern_core::time::rfc3339(r.begin.saturating_mul(1000)),
            "end": postern_core::time::rfc3339(r.end.saturating_mul(1000)),
            "received": postern_core::time::rfc3339(r.received_at),
            "summary": serde_json::from_str::<serde_json::Value>(&r.summary)
                .unwrap_or(serde_json::Value::Null),
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct ReportFilter {
    /// Reports whose policy domain this account holds verified (None:
    /// every report, the operator's view).
    pub account: Option<String>,
    /// With `account`: its subusers' domains too.
    pub with_subusers: bool,
    pub kind: Option<String>,
    pub domain: Option<String>,
    pub limit: Option<usize>,
}

/// One inbound message evaluated under DMARC, kept for the aggregate
/// report to the sender's policy domain (RFC 7489 §7.2). `policy` and
/// `row` are opaque to the store (JSON written by the reporter): equal
/// rows are counted together, as the report counts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmarcObservation {
    pub at: i64,
    /// The RFC5322.From domain, lower-cased.
    pub from_domain: String,
    /// The DMARC record that applied.
    pub policy: String,
    /// The source, the results and the disposition applied.
    pub row: String,
}

/// What waits to be reported for one From domain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DmarcPending {
    pub from_domain: String,
    /// The policy of the newest observation.
    pub policy: String,
    /// Each distinct row, with how many messages it stands for.
    pub rows: Vec<(String, u64)>,
    /// When the first and the last of them were made (unix ms).
    pub first_at: i64,
    pub last_at: i64,
    /// The observations up to this id are in it: `forget_dmarc` takes it,
    /// so rows recorded while the report was being sent stay for the next.
    pub up_to: i64,
}

/// One TLS session attempt of an outbound delivery to a recipient
/// domain's MX host, kept for the domain's TLS-RPT report (RFC 8460).
/// `policy` and `failure` are opaque to the store (JSON written by the
/// delivery client); equal ones are counted together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsObservation {
    pub at: i64,
    /// The recipient domain (RFC 8460 §3 policy domain), lower-cased.
    pub policy_domain: String,
    /// The policy applied (its type, text and MX hosts).
    pub policy: String,
    /// None: the session succeeded.
    pub failure: Option<String>,
}

/// What waits to be reported for one policy domain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsPending {
    pub policy_domain: String,
    /// Each distinct (policy, failure or None for success), with how many
    /// sessions it stands for.
    pub rows: Vec<(String, Option<String>, u64)>,
    pub first_at: i64,
    pub last_at: i64,
    /// The observations up to this id are in it (see `DmarcPending`).
    pub up_to: i64,
}
