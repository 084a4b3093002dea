//! The reports Postern sends about the mail it saw: DMARC aggregate
//! reports (RFC 7489 §7.2) to the senders of inbound mail. The server runs
//! `Reporter::run` every `reports.interval`; `postern reports send-now`
//! runs one pass at once. Reports are queued like DSNs
//! (`Intake::submit_generated`: null reverse-path, one recipient each), so
//! they are delivered, retried and logged like any other mail.

pub mod dmarc;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mail_auth::MessageAuthenticator;
use postern_core::config::ReportsConfig;
use postern_queue::Intake;
use postern_store::{DmarcPending, ReportDataStore, StoreError};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("DNS: {0}")]
    Dns(String),
    #[error("report data: {0}")]
    Data(String),
    #[error("resolver: {0}")]
    Resolver(String),
}

/// What one pass did, a line per report sent or not sent, for the log and
/// `postern reports send-now`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassSummary {
    pub sent: Vec<String>,
    pub not_sent: Vec<String>,
    /// Observations dropped for their age (`reports.retention`).
    pub expired: u64,
}

/// Sends the reports: one pass per `run_once`.
pub struct Reporter {
    store: Arc<dyn ReportDataStore>,
    intake: Intake,
    dns: MessageAuthenticator,
    /// The submitter named in subjects and file names (RFC 7489 §7.2.1.1).
    hostname: String,
    org_name: String,
    from: String,
    retention: Duration,
}

impl Reporter {
    pub fn new(
        config: &ReportsConfig,
        hostname: &str,
        nameservers: &[SocketAddr],
        dns_timeout: Duration,
        store: Arc<dyn ReportDataStore>,
        intake: Intake,
    ) -> Result<Self, ReportError> {
        Ok(Reporter {
            store,
            intake,
            dns: crate::inbound::resolver(nameservers, dns_timeout)
                .map_err(ReportError::Resolver)?,
            hostname: hostname.to_ascii_lowercase(),
            org_name: config.org_name_for(hostname),
            from: config.from_for(hostname),
            retention: config.retention,
        })
    }

    /// Every `interval` (the first one `interval` after start), until
    /// shutdown.
    pub async fn run(self: Arc<Self>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            match self.run_once(postern_core::time::now_millis()).await {
                Ok(s) => tracing::info!(
                    sent = s.sent.len(),
                    not_sent = s.not_sent.len(),
                    expired = s.expired,
                    "reports: pass done"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "reports: pass failed; trying again next time")
                }
            }
        }
    }

    /// One pass: drops what is past the retention, then sends a DMARC
    /// aggregate report per policy domain to each destination that takes
    /// it, and forgets what was reported.
    pub async fn run_once(&self, now: i64) -> Result<PassSummary, ReportError> {
        let mut summary = PassSummary {
            expired: self
                .store
                .expire_dmarc(now.saturating_sub(self.retention.as_millis() as i64))
                .await?,
            ..Default::default()
        };
        let pending = self.store.dmarc_pending().await?;
        // RFC 7489 §7.2: one report per policy domain, however many From
        // domains under it were seen.
        let mut by_policy: BTreeMap<String, Vec<&DmarcPending>> = BTreeMap::new();
        for p in &pending {
            match dmarc::policy_domain(&self.dns, &p.from_domain).await {
                // The record is gone: its policy domain as it was is the
                // From domain's best guess; the stored rua still apply.
                Ok(found) => by_policy
                    .entry(found.unwrap_or_else(|| p.from_domain.clone()))
                    .or_default()
                    .push(p),
                Err(e) => summary.not_sent.push(format!(
                    "dmarc {}: {e}; kept for the next pass",
                    p.from_domain
                )),
            }
        }
        for (domain, group) in by_policy {
            self.send_dmarc(&domain, &group, now, &mut summary).await?;
        }
        Ok(summary)
    }

    async fn send_dmarc(
        &self,
        domain: &str,
        group: &[&DmarcPending],
        now: i64,
        summary: &mut PassSummary,
    ) -> Result<(), ReportError> {
        let report_id = format!("{}.{}", domain, postern_core::MessageId::generate());
        let messages: u64 = group.iter().flat_map(|p| &p.rows).map(|(_, n)| n).sum();
        let built = dmarc::build(domain, group, &self.org_name, &self.from, &report_id, now);
        let (report, policy) = match built {
            Ok(b) => b,
            Err(e) => {
                // Unreadable rows never become readable: dropped, said so.
                summary
                    .not_sent
                    .push(format!("dmarc {domain}: {e}; its records are dropped"));
                self.forget(group).await?;
                return Ok(());
            }
        };
        let destinations =
            match dmarc::authorized_destinations(&self.dns, domain, &policy.rua).await {
                Ok(d) => d,
                Err(e) => {
                    summary
                        .not_sent
                        .push(format!("dmarc {domain}: {e}; kept for the next pass"));
                    return Ok(());
                }
            };
        for (address, _) in &policy.rua {
            if !destinations.iter().any(|(a, _)| a == address) {
                metrics::counter!("postern_reports_not_sent_total", "kind" => "dmarc", "reason" => "unauthorized")
                    .increment(1);
                summary.not_sent.push(format!(
                    "dmarc {domain} to {address}: the destination's domain does not publish {domain}._report._dmarc (RFC 7489 section 7.1)"
                ));
            }
        }
        let mut queue_failed = false;
        for (address, max_size) in destinations {
            let mail = dmarc::message(&report, &self.hostname, &self.from, &address)?;
            // RFC 7489 §6.2: a report larger than the URI's size limit is
            // not sent to it.
            if max_size > 0 && mail.len() > max_size {
                metrics::counter!("postern_reports_not_sent_total", "kind" => "dmarc", "reason" => "size")
                    .increment(1);
                summary.not_sent.push(format!(
                    "dmarc {domain} to {address}: {} bytes, over its limit of {max_size}",
                    mail.len()
                ));
                continue;
            }
            let detail = format!(
                "dmarc aggregate report for {domain}: {messages} messages, {} records, report id {report_id}",
                report.records().len()
            );
            match self.intake.submit_generated(&address, mail, detail).await {
                Ok(id) => {
                    metrics::counter!("postern_reports_sent_total", "kind" => "dmarc").increment(1);
                    tracing::info!(%domain, to = %address, messages, %report_id, message_id = %id, "reports: DMARC aggregate report queued");
                    summary.sent.push(format!(
                        "dmarc {domain} to {address}: {messages} messages ({id})"
                    ));
                }
                Err(e) => {
                    queue_failed = true;
                    tracing::warn!(%domain, to = %address, error = %e, "reports: cannot queue a DMARC aggregate report");
                    summary
                        .not_sent
                        .push(format!("dmarc {domain} to {address}: {e}"));
                }
            }
        }
        // Reported once: forgotten unless queueing failed (then the next
        // pass tries again, until the retention drops them).
        if !queue_failed {
            self.forget(group).await?;
        }
        Ok(())
    }

    async fn forget(&self, group: &[&DmarcPending]) -> Result<(), ReportError> {
        for p in group {
            self.store
                .forget_dmarc(p.from_domain.clone(), p.up_to)
                .await?;
        }
        Ok(())
    }
}
