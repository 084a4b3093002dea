//! `postern audit`: read and verify the audit log.

use anyhow::{bail, Result};
use postern_core::Config;
use postern_store::audit_anchor::{to_hex, AnchorSource, AnchoredVerdict, AuditHead};
use postern_store::{AuditFilter, AuditStore};

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

pub async fn verify(config: &Config, anchors: &[String]) -> Result<()> {
    let anchors = anchors
        .iter()
        .map(|a| AuditHead::parse_anchor(a))
        .collect::<Result<Vec<_>, _>>()?;
    let store = crate::bootstrap::open_store(config)?;
    let result = store.verify_audit_anchored(anchors).await;
    let head_file = store
        .audit_anchor()
        .map(|a| a.head_path().display().to_string())
        .unwrap_or_default();
    store.close();
    let source = |s: AnchorSource| match s {
        AnchorSource::Operator => "the anchor given with --anchor".to_string(),
        AnchorSource::Recorded => format!("the head recorded in {head_file}"),
    };
    match result? {
        AnchoredVerdict::Intact { entries, recorded } => {
            println!("audit log intact: {entries} entries, hash chain verified");
            match recorded {
                Some(head) => println!(
                    "recorded head: entry {} present with its hash (no truncation)",
                    head.seq
                ),
                // After an upgrade, until the next audit entry: say so
                // rather than fail, as nothing was anchored yet.
                None => println!(
                    "no recorded head yet ({head_file}): truncation of the tail is checked from the next audit entry on"
                ),
            }
            Ok(())
        }
        AnchoredVerdict::Broken { seq } => {
            bail!("audit log TAMPERED: the hash chain breaks at entry {seq}")
        }
        AnchoredVerdict::Truncated {
            anchor,
            source: s,
            chain_len,
        } => bail!(
            "audit log TAMPERED: truncated: {} names entry {} but the chain ends at entry {chain_len}; the newest entries were deleted",
            source(s),
            anchor.seq
        ),
        AnchoredVerdict::Rewritten {
            anchor,
            source: s,
            found,
        } => bail!(
            "audit log TAMPERED: rewritten: {} names entry {} with hash {}, the chain has {}",
            source(s),
            anchor.seq,
            to_hex(&anchor.hash),
            to_hex(&found)
        ),
        AnchoredVerdict::BadRecord(e) => {
            bail!("audit log head record cannot be trusted (TAMPERED?): {e}")
        }
    }
}

/// Prints the current head for the operator to keep elsewhere, and records
/// it in the anchor file too.
pub async fn anchor(config: &Config, json: bool) -> Result<()> {
    let store = crate::bootstrap::open_store(config)?;
    let head = store.audit_head().await;
    store.close();
    let Some(head) = head? else {
        bail!("the audit log is empty: nothing to anchor yet");
    };
    let Some(anchor) = store.audit_anchor() else {
        bail!("no audit anchor key");
    };
    let mac = anchor.mac(&head);
    // Only forward: a head already recorded further on is not replaced by
    // an older one (a server may have appended meanwhile).
    let newer_recorded = matches!(anchor.recorded(), Ok(Some(r)) if r.seq > head.seq);
    if !newer_recorded {
        anchor.record(&head)?;
    }
    if json {
        println!(
            "{}",
            crate::terminal::json(&serde_json::json!({
                "seq": head.seq,
                "hash": to_hex(&head.hash),
                "hmac": mac,
                "anchor": head.to_anchor(),
            }))
        );
    } else {
        println!("seq:    {}", head.seq);
        println!("hash:   {}", to_hex(&head.hash));
        println!("hmac:   {mac}");
        println!("anchor: {}", head.to_anchor());
        println!(
            "Keep this off this machine; later: postern audit verify --anchor {}",
            head.to_anchor()
        );
    }
    Ok(())
}
