//! The embedded backend: one SQLite database in WAL mode under the data
//! directory.
//!
//! Durability and group commit: all writes go through one writer thread. It
//! takes every request waiting in its channel, runs each in its own savepoint
//! inside one transaction, commits once (`synchronous = FULL`, the default of
//! `store.synchronous`, fsyncs the WAL), and only then answers each request. Sessions that finish DATA while a
//! commit is in progress share the next commit, so the cost is one fsync per
//! batch, not per message. Reads use a small pool of separate connections
//! (WAL readers never block the writer).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use postern_core::config::StoreSynchronous;
use postern_core::{AttemptInfo, Event, EventKind, MessageId};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use crate::audit_anchor::{AnchorCheck, AnchorSource, AnchoredVerdict, AuditAnchor, AuditHead};

mod quarantine;
mod report_data;
mod reports;
use crate::schema;
use crate::*;

/// Requests taken into one commit at most; bounds the latency of the first.
const MAX_BATCH: usize = 1024;
/// Read connections kept open, and reads running at once. Reads beyond it
/// wait for a connection: opening one per read under load (as an unbounded
/// pool did) cost a schema parse and pragmas each time, which showed in
/// profiles.
const READ_POOL: usize = 8;
/// A CLI command holding the write lock makes the server wait, not fail.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

type Completion = Box<dyn FnOnce(std::result::Result<(), StoreError>) + Send>;
type WriteJob = Box<dyn FnOnce(&Connection) -> Completion + Send>;

pub struct EmbeddedStore {
    writer: Mutex<Option<mpsc::Sender<WriteJob>>>,
    /// Joined on close, so that what was sent before is committed (and the
    /// audit head recorded) when `close` returns.
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    read_permits: Arc<tokio::sync::Semaphore>,
    /// For single-row reads made for every message (the senders version):
    /// run on the caller's thread, since a WAL read of one row takes
    /// microseconds and a hop to the blocking pool cost more (two thread
    /// wake-ups per message) than the query.
    inline_reader: Mutex<Option<Connection>>,
    path: PathBuf,
    synchronous: StoreSynchronous,
    /// The newest audit entry appended by the batch being written; the
    /// writer records it in the anchor file once the batch is committed.
    pending_head: Arc<Mutex<Option<AuditHead>>>,
    anchor: Option<Arc<AuditAnchor>>,
    commits: Arc<CommitCounts>,
}

/// How many write transactions the writer committed, and how many write
/// operations (each a caller's request, e.g. one message queued) they
/// carried: group commit shows as fewer commits (each one a WAL fsync,
/// `synchronous = FULL`) than operations.
#[derive(Debug, Default)]
pub struct CommitCounts {
    commits: AtomicU64,
    operations: AtomicU64,
}

impl CommitCounts {
    /// (commits, operations) so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.commits.load(Ordering::Relaxed),
            self.operations.load(Ordering::Relaxed),
        )
    }
}

/// Creates `path` empty with mode 0600 if it does not exist, so SQLite opens
/// a file that is the owner's only (it creates new ones 0644 less the umask)
/// and gives its -wal and -shm files the same mode. An empty file is an
/// empty database to SQLite.
fn create_private_file(path: &Path) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .map(drop)
        .map_err(|e| StoreError::Backend(format!("create {}: {e}", path.display())))
}

impl EmbeddedStore {
    /// A one-row version read inline, on a connection of its own, rather
    /// than through the blocking pool: it is asked on every message or
    /// login and costs microseconds, less than the pool's round trip.
    fn inline_version(&self, sql: &str) -> Result<i64> {
        let mut guard = self.inline_reader.lock().map_err(|_| StoreError::Closed)?;
        if guard.is_none() {
            *guard = Some(open_connection(&self.path, self.synchronous)?);
        }
        let conn = guard.as_ref().ok_or(StoreError::Closed)?;
        let version = conn.prepare_cached(sql)?.query_row([], |r| r.get(0))?;
        Ok(version)
    }

    /// Opens (creating if needed) `<dir>/postern.db`.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with_anchor(dir, None)
    }

    /// Like [`open`](Self::open), and keeps the audit chain's head in the
    /// anchor's file after every commit that appended audit entries.
    pub fn open_with_anchor(dir: &Path, anchor: Option<AuditAnchor>) -> Result<Self> {
        Self::open_configured(dir, anchor, StoreSynchronous::Full)
    }

    /// Like [`open_with_anchor`](Self::open_with_anchor), with commits
    /// synced as `synchronous` says (`store.synchronous`).
    pub fn open_configured(
        dir: &Path,
        anchor: Option<AuditAnchor>,
        synchronous: StoreSynchronous,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend(format!("create {}: {e}", dir.display())))?;
        let path = dir.join("postern.db");
        create_private_file(&path)?;
        let mut conn = open_connection(&path, synchronous)?;
        schema::migrate(&mut conn)?;

        let (tx, rx) = mpsc::channel::<WriteJob>();
        let anchor = anchor.map(Arc::new);
        let pending_head = Arc::new(Mutex::new(None));
        let head_sink = HeadSink::new(pending_head.clone(), anchor.clone());
        let commits = Arc::new(CommitCounts::default());
        let counts = commits.clone();
        let writer_thread = std::thread::Builder::new()
            .name("postern-store-writer".into())
            .spawn(move || writer_loop(conn, rx, head_sink, &counts))
            .map_err(|e| StoreError::Backend(format!("spawn writer: {e}")))?;

        Ok(EmbeddedStore {
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(writer_thread)),
            readers: Arc::new(Mutex::new(Vec::new())),
            read_permits: Arc::new(tokio::sync::Semaphore::new(READ_POOL)),
            inline_reader: Mutex::new(None),
            path,
            synchronous,
            pending_head,
            anchor,
            commits,
        })
    }

    /// Write transactions committed and the operations they carried, since
    /// this store was opened.
    pub fn commit_counts(&self) -> (u64, u64) {
        self.commits.get()
    }

    /// Verifies the hash chain, then that it still holds each of
    /// `operator_anchors` and the head recorded in the anchor file.
    pub async fn verify_audit_anchored(
        &self,
        operator_anchors: Vec<AuditHead>,
    ) -> Result<AnchoredVerdict> {
        let entries = match self.verify_audit().await? {
            AuditVerification::Intact { entries } => entries,
            AuditVerification::BrokenAt { seq } => return Ok(AnchoredVerdict::Broken { seq }),
        };
        let recorded = match self.anchor.as_deref().map(AuditAnchor::recorded) {
            None => None,
            Some(Ok(head)) => head,
            Some(Err(e)) => return Ok(AnchoredVerdict::BadRecord(e)),
        };
        let anchors = operator_anchors
            .into_iter()
            .map(|a| (a, AnchorSource::Operator))
            .chain(recorded.clone().map(|a| (a, AnchorSource::Recorded)));
        for (anchor, source) in anchors {
            match self.check_audit_anchor(anchor.clone()).await? {
                AnchorCheck::Present => {}
                AnchorCheck::Missing { chain_len } => {
                    return Ok(AnchoredVerdict::Truncated {
                        anchor,
                        source,
                        chain_len,
                    })
                }
                AnchorCheck::Differs { found } => {
                    return Ok(AnchoredVerdict::Rewritten {
                        anchor,
                        source,
                        found,
                    })
                }
            }
        }
        Ok(AnchoredVerdict::Intact { entries, recorded })
    }

    pub fn audit_anchor(&self) -> Option<&AuditAnchor> {
        self.anchor.as_deref()
    }

    /// The newest audit entry, None when the log is empty.
    pub async fn audit_head(&self) -> Result<Option<AuditHead>> {
        self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                    [],
                    |r| {
                        Ok(AuditHead {
                            seq: r.get(0)?,
                            hash: r.get(1)?,
                        })
                    },
                )
                .optional()?)
        })
        .await
    }

    /// Whether the chain still holds the anchored entry with its hash. Run
    /// after `verify_audit` found the chain intact: then every entry before
    /// the anchored one is bound to it, and every later one links back to
    /// it, so this one comparison covers the whole anchored prefix.
    pub async fn check_audit_anchor(&self, anchor: AuditHead) -> Result<AnchorCheck> {
        self.read(move |conn| {
            let found: Option<Vec<u8>> = conn
                .query_row("SELECT hash FROM audit WHERE seq = ?1", [anchor.seq], |r| {
                    r.get(0)
                })
                .optional()?;
            Ok(match found {
                Some(h) if h == anchor.hash => AnchorCheck::Present,
                Some(found) => AnchorCheck::Differs { found },
                None => AnchorCheck::Missing {
                    chain_len: conn.query_row(
                        "SELECT COALESCE(MAX(seq), 0) FROM audit",
                        [],
                        |r| r.get(0),
                    )?,
                },
            })
        })
        .await
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the writer thread after the requests already sent are
    /// committed, and waits for it.
    pub fn close(&self) {
        if let Ok(mut w) = self.writer.lock() {
            w.take();
        }
        let thread = self.writer_thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            // Requests already sent hold no sender, so the writer sees the
            // channel close once it has committed them.
            let _ = thread.join();
        }
    }

    /// Runs `f` inside the next group commit and returns its result once the
    /// commit is durable.
    async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: WriteJob = Box::new(move |conn| {
            let result = in_savepoint(conn, f);
            Box::new(move |commit| {
                let _ = tx.send(commit.and(result));
            })
        });
        let sender = self
            .writer
            .lock()
            .map_err(|_| StoreError::Closed)?
            .clone()
            .ok_or(StoreError::Closed)?;
        sender.send(job).map_err(|_| StoreError::Closed)?;
        // Not held while waiting: `close` waits for the writer, which ends
        // only once every sender is gone.
        drop(sender);
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let readers = self.readers.clone();
        let path = self.path.clone();
        let synchronous = self.synchronous;
        let permit = self
            .read_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let pooled = readers.lock().ok().and_then(|mut p| p.pop());
            let conn = match pooled {
                Some(c) => c,
                None => open_connection(&path, synchronous)?,
            };
            let result = f(&conn);
            if let Ok(mut p) = readers.lock() {
                if p.len() < READ_POOL {
                    p.push(conn);
                }
            }
            result
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task: {e}")))?
    }
}

impl EmbeddedStore {
    /// One row of `sql`, mapped; None when there is none.
    async fn read_optional<T, P>(
        &self,
        sql: String,
        params: P,
        map: fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>>
    where
        T: Send + 'static,
        P: rusqlite::Params + Send + 'static,
    {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&sql)?
                .query_row(params, map)
                .optional()?)
        })
        .await
    }

    /// Every row of `sql`, mapped.
    async fn read_all<T, P>(
        &self,
        sql: String,
        params: P,
        map: fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>>
    where
        T: Send + 'static,
        P: rusqlite::Params + Send + 'static,
    {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params, map)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// The due recipients in order, each with the running total of its
/// messages' sizes (length() reads a blob's size from the record header,
/// not its content); a recipient is taken while the total with it stays
/// within `?4`, and the first one regardless when `?5`. A message with
/// several recipients counts once per recipient: an overestimate, on the
/// safe side. `LIMIT ?3 + 0`, not `LIMIT ?3`: the planner reads a bare
/// bound LIMIT and then (SQLite built with STAT4, as bundled) compiles the
/// statement again whenever its value changes, which it does on most
/// claims.
const CLAIM_DUE: &str = "WITH due AS (
        SELECT r.rowid AS rid, r.next_attempt AS at, length(m.body) AS len
        FROM recipients r JOIN messages m ON m.id = r.message_id
        WHERE r.status = 0 AND r.next_attempt <= ?1 AND r.lease_until <= ?1
        ORDER BY r.next_attempt LIMIT ?3 + 0),
     sized AS (
        SELECT rid,
               SUM(len) OVER (ORDER BY at, rid ROWS UNBOUNDED PRECEDING) AS total,
               ROW_NUMBER() OVER (ORDER BY at, rid) AS n
        FROM due)
     UPDATE recipients SET lease_until = ?2
     WHERE rowid IN (SELECT rid FROM sized WHERE total <= ?4 OR (n = 1 AND ?5))
     RETURNING message_id, idx, address, domain, attempts, notify, orcpt";

/// Statements kept compiled per connection (see `open_connection`).
const STATEMENT_CACHE: usize = 128;

fn open_connection(path: &Path, synchronous: StoreSynchronous) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL: readers do not block the writer. synchronous = FULL (the
    // default): every commit fsyncs the WAL, so an acknowledged message
    // survives power loss; NORMAL syncs only at checkpoints, OFF never.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let level = match synchronous {
        StoreSynchronous::Full => "FULL",
        StoreSynchronous::Normal => "NORMAL",
        StoreSynchronous::Off => "OFF",
    };
    conn.pragma_update(None, "synchronous", level)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Each operation of a group commit runs in a savepoint; its
    // sub-journal (and temporary b-trees) need no durability — the WAL
    // commit is what makes the batch durable — so they stay in memory
    // instead of costing file writes for every message.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // The writer alone runs some thirty distinct statements per message
    // and delivery; rusqlite's default of 16 cached statements evicted
    // them in turn, so each was compiled again (a tenth of the writer's
    // CPU in profiles).
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

fn in_savepoint<R>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
    // Cached statements: parsing these per operation showed in profiles.
    conn.prepare_cached("SAVEPOINT op")?.execute([])?;
    match f(conn) {
        Ok(r) => {
            conn.prepare_cached("RELEASE op")?.execute([])?;
            Ok(r)
        }
        Err(e) => {
            // One failed request must not undo the others in the batch.
            conn.execute_batch("ROLLBACK TO op; RELEASE op")?;
            Err(e)
        }
    }
}

/// The longest the recorded audit head lags behind the chain while the
/// writer is busy. Recording it (read and check the file, write a new one,
/// rename it over) after every commit that appended an entry cost an
/// eighth of the writer's CPU when every message came with a login of its
/// own; a head that is a moment old still anchors everything before it,
/// as one lost to a crash does.
const HEAD_RECORD_INTERVAL: Duration = Duration::from_millis(250);

/// Where the writer puts the audit head after a commit: at once when none
/// was recorded within `HEAD_RECORD_INTERVAL`, else when the interval is
/// over (the writer wakes for it), and on close.
struct HeadSink {
    pending: Arc<Mutex<Option<AuditHead>>>,
    anchor: Option<Arc<AuditAnchor>>,
    /// Committed, not yet recorded.
    unrecorded: Option<AuditHead>,
    last_recorded: Option<Instant>,
}

impl HeadSink {
    fn new(pending: Arc<Mutex<Option<AuditHead>>>, anchor: Option<Arc<AuditAnchor>>) -> Self {
        HeadSink {
            pending,
            anchor,
            unrecorded: None,
            last_recorded: None,
        }
    }

    /// After a batch: keep its newest audit entry if it committed, forget
    /// it if not (the entries are not in the database then); record it
    /// unless one was recorded moments ago.
    fn after_commit(&mut self, committed: bool) {
        let head = self.pending.lock().ok().and_then(|mut p| p.take());
        if let (Some(head), Some(_), true) = (head, &self.anchor, committed) {
            self.unrecorded = Some(head);
        }
        if self.due_in() == Some(Duration::ZERO) {
            self.record();
        }
    }

    /// How long until the unrecorded head must be recorded; None when
    /// there is none.
    fn due_in(&self) -> Option<Duration> {
        self.unrecorded.as_ref()?;
        Some(self.last_recorded.map_or(Duration::ZERO, |t| {
            HEAD_RECORD_INTERVAL.saturating_sub(t.elapsed())
        }))
    }

    /// Records the unrecorded head now.
    fn record(&mut self) {
        let (Some(head), Some(anchor)) = (self.unrecorded.take(), &self.anchor) else {
            return;
        };
        self.last_recorded = Some(Instant::now());
        // Only forward. Another process sharing the store may have recorded
        // a newer head already; and a recorded head at or past this one
        // means the chain was cut back and grew again: overwriting it would
        // erase the evidence `audit verify` reports.
        match anchor.recorded() {
            Ok(Some(r)) if r.seq > head.seq => return,
            Ok(Some(r)) if r.seq == head.seq && r.hash == head.hash => return,
            Ok(Some(r)) if r.seq >= head.seq => {
                tracing::error!(
                    recorded = r.seq,
                    appended = head.seq,
                    "audit: the chain is shorter than its recorded head (entries deleted?); run `postern audit verify`"
                );
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "audit: the recorded head cannot be read; not replacing it");
                return;
            }
        }
        if let Err(e) = anchor.record(&head) {
            tracing::warn!(error = %e, "audit: cannot record the chain head");
        }
    }
}

fn writer_loop(
    conn: Connection,
    rx: mpsc::Receiver<WriteJob>,
    mut heads: HeadSink,
    counts: &CommitCounts,
) {
    loop {
        let first = match heads.due_in() {
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
            Some(wait) => match rx.recv_timeout(wait) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    heads.record();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let begin = conn
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut s| s.execute([]))
            .map_err(StoreError::from);
        if let Err(e) = begin {
            tracing::error!(error = %e, "store: cannot begin a write transaction");
            for job in batch {
                // The job must still be run to obtain its completion; it runs
                // outside a transaction and its effect is reported as failed.
                job(&conn)(Err(e.clone()));
            }
            heads.after_commit(false);
            continue;
        }
        let size = batch.len();
        let completions: Vec<Completion> = batch.into_iter().map(|job| job(&conn)).collect();
        let commit = conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]))
            .map(|_| ())
            .map_err(StoreError::from);
        if let Err(e) = &commit {
            tracing::error!(error = %e, "store: commit failed");
            let _ = conn.execute_batch("ROLLBACK");
        }
        tracing::trace!(size, "store: group commit");
        if commit.is_ok() {
            counts.commits.fetch_add(1, Ordering::Relaxed);
            counts.operations.fetch_add(size as u64, Ordering::Relaxed);
            metrics::counter!("postern_store_commits_total").increment(1);
            metrics::counter!("postern_store_commit_operations_total").increment(size as u64);
        }
        heads.after_commit(commit.is_ok());
        for c in completions {
            c(commit.clone());
        }
    }
    // Closed: whatever was appended since the last record is recorded
    // before `close` returns (it waits for this thread), so a command that
    // appended entries and exits leaves its head behind.
    heads.record();
}

fn join_list(items: &[String]) -> String {
    items.join(",")
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

fn insert_event(
    conn: &Connection,
    at: i64,
    message_id: &str,
    kind: EventKind,
    recipient: Option<&str>,
    detail: &str,
    info: Option<&AttemptInfo>,
) -> Result<()> {
    let info = match info {
        Some(i) if !i.is_empty() => {
            Some(serde_json::to_string(i).map_err(|e| StoreError::Backend(e.to_string()))?)
        }
        _ => None,
    };
    // The account comes from the message, which is still queued whenever an
    // event is written for it (a message already gone gets its event with
    // no account). Two scalar subqueries, not one LEFT JOIN on the id: the
    // planner reads a bound value in a join's ON clause, and SQLite then
    // compiles the statement again on every use (see
    // `the_message_life_cycle_compiles_each_statement_once`).
    conn.prepare_cached(
        "INSERT INTO events (at, message_id, kind, recipient, detail, account, account_id, info)
         VALUES (?1, ?2, ?3, ?4, ?5,
                 (SELECT account FROM messages WHERE id = ?2),
                 (SELECT account_id FROM messages WHERE id = ?2), ?6)",
    )?
    .execute(params![
        at,
        message_id,
        kind.as_str(),
        recipient,
        detail,
        info
    ])?;
    Ok(())
}

/// Small messages are joined and bound at once; past this size the row is
/// inserted with a zero-filled blob and `head` and `body` are written into
/// it in place, so a large body is never copied to be joined.
const JOIN_BELOW: usize = 64 * 1024;

fn insert_message_row(
    conn: &Connection,
    msg: &NewMessage,
    envelope: &str,
    account_id: Option<i64>,
) -> Result<()> {
    let len = msg.head.len() + msg.body.len();
    let joined;
    let value: rusqlite::types::Value = if len < JOIN_BELOW {
        joined = [msg.head.as_slice(), msg.body.as_slice()].concat();
        rusqlite::types::Value::Blob(joined)
    } else {
        rusqlite::types::Value::Null
    };
    let mut stmt = conn.prepare_cached(
        "INSERT INTO messages (id, received_at, mail_from, envelope, account, smtputf8, eight_bit, body, account_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, COALESCE(?8, zeroblob(?10)), ?9)",
    )?;
    stmt.execute(params![
        msg.id.as_str(),
        msg.received_at,
        msg.envelope.mail_from,
        envelope,
        msg.account,
        msg.envelope.smtputf8,
        msg.envelope.body_type == postern_core::BodyType::EightBitMime,
        value,
        account_id,
        len as i64,
    ])?;
    if len >= JOIN_BELOW {
        use std::io::Write;
        let rowid = conn.last_insert_rowid();
        let mut blob = conn.blob_open(rusqlite::MAIN_DB, "messages", "body", rowid, false)?;
        blob.write_all(&msg.head)
            .and_then(|_| blob.write_all(&msg.body))
            .map_err(|e| StoreError::Backend(format!("writing the message body: {e}")))?;
    }
    Ok(())
}

#[async_trait]
impl QueueStore for EmbeddedStore {
    async fn record_refusal(&self, event: Event) -> Result<()> {
        EventStore::append_event(self, event).await
    }

    async fn enqueue(&self, msg: NewMessage) -> Result<()> {
        self.write(move |conn| {
            let envelope = serde_json::to_string(&msg.envelope)
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            // The sending account's id, looked up once: the message, its
            // events and the suppression check all go by it.
            let account_id: Option<i64> = match &msg.account {
                Some(name) => account_id_of(conn, name)?,
                None => None,
            };
            // A session that authenticated before its account was deleted
            // (and the name taken again) must not send as the new owner.
            if let Some(expected) = msg.account_id {
                if account_id != Some(expected) {
                    return Err(StoreError::NotFound);
                }
            }
            insert_message_row(conn, &msg, &envelope, account_id)?;
            let mut stmt = conn.prepare_cached(
                "INSERT INTO recipients (message_id, idx, address, domain, notify, orcpt, status, next_attempt)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7)",
            )?;
            // Recipients on the sending account's suppression list are
            // dropped here, inside the same commit: no extra round trip per
            // message, and no window between the check and the queueing.
            let mut dropped = msg.dropped.clone();
            if let Some(account) = account_id {
                let mut suppressed = conn.prepare_cached(
                    "SELECT 1 FROM suppressions WHERE account_id = ?1 AND address = lower(?2)",
                )?;
                for (i, r) in msg.envelope.recipients.iter().enumerate() {
                    if !dropped.iter().any(|(d, _)| *d == i) && suppressed.exists(params![account, r.address])? {
                        metrics::counter!("postern_recipients_dropped_total", "reason" => "suppressed").increment(1);
                        dropped.push((i, "dropped: the address is on this account's bounce suppression list".into()));
                    }
                }
            }
            for (i, r) in msg.envelope.recipients.iter().enumerate() {
                if dropped.iter().any(|(d, _)| *d == i) {
                    continue;
                }
                stmt.execute(params![
                    msg.id.as_str(),
                    i as i64,
                    r.address,
                    r.domain,
                    join_list(&r.notify),
                    r.orcpt,
                    msg.received_at,
                ])?;
            }
            // As SendGrid does: `processed` for every recipient, then
            // `dropped` for those that will not be attempted.
            for r in &msg.envelope.recipients {
                insert_event(conn, msg.received_at, msg.id.as_str(), EventKind::Processed, Some(&r.address), &msg.detail, None)?;
            }
            for (i, reason) in &dropped {
                let rcpt = msg.envelope.recipients.get(*i).map(|r| r.address.as_str());
                insert_event(conn, msg.received_at, msg.id.as_str(), EventKind::Dropped, rcpt, reason, None)?;
            }
            // Nothing left to deliver: the message leaves the queue at once.
            if dropped.len() >= msg.envelope.recipients.len() {
                conn.execute("DELETE FROM messages WHERE id = ?1", [msg.id.as_str()])?;
            }
            Ok(())
        })
        .await
    }

    async fn hold(&self, msg: HeldMessage) -> Result<()> {
        self.hold_impl(msg).await
    }

    async fn claim_due_within(
        &self,
        now: i64,
        limit: usize,
        lease_millis: i64,
        max_bytes: i64,
        at_least_one: bool,
    ) -> Result<Vec<DeliveryJob>> {
        self.write(move |conn| {
            let mut claimed: BTreeMap<(String, String), Vec<JobRecipient>> = BTreeMap::new();
            {
                let mut stmt = conn.prepare_cached(CLAIM_DUE)?;
                let rows = stmt.query_map(params![now, now + lease_millis, limit as i64, max_bytes, at_least_one], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(3)?,
                        JobRecipient {
                            index: r.get::<_, i64>(1)? as u32,
                            address: r.get(2)?,
                            attempts: r.get::<_, i64>(4)? as u32,
                            notify: split_list(&r.get::<_, String>(5)?),
                            orcpt: r.get(6)?,
                        },
                    ))
                })?;
                for row in rows {
                    let (message_id, domain, rcpt) = row?;
                    claimed.entry((message_id, domain)).or_default().push(rcpt);
                }
            }
            struct Loaded {
                received_at: i64,
                mail_from: String,
                smtputf8: bool,
                eight_bit: bool,
                body: Arc<Vec<u8>>,
                envelope: postern_core::Envelope,
                account: Option<String>,
            }
            let mut loaded: BTreeMap<String, Loaded> = BTreeMap::new();
            let mut jobs = Vec::with_capacity(claimed.len());
            let mut load = conn.prepare_cached(
                "SELECT received_at, mail_from, smtputf8, eight_bit, body, envelope, account FROM messages WHERE id = ?1",
            )?;
            for ((message_id, domain), mut recipients) in claimed {
                if !loaded.contains_key(&message_id) {
                    let row = load.query_row([&message_id], |r| {
                        let envelope: String = r.get(5)?;
                        Ok(Loaded {
                            received_at: r.get(0)?,
                            mail_from: r.get(1)?,
                            smtputf8: r.get(2)?,
                            eight_bit: r.get(3)?,
                            body: Arc::new(r.get::<_, Vec<u8>>(4)?),
                            envelope: serde_json::from_str(&envelope).unwrap_or_default(),
                            account: r.get(6)?,
                        })
                    })?;
                    loaded.insert(message_id.clone(), row);
                }
                let Some(m) = loaded.get(&message_id) else {
                    continue;
                };
                let Some(id) = MessageId::parse(&message_id) else {
                    return Err(StoreError::Backend(format!("corrupt message id {message_id:?}")));
                };
                recipients.sort_by_key(|r| r.index);
                let job = |recipients| DeliveryJob {
                    message_id: id.clone(),
                    received_at: m.received_at,
                    mail_from: m.mail_from.clone(),
                    domain: domain.clone(),
                    recipients,
                    body: m.body.clone(),
                    smtputf8: m.smtputf8,
                    eight_bit: m.eight_bit,
                    envid: m.envelope.envid.clone(),
                    ret: m.envelope.ret,
                    account: m.account.clone(),
                    return_path: m.envelope.return_path.clone(),
                };
                if m.envelope.return_path.is_some() {
                    // A VERP sender names one recipient: one transaction each.
                    jobs.extend(recipients.into_iter().map(|r| job(vec![r])));
                } else {
                    jobs.push(job(recipients));
                }
            }
            Ok(jobs)
        })
        .await
    }

    async fn settle(&self, outcomes: Vec<RecipientOutcome>) -> Result<()> {
        self.write(move |conn| {
            let mut touched = std::collections::BTreeSet::new();
            for o in &outcomes {
                let (status, next) = match o.settlement {
                    Settlement::Delivered => (1, o.at),
                    Settlement::Failed => (2, o.at),
                    Settlement::Deferred { next_attempt } => (0, next_attempt),
                };
                let changed = conn.prepare_cached(
                    "UPDATE recipients SET status = ?3, attempts = attempts + 1, next_attempt = ?4,
                        lease_until = 0, last_reply = ?5
                     WHERE message_id = ?1 AND idx = ?2 AND status = 0",
                )?
                .execute(params![o.message_id.as_str(), o.index as i64, status, next, o.detail])?;
                if changed == 0 {
                    // Deleted from the queue (or settled by another node)
                    // while this attempt ran: nothing to record.
                    continue;
                }
                insert_event(conn, o.at, o.message_id.as_str(), o.event_kind(), Some(&o.recipient), &o.detail, Some(&o.info))?;
                touched.insert(o.message_id.as_str().to_owned());
            }
            // A message whose recipients are all settled for good leaves the
            // queue; its history stays in the event log.
            for id in touched {
                conn.prepare_cached(
                    "DELETE FROM messages WHERE id = ?1
                     AND NOT EXISTS (SELECT 1 FROM recipients WHERE message_id = ?1 AND status = 0)",
                )?
                .execute([&id])?;
            }
            Ok(())
        })
        .await
    }

    async fn release_all_leases(&self) -> Result<u64> {
        self.write(|conn| {
            Ok(conn.execute(
                "UPDATE recipients SET lease_until = 0 WHERE status = 0 AND lease_until > 0",
                [],
            )? as u64)
        })
        .await
    }

    async fn next_due(&self) -> Result<Option<i64>> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT MIN(next_attempt) FROM recipients WHERE status = 0")?
                .query_row([], |r| r.get::<_, Option<i64>>(0))?)
        })
        .await
    }

    async fn postpone(&self, recipients: Vec<(MessageId, u32)>, next_attempt: i64) -> Result<()> {
        self.write(move |conn| {
            let mut stmt = conn.prepare_cached(
                "UPDATE recipients SET next_attempt = ?3, lease_until = 0
                 WHERE message_id = ?1 AND idx = ?2 AND status = 0",
            )?;
            for (id, idx) in &recipients {
                stmt.execute(params![id.as_str(), *idx as i64, next_attempt])?;
            }
            Ok(())
        })
        .await
    }

    async fn queued_messages(&self, f: QueueFilter) -> Result<Vec<QueuedMessage>> {
        self.queued_messages_impl(f).await
    }

    async fn queued_message(&self, id: String) -> Result<Option<QueuedMessage>> {
        self.queued_message_impl(id).await
    }

    async fn retry_now(&self, id: Option<String>, f: QueueFilter, now: i64) -> Result<u64> {
        self.retry_now_impl(id, f, now).await
    }

    async fn delete_queued(&self, id: String, reason: String, now: i64) -> Result<u64> {
        self.delete_queued_impl(id, reason, now).await
    }

    async fn queue_summary(&self) -> Result<QueueSummary> {
        let now = postern_core::time::now_millis();
        self.read(move |conn| {
            let messages: i64 = conn.query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))?;
            let (queued, leased): (i64, i64) = conn.query_row(
                "SELECT COUNT(*), COALESCE(SUM(lease_until > ?1), 0) FROM recipients WHERE status = 0",
                [now],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            // Rows go in in arrival order, so the first row is the oldest:
            // no index on received_at needed.
            let oldest: Option<i64> = conn
                .query_row(
                    "SELECT received_at FROM messages ORDER BY rowid LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(QueueSummary {
                messages: messages as u64,
                recipients_queued: queued as u64,
                recipients_leased: leased as u64,
                oldest_received_at: oldest,
            })
        })
        .await
    }
}

fn key_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: r.get(0)?,
        account: r.get(1)?,
        name: r.get(2)?,
        hash: r.get(3)?,
        scopes: split_list(&r.get::<_, String>(4)?),
        created_at: r.get(5)?,
        expires_at: r.get(6)?,
        revoked_at: r.get(7)?,
        networks: split_list(&r.get::<_, String>(8)?),
        last_used_at: r.get(9)?,
    })
}

const KEY_COLUMNS: &str =
    "id, account, name, hash, scopes, created_at, expires_at, revoked_at, networks, last_used_at";

#[async_trait]
impl CredentialStore for EmbeddedStore {
    async fn insert_api_key(&self, key: ApiKeyRecord) -> Result<()> {
        self.write(move |conn| {
            let Some(account_id) = account_id_of(conn, &key.account)? else {
                return Err(StoreError::NotFound);
            };
            conn.execute(
                "INSERT INTO api_keys (id, account, name, hash, scopes, created_at, expires_at, revoked_at, networks, account_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    key.id,
                    key.account,
                    key.name,
                    key.hash,
                    join_list(&key.scopes),
                    key.created_at,
                    key.expires_at,
                    key.revoked_at,
                    join_list(&key.networks),
                    account_id
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn auth_version(&self) -> Result<i64> {
        self.inline_version("SELECT version FROM auth_config_version WHERE id = 1")
    }

    async fn find_api_key_by_hash(&self, hash: Vec<u8>) -> Result<Option<ApiKeyRecord>> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = ?1 AND {LIVE}"
                ))?
                .query_row([hash], key_from_row)
                .optional()?)
        })
        .await
    }

    async fn revoke_api_key(&self, id: String, at: i64) -> Result<bool> {
        self.write(move |conn| {
            Ok(conn.execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, at],
            )? == 1)
        })
        .await
    }

    async fn list_api_keys(&self, account: Option<String>) -> Result<Vec<ApiKeyRecord>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE {LIVE} AND (?1 IS NULL OR account_id = {ID_OF_1}) ORDER BY created_at, id"
            ))?;
            let rows = stmt.query_map([account], key_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn update_api_key(
        &self,
        id: String,
        name: Option<String>,
        scopes: Option<Vec<String>>,
    ) -> Result<bool> {
        self.write(move |conn| {
            let found =
                conn.query_row("SELECT COUNT(*) FROM api_keys WHERE id = ?1", [&id], |r| {
                    r.get::<_, i64>(0)
                })? == 1;
            if let Some(n) = name {
                conn.execute(
                    "UPDATE api_keys SET name = ?2 WHERE id = ?1",
                    params![id, n],
                )?;
            }
            if let Some(s) = scopes {
                conn.execute(
                    "UPDATE api_keys SET scopes = ?2 WHERE id = ?1",
                    params![id, join_list(&s)],
                )?;
            }
            Ok(found)
        })
        .await
    }

    async fn touch_api_key(&self, id: String, at: i64) -> Result<()> {
        self.write(move |conn| {
            conn.execute(
                "UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1",
                params![id, at],
            )?;
            Ok(())
        })
        .await
    }

    async fn secret(&self, name: &'static str, len: usize) -> Result<Vec<u8>> {
        let mut fresh = vec![0u8; len];
        rand_fill(&mut fresh)?;
        self.write(move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO secrets (name, value) VALUES (?1, ?2)",
                params![name, fresh],
            )?;
            Ok(
                conn.query_row("SELECT value FROM secrets WHERE name = ?1", [name], |r| {
                    r.get(0)
                })?,
            )
        })
        .await
    }
}

fn rand_fill(buf: &mut [u8]) -> Result<()> {
    use std::io::Read;
    // The OS generator; the store has no other need for a random crate.
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| StoreError::Backend(format!("OS random source: {e}")))
}

/// A row is live while the account it was written for exists: its id
/// names a current account (ids are never handed out twice).
const LIVE: &str = "account_id IN (SELECT id FROM accounts)";
/// The opposite of LIVE (NULL-safe: a row written for no existing account
/// has a NULL id).
const DEAD: &str = "(account_id IS NULL OR account_id NOT IN (SELECT id FROM accounts))";
/// The current id of the account named by parameter 1 (NULL when there is
/// none, which matches no row).
const ID_OF_1: &str = "(SELECT id FROM accounts WHERE name = ?1)";

/// The id of the account with this name, if it exists.
fn account_id_of(conn: &Connection, name: &str) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT id FROM accounts WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?)
}

fn account_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AccountRecord> {
    Ok(AccountRecord {
        id: r.get(11)?,
        name: r.get(0)?,
        parent: r.get(1)?,
        disabled: r.get(2)?,
        allow_password_auth: r.get(3)?,
        password_hash: r.get(4)?,
        created_at: r.get(5)?,
        email: r.get(6)?,
        cram_md5: r.get(7)?,
        max_messages_per_hour: r.get(8)?,
        ip_pool: r.get(9)?,
        sender_alignment: r.get(10)?,
        require_2fa_for_credentials: r.get(12)?,
    })
}

const ACCOUNT_COLUMNS: &str =
    "name, parent, disabled, allow_password_auth, password_hash, created_at, email, cram_md5, max_messages_per_hour, ip_pool, sender_alignment, id, require_2fa_for_credentials";

#[async_trait]
impl AccountStore for EmbeddedStore {
    async fn create_account(&self, a: AccountRecord) -> Result<()> {
        self.write(move |conn| {
            if let Some(parent) = &a.parent {
                let grandparent: Option<Option<String>> = conn
                    .query_row(
                        "SELECT parent FROM accounts WHERE name = ?1",
                        [parent],
                        |r| r.get(0),
                    )
                    .optional()?;
                match grandparent {
                    None => return Err(StoreError::NotFound),
                    // Subusers have no subusers of their own.
                    Some(Some(_)) => return Err(StoreError::Conflict),
                    Some(None) => {}
                }
            }
            if account_id_of(conn, &a.name)?.is_some() {
                return Err(StoreError::Conflict);
            }
            // A fresh id, higher than any ever issued (the caller's is ignored).
            conn.execute("INSERT INTO account_ids DEFAULT VALUES", [])?;
            let id = conn.last_insert_rowid();
            conn.execute(
                &format!(
                    "INSERT INTO accounts ({ACCOUNT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
                ),
                params![
                    a.name,
                    a.parent,
                    a.disabled,
                    a.allow_password_auth,
                    a.password_hash,
                    a.created_at,
                    a.email,
                    a.cram_md5,
                    a.max_messages_per_hour,
                    a.ip_pool,
                    a.sender_alignment,
                    id,
                    a.require_2fa_for_credentials
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_account(&self, name: String) -> Result<Option<AccountRecord>> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE name = ?1"
                ))?
                .query_row([name], account_from_row)
                .optional()?)
        })
        .await
    }

    async fn list_accounts(&self) -> Result<Vec<AccountRecord>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY COALESCE(parent, name), parent IS NOT NULL, name"
            ))?;
            let rows = stmt.query_map([], account_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn update_account(&self, name: String, u: AccountUpdate) -> Result<bool> {
        self.write(move |conn| {
            let exists = conn.query_row(
                "SELECT COUNT(*) FROM accounts WHERE name = ?1",
                [&name],
                |r| r.get::<_, i64>(0),
            )? == 1;
            if !exists {
                return Ok(false);
            }
            if let Some(d) = u.disabled {
                conn.execute(
                    "UPDATE accounts SET disabled = ?2 WHERE name = ?1",
                    params![name, d],
                )?;
            }
            if let Some(p) = u.allow_password_auth {
                conn.execute(
                    "UPDATE accounts SET allow_password_auth = ?2 WHERE name = ?1",
                    params![name, p],
                )?;
            }
            if let Some(a) = u.sender_alignment {
                conn.execute(
                    "UPDATE accounts SET sender_alignment = ?2 WHERE name = ?1",
                    params![name, a],
                )?;
            }
            if let Some(r) = u.require_2fa_for_credentials {
                conn.execute(
                    "UPDATE accounts SET require_2fa_for_credentials = ?2 WHERE name = ?1",
                    params![name, r],
                )?;
            }
            if let Some(p) = u.ip_pool {
                conn.execute(
                    "UPDATE accounts SET ip_pool = ?2 WHERE name = ?1",
                    params![name, p],
                )?;
            }
            if let Some(m) = u.max_messages_per_hour {
                conn.execute(
                    "UPDATE accounts SET max_messages_per_hour = ?2 WHERE name = ?1",
                    params![name, m],
                )?;
            }
            if let Some(c) = u.cram_md5 {
                conn.execute(
                    "UPDATE accounts SET cram_md5 = ?2 WHERE name = ?1",
                    params![name, c],
                )?;
            }
            if let Some(h) = u.password_hash {
                conn.execute(
                    "UPDATE accounts SET password_hash = ?2 WHERE name = ?1",
                    params![name, h],
                )?;
            }
            Ok(true)
        })
        .await
    }

    async fn add_ip_rule(&self, account: String, cidr: String) -> Result<()> {
        let now = postern_core::time::now_millis();
        self.write(move |conn| {
            let Some(account_id) = account_id_of(conn, &account)? else {
                return Err(StoreError::NotFound);
            };
            conn.execute(
                "INSERT INTO ip_access (account, cidr, created_at, account_id) VALUES (?1, ?2, ?3, ?4)",
                params![account, cidr, now, account_id],
            )?;
            Ok(())
        })
        .await
    }

    async fn remove_ip_rule(&self, account: String, cidr: String) -> Result<bool> {
        self.write(move |conn| {
            Ok(conn.execute(
                &format!("DELETE FROM ip_access WHERE account_id = {ID_OF_1} AND cidr = ?2"),
                params![account, cidr],
            )? == 1)
        })
        .await
    }

    async fn remove_ip_rule_by_id(&self, account: String, id: i64) -> Result<bool> {
        self.write(move |conn| {
            Ok(conn.execute(
                &format!("DELETE FROM ip_access WHERE account_id = {ID_OF_1} AND rowid = ?2"),
                params![account, id],
            )? == 1)
        })
        .await
    }

    async fn ip_rules(&self, account: String) -> Result<Vec<IpRule>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT rowid, cidr, created_at FROM ip_access WHERE account_id = {ID_OF_1} ORDER BY rowid"
            ))?;
            let rows = stmt.query_map([account], |r| {
                Ok(IpRule {
                    id: r.get(0)?,
                    cidr: r.get(1)?,
                    created_at: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn delete_account(&self, name: String) -> Result<Option<BTreeMap<String, u64>>> {
        self.write(move |conn| {
            let children: i64 = conn.query_row(
                "SELECT COUNT(*) FROM accounts WHERE parent = ?1",
                [&name],
                |r| r.get(0),
            )?;
            if children > 0 {
                return Err(StoreError::Conflict);
            }
            let Some(id) = account_id_of(conn, &name)? else {
                return Ok(None);
            };
            // Everything the account owns goes with it, in the same commit:
            // by id, and by name for rows that lost the race with an
            // earlier deletion of the same name (their id is dead anyway).
            let mut removed = BTreeMap::new();
            for table in crate::schema::ACCOUNT_OWNED_TABLES {
                let n = conn.execute(
                    &format!("DELETE FROM {table} WHERE account_id = ?1 OR account = ?2"),
                    params![id, name],
                )?;
                removed.insert((*table).to_owned(), n as u64);
            }
            // A held message whose every recipient was the account's goes
            // with them; one also held for others stays for them.
            conn.execute(
                "DELETE FROM quarantine WHERE NOT EXISTS
                     (SELECT 1 FROM quarantine_recipients WHERE quarantine_id = quarantine.id)",
                [],
            )?;
            conn.execute("DELETE FROM accounts WHERE id = ?1", [id])?;
            Ok(Some(removed))
        })
        .await
    }
}

fn audit_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(AuditRecord, Vec<u8>)> {
    Ok((
        AuditRecord {
            seq: r.get(0)?,
            entry: AuditEntry {
                at: r.get(1)?,
                kind: r.get(2)?,
                actor: r.get(3)?,
                account: r.get(4)?,
                client_ip: r.get(5)?,
                detail: r.get(6)?,
            },
            hash: r.get(8)?,
        },
        r.get(7)?,
    ))
}

const AUDIT_COLUMNS: &str = "seq, at, kind, actor, account, client_ip, detail, prev_hash, hash";

#[async_trait]
impl AuditStore for EmbeddedStore {
    async fn append_audit(&self, entry: AuditEntry) -> Result<i64> {
        let pending = self.pending_head.clone();
        self.write(move |conn| {
            // The single writer serialises appends, so reading the last hash
            // and inserting after it cannot interleave with another append.
            let last: Option<(i64, Vec<u8>)> = conn
                .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let (seq, prev) = match last {
                Some((s, h)) => (s + 1, h),
                None => (1, crate::audit_chain::GENESIS.to_vec()),
            };
            let hash = crate::audit_chain::row_hash(&prev, seq, &entry);
            conn.prepare_cached(&format!(
                "INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))?
            .execute(params![
                seq,
                entry.at,
                entry.kind,
                entry.actor,
                entry.account,
                entry.client_ip,
                entry.detail,
                prev,
                hash
            ])?;
            // Appends run in order on the writer thread, so the last one of
            // a batch is the batch's head.
            if let Ok(mut p) = pending.lock() {
                *p = Some(AuditHead { seq, hash });
            }
            Ok(seq)
        })
        .await
    }

    async fn audit(&self, f: AuditFilter) -> Result<Vec<AuditRecord>> {
        self.read(move |conn| {
            let kind_prefix = f.kind.as_ref().filter(|k| k.ends_with('.')).cloned();
            let kind_exact = f.kind.as_ref().filter(|k| !k.ends_with('.')).cloned();
            // An account's view of the log starts when it was created: the
            // entries of an earlier, deleted account of the same name are
            // not its history (the operator still sees them unfiltered, or
            // by name once no account has it).
            let mut stmt = conn.prepare(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit
                 WHERE (?1 IS NULL OR (account = ?1
                        AND at >= COALESCE((SELECT created_at FROM accounts WHERE name = ?1), 0)))
                   AND (?2 IS NULL OR kind = ?2)
                   AND (?3 IS NULL OR substr(kind, 1, length(?3)) = ?3)
                   AND (?4 IS NULL OR at >= ?4)
                   AND (?5 IS NULL OR at <= ?5)
                 ORDER BY seq DESC LIMIT ?6"
            ))?;
            let limit = f.limit.map(|n| n as i64).unwrap_or(-1);
            let rows = stmt.query_map(
                params![f.account, kind_exact, kind_prefix, f.since, f.until, limit],
                audit_from_row,
            )?;
            let mut out: Vec<AuditRecord> = rows
                .map(|r| r.map(|(rec, _)| rec))
                .collect::<rusqlite::Result<_>>()?;
            out.reverse();
            Ok(out)
        })
        .await
    }

    async fn verify_audit(&self) -> Result<AuditVerification> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare(&format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq"))?;
            let mut rows = stmt.query([])?;
            let mut prev = crate::audit_chain::GENESIS.to_vec();
            let mut expected_seq = 1;
            let mut n = 0u64;
            while let Some(row) = rows.next()? {
                let (rec, stored_prev) = audit_from_row(row)?;
                let recomputed = crate::audit_chain::row_hash(&prev, rec.seq, &rec.entry);
                if rec.seq != expected_seq || stored_prev != prev || recomputed != rec.hash {
                    return Ok(AuditVerification::BrokenAt { seq: rec.seq });
                }
                prev = rec.hash;
                expected_seq += 1;
                n += 1;
            }
            Ok(AuditVerification::Intact { entries: n })
        })
        .await
    }
}

#[async_trait]
impl TotpStore for EmbeddedStore {
    async fn put_totp(&self, r: TotpRecord) -> Result<()> {
        self.write(move |conn| {
            let Some(account_id) = account_id_of(conn, &r.account)? else {
                return Err(StoreError::NotFound);
            };
            conn.execute(
                "INSERT OR REPLACE INTO totp (account, secret, confirmed, last_step, recovery_codes, created_at, account_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![r.account, r.secret, r.confirmed, r.last_step, join_list(&r.recovery_hashes), r.created_at, account_id],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_totp(&self, account: String) -> Result<Option<TotpRecord>> {
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT account, secret, confirmed, last_step, recovery_codes, created_at FROM totp WHERE account_id = {ID_OF_1}"),
                    [account],
                    |r| {
                        Ok(TotpRecord {
                            account: r.get(0)?,
                            secret: r.get(1)?,
                            confirmed: r.get(2)?,
                            last_step: r.get(3)?,
                            recovery_hashes: split_list(&r.get::<_, String>(4)?),
                            created_at: r.get(5)?,
                        })
                    },
                )
                .optional()?)
        })
        .await
    }

    async fn accept_totp_step(&self, account: String, step: i64) -> Result<bool> {
        self.write(move |conn| {
            Ok(conn.execute(
                &format!("UPDATE totp SET last_step = ?2, confirmed = 1 WHERE account_id = {ID_OF_1} AND last_step < ?2"),
                params![account, step],
            )? == 1)
        })
        .await
    }

    async fn use_recovery_code(&self, account: String, hash: String) -> Result<bool> {
        self.write(move |conn| {
            let codes: Option<String> = conn
                .query_row(
                    &format!("SELECT recovery_codes FROM totp WHERE account_id = {ID_OF_1}"),
                    [&account],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(codes) = codes else { return Ok(false) };
            let mut list = split_list(&codes);
            let Some(pos) = list.iter().position(|h| *h == hash) else {
                return Ok(false);
            };
            list.remove(pos);
            conn.execute(
                &format!("UPDATE totp SET recovery_codes = ?2 WHERE account_id = {ID_OF_1}"),
                params![account, join_list(&list)],
            )?;
            Ok(true)
        })
        .await
    }

    async fn delete_totp(&self, account: String) -> Result<bool> {
        self.write(move |conn| {
            Ok(conn.execute(
                &format!("DELETE FROM totp WHERE account_id = {ID_OF_1}"),
                [account],
            )? == 1)
        })
        .await
    }

    async fn totp_failures(&self, account: String, since: i64) -> Result<Vec<i64>> {
        self.read_all(
            format!(
                "SELECT at FROM totp_failures WHERE account_id = {ID_OF_1} AND at > ?2 ORDER BY at"
            ),
            (account, since),
            |r| r.get(0),
        )
        .await
    }

    async fn begin_totp_attempt(
        &self,
        account: String,
        at: i64,
        since: i64,
    ) -> Result<(i64, Vec<i64>)> {
        // One write transaction (the single writer serialises them): the
        // count each attempt sees includes every attempt before it.
        self.write(move |conn| {
            let Some(account_id) = account_id_of(conn, &account)? else {
                return Err(StoreError::NotFound);
            };
            conn.execute(
                "DELETE FROM totp_failures WHERE account_id = ?1 AND at <= ?2",
                params![account_id, since],
            )?;
            conn.execute(
                "INSERT INTO totp_failures (account, account_id, at) VALUES (?1, ?2, ?3)",
                params![account, account_id, at],
            )?;
            let id = conn.last_insert_rowid();
            let mut stmt = conn.prepare_cached(
                "SELECT at FROM totp_failures WHERE account_id = ?1 AND at > ?2 ORDER BY at, rowid",
            )?;
            let rows = stmt.query_map(params![account_id, since], |r| r.get(0))?;
            Ok((id, rows.collect::<rusqlite::Result<Vec<i64>>>()?))
        })
        .await
    }

    async fn forget_totp_attempt(&self, account: String, id: i64) -> Result<()> {
        self.write(move |conn| {
            conn.execute(
                &format!("DELETE FROM totp_failures WHERE rowid = ?2 AND account_id = {ID_OF_1}"),
                params![account, id],
            )?;
            Ok(())
        })
        .await
    }

    async fn clear_totp_failures(&self, account: String) -> Result<()> {
        self.write(move |conn| {
            conn.execute(
                &format!("DELETE FROM totp_failures WHERE account_id = {ID_OF_1}"),
                [account],
            )?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl SuppressionStore for EmbeddedStore {
    async fn suppress(&self, account: String, e: Suppression) -> Result<()> {
        self.write(move |conn| {
            conn.execute(
                &format!(
                    "INSERT OR REPLACE INTO suppressions (account, address, status, reason, created_at, account_id)
                     VALUES (?1, lower(?2), ?3, ?4, ?5, {ID_OF_1})"
                ),
                params![account, e.address, e.status, e.reason, e.created_at],
            )?;
            Ok(())
        })
        .await
    }

    async fn suppressed(&self, account: String, addresses: Vec<String>) -> Result<Vec<String>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT 1 FROM suppressions WHERE account_id = {ID_OF_1} AND address = lower(?2)"
            ))?;
            let mut out = Vec::new();
            for a in addresses {
                if stmt.exists(params![account, a])? {
                    out.push(a);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn suppressions(&self, account: String) -> Result<Vec<Suppression>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT address, status, reason, created_at FROM suppressions WHERE account_id = {ID_OF_1} ORDER BY created_at, address"
            ))?;
            let rows = stmt.query_map([account], |r| {
                Ok(Suppression {
                    address: r.get(0)?,
                    status: r.get(1)?,
                    reason: r.get(2)?,
                    created_at: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn unsuppress(&self, account: String, address: Option<String>) -> Result<u64> {
        self.write(move |conn| {
            Ok(conn.execute(
                &format!("DELETE FROM suppressions WHERE account_id = {ID_OF_1} AND (?2 IS NULL OR address = lower(?2))"),
                params![account, address],
            )? as u64)
        })
        .await
    }
}

#[async_trait]
impl EventStore for EmbeddedStore {
    async fn append_event(&self, e: postern_core::Event) -> Result<()> {
        self.write(move |conn| {
            let info = if e.info.is_empty() {
                None
            } else {
                Some(
                    serde_json::to_string(&e.info)
                        .map_err(|x| StoreError::Backend(x.to_string()))?,
                )
            };
            conn.prepare_cached(
                "INSERT INTO events (at, message_id, kind, recipient, detail, account, info, account_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, (SELECT id FROM accounts WHERE name = ?6))",
            )?
            .execute(params![
                e.at_millis,
                e.message_id,
                e.kind.as_str(),
                e.recipient,
                e.detail,
                e.account,
                info
            ])?;
            Ok(())
        })
        .await
    }

    async fn events(&self, filter: EventFilter) -> Result<Vec<Event>> {
        self.read(move |conn| {
            // Only the clauses asked for are in the statement, so SQLite
            // picks the index that fits (message, recipient, account, time).
            // Every `?` of a clause becomes that clause's numbered parameter.
            let mut clauses: Vec<String> = Vec::new();
            let mut values: Vec<rusqlite::types::Value> = Vec::new();
            let mut bind = |clause: &str, v: rusqlite::types::Value| {
                values.push(v);
                clauses.push(clause.replace('?', &format!("?{}", values.len())));
            };
            if let Some(m) = &filter.message_id {
                bind("message_id = ?", m.clone().into());
            }
            if let Some(r) = &filter.recipient {
                bind("recipient = ? COLLATE NOCASE", r.clone().into());
            }
            if let Some(a) = &filter.account {
                if filter.include_subusers {
                    // Both placeholders become the same numbered one.
                    bind(
                        "account_id IN (SELECT id FROM accounts WHERE name = ? OR parent = ?)",
                        a.clone().into(),
                    );
                } else {
                    bind(
                        "account_id = (SELECT id FROM accounts WHERE name = ?)",
                        a.clone().into(),
                    );
                }
            }
            if let Some(t) = filter.since {
                bind("at >= ?", t.into());
            }
            if let Some(t) = filter.until {
                bind("at < ?", t.into());
            }
            if let Some(seq) = filter.after_seq {
                bind("seq > ?", seq.into());
            }
            if !filter.kinds.is_empty() {
                let list = filter
                    .kinds
                    .iter()
                    .map(|k| format!("'{}'", k.as_str()))
                    .collect::<Vec<_>>()
                    .join(",");
                clauses.push(format!("kind IN ({list})"));
            }
            let mut sql = String::from(
                "SELECT seq, at, message_id, kind, recipient, detail, account, info FROM events",
            );
            if !clauses.is_empty() {
                sql.push_str(" WHERE ");
                sql.push_str(&clauses.join(" AND "));
            }
            let newest_first = filter.limit.is_some() && filter.after_seq.is_none();
            sql.push_str(if newest_first {
                " ORDER BY seq DESC"
            } else {
                " ORDER BY seq"
            });
            if let Some(n) = filter.limit {
                sql.push_str(&format!(" LIMIT {n}"));
            }
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(values), |r| {
                let kind: String = r.get(3)?;
                let kind = kind.parse().map_err(|e: String| {
                    rusqlite::Error::FromSqlConversionFailure(
                        3,
                        rusqlite::types::Type::Text,
                        e.into(),
                    )
                })?;
                let info: Option<String> = r.get(7)?;
                Ok(Event {
                    seq: r.get(0)?,
                    at_millis: r.get(1)?,
                    message_id: r.get(2)?,
                    kind,
                    recipient: r.get(4)?,
                    detail: r.get(5)?,
                    account: r.get(6)?,
                    // A row this version cannot read loses its details, not
                    // the whole query.
                    info: info
                        .and_then(|i| serde_json::from_str(&i).ok())
                        .unwrap_or_default(),
                })
            })?;
            let mut events = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            if newest_first {
                events.reverse();
            }
            Ok(events)
        })
        .await
    }

    async fn last_event_seq(&self) -> Result<i64> {
        self.read(|conn| {
            Ok(conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?)
        })
        .await
    }

    async fn put_webhook(&self, w: WebhookRecord) -> Result<()> {
        self.write(move |conn| {
            let kinds = w
                .kinds
                .iter()
                .map(|k| k.as_str().to_owned())
                .collect::<Vec<_>>();
            conn.prepare_cached(
                &format!(
                    "INSERT INTO event_webhooks (account, url, enabled, kinds, signing_key, cursor, created_at, updated_at, account_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, (SELECT COALESCE(MAX(seq), 0) FROM events), ?6, ?6, {ID_OF_1})
                     ON CONFLICT (account) DO UPDATE SET url = ?2, enabled = ?3, kinds = ?4,
                        signing_key = ?5, updated_at = ?6"
                ),
            )?
            .execute(params![w.account, w.url, w.enabled, join_list(&kinds), w.signing_key, w.updated_at])?;
            Ok(())
        })
        .await
    }

    async fn get_webhook(&self, account: String) -> Result<Option<WebhookRecord>> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {WEBHOOK_COLUMNS} FROM event_webhooks WHERE account_id = {ID_OF_1}"
                ))?
                .query_row([account], webhook_from_row)
                .optional()?)
        })
        .await
    }

    async fn list_webhooks(&self) -> Result<Vec<WebhookRecord>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {WEBHOOK_COLUMNS} FROM event_webhooks WHERE {LIVE} ORDER BY account"
            ))?;
            let rows = stmt.query_map([], webhook_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn advance_webhook(&self, account: String, cursor: i64, at: i64) -> Result<()> {
        self.write(move |conn| {
            // Never backwards: a late writer cannot make events go out twice.
            conn.prepare_cached(&format!(
                "UPDATE event_webhooks SET cursor = MAX(cursor, ?2), last_success_at = ?3
                 WHERE account_id = {ID_OF_1}"
            ))?
            .execute(params![account, cursor, at])?;
            Ok(())
        })
        .await
    }

    async fn webhook_failed(&self, account: String, error: String, at: i64) -> Result<()> {
        self.write(move |conn| {
            conn.prepare_cached(&format!(
                "UPDATE event_webhooks SET last_error = ?2, last_error_at = ?3 WHERE account_id = {ID_OF_1}"
            ))?
            .execute(params![account, error, at])?;
            Ok(())
        })
        .await
    }
}

fn webhook_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<WebhookRecord> {
    let kinds: String = r.get(3)?;
    Ok(WebhookRecord {
        account: r.get(0)?,
        url: r.get(1)?,
        enabled: r.get(2)?,
        kinds: split_list(&kinds)
            .iter()
            .filter_map(|k| k.parse().ok())
            .collect(),
        signing_key: r.get(4)?,
        cursor: r.get(5)?,
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
        last_success_at: r.get(8)?,
        last_error: r.get(9)?,
        last_error_at: r.get(10)?,
    })
}

const WEBHOOK_COLUMNS: &str = "account, url, enabled, kinds, signing_key, cursor, created_at, updated_at, last_success_at, last_error, last_error_at";

const DOMAIN_COLUMNS: &str = "domain, account, selector, rsa_private, rsa_public, ed25519_private, ed25519_public, return_path, created_at, verified_at, verified_by, \
     next_selector, next_rsa_private, next_rsa_public, next_ed25519_private, next_ed25519_public, next_created_at, \
     previous_selector, previous_rsa_public, previous_ed25519_public, previous_retire_at";

/// Selects `rowid` first: the domain's id in the API.
fn domain_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DomainRecord> {
    Ok(DomainRecord {
        id: r.get(0)?,
        domain: r.get(1)?,
        account: r.get(2)?,
        selector: r.get(3)?,
        rsa_private: r.get(4)?,
        rsa_public: r.get(5)?,
        ed25519_private: r.get(6)?,
        ed25519_public: r.get(7)?,
        return_path: r.get(8)?,
        return_path_mode: ReturnPathMode::from_i64(r.get(22)?),
        created_at: r.get(9)?,
        verified_at: r.get(10)?,
        verified_by: r.get(11)?,
        next: match r.get::<_, Option<String>>(12)? {
            Some(selector) => Some(NextKeys {
                selector,
                rsa_private: r.get(13)?,
                rsa_public: r.get(14)?,
                ed25519_private: r.get(15)?,
                ed25519_public: r.get(16)?,
                created_at: r.get(17)?,
            }),
            None => None,
        },
        previous: match r.get::<_, Option<String>>(18)? {
            Some(selector) => Some(PreviousKeys {
                selector,
                rsa_public: r.get(19)?,
                ed25519_public: r.get(20)?,
                retire_at: r.get(21)?,
            }),
            None => None,
        },
    })
}

const SENDER_COLUMNS: &str = "id, account, address, nickname, from_name, reply_to, reply_to_name, details, created_at, verified_at, \
     token_hash, token_expires_at, last_sent_at, window_start, window_sends";

fn sender_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SenderRecord> {
    Ok(SenderRecord {
        id: r.get(0)?,
        account: r.get(1)?,
        address: r.get(2)?,
        nickname: r.get(3)?,
        from_name: r.get(4)?,
        reply_to: r.get(5)?,
        reply_to_name: r.get(6)?,
        details: r.get(7)?,
        created_at: r.get(8)?,
        verified_at: r.get(9)?,
        token_hash: r.get(10)?,
        token_expires_at: r.get(11)?,
        last_sent_at: r.get(12)?,
        window_start: r.get(13)?,
        window_sends: r.get(14)?,
    })
}

#[async_trait]
impl SenderStore for EmbeddedStore {
    async fn add_sender(&self, s: SenderRecord) -> Result<i64> {
        self.write(move |conn| {
            if account_id_of(conn, &s.account)?.is_none() {
                return Err(StoreError::NotFound);
            }
            conn.execute(
                &format!("DELETE FROM verified_senders WHERE account = ?1 AND address = ?2 AND {DEAD}"),
                params![s.account, s.address.to_lowercase()],
            )?;
            conn.prepare_cached(
                &format!(
                    "INSERT INTO verified_senders (account, address, nickname, from_name, reply_to, reply_to_name, details, \
                     created_at, verified_at, token_hash, token_expires_at, last_sent_at, window_start, window_sends, account_id) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, {ID_OF_1})"
                ),
            )?
            .execute(params![
                s.account,
                s.address.to_lowercase(),
                s.nickname,
                s.from_name,
                s.reply_to,
                s.reply_to_name,
                s.details,
                s.created_at,
                s.verified_at,
                s.token_hash,
                s.token_expires_at,
                s.last_sent_at,
                s.window_start,
                s.window_sends
            ])?;
            Ok(conn.last_insert_rowid())
        })
        .await
    }

    async fn get_sender(&self, id: i64) -> Result<Option<SenderRecord>> {
        self.read_optional(
            format!("SELECT {SENDER_COLUMNS} FROM verified_senders WHERE id = ?1 AND {LIVE}"),
            [id],
            sender_from_row,
        )
        .await
    }

    async fn list_senders(&self, account: Option<String>) -> Result<Vec<SenderRecord>> {
        self.read_all(
            format!("SELECT {SENDER_COLUMNS} FROM verified_senders WHERE {LIVE} AND (?1 IS NULL OR account_id = {ID_OF_1}) ORDER BY id"),
            [account],
            sender_from_row,
        )
        .await
    }

    async fn update_sender(&self, s: SenderRecord) -> Result<bool> {
        self.write(move |conn| {
            Ok(conn
                .prepare_cached(
                    "UPDATE verified_senders SET nickname = ?2, from_name = ?3, reply_to = ?4, reply_to_name = ?5, details = ?6 \
                     WHERE id = ?1",
                )?
                .execute(params![s.id, s.nickname, s.from_name, s.reply_to, s.reply_to_name, s.details])?
                == 1)
        })
        .await
    }

    async fn issue_sender_token(
        &self,
        id: i64,
        hash: Vec<u8>,
        expires_at: i64,
        now: i64,
        limits: SendLimits,
    ) -> Result<TokenIssue> {
        self.write(move |conn| {
            let row = conn
                .prepare_cached(
                    "SELECT verified_at, last_sent_at, window_start, window_sends FROM verified_senders WHERE id = ?1",
                )?
                .query_row([id], |r| {
                    Ok((
                        r.get::<_, Option<i64>>(0)?,
                        r.get::<_, Option<i64>>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })
                .optional()?;
            let Some((verified_at, last_sent, window_start, window_sends)) = row else {
                return Ok(TokenIssue::NotFound);
            };
            if verified_at.is_some() {
                return Ok(TokenIssue::AlreadyVerified);
            }
            if let Some(last) = last_sent {
                if now - last < limits.min_interval_millis {
                    return Ok(TokenIssue::TooSoon {
                        retry_at: last + limits.min_interval_millis,
                    });
                }
            }
            let (window_start, window_sends) =
                if window_sends == 0 || now - window_start >= limits.window_millis {
                (now, 0)
            } else {
                (window_start, window_sends)
            };
            if window_sends >= limits.per_window {
                return Ok(TokenIssue::TooSoon {
                    retry_at: window_start + limits.window_millis,
                });
            }
            conn.prepare_cached(
                "UPDATE verified_senders SET token_hash = ?2, token_expires_at = ?3, last_sent_at = ?4, \
                 window_start = ?5, window_sends = ?6 WHERE id = ?1",
            )?
            .execute(params![id, hash, expires_at, now, window_start, window_sends + 1])?;
            Ok(TokenIssue::Issued)
        })
        .await
    }

    async fn use_sender_token(&self, hash: Vec<u8>, now: i64) -> Result<TokenUse> {
        self.write(move |conn| {
            let found = conn
                .prepare_cached(&format!(
                    "SELECT {SENDER_COLUMNS} FROM verified_senders WHERE token_hash = ?1 AND {LIVE}"
                ))?
                .query_row([&hash], sender_from_row)
                .optional()?;
            let Some(mut sender) = found else {
                return Ok(TokenUse::Unknown);
            };
            if sender.token_expires_at.is_none_or(|t| t <= now) {
                return Ok(TokenUse::Expired);
            }
            // Single use: the token is cleared in the same write that
            // verifies, so a second presentation finds nothing.
            conn.prepare_cached(
                "UPDATE verified_senders SET verified_at = ?2, token_hash = NULL, token_expires_at = NULL WHERE id = ?1",
            )?
            .execute(params![sender.id, now])?;
            sender.verified_at = Some(now);
            sender.token_hash = None;
            sender.token_expires_at = None;
            Ok(TokenUse::Verified(Box::new(sender)))
        })
        .await
    }

    async fn mark_sender_verified(&self, id: i64, at: i64) -> Result<bool> {
        self.write(move |conn| {
            Ok(conn.execute(
                "UPDATE verified_senders SET verified_at = ?2, token_hash = NULL, token_expires_at = NULL WHERE id = ?1",
                params![id, at],
            )? == 1)
        })
        .await
    }

    async fn delete_sender(&self, id: i64) -> Result<bool> {
        self.write(move |conn| {
            Ok(conn.execute("DELETE FROM verified_senders WHERE id = ?1", [id])? == 1)
        })
        .await
    }
}

#[async_trait]
impl DomainStore for EmbeddedStore {
    async fn add_domain(&self, d: DomainRecord) -> Result<i64> {
        self.write(move |conn| {
            let Some(account_id) = account_id_of(conn, &d.account)? else {
                return Err(StoreError::NotFound);
            };
            // A row left by a deleted account is no claim on the domain.
            conn.execute(&format!("DELETE FROM domains WHERE domain = ?1 AND {DEAD}"), [&d.domain])?;
            // Another account's unverified claim does not stand in the way
            // (anyone can type any name; only DNS proves ownership), but a
            // verified domain is taken, and an account holds one row each.
            let taken = conn
                .prepare_cached(
                    "SELECT 1 FROM domains WHERE domain = ?1 AND (verified_at IS NOT NULL OR account_id = ?2)",
                )?
                .exists(params![&d.domain, account_id])?;
            if taken {
                return Err(StoreError::Conflict);
            }
            conn.prepare_cached(&format!(
                "INSERT INTO domains ({DOMAIN_COLUMNS}, account_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, \
                 ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)"
            ))?
            .execute(params![
                d.domain,
                d.account,
                d.selector,
                d.rsa_private,
                d.rsa_public,
                d.ed25519_private,
                d.ed25519_public,
                d.return_path,
                d.created_at,
                d.verified_at,
                d.verified_by,
                d.next.as_ref().map(|n| n.selector.clone()),
                d.next.as_ref().map(|n| n.rsa_private.clone()),
                d.next.as_ref().map(|n| n.rsa_public.clone()),
                d.next.as_ref().map(|n| n.ed25519_private.clone()),
                d.next.as_ref().map(|n| n.ed25519_public.clone()),
                d.next.as_ref().map(|n| n.created_at),
                d.previous.as_ref().map(|p| p.selector.clone()),
                d.previous.as_ref().map(|p| p.rsa_public.clone()),
                d.previous.as_ref().map(|p| p.ed25519_public.clone()),
                d.previous.as_ref().map(|p| p.retire_at),
                account_id
            ])?;
            Ok(conn.last_insert_rowid())
        })
        .await
    }

    async fn verified_domain(&self, domain: String) -> Result<Option<DomainRecord>> {
        self.read_optional(
            format!("SELECT rowid, {DOMAIN_COLUMNS}, return_path_mode FROM domains WHERE domain = ?1 AND verified_at IS NOT NULL AND {LIVE}"),
            [domain],
            domain_from_row,
        )
        .await
    }

    async fn get_domain_for(
        &self,
        account: String,
        domain: String,
    ) -> Result<Option<DomainRecord>> {
        self.read_optional(
            format!("SELECT rowid, {DOMAIN_COLUMNS}, return_path_mode FROM domains WHERE domain = ?2 AND account_id = {ID_OF_1}"),
            (account, domain),
            domain_from_row,
        )
        .await
    }

    async fn list_domains(&self, account: Option<String>) -> Result<Vec<DomainRecord>> {
        self.read_all(
            format!("SELECT rowid, {DOMAIN_COLUMNS}, return_path_mode FROM domains WHERE {LIVE} AND (?1 IS NULL OR account_id = {ID_OF_1}) ORDER BY domain, rowid"),
            [account],
            domain_from_row,
        )
        .await
    }

    async fn get_domain_by_id(&self, id: i64) -> Result<Option<DomainRecord>> {
        self.read_optional(
            format!("SELECT rowid, {DOMAIN_COLUMNS}, return_path_mode FROM domains WHERE rowid = ?1 AND {LIVE}"),
            [id],
            domain_from_row,
        )
        .await
    }

    async fn verify_domain(
        &self,
        id: i64,
        at: i64,
        by: String,
    ) -> Result<Option<Vec<DomainRecord>>> {
        self.write(move |conn| {
            let Some(domain) = conn
                .prepare_cached(&format!("SELECT domain FROM domains WHERE rowid = ?1 AND {LIVE}"))?
                .query_row([id], |r| r.get::<_, String>(0))
                .optional()?
            else {
                return Ok(None);
            };
            // Ownership is proven: every competing claim goes, with its
            // keys, in the same commit as the verification.
            let retired = {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT rowid, {DOMAIN_COLUMNS}, return_path_mode FROM domains WHERE domain = ?1 AND rowid <> ?2 AND verified_at IS NULL"
                ))?;
                let rows = stmt.query_map(params![domain, id], domain_from_row)?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            conn.execute(
                "DELETE FROM domains WHERE domain = ?1 AND rowid <> ?2 AND verified_at IS NULL",
                params![domain, id],
            )?;
            // Conflict (the partial unique index) when another account holds
            // the domain verified already; the savepoint undoes the deletion.
            conn.execute(
                "UPDATE domains SET verified_at = ?2, verified_by = ?3 WHERE rowid = ?1",
                params![id, at, by],
            )?;
            Ok(Some(retired))
        })
        .await
    }

    async fn delete_domain(&self, id: i64) -> Result<bool> {
        self.write(move |conn| Ok(conn.execute("DELETE FROM domains WHERE rowid = ?1", [id])? == 1))
            .await
    }

    async fn start_rotation(&self, id: i64, next: NextKeys) -> Result<bool> {
        self.write(move |conn| {
            Ok(conn.execute(
                "UPDATE domains SET next_selector = ?2, next_rsa_private = ?3, next_rsa_public = ?4, \
                 next_ed25519_private = ?5, next_ed25519_public = ?6, next_created_at = ?7 WHERE rowid = ?1",
                params![
                    id,
                    next.selector,
                    next.rsa_private,
                    next.rsa_public,
                    next.ed25519_private,
                    next.ed25519_public,
                    next.created_at
                ],
            )? == 1)
        })
        .await
    }

    async fn set_return_path_mode(&self, id: i64, mode: ReturnPathMode) -> Result<bool> {
        self.write(move |conn| {
            Ok(conn.execute(
                "UPDATE domains SET return_path_mode = ?2 WHERE rowid = ?1",
                params![id, mode.as_i64()],
            )? == 1)
        })
        .await
    }

    async fn promote_rotation(&self, id: i64, retire_at: i64) -> Result<bool> {
        self.write(move |conn| {
            Ok(conn.execute(
                "UPDATE domains SET previous_selector = selector, previous_rsa_public = rsa_public, \
                 previous_ed25519_public = ed25519_public, previous_retire_at = ?2, \
                 selector = next_selector, rsa_private = next_rsa_private, rsa_public = next_rsa_public, \
                 ed25519_private = next_ed25519_private, ed25519_public = next_ed25519_public, \
                 next_selector = NULL, next_rsa_private = NULL, next_rsa_public = NULL, \
                 next_ed25519_private = NULL, next_ed25519_public = NULL, next_created_at = NULL \
                 WHERE rowid = ?1 AND next_selector IS NOT NULL",
                params![id, retire_at],
            )? == 1)
        })
        .await
    }

    async fn senders_version(&self) -> Result<i64> {
        self.inline_version("SELECT version FROM sender_config_version WHERE id = 1")
    }

    async fn retire_previous(&self, now: i64) -> Result<Vec<String>> {
        self.write(move |conn| {
            let mut stmt = conn.prepare_cached(
                "UPDATE domains SET previous_selector = NULL, previous_rsa_public = NULL, \
                 previous_ed25519_public = NULL, previous_retire_at = NULL \
                 WHERE previous_retire_at IS NOT NULL AND previous_retire_at <= ?1 RETURNING domain",
            )?;
            let rows = stmt.query_map([now], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
        })
        .await
    }
}

#[async_trait]
impl TlsPolicyStore for EmbeddedStore {
    async fn mta_sts_policy(
        &self,
        domain: String,
        now: i64,
    ) -> Result<Option<(String, String, i64)>> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT id, policy, expires_at FROM mta_sts_policies WHERE domain = ?1 AND expires_at > ?2",
                )?
                .query_row(params![domain, now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?)
        })
        .await
    }

    async fn put_mta_sts_policy(
        &self,
        domain: String,
        id: String,
        policy: String,
        expires_at: i64,
    ) -> Result<()> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO mta_sts_policies (domain, id, policy, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (domain) DO UPDATE SET id = ?2, policy = ?3, expires_at = ?4",
            )?
            .execute(params![domain, id, policy, expires_at])?;
            Ok(())
        })
        .await
    }
}

fn recipient_status(code: i64) -> &'static str {
    match code {
        0 => "queued",
        1 => "delivered",
        _ => "bounce",
    }
}

fn load_recipients(conn: &Connection, id: &str, now: i64) -> Result<Vec<QueuedRecipient>> {
    let mut stmt = conn.prepare_cached(
        "SELECT idx, address, domain, status, attempts, next_attempt, lease_until, last_reply
         FROM recipients WHERE message_id = ?1 ORDER BY idx",
    )?;
    let rows = stmt.query_map(params![id], |r| {
        let status: i64 = r.get(3)?;
        let lease: i64 = r.get(6)?;
        Ok(QueuedRecipient {
            index: r.get::<_, i64>(0)? as u32,
            address: r.get(1)?,
            domain: r.get(2)?,
            status: recipient_status(status),
            attempts: r.get::<_, i64>(4)? as u32,
            next_attempt: r.get(5)?,
            in_flight: status == 0 && lease > now,
            last_reply: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

fn load_queued(conn: &Connection, id: &str, now: i64) -> Result<Option<QueuedMessage>> {
    let head = conn
        .prepare_cached(
            "SELECT id, received_at, mail_from, account, length(body) FROM messages WHERE id = ?1",
        )?
        .query_row(params![id], |r| {
            Ok(QueuedMessage {
                id: r.get(0)?,
                received_at: r.get(1)?,
                mail_from: r.get(2)?,
                account: r.get(3)?,
                size: r.get::<_, i64>(4)? as u64,
                recipients: Vec::new(),
            })
        })
        .optional()?;
    let Some(mut m) = head else {
        return Ok(None);
    };
    m.recipients = load_recipients(conn, id, now)?;
    Ok(Some(m))
}

/// Ids of queued messages matching a filter, oldest first.
fn queued_ids(conn: &Connection, f: &QueueFilter) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id FROM messages m
         WHERE (?1 IS NULL OR m.account_id IN
                 (SELECT id FROM accounts WHERE name = ?1 OR (?4 AND parent = ?1)))
           AND (?2 IS NULL OR EXISTS (SELECT 1 FROM recipients r
                WHERE r.message_id = m.id AND r.status = 0 AND r.domain = lower(?2)))
         ORDER BY received_at LIMIT ?3",
    )?;
    let limit = f.limit.map(|n| n as i64).unwrap_or(-1);
    let rows = stmt.query_map(params![f.account, f.domain, limit, f.with_subusers], |r| {
        r.get(0)
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
}

impl EmbeddedStore {
    pub(crate) async fn queued_messages_impl(&self, f: QueueFilter) -> Result<Vec<QueuedMessage>> {
        let now = postern_core::time::now_millis();
        self.read(move |conn| {
            let mut out = Vec::new();
            for id in queued_ids(conn, &f)? {
                if let Some(m) = load_queued(conn, &id, now)? {
                    out.push(m);
                }
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn queued_message_impl(&self, id: String) -> Result<Option<QueuedMessage>> {
        let now = postern_core::time::now_millis();
        self.read(move |conn| load_queued(conn, &id, now)).await
    }

    pub(crate) async fn retry_now_impl(
        &self,
        id: Option<String>,
        f: QueueFilter,
        now: i64,
    ) -> Result<u64> {
        self.write(move |conn| {
            let ids = match id {
                Some(id) => vec![id],
                None => queued_ids(conn, &f)?,
            };
            let mut n = 0;
            let mut stmt = conn.prepare_cached(
                "UPDATE recipients SET next_attempt = ?2
                 WHERE message_id = ?1 AND status = 0 AND next_attempt > ?2 AND lease_until <= ?2",
            )?;
            for id in ids {
                n += stmt.execute(params![id, now])? as u64;
            }
            Ok(n)
        })
        .await
    }

    pub(crate) async fn delete_queued_impl(
        &self,
        id: String,
        reason: String,
        now: i64,
    ) -> Result<u64> {
        self.write(move |conn| {
            let waiting: Vec<(i64, String)> = {
                let mut stmt = conn.prepare_cached(
                    "SELECT idx, address FROM recipients WHERE message_id = ?1 AND status = 0",
                )?;
                let rows = stmt.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            for (_, address) in &waiting {
                insert_event(
                    conn,
                    now,
                    &id,
                    EventKind::Dropped,
                    Some(address),
                    &reason,
                    None,
                )?;
            }
            conn.execute(
                "DELETE FROM recipients WHERE message_id = ?1 AND status = 0",
                params![id],
            )?;
            conn.execute(
                "DELETE FROM messages WHERE id = ?1
                 AND NOT EXISTS (SELECT 1 FROM recipients WHERE message_id = ?1 AND status = 0)",
                params![id],
            )?;
            Ok(waiting.len() as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit_anchor::{to_hex, AnchorError};
    use postern_core::{Envelope, Recipient};

    fn message(rcpts: &[&str]) -> NewMessage {
        NewMessage {
            account_id: None,
            head: Vec::new(),
            id: MessageId::generate(),
            received_at: 1_000,
            envelope: Envelope {
                mail_from: "a@example.org".into(),
                recipients: rcpts
                    .iter()
                    .map(|r| Recipient {
                        address: r.to_string(),
                        domain: r.rsplit_once('@').unwrap().1.into(),
                        notify: vec![],
                        orcpt: None,
                    })
                    .collect(),
                ..Default::default()
            },
            account: Some("admin".into()),
            body: b"Subject: t\r\n\r\nhello\r\n".to_vec(),
            detail: "test".into(),
            dropped: Vec::new(),
        }
    }

    fn audit_entry(i: usize) -> AuditEntry {
        AuditEntry {
            at: 1_000 + i as i64,
            kind: "key.create".into(),
            actor: "test".into(),
            account: Some("admin".into()),
            client_ip: None,
            detail: format!("entry {i}"),
        }
    }

    /// A store with an anchor in `dir` and `n` audit entries, each appended
    /// on its own (so each is its own commit), once the head of the last
    /// is recorded.
    async fn anchored_store(dir: &Path, n: usize) -> EmbeddedStore {
        let anchor =
            AuditAnchor::open(&dir.join("audit-anchor.key"), dir.join("audit.head")).unwrap();
        let store = EmbeddedStore::open_with_anchor(dir, Some(anchor)).unwrap();
        for i in 0..n {
            store.append_audit(audit_entry(i)).await.unwrap();
        }
        recorded_head_reaches(&store, n as i64).await;
        store
    }

    /// Waits until the recorded head names entry `seq`; the writer records
    /// it within `HEAD_RECORD_INTERVAL` of its commit.
    async fn recorded_head_reaches(store: &EmbeddedStore, seq: i64) {
        let anchor = store.audit_anchor().unwrap();
        let deadline = Instant::now() + HEAD_RECORD_INTERVAL * 8;
        loop {
            let recorded = anchor.recorded().unwrap().map(|h| h.seq);
            if recorded == Some(seq) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "recorded head {recorded:?}, want {seq}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Appends within moments of each other are recorded together once
    /// the interval is over, not one file write each; and what is still
    /// unrecorded when the store closes is recorded by `close`.
    #[tokio::test]
    async fn the_head_is_recorded_within_the_interval_and_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let store = anchored_store(dir.path(), 1).await;
        for i in 1..4 {
            store.append_audit(audit_entry(i)).await.unwrap();
        }
        let anchor = store.audit_anchor().unwrap();
        let at_once = anchor.recorded().unwrap().map(|h| h.seq);
        assert!(at_once < Some(4), "recorded at once: {at_once:?}");
        recorded_head_reaches(&store, 4).await;

        store.append_audit(audit_entry(9)).await.unwrap();
        store.close();
        let anchor = store.audit_anchor().unwrap();
        assert_eq!(anchor.recorded().unwrap().map(|h| h.seq), Some(5));
    }

    /// What someone with the database but not the anchor key can do: drop
    /// the append-only triggers and run SQL.
    fn tamper(dir: &Path, sql: &str) {
        let conn = Connection::open(dir.join("postern.db")).unwrap();
        conn.execute_batch(&format!(
            "DROP TRIGGER IF EXISTS audit_no_delete; DROP TRIGGER IF EXISTS audit_no_update; {sql}"
        ))
        .unwrap();
    }

    #[tokio::test]
    async fn intact_anchored_chain_verifies_and_the_head_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = anchored_store(dir.path(), 5).await;
        let head = store.audit_head().await.unwrap().unwrap();
        assert_eq!(head.seq, 5);
        match store
            .verify_audit_anchored(vec![head.clone()])
            .await
            .unwrap()
        {
            AnchoredVerdict::Intact { entries, recorded } => {
                assert_eq!(entries, 5);
                assert_eq!(recorded, Some(head.clone()));
            }
            other => panic!("{other:?}"),
        }
        // An older operator anchor stays valid as the chain grows.
        store.append_audit(audit_entry(9)).await.unwrap();
        assert!(matches!(
            store.verify_audit_anchored(vec![head]).await.unwrap(),
            AnchoredVerdict::Intact { entries: 6, .. }
        ));
        #[cfg(unix)]
        for name in ["audit-anchor.key", "audit.head"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }

    #[tokio::test]
    async fn deleting_the_newest_entry_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = anchored_store(dir.path(), 5).await;
        tamper(dir.path(), "DELETE FROM audit WHERE seq = 5");
        // The shorter chain is still a valid chain: only the anchor shows it.
        assert!(matches!(
            store.verify_audit().await.unwrap(),
            AuditVerification::Intact { entries: 4 }
        ));
        match store.verify_audit_anchored(vec![]).await.unwrap() {
            AnchoredVerdict::Truncated {
                anchor,
                source: AnchorSource::Recorded,
                chain_len: 4,
            } => assert_eq!(anchor.seq, 5),
            other => panic!("{other:?}"),
        }
    }

    /// New entries after a cut do not make the cut disappear: the record
    /// only moves forward.
    #[tokio::test]
    async fn appending_after_deleting_the_tail_does_not_hide_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = anchored_store(dir.path(), 5).await;
        tamper(dir.path(), "DELETE FROM audit WHERE seq >= 4");
        store.append_audit(audit_entry(50)).await.unwrap();
        store.append_audit(audit_entry(51)).await.unwrap();
        assert!(matches!(
            store.verify_audit_anchored(vec![]).await.unwrap(),
            AnchoredVerdict::Rewritten {
                source: AnchorSource::Recorded,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn deleting_an_entry_in_the_middle_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = anchored_store(dir.path(), 5).await;
        tamper(dir.path(), "DELETE FROM audit WHERE seq = 3");
        assert!(matches!(
            store.verify_audit_anchored(vec![]).await.unwrap(),
            AnchoredVerdict::Broken { seq: 4 }
        ));
    }

    #[tokio::test]
    async fn truncating_the_table_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = anchored_store(dir.path(), 5).await;
        tamper(dir.path(), "DELETE FROM audit");
        match store.verify_audit_anchored(vec![]).await.unwrap() {
            AnchoredVerdict::Truncated {
                chain_len: 0,
                source: AnchorSource::Recorded,
                ..
            } => {}
            other => panic!("{other:?}"),
        }
    }

    /// Rewriting the whole chain with recomputed hashes keeps it valid, but
    /// not equal to the anchors; and the record cannot be forged or swapped
    /// without the key.
    #[tokio::test]
    async fn rewritten_chains_and_edited_records_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = anchored_store(dir.path(), 3).await;
        let operator = store.audit_head().await.unwrap().unwrap();
        // A new chain of the same length, from other entries.
        tamper(dir.path(), "DELETE FROM audit");
        let mut prev = crate::audit_chain::GENESIS.to_vec();
        let conn = Connection::open(dir.path().join("postern.db")).unwrap();
        for seq in 1..=3 {
            let e = audit_entry(100 + seq as usize);
            let hash = crate::audit_chain::row_hash(&prev, seq, &e);
            conn.execute(
                &format!("INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                params![seq, e.at, e.kind, e.actor, e.account, e.client_ip, e.detail, prev, hash],
            )
            .unwrap();
            prev = hash;
        }
        drop(conn);
        assert!(matches!(
            store
                .verify_audit_anchored(vec![operator.clone()])
                .await
                .unwrap(),
            AnchoredVerdict::Rewritten {
                source: AnchorSource::Operator,
                ..
            }
        ));
        // The record written by someone without the key is refused.
        let forged = format!(
            "postern-audit-head-v1 3 {} {}\n",
            to_hex(&prev),
            "00".repeat(32)
        );
        std::fs::write(dir.path().join("audit.head"), forged).unwrap();
        assert!(matches!(
            store.verify_audit_anchored(vec![]).await.unwrap(),
            AnchoredVerdict::BadRecord(AnchorError::BadMac { .. })
        ));
    }

    #[test]
    fn anchors_parse_strictly() {
        let h = AuditHead {
            seq: 7,
            hash: vec![0xab; 32],
        };
        assert_eq!(AuditHead::parse_anchor(&h.to_anchor()).unwrap(), h);
        for bad in [
            "7",
            "x:ab",
            "7:abc",
            "7:+b",
            &format!("-1:{}", "ab".repeat(32)),
        ] {
            assert!(AuditHead::parse_anchor(bad).is_err(), "{bad}");
        }
    }

    /// The database is created 0600 whatever the process umask, and SQLite
    /// gives its WAL and shared-memory files the same mode.
    #[cfg(unix)]
    #[tokio::test]
    async fn database_files_are_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.enqueue(message(&["x@one.example"])).await.unwrap();
        for name in ["postern.db", "postern.db-wal", "postern.db-shm"] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}: {mode:o}");
        }
    }

    #[tokio::test]
    async fn enqueue_claim_settle_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let m = message(&["x@one.example", "y@two.example", "z@one.example"]);
        let id = m.id.clone();
        store.enqueue(m).await.unwrap();

        let jobs = store.claim_due(2_000, 100, 60_000).await.unwrap();
        assert_eq!(jobs.len(), 2, "one job per domain");
        let one = jobs.iter().find(|j| j.domain == "one.example").unwrap();
        assert_eq!(one.recipients.len(), 2);
        assert_eq!(&one.body[..], b"Subject: t\r\n\r\nhello\r\n");

        // Leased: a second claim finds nothing until the lease expires.
        assert!(store
            .claim_due(2_000, 100, 60_000)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(store.claim_due(70_000, 100, 60_000).await.unwrap().len(), 2);

        let outcome = |index, recipient: &str, settlement| RecipientOutcome {
            message_id: id.clone(),
            index,
            recipient: recipient.into(),
            settlement,
            detail: "250 ok".into(),
            at: 80_000,
            info: AttemptInfo {
                attempt: Some(1),
                remote_host: Some("mx.one.example".into()),
                ..AttemptInfo::default()
            },
        };
        store
            .settle(vec![
                outcome(0, "x@one.example", Settlement::Delivered),
                outcome(
                    1,
                    "y@two.example",
                    Settlement::Deferred {
                        next_attempt: 200_000,
                    },
                ),
                outcome(2, "z@one.example", Settlement::Failed),
            ])
            .await
            .unwrap();
        assert_eq!(store.next_due().await.unwrap(), Some(200_000));
        assert!(store
            .claim_due(199_999, 100, 60_000)
            .await
            .unwrap()
            .is_empty());
        let again = store.claim_due(200_000, 100, 60_000).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].recipients[0].attempts, 1);

        store
            .settle(vec![outcome(1, "y@two.example", Settlement::Delivered)])
            .await
            .unwrap();
        let summary = store.queue_summary().await.unwrap();
        assert_eq!(
            summary.messages, 0,
            "fully settled messages leave the queue"
        );

        let events = store
            .events(EventFilter {
                message_id: Some(id.to_string()),
                ..EventFilter::default()
            })
            .await
            .unwrap();
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            vec![
                EventKind::Processed,
                EventKind::Processed,
                EventKind::Processed,
                EventKind::Delivered,
                EventKind::Deferred,
                EventKind::Bounce,
                EventKind::Delivered
            ]
        );
        assert_eq!(
            events[3].info.remote_host.as_deref(),
            Some("mx.one.example")
        );
        assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));

        // Queries by recipient (any case), kind, time and position.
        let by = |f: EventFilter| {
            let store = &store;
            async move { store.events(f).await.unwrap() }
        };
        let y = by(EventFilter {
            recipient: Some("Y@TWO.example".into()),
            ..EventFilter::default()
        })
        .await;
        assert_eq!(y.len(), 3, "{y:?}");
        let bounces = by(EventFilter {
            kinds: vec![EventKind::Bounce],
            ..EventFilter::default()
        })
        .await;
        assert_eq!(bounces.len(), 1);
        assert_eq!(bounces[0].recipient.as_deref(), Some("z@one.example"));
        let late = by(EventFilter {
            since: Some(80_000),
            until: Some(80_001),
            ..EventFilter::default()
        })
        .await;
        assert_eq!(late.len(), 4);
        let after = by(EventFilter {
            after_seq: Some(events[1].seq),
            limit: Some(2),
            ..EventFilter::default()
        })
        .await;
        assert_eq!(
            after.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![events[2].seq, events[3].seq],
            "after a position: the oldest N"
        );
        let newest = by(EventFilter {
            limit: Some(2),
            ..EventFilter::default()
        })
        .await;
        assert_eq!(newest.last().map(|e| e.seq), events.last().map(|e| e.seq));
        let mine = by(EventFilter {
            account: Some("admin".into()),
            ..EventFilter::default()
        })
        .await;
        assert_eq!(mine.len(), events.len());
        let others = by(EventFilter {
            account: Some("someone-else".into()),
            ..EventFilter::default()
        })
        .await;
        assert!(others.is_empty());
    }

    /// Claims stop at a byte bound (the first is taken however large only
    /// when asked), so what a node loads for delivery stays within it
    /// whatever the messages weigh.
    #[tokio::test]
    async fn claims_stop_at_the_byte_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        for i in 0..6 {
            let mut m = message(&[&format!("r{i}@one.example")]);
            m.body = vec![b'x'; 100_000];
            store.enqueue(m).await.unwrap();
        }
        let jobs = store
            .claim_due_within(i64::MAX / 4, 100, 60_000, 250_000, true)
            .await
            .unwrap();
        assert_eq!(jobs.len(), 2, "100k and 200k fit in 250k, 300k does not");
        let jobs = store
            .claim_due_within(i64::MAX / 4, 100, 60_000, 200_000, false)
            .await
            .unwrap();
        assert_eq!(jobs.len(), 2, "exactly the bound fits");
        let jobs = store
            .claim_due_within(i64::MAX / 4, 100, 60_000, 99_999, false)
            .await
            .unwrap();
        assert!(
            jobs.is_empty(),
            "nothing fits, and none was asked for regardless"
        );
        let jobs = store
            .claim_due_within(i64::MAX / 4, 100, 60_000, 1, true)
            .await
            .unwrap();
        assert_eq!(jobs.len(), 1, "one regardless, however large");
        let rest = store.claim_due(i64::MAX / 4, 100, 60_000).await.unwrap();
        assert_eq!(rest.len(), 1);
    }

    /// Every statement of a message's life on the writer (queued with an
    /// event per recipient, an audit entry, claimed with a new `now` and
    /// room each time, settled, its next due time read) is compiled once.
    /// SQLite built with STAT4 (as bundled) marks a statement whose plan
    /// read a bound value, and compiles it again whenever that value is
    /// rebound or cleared, which rusqlite's statement cache does on every
    /// return: a bare `LIMIT ?` and a LEFT JOIN on a bound id did that on
    /// every claim and every event, a quarter of the writer's CPU in
    /// profiles.
    #[tokio::test]
    async fn the_message_life_cycle_compiles_each_statement_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        for i in 0..4i64 {
            let mut m = message(&["x@one.example", "y@two.example"]);
            m.received_at = 1_000 + i;
            let id = m.id.clone();
            store.enqueue(m).await.unwrap();
            store.append_audit(audit_entry(i as usize)).await.unwrap();
            let jobs = store
                .claim_due_within(2_000 + i, 100 + i as usize, 60_000, 1 << 20, i % 2 == 0)
                .await
                .unwrap();
            assert_eq!(jobs.len(), 2, "one job per destination domain");
            let outcome = |index, recipient: &str, settlement| RecipientOutcome {
                message_id: id.clone(),
                index,
                recipient: recipient.into(),
                settlement,
                detail: "250 ok".into(),
                at: 80_000 + i,
                info: AttemptInfo::default(),
            };
            store
                .settle(vec![outcome(0, "x@one.example", Settlement::Delivered)])
                .await
                .unwrap();
            let later = Settlement::Deferred {
                next_attempt: 9_000 + i,
            };
            store
                .settle(vec![outcome(1, "y@two.example", later)])
                .await
                .unwrap();
            store.next_due().await.unwrap();
        }
        let recompiled = store
            .write(|conn| {
                let mut found = Vec::new();
                // No safe API lists a connection's statements: these calls
                // only read, on the writer's own connection, on its thread,
                // and the SQL text is copied before the next call.
                unsafe {
                    use rusqlite::ffi;
                    let db = conn.handle();
                    let mut stmt = ffi::sqlite3_next_stmt(db, std::ptr::null_mut());
                    while !stmt.is_null() {
                        let n = ffi::sqlite3_stmt_status(stmt, ffi::SQLITE_STMTSTATUS_REPREPARE, 0);
                        if n > 0 {
                            let sql = std::ffi::CStr::from_ptr(ffi::sqlite3_sql(stmt));
                            found.push((n, sql.to_string_lossy().into_owned()));
                        }
                        stmt = ffi::sqlite3_next_stmt(db, stmt);
                    }
                }
                Ok(found)
            })
            .await
            .unwrap();
        assert!(recompiled.is_empty(), "{recompiled:#?}");
    }

    /// Head and body are stored as one message, whether joined in memory
    /// (small) or written into the row in place (large).
    #[tokio::test]
    async fn head_and_body_are_stored_as_one_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        for size in [10, JOIN_BELOW - 20, JOIN_BELOW, 3 * JOIN_BELOW + 7] {
            let mut m = message(&["x@one.example"]);
            m.head = b"Received: from test\r\n".to_vec();
            m.body = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
            let expected = [m.head.clone(), m.body.clone()].concat();
            store.enqueue(m).await.unwrap();
            let jobs = store.claim_due(i64::MAX / 4, 10, 60_000).await.unwrap();
            assert_eq!(jobs.len(), 1, "{size}");
            assert_eq!(jobs[0].body.as_slice(), expected.as_slice(), "{size}");
            let outcomes = jobs[0]
                .recipients
                .iter()
                .map(|r| RecipientOutcome {
                    message_id: jobs[0].message_id.clone(),
                    index: r.index,
                    recipient: r.address.clone(),
                    settlement: Settlement::Delivered,
                    detail: "ok".into(),
                    at: 2,
                    info: Default::default(),
                })
                .collect();
            store.settle(outcomes).await.unwrap();
        }
    }

    #[tokio::test]
    async fn webhooks_start_at_the_end_and_only_move_forward() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.enqueue(message(&["x@one.example"])).await.unwrap();
        let end = store.last_event_seq().await.unwrap();
        // One event so far (the recipient's "processed"), the first in the log.
        assert_eq!(end, 1);
        let hook = WebhookRecord {
            account: "admin".into(),
            url: "https://hooks.example/e".into(),
            enabled: true,
            kinds: vec![EventKind::Delivered, EventKind::Bounce],
            signing_key: Some(vec![1, 2, 3]),
            cursor: 0,
            created_at: 10,
            updated_at: 10,
            last_success_at: None,
            last_error: None,
            last_error_at: None,
        };
        store.put_webhook(hook.clone()).await.unwrap();
        let got = store.get_webhook("admin".into()).await.unwrap().unwrap();
        assert_eq!(got.cursor, end, "no replay of history");
        assert_eq!(got.kinds, hook.kinds);
        store.enqueue(message(&["y@one.example"])).await.unwrap();
        let later = store.last_event_seq().await.unwrap();
        store
            .advance_webhook("admin".into(), later, 20)
            .await
            .unwrap();
        store
            .advance_webhook("admin".into(), end, 21)
            .await
            .unwrap();
        store
            .webhook_failed("admin".into(), "HTTP 500".into(), 22)
            .await
            .unwrap();
        // Replacing the settings keeps the position.
        store
            .put_webhook(WebhookRecord {
                url: "https://hooks.example/new".into(),
                updated_at: 30,
                ..hook
            })
            .await
            .unwrap();
        let all = store.list_webhooks().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].cursor, later);
        assert_eq!(all[0].url, "https://hooks.example/new");
        assert_eq!(all[0].last_error.as_deref(), Some("HTTP 500"));
        assert_eq!(all[0].created_at, 10);
    }

    #[tokio::test]
    async fn domains_by_name_and_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let d = DomainRecord {
            id: 0,
            domain: "example.com".into(),
            account: "admin".into(),
            selector: "pst1".into(),
            rsa_private: vec![1],
            rsa_public: vec![2],
            ed25519_private: vec![3],
            ed25519_public: vec![4],
            return_path: "pst-bounces".into(),
            return_path_mode: Default::default(),
            created_at: 5,
            verified_at: None,
            verified_by: None,
            next: None,
            previous: None,
        };
        let id = store.add_domain(d.clone()).await.unwrap();
        assert!(matches!(
            store.add_domain(d.clone()).await,
            Err(StoreError::Conflict)
        ));
        let got = store
            .get_domain_for("admin".into(), "example.com".into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.id, id);
        assert_eq!(got.rsa_public, vec![2]);
        assert!(store
            .verified_domain("example.com".into())
            .await
            .unwrap()
            .is_none());
        assert_eq!(
            store.verify_domain(id, 9, "dns".into()).await.unwrap(),
            Some(vec![])
        );
        let by_id = store.get_domain_by_id(got.id).await.unwrap().unwrap();
        assert_eq!(by_id.verified_by.as_deref(), Some("dns"));
        assert_eq!(
            store
                .list_domains(Some("admin".into()))
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(store
            .list_domains(Some("other".into()))
            .await
            .unwrap()
            .is_empty());
        assert!(store.delete_domain(id).await.unwrap());
        assert!(store.get_domain_by_id(got.id).await.unwrap().is_none());
    }

    /// Issue 10 item 11: an unverified claim blocks nobody. Another account
    /// may add the same domain; whoever verifies it owns it, and the
    /// competing claims (with their keys) are gone; once verified, nobody
    /// else can add it, and only the verified row is ever looked up for
    /// signing.
    #[tokio::test]
    async fn unverified_claims_do_not_squat_a_domain() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        for name in ["victim", "squatter", "third"] {
            store.create_account(account(name, None)).await.unwrap();
        }
        let claim = |owner: &str, key: u8| DomainRecord {
            id: 0,
            domain: "victim.example".into(),
            account: owner.into(),
            selector: "pst1".into(),
            rsa_private: vec![key],
            rsa_public: vec![key],
            ed25519_private: vec![key],
            ed25519_public: vec![key],
            return_path: "pst-bounces".into(),
            return_path_mode: Default::default(),
            created_at: 5,
            verified_at: None,
            verified_by: None,
            next: None,
            previous: None,
        };
        let squat = store.add_domain(claim("squatter", 1)).await.unwrap();
        let third = store.add_domain(claim("third", 3)).await.unwrap();
        let mine = store.add_domain(claim("victim", 2)).await.unwrap();
        assert!(matches!(
            store.add_domain(claim("victim", 2)).await,
            Err(StoreError::Conflict)
        ));
        assert!(store
            .verified_domain("victim.example".into())
            .await
            .unwrap()
            .is_none());
        let retired = store
            .verify_domain(mine, 9, "dns".into())
            .await
            .unwrap()
            .unwrap();
        let mut gone: Vec<_> = retired.iter().map(|d| (d.id, d.account.clone())).collect();
        gone.sort();
        assert_eq!(
            gone,
            vec![(squat, "squatter".to_owned()), (third, "third".to_owned())]
        );
        assert!(store.get_domain_by_id(squat).await.unwrap().is_none());
        assert!(store
            .get_domain_for("squatter".into(), "victim.example".into())
            .await
            .unwrap()
            .is_none());
        let verified = store
            .verified_domain("victim.example".into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((verified.id, verified.account.as_str()), (mine, "victim"));
        assert_eq!(verified.rsa_private, vec![2]);
        // Verified: taken for everyone else, for good.
        assert!(matches!(
            store.add_domain(claim("squatter", 1)).await,
            Err(StoreError::Conflict)
        ));
        assert!(store
            .list_domains(Some("squatter".into()))
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn rotation_promotes_and_retires() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let d = DomainRecord {
            id: 0,
            domain: "example.com".into(),
            account: "admin".into(),
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
        };
        let v0 = store.senders_version().await.unwrap();
        let id = store.add_domain(d).await.unwrap();
        let v1 = store.senders_version().await.unwrap();
        assert!(v1 > v0, "adding a domain changes the version");
        assert!(!store.promote_rotation(id, 100).await.unwrap());
        let next = NextKeys {
            selector: "pst2".into(),
            rsa_private: vec![11],
            rsa_public: vec![12],
            ed25519_private: vec![13],
            ed25519_public: vec![14],
            created_at: 50,
        };
        assert!(store.start_rotation(id, next.clone()).await.unwrap());
        let got = store
            .verified_domain("example.com".into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.next, Some(next));
        assert_eq!(got.selector, "pst1", "the old keys sign until promotion");
        assert!(store.promote_rotation(id, 1_000).await.unwrap());
        let got = store
            .verified_domain("example.com".into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.selector, "pst2");
        assert_eq!(got.rsa_private, vec![11]);
        assert!(got.next.is_none());
        let prev = got.previous.unwrap();
        assert_eq!(
            (prev.selector.as_str(), prev.rsa_public, prev.retire_at),
            ("pst1", vec![2], 1_000)
        );
        assert!(store.retire_previous(999).await.unwrap().is_empty());
        assert_eq!(
            store.retire_previous(1_000).await.unwrap(),
            vec!["example.com".to_string()]
        );
        let got = store
            .verified_domain("example.com".into())
            .await
            .unwrap()
            .unwrap();
        assert!(got.previous.is_none());
    }

    #[tokio::test]
    async fn sender_tokens_are_single_use_expiring_and_rate_limited() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let sender = SenderRecord {
            id: 0,
            account: "admin".into(),
            address: "Alice@Example.COM".into(),
            nickname: "alice".into(),
            from_name: "Alice".into(),
            reply_to: String::new(),
            reply_to_name: String::new(),
            details: "{}".into(),
            created_at: 1,
            verified_at: None,
            token_hash: None,
            token_expires_at: None,
            last_sent_at: None,
            window_start: 0,
            window_sends: 0,
        };
        let id = store.add_sender(sender.clone()).await.unwrap();
        assert!(matches!(
            store.add_sender(sender).await,
            Err(StoreError::Conflict)
        ));
        let got = store.get_sender(id).await.unwrap().unwrap();
        assert_eq!(got.address, "alice@example.com");
        let limits = SendLimits {
            min_interval_millis: 60_000,
            window_millis: 86_400_000,
            per_window: 2,
        };
        let issue = |hash: &[u8], now| {
            store.issue_sender_token(id, hash.to_vec(), now + 1_000, now, limits)
        };
        assert_eq!(issue(b"t1", 10_000).await.unwrap(), TokenIssue::Issued);
        assert_eq!(
            issue(b"t2", 20_000).await.unwrap(),
            TokenIssue::TooSoon { retry_at: 70_000 }
        );
        assert_eq!(issue(b"t2", 70_000).await.unwrap(), TokenIssue::Issued);
        assert_eq!(
            issue(b"t3", 200_000).await.unwrap(),
            TokenIssue::TooSoon {
                retry_at: 10_000 + 86_400_000
            }
        );
        // The replaced token is gone; the newest one has expired by 80_000.
        assert_eq!(
            store
                .use_sender_token(b"t1".to_vec(), 70_500)
                .await
                .unwrap(),
            TokenUse::Unknown
        );
        assert_eq!(
            store
                .use_sender_token(b"t2".to_vec(), 80_000)
                .await
                .unwrap(),
            TokenUse::Expired
        );
        // A new day's window allows a fresh token, which verifies once.
        assert_eq!(issue(b"t4", 86_500_000).await.unwrap(), TokenIssue::Issued);
        match store
            .use_sender_token(b"t4".to_vec(), 86_500_500)
            .await
            .unwrap()
        {
            TokenUse::Verified(s) => assert_eq!(s.verified_at, Some(86_500_500)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            store
                .use_sender_token(b"t4".to_vec(), 86_500_600)
                .await
                .unwrap(),
            TokenUse::Unknown
        );
        assert_eq!(
            issue(b"t5", 90_000_000).await.unwrap(),
            TokenIssue::AlreadyVerified
        );
        assert_eq!(
            store
                .list_senders(Some("admin".into()))
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(store
            .list_senders(Some("other".into()))
            .await
            .unwrap()
            .is_empty());
        assert!(store.delete_sender(id).await.unwrap());
        assert!(store.get_sender(id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn mta_sts_policies_persist_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert!(store
            .mta_sts_policy("example.net".into(), 0)
            .await
            .unwrap()
            .is_none());
        store
            .put_mta_sts_policy("example.net".into(), "1".into(), "p1".into(), 1_000)
            .await
            .unwrap();
        store
            .put_mta_sts_policy("example.net".into(), "2".into(), "p2".into(), 2_000)
            .await
            .unwrap();
        store.close();
        drop(store);
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(
            store
                .mta_sts_policy("example.net".into(), 1_500)
                .await
                .unwrap(),
            Some(("2".into(), "p2".into(), 2_000))
        );
        assert!(store
            .mta_sts_policy("example.net".into(), 2_000)
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn queue_listing_retry_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let a = message(&["x@one.example", "y@two.example"]);
        let b = message(&["z@two.example"]);
        let (a_id, b_id) = (a.id.to_string(), b.id.to_string());
        store.enqueue(a).await.unwrap();
        store.enqueue(b).await.unwrap();

        let all = store.queued_messages(QueueFilter::default()).await.unwrap();
        assert_eq!(all.len(), 2);
        let one = store
            .queued_messages(QueueFilter {
                domain: Some("ONE.example".into()),
                ..QueueFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].id, a_id);
        assert_eq!(one[0].recipients.len(), 2);
        assert!(store
            .queued_messages(QueueFilter {
                account: Some("nobody".into()),
                ..QueueFilter::default()
            })
            .await
            .unwrap()
            .is_empty());

        // Defer z, then retry it now.
        let jobs = store.claim_due(2_000, 100, 60_000).await.unwrap();
        let z = jobs.iter().find(|j| j.message_id.as_str() == b_id).unwrap();
        store
            .settle(vec![RecipientOutcome {
                message_id: z.message_id.clone(),
                index: 0,
                recipient: "z@two.example".into(),
                settlement: Settlement::Deferred {
                    next_attempt: 1_000_000,
                },
                detail: "451 later".into(),
                at: 3_000,
                info: AttemptInfo::default(),
            }])
            .await
            .unwrap();
        let shown = store.queued_message(b_id.clone()).await.unwrap().unwrap();
        assert_eq!(shown.recipients[0].attempts, 1);
        assert_eq!(shown.recipients[0].last_reply.as_deref(), Some("451 later"));
        assert_eq!(
            store
                .retry_now(Some(b_id.clone()), QueueFilter::default(), 4_000)
                .await
                .unwrap(),
            1
        );
        let shown = store.queued_message(b_id.clone()).await.unwrap().unwrap();
        assert_eq!(shown.recipients[0].next_attempt, 4_000);

        // Delete a: its waiting recipients are dropped, the message leaves.
        // a's recipients are leased by the claim above; deleting wins, and
        // the late settlement of that attempt records nothing.
        assert_eq!(
            store
                .delete_queued(a_id.clone(), "deleted by operator".into(), 5_000)
                .await
                .unwrap(),
            2
        );
        assert!(store.queued_message(a_id.clone()).await.unwrap().is_none());
        let a_job = jobs.iter().find(|j| j.message_id.as_str() == a_id).unwrap();
        store
            .settle(vec![RecipientOutcome {
                message_id: a_job.message_id.clone(),
                index: a_job.recipients[0].index,
                recipient: a_job.recipients[0].address.clone(),
                settlement: Settlement::Delivered,
                detail: "250 ok".into(),
                at: 6_000,
                info: AttemptInfo::default(),
            }])
            .await
            .unwrap();
        let events = store
            .events(EventFilter {
                message_id: Some(a_id.clone()),
                ..EventFilter::default()
            })
            .await
            .unwrap();
        let dropped: Vec<_> = events
            .iter()
            .filter(|e| e.kind == EventKind::Dropped)
            .collect();
        assert_eq!(dropped.len(), 2);
        assert_eq!(dropped[0].detail, "deleted by operator");
        assert!(!events.iter().any(|e| e.kind == EventKind::Delivered));
    }

    #[tokio::test]
    async fn survives_reopen_and_concurrent_writers_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
            let mut tasks = Vec::new();
            for _ in 0..200 {
                let s = store.clone();
                tasks.push(tokio::spawn(async move {
                    s.enqueue(message(&["r@example.net"])).await
                }));
            }
            for t in tasks {
                t.await.unwrap().unwrap();
            }
            // The 200 writes shared commits: each task queues its write and
            // waits, so while the writer syncs one batch to disk the others
            // pile up and go in the next one. Measured here: 1 or 2 commits
            // for the 200 (how the first ones split is up to the threads'
            // timing); at most 20 (ten messages per fsync on average) leaves
            // room for a slow disk, while one commit per message (no group
            // commit) would show 200.
            let (commits, operations) = store.commit_counts();
            println!("{operations} writes in {commits} commits");
            assert_eq!(operations, 200, "only the enqueues wrote");
            assert!(commits <= 20, "{commits} commits for {operations} writes");
            // Leased work of a node that stopped is released on start-up.
            assert_eq!(store.claim_due(5_000, 10, 60_000).await.unwrap().len(), 10);
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.queue_summary().await.unwrap().recipients_queued, 200);
        assert_eq!(store.release_all_leases().await.unwrap(), 10);
        assert_eq!(
            store.claim_due(5_000, 1000, 60_000).await.unwrap().len(),
            200
        );
    }

    fn account(name: &str, parent: Option<&str>) -> AccountRecord {
        AccountRecord {
            id: 0,
            name: name.into(),
            parent: parent.map(Into::into),
            disabled: false,
            allow_password_auth: false,
            password_hash: None,
            created_at: 1,
            email: None,
            cram_md5: None,
            max_messages_per_hour: None,
            ip_pool: None,
            sender_alignment: None,
            require_2fa_for_credentials: false,
        }
    }

    #[tokio::test]
    async fn accounts_subusers_and_ip_rules() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert!(
            store.get_account("admin".into()).await.unwrap().is_some(),
            "admin exists from the start"
        );
        store.create_account(account("acme", None)).await.unwrap();
        store
            .create_account(account("marketing", Some("acme")))
            .await
            .unwrap();
        assert!(matches!(
            store.create_account(account("acme", None)).await,
            Err(StoreError::Conflict)
        ));
        assert!(matches!(
            store.create_account(account("x", Some("nobody"))).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store
                .create_account(account("deeper", Some("marketing")))
                .await,
            Err(StoreError::Conflict)
        ));
        let names: Vec<_> = store
            .list_accounts()
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(names, vec!["acme", "marketing", "admin"]);
        assert!(store
            .update_account(
                "marketing".into(),
                AccountUpdate {
                    disabled: Some(true),
                    ..Default::default()
                }
            )
            .await
            .unwrap());
        assert!(
            store
                .get_account("marketing".into())
                .await
                .unwrap()
                .unwrap()
                .disabled
        );
        assert!(!store
            .update_account("nobody".into(), AccountUpdate::default())
            .await
            .unwrap());

        store
            .add_ip_rule("acme".into(), "192.0.2.0/24".into())
            .await
            .unwrap();
        store
            .add_ip_rule("acme".into(), "2001:db8::/32".into())
            .await
            .unwrap();
        assert!(matches!(
            store
                .add_ip_rule("nobody".into(), "192.0.2.0/24".into())
                .await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(store.ip_rules("acme".into()).await.unwrap().len(), 2);
        assert!(store
            .remove_ip_rule("acme".into(), "192.0.2.0/24".into())
            .await
            .unwrap());
        let rules = store.ip_rules("acme".into()).await.unwrap();
        assert_eq!(
            rules.iter().map(|r| r.cidr.as_str()).collect::<Vec<_>>(),
            vec!["2001:db8::/32"]
        );
        assert!(!store
            .remove_ip_rule_by_id("marketing".into(), rules[0].id)
            .await
            .unwrap());
        assert!(store
            .remove_ip_rule_by_id("acme".into(), rules[0].id)
            .await
            .unwrap());
        assert!(matches!(
            store.delete_account("acme".into()).await,
            Err(StoreError::Conflict)
        ));
        assert!(store
            .delete_account("marketing".into())
            .await
            .unwrap()
            .is_some());
        assert!(store.delete_account("acme".into()).await.unwrap().is_some());
        assert!(store.get_account("acme".into()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn audit_log_is_a_verifiable_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        for i in 0..5 {
            store
                .append_audit(AuditEntry {
                    at: 100 + i,
                    kind: if i % 2 == 0 {
                        "auth.failure"
                    } else {
                        "key.create"
                    }
                    .into(),
                    actor: "apikey".into(),
                    account: Some(if i < 3 { "acme" } else { "admin" }.into()),
                    client_ip: Some("192.0.2.1".into()),
                    detail: format!("entry {i}"),
                })
                .await
                .unwrap();
        }
        assert_eq!(
            store.verify_audit().await.unwrap(),
            AuditVerification::Intact { entries: 5 }
        );
        let auth = store
            .audit(AuditFilter {
                kind: Some("auth.".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(auth.len(), 3);
        let acme = store
            .audit(AuditFilter {
                account: Some("acme".into()),
                since: Some(101),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(acme.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3]);

        // Append-only: the store refuses edits...
        let conn = open_connection(store.path(), StoreSynchronous::Full).unwrap();
        assert!(conn
            .execute("UPDATE audit SET detail = 'x' WHERE seq = 2", [])
            .is_err());
        assert!(conn.execute("DELETE FROM audit WHERE seq = 2", []).is_err());
        // ...and one who removes the guard is still caught by the chain.
        conn.execute_batch(
            "DROP TRIGGER audit_no_update; UPDATE audit SET detail = 'forged' WHERE seq = 3",
        )
        .unwrap();
        assert_eq!(
            store.verify_audit().await.unwrap(),
            AuditVerification::BrokenAt { seq: 3 }
        );
    }

    /// Key "k1" of admin, hash [1, 2, 3], for mail.send.
    fn key_k1() -> ApiKeyRecord {
        ApiKeyRecord {
            id: "k1".into(),
            account: "admin".into(),
            name: "first".into(),
            hash: vec![1, 2, 3],
            scopes: vec!["mail.send".into()],
            created_at: 5,
            expires_at: None,
            revoked_at: None,
            networks: vec![],
            last_used_at: None,
        }
    }

    /// Every change a login could see moves `auth_version`, whichever
    /// handle (process) makes it; reads and other tables do not.
    #[tokio::test]
    async fn auth_version_moves_with_every_change_a_login_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        // A second handle on the same files, as the CLI has.
        let cli = EmbeddedStore::open(dir.path()).unwrap();
        let key = key_k1();
        let mut seen = store.auth_version().await.unwrap();
        let mut moved = |what: &str, now: i64| {
            assert!(now > seen, "{what} moves the version ({seen} -> {now})");
            seen = now;
        };
        cli.insert_api_key(key).await.unwrap();
        moved("a new key", store.auth_version().await.unwrap());
        cli.update_api_key("k1".into(), None, Some(vec!["stats.read".into()]))
            .await
            .unwrap();
        moved("new scopes", store.auth_version().await.unwrap());
        cli.revoke_api_key("k1".into(), 9).await.unwrap();
        moved("a revocation", store.auth_version().await.unwrap());
        cli.create_account(account("t", None)).await.unwrap();
        moved("a new account", store.auth_version().await.unwrap());
        let disable = AccountUpdate {
            disabled: Some(true),
            ..Default::default()
        };
        cli.update_account("t".into(), disable).await.unwrap();
        moved("disabling", store.auth_version().await.unwrap());
        cli.add_ip_rule("t".into(), "192.0.2.0/24".into())
            .await
            .unwrap();
        moved("an IP rule", store.auth_version().await.unwrap());
        cli.remove_ip_rule("t".into(), "192.0.2.0/24".into())
            .await
            .unwrap();
        moved("removing it", store.auth_version().await.unwrap());
        cli.delete_account("t".into()).await.unwrap();
        moved("deleting the account", store.auth_version().await.unwrap());
        // Reads, and the audit log a login writes, leave it alone.
        store.find_api_key_by_hash(vec![1, 2, 3]).await.unwrap();
        store.get_account("admin".into()).await.unwrap();
        store.ip_rules("admin".into()).await.unwrap();
        store
            .append_audit(AuditEntry {
                at: 1,
                kind: "auth.success".into(),
                actor: "apikey".into(),
                account: Some("admin".into()),
                client_ip: None,
                detail: String::new(),
            })
            .await
            .unwrap();
        assert_eq!(store.auth_version().await.unwrap(), seen);
    }

    #[tokio::test]
    async fn api_keys_and_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let key = key_k1();
        store.insert_api_key(key.clone()).await.unwrap();
        assert!(matches!(
            store.insert_api_key(key.clone()).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(
            store.find_api_key_by_hash(vec![1, 2, 3]).await.unwrap(),
            Some(key)
        );
        assert!(store.revoke_api_key("k1".into(), 9).await.unwrap());
        assert!(!store.revoke_api_key("k1".into(), 10).await.unwrap());
        let found = store
            .find_api_key_by_hash(vec![1, 2, 3])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.revoked_at, Some(9));
        // A named secret is made once, from the OS generator, and kept: the
        // same value for every later call and after a reopen; another name,
        // or another store, has its own.
        let s1 = store.secret("key-hash", 32).await.unwrap();
        let s2 = store.secret("key-hash", 32).await.unwrap();
        assert_eq!(s1.len(), 32);
        assert_eq!(s1, s2);
        let named = store.secret("other", 32).await.unwrap();
        assert_eq!(named.len(), 32);
        assert_ne!(named, s1);
        drop(store);
        let reopened = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(reopened.secret("key-hash", 32).await.unwrap(), s1);
        let elsewhere = tempfile::tempdir().unwrap();
        let fresh = EmbeddedStore::open(elsewhere.path()).unwrap();
        assert_ne!(fresh.secret("key-hash", 32).await.unwrap(), s1);
    }

    #[tokio::test]
    async fn store_synchronous_sets_the_sqlite_level() {
        // PRAGMA synchronous reads back 0 (OFF), 1 (NORMAL) or 2 (FULL).
        for (level, want) in [
            (StoreSynchronous::Full, 2),
            (StoreSynchronous::Normal, 1),
            (StoreSynchronous::Off, 0),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = EmbeddedStore::open_configured(dir.path(), None, level).unwrap();
            let got: i64 = store
                .read(|c| Ok(c.query_row("PRAGMA synchronous", [], |r| r.get(0))?))
                .await
                .unwrap();
            assert_eq!(got, want, "{level:?}");
            // The writer runs its own connection: it must be set there too.
            let got: i64 = store
                .write(|c| Ok(c.query_row("PRAGMA synchronous", [], |r| r.get(0))?))
                .await
                .unwrap();
            assert_eq!(got, want, "{level:?} (writer)");
        }
    }
}
