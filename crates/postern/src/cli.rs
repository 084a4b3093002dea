//! Command-line interface. Every command works on the data directory (or
//! store) named by `--config` / `--data-dir`, also while a server runs on it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use postern_core::Config;

#[derive(Parser)]
#[command(
    name = "postern",
    version,
    about = "Postern: a secure SMTP relay and submission service"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct GlobalArgs {
    /// TOML configuration file (default: the built-in embedded default).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory; overrides `server.data_dir`.
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the server.
    Serve,
    /// Check a configuration file and report the first problem, naming the key.
    CheckConfig {
        /// Also ask the configured resolver (once) whether it supplies DNSSEC
        /// data that validates, and say whether DANE would be active.
        #[arg(long)]
        probe_dns: bool,
    },
    /// Manage API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Manage accounts.
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// Manage subusers (accounts under an account, with their own credentials).
    Subuser {
        #[command(subcommand)]
        command: SubuserCommand,
    },
    /// Manage the networks an account may log in from.
    IpAccess {
        #[command(subcommand)]
        command: IpAccessCommand,
    },
    /// Two-factor authentication (TOTP, RFC 6238) for an account's human logins.
    Totp {
        #[command(subcommand)]
        command: TotpCommand,
    },
    /// Read the audit log, or verify its hash chain (`postern audit verify`).
    Audit {
        #[command(subcommand)]
        command: Option<AuditCommand>,
        /// Only entries about this account.
        #[arg(long)]
        account: Option<String>,
        /// A kind (`auth.failure`) or a prefix ending in "." (`auth.`).
        #[arg(long)]
        kind: Option<String>,
        /// From this time: a duration ago (`1h`) or `2026-11-23T10:00:00Z`.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// Only the most recent N entries.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Show the send log: processed, delivered, deferred, bounce, dropped.
    Events(crate::events_command::Query),
    /// Sending domains: DKIM keys, DNS records, verification.
    Domain {
        #[command(subcommand)]
        command: crate::domain_command::DomainCommand,
    },
    /// Single verified senders: add (mails a link), list, confirm, resend, remove.
    Sender {
        #[command(subcommand)]
        command: crate::sender_command::SenderCommand,
    },
    /// An account's event webhook: set, show.
    Webhook {
        #[command(subcommand)]
        command: crate::webhook_command::WebhookCommand,
    },
    /// The delivery queue: list, show, retry, delete.
    Queue {
        #[command(subcommand)]
        command: crate::queue_command::QueueCommand,
    },
    /// Inbound mail held for a decision: list, show, release, delete.
    Quarantine {
        #[command(subcommand)]
        command: crate::quarantine_command::QuarantineCommand,
    },
    /// DMARC aggregate and TLS-RPT reports: those received (list, show)
    /// and those Postern sends (send-now).
    Reports {
        #[command(subcommand)]
        command: crate::reports_command::ReportsCommand,
    },
}

#[derive(Subcommand)]
pub enum AccountCommand {
    /// Create an account.
    Create {
        name: String,
        /// Allow password (basic) auth; off by default, so only API keys work.
        #[arg(long)]
        allow_password_auth: bool,
        #[arg(long)]
        json: bool,
    },
    /// List accounts and their subusers.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Disable an account: its credentials and its subusers' stop at once.
    Disable {
        name: String,
    },
    Enable {
        name: String,
    },
    /// Switch password (basic) auth on or off for an account.
    PasswordAuth {
        name: String,
        setting: OnOff,
    },
    /// Set an account's password, read from standard input.
    Password {
        name: String,
    },
    /// Set an account's own hourly message limit (`none` removes it).
    Limit {
        name: String,
        #[arg(long, value_name = "N|none")]
        messages_per_hour: String,
    },
    /// How the envelope sender and the header From must relate: `strict`
    /// (the default: the same verified domain) or `relaxed` (each in a
    /// verified domain of the account).
    SenderAlignment {
        name: String,
        #[arg(value_parser = ["strict", "relaxed"])]
        rule: String,
    },
    /// Bind an account (or subuser) to an [[ip_pool]]: its mail leaves from
    /// the pool's addresses with their EHLO names. `none` falls back to the
    /// parent's pool, then queue.default_ip_pool.
    IpPool {
        name: String,
        #[arg(value_name = "POOL|none")]
        pool: String,
    },
    /// Opt an account in to CRAM-MD5 (`on` reads its current password from
    /// standard input) or out. The stored HMAC state is password-equivalent
    /// for CRAM-MD5; listeners must also list CRAM-MD5 in auth_mechanisms.
    CramMd5 {
        name: String,
        setting: OnOff,
    },
    /// Require a current TOTP code for actions that create credentials
    /// (API keys, sending domains) when made after a password login.
    #[command(name = "require-2fa")]
    Require2fa {
        name: String,
        setting: OnOff,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

impl OnOff {
    pub fn is_on(self) -> bool {
        matches!(self, OnOff::On)
    }
}

#[derive(Subcommand)]
pub enum SubuserCommand {
    /// Create a subuser of an account.
    Create {
        name: String,
        /// The parent account.
        #[arg(long)]
        account: String,
        #[arg(long)]
        allow_password_auth: bool,
        #[arg(long)]
        json: bool,
    },
    List {
        /// Only subusers of this account.
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum IpAccessCommand {
    /// Allow logins from a network (IPv4/IPv6 CIDR or address). Once an
    /// account has any entry, logins from anywhere else are refused.
    Add {
        account: String,
        network: String,
    },
    Remove {
        account: String,
        network: String,
    },
    List {
        account: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum TotpCommand {
    /// Start enrolment: prints the secret, an otpauth:// URI and recovery
    /// codes (shown once). Active after the first `verify`.
    Enroll {
        account: String,
        #[arg(long)]
        json: bool,
    },
    /// Check a 6-digit code or a recovery code (confirms a pending enrolment).
    Verify { account: String, code: String },
    /// Remove the second factor.
    Disable { account: String },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain; fails if any entry was changed or removed,
    /// or if the chain no longer holds the head Postern recorded (in
    /// `audit.head`) or an anchor given with --anchor (tail truncated or
    /// chain rewritten).
    Verify {
        /// An anchor printed earlier by `postern audit anchor`: SEQ:HASH.
        /// May be repeated.
        #[arg(long, value_name = "SEQ:HASH")]
        anchor: Vec<String>,
    },
    /// Print the chain's current head (sequence number, hash, and an HMAC
    /// under the anchor key) to keep somewhere else; `audit verify --anchor`
    /// checks it later.
    Anchor {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Create a key and print it (it is shown only this once).
    Create {
        /// The account the key belongs to.
        #[arg(long, default_value = "admin")]
        account: String,
        /// A name to recognise the key by.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Comma-separated SendGrid scope names (default: full access).
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Expire after this long (e.g. 30d, 12h).
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
        /// Usable only from these networks (comma-separated CIDRs or addresses).
        #[arg(long, value_delimiter = ',', value_name = "CIDR")]
        allow_ip: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id; takes effect for the next AUTH on every listener.
    Revoke { id: String },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
}

/// Loads the config named on the command line, or the embedded default.
pub fn load_config(global: &GlobalArgs) -> Result<Config> {
    let mut config = match &global.config {
        Some(path) => Config::load(path).map_err(anyhow::Error::new)?,
        None => Config::default(),
    };
    if let Some(dir) = &global.data_dir {
        config.server.data_dir = dir.clone();
    }
    Ok(config)
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve => {
            let config = load_config(&cli.global)?;
            crate::serve::serve(config).await
        }
        Command::CheckConfig { probe_dns } => {
            let path = cli
                .global
                .config
                .as_ref()
                .context("check-config needs --config FILE")?;
            let config = Config::load(path).map_err(anyhow::Error::new)?;
            println!("{}: OK", path.display());
            if probe_dns {
                println!("{}", crate::dane_status::probe_for_check(&config).await?);
            }
            Ok(())
        }
        Command::Key { command } => {
            let config = load_config(&cli.global)?;
            crate::key_command::run(&config, command).await
        }
        Command::Account { command } => {
            let config = load_config(&cli.global)?;
            crate::account_command::run_account(&config, command).await
        }
        Command::Subuser { command } => {
            let config = load_config(&cli.global)?;
            crate::account_command::run_subuser(&config, command).await
        }
        Command::IpAccess { command } => {
            let config = load_config(&cli.global)?;
            crate::account_command::run_ip_access(&config, command).await
        }
        Command::Totp { command } => {
            let config = load_config(&cli.global)?;
            crate::totp_command::run(&config, command).await
        }
        Command::Audit {
            command,
            account,
            kind,
            since,
            until,
            limit,
            json,
        } => {
            let config = load_config(&cli.global)?;
            match command {
                Some(AuditCommand::Verify { anchor }) => {
                    crate::audit_command::verify(&config, &anchor).await
                }
                Some(AuditCommand::Anchor { json }) => {
                    crate::audit_command::anchor(&config, json).await
                }
                None => {
                    let q = crate::audit_command::Query {
                        account,
                        kind,
                        since,
                        until,
                        limit,
                        json,
                    };
                    crate::audit_command::run(&config, q).await
                }
            }
        }
        Command::Domain { command } => {
            let config = load_config(&cli.global)?;
            crate::domain_command::run(&config, command).await
        }
        Command::Sender { command } => {
            let config = load_config(&cli.global)?;
            crate::sender_command::run(&config, command).await
        }
        Command::Webhook { command } => {
            let config = load_config(&cli.global)?;
            crate::webhook_command::run(&config, command).await
        }
        Command::Queue { command } => {
            let config = load_config(&cli.global)?;
            crate::queue_command::run(&config, command).await
        }
        Command::Quarantine { command } => {
            let config = load_config(&cli.global)?;
            crate::quarantine_command::run(&config, command).await
        }
        Command::Reports { command } => {
            let config = load_config(&cli.global)?;
            crate::reports_command::run(&config, command).await
        }
        Command::Events(query) => {
            let config = load_config(&cli.global)?;
            crate::events_command::run(&config, query).await
        }
    }
}
