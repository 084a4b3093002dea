//! Account identity is permanent: a name that is deleted and taken again
//! (by the same or another tenant) must not bind to anything the first
//! account owned, nor to rows written for it in a race with its deletion.

use postern_core::{Envelope, EventKind, MessageId, Recipient};

use crate::*;

fn account(name: &str, parent: Option<&str>) -> AccountRecord {
    AccountRecord::new(
        name,
        parent.map(str::to_owned),
        postern_core::time::now_millis(),
    )
}

fn message(account: &str) -> NewMessage {
    NewMessage {
        account_id: None,
        head: Vec::new(),
        id: MessageId::generate(),
        received_at: postern_core::time::now_millis(),
        envelope: Envelope {
            mail_from: "ceo@shop.example".into(),
            recipients: vec![Recipient {
                address: "rcpt@dest.example".into(),
                domain: "dest.example".into(),
                notify: vec![],
                orcpt: None,
            }],
            ..Default::default()
        },
        account: Some(account.into()),
        body: b"Subject: t\r\n\r\nhello\r\n".to_vec(),
        detail: "test".into(),
        dropped: Vec::new(),
    }
}

fn domain(account: &str) -> DomainRecord {
    DomainRecord {
        id: 0,
        domain: "shop.example".into(),
        account: account.into(),
        selector: "pst1".into(),
        rsa_private: vec![1],
        rsa_public: vec![2],
        ed25519_private: vec![3],
        ed25519_public: vec![4],
        return_path: "pst-bounces".into(),
        return_path_mode: Default::default(),
        created_at: 5,
        verified_at: Some(6),
        verified_by: Some("dns".into()),
        next: None,
        previous: None,
    }
}

fn sender(account: &str) -> SenderRecord {
    SenderRecord {
        id: 0,
        account: account.into(),
        address: "ceo@other.example".into(),
        nickname: "ceo".into(),
        from_name: "CEO".into(),
        reply_to: String::new(),
        reply_to_name: String::new(),
        details: "{}".into(),
        created_at: 1,
        verified_at: Some(2),
        token_hash: Some(vec![9; 32]),
        token_expires_at: Some(i64::MAX),
        last_sent_at: None,
        window_start: 0,
        window_sends: 0,
    }
}

fn suppression(address: &str) -> Suppression {
    Suppression {
        address: address.into(),
        status: "5.1.1".into(),
        reason: "no such user".into(),
        created_at: 1,
    }
}

/// Everything `name` can see of its own data, as counts per kind.
async fn visible(store: &EmbeddedStore, name: &str) -> Vec<(&'static str, usize)> {
    let n = |s: &str| Some(s.to_owned());
    vec![
        (
            "api_keys",
            store.list_api_keys(n(name)).await.unwrap().len()
                + store
                    .find_api_key_by_hash(vec![7; 32])
                    .await
                    .unwrap()
                    .into_iter()
                    .count(),
        ),
        (
            "ip_access",
            store.ip_rules(name.into()).await.unwrap().len(),
        ),
        (
            "totp_failures",
            store.totp_failures(name.into(), 0).await.unwrap().len(),
        ),
        (
            "totp",
            store
                .get_totp(name.into())
                .await
                .unwrap()
                .into_iter()
                .count(),
        ),
        (
            "suppressions",
            store.suppressions(name.into()).await.unwrap().len()
                + store
                    .suppressed(
                        name.into(),
                        vec!["gone@dest.example".into(), "late@dest.example".into()],
                    )
                    .await
                    .unwrap()
                    .len(),
        ),
        (
            "event_webhooks",
            store
                .get_webhook(name.into())
                .await
                .unwrap()
                .into_iter()
                .count()
                + store
                    .list_webhooks()
                    .await
                    .unwrap()
                    .iter()
                    .filter(|w| w.account == name)
                    .count(),
        ),
        (
            "domains",
            store.list_domains(n(name)).await.unwrap().len()
                + store
                    .verified_domain("shop.example".into())
                    .await
                    .unwrap()
                    .into_iter()
                    .count(),
        ),
        (
            "verified_senders",
            store.list_senders(n(name)).await.unwrap().len(),
        ),
        (
            "messages",
            store
                .queued_messages(QueueFilter {
                    account: n(name),
                    ..Default::default()
                })
                .await
                .unwrap()
                .len(),
        ),
        (
            "events",
            store
                .events(EventFilter {
                    account: n(name),
                    ..Default::default()
                })
                .await
                .unwrap()
                .len()
                + store
                    .events(EventFilter {
                        account: n("acme"),
                        include_subusers: true,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .iter()
                    .filter(|e| e.account.as_deref() == Some(name))
                    .count(),
        ),
        (
            "quarantine_recipients",
            store
                .quarantined(QuarantineFilter {
                    account: n(name),
                    ..Default::default()
                })
                .await
                .unwrap()
                .len(),
        ),
        (
            "audit",
            store
                .audit(AuditFilter {
                    account: n(name),
                    ..Default::default()
                })
                .await
                .unwrap()
                .len(),
        ),
    ]
}

#[tokio::test]
async fn a_reused_name_inherits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    for tenant in ["acme", "rival"] {
        store.create_account(account(tenant, None)).await.unwrap();
    }
    store
        .create_account(account("shop", Some("acme")))
        .await
        .unwrap();
    let first_id = store.get_account("shop".into()).await.unwrap().unwrap().id;

    // The first "shop" uses everything an account can own.
    store
        .insert_api_key(ApiKeyRecord {
            id: "k-shop".into(),
            account: "shop".into(),
            name: "k".into(),
            hash: vec![7; 32],
            scopes: vec!["mail.send".into()],
            created_at: 1,
            expires_at: None,
            revoked_at: None,
            networks: vec![],
            last_used_at: None,
        })
        .await
        .unwrap();
    store
        .add_ip_rule("shop".into(), "192.0.2.0/24".into())
        .await
        .unwrap();
    store
        .put_totp(TotpRecord {
            account: "shop".into(),
            secret: vec![1; 20],
            confirmed: true,
            last_step: 0,
            recovery_hashes: vec!["aa".into()],
            created_at: 1,
        })
        .await
        .unwrap();
    store.begin_totp_attempt("shop".into(), 2, 0).await.unwrap();
    store
        .suppress("shop".into(), suppression("gone@dest.example"))
        .await
        .unwrap();
    store
        .put_webhook(WebhookRecord {
            account: "shop".into(),
            url: "https://hooks.example/shop".into(),
            enabled: true,
            kinds: vec![EventKind::Delivered],
            signing_key: None,
            cursor: 0,
            created_at: 1,
            updated_at: 1,
            last_success_at: None,
            last_error: None,
            last_error_at: None,
        })
        .await
        .unwrap();
    store.add_domain(domain("shop")).await.unwrap();
    store.add_sender(sender("shop")).await.unwrap();
    store.enqueue(message("shop")).await.unwrap();
    // Inbound mail held for its verified domain is the account's too.
    let mut inbound = message("shop");
    inbound.envelope.recipients[0].address = "staff@shop.example".into();
    inbound.envelope.recipients[0].domain = "shop.example".into();
    store
        .hold(HeldMessage {
            id: MessageId::generate(),
            held_at: 1,
            envelope: inbound.envelope,
            client_ip: None,
            helo: None,
            reason: "test".into(),
            head: Vec::new(),
            body: inbound.body,
        })
        .await
        .unwrap();
    store
        .append_audit(AuditEntry {
            at: postern_core::time::now_millis(),
            kind: "key.create".into(),
            actor: "shop".into(),
            account: Some("shop".into()),
            client_ip: Some("192.0.2.7".into()),
            detail: "secret plans".into(),
        })
        .await
        .unwrap();
    for (kind, n) in visible(&store, "shop").await {
        assert!(n > 0, "the first shop sees its own {kind}");
    }

    // Deleting it removes (and reports) what it owned, in every table.
    let removed = store
        .delete_account("shop".into())
        .await
        .unwrap()
        .expect("shop existed");
    for table in crate::schema::ACCOUNT_OWNED_TABLES {
        assert!(
            removed.get(*table).copied().unwrap_or(0) > 0,
            "deleting shop removed nothing from {table}: {removed:?}"
        );
    }
    assert!(store.delete_account("shop".into()).await.unwrap().is_none());

    // Writes for the dead account that lose the race with its deletion (a
    // bounce arriving, an event appended) bind to no account.
    store
        .suppress("shop".into(), suppression("late@dest.example"))
        .await
        .unwrap();
    store
        .append_event(postern_core::Event {
            seq: 0,
            at_millis: 1,
            message_id: "m-late".into(),
            kind: EventKind::Bounce,
            recipient: Some("late@dest.example".into()),
            detail: "late".into(),
            account: Some("shop".into()),
            info: Default::default(),
        })
        .await
        .unwrap();
    assert!(matches!(
        store.add_sender(sender("shop")).await,
        Err(StoreError::NotFound)
    ));

    // Another tenant takes the name: it starts empty.
    std::thread::sleep(std::time::Duration::from_millis(2));
    store
        .create_account(account("shop", Some("rival")))
        .await
        .unwrap();
    let second = store.get_account("shop".into()).await.unwrap().unwrap();
    assert_ne!(second.id, first_id, "ids are never reused");
    assert_eq!(second.parent.as_deref(), Some("rival"));
    for (kind, n) in visible(&store, "shop").await {
        assert_eq!(n, 0, "the second shop inherited the first one's {kind}");
    }
    // A session that authenticated as the first shop and stayed open
    // cannot queue mail as the second one.
    let mut late = message("shop");
    late.account_id = Some(first_id);
    assert!(matches!(
        store.enqueue(late).await,
        Err(StoreError::NotFound)
    ));
    let mut current = message("shop");
    current.account_id = Some(second.id);
    store.enqueue(current).await.unwrap();
    // And it can claim what the first one had, from scratch.
    store.add_domain(domain("shop")).await.unwrap();
    store.add_sender(sender("shop")).await.unwrap();
    assert_eq!(
        store.list_domains(Some("shop".into())).await.unwrap().len(),
        1
    );
}

/// Every table with an `account` column is either account-owned (listed,
/// with an `account_id` column) or the append-only audit log: a new table
/// that forgets the rule fails here.
#[tokio::test]
async fn every_account_column_is_covered() {
    let dir = tempfile::tempdir().unwrap();
    let _store = EmbeddedStore::open(dir.path()).unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("postern.db")).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    for table in tables {
        let columns: Vec<String> = conn
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        if !columns.iter().any(|c| c == "account") || table == "audit" {
            continue;
        }
        assert!(
            crate::schema::ACCOUNT_OWNED_TABLES.contains(&table.as_str()),
            "{table} has an account column but is not in ACCOUNT_OWNED_TABLES"
        );
        assert!(
            columns.iter().any(|c| c == "account_id"),
            "{table} has no account_id"
        );
    }
}

/// What an account sees of the queue over the API: its own messages and
/// its subusers', never another tenant's; the operator's exact filter
/// (without subusers) sees only the account named.
#[tokio::test]
async fn a_parent_sees_its_subusers_queue_and_no_one_elses() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::EmbeddedStore::open(dir.path()).unwrap();
    for (name, parent) in [("acme", None), ("acme-eu", Some("acme")), ("rival", None)] {
        store.create_account(account(name, parent)).await.unwrap();
    }
    for name in ["acme", "acme-eu", "rival"] {
        store.enqueue(message(name)).await.unwrap();
    }
    let seen = |account: &str, with_subusers: bool| {
        let store = &store;
        let account = account.to_owned();
        async move {
            let mut v: Vec<String> = store
                .queued_messages(QueueFilter {
                    account: Some(account),
                    with_subusers,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.account.unwrap_or_default())
                .collect();
            v.sort();
            v
        }
    };
    assert_eq!(seen("acme", true).await, ["acme", "acme-eu"]);
    assert_eq!(seen("acme", false).await, ["acme"]);
    assert_eq!(seen("acme-eu", true).await, ["acme-eu"]);
    assert_eq!(seen("rival", true).await, ["rival"]);
}
