//! What 1,000,000 deferred recipients cost the delivery loop: the same
//! work (enqueue, claim, settle) and the scheduler's two queries (`claim_due`,
//! `next_due`) timed with an empty queue and with a million deferred
//! recipients waiting for a retry a day away.
//!
//!   cargo run --release -p postern-store --example deferred_scan [-- N]
//!
//! The million are written straight into the database in one transaction
//! (enqueueing them one by one, each with its own fsync, would take hours
//! and measure nothing of interest); everything timed goes through the
//! store's API.

use std::sync::Arc;
use std::time::Instant;

use postern_core::{Envelope, MessageId, Recipient};
use postern_store::{EmbeddedStore, NewMessage, QueueStore, RecipientOutcome, Settlement};

const MESSAGES: usize = 5_000;
const CONCURRENCY: usize = 50;

fn message(i: usize, at: i64) -> NewMessage {
    NewMessage {
        account_id: None,
        head: Vec::new(),
        id: MessageId::generate(),
        received_at: at,
        envelope: Envelope {
            mail_from: "bench@example.org".into(),
            recipients: vec![Recipient {
                address: format!("r{i}@d{}.example", i % 100),
                domain: format!("d{}.example", i % 100),
                notify: vec![],
                orcpt: None,
            }],
            ..Default::default()
        },
        account: None,
        body: vec![b'x'; 1024],
        dropped: Vec::new(),
        detail: "bench".into(),
    }
}

/// One cycle of real work: MESSAGES enqueued by CONCURRENCY writers, then
/// claimed and settled as delivered in batches of 256, as the scheduler
/// does. Returns (messages per second, microseconds per claim_due call,
/// microseconds per next_due call).
async fn cycle(store: &Arc<EmbeddedStore>) -> (f64, f64, f64) {
    let now = postern_core::time::now_millis();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..MESSAGES).step_by(CONCURRENCY) {
                store.enqueue(message(i, now)).await.expect("enqueue");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let mut claims = 0u32;
    let mut claim_time = std::time::Duration::ZERO;
    let mut done = 0;
    while done < MESSAGES {
        let t = Instant::now();
        let jobs = store
            .claim_due(now + 1_000, 256, 600_000)
            .await
            .expect("claim");
        claim_time += t.elapsed();
        claims += 1;
        if jobs.is_empty() {
            break;
        }
        let outcomes: Vec<RecipientOutcome> = jobs
            .iter()
            .flat_map(|j| {
                j.recipients.iter().map(|r| RecipientOutcome {
                    message_id: j.message_id.clone(),
                    index: r.index,
                    recipient: r.address.clone(),
                    settlement: Settlement::Delivered,
                    detail: "250 ok".into(),
                    at: now + 1_000,
                    info: Default::default(),
                })
            })
            .collect();
        done += outcomes.len();
        store.settle(outcomes).await.expect("settle");
    }
    let rate = MESSAGES as f64 / start.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..100 {
        store.next_due().await.expect("next_due");
    }
    let next_due_us = t.elapsed().as_secs_f64() * 1e6 / 100.0;
    (
        rate,
        claim_time.as_secs_f64() * 1e6 / claims.max(1) as f64,
        next_due_us,
    )
}

fn insert_deferred(path: &std::path::Path, n: usize) -> rusqlite::Result<()> {
    let mut conn = rusqlite::Connection::open(path)?;
    let tx = conn.transaction()?;
    let later = postern_core::time::now_millis() + 86_400_000;
    {
        let mut m = tx.prepare(
            "INSERT INTO messages (id, received_at, mail_from, envelope, account, smtputf8, eight_bit, body)
             VALUES (?1, ?2, 'bench@example.org', '{}', NULL, 0, 0, ?3)",
        )?;
        let mut r = tx.prepare(
            "INSERT INTO recipients (message_id, idx, address, domain, notify, orcpt, status, attempts, next_attempt)
             VALUES (?1, 0, ?2, ?3, '', NULL, 0, 1, ?4)",
        )?;
        let body = vec![b'x'; 1024];
        for i in 0..n {
            let id = MessageId::generate();
            m.execute(rusqlite::params![id.as_str(), later - 86_400_000, body])?;
            r.execute(rusqlite::params![
                id.as_str(),
                format!("deferred{i}@slow{}.example", i % 1000),
                format!("slow{}.example", i % 1000),
                later + (i as i64 % 3_600_000)
            ])?;
        }
    }
    tx.commit()
}

#[tokio::main]
async fn main() {
    let deferred: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");

    let store = Arc::new(EmbeddedStore::open(dir.path()).expect("open"));
    cycle(&store).await; // warm-up
    let (empty_rate, empty_claim, empty_next) = cycle(&store).await;
    store.close();
    drop(store);

    let t = Instant::now();
    insert_deferred(&dir.path().join("postern.db"), deferred).expect("bulk insert");
    let fill_s = t.elapsed().as_secs_f64();

    let store = Arc::new(EmbeddedStore::open(dir.path()).expect("reopen"));
    let summary = store.queue_summary().await.expect("summary");
    cycle(&store).await; // warm-up
    let (full_rate, full_claim, full_next) = cycle(&store).await;
    println!(
        "{}",
        serde_json::json!({
            "scenario": format!("enqueue + claim + settle {MESSAGES} messages ({CONCURRENCY} writers), with 0 and with {deferred} deferred recipients waiting"),
            "deferred_waiting": summary.recipients_queued,
            "fill_seconds": (fill_s * 10.0).round() / 10.0,
            "empty": {"msgs_per_s": empty_rate.round(), "claim_due_us": empty_claim.round(), "next_due_us": empty_next.round()},
            "with_deferred": {"msgs_per_s": full_rate.round(), "claim_due_us": full_claim.round(), "next_due_us": full_next.round()},
            "ratio_msgs_per_s": ((full_rate / empty_rate) * 100.0).round() / 100.0,
        })
    );
    store.close();
}
