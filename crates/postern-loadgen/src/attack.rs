//! Credential-guessing load: connections at a fixed rate from many source
//! addresses, each one AUTH attempt with a wrong secret. Used to show that a
//! legitimate client keeps working while Postern is under attack.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use rustls_pki_types::ServerName;
use tokio::io::BufReader;
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;

use crate::smtp::{tls_config, Conn, Io};
use crate::Args;

/// Attempts in flight at once; beyond this the attacker itself is saturated.
const MAX_IN_FLIGHT: usize = 4000;

fn parse_v4_net(s: &str) -> Result<(u32, u32)> {
    let (addr, len) = s
        .split_once('/')
        .context("--attack-sources needs CIDR, e.g. 127.2.0.0/16")?;
    let addr: Ipv4Addr = addr.parse()?;
    let len: u32 = len.parse()?;
    if !(8..=32).contains(&len) || !addr.is_loopback() {
        bail!("--attack-sources must be a loopback IPv4 network of /8 to /32");
    }
    let mask = if len == 32 {
        u32::MAX
    } else {
        !(u32::MAX >> len)
    };
    Ok((u32::from(addr) & mask, !mask))
}

async fn one_attempt(
    args: &Args,
    source: Ipv4Addr,
    tls: &tokio_rustls::TlsConnector,
) -> Result<u16> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let tcp = tokio::time::timeout(Duration::from_secs(10), socket.connect(args.server)).await??;
    let name = ServerName::IpAddress(args.server.ip().into());
    let stream: Box<dyn Io> = if args.tls {
        Box::new(tls.connect(name.clone(), tcp).await?)
    } else {
        Box::new(tcp)
    };
    let mut c = Conn::new(BufReader::new(stream));
    c.reply().await?;
    c.send(b"EHLO attacker.test\r\n").await?;
    c.reply().await?;
    if args.starttls {
        c.send(b"STARTTLS\r\n").await?;
        c.reply().await?;
        let tcp = c.into_inner();
        let stream: Box<dyn Io> = Box::new(tls.connect(name, tcp).await?);
        c = Conn::new(BufReader::new(stream));
        c.send(b"EHLO attacker.test\r\n").await?;
        c.reply().await?;
    }
    let user = args.user.as_deref().unwrap_or("victim");
    let pass = args.password.as_deref().unwrap_or("wrong-password");
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
    c.send(format!("AUTH PLAIN {token}\r\n").as_bytes()).await?;
    let (code, _) = c.reply().await?;
    let _ = c.send(b"QUIT\r\n").await;
    Ok(code)
}

pub async fn run(args: &Args, rate: u32) -> Result<()> {
    let (base, host_mask) = parse_v4_net(args.attack_sources.as_deref().unwrap_or("127.2.0.0/16"))?;
    let tls = Arc::new(tls_config()?);
    let replies: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let start = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    let mut launched = 0u64;
    let mut skipped = 0u64;
    while start.elapsed() < Duration::from_secs(args.attack_seconds) {
        ticker.tick().await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        // Host part 1..=max-1 of the network, never .0 or .255.
        let host = (rand_u32() & host_mask).clamp(1, host_mask.saturating_sub(1).max(1));
        let source = Ipv4Addr::from(base | host);
        let (args, tls, replies) = (args.clone(), tls.clone(), replies.clone());
        launched += 1;
        tokio::spawn(async move {
            let key = match one_attempt(&args, source, &tls).await {
                Ok(code) => code.to_string(),
                Err(_) => "error".to_string(),
            };
            *replies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key)
                .or_default() += 1;
            drop(permit);
        });
    }
    // Let attempts in flight finish (bounded).
    let _ = tokio::time::timeout(
        Duration::from_secs(15),
        in_flight.acquire_many(MAX_IN_FLIGHT as u32),
    )
    .await;
    let elapsed = start.elapsed().as_secs_f64();
    let replies = replies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    println!(
        "{}",
        serde_json::json!({
            "label": args.label,
            "attack_rate": rate,
            "attempts": launched,
            "skipped_attacker_saturated": skipped,
            "seconds": (elapsed * 10.0).round() / 10.0,
            "replies": replies,
        })
    );
    Ok(())
}

fn rand_u32() -> u32 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    // Source-address choice needs spread, not cryptographic randomness.
    let mut h = RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish() as u32
}
