//! `postern queue`: what waits for delivery, and the operator's levers on
//! it. The CLI writes to the store directly; a running server's scheduler
//! finds retried work within its idle poll (two seconds).

use anyhow::{bail, Result};
use clap::Subcommand;
use postern_core::Config;
use postern_store::{QueueFilter, QueueStore, QueuedMessage};

#[derive(Subcommand)]
pub enum QueueCommand {
    /// Messages waiting, oldest first.
    List {
        /// Only messages sent by this account or subuser.
        #[arg(long)]
        account: Option<String>,
        /// Only messages with a recipient waiting in this domain.
        #[arg(long)]
        domain: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// One message: its recipients, attempts, next attempt, last reply.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Make waiting recipients due now: one message, or --all (optionally
    /// narrowed by --account / --domain).
    Retry {
        id: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        domain: Option<String>,
    },
    /// Remove a message's waiting recipients; each is recorded `dropped`.
    Delete {
        id: String,
        /// Recorded with the `dropped` events.
        #[arg(long, default_value = "deleted from the queue by an operator")]
        reason: String,
    },
}

fn print_message(m: &QueuedMessage) {
    println!(
        "{}  {}  from=<{}> account={} size={}",
        postern_core::time::rfc3339(m.received_at),
        m.id,
        postern_core::printable::Printable(&m.mail_from),
        m.account.as_deref().unwrap_or("-"),
        m.size
    );
    for r in &m.recipients {
        let when = if r.in_flight {
            "in flight".to_owned()
        } else if r.status == "queued" {
            format!("next {}", postern_core::time::rfc3339(r.next_attempt))
        } else {
            String::new()
        };
        println!(
            "    {:<9} {}  attempts={} {}  {}",
            r.status,
            postern_core::printable::Printable(&r.address),
            r.attempts,
            when,
            postern_core::printable::Printable(r.last_reply.as_deref().unwrap_or(""))
        );
    }
}

pub async fn run(config: &Config, command: QueueCommand) -> Result<()> {
    let store = crate::bootstrap::open_store(config)?;
    let now = postern_core::time::now_millis();
    let result = async {
        match command {
            QueueCommand::List {
                account,
                domain,
                limit,
                json,
            } => {
                let messages = store
                    .queued_messages(QueueFilter {
                        account,
                        domain,
                        limit,
                        // The operator names exactly the account they mean.
                        with_subusers: false,
                    })
                    .await?;
                if json {
                    let items: Vec<_> = messages.iter().map(QueuedMessage::to_json).collect();
                    println!("{}", crate::terminal::json(&serde_json::Value::Array(items)));
                } else {
                    for m in &messages {
                        print_message(m);
                    }
                    eprintln!("{} message(s) queued", messages.len());
                }
            }
            QueueCommand::Show { id, json } => {
                let Some(m) = store.queued_message(id.clone()).await? else {
                    bail!("no queued message {id} (delivered, bounced and deleted messages leave the queue; see `postern events --message {id}`)");
                };
                if json {
                    println!("{}", crate::terminal::json(&m.to_json()));
                } else {
                    print_message(&m);
                }
            }
            QueueCommand::Retry {
                id,
                all,
                account,
                domain,
            } => {
                if id.is_none() && !all {
                    bail!("name a message id, or use --all (with --account / --domain to narrow it)");
                }
                if id.is_some() && all {
                    bail!("a message id and --all exclude each other");
                }
                let filter = QueueFilter {
                    account: account.clone(),
                    domain: domain.clone(),
                    limit: None,
                    with_subusers: false,
                };
                let n = store.retry_now(id.clone(), filter, now).await?;
                let what = match &id {
                    Some(id) => format!("message={id}"),
                    None => format!(
                        "all account={} domain={}",
                        account.as_deref().unwrap_or("*"),
                        domain.as_deref().unwrap_or("*")
                    ),
                };
                crate::account_command::audit(
                    &store,
                    "queue.retry",
                    account.as_deref(),
                    format!("{what} recipients={n}"),
                )
                .await?;
                println!("{n} recipient(s) due now");
            }
            QueueCommand::Delete { id, reason } => {
                let Some(m) = store.queued_message(id.clone()).await? else {
                    bail!("no queued message {id}");
                };
                let n = store.delete_queued(id.clone(), reason, now).await?;
                crate::account_command::audit(
                    &store,
                    "queue.delete",
                    m.account.as_deref(),
                    format!("message={id} recipients={n}"),
                )
                .await?;
                println!("{n} recipient(s) removed from the queue");
            }
        }
        Ok(())
    }
    .await;
    store.close();
    result
}
