//! `postern events`: the per-message event log.

use anyhow::Result;
use postern_core::Config;
use postern_store::{EventFilter, EventStore};

pub async fn run(
    config: &Config,
    message: Option<String>,
    account: Option<String>,
    limit: Option<usize>,
    json: bool,
) -> Result<()> {
    let store = crate::bootstrap::open_store(config)?;
    let events = store
        .events(EventFilter {
            message_id: message,
            account,
            limit,
        })
        .await?;
    if json {
        let items: Vec<_> = events
            .iter()
            .map(|e| {
                serde_json::json!({
                    "time": postern_core::time::rfc3339(e.at_millis),
                    "message_id": e.message_id,
                    "event": e.kind.as_str(),
                    "recipient": e.recipient,
                    "detail": e.detail,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(items));
    } else {
        for e in &events {
            println!(
                "{}  {}  {:<9} {}  {}",
                postern_core::time::rfc3339(e.at_millis),
                e.message_id,
                e.kind.as_str(),
                e.recipient.as_deref().unwrap_or("-"),
                e.detail
            );
        }
    }
    store.close();
    Ok(())
}
