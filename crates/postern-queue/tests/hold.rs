//! `Intake::hold` end to end through the embedded store, as a node and the
//! CLI share it: many sessions hold at once (group commit), each hold is
//! committed when it returns (another process's connection sees it), and
//! a release queues the message for delivery with its trace header.

use std::sync::Arc;

use postern_core::{Envelope, Recipient};
use postern_queue::{ClientInfo, Intake, Submission};
use postern_store::{
    AccountRecord, AccountStore, DomainRecord, DomainStore, EmbeddedStore, QuarantineFilter,
    QuarantineStore, QueueStore,
};

fn submission(n: usize) -> Submission {
    Submission {
        envelope: Envelope {
            mail_from: format!("s{n}@outside.example"),
            recipients: vec![Recipient {
                address: format!("user{n}@corp.example"),
                domain: "corp.example".into(),
                notify: vec![],
                orcpt: None,
            }],
            ..Default::default()
        },
        principal: None,
        client: ClientInfo {
            ip: "198.51.100.4".parse().unwrap(),
            helo: "mail.outside.example".into(),
            protocol: "ESMTPS",
            tls: Some("TLSv1.3 TLS13_AES_128_GCM_SHA256".into()),
        },
        body: format!("Subject: n{n}\r\n\r\nbody {n}\r\n").into_bytes(),
    }
}

#[tokio::test]
async fn concurrent_holds_are_durable_when_they_return_and_release_to_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    store
        .create_account(AccountRecord::new("corp", None, 1))
        .await
        .unwrap();
    store
        .add_domain(DomainRecord {
            id: 0,
            domain: "corp.example".into(),
            account: "corp".into(),
            selector: "pst1".into(),
            rsa_private: vec![1],
            rsa_public: vec![2],
            ed25519_private: vec![3],
            ed25519_public: vec![4],
            return_path: "pst-bounces".into(),
            return_path_mode: Default::default(),
            created_at: 1,
            verified_at: Some(2),
            verified_by: Some("operator:test".into()),
            next: None,
            previous: None,
        })
        .await
        .unwrap();
    let intake = Intake::new(store.clone(), "gw.example".into());
    let (commits_before, _) = store.commit_counts();
    let holds: Vec<_> = (0..40)
        .map(|n| {
            let intake = intake.clone();
            tokio::spawn(async move { intake.hold(submission(n), format!("spam score {n}")).await })
        })
        .collect();
    let mut ids = Vec::new();
    for h in holds {
        ids.push(h.await.unwrap().unwrap().to_string());
    }
    // Group commit: forty holds did not take forty commits.
    let (commits_after, _) = store.commit_counts();
    assert!(
        commits_after - commits_before < 40,
        "{commits_before} -> {commits_after}"
    );

    // Another connection to the same database (as `postern quarantine`
    // from another process) sees every hold that returned.
    let other = EmbeddedStore::open(dir.path()).unwrap();
    let seen = other
        .quarantined(QuarantineFilter {
            account: Some("corp".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(seen.len(), 40);
    for id in &ids {
        assert!(seen.iter().any(|m| &m.id == id), "{id} not seen");
    }
    assert!(seen
        .iter()
        .all(|m| m.recipients[0].account.as_deref() == Some("corp")));
    assert!(store
        .claim_due(i64::MAX / 2, 100, 1000)
        .await
        .unwrap()
        .is_empty());

    // Released by the other connection, the message is delivered by this one.
    let released = other
        .release_quarantined(
            ids[7].clone(),
            QuarantineFilter::default(),
            None,
            postern_core::time::now_millis(),
            "released by test".into(),
        )
        .await
        .unwrap();
    assert_eq!(released.len(), 1);
    let jobs = store.claim_due(i64::MAX / 2, 100, 1000).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].message_id.as_str(), ids[7]);
    let body = String::from_utf8(jobs[0].body.to_vec()).unwrap();
    assert!(
        body.starts_with("Received: from mail.outside.example ([198.51.100.4])"),
        "{body}"
    );
    assert!(body.contains(&format!("with ESMTPS id {}", ids[7])));
    assert!(body.ends_with("\r\n\r\nbody 7\r\n"), "{body}");
    let stats = other.quarantine_stats().await.unwrap();
    assert_eq!(stats.held, 39);
    let n = |a: &str| stats.actions.iter().find(|(k, _)| k == a).map(|(_, n)| *n);
    assert_eq!((n("held"), n("released")), (Some(40), Some(1)));
}
