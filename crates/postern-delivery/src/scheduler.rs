//! The scheduler: claims due work from the store, sorts it into
//! destinations (one MX host, or one route's next hop, from one source
//! address), and runs workers per destination within its limits. A worker
//! keeps its connection open and sends the destination's next messages
//! over it (RFC 5321 §4.1.4), then QUITs when the destination has nothing
//! more for `connection_idle`.
//!
//! Nothing here holds up other destinations: a slow or failing destination
//! only ever occupies its own workers (at most its connection limit), its
//! backlog in memory is capped, and DNS for sorting is bounded by a short
//! timeout. The scheduler reads only the store: a message queued by another
//! node or a restart is picked up the same way as one queued a moment ago.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postern_core::bounce::{self, BounceClass};
use postern_core::AttemptInfo;
use postern_queue::dsn::{self, Bounce, FailedRecipient};
use postern_queue::{Intake, RetrySchedule};
use postern_store::{
    AccountStore, DeliveryJob, QueueStore, RecipientOutcome, Settlement, Suppression,
    SuppressionStore,
};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::client::{Attempt, KeptConnection, SmtpClient, Source};
use crate::outcome::Outcome;
use crate::route::{Destination, Router};
use crate::shaping::{HourWindow, Limits, Shaping};

/// How long a claim holds work. It must outlast the slowest attempt (a
/// few timeouts in a row) plus the wait in a destination's backlog; an
/// expired lease makes the work due again.
const LEASE: Duration = Duration::from_secs(30 * 60);
/// Longest sleep when idle, so work queued by another process (the CLI,
/// another node) is found without a wake-up.
const IDLE_POLL: Duration = Duration::from_secs(2);
/// Jobs one destination may hold in memory; more wait in the store, so a
/// slow destination cannot fill the scheduler's window.
const BACKLOG_PER_DESTINATION: usize = 500;
/// Postponement for work over a destination's backlog.
const BACKLOG_RETRY: Duration = Duration::from_secs(2);
/// DNS used only to sort work by MX host: a slow answer sorts the job by
/// its domain instead, and the worker resolves with the full timeouts.
const SORT_DNS_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the queue gauges (size, age) are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(15);
/// How often account-to-pool bindings are re-read.
const POOL_REFRESH: Duration = Duration::from_secs(10);

pub struct Scheduler {
    pub store: Arc<dyn QueueStore>,
    pub client: Arc<SmtpClient>,
    pub router: Arc<Router>,
    pub retry: RetrySchedule,
    /// Connections (workers) at once, across all destinations.
    pub concurrency: usize,
    pub wakeup: Arc<Notify>,
    /// Where DSNs for failed recipients are queued (None: no bounces, as in
    /// tests of delivery alone).
    pub bounces: Option<Intake>,
    /// Where hard-bounced addresses are recorded per account (None: not kept).
    pub suppressions: Option<Arc<dyn SuppressionStore>>,
    pub shaping: Shaping,
    /// Where accounts' IP pools are read (None: every message uses the
    /// default pool, if any).
    pub accounts: Option<Arc<dyn AccountStore>>,
    /// DSNs for mail that came in without authentication: headers only,
    /// and at most this many (backscatter to forged senders).
    pub unauthenticated_dsns: Arc<crate::dsn_limit::DsnLimiter>,
    /// Message bytes claimed for delivery and held in memory at most (a
    /// single message larger than this is claimed alone, when nothing else
    /// is held).
    pub max_body_bytes: usize,
}

struct Work {
    job: DeliveryJob,
    route: Destination,
}

struct DestinationState {
    pending: VecDeque<Work>,
    workers: usize,
    limits: Limits,
    source: Option<Source>,
    /// Wakes an idle worker of this destination when work arrives.
    arrived: Arc<Notify>,
}

/// account -> (parent, ip_pool), and when it was read.
type PoolBindings = (
    HashMap<String, (Option<String>, Option<String>)>,
    Option<Instant>,
);

struct Shared {
    destinations: Mutex<HashMap<String, DestinationState>>,
    slots: Arc<Semaphore>,
    in_memory: AtomicUsize,
    /// Body bytes of those jobs (a body shared by jobs counts for each).
    bytes_in_memory: AtomicUsize,
    /// A worker finished a job or stopped: the loop may claim or spawn.
    changed: Notify,
    /// Work waits for a free connection slot: idle workers should leave.
    slot_wanted: Notify,
    pools: Mutex<PoolBindings>,
    /// Hourly windows by destination host and by source address. Kept
    /// apart from the destinations, which come and go with their work,
    /// so a limit holds for the whole hour.
    hours: Mutex<HashMap<String, HourWindow>>,
}

/// Queue size and age for Prometheus.
async fn queue_gauges(store: &dyn QueueStore) {
    match store.queue_summary().await {
        Ok(s) => {
            metrics::gauge!("postern_queue_messages").set(s.messages as f64);
            metrics::gauge!("postern_queue_recipients", "state" => "waiting")
                .set(s.recipients_queued.saturating_sub(s.recipients_leased) as f64);
            metrics::gauge!("postern_queue_recipients", "state" => "in_flight")
                .set(s.recipients_leased as f64);
            let age = s
                .oldest_received_at
                .map(|t| (postern_core::time::now_millis() - t).max(0) as f64 / 1000.0)
                .unwrap_or(0.0);
            metrics::gauge!("postern_queue_oldest_age_seconds").set(age);
        }
        Err(e) => tracing::warn!(error = %e, "could not read the queue summary"),
    }
}

impl Scheduler {
    /// Runs until `shutdown` turns true, then waits up to `grace` for
    /// attempts in flight; work not started goes back to the store at once,
    /// and attempts still running after `grace` are abandoned (their lease
    /// makes them due again).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>, grace: Duration) {
        let shared = Arc::new(Shared {
            destinations: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(self.concurrency.max(1))),
            in_memory: AtomicUsize::new(0),
            bytes_in_memory: AtomicUsize::new(0),
            changed: Notify::new(),
            slot_wanted: Notify::new(),
            pools: Mutex::new((HashMap::new(), None)),
            hours: Mutex::new(HashMap::new()),
        });
        let this = Arc::new(self);
        // Enough claimed work to keep every connection busy, with room for
        // several messages per connection.
        let window = (this.concurrency * 8).max(256);
        let mut gauges_at = Instant::now() - GAUGE_INTERVAL;
        loop {
            if *shutdown.borrow() {
                break;
            }
            if gauges_at.elapsed() >= GAUGE_INTERVAL {
                gauges_at = Instant::now();
                let store = this.store.clone();
                tokio::spawn(async move { queue_gauges(store.as_ref()).await });
            }
            let now = postern_core::time::now_millis();
            // Room in jobs and in bytes: large messages claim fewer at once.
            // What is claimed fits in the room; only with nothing held is a
            // message larger than the whole bound taken (alone), so such a
            // message is still delivered.
            let held = shared.bytes_in_memory.load(Ordering::Acquire);
            let bytes_room = this.max_body_bytes.saturating_sub(held);
            let room = if bytes_room == 0 {
                0
            } else {
                window.saturating_sub(shared.in_memory.load(Ordering::Acquire))
            };
            let mut claimed = 0;
            if room > 0 {
                match this
                    .store
                    .claim_due_within(
                        now,
                        room,
                        LEASE.as_millis() as i64,
                        i64::try_from(bytes_room).unwrap_or(i64::MAX),
                        held == 0,
                    )
                    .await
                {
                    Ok(jobs) => {
                        claimed = jobs.len();
                        this.sort(&shared, jobs).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "scheduler: claim failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            this.spawn_workers(&shared, &shutdown);
            metrics::gauge!("postern_delivery_in_memory")
                .set(shared.in_memory.load(Ordering::Relaxed) as f64);
            if claimed > 0 && claimed == room {
                // There may be more due right now.
                tokio::task::yield_now().await;
                continue;
            }
            let wait = if room == 0 {
                IDLE_POLL
            } else {
                match this.store.next_due().await {
                    // Due already, yet nothing was claimed: it did not fit in
                    // the bytes left, and waits for a delivery to finish
                    // (`changed`) rather than the loop asking again at once.
                    Ok(Some(t)) if t <= now && claimed == 0 => IDLE_POLL,
                    Ok(Some(t)) => Duration::from_millis(
                        (t - now).clamp(0, IDLE_POLL.as_millis() as i64) as u64,
                    ),
                    _ => IDLE_POLL,
                }
            };
            tokio::select! {
                _ = this.wakeup.notified() => {}
                _ = shared.changed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        tracing::info!("scheduler stopping; waiting for deliveries in flight");
        // Work not started goes back at once, for another node or the next start.
        let unstarted: Vec<(postern_core::MessageId, u32)> = {
            let mut dests = shared
                .destinations
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let drained: Vec<Work> = dests
                .values_mut()
                .flat_map(|d| d.pending.drain(..))
                .collect();
            shared.in_memory.fetch_sub(drained.len(), Ordering::AcqRel);
            shared.bytes_in_memory.fetch_sub(
                drained.iter().map(|w| w.job.body.len()).sum(),
                Ordering::AcqRel,
            );
            drained
                .into_iter()
                .flat_map(|w| {
                    let id = w.job.message_id.clone();
                    w.job
                        .recipients
                        .into_iter()
                        .map(move |r| (id.clone(), r.index))
                })
                .collect()
        };
        if !unstarted.is_empty() {
            let now = postern_core::time::now_millis();
            if let Err(e) = this.store.postpone(unstarted, now).await {
                tracing::warn!(error = %e, "could not release unstarted work; its leases will expire");
            }
        }
        shared.slot_wanted.notify_waiters();
        let all = this.concurrency.max(1) as u32;
        // Deliveries in flight, then the recording of their outcomes.
        let settled = async {
            let _all = shared.slots.acquire_many(all).await;
            while shared.in_memory.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(grace, settled).await.is_err() {
            tracing::warn!("deliveries still in flight at shutdown; they will be retried");
        }
    }

    /// The account's pool: its own, else its parent's (refreshed every few
    /// seconds from the store).
    async fn pool_of(&self, shared: &Shared, account: Option<&str>) -> Option<String> {
        let account = account?;
        let accounts = self.accounts.as_ref()?;
        let stale = {
            let p = shared.pools.lock().unwrap_or_else(|e| e.into_inner());
            p.1.is_none_or(|t| t.elapsed() > POOL_REFRESH)
        };
        if stale {
            match accounts.list_accounts().await {
                Ok(list) => {
                    let map = list
                        .into_iter()
                        .map(|a| (a.name, (a.parent, a.ip_pool)))
                        .collect();
                    *shared.pools.lock().unwrap_or_else(|e| e.into_inner()) =
                        (map, Some(Instant::now()));
                }
                Err(e) => tracing::warn!(error = %e, "could not read IP pool bindings"),
            }
        }
        let p = shared.pools.lock().unwrap_or_else(|e| e.into_inner());
        let (parent, own) = p.0.get(account)?;
        own.clone().or_else(|| {
            parent
                .as_ref()
                .and_then(|parent| p.0.get(parent)?.1.clone())
        })
    }

    /// Puts claimed jobs into their destinations' backlogs.
    async fn sort(&self, shared: &Arc<Shared>, jobs: Vec<DeliveryJob>) {
        // MX lookups for sorting run together, each briefly bounded.
        let mut lookups = tokio::task::JoinSet::new();
        for (i, job) in jobs.iter().enumerate() {
            let route = self.router.route(&job.domain);
            if let Destination::Mx = route {
                let client = self.client.clone();
                let domain = job.domain.clone();
                lookups.spawn(async move {
                    let host = tokio::time::timeout(SORT_DNS_TIMEOUT, client.first_mx(&domain))
                        .await
                        .ok()
                        .flatten();
                    (i, host)
                });
            }
        }
        let mut mx_hosts: HashMap<usize, String> = HashMap::new();
        while let Some(Ok((i, host))) = lookups.join_next().await {
            if let Some(h) = host {
                mx_hosts.insert(i, h);
            }
        }
        let now = Instant::now();
        let mut postponed: Vec<(postern_core::MessageId, u32, Duration, &'static str)> = Vec::new();
        for (i, job) in jobs.into_iter().enumerate() {
            let route = self.router.route(&job.domain);
            let host = match &route {
                Destination::Static(r) => format!("{}:{}", r.host, r.port),
                Destination::Mx => mx_hosts.remove(&i).unwrap_or_else(|| job.domain.clone()),
            };
            let limit_host = match &route {
                Destination::Static(r) => r.host.clone(),
                Destination::Mx => host.clone(),
            };
            let pool = self.pool_of(shared, job.account.as_deref()).await;
            let source = self.shaping.source_for(pool.as_deref(), &host);
            let key = format!(
                "{host}|{}",
                source
                    .as_ref()
                    .map(|s| s.ip.to_string())
                    .unwrap_or_default()
            );
            let mut dests = shared
                .destinations
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let dest = dests.entry(key).or_insert_with(|| DestinationState {
                pending: VecDeque::new(),
                workers: 0,
                limits: self.shaping.limits_for(&limit_host),
                source,
                arrived: Arc::new(Notify::new()),
            });
            let over = if dest.pending.len() >= BACKLOG_PER_DESTINATION {
                Some((BACKLOG_RETRY, "backlog"))
            } else {
                self.take_hourly(shared, &limit_host, dest.limits, dest.source.as_ref(), now)
            };
            match over {
                Some((wait, reason)) => {
                    for r in &job.recipients {
                        postponed.push((job.message_id.clone(), r.index, wait, reason));
                    }
                }
                None => {
                    shared.in_memory.fetch_add(1, Ordering::AcqRel);
                    shared
                        .bytes_in_memory
                        .fetch_add(job.body.len(), Ordering::AcqRel);
                    dest.pending.push_back(Work { job, route });
                    dest.arrived.notify_one();
                }
            }
        }
        // Over a limit: back to the store, due when there is room, without
        // counting an attempt.
        let mut by_wait: HashMap<(u64, &'static str), Vec<(postern_core::MessageId, u32)>> =
            HashMap::new();
        for (id, idx, wait, reason) in postponed {
            by_wait
                .entry((wait.as_millis() as u64, reason))
                .or_default()
                .push((id, idx));
        }
        for ((wait, reason), items) in by_wait {
            metrics::counter!("postern_delivery_postponed_total", "reason" => reason)
                .increment(items.len() as u64);
            let at = postern_core::time::now_millis() + wait as i64;
            if let Err(e) = self.store.postpone(items, at).await {
                tracing::warn!(error = %e, "could not postpone work; its lease will expire");
            }
        }
    }

    /// Takes one message from the destination's and the source's hourly
    /// allowances, or says how long to wait (taking from neither).
    fn take_hourly(
        &self,
        shared: &Shared,
        host: &str,
        limits: Limits,
        source: Option<&Source>,
        now: Instant,
    ) -> Option<(Duration, &'static str)> {
        let source_max = source.and_then(|s| self.shaping.source_limits.get(&s.ip).copied());
        if limits.max_messages_per_hour.is_none() && source_max.is_none() {
            return None;
        }
        let mut hours = shared.hours.lock().unwrap_or_else(|e| e.into_inner());
        let dest_key = format!("dest:{host}");
        let src_key = source.map(|s| format!("src:{}", s.ip));
        if let Some(max) = limits.max_messages_per_hour {
            if let Err(wait) = hours.entry(dest_key.clone()).or_default().check(max, now) {
                return Some((wait, "hourly_limit"));
            }
        }
        if let (Some(max), Some(key)) = (source_max, &src_key) {
            if let Err(wait) = hours.entry(key.clone()).or_default().check(max, now) {
                return Some((wait, "source_hourly_limit"));
            }
        }
        if let Some(max) = limits.max_messages_per_hour {
            let _ = hours.entry(dest_key).or_default().take(max, now);
        }
        if let (Some(max), Some(key)) = (source_max, src_key) {
            let _ = hours.entry(key).or_default().take(max, now);
        }
        if hours.len() > 10_000 {
            hours.retain(|_, w| !w.is_idle(now));
        }
        None
    }

    /// Starts workers where work waits, within each destination's connection
    /// limit and the global one.
    fn spawn_workers(self: &Arc<Self>, shared: &Arc<Shared>, shutdown: &watch::Receiver<bool>) {
        let mut dests = shared
            .destinations
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut starved = false;
        for (key, dest) in dests.iter_mut() {
            while dest.workers < dest.limits.max_connections && dest.workers < dest.pending.len() {
                let Ok(permit) = shared.slots.clone().try_acquire_owned() else {
                    starved = true;
                    break;
                };
                dest.workers += 1;
                let this = self.clone();
                let shared = shared.clone();
                let key = key.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move { this.worker(shared, key, permit, shutdown).await });
            }
        }
        dests.retain(|_, d| d.workers > 0 || !d.pending.is_empty());
        metrics::gauge!("postern_delivery_destinations").set(dests.len() as f64);
        if starved {
            shared.slot_wanted.notify_waiters();
        }
    }

    async fn worker(
        self: Arc<Self>,
        shared: Arc<Shared>,
        key: String,
        permit: OwnedSemaphorePermit,
        shutdown: watch::Receiver<bool>,
    ) {
        let mut kept: Option<KeptConnection> = None;
        loop {
            let next = {
                let mut dests = shared
                    .destinations
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                dests.get_mut(&key).map(|d| {
                    (
                        d.pending.pop_front(),
                        d.limits,
                        d.source.clone(),
                        d.arrived.clone(),
                    )
                })
            };
            let Some((work, limits, source, arrived)) = next else {
                break;
            };
            match work {
                Some(w) if !*shutdown.borrow() => {
                    let (job, attempt) = self
                        .attempt(
                            w,
                            source.as_ref(),
                            &mut kept,
                            limits.max_messages_per_connection,
                        )
                        .await;
                    // Recording the outcome (an fsync'd commit) runs beside
                    // the next delivery on this connection: the store's
                    // group commit batches the outcomes of every worker,
                    // and a worker never waits for the disk between
                    // messages. The lease covers the job until then.
                    let this = self.clone();
                    let shared = shared.clone();
                    let len = job.body.len();
                    tokio::spawn(async move {
                        this.record(job, attempt).await;
                        shared.in_memory.fetch_sub(1, Ordering::AcqRel);
                        shared.bytes_in_memory.fetch_sub(len, Ordering::AcqRel);
                        shared.changed.notify_one();
                    });
                }
                Some(w) => {
                    // Shutting down: not started, so back to the store now.
                    let now = postern_core::time::now_millis();
                    let items = w
                        .job
                        .recipients
                        .iter()
                        .map(|r| (w.job.message_id.clone(), r.index))
                        .collect();
                    let _ = self.store.postpone(items, now).await;
                    shared.in_memory.fetch_sub(1, Ordering::AcqRel);
                    shared
                        .bytes_in_memory
                        .fetch_sub(w.job.body.len(), Ordering::AcqRel);
                }
                None => {
                    if kept.is_none() || *shutdown.borrow() {
                        break;
                    }
                    // Idle with an open connection: wait a little for more
                    // mail to the same place, unless another destination
                    // needs the slot.
                    tokio::select! {
                        _ = arrived.notified() => continue,
                        _ = tokio::time::sleep(self.shaping.connection_idle) => break,
                        _ = shared.slot_wanted.notified() => break,
                    }
                }
            }
        }
        if let Some(k) = kept.take() {
            k.close().await;
        }
        {
            let mut dests = shared
                .destinations
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(d) = dests.get_mut(&key) {
                d.workers -= 1;
                if d.workers == 0 && d.pending.is_empty() {
                    dests.remove(&key);
                }
            }
        }
        drop(permit);
        shared.changed.notify_one();
    }

    async fn attempt(
        &self,
        work: Work,
        source: Option<&Source>,
        kept: &mut Option<KeptConnection>,
        max_messages: u32,
    ) -> (DeliveryJob, Attempt) {
        let Work { job, route } = work;
        let span = tracing::info_span!("delivery", message = %job.message_id, domain = %job.domain);
        let started = std::time::Instant::now();
        let attempt = self
            .client
            .deliver(&route, &job, source, kept, max_messages)
            .instrument(span)
            .await;
        metrics::histogram!("postern_delivery_attempt_seconds")
            .record(started.elapsed().as_secs_f64());
        (job, attempt)
    }

    /// Settles the outcomes: events, retries, bounces and DSNs, suppression.
    async fn record(&self, job: DeliveryJob, attempt: Attempt) {
        let now = postern_core::time::now_millis();
        let mut outcomes = Vec::with_capacity(job.recipients.len());
        let mut failed = Vec::new();
        let remote_mta = attempt.via.as_ref().map(|v| v.host.clone());
        let via_text = attempt
            .via
            .as_ref()
            .map(|v| format!(" via {v}"))
            .unwrap_or_default();
        for (rcpt, outcome) in job.recipients.iter().zip(attempt.outcomes) {
            let mut info = AttemptInfo {
                attempt: Some(rcpt.attempts + 1),
                ..AttemptInfo::default()
            };
            if let Some(v) = &attempt.via {
                info.remote_host = Some(v.host.clone());
                info.remote_ip = Some(v.addr.ip().to_string());
                info.source_ip = v.source.map(|ip| ip.to_string());
                info.tls = v.tls.clone();
                info.tls_policy = Some(v.tls_policy.to_owned());
            }
            let (settlement, detail, status) = match &outcome {
                Outcome::Delivered(d) => (Settlement::Delivered, format!("{d}{via_text}"), None),
                Outcome::Permanent(d) => (
                    Settlement::Failed,
                    format!("{d}{via_text}"),
                    Some(dsn::status_from_reply(d, true)),
                ),
                Outcome::Transient(d) => {
                    match self
                        .retry
                        .next_attempt(job.received_at, now, rcpt.attempts + 1)
                    {
                        Some(next_attempt) => {
                            info.status = Some(dsn::status_from_reply(d, false));
                            (
                                Settlement::Deferred { next_attempt },
                                format!("{d}{via_text}"),
                                None,
                            )
                        }
                        None => (
                            Settlement::Failed,
                            format!(
                                "gave up after {} attempts (queue.max_age reached): {d}{via_text}",
                                rcpt.attempts + 1
                            ),
                            // RFC 3463: 4.4.7, delivery time expired.
                            Some("4.4.7".to_owned()),
                        ),
                    }
                }
            };
            if let Some(status) = status.as_ref().or(info.status.as_ref()) {
                let class = bounce::classify(status, outcome.detail());
                info.classification = Some(class.label().to_owned());
                if settlement == Settlement::Failed {
                    metrics::counter!("postern_bounces_total", "class" => class.label(), "severity" => bounce::severity(status)).increment(1);
                }
            }
            if let Some(status) = &status {
                info.status = Some(status.clone());
                // A hard bounce (the address does not exist) goes on the
                // sending account's suppression list: later mail to the
                // address is dropped, not sent.
                let hard = bounce::severity(status) == "hard"
                    && info.classification.as_deref() == Some(BounceClass::InvalidAddress.label());
                if let (Some(store), Some(account), true) = (&self.suppressions, &job.account, hard)
                {
                    let entry = Suppression {
                        address: rcpt.address.clone(),
                        status: status.clone(),
                        reason: outcome.detail().to_owned(),
                        created_at: now,
                    };
                    if let Err(e) = store.suppress(account.clone(), entry).await {
                        tracing::error!(error = %e, "could not record a suppression");
                    }
                }
            }
            if let Some(status) = status {
                if dsn::wants_failure_notice(&rcpt.notify) {
                    failed.push(FailedRecipient {
                        address: rcpt.address.clone(),
                        orcpt: rcpt.orcpt.clone(),
                        status,
                        diagnostic: outcome.detail().to_owned(),
                        remote_mta: remote_mta.clone(),
                    });
                }
            }
            let label = match settlement {
                Settlement::Delivered => "delivered",
                Settlement::Deferred { .. } => "deferred",
                Settlement::Failed => "bounce",
            };
            metrics::counter!("postern_delivery_outcomes_total", "outcome" => label, "tls" => if info.tls.is_some() { "tls" } else { "plaintext" }).increment(1);
            if settlement == Settlement::Delivered {
                metrics::histogram!("postern_delivery_latency_seconds")
                    .record((now - job.received_at).max(0) as f64 / 1000.0);
            }
            if rcpt.attempts > 0 {
                metrics::counter!("postern_delivery_retries_total").increment(1);
            }
            tracing::info!(message = %job.message_id, rcpt = %rcpt.address, outcome = label, attempt = rcpt.attempts + 1, %detail, "delivery attempt");
            outcomes.push(RecipientOutcome {
                message_id: job.message_id.clone(),
                index: rcpt.index,
                recipient: rcpt.address.clone(),
                settlement,
                detail,
                at: now,
                info,
            });
        }
        // RFC 3461 §6.2 / RFC 5321 §4.5.5: a DSN goes to the envelope sender,
        // never for a message with a null sender (no bounce loops).
        let unauthenticated = job.account.is_none();
        let wants_dsn = !failed.is_empty() && !job.mail_from.is_empty();
        let dsn_allowed = !wants_dsn
            || !unauthenticated
            || {
                let ok = self.unauthenticated_dsns.allow(&job.mail_from);
                if !ok {
                    metrics::counter!("postern_dsn_suppressed_total", "reason" => "rate_limit")
                        .increment(1);
                    tracing::info!(message = %job.message_id, to = %job.mail_from, "DSN for unauthenticated mail not sent: rate limit");
                    for o in outcomes
                        .iter_mut()
                        .filter(|o| o.settlement == Settlement::Failed)
                    {
                        o.detail.push_str(
                            "; no DSN (rate limit for mail that arrived without authentication)",
                        );
                    }
                }
                ok
            };
        if let (Some(intake), false, false, true) = (
            &self.bounces,
            failed.is_empty(),
            job.mail_from.is_empty(),
            dsn_allowed,
        ) {
            let body = dsn::build(&Bounce {
                reporting_mta: intake.hostname(),
                original_sender: &job.mail_from,
                envid: job.envid.as_deref(),
                // A stranger's message is never sent back whole to an
                // address it may have forged: headers only.
                ret: if unauthenticated {
                    Some(postern_core::envelope::DsnReturn::Headers)
                } else {
                    job.ret
                },
                arrival_millis: job.received_at,
                now_millis: now,
                message_id: job.message_id.as_str(),
                recipients: &failed,
                original: &job.body,
            });
            let detail = format!(
                "DSN for {} about {} failed recipient(s)",
                job.message_id,
                failed.len()
            );
            match intake.submit_generated(&job.mail_from, body, detail).await {
                Ok(id) => {
                    metrics::counter!("postern_dsn_sent_total").increment(1);
                    for o in outcomes
                        .iter_mut()
                        .filter(|o| o.settlement == Settlement::Failed)
                    {
                        o.detail.push_str(&format!("; DSN queued as {id}"));
                    }
                }
                Err(e) => {
                    tracing::error!(message = %job.message_id, error = %e, "could not queue the DSN")
                }
            }
        }
        if let Err(e) = self.store.settle(outcomes).await {
            // The lease will expire and the attempt be repeated: a possible
            // duplicate, never a loss.
            tracing::error!(message = %job.message_id, error = %e, "could not record delivery outcome");
        }
    }
}
