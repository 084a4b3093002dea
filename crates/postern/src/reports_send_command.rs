//! `postern reports send-now`: one pass of the reports the server sends
//! every `reports.interval` (DMARC aggregate reports, TLS-RPT), at once,
//! from this process. Reports are queued in the store; a running server's scheduler
//! finds them within its idle poll and delivers them.

use std::sync::Arc;

use anyhow::Result;
use postern_core::Config;
use postern_queue::Intake;

/// The client TLS-RPT reports are posted with (`https:` destinations):
/// the webhooks' client, under rules of its own. A destination is named by
/// a recipient domain's DNS, which whoever Postern mails controls, so the
/// webhooks' exceptions for the operator's own receivers never apply:
/// HTTPS only, public addresses only unless
/// `reports.allow_private_destinations`.
pub fn report_poster(
    config: &Config,
    store: Arc<dyn postern_store::Store>,
) -> Result<Arc<postern_api::webhook::WebhookDispatcher>> {
    let mut rules = config.webhooks.clone();
    rules.allow_plain_http = false;
    rules.allow_private_destinations = config.reports.allow_private_destinations;
    rules.allowed_internal_networks = Vec::new();
    Ok(Arc::new(
        postern_api::webhook::WebhookDispatcher::new(
            store,
            rules,
            crate::dns_lookup::webhook_lookup(config)?,
        )
        .map_err(anyhow::Error::msg)?,
    ))
}

pub async fn send_now(config: &Config) -> Result<()> {
    let store = crate::bootstrap::open_store(config)?;
    let intake = Intake::new(store.clone(), config.server.hostname.clone());
    let reporter = postern_mailauth::reports::Reporter::new(
        &config.reports,
        &config.server.hostname,
        &config.dns.nameservers,
        config.inbound_auth.dns_timeout,
        store.clone() as Arc<dyn postern_store::ReportDataStore>,
        intake,
    )?
    .with_poster(report_poster(config, store.clone())?);
    let summary = reporter.run_once(postern_core::time::now_millis()).await?;
    // The pass queued mail and forgot records: an operator's act.
    crate::account_command::audit(
        &store,
        "reports.send",
        None,
        format!(
            "sent={} not_sent={} expired={}",
            summary.sent.len(),
            summary.not_sent.len(),
            summary.expired
        ),
    )
    .await?;
    store.close();
    for line in &summary.sent {
        println!("sent {line}");
    }
    for line in &summary.not_sent {
        println!("not sent {line}");
    }
    if summary.expired > 0 {
        println!(
            "dropped {} records older than reports.retention",
            summary.expired
        );
    }
    if summary.sent.is_empty() && summary.not_sent.is_empty() {
        println!("nothing to report");
    }
    Ok(())
}
