//! `postern key create|revoke|list`.

use anyhow::{bail, Result};
use postern_accounts::ApiKeys;
use postern_core::Config;
use postern_store::{CredentialStore, StoreError};

use crate::cli::KeyCommand;

pub async fn run(config: &Config, command: KeyCommand) -> Result<()> {
    let store = crate::bootstrap::open_store(config)?;
    match command {
        KeyCommand::Create {
            account,
            name,
            scopes,
            expires_in,
            allow_ip,
            json,
        } => {
            let mut networks = Vec::new();
            for n in &allow_ip {
                match postern_core::network::parse_network(n) {
                    Some(net) => networks.push(net.to_string()),
                    None => bail!("--allow-ip {n:?}: not an IP address or CIDR network"),
                }
            }
            let expires_at = match expires_in {
                Some(d) => {
                    let d = postern_core::duration::parse(&d).map_err(anyhow::Error::msg)?;
                    Some(postern_core::time::now_millis() + d.as_millis() as i64)
                }
                None => None,
            };
            let keys = ApiKeys::new(store.as_ref()).await?;
            let issued = match keys
                .create_restricted(
                    store.as_ref(),
                    &account,
                    &name,
                    scopes,
                    expires_at,
                    networks,
                )
                .await
            {
                Ok(k) => k,
                Err(StoreError::NotFound) => bail!("no account named {account}"),
                Err(e) => return Err(e.into()),
            };
            crate::account_command::audit(
                &store,
                "key.create",
                Some(&account),
                format!(
                    "id={} name={} scopes={}",
                    issued.record.id,
                    name,
                    issued.record.scopes.join(",")
                ),
            )
            .await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "id": issued.record.id,
                        "key": issued.secret,
                        "account": issued.record.account,
                        "name": issued.record.name,
                        "scopes": issued.record.scopes,
                        "expires_at": issued.record.expires_at.map(postern_core::time::rfc3339),
                        "allowed_ips": issued.record.networks,
                    })
                );
            } else {
                println!("id:      {}", issued.record.id);
                println!("account: {}", issued.record.account);
                println!("scopes:  {}", issued.record.scopes.join(","));
                println!("key:     {}", issued.secret);
                eprintln!("This key is shown only once. Use it as the SMTP password with user name \"apikey\".");
            }
        }
        KeyCommand::Revoke { id } => {
            if !store
                .revoke_api_key(id.clone(), postern_core::time::now_millis())
                .await?
            {
                bail!("no active key with id {id}");
            }
            let account = store
                .list_api_keys(None)
                .await?
                .into_iter()
                .find(|k| k.id == id)
                .map(|k| k.account);
            crate::account_command::audit(
                &store,
                "key.revoke",
                account.as_deref(),
                format!("id={id}"),
            )
            .await?;
            println!("revoked {id}");
        }
        KeyCommand::List { json } => {
            let keys = store.list_api_keys(None).await?;
            if json {
                let items: Vec<_> = keys
                    .iter()
                    .map(|k| {
                        serde_json::json!({
                            "id": k.id,
                            "account": k.account,
                            "name": k.name,
                            "scopes": k.scopes,
                            "created_at": postern_core::time::rfc3339(k.created_at),
                            "expires_at": k.expires_at.map(postern_core::time::rfc3339),
                            "revoked_at": k.revoked_at.map(postern_core::time::rfc3339),
                            "last_used_at": k.last_used_at.map(postern_core::time::rfc3339),
                            "allowed_ips": k.networks,
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    crate::terminal::json(&serde_json::Value::Array(items))
                );
            } else {
                for k in keys {
                    let state = if k.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!(
                        "{}  {:<8} {:<12} {:<20} {}",
                        k.id,
                        state,
                        k.account,
                        postern_core::printable::printable(&k.name),
                        k.scopes.join(",")
                    );
                }
            }
        }
    }
    store.close();
    Ok(())
}
