//! Postern's store: the traits every backend implements, and the embedded
//! backend (SQLite in WAL mode) that is the default on one machine.
//!
//! The traits are shaped for a PostgreSQL backend too: a claim is a lease with
//! an expiry (`FOR UPDATE SKIP LOCKED` there, a single writer here), and every
//! write that a client is told about is committed before the call returns.

pub mod audit_anchor;
mod audit_chain;
mod embedded;
mod schema;
mod types;

#[cfg(test)]
mod account_isolation_tests;

use std::collections::BTreeMap;

use async_trait::async_trait;
use postern_core::MessageId;
use thiserror::Error;

pub use embedded::EmbeddedStore;
pub use types::*;

#[derive(Debug, Error, Clone)]
pub enum StoreError {
    #[error("store: {0}")]
    Backend(String),
    #[error("store is shut down")]
    Closed,
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    Conflict,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(f, _) = &e {
            if f.code == rusqlite::ErrorCode::ConstraintViolation {
                return StoreError::Conflict;
            }
        }
        StoreError::Backend(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The durable queue.
#[async_trait]
pub trait QueueStore: Send + Sync {
    /// Stores a message and its envelope. Returns only once they are durable
    /// (fsync'd WAL / committed transaction): the caller may then say `250`.
    async fn enqueue(&self, msg: NewMessage) -> Result<()>;

    /// Records a `refused` event: something turned away at the door with
    /// no message behind it (the intake's doors have no event store of
    /// their own); `seq` is assigned.
    async fn record_refusal(&self, event: postern_core::Event) -> Result<()>;

    /// Stores a message in quarantine instead of the queue, each recipient
    /// owned by the account that holds its domain verified (if any), with a
    /// `quarantined` event per recipient. Returns only once it is durable,
    /// as `enqueue`: the caller may then say `250`.
    async fn hold(&self, msg: HeldMessage) -> Result<()>;

    /// Leases up to `limit` due recipients, grouped into jobs per message and
    /// recipient domain. A lease that is not settled before it expires makes
    /// the recipients due again (a crashed node's work is taken over).
    async fn claim_due(
        &self,
        now: i64,
        limit: usize,
        lease_millis: i64,
    ) -> Result<Vec<DeliveryJob>> {
        self.claim_due_within(now, limit, lease_millis, i64::MAX, true)
            .await
    }

    /// As `claim_due`, taking recipients only while the claimed recipients'
    /// messages add up to at most `max_bytes`: what a node loads to deliver
    /// stays within its memory bound however large the messages are. With
    /// `at_least_one`, the first due recipient is taken however large its
    /// message (a node holding nothing must still deliver a message larger
    /// than its bound); without it, a first message over `max_bytes`
    /// leaves the claim empty.
    async fn claim_due_within(
        &self,
        now: i64,
        limit: usize,
        lease_millis: i64,
        max_bytes: i64,
        at_least_one: bool,
    ) -> Result<Vec<DeliveryJob>>;

    /// Records the outcome of attempts, with their events, in one commit.
    async fn settle(&self, outcomes: Vec<RecipientOutcome>) -> Result<()>;

    /// Drops every lease: on a single node at start-up nothing else can hold one.
    async fn release_all_leases(&self) -> Result<u64>;

    /// When the earliest queued recipient is due, if any.
    async fn next_due(&self) -> Result<Option<i64>>;

    /// Recipients waiting, by state.
    async fn queue_summary(&self) -> Result<QueueSummary>;

    /// Returns leased recipients to the queue, due at `next_attempt`,
    /// without counting an attempt or writing an event (a destination's
    /// hourly limit was reached: nothing was tried).
    async fn postpone(&self, recipients: Vec<(MessageId, u32)>, next_attempt: i64) -> Result<()>;

    /// Messages still queued, oldest first.
    async fn queued_messages(&self, filter: QueueFilter) -> Result<Vec<QueuedMessage>>;

    /// One queued message with all its recipients (settled ones too).
    async fn queued_message(&self, id: String) -> Result<Option<QueuedMessage>>;

    /// Makes the waiting recipients of a message (or of every message of
    /// `filter` when `id` is None) due at `now`. Returns how many.
    async fn retry_now(&self, id: Option<String>, filter: QueueFilter, now: i64) -> Result<u64>;

    /// Removes a message's waiting recipients from the queue, recording a
    /// `dropped` event with `reason` for each. Returns how many.
    async fn delete_queued(&self, id: String, reason: String, now: i64) -> Result<u64>;
}

/// DMARC aggregate and TLS-RPT reports received for the company's own
/// domains, summarised. Every read takes a filter saying whose reports the
/// caller may see: those whose policy domain its account (or a subuser)
/// holds verified, or all for the operator.
#[async_trait]
pub trait ReportStore: Send + Sync {
    /// Stores a report; None when one of the same kind, org and report id
    /// is stored already (nothing is changed then).
    async fn store_report(&self, report: NewReport) -> Result<Option<i64>>;
    /// Newest first.
    async fn reports(&self, filter: ReportFilter) -> Result<Vec<ReportRecord>>;
    async fn report(&self, id: i64, filter: ReportFilter) -> Result<Option<ReportRecord>>;
}

/// The quarantine: inbound mail held for a decision. Every call takes a
/// filter saying whose recipients the caller may see and act on (an
/// account's, with its subusers', or all for the operator); a message
/// with none of them is "not found" to that caller.
#[async_trait]
pub trait QuarantineStore: Send + Sync {
    /// Held messages with at least one visible recipient, oldest first.
    async fn quarantined(&self, filter: QuarantineFilter) -> Result<Vec<QuarantinedMessage>>;
    async fn quarantined_message(
        &self,
        id: String,
        filter: QuarantineFilter,
    ) -> Result<Option<QuarantinedMessage>>;
    /// The whole message as stored (trace header first).
    async fn quarantined_body(
        &self,
        id: String,
        filter: QuarantineFilter,
    ) -> Result<Option<Vec<u8>>>;
    /// Queues the message for its visible recipients (or only `recipient`,
    /// when named and visible) as accepted relay mail is queued, and takes
    /// them out of quarantine, in one commit; each gets a `processed`
    /// event with `detail`. Returns the recipients released (empty: none
    /// matched).
    async fn release_quarantined(
        &self,
        id: String,
        filter: QuarantineFilter,
        recipient: Option<String>,
        now: i64,
        detail: String,
    ) -> Result<Vec<QuarantinedRecipient>>;
    /// Takes the visible recipients (or `recipient`) out of quarantine for
    /// good, each with a `dropped` event carrying `reason`.
    async fn delete_quarantined(
        &self,
        id: String,
        filter: QuarantineFilter,
        recipient: Option<String>,
        now: i64,
        reason: String,
    ) -> Result<Vec<QuarantinedRecipient>>;
    /// Deletes every message held before `held_before` (a `dropped` event
    /// with `reason` for each recipient); returns what was deleted.
    async fn expire_quarantined(
        &self,
        held_before: i64,
        now: i64,
        reason: String,
    ) -> Result<Vec<QuarantinedMessage>>;
    /// Moves the waiting recipients of a queued message that came in
    /// without authentication into quarantine under the same id, in one
    /// commit, each with a `quarantined` event carrying `reason`.
    async fn hold_queued(&self, id: String, reason: String, now: i64) -> Result<HoldQueued>;
    /// Messages held now, and recipients held, released, deleted and
    /// expired since the store was created (by any process).
    async fn quarantine_stats(&self) -> Result<QuarantineStats>;
}

/// Sending domains: their DKIM keys and verification state.
#[async_trait]
pub trait DomainStore: Send + Sync {
    /// Adds a domain claim for its account and returns its id. Several
    /// accounts may claim one domain while none has verified it;
    /// `Conflict` when the account has it already or it is verified (by
    /// anyone).
    async fn add_domain(&self, domain: DomainRecord) -> Result<i64>;
    /// The verified row of a domain: the only one that may ever sign mail
    /// or take bounces for it.
    async fn verified_domain(&self, domain: String) -> Result<Option<DomainRecord>>;
    /// The account's own row for a domain (its claim, or its verified domain).
    async fn get_domain_for(&self, account: String, domain: String)
        -> Result<Option<DomainRecord>>;
    async fn get_domain_by_id(&self, id: i64) -> Result<Option<DomainRecord>>;
    /// All domains (claims included), or one account's.
    async fn list_domains(&self, account: Option<String>) -> Result<Vec<DomainRecord>>;
    /// Marks a domain row verified (`by`: "dns" or "operator:<who>") and
    /// deletes every other account's unverified claim on the same domain
    /// (returned, for the audit log). None when no such row; `Conflict`
    /// when another account holds the domain verified.
    async fn verify_domain(
        &self,
        id: i64,
        at: i64,
        by: String,
    ) -> Result<Option<Vec<DomainRecord>>>;
    async fn delete_domain(&self, id: i64) -> Result<bool>;
    /// Stores a rotation's new keys (replacing any earlier unfinished
    /// rotation); false when no such domain.
    async fn start_rotation(&self, id: i64, next: NextKeys) -> Result<bool>;
    /// The next keys become the signing keys; the replaced ones are kept
    /// as `previous` until `retire_at`. False when no rotation is pending.
    async fn promote_rotation(&self, id: i64, retire_at: i64) -> Result<bool>;
    /// Sets when the domain's return-path subdomain is used; false when
    /// no such domain.
    async fn set_return_path_mode(&self, id: i64, mode: ReturnPathMode) -> Result<bool>;
    /// Forgets replaced keys whose overlap has ended; returns their domains.
    async fn retire_previous(&self, now: i64) -> Result<Vec<String>>;
    /// Changes whenever a domain, a single sender or an account's sender
    /// rules change (by any process): a cache keyed on it is never stale.
    async fn senders_version(&self) -> Result<i64>;
}

/// How often a verification mail may be sent for one sender.
#[derive(Debug, Clone, Copy)]
pub struct SendLimits {
    pub min_interval_millis: i64,
    pub window_millis: i64,
    pub per_window: i64,
}

/// What asking for a new verification token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenIssue {
    Issued,
    NotFound,
    AlreadyVerified,
    /// The rate limit: no new mail before `retry_at`.
    TooSoon {
        retry_at: i64,
    },
}

/// Single verified senders and their one-time verification tokens.
#[async_trait]
pub trait SenderStore: Send + Sync {
    /// Adds a sender; returns its id. Conflict when the account has it.
    async fn add_sender(&self, sender: SenderRecord) -> Result<i64>;
    async fn get_sender(&self, id: i64) -> Result<Option<SenderRecord>>;
    /// All senders, or one account's.
    async fn list_senders(&self, account: Option<String>) -> Result<Vec<SenderRecord>>;
    /// Replaces the descriptive fields (names, reply-to, details).
    async fn update_sender(&self, sender: SenderRecord) -> Result<bool>;
    /// Stores a new token (replacing the outstanding one) if the rate
    /// limit allows another verification mail now.
    async fn issue_sender_token(
        &self,
        id: i64,
        hash: Vec<u8>,
        expires_at: i64,
        now: i64,
        limits: SendLimits,
    ) -> Result<TokenIssue>;
    /// Verifies the sender holding this token, once.
    async fn use_sender_token(&self, hash: Vec<u8>, now: i64) -> Result<TokenUse>;
    /// Verifies without a token (an operator).
    async fn mark_sender_verified(&self, id: i64, at: i64) -> Result<bool>;
    async fn delete_sender(&self, id: i64) -> Result<bool>;
}

/// Per-account suppression of hard-bounced addresses.
#[async_trait]
pub trait SuppressionStore: Send + Sync {
    /// Adds or refreshes an entry.
    async fn suppress(&self, account: String, entry: Suppression) -> Result<()>;
    /// Which of `addresses` the account suppresses (lower-cased comparison).
    async fn suppressed(&self, account: String, addresses: Vec<String>) -> Result<Vec<String>>;
    async fn suppressions(&self, account: String) -> Result<Vec<Suppression>>;
    /// Removes one address, or all when `address` is None; returns how many.
    async fn unsuppress(&self, account: String, address: Option<String>) -> Result<u64>;
}

/// API keys and the secrets that protect them.
#[async_trait]
pub trait CredentialStore: Send + Sync {
    async fn insert_api_key(&self, key: ApiKeyRecord) -> Result<()>;
    async fn find_api_key_by_hash(&self, hash: Vec<u8>) -> Result<Option<ApiKeyRecord>>;
    /// Returns false when no such key exists or it was already revoked.
    async fn revoke_api_key(&self, id: String, at: i64) -> Result<bool>;
    async fn list_api_keys(&self, account: Option<String>) -> Result<Vec<ApiKeyRecord>>;
    async fn touch_api_key(&self, id: String, at: i64) -> Result<()>;
    /// Renames a key and/or replaces its scopes; false when no such key.
    async fn update_api_key(
        &self,
        id: String,
        name: Option<String>,
        scopes: Option<Vec<String>>,
    ) -> Result<bool>;
    /// A random secret, created on first use and the same ever after.
    async fn secret(&self, name: &'static str, len: usize) -> Result<Vec<u8>>;
    /// Changes whenever an API key, an account or an IP rule changes (by
    /// any process): what a login looked up may be cached on it.
    async fn auth_version(&self) -> Result<i64>;
}

/// Accounts, subusers and their IP access rules.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Conflict when the name is taken; a subuser's parent must exist and be
    /// a top-level account.
    async fn create_account(&self, account: AccountRecord) -> Result<()>;
    async fn get_account(&self, name: String) -> Result<Option<AccountRecord>>;
    async fn list_accounts(&self) -> Result<Vec<AccountRecord>>;
    /// Returns false when there is no such account.
    async fn update_account(&self, name: String, update: AccountUpdate) -> Result<bool>;
    async fn add_ip_rule(&self, account: String, cidr: String) -> Result<()>;
    async fn remove_ip_rule(&self, account: String, cidr: String) -> Result<bool>;
    async fn remove_ip_rule_by_id(&self, account: String, id: i64) -> Result<bool>;
    async fn ip_rules(&self, account: String) -> Result<Vec<IpRule>>;
    /// Deletes an account and everything it owns (keys, IP rules, TOTP,
    /// domains with their DKIM keys, single senders, suppressions, webhook,
    /// queued messages, events), in one commit. Returns how many rows went
    /// from each table, or None when there is no such account. Conflict
    /// while it still has subusers. The audit log is append-only and stays.
    async fn delete_account(&self, name: String) -> Result<Option<BTreeMap<String, u64>>>;
}

/// TOTP second factors.
#[async_trait]
pub trait TotpStore: Send + Sync {
    /// Starts (or restarts) an enrolment; NotFound when no such account.
    async fn put_totp(&self, record: TotpRecord) -> Result<()>;
    async fn get_totp(&self, account: String) -> Result<Option<TotpRecord>>;
    /// Records an accepted code: confirms the enrolment and moves
    /// `last_step` forward. False if `step` is not after the last one
    /// (a replayed code), so two racing uses cannot both succeed.
    async fn accept_totp_step(&self, account: String, step: i64) -> Result<bool>;
    /// Uses up a recovery code; false when it is not (or no longer) valid.
    async fn use_recovery_code(&self, account: String, hash: String) -> Result<bool>;
    async fn delete_totp(&self, account: String) -> Result<bool>;
    /// When the account's failed verifications after `since` happened
    /// (unix milliseconds, oldest first).
    async fn totp_failures(&self, account: String, since: i64) -> Result<Vec<i64>>;
    /// Takes one attempt at `at` before its code is checked: counted as a
    /// failure at once (forgotten if it succeeds), so attempts racing each
    /// other cannot all pass the limit. Returns the attempt's id and the
    /// times of the failures after `since`, this one included.
    async fn begin_totp_attempt(
        &self,
        account: String,
        at: i64,
        since: i64,
    ) -> Result<(i64, Vec<i64>)>;
    /// Forgets one attempt taken by `begin_totp_attempt` (it was refused
    /// unchecked, as the account was locked).
    async fn forget_totp_attempt(&self, account: String, id: i64) -> Result<()>;
    /// Forgets the account's failures (after a successful verification).
    async fn clear_totp_failures(&self, account: String) -> Result<()>;
}

/// The append-only, hash-chained audit log.
#[async_trait]
pub trait AuditStore: Send + Sync {
    async fn append_audit(&self, entry: AuditEntry) -> Result<i64>;
    async fn audit(&self, filter: AuditFilter) -> Result<Vec<AuditRecord>>;
    async fn verify_audit(&self) -> Result<AuditVerification>;
}

/// The per-message event log, and the event webhooks that read it.
#[async_trait]
pub trait EventStore: Send + Sync {
    async fn events(&self, filter: EventFilter) -> Result<Vec<postern_core::Event>>;

    /// Records an event that arrives after the message left the queue (a
    /// bounce reported later by the receiving side); `seq` is assigned.
    async fn append_event(&self, event: postern_core::Event) -> Result<()>;

    /// The position of the latest event (0 when there is none).
    async fn last_event_seq(&self) -> Result<i64>;

    /// Creates or replaces an account's event webhook. A new webhook starts
    /// at the end of the log (it does not replay history); a replaced one
    /// keeps its position.
    async fn put_webhook(&self, webhook: WebhookRecord) -> Result<()>;
    async fn get_webhook(&self, account: String) -> Result<Option<WebhookRecord>>;
    async fn list_webhooks(&self) -> Result<Vec<WebhookRecord>>;
    /// Records that events up to `cursor` were delivered (or given up on).
    async fn advance_webhook(&self, account: String, cursor: i64, at: i64) -> Result<()>;
    /// Records the latest failure, for `postern webhook show`.
    async fn webhook_failed(&self, account: String, error: String, at: i64) -> Result<()>;
}

/// Receivers' TLS policies (MTA-STS), kept across restarts: a policy
/// must outlive the process, or an attacker who blocks the policy lookup
/// after a restart could downgrade delivery to plaintext (RFC 8461 §5).
#[async_trait]
pub trait TlsPolicyStore: Send + Sync {
    /// The cached policy's id, text and expiry, if not expired at `now`.
    async fn mta_sts_policy(
        &self,
        domain: String,
        now: i64,
    ) -> Result<Option<(String, String, i64)>>;
    async fn put_mta_sts_policy(
        &self,
        domain: String,
        id: String,
        policy: String,
        expires_at: i64,
    ) -> Result<()>;
}

/// What the reports Postern sends are made of (DMARC aggregate reports,
/// RFC 7489 §7.2; TLS-RPT, RFC 8460).
#[async_trait]
pub trait ReportDataStore: Send + Sync {
    /// Keeps one observation. Written with the next group commit: a caller
    /// on the inbound path need not wait for it (the message does not
    /// depend on it).
    async fn record_dmarc(&self, observation: DmarcObservation) -> Result<()>;
    /// Everything recorded so far, per From domain, equal rows counted.
    async fn dmarc_pending(&self) -> Result<Vec<DmarcPending>>;
    /// Forgets a domain's observations up to `up_to` (they were reported);
    /// returns how many.
    async fn forget_dmarc(&self, from_domain: String, up_to: i64) -> Result<u64>;
    /// Drops observations made before `before` (never reported: no
    /// destination took them); returns how many.
    async fn expire_dmarc(&self, before: i64) -> Result<u64>;
    /// Keeps one TLS session outcome (TLS-RPT, RFC 8460), as
    /// `record_dmarc`: the delivery need not wait for it.
    async fn record_tls(&self, observation: TlsObservation) -> Result<()>;
    /// Everything recorded so far, per policy domain, equal rows counted.
    async fn tls_pending(&self) -> Result<Vec<TlsPending>>;
    async fn forget_tls(&self, policy_domain: String, up_to: i64) -> Result<u64>;
    async fn expire_tls(&self, before: i64) -> Result<u64>;
}

/// Everything a node needs from its store.
pub trait Store:
    QueueStore
    + CredentialStore
    + EventStore
    + AccountStore
    + AuditStore
    + TotpStore
    + SuppressionStore
    + TlsPolicyStore
    + DomainStore
    + SenderStore
    + QuarantineStore
    + ReportStore
    + ReportDataStore
{
}
impl<
        T: QueueStore
            + CredentialStore
            + EventStore
            + AccountStore
            + AuditStore
            + TotpStore
            + SuppressionStore
            + TlsPolicyStore
            + DomainStore
            + SenderStore
            + QuarantineStore
            + ReportStore
            + ReportDataStore,
    > Store for T
{
}

/// What authentication needs: credentials, accounts, and the audit log.
pub trait AuthStore: CredentialStore + AccountStore + AuditStore + TotpStore {}
impl<T: CredentialStore + AccountStore + AuditStore + TotpStore> AuthStore for T {}
