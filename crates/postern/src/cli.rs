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
    CheckConfig,
    /// Manage API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Show the event log (received, delivered, deferred, failed).
    Events {
        /// Only events of this message id.
        #[arg(long)]
        message: Option<String>,
        /// Only the most recent N events.
        #[arg(long)]
        limit: Option<usize>,
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
        Command::CheckConfig => {
            let path = cli
                .global
                .config
                .as_ref()
                .context("check-config needs --config FILE")?;
            Config::load(path).map_err(anyhow::Error::new)?;
            println!("{}: OK", path.display());
            Ok(())
        }
        Command::Key { command } => {
            let config = load_config(&cli.global)?;
            crate::key_command::run(&config, command).await
        }
        Command::Events {
            message,
            limit,
            json,
        } => {
            let config = load_config(&cli.global)?;
            crate::events_command::run(&config, message, limit, json).await
        }
    }
}
