//! `postern quarantine`: inbound mail held for a decision. The operator
//! sees every held message (`--account` narrows the list to one account's
//! recipients); release queues a message for its next hop as accepted
//! relay mail is queued, delete drops it; both can name one recipient.
//! Every action is audited (actor `cli:$USER`), once per account whose
//! recipients it touched.

use anyhow::{bail, Result};
use clap::Subcommand;
use postern_core::printable::Printable;
use postern_core::{Config, MessageId};
use postern_store::{
    EmbeddedStore, HoldQueued, QuarantineFilter, QuarantineStore, QuarantinedMessage,
    QuarantinedRecipient,
};

#[derive(Subcommand)]
pub enum QuarantineCommand {
    /// Held messages, oldest first.
    List {
        /// Only messages with a recipient of this account (or subuser).
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// One held message: envelope, client, reason, its header fields and
    /// a text preview (the text part, controls escaped, never rendered).
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Queue a held message for its next hop (every recipient, or one) and
    /// take it out of quarantine.
    Release {
        id: String,
        #[arg(long, value_name = "ADDR")]
        recipient: Option<String>,
    },
    /// Delete a held message (every recipient, or one); each is recorded
    /// `dropped`.
    Delete {
        id: String,
        #[arg(long, value_name = "ADDR")]
        recipient: Option<String>,
    },
    /// Move a queued message that came in without authentication (not yet
    /// delivered, no attempt in flight) into quarantine, e.g. one found
    /// malicious while its next hop was down.
    HoldQueued {
        id: String,
        /// Why it is held (shown with it, and in its events).
        #[arg(long)]
        reason: String,
    },
}

fn print_message(m: &QuarantinedMessage) {
    println!(
        "{}  {}  from=<{}> client={} helo={} size={}",
        postern_core::time::rfc3339(m.held_at),
        m.id,
        Printable(&m.mail_from),
        m.client_ip.as_deref().unwrap_or("-"),
        Printable(m.helo.as_deref().unwrap_or("-")),
        m.size
    );
    println!("    reason: {}", Printable(&m.reason));
    for r in &m.recipients {
        println!(
            "    {}  account={}",
            Printable(&r.address),
            r.account.as_deref().unwrap_or("-")
        );
    }
}

/// A message id as `MessageId::generate` makes them: nothing else can
/// name a held message.
fn parse_id(id: &str) -> Result<String> {
    match MessageId::parse(id) {
        Some(id) => Ok(id.to_string()),
        None => bail!("{:?} is not a message id", Printable(id).to_string()),
    }
}

/// One audit entry per account whose recipients `kind` touched.
async fn audit_per_account(
    store: &EmbeddedStore,
    kind: &str,
    id: &str,
    touched: &[QuarantinedRecipient],
    extra: &str,
) -> Result<()> {
    let mut accounts: Vec<Option<&str>> = Vec::new();
    for r in touched {
        if !accounts.contains(&r.account.as_deref()) {
            accounts.push(r.account.as_deref());
        }
    }
    for account in accounts {
        let recipients: Vec<&str> = touched
            .iter()
            .filter(|r| r.account.as_deref() == account)
            .map(|r| r.address.as_str())
            .collect();
        crate::account_command::audit(
            store,
            kind,
            account,
            format!("message={id} recipients={}{extra}", recipients.join(",")),
        )
        .await?;
    }
    Ok(())
}

pub async fn run(config: &Config, command: QuarantineCommand) -> Result<()> {
    let store = crate::bootstrap::open_store(config)?;
    let now = postern_core::time::now_millis();
    let all = QuarantineFilter::default();
    let result = async {
        match command {
            QuarantineCommand::List {
                account,
                limit,
                json,
            } => {
                let held = store
                    .quarantined(QuarantineFilter {
                        account,
                        // The operator names exactly the account they mean.
                        with_subusers: false,
                        limit,
                    })
                    .await?;
                if json {
                    let items: Vec<_> = held.iter().map(QuarantinedMessage::to_json).collect();
                    println!("{}", crate::terminal::json(&serde_json::Value::Array(items)));
                } else {
                    for m in &held {
                        print_message(m);
                    }
                    eprintln!("{} message(s) held", held.len());
                }
            }
            QuarantineCommand::Show { id, json } => {
                let id = parse_id(&id)?;
                let (Some(m), Some(raw)) = (
                    store.quarantined_message(id.clone(), all.clone()).await?,
                    store.quarantined_body(id.clone(), all.clone()).await?,
                ) else {
                    bail!("no held message {id}");
                };
                let preview = postern_queue::quarantine::preview(&raw);
                if json {
                    let mut v = m.to_json();
                    v["preview"] = preview.to_json();
                    println!("{}", crate::terminal::json(&v));
                } else {
                    print_message(&m);
                    println!("headers:");
                    for (name, value) in &preview.headers {
                        println!("    {name}: {value}");
                    }
                    println!("text ({}):", preview.source);
                    for line in preview.text.lines() {
                        println!("    {line}");
                    }
                    if preview.truncated {
                        println!("    [… cut at {} characters]", postern_queue::quarantine::PREVIEW_CHARS);
                    }
                }
            }
            QuarantineCommand::Release { id, recipient } => {
                let id = parse_id(&id)?;
                let detail = format!("released from quarantine by {}", crate::account_command::cli_actor());
                let released = store
                    .release_quarantined(id.clone(), all, recipient.clone(), now, detail)
                    .await?;
                if released.is_empty() {
                    bail!("no held message {id}{}", for_recipient(&recipient));
                }
                audit_per_account(&store, "quarantine.release", &id, &released, "").await?;
                println!("{} recipient(s) released to the queue", released.len());
            }
            QuarantineCommand::Delete { id, recipient } => {
                let id = parse_id(&id)?;
                let reason = format!("deleted from quarantine by {}", crate::account_command::cli_actor());
                let deleted = store
                    .delete_quarantined(id.clone(), all, recipient.clone(), now, reason)
                    .await?;
                if deleted.is_empty() {
                    bail!("no held message {id}{}", for_recipient(&recipient));
                }
                audit_per_account(&store, "quarantine.delete", &id, &deleted, "").await?;
                println!("{} recipient(s) deleted from quarantine", deleted.len());
            }
            QuarantineCommand::HoldQueued { id, reason } => {
                let id = parse_id(&id)?;
                match store.hold_queued(id.clone(), reason.clone(), now).await? {
                    HoldQueued::Held(m) => {
                        let extra = format!(" reason={reason}");
                        audit_per_account(&store, "quarantine.hold", &id, &m.recipients, &extra)
                            .await?;
                        println!("{} recipient(s) held", m.recipients.len());
                    }
                    HoldQueued::NotFound => bail!("no queued message {id} with a recipient waiting"),
                    HoldQueued::SentByAccount(a) => bail!(
                        "message {id} was sent by account {a}: the quarantine holds inbound mail (use `postern queue delete`)"
                    ),
                    HoldQueued::InFlight => bail!(
                        "a delivery attempt of message {id} is in progress; try again when it is over"
                    ),
                }
            }
        }
        Ok(())
    }
    .await;
    store.close();
    result
}

fn for_recipient(recipient: &Option<String>) -> String {
    recipient
        .as_deref()
        .map(|r| format!(" for {}", Printable(r)))
        .unwrap_or_default()
}
