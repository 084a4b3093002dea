//! The quarantine in the embedded store (see `QuarantineStore`): one row
//! per held message in `quarantine`, one per recipient still held in
//! `quarantine_recipients`, each recipient with the account that owns it.

use async_trait::async_trait;
use postern_core::{Envelope, EventKind};
use rusqlite::{params, Connection, OptionalExtension};

use super::{join_list, EmbeddedStore, JOIN_BELOW};
use crate::*;

/// Whether a recipient row is visible to the filter's caller: `?2` the
/// account name (NULL: the operator, who sees all), `?3` with its
/// subusers. Names are resolved to ids here, at the time of the call, so
/// a name deleted and taken again reaches nothing held for the old one.
const VISIBLE: &str = "(?2 IS NULL OR account_id IN
        (SELECT id FROM accounts WHERE name = ?2 OR (?3 AND parent = ?2)))";

/// Events of held recipients carry the recipient's owner rather than the
/// message's sender (inbound mail has none), so each tenant finds its own
/// in the send log.
#[allow(clippy::too_many_arguments)]
fn insert_owned_event(
    conn: &Connection,
    at: i64,
    message_id: &str,
    kind: EventKind,
    recipient: &str,
    detail: &str,
    account: Option<&str>,
    account_id: Option<i64>,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO events (at, message_id, kind, recipient, detail, account, account_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        at,
        message_id,
        kind.as_str(),
        recipient,
        detail,
        account,
        account_id
    ])?;
    Ok(())
}

/// The account that holds `domain` verified (only verification proves
/// ownership; an unverified claim gives no one the domain's mail).
fn domain_owner(conn: &Connection, domain: &str) -> Result<(Option<String>, Option<i64>)> {
    Ok(conn
        .prepare_cached(
            "SELECT account, account_id FROM domains
             WHERE domain = lower(?1) AND verified_at IS NOT NULL",
        )?
        .query_row([domain], |r| {
            Ok((Some(r.get::<_, String>(0)?), r.get::<_, Option<i64>>(1)?))
        })
        .optional()?
        .unwrap_or((None, None)))
}

/// Adds a held recipient, owned by its domain's account, with its
/// `quarantined` event.
fn hold_recipient(
    conn: &Connection,
    id: &str,
    idx: i64,
    address: &str,
    domain: &str,
    at: i64,
    detail: &str,
) -> Result<()> {
    let (account, account_id) = domain_owner(conn, domain)?;
    conn.prepare_cached(
        "INSERT INTO quarantine_recipients (quarantine_id, idx, address, domain, account, account_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![id, idx, address, domain, account, account_id])?;
    insert_owned_event(
        conn,
        at,
        id,
        EventKind::Quarantined,
        address,
        detail,
        account.as_deref(),
        account_id,
    )
}

/// A held recipient as the store reads it back.
struct Held {
    idx: i64,
    address: String,
    account: Option<String>,
    account_id: Option<i64>,
}

impl Held {
    fn public(&self) -> QuarantinedRecipient {
        QuarantinedRecipient {
            address: self.address.clone(),
            account: self.account.clone(),
        }
    }
}

/// The recipients of `id` the filter's caller sees, all or only
/// `recipient` (compared without case, as addresses are).
fn visible_recipients(
    conn: &Connection,
    id: &str,
    f: &QuarantineFilter,
    recipient: Option<&str>,
) -> Result<Vec<Held>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT idx, address, account, account_id FROM quarantine_recipients
         WHERE quarantine_id = ?1 AND {VISIBLE} AND (?4 IS NULL OR lower(address) = lower(?4))
         ORDER BY idx"
    ))?;
    let rows = stmt.query_map(params![id, f.account, f.with_subusers, recipient], |r| {
        Ok(Held {
            idx: r.get(0)?,
            address: r.get(1)?,
            account: r.get(2)?,
            account_id: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The message with the recipients the caller sees; None when it sees none.
fn load_entry(
    conn: &Connection,
    id: &str,
    f: &QuarantineFilter,
) -> Result<Option<QuarantinedMessage>> {
    let recipients = visible_recipients(conn, id, f, None)?;
    if recipients.is_empty() {
        return Ok(None);
    }
    Ok(conn
        .prepare_cached(
            "SELECT held_at, mail_from, client_ip, helo, reason, length(body)
             FROM quarantine WHERE id = ?1",
        )?
        .query_row([id], |r| {
            Ok(QuarantinedMessage {
                id: id.to_owned(),
                held_at: r.get(0)?,
                mail_from: r.get(1)?,
                client_ip: r.get(2)?,
                helo: r.get(3)?,
                reason: r.get(4)?,
                size: r.get::<_, i64>(5)? as u64,
                recipients: recipients.iter().map(Held::public).collect(),
            })
        })
        .optional()?)
}

/// Takes recipients out of quarantine; the message goes with its last one.
fn remove_recipients(conn: &Connection, id: &str, held: &[Held]) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "DELETE FROM quarantine_recipients WHERE quarantine_id = ?1 AND idx = ?2",
    )?;
    for h in held {
        stmt.execute(params![id, h.idx])?;
    }
    conn.prepare_cached(
        "DELETE FROM quarantine WHERE id = ?1
         AND NOT EXISTS (SELECT 1 FROM quarantine_recipients WHERE quarantine_id = ?1)",
    )?
    .execute([id])?;
    Ok(())
}

/// Counts `n` recipients under `action`, in the commit of the action.
fn bump(conn: &Connection, action: &str, n: usize) -> Result<()> {
    conn.prepare_cached("UPDATE quarantine_counters SET n = n + ?2 WHERE action = ?1")?
        .execute(params![action, n as i64])?;
    Ok(())
}

fn operator() -> QuarantineFilter {
    QuarantineFilter::default()
}

impl EmbeddedStore {
    pub(crate) async fn hold_impl(&self, msg: HeldMessage) -> Result<()> {
        self.write(move |conn| {
            let envelope = serde_json::to_string(&msg.envelope)
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            let id = msg.id.as_str();
            let len = msg.head.len() + msg.body.len();
            // As for queued messages: a small message is joined and bound,
            // a large one written into a zero-filled blob in place, so its
            // body is never copied to be joined.
            let value = if len < JOIN_BELOW {
                rusqlite::types::Value::Blob([msg.head.as_slice(), msg.body.as_slice()].concat())
            } else {
                rusqlite::types::Value::Null
            };
            conn.prepare_cached(
                "INSERT INTO quarantine (id, held_at, mail_from, envelope, client_ip, helo, reason,
                                         smtputf8, eight_bit, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, COALESCE(?10, zeroblob(?11)))",
            )?
            .execute(params![
                id,
                msg.held_at,
                msg.envelope.mail_from,
                envelope,
                msg.client_ip,
                msg.helo,
                msg.reason,
                msg.envelope.smtputf8,
                msg.envelope.body_type == postern_core::BodyType::EightBitMime,
                value,
                len as i64,
            ])?;
            if len >= JOIN_BELOW {
                use std::io::Write;
                let rowid = conn.last_insert_rowid();
                let mut blob =
                    conn.blob_open(rusqlite::MAIN_DB, "quarantine", "body", rowid, false)?;
                blob.write_all(&msg.head)
                    .and_then(|_| blob.write_all(&msg.body))
                    .map_err(|e| StoreError::Backend(format!("writing the message body: {e}")))?;
            }
            let detail = format!(
                "{} from=<{}> size={len} client={}",
                msg.reason,
                msg.envelope.mail_from,
                msg.client_ip.as_deref().unwrap_or("-"),
            );
            for (i, r) in msg.envelope.recipients.iter().enumerate() {
                hold_recipient(
                    conn,
                    id,
                    i as i64,
                    &r.address,
                    &r.domain,
                    msg.held_at,
                    &detail,
                )?;
            }
            bump(conn, "held", msg.envelope.recipients.len())
        })
        .await
    }
}

#[async_trait]
impl QuarantineStore for EmbeddedStore {
    async fn quarantined(&self, f: QuarantineFilter) -> Result<Vec<QuarantinedMessage>> {
        self.read(move |conn| {
            let ids: Vec<String> = {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT id FROM quarantine q WHERE EXISTS (
                         SELECT 1 FROM quarantine_recipients
                         WHERE quarantine_id = q.id AND {VISIBLE})
                     ORDER BY held_at, id LIMIT ?1"
                ))?;
                let limit = f.limit.map(|n| n as i64).unwrap_or(-1);
                let rows =
                    stmt.query_map(params![limit, f.account, f.with_subusers], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(m) = load_entry(conn, &id, &f)? {
                    out.push(m);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn quarantined_message(
        &self,
        id: String,
        f: QuarantineFilter,
    ) -> Result<Option<QuarantinedMessage>> {
        self.read(move |conn| load_entry(conn, &id, &f)).await
    }

    async fn quarantined_body(&self, id: String, f: QuarantineFilter) -> Result<Option<Vec<u8>>> {
        self.read(move |conn| {
            if visible_recipients(conn, &id, &f, None)?.is_empty() {
                return Ok(None);
            }
            Ok(conn
                .prepare_cached("SELECT body FROM quarantine WHERE id = ?1")?
                .query_row([&id], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn release_quarantined(
        &self,
        id: String,
        f: QuarantineFilter,
        recipient: Option<String>,
        now: i64,
        detail: String,
    ) -> Result<Vec<QuarantinedRecipient>> {
        self.write(move |conn| {
            let held = visible_recipients(conn, &id, &f, recipient.as_deref())?;
            if held.is_empty() {
                return Ok(Vec::new());
            }
            let envelope: String = conn
                .prepare_cached("SELECT envelope FROM quarantine WHERE id = ?1")?
                .query_row([&id], |r| r.get(0))?;
            let envelope: Envelope = serde_json::from_str(&envelope)
                .map_err(|e| StoreError::Backend(format!("quarantined envelope of {id}: {e}")))?;
            // Queued as accepted relay mail is: no account (the mail came in
            // without authentication), due now, the message as it was held.
            // The row may be there already, from an earlier release of
            // other recipients that are still being delivered.
            conn.prepare_cached(
                "INSERT OR IGNORE INTO messages
                     (id, received_at, mail_from, envelope, account, smtputf8, eight_bit, body, account_id)
                 SELECT id, ?2, mail_from, envelope, NULL, smtputf8, eight_bit, body, NULL
                 FROM quarantine WHERE id = ?1",
            )?
            .execute(params![id, now])?;
            let mut queue = conn.prepare_cached(
                "INSERT INTO recipients (message_id, idx, address, domain, notify, orcpt, status, next_attempt)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7)",
            )?;
            for h in &held {
                let Some(r) = envelope.recipients.get(h.idx as usize) else {
                    return Err(StoreError::Backend(format!(
                        "quarantined recipient {} of {id} is not in its envelope",
                        h.idx
                    )));
                };
                queue.execute(params![
                    id,
                    h.idx,
                    r.address,
                    r.domain,
                    join_list(&r.notify),
                    r.orcpt,
                    now
                ])?;
                insert_owned_event(
                    conn,
                    now,
                    &id,
                    EventKind::Processed,
                    &h.address,
                    &detail,
                    h.account.as_deref(),
                    h.account_id,
                )?;
            }
            remove_recipients(conn, &id, &held)?;
            bump(conn, "released", held.len())?;
            Ok(held.iter().map(Held::public).collect())
        })
        .await
    }

    async fn delete_quarantined(
        &self,
        id: String,
        f: QuarantineFilter,
        recipient: Option<String>,
        now: i64,
        reason: String,
    ) -> Result<Vec<QuarantinedRecipient>> {
        self.write(move |conn| {
            let held = visible_recipients(conn, &id, &f, recipient.as_deref())?;
            for h in &held {
                insert_owned_event(
                    conn,
                    now,
                    &id,
                    EventKind::Dropped,
                    &h.address,
                    &reason,
                    h.account.as_deref(),
                    h.account_id,
                )?;
            }
            remove_recipients(conn, &id, &held)?;
            bump(conn, "deleted", held.len())?;
            Ok(held.iter().map(Held::public).collect())
        })
        .await
    }

    async fn expire_quarantined(
        &self,
        held_before: i64,
        now: i64,
        reason: String,
    ) -> Result<Vec<QuarantinedMessage>> {
        self.write(move |conn| {
            // A bounded batch per commit, so a backlog of expired mail does
            // not hold the writer (and every message waiting on it) for
            // long; the caller asks again while batches come back full.
            let ids: Vec<String> = {
                let mut stmt = conn.prepare_cached(
                    "SELECT id FROM quarantine WHERE held_at < ?1 ORDER BY held_at LIMIT 500",
                )?;
                let rows = stmt.query_map([held_before], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            let mut expired = Vec::with_capacity(ids.len());
            for id in ids {
                let held = visible_recipients(conn, &id, &operator(), None)?;
                let entry = load_entry(conn, &id, &operator())?;
                for h in &held {
                    insert_owned_event(
                        conn,
                        now,
                        &id,
                        EventKind::Dropped,
                        &h.address,
                        &reason,
                        h.account.as_deref(),
                        h.account_id,
                    )?;
                }
                conn.prepare_cached("DELETE FROM quarantine WHERE id = ?1")?
                    .execute([&id])?;
                bump(conn, "expired", held.len())?;
                expired.extend(entry);
            }
            Ok(expired)
        })
        .await
    }

    async fn hold_queued(&self, id: String, reason: String, now: i64) -> Result<HoldQueued> {
        self.write(move |conn| {
            let sender: Option<Option<String>> = conn
                .prepare_cached("SELECT account FROM messages WHERE id = ?1")?
                .query_row([&id], |r| r.get(0))
                .optional()?;
            match sender {
                None => return Ok(HoldQueued::NotFound),
                Some(Some(account)) => return Ok(HoldQueued::SentByAccount(account)),
                Some(None) => {}
            }
            let waiting: Vec<(i64, String, String, i64)> = {
                let mut stmt = conn.prepare_cached(
                    "SELECT idx, address, domain, lease_until FROM recipients
                     WHERE message_id = ?1 AND status = 0 ORDER BY idx",
                )?;
                let rows = stmt.query_map([&id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            if waiting.is_empty() {
                return Ok(HoldQueued::NotFound);
            }
            // A recipient being delivered right now may be accepted by the
            // next hop a moment later: holding it would be a lie.
            if waiting.iter().any(|w| w.3 > now) {
                return Ok(HoldQueued::InFlight);
            }
            conn.prepare_cached(
                "INSERT OR IGNORE INTO quarantine
                     (id, held_at, mail_from, envelope, client_ip, helo, reason, smtputf8, eight_bit, body)
                 SELECT id, ?2, mail_from, envelope, NULL, NULL, ?3, smtputf8, eight_bit, body
                 FROM messages WHERE id = ?1",
            )?
            .execute(params![id, now, reason])?;
            for (idx, address, domain, _) in &waiting {
                hold_recipient(conn, &id, *idx, address, domain, now, &reason)?;
            }
            bump(conn, "held", waiting.len())?;
            conn.prepare_cached("DELETE FROM recipients WHERE message_id = ?1 AND status = 0")?
                .execute([&id])?;
            conn.prepare_cached(
                "DELETE FROM messages WHERE id = ?1
                 AND NOT EXISTS (SELECT 1 FROM recipients WHERE message_id = ?1 AND status = 0)",
            )?
            .execute([&id])?;
            match load_entry(conn, &id, &operator())? {
                Some(m) => Ok(HoldQueued::Held(m)),
                None => Err(StoreError::Backend(format!("{id} was held but cannot be read back"))),
            }
        })
        .await
    }

    async fn quarantine_stats(&self) -> Result<QuarantineStats> {
        self.read(|conn| {
            let held = conn
                .prepare_cached("SELECT COUNT(*) FROM quarantine")?
                .query_row([], |r| r.get::<_, i64>(0))? as u64;
            let mut stmt =
                conn.prepare_cached("SELECT action, n FROM quarantine_counters ORDER BY action")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
            Ok(QuarantineStats {
                held,
                actions: rows.collect::<rusqlite::Result<Vec<_>>>()?,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_core::{MessageId, Recipient};

    fn rcpt(address: &str) -> Recipient {
        Recipient {
            address: address.into(),
            // Lower-cased, as the doors give it.
            domain: address.rsplit_once('@').unwrap().1.to_lowercase(),
            notify: vec!["FAILURE".into()],
            orcpt: None,
        }
    }

    fn held(rcpts: &[&str], held_at: i64) -> HeldMessage {
        HeldMessage {
            id: MessageId::generate(),
            held_at,
            envelope: Envelope {
                mail_from: "spoof@forged.example".into(),
                recipients: rcpts.iter().map(|r| rcpt(r)).collect(),
                ..Default::default()
            },
            client_ip: Some("192.0.2.9".into()),
            helo: Some("mx.forged.example".into()),
            reason: "DMARC p=quarantine: forged.example failed".into(),
            head: b"Received: from mx.forged.example\r\n".to_vec(),
            body: b"Subject: invoice\r\n\r\nopen the attachment\r\n".to_vec(),
        }
    }

    fn domain(name: &str, account: &str, verified: bool) -> DomainRecord {
        DomainRecord {
            id: 0,
            domain: name.into(),
            account: account.into(),
            selector: "pst1".into(),
            rsa_private: vec![1],
            rsa_public: vec![2],
            ed25519_private: vec![3],
            ed25519_public: vec![4],
            return_path: "pst-bounces".into(),
            return_path_mode: Default::default(),
            created_at: 5,
            verified_at: verified.then_some(6),
            verified_by: verified.then(|| "dns".into()),
            next: None,
            previous: None,
        }
    }

    fn as_account(name: &str, with_subusers: bool) -> QuarantineFilter {
        QuarantineFilter {
            account: Some(name.into()),
            with_subusers,
            limit: None,
        }
    }

    fn addresses(m: &QuarantinedMessage) -> Vec<&str> {
        m.recipients.iter().map(|r| r.address.as_str()).collect()
    }

    /// acme (with its subuser acme-eu) and rival each hold a domain
    /// verified; nobody.example is only claimed (unverified) by rival.
    async fn tenants(dir: &std::path::Path) -> EmbeddedStore {
        let store = EmbeddedStore::open(dir).unwrap();
        for (name, parent) in [("acme", None), ("acme-eu", Some("acme")), ("rival", None)] {
            store
                .create_account(AccountRecord::new(name, parent.map(str::to_owned), 1))
                .await
                .unwrap();
        }
        for (d, a, verified) in [
            ("acme.example", "acme", true),
            ("eu.example", "acme-eu", true),
            ("rival.example", "rival", true),
            ("nobody.example", "rival", false),
        ] {
            store.add_domain(domain(d, a, verified)).await.unwrap();
        }
        store
    }

    const RCPTS: [&str; 4] = [
        "a@acme.example",
        "b@Rival.example",
        "c@nobody.example",
        "d@eu.example",
    ];

    #[tokio::test]
    async fn held_mail_is_durable_and_each_account_sees_only_its_own_recipients() {
        let dir = tempfile::tempdir().unwrap();
        let store = tenants(dir.path()).await;
        let msg = held(&RCPTS, 1000);
        let id = msg.id.to_string();
        store.hold(msg).await.unwrap();
        // Durable: what `hold` returned for is there after a reopen.
        drop(store);
        let store = EmbeddedStore::open(dir.path()).unwrap();

        let all = store
            .quarantined(QuarantineFilter::default())
            .await
            .unwrap();
        assert_eq!(all.len(), 1);
        let m = &all[0];
        assert_eq!(m.id, id);
        assert_eq!(m.reason, "DMARC p=quarantine: forged.example failed");
        assert_eq!(m.client_ip.as_deref(), Some("192.0.2.9"));
        assert_eq!(m.helo.as_deref(), Some("mx.forged.example"));
        assert_eq!(m.held_at, 1000);
        let owners: Vec<Option<&str>> = m.recipients.iter().map(|r| r.account.as_deref()).collect();
        // An unverified claim gives no one the domain's mail.
        assert_eq!(owners, [Some("acme"), Some("rival"), None, Some("acme-eu")]);

        let seen = |f: QuarantineFilter| {
            let store = &store;
            async move {
                let list = store.quarantined(f).await.unwrap();
                list.iter()
                    .map(|m| addresses(m).join(" "))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            seen(as_account("acme", true)).await,
            ["a@acme.example d@eu.example"]
        );
        assert_eq!(seen(as_account("acme", false)).await, ["a@acme.example"]);
        assert_eq!(seen(as_account("acme-eu", true)).await, ["d@eu.example"]);
        assert_eq!(seen(as_account("rival", true)).await, ["b@Rival.example"]);

        // An account with no recipient in it cannot see it at all.
        store
            .create_account(AccountRecord::new("stranger", None, 1))
            .await
            .unwrap();
        let stranger = as_account("stranger", true);
        assert!(seen(stranger.clone()).await.is_empty());
        assert!(store
            .quarantined_message(id.clone(), stranger.clone())
            .await
            .unwrap()
            .is_none());
        assert!(store
            .quarantined_body(id.clone(), stranger)
            .await
            .unwrap()
            .is_none());
        let body = store
            .quarantined_body(id.clone(), as_account("rival", true))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            body,
            b"Received: from mx.forged.example\r\nSubject: invoice\r\n\r\nopen the attachment\r\n"
        );

        // A `quarantined` event per recipient, with the reason, under the
        // recipient's owner.
        let events = store
            .events(EventFilter {
                message_id: Some(id.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(events.len(), 4);
        for (e, owner) in events
            .iter()
            .zip([Some("acme"), Some("rival"), None, Some("acme-eu")])
        {
            assert_eq!(e.kind, EventKind::Quarantined);
            assert!(e.detail.starts_with("DMARC p=quarantine"), "{}", e.detail);
            assert_eq!(e.account.as_deref(), owner);
        }
        let rivals = store
            .events(EventFilter {
                account: Some("rival".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(rivals.len(), 1);
        assert_eq!(store.quarantine_stats().await.unwrap().held, 1);
    }

    #[tokio::test]
    async fn release_queues_recipients_one_by_one_and_only_the_callers() {
        let dir = tempfile::tempdir().unwrap();
        let store = tenants(dir.path()).await;
        let msg = held(&RCPTS, 1000);
        let id = msg.id.to_string();
        store.hold(msg).await.unwrap();

        // rival cannot release acme's recipient, even by naming it.
        let none = store
            .release_quarantined(
                id.clone(),
                as_account("rival", true),
                Some("a@acme.example".into()),
                2000,
                "x".into(),
            )
            .await
            .unwrap();
        assert!(none.is_empty());
        assert!(store
            .claim_due(i64::MAX / 2, 10, 1000)
            .await
            .unwrap()
            .is_empty());

        // acme releases one of its two recipients (any case).
        let released = store
            .release_quarantined(
                id.clone(),
                as_account("acme", true),
                Some("D@EU.example".into()),
                2000,
                "released by key:k1".into(),
            )
            .await
            .unwrap();
        assert_eq!(
            released,
            [QuarantinedRecipient {
                address: "d@eu.example".into(),
                account: Some("acme-eu".into())
            }]
        );
        let left = store
            .quarantined_message(id.clone(), QuarantineFilter::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            addresses(&left),
            ["a@acme.example", "b@Rival.example", "c@nobody.example"]
        );
        // Then the operator releases the rest while d is still queued (the
        // message row is shared).
        let rest = store
            .release_quarantined(
                id.clone(),
                QuarantineFilter::default(),
                None,
                3000,
                "released by cli:op".into(),
            )
            .await
            .unwrap();
        assert_eq!(rest.len(), 3);
        assert!(store
            .quarantined_message(id.clone(), QuarantineFilter::default())
            .await
            .unwrap()
            .is_none());
        assert_eq!(store.quarantine_stats().await.unwrap().held, 0);

        // Queued as relay mail: no account, due now, the message as held,
        // one job per recipient domain.
        let q = store.queued_message(id.clone()).await.unwrap().unwrap();
        assert_eq!(q.account, None);
        assert_eq!(q.recipients.len(), 4);
        let jobs = store.claim_due(i64::MAX / 2, 10, 1000).await.unwrap();
        let mut domains: Vec<&str> = jobs.iter().map(|j| j.domain.as_str()).collect();
        domains.sort();
        assert_eq!(
            domains,
            [
                "acme.example",
                "eu.example",
                "nobody.example",
                "rival.example"
            ]
        );
        assert!(jobs.iter().all(|j| j
            .body
            .starts_with(b"Received: from mx.forged.example\r\nSubject: invoice")));
        assert!(jobs.iter().all(|j| j.recipients[0].notify == ["FAILURE"]));
        assert!(jobs.iter().all(|j| j.mail_from == "spoof@forged.example"));

        let processed: Vec<(String, Option<String>)> = store
            .events(EventFilter {
                message_id: Some(id.clone()),
                kinds: vec![EventKind::Processed],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.detail, e.account))
            .collect();
        assert_eq!(
            processed[0],
            ("released by key:k1".into(), Some("acme-eu".into()))
        );
        assert_eq!(processed.len(), 4);
        // Nothing left to release.
        assert!(store
            .release_quarantined(id, QuarantineFilter::default(), None, 4000, "x".into())
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn delete_per_recipient_and_expiry_record_drops() {
        let dir = tempfile::tempdir().unwrap();
        let store = tenants(dir.path()).await;
        let old = held(&["a@acme.example", "b@rival.example"], 1000);
        let old_id = old.id.to_string();
        let new = held(&["a@acme.example"], 5000);
        let new_id = new.id.to_string();
        store.hold(old).await.unwrap();
        store.hold(new).await.unwrap();

        // rival deletes its recipient of the old message; acme's stays.
        let gone = store
            .delete_quarantined(
                old_id.clone(),
                as_account("rival", false),
                None,
                2000,
                "deleted by key:r".into(),
            )
            .await
            .unwrap();
        assert_eq!(addresses_of(&gone), ["b@rival.example"]);
        assert!(store
            .delete_quarantined(
                new_id.clone(),
                as_account("rival", false),
                None,
                2000,
                "x".into()
            )
            .await
            .unwrap()
            .is_empty());
        let left = store
            .quarantined_message(old_id.clone(), QuarantineFilter::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(addresses(&left), ["a@acme.example"]);

        // Expiry takes what was held before the cut, nothing after it.
        let expired = store
            .expire_quarantined(3000, 6000, "expired from quarantine after 30d".into())
            .await
            .unwrap();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].id, old_id);
        assert_eq!(addresses(&expired[0]), ["a@acme.example"]);
        let all = store
            .quarantined(QuarantineFilter::default())
            .await
            .unwrap();
        assert_eq!(
            all.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            [new_id.as_str()]
        );

        let drops: Vec<(String, String, Option<String>)> = store
            .events(EventFilter {
                message_id: Some(old_id.clone()),
                kinds: vec![EventKind::Dropped],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.recipient.unwrap_or_default(), e.detail, e.account))
            .collect();
        assert_eq!(
            drops,
            [
                (
                    "b@rival.example".into(),
                    "deleted by key:r".into(),
                    Some("rival".into())
                ),
                (
                    "a@acme.example".into(),
                    "expired from quarantine after 30d".into(),
                    Some("acme".into())
                ),
            ]
        );
        // Nothing was queued by either.
        assert!(store
            .claim_due(i64::MAX / 2, 10, 1000)
            .await
            .unwrap()
            .is_empty());
        // Each action counted its recipients, in its own commit.
        let stats = store.quarantine_stats().await.unwrap();
        assert_eq!(stats.held, 1);
        let n = |a: &str| stats.actions.iter().find(|(k, _)| k == a).unwrap().1;
        assert_eq!(
            (n("held"), n("deleted"), n("expired"), n("released")),
            (3, 1, 1, 0)
        );
    }

    fn addresses_of(rs: &[QuarantinedRecipient]) -> Vec<&str> {
        rs.iter().map(|r| r.address.as_str()).collect()
    }

    fn queued(account: Option<&str>) -> NewMessage {
        NewMessage {
            id: MessageId::generate(),
            received_at: 100,
            envelope: Envelope {
                mail_from: "x@sender.example".into(),
                recipients: vec![rcpt("a@acme.example"), rcpt("n@nobody.example")],
                ..Default::default()
            },
            account: account.map(str::to_owned),
            account_id: None,
            head: b"Received: by test\r\n".to_vec(),
            body: b"Subject: queued\r\n\r\nbody\r\n".to_vec(),
            dropped: vec![],
            detail: "from=<x@sender.example>".into(),
        }
    }

    #[tokio::test]
    async fn only_waiting_inbound_mail_can_be_moved_from_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let store = tenants(dir.path()).await;
        let now = postern_core::time::now_millis();

        let sent = queued(Some("acme"));
        let sent_id = sent.id.to_string();
        store.enqueue(sent).await.unwrap();
        assert_eq!(
            store.hold_queued(sent_id, "r".into(), now).await.unwrap(),
            HoldQueued::SentByAccount("acme".into())
        );
        assert_eq!(
            store
                .hold_queued(MessageId::generate().to_string(), "r".into(), now)
                .await
                .unwrap(),
            HoldQueued::NotFound
        );

        let inbound = queued(None);
        let id = inbound.id.to_string();
        store.enqueue(inbound).await.unwrap();
        // Leased by a delivery attempt: not held.
        let jobs = store.claim_due(now, 10, 60_000).await.unwrap();
        assert!(jobs.iter().any(|j| j.message_id.as_str() == id));
        assert_eq!(
            store
                .hold_queued(id.clone(), "r".into(), now)
                .await
                .unwrap(),
            HoldQueued::InFlight
        );
        store.release_all_leases().await.unwrap();

        let HoldQueued::Held(m) = store
            .hold_queued(id.clone(), "phishing reported by the help desk".into(), now)
            .await
            .unwrap()
        else {
            panic!("not held");
        };
        assert_eq!(m.reason, "phishing reported by the help desk");
        assert_eq!(m.client_ip, None);
        assert_eq!(addresses(&m), ["a@acme.example", "n@nobody.example"]);
        assert_eq!(m.recipients[0].account.as_deref(), Some("acme"));
        assert!(store.queued_message(id.clone()).await.unwrap().is_none());
        // Only the account's message (left in the queue) is there to deliver.
        let jobs = store.claim_due(i64::MAX / 2, 10, 1000).await.unwrap();
        assert!(jobs.iter().all(|j| j.message_id.as_str() != id), "{jobs:?}");
        assert!(!jobs.is_empty());
        let body = store
            .quarantined_body(id.clone(), as_account("acme", false))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            body,
            b"Received: by test\r\nSubject: queued\r\n\r\nbody\r\n"
        );
        // Released again, it is queued under the same id.
        store
            .release_quarantined(
                id.clone(),
                QuarantineFilter::default(),
                None,
                now,
                "back".into(),
            )
            .await
            .unwrap();
        assert_eq!(
            store
                .queued_message(id)
                .await
                .unwrap()
                .unwrap()
                .recipients
                .len(),
            2
        );
    }
}
