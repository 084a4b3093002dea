//! `postern reports`: the DMARC aggregate and TLS-RPT reports received at
//! the `[reports]` addresses, summarised. The operator sees every report.

use anyhow::{bail, Result};
use clap::Subcommand;
use postern_core::printable::Printable;
use postern_core::Config;
use postern_store::{ReportFilter, ReportRecord, ReportStore};

#[derive(Subcommand)]
pub enum ReportsCommand {
    /// Received reports, newest first.
    List {
        /// dmarc or tlsrpt.
        #[arg(long)]
        kind: Option<String>,
        /// Only reports about this policy domain.
        #[arg(long)]
        domain: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// One report's summary.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Send the reports Postern sends (DMARC aggregate, TLS-RPT) that are
    /// due now, everything recorded since the last pass, and say what was
    /// sent and what was not, and why.
    SendNow,
}

fn print_report(r: &ReportRecord) {
    let v = r.to_json();
    println!(
        "{}  {}  {}  org={} report_id={}  {} .. {}",
        r.id,
        r.report.kind,
        Printable(&r.report.policy_domain),
        Printable(&r.report.org),
        Printable(&r.report.report_id),
        v["begin"].as_str().unwrap_or("-"),
        v["end"].as_str().unwrap_or("-"),
    );
    // The counts, one line (reporter-supplied strings escaped).
    println!("    {}", Printable(&v["summary"].to_string()));
}

pub async fn run(config: &Config, command: ReportsCommand) -> Result<()> {
    // send-now builds the whole reporter (store, intake, resolver, HTTP
    // client) itself; list and show only read.
    let read = match command {
        ReportsCommand::SendNow => return crate::reports_send_command::send_now(config).await,
        ReportsCommand::List {
            kind,
            domain,
            limit,
            json,
        } => Read::List {
            kind,
            domain,
            limit,
            json,
        },
        ReportsCommand::Show { id, json } => Read::Show { id, json },
    };
    let store = crate::bootstrap::open_store(config)?;
    let result = run_on(store.as_ref(), read).await;
    store.close();
    result
}

/// The commands that only read received reports.
enum Read {
    List {
        kind: Option<String>,
        domain: Option<String>,
        limit: Option<usize>,
        json: bool,
    },
    Show {
        id: i64,
        json: bool,
    },
}

async fn run_on(store: &dyn ReportStore, command: Read) -> Result<()> {
    match command {
        Read::List {
            kind,
            domain,
            limit,
            json,
        } => {
            if let Some(k) = &kind {
                if k != "dmarc" && k != "tlsrpt" {
                    bail!("--kind: dmarc or tlsrpt");
                }
            }
            let list = store
                .reports(ReportFilter {
                    kind,
                    domain,
                    limit,
                    ..Default::default()
                })
                .await?;
            if json {
                let v: Vec<_> = list.iter().map(ReportRecord::to_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for r in &list {
                    print_report(r);
                }
            }
        }
        Read::Show { id, json } => {
            let Some(r) = store.report(id, ReportFilter::default()).await? else {
                bail!("no report {id}");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&r.to_json())?);
            } else {
                print_report(&r);
            }
        }
    }
    Ok(())
}
