//! `postern`: the binary. Command line, configuration loading, wiring of the
//! crates, signals and graceful shutdown.

mod account_command;
mod audit_command;
mod bootstrap;
mod callahead;
mod cli;
mod dane_status;
mod dns_lookup;
mod domain_command;
mod events_command;
mod key_command;
mod quarantine_command;
mod queue_command;
mod reports_command;
mod reports_send_command;
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
    restrict_umask();
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

/// Every file Postern creates (the store and its WAL, keys, certificates,
/// the audit head) is for this user only, whatever umask the service was
/// started with: set before any thread or file exists, so that nothing can
/// be created with a wider mode in between. Files are also created with
/// explicit modes, and the data directory's modes are repaired at start
/// (`bootstrap::restrict_data_dir`); the umask covers what SQLite creates.
fn restrict_umask() {
    #[cfg(unix)]
    // SAFETY: umask(2) only sets the process's file mode creation mask and
    // cannot fail; no memory is involved. Called first in main, before the
    // runtime starts any thread.
    unsafe {
        libc::umask(0o077);
    }
}
