//! `postern-loadgen`: an SMTP load generator in the spirit of Postfix's
//! `smtp-source`, with TLS (STARTTLS or implicit), AUTH PLAIN and
//! pipelining. It can also run the receiving sink itself (`--sink`) and
//! measure end to end: from the first connection until the sink holds every
//! message. Prints one JSON line.

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
    let body = Arc::new(smtp::message_body(args.size));
    let next_rcpt = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let (args, tls, body, next_rcpt) =
            (args.clone(), tls.clone(), body.clone(), next_rcpt.clone());
        tasks.push(tokio::spawn(async move {
            let mut all = Vec::new();
            for _ in 0..args.rounds {
                let (lat, err) = smtp::connection(i, &args, tls.clone(), &body, &next_rcpt).await;
                all.extend(lat);
                if err.is_some() {
                    return (all, err);
                }
            }
            (all, None)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut errors = 0usize;
    let mut first_error = None;
    for t in tasks {
        match t.await? {
            (lat, None) => latencies.extend(lat),
            (lat, Some(e)) => {
                latencies.extend(lat);
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let accepted_at = start.elapsed();
    let sent = latencies.len();
    let mut delivered = None;
    let mut e2e = None;
    if let Some(sink) = &sink {
        let deadline = start + Duration::from_secs(args.timeout);
        while sink.count() < sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        delivered = Some(sink.count());
        e2e = Some(start.elapsed());
    }
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
    });
    println!("{out}");
    Ok(())
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
