//! The client side of the load: one task per connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use base64::Engine;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::Args;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A benchmark client does not check certificates (the servers under test
/// use self-signed ones): the same opportunistic config Postern's delivery
/// uses. One shared config gives TLS session resumption.
pub fn tls_config() -> Result<TlsConnector> {
    let config = postern_delivery::tls::opportunistic_config().map_err(anyhow::Error::msg)?;
    Ok(TlsConnector::from(config))
}

/// A message of `size` bytes with CRLF lines of at most 78 characters.
pub fn message_body(size: usize) -> Vec<u8> {
    let mut m =
        b"From: loadgen@example.org\r\nTo: rcpt@example.net\r\nSubject: load\r\n\r\n".to_vec();
    let line = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 load generator\r\n";
    while m.len() + line.len() <= size {
        m.extend_from_slice(line);
    }
    while m.len() + 2 < size {
        m.push(b'x');
    }
    m.extend_from_slice(b"\r\n");
    m
}

pub struct Conn {
    io: BufReader<Box<dyn Io>>,
}

impl Conn {
    pub fn new(io: BufReader<Box<dyn Io>>) -> Self {
        Conn { io }
    }

    pub fn into_inner(self) -> Box<dyn Io> {
        self.io.into_inner()
    }

    pub async fn reply(&mut self) -> Result<(u16, String)> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(120), self.io.read_line(&mut line))
                .await??;
            if n == 0 {
                bail!("connection closed");
            }
            text.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] == b' ' {
                let code = line
                    .get(..3)
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| anyhow!("bad reply {line:?}"))?;
                return Ok((code, text));
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.io.get_mut().write_all(bytes).await?;
        Ok(())
    }

    async fn expect(&mut self, class: u16, what: &str) -> Result<String> {
        let (code, text) = self.reply().await?;
        if code / 100 != class {
            bail!("{what}: {}", text.trim_end());
        }
        Ok(text)
    }
}

/// Connects and reads the greeting only.
pub async fn open_greeting_only(args: &Args) -> Result<Conn> {
    let tcp = TcpStream::connect(args.server).await?;
    let mut c = Conn {
        io: BufReader::new(Box::new(tcp)),
    };
    c.expect(2, "greeting").await?;
    Ok(c)
}

/// Connects, greets, upgrades and authenticates as the arguments say.
pub async fn open(args: &Args, tls: &TlsConnector) -> Result<Conn> {
    let tcp = TcpStream::connect(args.server).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(args.server.ip().into());
    let stream: Box<dyn Io> = if args.tls {
        Box::new(tls.connect(name.clone(), tcp).await?)
    } else {
        Box::new(tcp)
    };
    let mut c = Conn {
        io: BufReader::new(stream),
    };
    c.expect(2, "greeting").await?;
    c.send(b"EHLO loadgen.test\r\n").await?;
    c.expect(2, "EHLO").await?;
    if args.starttls {
        c.send(b"STARTTLS\r\n").await?;
        c.expect(2, "STARTTLS").await?;
        let tcp = c.io.into_inner();
        let stream: Box<dyn Io> = Box::new(tls.connect(name, tcp).await?);
        c = Conn {
            io: BufReader::new(stream),
        };
        c.send(b"EHLO loadgen.test\r\n").await?;
        c.expect(2, "EHLO").await?;
    }
    if let (Some(u), Some(p)) = (&args.user, &args.password) {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{u}\0{p}"));
        c.send(format!("AUTH PLAIN {token}\r\n").as_bytes()).await?;
        c.expect(2, "AUTH").await?;
    }
    Ok(c)
}

/// One connection's share of the load: latencies of accepted messages, and
/// the error that ended it early, if any.
pub async fn connection(
    _i: usize,
    args: &Args,
    tls: Arc<TlsConnector>,
    body: &[u8],
    next_rcpt: &std::sync::atomic::AtomicUsize,
) -> (Vec<Duration>, Option<String>) {
    let mut latencies = Vec::with_capacity(args.messages);
    let start = Instant::now();
    let mut conn = match open(args, &tls).await {
        Ok(c) => c,
        Err(e) => return (latencies, Some(e.to_string())),
    };
    let mut data = body.to_vec();
    data.extend_from_slice(b".\r\n");
    let mut t0 = start;
    for _ in 0..args.messages {
        let to = match args.domains {
            Some(n) if n > 0 => {
                let k = next_rcpt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (local, domain) = args.to.split_once('@').unwrap_or((&args.to, "example.net"));
                format!("{local}{k}@d{}.{domain}", k % n)
            }
            _ => args.to.clone(),
        };
        let envelope = format!("MAIL FROM:<{}>\r\nRCPT TO:<{}>\r\nDATA\r\n", args.from, to);
        let r: Result<()> = async {
            if args.pipelining {
                conn.send(envelope.as_bytes()).await?;
                conn.expect(2, "MAIL").await?;
                conn.expect(2, "RCPT").await?;
                conn.expect(3, "DATA").await?;
            } else {
                for (cmd, class, what) in [
                    (format!("MAIL FROM:<{}>\r\n", args.from), 2, "MAIL"),
                    (format!("RCPT TO:<{to}>\r\n"), 2, "RCPT"),
                    ("DATA\r\n".to_string(), 3, "DATA"),
                ] {
                    conn.send(cmd.as_bytes()).await?;
                    conn.expect(class, what).await?;
                }
            }
            conn.send(&data).await?;
            conn.expect(2, "end of DATA").await?;
            Ok(())
        }
        .await;
        if let Err(e) = r {
            return (latencies, Some(e.to_string()));
        }
        latencies.push(t0.elapsed());
        t0 = Instant::now();
    }
    let _ = conn.send(b"QUIT\r\n").await;
    let _ = conn.reply().await;
    (latencies, None)
}
