//! `postern account …`, `postern subuser …` and `postern ip-access …`:
//! accounts, their subusers, and the networks they may log in from. Every
//! change is written to the audit log.

use std::io::Read;

use anyhow::{bail, Context, Result};
use postern_accounts::password::{check_policy, PasswordHasher};
use postern_core::Config;
use postern_store::{
    AccountRecord, AccountStore, AccountUpdate, AuditEntry, AuditStore, EmbeddedStore, StoreError,
};

use crate::cli::{AccountCommand, IpAccessCommand, SubuserCommand};

/// Who the audit log names for command-line changes.
pub fn cli_actor() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

pub async fn audit(
    store: &EmbeddedStore,
    kind: &str,
    account: Option<&str>,
    detail: String,
) -> Result<()> {
    store
        .append_audit(AuditEntry {
            at: postern_core::time::now_millis(),
            kind: kind.to_owned(),
            actor: cli_actor(),
            account: account.map(str::to_owned),
            client_ip: None,
            detail,
        })
        .await?;
    Ok(())
}

fn account_json(a: &AccountRecord) -> serde_json::Value {
    serde_json::json!({
        "name": a.name,
        "parent": a.parent,
        "disabled": a.disabled,
        "allow_password_auth": a.allow_password_auth,
        "has_password": a.password_hash.is_some(),
        "max_messages_per_hour": a.max_messages_per_hour,
        "ip_pool": a.ip_pool,
        "sender_alignment": a.sender_alignment.as_deref().unwrap_or("strict"),
        "require_2fa_for_credentials": a.require_2fa_for_credentials,
        "created_at": postern_core::time::rfc3339(a.created_at),
    })
}

fn print_accounts(list: &[AccountRecord], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::Value::Array(list.iter().map(account_json).collect())
        );
        return;
    }
    for a in list {
        let name = match &a.parent {
            Some(p) => format!("  {} (subuser of {p})", a.name),
            None => a.name.clone(),
        };
        println!(
            "{name:<40} {:<9} password-auth={}",
            if a.disabled { "disabled" } else { "active" },
            if a.allow_password_auth { "on" } else { "off" }
        );
    }
}

fn valid_name(name: &str) -> Result<()> {
    if !postern_accounts::valid_account_name(name) {
        bail!("account names are {}", postern_accounts::ACCOUNT_NAME_RULE);
    }
    Ok(())
}

async fn create(
    store: &EmbeddedStore,
    name: &str,
    parent: Option<String>,
    allow_password_auth: bool,
) -> Result<AccountRecord> {
    valid_name(name)?;
    let record = AccountRecord {
        id: 0,
        name: name.to_owned(),
        parent: parent.clone(),
        disabled: false,
        allow_password_auth,
        password_hash: None,
        created_at: postern_core::time::now_millis(),
        email: None,
        cram_md5: None,
        max_messages_per_hour: None,
        ip_pool: None,
        sender_alignment: None,
        require_2fa_for_credentials: false,
    };
    match store.create_account(record.clone()).await {
        Ok(()) => {}
        Err(StoreError::Conflict) if parent.is_some() => {
            bail!(
                "cannot create {name}: the name is taken, or {} is itself a subuser",
                parent.unwrap_or_default()
            )
        }
        Err(StoreError::Conflict) => bail!("an account named {name} already exists"),
        Err(StoreError::NotFound) => bail!("no account named {}", parent.unwrap_or_default()),
        Err(e) => return Err(e.into()),
    }
    let kind = if parent.is_some() {
        "subuser.create"
    } else {
        "account.create"
    };
    audit(
        store,
        kind,
        Some(name),
        format!("parent={parent:?} allow_password_auth={allow_password_auth}"),
    )
    .await?;
    Ok(record)
}

async fn update_account(
    store: &EmbeddedStore,
    name: &str,
    update: AccountUpdate,
    kind: &str,
    detail: String,
) -> Result<()> {
    if !store.update_account(name.to_owned(), update).await? {
        bail!("no account named {name}");
    }
    audit(store, kind, Some(name), detail).await
}

pub async fn run_account(config: &Config, command: AccountCommand) -> Result<()> {
    let store = crate::bootstrap::open_store(config)?;
    match command {
        AccountCommand::Create {
            name,
            allow_password_auth,
            json,
        } => {
            let a = create(&store, &name, None, allow_password_auth).await?;
            print_accounts(&[a], json);
        }
        AccountCommand::List { json } => {
            let all = store.list_accounts().await?;
            print_accounts(&all, json);
        }
        AccountCommand::Disable { name } => {
            let u = AccountUpdate {
                disabled: Some(true),
                ..Default::default()
            };
            update_account(&store, &name, u, "account.disable", "disabled".into()).await?;
            println!("disabled {name}: its credentials (and its subusers') stop working now");
        }
        AccountCommand::Enable { name } => {
            let u = AccountUpdate {
                disabled: Some(false),
                ..Default::default()
            };
            update_account(&store, &name, u, "account.enable", "enabled".into()).await?;
            println!("enabled {name}");
        }
        AccountCommand::PasswordAuth { name, setting } => {
            let on = setting.is_on();
            let u = AccountUpdate {
                allow_password_auth: Some(on),
                ..Default::default()
            };
            update_account(
                &store,
                &name,
                u,
                "account.password_auth",
                format!("allow_password_auth={on}"),
            )
            .await?;
            println!(
                "password auth for {name}: {}",
                if on { "on" } else { "off" }
            );
        }
        AccountCommand::Password { name } => {
            let mut password = String::new();
            std::io::stdin()
                .read_to_string(&mut password)
                .context("reading the password from stdin")?;
            let password = password.trim_end_matches(['\r', '\n']).to_owned();
            check_policy(&name, &password).map_err(|e| anyhow::anyhow!("password refused: {e}"))?;
            let hasher = PasswordHasher::new(1).map_err(|e| anyhow::anyhow!("{e}"))?;
            let phc = hasher
                .hash(password)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let u = AccountUpdate {
                password_hash: Some(Some(phc)),
                ..Default::default()
            };
            update_account(&store, &name, u, "account.password", "password set".into()).await?;
            println!("password set for {name}");
        }
        AccountCommand::Limit {
            name,
            messages_per_hour,
        } => {
            let limit = match messages_per_hour.as_str() {
                "none" => None,
                n => Some(n.parse::<u32>().map_err(|_| {
                    anyhow::anyhow!("--messages-per-hour takes a number or \"none\"")
                })?),
            };
            let u = AccountUpdate {
                max_messages_per_hour: Some(limit),
                ..Default::default()
            };
            update_account(
                &store,
                &name,
                u,
                "account.limit",
                format!("max_messages_per_hour={limit:?}"),
            )
            .await?;
            match limit {
                Some(n) => println!("{name} may send {n} messages per hour"),
                None => println!("{name} has no hourly limit"),
            }
        }
        AccountCommand::Require2fa { name, setting } => {
            let on = setting.is_on();
            let u = AccountUpdate {
                require_2fa_for_credentials: Some(on),
                ..Default::default()
            };
            update_account(
                &store,
                &name,
                u,
                "account.require_2fa",
                format!("require_2fa_for_credentials={on}"),
            )
            .await?;
            println!(
                "{name}: a second factor is {} for creating credentials after a password login",
                if on { "required" } else { "not required" }
            );
        }
        AccountCommand::SenderAlignment { name, rule } => {
            let u = AccountUpdate {
                sender_alignment: Some(Some(rule.clone())),
                ..Default::default()
            };
            update_account(
                &store,
                &name,
                u,
                "account.sender_alignment",
                format!("rule={rule}"),
            )
            .await?;
            println!("{name}: sender alignment {rule}");
        }
        AccountCommand::IpPool { name, pool } => {
            let pool = match pool.as_str() {
                "none" => None,
                p if config.ip_pool.iter().any(|c| c.name == p) => Some(p.to_owned()),
                p => bail!(
                    "no [[ip_pool]] named {p:?} in the configuration (known: {})",
                    config
                        .ip_pool
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            let u = AccountUpdate {
                ip_pool: Some(pool.clone()),
                ..Default::default()
            };
            update_account(
                &store,
                &name,
                u,
                "account.ip_pool",
                format!("ip_pool={pool:?}"),
            )
            .await?;
            match pool {
                Some(p) => println!("{name} sends from IP pool {p}"),
                None => println!("{name} uses its parent's or the default IP pool"),
            }
        }
        AccountCommand::CramMd5 { name, setting } => {
            let update = if setting.is_on() {
                let Some(account) = store.get_account(name.clone()).await? else {
                    bail!("no account named {name}");
                };
                let Some(phc) = account.password_hash else {
                    bail!("{name} has no password; set one first with `postern account password {name}`");
                };
                let mut password = String::new();
                std::io::stdin()
                    .read_to_string(&mut password)
                    .context("reading the password from stdin")?;
                let password = password.trim_end_matches(['\r', '\n']).to_owned();
                let hasher = PasswordHasher::new(1).map_err(|e| anyhow::anyhow!("{e}"))?;
                if !hasher
                    .verify(Some(phc), password.clone())
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                {
                    bail!("that is not {name}'s current password");
                }
                let state = postern_accounts::cram_md5::state_from_password(password.as_bytes());
                AccountUpdate {
                    cram_md5: Some(Some(state.to_vec())),
                    ..Default::default()
                }
            } else {
                AccountUpdate {
                    cram_md5: Some(None),
                    ..Default::default()
                }
            };
            let on = setting.is_on();
            update_account(
                &store,
                &name,
                update,
                "account.cram_md5",
                format!("cram_md5={on}"),
            )
            .await?;
            println!("CRAM-MD5 for {name}: {}", if on { "on" } else { "off" });
        }
    }
    store.close();
    Ok(())
}

pub async fn run_subuser(config: &Config, command: SubuserCommand) -> Result<()> {
    let store = crate::bootstrap::open_store(config)?;
    match command {
        SubuserCommand::Create {
            name,
            account,
            allow_password_auth,
            json,
        } => {
            let a = create(&store, &name, Some(account), allow_password_auth).await?;
            print_accounts(&[a], json);
        }
        SubuserCommand::List { account, json } => {
            let all: Vec<_> = store
                .list_accounts()
                .await?
                .into_iter()
                .filter(|a| a.parent.is_some() && (account.is_none() || a.parent == account))
                .collect();
            print_accounts(&all, json);
        }
    }
    store.close();
    Ok(())
}

pub async fn run_ip_access(config: &Config, command: IpAccessCommand) -> Result<()> {
    let store = crate::bootstrap::open_store(config)?;
    match command {
        IpAccessCommand::Add { account, network } => {
            let Some(net) = postern_core::network::parse_network(&network) else {
                bail!("{network:?} is not an IP address or CIDR network");
            };
            match store.add_ip_rule(account.clone(), net.to_string()).await {
                Ok(()) => {}
                Err(StoreError::NotFound) => bail!("no account named {account}"),
                Err(StoreError::Conflict) => bail!("{net} is already allowed for {account}"),
                Err(e) => return Err(e.into()),
            }
            audit(
                &store,
                "ip_access.add",
                Some(&account),
                format!("network={net}"),
            )
            .await?;
            println!("{account} may now log in only from its allowed networks, including {net}");
        }
        IpAccessCommand::Remove { account, network } => {
            let net = postern_core::network::parse_network(&network)
                .map(|n| n.to_string())
                .unwrap_or(network);
            if !store.remove_ip_rule(account.clone(), net.clone()).await? {
                bail!("{net} is not in {account}'s allowlist");
            }
            audit(
                &store,
                "ip_access.remove",
                Some(&account),
                format!("network={net}"),
            )
            .await?;
            println!("removed {net} from {account}'s allowlist");
        }
        IpAccessCommand::List { account, json } => {
            let rules: Vec<String> = store
                .ip_rules(account)
                .await?
                .into_iter()
                .map(|r| r.cidr)
                .collect();
            if json {
                println!("{}", crate::terminal::json(&serde_json::json!(rules)));
            } else if rules.is_empty() {
                println!("no allowlist: logins are accepted from any network");
            } else {
                for r in rules {
                    println!("{r}");
                }
            }
        }
    }
    store.close();
    Ok(())
}
