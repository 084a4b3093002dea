//! The scheduler: claims due work from the store, delivers it with bounded
//! concurrency, and settles the outcomes (retry with backoff, or done).
//! It reads only the store: a message queued by another node or a restart
//! is picked up the same way as one queued a moment ago.

use std::sync::Arc;
use std::time::Duration;

use postern_core::bounce::{self, BounceClass};
use postern_core::AttemptInfo;
use postern_queue::dsn::{self, Bounce, FailedRecipient};
use postern_queue::{Intake, RetrySchedule};
use postern_store::{
    DeliveryJob, QueueStore, RecipientOutcome, Settlement, Suppression, SuppressionStore,
};
use tokio::sync::{watch, Notify, Semaphore};
use tracing::Instrument;

use crate::client::SmtpClient;
use crate::outcome::Outcome;
use crate::route::Router;

/// How long a claim holds work. It must outlast the slowest attempt (a
/// few timeouts in a row); an expired lease makes the work due again.
const LEASE: Duration = Duration::from_secs(30 * 60);
/// Longest sleep when idle, so work queued by another process (the CLI,
/// another node) is found without a wake-up.
const IDLE_POLL: Duration = Duration::from_secs(2);

pub struct Scheduler {
    pub store: Arc<dyn QueueStore>,
    pub client: Arc<SmtpClient>,
    pub router: Arc<Router>,
    pub retry: RetrySchedule,
    pub concurrency: usize,
    pub wakeup: Arc<Notify>,
    /// Where DSNs for failed recipients are queued (None: no bounces, as in
    /// tests of delivery alone).
    pub bounces: Option<Intake>,
    /// Where hard-bounced addresses are recorded per account (None: not kept).
    pub suppressions: Option<Arc<dyn SuppressionStore>>,
}

impl Scheduler {
    /// Runs until `shutdown` turns true, then waits up to `grace` for
    /// attempts in flight; any still running are abandoned and their lease
    /// makes them due again after a restart.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>, grace: Duration) {
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let this = Arc::new(self);
        loop {
            if *shutdown.borrow() {
                break;
            }
            let free = slots.available_permits();
            if free == 0 {
                tokio::select! {
                    p = slots.clone().acquire_owned() => drop(p),
                    _ = shutdown.wait_for(|s| *s) => break,
                }
                continue;
            }
            let now = postern_core::time::now_millis();
            let jobs = match this
                .store
                .claim_due(now, free, LEASE.as_millis() as i64)
                .await
            {
                Ok(j) => j,
                Err(e) => {
                    tracing::error!(error = %e, "scheduler: claim failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if jobs.is_empty() {
                let wait = match this.store.next_due().await {
                    Ok(Some(t)) => Duration::from_millis(
                        (t - now).clamp(0, IDLE_POLL.as_millis() as i64) as u64,
                    ),
                    _ => IDLE_POLL,
                };
                tokio::select! {
                    _ = this.wakeup.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait_for(|s| *s) => break,
                }
                continue;
            }
            for job in jobs {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let this = this.clone();
                tokio::spawn(async move {
                    this.attempt(job).await;
                    drop(permit);
                });
            }
        }
        tracing::info!("scheduler stopping; waiting for deliveries in flight");
        let all = this.concurrency as u32;
        if tokio::time::timeout(grace, slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("deliveries still in flight at shutdown; they will be retried");
        }
    }

    async fn attempt(&self, job: DeliveryJob) {
        let destination = self.router.route(&job.domain);
        let span = tracing::info_span!("delivery", message = %job.message_id, domain = %job.domain);
        let started = std::time::Instant::now();
        let attempt = self
            .client
            .deliver(&destination, &job)
            .instrument(span)
            .await;
        metrics::histogram!("postern_delivery_attempt_seconds")
            .record(started.elapsed().as_secs_f64());
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
        if let (Some(intake), false, false) =
            (&self.bounces, failed.is_empty(), job.mail_from.is_empty())
        {
            let body = dsn::build(&Bounce {
                reporting_mta: intake.hostname(),
                original_sender: &job.mail_from,
                envid: job.envid.as_deref(),
                ret: job.ret,
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
