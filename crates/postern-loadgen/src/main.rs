//! `postern-loadgen`: an SMTP load generator in the spirit of Postfix's
//! `smtp-source`, with TLS (STARTTLS or implicit), AUTH PLAIN and
//! pipelining. It can also run the receiving sink itself (`--sink`) and
//! measure end to end: from the first connection until the sink holds every
//! message. Prints one JSON line.

mod api;
mod attack;
mod idle;
mod sink;
mod smtp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;

#[derive(Parser, Clone)]
#[command(name = "postern-loadgen", version, about)]
pub struct Args {
    /// The SMTP server to load.
    #[arg(long)]
    pub server: SocketAddr,
    /// Concurrent connections.
    #[arg(long, default_value_t = 10)]
    pub connections: usize,
    /// Messages sent on each connection.
    #[arg(long, default_value_t = 10)]
    pub messages: usize,
    /// Each of the concurrent clients opens this many connections, one after
    /// the other (total = connections × messages × rounds).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Message size in bytes (headers included).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Send this file's bytes as every message instead of a generated one
    /// of --size bytes (e.g. a message DKIM-signed beforehand, so that
    /// every server under test gets the same signed bytes). CRLF lines, no
    /// line starting with a dot, ending with CRLF.
    #[arg(long)]
    pub body_file: Option<std::path::PathBuf>,
    /// Upgrade with STARTTLS after EHLO.
    #[arg(long)]
    pub starttls: bool,
    /// Implicit TLS from the first byte (RFC 8314).
    #[arg(long)]
    pub tls: bool,
    /// AUTH PLAIN user name (e.g. "apikey").
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub password: Option<String>,
    /// Send MAIL, RCPT and DATA in one write (RFC 2920).
    #[arg(long)]
    pub pipelining: bool,
    #[arg(long, default_value = "loadgen@example.org")]
    pub from: String,
    #[arg(long, default_value = "rcpt@example.net")]
    pub to: String,
    /// Spread recipients over this many domains: `d0.<domain of --to>` …
    /// (each message to the next one in turn).
    #[arg(long)]
    pub domains: Option<usize>,
    /// Run an SMTP sink on this address and wait until it has received every
    /// message: the figure is then end to end.
    #[arg(long)]
    pub sink: Option<SocketAddr>,
    /// The sink listens on 127.0.1.1 … 127.0.1.N (the port of --sink)
    /// instead: N distinct destinations for the server under test.
    #[arg(long)]
    pub sink_hosts: Option<u8>,
    /// The sink answers 451 to every Nth recipient, once per address (a
    /// receiver greylisting part of the mail); those count only once
    /// retried and accepted.
    #[arg(long)]
    pub sink_defer_every: Option<usize>,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Instead of sending, open this many connections, leave them idle (after
    /// the greeting, or after STARTTLS+EHLO with --starttls) and hold them.
    #[arg(long)]
    pub idle: Option<usize>,
    /// How long to hold idle connections.
    #[arg(long, default_value_t = 10)]
    pub hold: u64,
    /// Attack mode: open this many connections per second, each trying AUTH
    /// PLAIN with --user/--password (meant to be wrong), and count replies.
    #[arg(long)]
    pub attack_rate: Option<u32>,
    /// How long the attack lasts.
    #[arg(long, default_value_t = 30)]
    pub attack_seconds: u64,
    /// Attack from random addresses of this IPv4 network (loopback only,
    /// e.g. 127.2.0.0/16), as a botnet would from many addresses.
    #[arg(long)]
    pub attack_sources: Option<String>,
    /// Send bodies with BDAT (RFC 3030 CHUNKING) instead of DATA.
    #[arg(long)]
    pub bdat: bool,
    /// Bytes per BDAT chunk (the last one carries LAST).
    #[arg(long, default_value_t = 1024 * 1024)]
    pub bdat_chunk: usize,
    /// Mixed clients: client i sends with BDAT when i is odd and DATA when
    /// even, and every other pair goes unauthenticated, in plaintext, to
    /// --relay-server (recipient --relay-to) instead of --server with TLS
    /// and AUTH: a quarter of the clients in each combination.
    #[arg(long)]
    pub mix: bool,
    /// The relay (MX) listener for the unauthenticated clients of --mix.
    #[arg(long)]
    pub relay_server: Option<SocketAddr>,
    /// The recipient of the unauthenticated clients (a relay domain of the
    /// server under test).
    #[arg(long)]
    pub relay_to: Option<String>,
    /// Announce the message size in MAIL FROM (RFC 1870 SIZE=).
    #[arg(long)]
    pub size_param: bool,
    /// A 4xx reply (or an HTTP 503/429) is a pushback: the client counts
    /// it, backs off briefly and sends the message again until accepted
    /// (or --timeout). Without it a 4xx ends the client with an error.
    #[arg(long)]
    pub retry_4xx: bool,
    /// Instead of SMTP, POST to /v3/mail/send on this HTTP address (the API
    /// key in --password, recipient --to): each request carries one
    /// attachment of --attachment-size bytes, base64-encoded.
    #[arg(long)]
    pub api: Option<SocketAddr>,
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    pub attachment_size: usize,
    /// A label copied into the JSON output.
    #[arg(long, default_value = "")]
    pub label: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.starttls && args.tls {
        bail!("--starttls and --tls exclude each other");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        if let Some(n) = args.idle {
            return idle::hold(&args, n).await;
        }
        if let Some(rate) = args.attack_rate {
            return attack::run(&args, rate).await;
        }
        run(args).await
    })
}

async fn run(args: Args) -> Result<()> {
    let sink = match args.sink {
        Some(addr) => {
            let addrs: Vec<SocketAddr> = match args.sink_hosts {
                Some(n) => (1..=n)
                    .map(|i| SocketAddr::from(([127, 0, 1, i], addr.port())))
                    .collect(),
                None => vec![addr],
            };
            Some(sink::Sink::start(&addrs, args.sink_defer_every).await?)
        }
        None => None,
    };
    let total = args.connections * args.messages * args.rounds;
    let tls = Arc::new(smtp::tls_config()?);
    // One body for every client (20 MiB × 200 clients must not be 4 GiB
    // in the generator itself).
    let body = Arc::new(match args.api {
        Some(_) => api::request_body(&args, args.attachment_size),
        None => match &args.body_file {
            Some(path) => smtp::body_from_file(path)?,
            None => smtp::message_body(args.size),
        },
    });
    let next_rcpt = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.timeout);
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let (args, tls, body, next_rcpt) =
            (args.clone(), tls.clone(), body.clone(), next_rcpt.clone());
        tasks.push(tokio::spawn(async move {
            let mut all = smtp::ClientResult::default();
            for _ in 0..args.rounds {
                let r = match args.api {
                    Some(addr) => api::client(i, &args, addr, &body, deadline).await,
                    None => {
                        smtp::connection(i, &args, tls.clone(), &body, &next_rcpt, deadline).await
                    }
                };
                all.latencies.extend(r.latencies);
                all.pushbacks += r.pushbacks;
                if r.error.is_some() {
                    all.error = r.error;
                    break;
                }
            }
            (i, all)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut errors = 0usize;
    let mut first_error = None;
    let mut pushbacks = 0usize;
    let mut by_mode = std::collections::BTreeMap::<&str, usize>::new();
    for t in tasks {
        let (i, r) = t.await?;
        if args.mix {
            *by_mode.entry(smtp::Mode::of(i, &args).name()).or_default() += r.latencies.len();
        }
        latencies.extend(r.latencies);
        pushbacks += r.pushbacks;
        if let Some(e) = r.error {
            errors += 1;
            first_error.get_or_insert(e);
        }
    }
    let accepted_at = start.elapsed();
    let sent = latencies.len();
    let mut delivered = None;
    let mut e2e = None;
    if let Some(sink) = &sink {
        while sink.count() < sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        delivered = Some(sink.count());
        e2e = Some(start.elapsed());
    }
    let message_bytes = body.len();
    drop(body);
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    let out = serde_json::json!({
        "label": args.label,
        "connections": args.connections,
        "messages_per_connection": args.messages,
        "rounds": args.rounds,
        "size": args.size,
        "body_file": args.body_file.as_ref().map(|p| p.display().to_string()),
        "tls": if args.tls { "implicit" } else if args.starttls { "starttls" } else { "none" },
        "auth": args.user.is_some(),
        "pipelining": args.pipelining,
        "accepted": sent,
        "errors": errors,
        "first_error": first_error,
        "accept_seconds": round3(accepted_at.as_secs_f64()),
        "accept_msgs_per_s": round1(sent as f64 / accepted_at.as_secs_f64()),
        "p50_ms": round3(pct(0.50)),
        "p99_ms": round3(pct(0.99)),
        "domains": args.domains,
        "sink_defer_every": args.sink_defer_every,
        "sink_deferred": sink.as_ref().map(|s| s.deferred()),
        "delivered": delivered,
        "e2e_seconds": e2e.map(|d| round3(d.as_secs_f64())),
        "e2e_msgs_per_s": e2e.map(|d| round1(delivered.unwrap_or(0) as f64 / d.as_secs_f64())),
        "mode": if args.api.is_some() { "api" } else if args.mix { "mix" } else if args.bdat { "bdat" } else { "data" },
        "message_bytes": message_bytes,
        "attachment_bytes": args.api.map(|_| args.attachment_size),
        "accepted_by_mode": if args.mix { serde_json::json!(by_mode) } else { serde_json::Value::Null },
        "pushbacks": pushbacks,
        // Bytes of accepted messages (API: request bodies) per second, in
        // MiB/s: until all were accepted, and until the sink had them all.
        "accept_mib_per_s": round1((sent * message_bytes) as f64 / MIB / accepted_at.as_secs_f64()),
        "e2e_mib_per_s": e2e.map(|d| round1((delivered.unwrap_or(0).min(sent) * message_bytes) as f64 / MIB / d.as_secs_f64())),
        "loadgen_peak_rss_kib": peak_rss_kib(),
    });
    println!("{out}");
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

/// This process's peak RSS (VmHWM), to show the generator holds one body.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
