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
