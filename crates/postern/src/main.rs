//! `postern`: the binary. Command line, configuration loading, wiring of the
//! crates, signals and graceful shutdown.

mod account_command;
mod audit_command;
mod bootstrap;
mod cli;
mod dane_status;
mod dns_lookup;
mod domain_command;
mod events_command;
mod key_command;
mod queue_command;
mod sender_command;
mod serve;
mod terminal;
mod totp_command;
mod webhook_command;

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("postern: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postern: {e:#}");
            ExitCode::FAILURE
        }
    }
}
