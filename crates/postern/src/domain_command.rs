//! `postern domain`: sending domains, their DKIM keys and the DNS records
//! to publish.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use postern_core::Config;
use postern_mailauth::records::{records_for, zone_snippet};
use postern_mailauth::DkimKeys;
use postern_store::ReturnPathMode;
use postern_store::{AccountStore, DomainRecord, DomainStore, StoreError};

#[derive(Subcommand)]
pub enum DomainCommand {
    /// Add a sending domain to an account: generates its DKIM keys (RSA-2048
    /// and Ed25519) and prints the DNS records to publish.
    Add {
        domain: String,
        #[arg(long, default_value = "admin")]
        account: String,
        /// Selector base (keys at `<selector>-rsa` and `<selector>-ed`).
        #[arg(long, default_value = "pst1")]
        selector: String,
        /// Where DMARC and TLS-RPT reports go (default: dmarc@<domain>).
        #[arg(long)]
        report_to: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Domains and whether they are verified.
    List {
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The DNS records of a domain, as a zone snippet (or JSON).
    Show {
        domain: String,
        /// The account whose row is meant, when several accounts claim the
        /// domain unverified (default: the verified row, or the only claim).
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        report_to: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Look the records up in DNS and report each: found, missing, or wrong
    /// and why; the domain is verified when every required one is found.
    /// `--operator` marks it verified without DNS, for domains the operator
    /// controls (recorded in the audit log).
    Verify {
        domain: String,
        /// The account whose row is meant, when several accounts claim the
        /// domain unverified (default: the verified row, or the only claim).
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        operator: bool,
        #[arg(long)]
        report_to: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Rotate a domain's DKIM keys: new keys under a new selector, printed
    /// to publish beside the current ones. They sign once `postern domain
    /// verify` finds them; the old selector stays published for
    /// `senders.dkim_rotation_overlap`, then is retired.
    Rotate {
        domain: String,
        /// The account whose row is meant, when several accounts claim the
        /// domain unverified (default: the verified row, or the only claim).
        #[arg(long)]
        account: Option<String>,
        /// The new selector base (default: the current one counted up).
        #[arg(long)]
        selector: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Use the domain's return-path subdomain for VERP whatever DNS says
    /// (`on`), or only once its MX and SPF are found by `verify` (`auto`,
    /// the default), or never (`off`, until `verify` finds them again).
    ReturnPath {
        domain: String,
        #[arg(value_parser = ["on", "auto", "off"])]
        mode: String,
        #[arg(long)]
        account: Option<String>,
    },
    /// Remove a domain and its keys.
    Remove {
        domain: String,
        /// The account whose row is meant, when several accounts claim the
        /// domain unverified (default: the verified row, or the only claim).
        #[arg(long)]
        account: Option<String>,
    },
}

/// The row a command means: the account's own when `--account` is given,
/// else the verified row, else the only claim. Several accounts may claim
/// a domain until one verifies it, and guessing among them would let one
/// tenant's command act on another's claim.
async fn find_domain(
    store: &postern_store::EmbeddedStore,
    domain: &str,
    account: Option<&str>,
) -> Result<DomainRecord> {
    if let Some(a) = account {
        return match store
            .get_domain_for(a.to_owned(), domain.to_owned())
            .await?
        {
            Some(d) => Ok(d),
            None => bail!("{a} has no domain {domain}"),
        };
    }
    if let Some(d) = store.verified_domain(domain.to_owned()).await? {
        return Ok(d);
    }
    let mut claims: Vec<DomainRecord> = store
        .list_domains(None)
        .await?
        .into_iter()
        .filter(|d| d.domain == domain)
        .collect();
    match claims.len() {
        0 => bail!("no domain {domain}"),
        1 => Ok(claims.remove(0)),
        _ => bail!(
            "{domain} is claimed (unverified) by {}: name one with --account",
            claims
                .iter()
                .map(|d| d.account.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn valid_selector(selector: &str) -> bool {
    !selector.is_empty()
        && selector.len() <= 60
        && selector
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn records_json(config: &Config, d: &DomainRecord, report_to: Option<&str>) -> serde_json::Value {
    let records = records_for(d, &crate::dns_lookup::publishing(config), report_to);
    serde_json::json!({
        "domain": d.domain,
        "account": d.account,
        "valid": d.verified_at.is_some(),
        "verified_at": d.verified_at.map(postern_core::time::rfc3339),
        "verified_by": d.verified_by,
        "dkim_selectors": [format!("{}-rsa", d.selector), format!("{}-ed", d.selector)],
        "rotation": {
            "next_selector": d.next.as_ref().map(|n| n.selector.clone()),
            "previous_selector": d.previous.as_ref().map(|p| p.selector.clone()),
            "previous_retire_at": d.previous.as_ref().map(|p| postern_core::time::rfc3339(p.retire_at)),
        },
        "return_path": format!("{}.{}", d.return_path, d.domain),
        "return_path_used": d.return_path_mode.as_str(),
        "records": records.iter().map(|r| serde_json::json!({
            "name": r.name, "type": r.rtype, "value": r.value,
            "purpose": r.purpose, "required": r.required,
        })).collect::<Vec<_>>(),
        "zone": zone_snippet(&records),
    })
}

pub async fn run(config: &Config, command: DomainCommand) -> Result<()> {
    let store = crate::bootstrap::open_store(config)?;
    // Replaced keys whose overlap has ended are forgotten (the server does
    // this hourly too), so the records printed below no longer list them.
    store
        .retire_previous(postern_core::time::now_millis())
        .await?;
    let result = async {
        match command {
            DomainCommand::Add {
                domain,
                account,
                selector,
                report_to,
                json,
            } => {
                let domain = postern_core::address::normalize_domain(&domain)
                    .map_err(|_| anyhow::anyhow!("{domain:?} is not a domain name"))?;
                if !valid_selector(&selector) {
                    bail!("--selector: letters, digits and '-' only");
                }
                if store.get_account(account.clone()).await?.is_none() {
                    bail!("no account {account:?}");
                }
                // RSA generation is CPU-bound (about a second): off the runtime.
                let keys = tokio::task::spawn_blocking(DkimKeys::generate)
                    .await
                    .context("key generation")??;
                let record = DomainRecord {
                    id: 0,
                    domain: domain.clone(),
                    account: account.clone(),
                    selector,
                    rsa_private: keys.rsa_private,
                    rsa_public: keys.rsa_public,
                    ed25519_private: keys.ed25519_private,
                    ed25519_public: keys.ed25519_public,
                    return_path: "pst-bounces".into(),
                    return_path_mode: Default::default(),
                    created_at: postern_core::time::now_millis(),
                    verified_at: None,
                    verified_by: None,
                    next: None,
                    previous: None,
                };
                match store.add_domain(record.clone()).await {
                    Err(StoreError::Conflict) => bail!("{domain} is already added (by {account}, or verified by another account)"),
                    other => other?,
                };
                crate::account_command::audit(&store, "domain.add", Some(&account), format!("domain={domain}")).await?;
                let v = records_json(config, &record, report_to.as_deref());
                if json {
                    println!("{}", crate::terminal::json(&v));
                } else {
                    println!("Publish these records, then run `postern domain verify {domain}`:\n");
                    print!("{}", v["zone"].as_str().unwrap_or_default());
                }
            }
            DomainCommand::List { account, json } => {
                let list = store.list_domains(account).await?;
                if json {
                    let items: Vec<_> = list
                        .iter()
                        .map(|d| serde_json::json!({
                            "domain": d.domain, "account": d.account,
                            "valid": d.verified_at.is_some(), "verified_by": d.verified_by,
                        }))
                        .collect();
                    println!("{}", crate::terminal::json(&serde_json::Value::Array(items)));
                } else {
                    for d in &list {
                        println!(
                            "{}  account={}  {}",
                            d.domain,
                            d.account,
                            match &d.verified_by {
                                Some(by) => format!("verified ({by})"),
                                None => "not verified".into(),
                            }
                        );
                    }
                }
            }
            DomainCommand::Show {
                domain,
                account,
                report_to,
                json,
            } => {
                let d = find_domain(&store, &domain.to_ascii_lowercase(), account.as_deref()).await?;
                let v = records_json(config, &d, report_to.as_deref());
                if json {
                    println!("{}", crate::terminal::json(&v));
                } else {
                    print!("{}", v["zone"].as_str().unwrap_or_default());
                }
            }
            DomainCommand::Verify {
                domain,
                account,
                operator,
                report_to,
                json,
            } => {
                let domain = domain.to_ascii_lowercase();
                let d = find_domain(&store, &domain, account.as_deref()).await?;
                if operator {
                    let by = format!("operator:{}", crate::account_command::cli_actor());
                    let retired = match store
                        .verify_domain(d.id, postern_core::time::now_millis(), by.clone())
                        .await
                    {
                        Ok(Some(r)) => r,
                        Ok(None) => bail!("no domain {domain}"),
                        Err(StoreError::Conflict) => bail!("{domain} is verified by another account"),
                        Err(e) => return Err(e.into()),
                    };
                    crate::account_command::audit(&store, "domain.verify.operator", Some(&d.account), format!("domain={domain} id={} by={by}", d.id)).await?;
                    retire_audit(&store, &d, &retired).await?;
                    println!("{domain} verified by the operator, without a DNS check; mail from it is now DKIM-signed");
                    return Ok(());
                }
                let resolver = postern_delivery::MxResolver::new(&config.dns.nameservers)
                    .map_err(anyhow::Error::msg)?;
                let lookup = crate::dns_lookup::ResolverLookup(resolver);
                let result = postern_mailauth::domain_check::check_domain(
                    store.as_ref(),
                    &d,
                    &crate::dns_lookup::publishing(config),
                    report_to.as_deref(),
                    &lookup,
                    config.senders.dkim_rotation_overlap,
                )
                .await
                .map_err(|e| match e {
                    StoreError::Conflict => anyhow::anyhow!("{domain} is verified by another account"),
                    e => e.into(),
                })?;
                let checked = result.checked;
                let ok = result.valid;
                if result.newly_verified {
                    crate::account_command::audit(&store, "domain.verify", Some(&d.account), format!("domain={domain} id={} by=dns", d.id)).await?;
                }
                retire_audit(&store, &d, &result.retired_claims).await?;
                if let Some(selector) = &result.promoted {
                    crate::account_command::audit(&store, "domain.rotate.promote", Some(&d.account), format!("domain={domain} selector={selector} previous={}", d.selector)).await?;
                }
                if json {
                    let items: Vec<_> = checked
                        .iter()
                        .map(|c| {
                            let (status, reason) = match &c.status {
                                postern_mailauth::check::Status::Found => ("found", None),
                                postern_mailauth::check::Status::Missing => ("missing", None),
                                postern_mailauth::check::Status::Wrong(w) => ("wrong", Some(w.clone())),
                            };
                            serde_json::json!({
                                "name": c.record.name, "type": c.record.rtype,
                                "expected": c.record.value, "required": c.record.required,
                                "status": status, "reason": reason,
                            })
                        })
                        .collect();
                    println!("{}", crate::terminal::json(&serde_json::json!({
                        "domain": domain, "valid": ok, "records": items,
                        "rotation_promoted": result.promoted, "rotation_pending": result.rotation_pending,
                    })));
                } else {
                    for c in &checked {
                        let status = match &c.status {
                            postern_mailauth::check::Status::Found => "found".to_owned(),
                            postern_mailauth::check::Status::Missing => "MISSING".to_owned(),
                            // What DNS held: a stranger's text, escaped.
                            postern_mailauth::check::Status::Wrong(w) => {
                                format!("WRONG: {}", postern_core::printable::Printable(w))
                            }
                        };
                        println!(
                            "{:<8} {:<5} {}{}",
                            status,
                            c.record.rtype,
                            c.record.name,
                            if c.record.required { "" } else { " (optional)" }
                        );
                    }
                    println!(
                        "{domain}: {}",
                        if ok { "verified" } else { "not verified yet" }
                    );
                    if let Some(selector) = &result.promoted {
                        println!(
                            "key rotation: {selector} signs from now on; keep {} published for {} more, then remove it",
                            d.selector,
                            postern_core::duration::format(config.senders.dkim_rotation_overlap)
                        );
                    }
                    if let Some(selector) = &result.rotation_pending {
                        println!("key rotation: {selector} is not published yet; {} keeps signing", d.selector);
                    }
                }
                if !ok {
                    std::process::exit(1);
                }
            }
            DomainCommand::Rotate {
                domain,
                account,
                selector,
                json,
            } => {
                let domain = domain.to_ascii_lowercase();
                let d = find_domain(&store, &domain, account.as_deref()).await?;
                let mut taken = vec![d.selector.as_str()];
                if let Some(p) = &d.previous {
                    taken.push(p.selector.as_str());
                }
                let selector = match selector {
                    Some(s) if !valid_selector(&s) => bail!("--selector: letters, digits and '-' only"),
                    Some(s) if taken.contains(&s.as_str()) => {
                        bail!("selector {s} is in use (current or still published)")
                    }
                    Some(s) => s,
                    None => postern_mailauth::domain_check::next_selector(&d.selector, &taken),
                };
                let keys = tokio::task::spawn_blocking(DkimKeys::generate)
                    .await
                    .context("key generation")??;
                let next = postern_store::NextKeys {
                    selector: selector.clone(),
                    rsa_private: keys.rsa_private,
                    rsa_public: keys.rsa_public,
                    ed25519_private: keys.ed25519_private,
                    ed25519_public: keys.ed25519_public,
                    created_at: postern_core::time::now_millis(),
                };
                store.start_rotation(d.id, next).await?;
                crate::account_command::audit(&store, "domain.rotate", Some(&d.account), format!("domain={domain} selector={selector}")).await?;
                let Some(d) = store.get_domain_by_id(d.id).await? else {
                    bail!("no domain {domain}");
                };
                let v = records_json(config, &d, None);
                if json {
                    println!("{}", crate::terminal::json(&v));
                } else {
                    println!(
                        "New keys under selector {selector}. Publish these two records beside the current ones, then run `postern domain verify {domain}`; {} signs until then:\n",
                        d.selector
                    );
                    let records = records_for(&d, &crate::dns_lookup::publishing(config), None);
                    let new: Vec<_> = records.into_iter().filter(|r| r.key.starts_with("next_")).collect();
                    print!("{}", zone_snippet(&new));
                }
            }
            DomainCommand::ReturnPath { domain, mode, account } => {
                let domain = domain.to_ascii_lowercase();
                let d = find_domain(&store, &domain, account.as_deref()).await?;
                let new = match mode.as_str() {
                    "on" => ReturnPathMode::Operator,
                    // `auto` keeps what the last DNS check found.
                    "auto" if d.return_path_mode == ReturnPathMode::FoundInDns => ReturnPathMode::FoundInDns,
                    _ => ReturnPathMode::Off,
                };
                store.set_return_path_mode(d.id, new).await?;
                crate::account_command::audit(&store, "domain.return_path", Some(&d.account), format!("domain={domain} mode={}", new.as_str())).await?;
                println!(
                    "{domain}: return path {} ({}.{domain})",
                    if new.is_on() { "used" } else { "not used; run `postern domain verify` once its MX and SPF are published" },
                    d.return_path
                );
            }
            DomainCommand::Remove { domain, account } => {
                let domain = domain.to_ascii_lowercase();
                let d = find_domain(&store, &domain, account.as_deref()).await?;
                store.delete_domain(d.id).await?;
                crate::account_command::audit(&store, "domain.remove", Some(&d.account), format!("domain={domain}")).await?;
                println!("{domain} removed");
            }
        }
        Ok(())
    }
    .await;
    store.close();
    result
}

/// Audits the claims a verification retired, each under its own account.
async fn retire_audit(
    store: &postern_store::EmbeddedStore,
    winner: &DomainRecord,
    retired: &[DomainRecord],
) -> Result<()> {
    for r in retired {
        crate::account_command::audit(
            store,
            "domain.claim.retired",
            Some(&r.account),
            format!(
                "domain={} id={} verified by account {} (id {})",
                r.domain, r.id, winner.account, winner.id
            ),
        )
        .await?;
    }
    Ok(())
}
