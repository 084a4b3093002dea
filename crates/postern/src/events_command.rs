//! `postern events`: the send log, by message, recipient, account, kind and
//! time.

use anyhow::{Context, Result};
use postern_core::{Config, EventKind};
use postern_store::{EventFilter, EventStore};

#[derive(clap::Args)]
pub struct Query {
    /// Only events of this message id.
    #[arg(long)]
    pub message: Option<String>,
    /// Only events about this recipient address.
    #[arg(long)]
    pub recipient: Option<String>,
    /// Only events of messages sent by this account or subuser.
    #[arg(long)]
    pub account: Option<String>,
    /// With --account: its subusers' events too.
    #[arg(long)]
    pub include_subusers: bool,
    /// Only these kinds (repeat or comma-separate): processed, delivered,
    /// deferred, bounce, dropped, quarantined.
    #[arg(long, value_delimiter = ',')]
    pub kind: Vec<String>,
    /// From this time: a duration ago (`1h`) or `2026-11-23T10:00:00Z`.
    #[arg(long)]
    pub since: Option<String>,
    /// Before this time (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// Only the most recent N events.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(config: &Config, q: Query) -> Result<()> {
    let kinds = q
        .kind
        .iter()
        .map(|k| k.parse::<EventKind>().map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()
        .context("--kind")?;
    let filter = EventFilter {
        message_id: q.message,
        account: q.account,
        include_subusers: q.include_subusers,
        recipient: q.recipient,
        kinds,
        since: q
            .since
            .as_deref()
            .map(crate::audit_command::parse_time)
            .transpose()
            .context("--since")?,
        until: q
            .until
            .as_deref()
            .map(crate::audit_command::parse_time)
            .transpose()
            .context("--until")?,
        after_seq: None,
        limit: q.limit,
    };
    let store = crate::bootstrap::open_store(config)?;
    let events = store.events(filter).await?;
    if q.json {
        let items: Vec<_> = events.iter().map(|e| e.to_json()).collect();
        println!(
            "{}",
            crate::terminal::json(&serde_json::Value::Array(items))
        );
    } else {
        for e in &events {
            let mut extra = String::new();
            if let Some(n) = e.info.attempt {
                extra.push_str(&format!(" attempt={n}"));
            }
            if let Some(c) = &e.info.classification {
                extra.push_str(&format!(" class={c}"));
            }
            println!(
                "{}  {}  {:<9} {}  {}{}",
                postern_core::time::rfc3339(e.at_millis),
                e.message_id,
                e.kind.as_str(),
                postern_core::printable::Printable(e.recipient.as_deref().unwrap_or("-")),
                postern_core::printable::Printable(&e.detail),
                postern_core::printable::Printable(&extra)
            );
        }
    }
    store.close();
    Ok(())
}
