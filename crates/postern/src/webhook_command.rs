//! `postern webhook`: an account's event webhook, as
//! `/v3/user/webhooks/event/settings` sets it over HTTP.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use postern_api::webhook::destination::PolicyResolver;
use postern_api::webhook::{signing, DestinationPolicy};
use postern_core::{Config, EventKind};
use postern_store::{AccountStore, EventStore, WebhookRecord};

#[derive(Subcommand)]
pub enum WebhookCommand {
    /// Set (or change) an account's event webhook.
    Set {
        account: String,
        #[arg(long)]
        url: Option<String>,
        /// Event kinds to send (default: all of processed, delivered,
        /// deferred, bounce, dropped).
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// Sign requests (prints the verification key).
        #[arg(long)]
        signed: bool,
        /// Stop sending (the settings are kept).
        #[arg(long)]
        disable: bool,
    },
    /// The webhook's settings, verification key and delivery state.
    Show {
        account: String,
        #[arg(long)]
        json: bool,
    },
}

fn show_json(w: &WebhookRecord, last_seq: i64) -> Result<serde_json::Value> {
    let public_key = match &w.signing_key {
        Some(k) => Some(signing::public_key_base64(k)?),
        None => None,
    };
    Ok(serde_json::json!({
        "account": w.account,
        "url": w.url,
        "enabled": w.enabled,
        "events": w.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        "public_key": public_key,
        "cursor": w.cursor,
        "log_end": last_seq,
        "last_success": w.last_success_at.map(postern_core::time::rfc3339),
        "last_error": w.last_error,
        "last_error_at": w.last_error_at.map(postern_core::time::rfc3339),
    }))
}

pub async fn run(config: &Config, command: WebhookCommand) -> Result<()> {
    let store = crate::bootstrap::open_store(config)?;
    let result = async {
        match command {
            WebhookCommand::Set {
                account,
                url,
                events,
                signed,
                disable,
            } => {
                if store.get_account(account.clone()).await?.is_none() {
                    bail!("no account {account:?}");
                }
                let now = postern_core::time::now_millis();
                let mut w = store
                    .get_webhook(account.clone())
                    .await?
                    .unwrap_or(WebhookRecord {
                        account: account.clone(),
                        url: String::new(),
                        enabled: false,
                        kinds: EventKind::ALL.to_vec(),
                        signing_key: None,
                        cursor: 0,
                        created_at: now,
                        updated_at: now,
                        last_success_at: None,
                        last_error: None,
                        last_error_at: None,
                    });
                if let Some(url) = url {
                    w.url = url;
                }
                if !events.is_empty() {
                    w.kinds = events
                        .iter()
                        .map(|k| k.parse::<EventKind>().map_err(anyhow::Error::msg))
                        .collect::<Result<Vec<_>>>()
                        .context("--events")?;
                }
                w.enabled = !disable;
                if w.enabled {
                    if w.url.is_empty() {
                        bail!("--url is needed");
                    }
                    PolicyResolver::new(
                        DestinationPolicy::from_config(&config.webhooks),
                        crate::dns_lookup::webhook_lookup(config)?,
                    )
                    .check(&w.url)
                    .await
                    .map_err(anyhow::Error::msg)?;
                }
                if signed && w.signing_key.is_none() {
                    w.signing_key = Some(signing::generate_key()?);
                }
                w.updated_at = now;
                store.put_webhook(w.clone()).await?;
                crate::account_command::audit(
                    &store,
                    "webhook.update",
                    Some(&account),
                    format!(
                        "enabled={} url={} signed={}",
                        w.enabled,
                        w.url,
                        w.signing_key.is_some()
                    ),
                )
                .await?;
                if let Some(k) = &w.signing_key {
                    println!("verification key: {}", signing::public_key_base64(k)?);
                }
                println!(
                    "webhook for {account} {}",
                    if w.enabled { "enabled" } else { "disabled" }
                );
            }
            WebhookCommand::Show { account, json } => {
                let Some(w) = store.get_webhook(account.clone()).await? else {
                    bail!("{account} has no event webhook");
                };
                let v = show_json(&w, store.last_event_seq().await?)?;
                if json {
                    println!("{}", crate::terminal::json(&v));
                } else {
                    println!("{}", crate::terminal::json_pretty(&v));
                }
            }
        }
        Ok(())
    }
    .await;
    store.close();
    result
}
