//! `postern audit`: read and verify the audit log.

use anyhow::{bail, Result};
use postern_core::Config;
use postern_store::{AuditFilter, AuditStore, AuditVerification};

/// `1h` (that long ago) or an RFC 3339 UTC time.
pub(crate) fn parse_time(s: &str) -> Result<i64> {
    if let Some(t) = postern_core::time::parse_rfc3339(s) {
        return Ok(t);
    }
    match postern_core::duration::parse(s) {
        Ok(d) => Ok(postern_core::time::now_millis() - d.as_millis() as i64),
        Err(_) => bail!("{s:?}: use a duration such as 1h, or a time such as 2026-11-23T10:00:00Z"),
    }
}

pub struct Query {
    pub account: Option<String>,
    pub kind: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<usize>,
    pub json: bool,
}

pub async fn run(config: &Config, q: Query) -> Result<()> {
    let store = crate::bootstrap::open_store(config)?;
    let records = store
        .audit(AuditFilter {
            account: q.account,
            kind: q.kind,
            since: q.since.as_deref().map(parse_time).transpose()?,
            until: q.until.as_deref().map(parse_time).transpose()?,
            limit: q.limit,
        })
        .await?;
    if q.json {
        let items: Vec<_> = records.iter().map(|r| r.to_json()).collect();
        println!(
            "{}",
            crate::terminal::json(&serde_json::Value::Array(items))
        );
    } else {
        for r in &records {
            println!(
                "{:>6}  {}  {:<28} actor={} account={} ip={}  {}",
                r.seq,
                postern_core::time::rfc3339(r.entry.at),
                postern_core::printable::Printable(&r.entry.kind).to_string(),
                postern_core::printable::Printable(&r.entry.actor),
                postern_core::printable::Printable(r.entry.account.as_deref().unwrap_or("-")),
                postern_core::printable::Printable(r.entry.client_ip.as_deref().unwrap_or("-")),
                postern_core::printable::Printable(&r.entry.detail)
            );
        }
    }
    store.close();
    Ok(())
}

pub async fn verify(config: &Config) -> Result<()> {
    let store = crate::bootstrap::open_store(config)?;
    let result = store.verify_audit().await?;
    store.close();
    match result {
        AuditVerification::Intact { entries } => {
            println!("audit log intact: {entries} entries, hash chain verified");
            Ok(())
        }
        AuditVerification::BrokenAt { seq } => {
            bail!("audit log TAMPERED: the hash chain breaks at entry {seq}")
        }
    }
}
