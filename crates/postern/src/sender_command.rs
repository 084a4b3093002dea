//! `postern sender`: single verified senders, for users who cannot publish
//! DNS records. Adding one mails the address a one-time link.

use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Subcommand;
use postern_core::Config;
use postern_mailauth::single_sender::{SenderFields, SenderVerification};
use postern_queue::Intake;
use postern_store::{AccountStore, SendLimits, SenderRecord, SenderStore};

#[derive(Subcommand)]
pub enum SenderCommand {
    /// Add an address to an account and mail it a verification link.
    Add {
        address: String,
        #[arg(long, default_value = "admin")]
        account: String,
        #[arg(long, default_value = "")]
        from_name: String,
        #[arg(long)]
        json: bool,
    },
    /// Senders and whether they are verified.
    List {
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Confirm a sender with the token from its verification link.
    Confirm {
        token: String,
    },
    /// Mail a new link (the earlier one stops working); rate-limited.
    Resend {
        id: i64,
    },
    /// Mark a sender verified without its mailbox's confirmation, for
    /// addresses the operator controls (recorded in the audit log).
    Verify {
        id: i64,
        #[arg(long)]
        operator: bool,
    },
    Remove {
        id: i64,
    },
}

/// Single sender verification as configured (`[senders]`, `http.public_url`).
pub fn verification(
    config: &Config,
    store: Arc<dyn SenderStore>,
    intake: Intake,
) -> SenderVerification {
    let from = config
        .senders
        .verification_from
        .clone()
        .unwrap_or_else(|| format!("no-reply@{}", config.server.hostname));
    SenderVerification::new(
        store,
        intake,
        config.http.base_url(),
        from,
        config.senders.verification_token_ttl,
        SendLimits {
            min_interval_millis: config.senders.verification_resend_interval.as_millis() as i64,
            window_millis: 86_400_000,
            per_window: i64::from(config.senders.verification_mails_per_day),
        },
    )
}

fn sender_json(s: &SenderRecord) -> serde_json::Value {
    serde_json::json!({
        "id": s.id, "account": s.account, "from_email": s.address,
        "from_name": s.from_name, "verified": s.verified_at.is_some(),
        "verified_at": s.verified_at.map(postern_core::time::rfc3339),
    })
}

pub async fn run(config: &Config, command: SenderCommand) -> Result<()> {
    let store = crate::bootstrap::open_store(config)?;
    let intake = Intake::new(store.clone(), config.server.hostname.clone());
    let senders = verification(config, store.clone(), intake);
    let result = async {
        match command {
            SenderCommand::Add {
                address,
                account,
                from_name,
                json,
            } => {
                if store.get_account(account.clone()).await?.is_none() {
                    bail!("no account {account:?}");
                }
                let s = senders
                    .add(
                        &account,
                        SenderFields {
                            address,
                            from_name,
                            ..Default::default()
                        },
                    )
                    .await?;
                crate::account_command::audit(&store, "sender.add", Some(&account), format!("sender={} id={}", s.address, s.id)).await?;
                if json {
                    println!("{}", crate::terminal::json(&sender_json(&s)));
                } else {
                    println!(
                        "sender {} added (id {}); a verification link was mailed to it",
                        s.address, s.id
                    );
                }
            }
            SenderCommand::List { account, json } => {
                let list = store.list_senders(account).await?;
                if json {
                    println!("{}", crate::terminal::json(&serde_json::Value::Array(list.iter().map(sender_json).collect())));
                } else {
                    for s in &list {
                        println!(
                            "{:<6} {}  account={}  {}",
                            s.id,
                            postern_core::printable::Printable(&s.address),
                            s.account,
                            if s.verified_at.is_some() { "verified" } else { "not verified" }
                        );
                    }
                }
            }
            SenderCommand::Confirm { token } => {
                let s = senders.verify(&token).await?;
                crate::account_command::audit(&store, "sender.verify", Some(&s.account), format!("sender={} id={} by=token", s.address, s.id)).await?;
                println!("{} is now a verified sender of account {}", s.address, s.account);
            }
            SenderCommand::Resend { id } => {
                let Some(s) = store.get_sender(id).await? else {
                    bail!("no sender {id}");
                };
                senders.send(id).await?;
                // A new token replaces the old one (the earlier link stops
                // working): a change, audited as the API's resend is.
                crate::account_command::audit(&store, "sender.resend", Some(&s.account), format!("sender={} id={id}", s.address)).await?;
                println!("a new verification link was mailed");
            }
            SenderCommand::Verify { id, operator } => {
                if !operator {
                    bail!("a sender is verified by its link (postern sender confirm TOKEN); --operator verifies without it");
                }
                let Some(s) = store.get_sender(id).await? else {
                    bail!("no sender {id}");
                };
                store.mark_sender_verified(id, postern_core::time::now_millis()).await?;
                let by = format!("operator:{}", crate::account_command::cli_actor());
                crate::account_command::audit(&store, "sender.verify.operator", Some(&s.account), format!("sender={} id={id} by={by}", s.address)).await?;
                println!("{} verified by the operator", s.address);
            }
            SenderCommand::Remove { id } => {
                let Some(s) = store.get_sender(id).await? else {
                    bail!("no sender {id}");
                };
                store.delete_sender(id).await?;
                crate::account_command::audit(&store, "sender.remove", Some(&s.account), format!("sender={} id={id}", s.address)).await?;
                println!("{} removed", s.address);
            }
        }
        Ok(())
    }
    .await;
    store.close();
    result
}
