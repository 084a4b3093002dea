//! The reports Postern sends about the mail it saw: DMARC aggregate
//! reports (RFC 7489 §7.2) to the senders of inbound mail, and TLS-RPT
//! reports (RFC 8460) to the recipient domains of its deliveries. The
//! server runs
//! `Reporter::run` every `reports.interval`; `postern reports send-now`
//! runs one pass at once. Reports are queued like DSNs
//! (`Intake::submit_generated`: null reverse-path, one recipient each), so
//! they are delivered, retried and logged like any other mail.

pub mod dmarc;
mod received;

/// Destinations served per report (a record's first `rua` entries).
pub const MAX_DESTINATIONS: usize = 5;
pub mod tls;

// Reports received for the company's own domains (`postern reports list`).
pub use received::*;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mail_auth::MessageAuthenticator;
use postern_core::config::ReportsConfig;
use postern_queue::Intake;
use postern_store::{DmarcPending, ReportDataStore, StoreError, TlsPending};
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

/// Posts a report over HTTPS (RFC 8460 §5.4); the server's is the
/// webhooks' client, with its rules on where it may connect.
pub trait ReportPoster: Send + Sync {
    fn post<'a>(
        &'a self,
        url: &'a str,
        content_type: &'static str,
        body: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

/// Sends the reports: one pass per `run_once`.
pub struct Reporter {
    dmarc: bool,
    tls: bool,
    poster: Option<Arc<dyn ReportPoster>>,
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
            dmarc: config.dmarc_aggregate,
            tls: config.tls_rpt,
            poster: None,
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

    /// Posts TLS-RPT reports to `https:` destinations through `poster`;
    /// without one they are not sent there (and said so).
    pub fn with_poster(mut self, poster: Arc<dyn ReportPoster>) -> Self {
        self.poster = Some(poster);
        self
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
    /// aggregate report per policy domain and a TLS-RPT report per
    /// recipient domain to each destination that takes it, and forgets
    /// what was reported.
    pub async fn run_once(&self, now: i64) -> Result<PassSummary, ReportError> {
        let cut = now.saturating_sub(self.retention.as_millis() as i64);
        let mut summary = PassSummary {
            expired: self.store.expire_dmarc(cut).await? + self.store.expire_tls(cut).await?,
            ..Default::default()
        };
        if self.dmarc {
            self.dmarc_pass(now, &mut summary).await?;
        }
        if self.tls {
            for pending in self.store.tls_pending().await? {
                self.send_tls(&pending, now, &mut summary).await?;
            }
        }
        Ok(summary)
    }

    async fn dmarc_pass(&self, now: i64, summary: &mut PassSummary) -> Result<(), ReportError> {
        let pending = self.store.dmarc_pending().await?;
        // RFC 7489 §7.2: one report per policy domain, however many From
        // domains under it were seen.
        type Group<'a> = (Vec<(String, usize)>, Vec<&'a DmarcPending>);
        let mut by_policy: BTreeMap<String, Group<'_>> = BTreeMap::new();
        for p in &pending {
            match dmarc::policy_domain(&self.dns, &p.from_domain).await {
                Ok(Some((domain, rua))) => {
                    let entry = by_policy.entry(domain).or_default();
                    entry.0 = rua;
                    entry.1.push(p);
                }
                // The record is gone: nobody asks for these reports now.
                Ok(None) => {
                    summary.not_sent.push(format!(
                        "dmarc {}: no DMARC record any more; its records are dropped",
                        p.from_domain
                    ));
                    self.forget(&[p]).await?;
                }
                Err(e) => summary.not_sent.push(format!(
                    "dmarc {}: {e}; kept for the next pass",
                    p.from_domain
                )),
            }
        }
        for (domain, (rua, group)) in by_policy {
            self.send_dmarc(&domain, &rua, &group, now, summary).await?;
        }
        Ok(())
    }

    /// The TLS-RPT report of one recipient domain, to each `rua` of its
    /// `_smtp._tls` record (RFC 8460 §3): `mailto:` queued as mail,
    /// `https:` posted. A domain without the record gets nothing and its
    /// sessions are forgotten.
    async fn send_tls(
        &self,
        pending: &TlsPending,
        now: i64,
        summary: &mut PassSummary,
    ) -> Result<(), ReportError> {
        let domain = pending.policy_domain.as_str();
        let rua = match tls::destinations(&self.dns, domain).await {
            Ok(Some(rua)) => rua,
            Ok(None) => {
                self.store
                    .forget_tls(domain.to_owned(), pending.up_to)
                    .await?;
                return Ok(());
            }
            Err(e) => {
                summary
                    .not_sent
                    .push(format!("tls {domain}: {e}; kept for the next pass"));
                return Ok(());
            }
        };
        let sessions: u64 = pending.rows.iter().map(|(_, _, n)| n).sum();
        let report_id = format!("{}.{}", domain, postern_core::MessageId::generate());
        let report = match tls::build(pending, &self.org_name, &self.from, &report_id, now) {
            Ok(r) => r,
            Err(e) => {
                summary
                    .not_sent
                    .push(format!("tls {domain}: {e}; its records are dropped"));
                self.store
                    .forget_tls(domain.to_owned(), pending.up_to)
                    .await?;
                return Ok(());
            }
        };
        let body = tls::gzipped(&report)?;
        let (mut failed, mut sent) = (false, false);
        for uri in rua {
            let (to, outcome) = match &uri {
                mail_auth::mta_sts::ReportUri::Mail(address) => {
                    if postern_core::address::Address::parse(address, false).is_err() {
                        summary
                            .not_sent
                            .push(format!("tls {domain} to {address}: not an address"));
                        continue;
                    }
                    let mail =
                        tls::message(&report, domain, &self.hostname, &self.from, address, &body)?;
                    let detail = format!(
                        "tls report for {domain}: {sessions} sessions, report id {report_id}"
                    );
                    (
                        address.clone(),
                        self.intake
                            .submit_generated(address, mail, detail)
                            .await
                            .map(|id| id.to_string())
                            .map_err(|e| e.to_string()),
                    )
                }
                mail_auth::mta_sts::ReportUri::Http(url) => {
                    // RFC 8460 §3: only https: is a valid HTTP destination.
                    let outcome = match &self.poster {
                        _ if !url.starts_with("https://") => Err("not an https: URI".to_owned()),
                        Some(p) => p
                            .post(url, "application/tlsrpt+gzip", body.clone())
                            .await
                            .map(|()| "posted".to_owned()),
                        None => Err("no HTTPS client in this process".to_owned()),
                    };
                    (url.clone(), outcome)
                }
            };
            match outcome {
                Ok(how) => {
                    sent = true;
                    metrics::counter!("postern_reports_sent_total", "kind" => "tls").increment(1);
                    tracing::info!(%domain, to = %to, sessions, %report_id, "reports: TLS-RPT report sent");
                    summary
                        .sent
                        .push(format!("tls {domain} to {to}: {sessions} sessions ({how})"));
                }
                Err(e) => {
                    failed = true;
                    metrics::counter!("postern_reports_not_sent_total", "kind" => "tls", "reason" => "failed")
                        .increment(1);
                    tracing::warn!(%domain, to = %to, error = %e, "reports: TLS-RPT report not sent");
                    summary.not_sent.push(format!("tls {domain} to {to}: {e}"));
                }
            }
        }
        // Reported once. Kept for the next pass only when every destination
        // failed (RFC 8460 §5.4 asks for a retry; one that took the report
        // must not get it twice).
        if sent || !failed {
            self.store
                .forget_tls(domain.to_owned(), pending.up_to)
                .await?;
        }
        Ok(())
    }

    async fn send_dmarc(
        &self,
        domain: &str,
        rua: &[(String, usize)],
        group: &[&DmarcPending],
        now: i64,
        summary: &mut PassSummary,
    ) -> Result<(), ReportError> {
        let report_id = format!("{}.{}", domain, postern_core::MessageId::generate());
        let messages: u64 = group.iter().flat_map(|p| &p.rows).map(|(_, n)| n).sum();
        let built = dmarc::build(domain, group, &self.org_name, &self.from, &report_id, now);
        let (report, _) = match built {
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
        let destinations = match dmarc::authorized_destinations(&self.dns, domain, rua).await {
            Ok(d) => d,
            Err(e) => {
                summary
                    .not_sent
                    .push(format!("dmarc {domain}: {e}; kept for the next pass"));
                return Ok(());
            }
        };
        for (address, _) in rua {
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
