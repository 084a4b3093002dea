//! Schema of the embedded store, versioned with `PRAGMA user_version`.

use rusqlite::{Connection, TransactionBehavior};

const MIGRATIONS: &[&str] = &[
    // 1: queue, events, credentials.
    r#"
    CREATE TABLE messages (
        id          TEXT PRIMARY KEY,
        received_at INTEGER NOT NULL,
        mail_from   TEXT NOT NULL,
        envelope    TEXT NOT NULL,      -- JSON of postern_core::Envelope
        account     TEXT,
        smtputf8    INTEGER NOT NULL,
        eight_bit   INTEGER NOT NULL,
        body        BLOB NOT NULL
    );
    CREATE TABLE recipients (
        message_id   TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        idx          INTEGER NOT NULL,
        address      TEXT NOT NULL,
        domain       TEXT NOT NULL,
        notify       TEXT NOT NULL,
        orcpt        TEXT,
        status       INTEGER NOT NULL,   -- 0 queued, 1 delivered, 2 failed
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_attempt INTEGER NOT NULL,
        lease_until  INTEGER NOT NULL DEFAULT 0,
        last_reply   TEXT,
        PRIMARY KEY (message_id, idx)
    );
    -- Only queued recipients are indexed, so finding due work costs the same
    -- however many delivered or failed rows there are.
    CREATE INDEX recipients_due ON recipients(next_attempt) WHERE status = 0;
    CREATE TABLE events (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        at         INTEGER NOT NULL,
        message_id TEXT NOT NULL,
        kind       TEXT NOT NULL,
        recipient  TEXT,
        detail     TEXT NOT NULL
    );
    CREATE INDEX events_by_message ON events(message_id);
    CREATE TABLE api_keys (
        id         TEXT PRIMARY KEY,
        account    TEXT NOT NULL,
        name       TEXT NOT NULL,
        hash       BLOB NOT NULL UNIQUE,
        scopes     TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        revoked_at INTEGER
    );
    CREATE TABLE secrets (
        name  TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    "#,
    // 2: accounts and subusers, IP access rules, the audit log.
    r#"
    CREATE TABLE accounts (
        name                TEXT PRIMARY KEY,
        parent              TEXT REFERENCES accounts(name),
        disabled            INTEGER NOT NULL DEFAULT 0,
        allow_password_auth INTEGER NOT NULL DEFAULT 0,
        password_hash       TEXT,
        created_at          INTEGER NOT NULL
    );
    INSERT INTO accounts (name, created_at)
        SELECT 'admin', 0 UNION SELECT DISTINCT account, 0 FROM api_keys WHERE account <> 'admin';
    CREATE TABLE ip_access (
        account TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
        cidr    TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (account, cidr)
    );
    -- Append-only; each row carries the SHA-256 of the previous row's hash and
    -- its own content, so an edited or deleted row breaks the chain.
    CREATE TABLE audit (
        seq       INTEGER PRIMARY KEY AUTOINCREMENT,
        at        INTEGER NOT NULL,
        kind      TEXT NOT NULL,
        actor     TEXT NOT NULL,
        account   TEXT,
        client_ip TEXT,
        detail    TEXT NOT NULL,
        prev_hash BLOB NOT NULL,
        hash      BLOB NOT NULL
    );
    CREATE INDEX audit_by_account ON audit(account, seq);
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    "#,
    // 3: a contact address per account (SendGrid's subuser `email`).
    r#"
    ALTER TABLE accounts ADD COLUMN email TEXT;
    "#,
    // 4: CRAM-MD5 HMAC intermediate state, for accounts that opt in.
    r#"
    ALTER TABLE accounts ADD COLUMN cram_md5 BLOB;
    "#,
    // 5: TOTP second factor for human logins.
    r#"
    CREATE TABLE totp (
        account        TEXT PRIMARY KEY REFERENCES accounts(name) ON DELETE CASCADE,
        secret         BLOB NOT NULL,
        confirmed      INTEGER NOT NULL DEFAULT 0,
        last_step      INTEGER NOT NULL DEFAULT 0,
        recovery_codes TEXT NOT NULL,      -- hex SHA-256 of unused codes, comma-separated
        created_at     INTEGER NOT NULL
    );
    "#,
    // 6: key IP ranges and last use; the account on every event.
    r#"
    ALTER TABLE api_keys ADD COLUMN networks TEXT NOT NULL DEFAULT '';
    ALTER TABLE api_keys ADD COLUMN last_used_at INTEGER;
    ALTER TABLE events ADD COLUMN account TEXT;
    CREATE INDEX events_by_account ON events(account, seq);
    "#,
    // 7: per-account sending limit.
    r#"
    ALTER TABLE accounts ADD COLUMN max_messages_per_hour INTEGER;
    "#,
    // 8: per-account bounce suppression list.
    r#"
    CREATE TABLE suppressions (
        account    TEXT NOT NULL,
        address    TEXT NOT NULL,
        status     TEXT NOT NULL,
        reason     TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (account, address)
    );
    "#,
    // 9: SendGrid's event names, attempt details, queries by recipient and
    // time, queue listing per account.
    r#"
    ALTER TABLE events ADD COLUMN info TEXT;   -- JSON of AttemptInfo, NULL when empty
    UPDATE events SET kind = 'processed' WHERE kind = 'received';
    UPDATE events SET kind = 'bounce' WHERE kind = 'failed';
    CREATE INDEX events_by_recipient ON events(recipient COLLATE NOCASE, seq);
    CREATE INDEX events_by_time ON events(at);
    CREATE INDEX messages_by_account ON messages(account, received_at);
    "#,
    // 10: event webhooks, one per account, each with its position in the
    // event log (so a restart resumes where delivery stopped).
    r#"
    CREATE TABLE event_webhooks (
        account         TEXT PRIMARY KEY,
        url             TEXT NOT NULL,
        enabled         INTEGER NOT NULL,
        kinds           TEXT NOT NULL,
        signing_key     BLOB,
        cursor          INTEGER NOT NULL,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        last_success_at INTEGER,
        last_error      TEXT,
        last_error_at   INTEGER
    );
    "#,
    // 11: IP pool per account.
    r#"
    ALTER TABLE accounts ADD COLUMN ip_pool TEXT;
    "#,
    // 12: receivers' MTA-STS policies, cached across restarts.
    r#"
    CREATE TABLE mta_sts_policies (
        domain     TEXT PRIMARY KEY,
        id         TEXT NOT NULL,
        policy     TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    );
    "#,
    // 13: sending domains with their DKIM keys.
    r#"
    CREATE TABLE domains (
        domain          TEXT PRIMARY KEY,
        account         TEXT NOT NULL,
        selector        TEXT NOT NULL,
        rsa_private     BLOB NOT NULL,
        rsa_public      BLOB NOT NULL,
        ed25519_private BLOB NOT NULL,
        ed25519_public  BLOB NOT NULL,
        return_path     TEXT NOT NULL,
        created_at      INTEGER NOT NULL,
        verified_at     INTEGER,
        verified_by     TEXT
    );
    CREATE INDEX domains_by_account ON domains(account);
    "#,
    // 14: per-account sender alignment rule.
    r#"
    ALTER TABLE accounts ADD COLUMN sender_alignment TEXT;
    "#,
    // 15: DKIM key rotation (the next keys, and the replaced ones until retired).
    r#"
    ALTER TABLE domains ADD COLUMN next_selector TEXT;
    ALTER TABLE domains ADD COLUMN next_rsa_private BLOB;
    ALTER TABLE domains ADD COLUMN next_rsa_public BLOB;
    ALTER TABLE domains ADD COLUMN next_ed25519_private BLOB;
    ALTER TABLE domains ADD COLUMN next_ed25519_public BLOB;
    ALTER TABLE domains ADD COLUMN next_created_at INTEGER;
    ALTER TABLE domains ADD COLUMN previous_selector TEXT;
    ALTER TABLE domains ADD COLUMN previous_rsa_public BLOB;
    ALTER TABLE domains ADD COLUMN previous_ed25519_public BLOB;
    ALTER TABLE domains ADD COLUMN previous_retire_at INTEGER;
    "#,
    // 16: single verified senders.
    r#"
    CREATE TABLE verified_senders (
        id               INTEGER PRIMARY KEY,
        account          TEXT NOT NULL,
        address          TEXT NOT NULL,
        nickname         TEXT NOT NULL,
        from_name        TEXT NOT NULL,
        reply_to         TEXT NOT NULL,
        reply_to_name    TEXT NOT NULL,
        details          TEXT NOT NULL,
        created_at       INTEGER NOT NULL,
        verified_at      INTEGER,
        token_hash       BLOB UNIQUE,
        token_expires_at INTEGER,
        last_sent_at     INTEGER,
        window_start     INTEGER NOT NULL,
        window_sends     INTEGER NOT NULL,
        UNIQUE (account, address)
    );
    "#,
    // 17: a version of everything that decides who may send as whom and
    // with which keys, bumped by triggers on every change from any process
    // (server, CLI), so the intake can cache it and still see changes at once.
    r#"
    CREATE TABLE sender_config_version (
        id      INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL
    );
    INSERT INTO sender_config_version (id, version) VALUES (1, 0);
    CREATE TRIGGER domains_ins AFTER INSERT ON domains BEGIN
        UPDATE sender_config_version SET version = version + 1 WHERE id = 1; END;
    CREATE TRIGGER domains_upd AFTER UPDATE ON domains BEGIN
        UPDATE sender_config_version SET version = version + 1 WHERE id = 1; END;
    CREATE TRIGGER domains_del AFTER DELETE ON domains BEGIN
        UPDATE sender_config_version SET version = version + 1 WHERE id = 1; END;
    CREATE TRIGGER senders_ins AFTER INSERT ON verified_senders BEGIN
        UPDATE sender_config_version SET version = version + 1 WHERE id = 1; END;
    CREATE TRIGGER senders_upd AFTER UPDATE OF verified_at, address, account ON verified_senders BEGIN
        UPDATE sender_config_version SET version = version + 1 WHERE id = 1; END;
    CREATE TRIGGER senders_del AFTER DELETE ON verified_senders BEGIN
        UPDATE sender_config_version SET version = version + 1 WHERE id = 1; END;
    CREATE TRIGGER accounts_senders_upd AFTER UPDATE OF sender_alignment, parent ON accounts BEGIN
        UPDATE sender_config_version SET version = version + 1 WHERE id = 1; END;
    CREATE TRIGGER accounts_del AFTER DELETE ON accounts BEGIN
        UPDATE sender_config_version SET version = version + 1 WHERE id = 1; END;
    "#,
    // 18: every account gets an immutable internal id, and everything an
    // account owns references that id, not the name. Names are labels that a
    // later account may take again; an id is never handed out twice
    // (AUTOINCREMENT keeps the highest id ever issued), so rows left behind
    // by a deleted account, or written for it in a race with its deletion,
    // can never bind to whoever takes the name next.
    r#"
    CREATE TABLE account_ids (id INTEGER PRIMARY KEY AUTOINCREMENT);
    ALTER TABLE accounts ADD COLUMN id INTEGER;
    UPDATE accounts SET id = rowid;
    INSERT INTO account_ids (id) SELECT id FROM accounts;
    CREATE UNIQUE INDEX accounts_by_id ON accounts(id);

    ALTER TABLE api_keys ADD COLUMN account_id INTEGER;
    ALTER TABLE ip_access ADD COLUMN account_id INTEGER;
    ALTER TABLE totp ADD COLUMN account_id INTEGER;
    ALTER TABLE suppressions ADD COLUMN account_id INTEGER;
    ALTER TABLE event_webhooks ADD COLUMN account_id INTEGER;
    ALTER TABLE domains ADD COLUMN account_id INTEGER;
    ALTER TABLE verified_senders ADD COLUMN account_id INTEGER;
    ALTER TABLE messages ADD COLUMN account_id INTEGER;
    ALTER TABLE events ADD COLUMN account_id INTEGER;
    UPDATE api_keys SET account_id = (SELECT id FROM accounts WHERE name = api_keys.account);
    UPDATE ip_access SET account_id = (SELECT id FROM accounts WHERE name = ip_access.account);
    UPDATE totp SET account_id = (SELECT id FROM accounts WHERE name = totp.account);
    UPDATE suppressions SET account_id = (SELECT id FROM accounts WHERE name = suppressions.account);
    UPDATE event_webhooks SET account_id = (SELECT id FROM accounts WHERE name = event_webhooks.account);
    UPDATE domains SET account_id = (SELECT id FROM accounts WHERE name = domains.account);
    UPDATE verified_senders SET account_id = (SELECT id FROM accounts WHERE name = verified_senders.account);
    UPDATE messages SET account_id = (SELECT id FROM accounts WHERE name = messages.account);
    UPDATE events SET account_id = (SELECT id FROM accounts WHERE name = events.account);
    CREATE INDEX api_keys_by_account_id ON api_keys(account_id);
    CREATE INDEX suppressions_by_account_id ON suppressions(account_id, address);
    CREATE INDEX domains_by_account_id ON domains(account_id);
    CREATE INDEX senders_by_account_id ON verified_senders(account_id);
    CREATE INDEX messages_by_account_id ON messages(account_id, received_at);
    CREATE INDEX events_by_account_id ON events(account_id, seq);
    DROP INDEX events_by_account;
    DROP INDEX messages_by_account;
    DROP INDEX domains_by_account;
    "#,
    // 19: TOTP verification failures, per account, for the attempt limit
    // (kept apart from `totp` so that re-enrolling or disabling does not
    // reset the count), and the per-account rule that credential-minting
    // actions made with a password login need a second factor.
    r#"
    CREATE TABLE totp_failures (
        account    TEXT NOT NULL,
        account_id INTEGER,
        at         INTEGER NOT NULL
    );
    CREATE INDEX totp_failures_by_account_id ON totp_failures(account_id, at);
    ALTER TABLE accounts ADD COLUMN require_2fa_for_credentials INTEGER NOT NULL DEFAULT 0;
    "#,
    // 20: a domain may be claimed (added, unverified) by several accounts at
    // once; only verification proves ownership, and only one account can
    // hold a domain verified. Rebuilt with an explicit id (the old rowid, so
    // the API's domain ids do not change), UNIQUE per account, and a partial
    // unique index over verified rows. Dropping the old table dropped its
    // triggers; they are created again on the new one.
    r#"
    CREATE TABLE domains_new (
        id                      INTEGER PRIMARY KEY,
        domain                  TEXT NOT NULL,
        account                 TEXT NOT NULL,
        selector                TEXT NOT NULL,
        rsa_private             BLOB NOT NULL,
        rsa_public              BLOB NOT NULL,
        ed25519_private         BLOB NOT NULL,
        ed25519_public          BLOB NOT NULL,
        return_path             TEXT NOT NULL,
        created_at              INTEGER NOT NULL,
        verified_at             INTEGER,
        verified_by             TEXT,
        next_selector           TEXT,
        next_rsa_private        BLOB,
        next_rsa_public         BLOB,
        next_ed25519_private    BLOB,
        next_ed25519_public     BLOB,
        next_created_at         INTEGER,
        previous_selector       TEXT,
        previous_rsa_public     BLOB,
        previous_ed25519_public BLOB,
        previous_retire_at      INTEGER,
        account_id              INTEGER,
        UNIQUE (domain, account_id)
    );
    INSERT INTO domains_new (id, domain, account, selector, rsa_private, rsa_public, ed25519_private,
        ed25519_public, return_path, created_at, verified_at, verified_by, next_selector, next_rsa_private,
        next_rsa_public, next_ed25519_private, next_ed25519_public, next_created_at, previous_selector,
        previous_rsa_public, previous_ed25519_public, previous_retire_at, account_id)
    SELECT rowid, domain, account, selector, rsa_private, rsa_public, ed25519_private,
        ed25519_public, return_path, created_at, verified_at, verified_by, next_selector, next_rsa_private,
        next_rsa_public, next_ed25519_private, next_ed25519_public, next_created_at, previous_selector,
        previous_rsa_public, previous_ed25519_public, previous_retire_at, account_id FROM domains;
    DROP TABLE domains;
    ALTER TABLE domains_new RENAME TO domains;
    CREATE UNIQUE INDEX domains_verified ON domains(domain) WHERE verified_at IS NOT NULL;
    CREATE INDEX domains_by_account_id ON domains(account_id);
    CREATE TRIGGER domains_ins AFTER INSERT ON domains BEGIN
        UPDATE sender_config_version SET version = version + 1 WHERE id = 1; END;
    CREATE TRIGGER domains_upd AFTER UPDATE ON domains BEGIN
        UPDATE sender_config_version SET version = version + 1 WHERE id = 1; END;
    CREATE TRIGGER domains_del AFTER DELETE ON domains BEGIN
        UPDATE sender_config_version SET version = version + 1 WHERE id = 1; END;
    "#,
    // 21: when a domain's return-path subdomain is used for VERP: 0 off,
    // 1 its MX and SPF were found in DNS, 2 an operator turned it on.
    // Domains verified through DNS had those records found (they are
    // required), so they keep rewriting; operator-verified ones stop until
    // the records are found or the operator says so.
    r#"
    ALTER TABLE domains ADD COLUMN return_path_mode INTEGER NOT NULL DEFAULT 0;
    UPDATE domains SET return_path_mode = 1 WHERE verified_by = 'dns';
    "#,
    // 22: a version of everything a login reads (keys, accounts, IP
    // rules), bumped by triggers on every change from any process, so the
    // authenticator can cache what it looked up and still see a revocation
    // or a new rule at the next login. A key's last use is written at most
    // once a minute, so that bump is rare.
    r#"
    CREATE TABLE auth_config_version (
        id      INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL
    );
    INSERT INTO auth_config_version (id, version) VALUES (1, 0);
    CREATE TRIGGER auth_keys_ins AFTER INSERT ON api_keys BEGIN
        UPDATE auth_config_version SET version = version + 1 WHERE id = 1; END;
    CREATE TRIGGER auth_keys_upd AFTER UPDATE ON api_keys BEGIN
        UPDATE auth_config_version SET version = version + 1 WHERE id = 1; END;
    CREATE TRIGGER auth_keys_del AFTER DELETE ON api_keys BEGIN
        UPDATE auth_config_version SET version = version + 1 WHERE id = 1; END;
    CREATE TRIGGER auth_accounts_ins AFTER INSERT ON accounts BEGIN
        UPDATE auth_config_version SET version = version + 1 WHERE id = 1; END;
    CREATE TRIGGER auth_accounts_upd AFTER UPDATE ON accounts BEGIN
        UPDATE auth_config_version SET version = version + 1 WHERE id = 1; END;
    CREATE TRIGGER auth_accounts_del AFTER DELETE ON accounts BEGIN
        UPDATE auth_config_version SET version = version + 1 WHERE id = 1; END;
    CREATE TRIGGER auth_ip_ins AFTER INSERT ON ip_access BEGIN
        UPDATE auth_config_version SET version = version + 1 WHERE id = 1; END;
    CREATE TRIGGER auth_ip_upd AFTER UPDATE ON ip_access BEGIN
        UPDATE auth_config_version SET version = version + 1 WHERE id = 1; END;
    CREATE TRIGGER auth_ip_del AFTER DELETE ON ip_access BEGIN
        UPDATE auth_config_version SET version = version + 1 WHERE id = 1; END;
    "#,
    // 23: the quarantine: inbound mail held instead of queued, with why,
    // when and from which client. The message is kept whole (trace header
    // included) with its envelope; each recipient belongs to the account
    // that holds its domain verified when it was held (NULL: only the
    // operator sees it), so a tenant sees and acts on its own recipients
    // only. A recipient released or deleted leaves; the entry goes with
    // its last recipient.
    r#"
    CREATE TABLE quarantine (
        id         TEXT PRIMARY KEY,
        held_at    INTEGER NOT NULL,
        mail_from  TEXT NOT NULL,
        envelope   TEXT NOT NULL,      -- JSON of postern_core::Envelope
        client_ip  TEXT,               -- NULL when moved from the queue
        helo       TEXT,
        reason     TEXT NOT NULL,
        smtputf8   INTEGER NOT NULL,
        eight_bit  INTEGER NOT NULL,
        body       BLOB NOT NULL
    );
    CREATE INDEX quarantine_by_time ON quarantine(held_at);
    CREATE TABLE quarantine_recipients (
        quarantine_id TEXT NOT NULL REFERENCES quarantine(id) ON DELETE CASCADE,
        idx           INTEGER NOT NULL,  -- the recipient's place in the envelope
        address       TEXT NOT NULL,
        domain        TEXT NOT NULL,
        account       TEXT,
        account_id    INTEGER,
        PRIMARY KEY (quarantine_id, idx)
    );
    CREATE INDEX quarantine_recipients_by_account_id ON quarantine_recipients(account_id, quarantine_id);
    -- Recipients held, released, deleted and expired, counted in the
    -- commit of each action by whichever process took it (server or CLI),
    -- for the server's `postern_quarantine_total` counter.
    CREATE TABLE quarantine_counters (
        action TEXT PRIMARY KEY,
        n      INTEGER NOT NULL
    );
    INSERT INTO quarantine_counters (action, n)
        VALUES ('held', 0), ('released', 0), ('deleted', 0), ('expired', 0);
    "#,
    // DMARC aggregate (RFC 7489 §7.2) and TLS-RPT (RFC 8460) reports sent
    // to the company's own domains, summarised. No account column: a
    // report belongs to whichever account holds its policy domain verified
    // when it is read, so deleting a tenant never deletes the operator's
    // reports. A reporter that sends the same report twice (same kind,
    // org and report id) is stored once.
    r#"
    CREATE TABLE reports (
        id            INTEGER PRIMARY KEY,
        kind          TEXT NOT NULL,      -- 'dmarc' | 'tlsrpt'
        org           TEXT NOT NULL,
        report_id     TEXT NOT NULL,
        policy_domain TEXT NOT NULL,      -- lowercase
        begin_at      INTEGER NOT NULL,   -- unix seconds
        end_at        INTEGER NOT NULL,
        received_at   INTEGER NOT NULL,   -- unix ms
        summary       TEXT NOT NULL,      -- JSON: the counts
        UNIQUE (kind, org, report_id)
    );
    CREATE INDEX reports_by_domain ON reports(policy_domain, received_at);
    "#,
    // 25: what the reports Postern sends are made of. One row per inbound
    // message evaluated under DMARC, for the aggregate report to the
    // sender's policy domain (RFC 7489 §7.2): `policy` is the record as
    // published, `row` the source, results and disposition, both JSON
    // written by postern-mailauth, so equal rows are counted with GROUP BY.
    // The same for TLS-RPT (RFC 8460) below. Rows leave once reported, or
    // after the retention.
    r#"
    CREATE TABLE dmarc_observations (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        at          INTEGER NOT NULL,
        from_domain TEXT NOT NULL,    -- the RFC5322.From domain, lower-cased
        policy      TEXT NOT NULL,
        row         TEXT NOT NULL
    );
    CREATE INDEX dmarc_observations_by_domain ON dmarc_observations(from_domain, id);
    CREATE INDEX dmarc_observations_by_time ON dmarc_observations(at);
    -- One row per TLS session attempt of an outbound delivery to a
    -- recipient domain's MX, for its TLS-RPT report (RFC 8460): the policy
    -- applied, and the failure (NULL: success), both JSON written by
    -- postern-delivery.
    CREATE TABLE tls_observations (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        at            INTEGER NOT NULL,
        policy_domain TEXT NOT NULL,  -- the recipient domain, lower-cased
        policy        TEXT NOT NULL,
        failure       TEXT
    );
    CREATE INDEX tls_observations_by_domain ON tls_observations(policy_domain, id);
    CREATE INDEX tls_observations_by_time ON tls_observations(at);
    "#,
];

/// Tables that hold rows owned by an account: each has `account` (the
/// name when the row was written, for display) and `account_id` (what
/// every lookup and every deletion goes by). Deleting an account deletes
/// its rows in all of them; a test checks that this list names every
/// table with an `account` column except the append-only audit log.
pub const ACCOUNT_OWNED_TABLES: &[&str] = &[
    "api_keys",
    "ip_access",
    "totp",
    "totp_failures",
    "suppressions",
    "event_webhooks",
    "domains",
    "verified_senders",
    "messages",
    "events",
    "quarantine_recipients",
];

/// Brings the schema up to date. The version is read inside an immediate
/// transaction so that a server and a CLI command starting together cannot
/// both apply the same step.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
    }
    tx.commit()
}
