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

/// A message read from `path`, to be sent as it is (no dot-stuffing, no
/// line-end conversion: a DKIM signature over it must still verify at the
/// server). So it must already be what DATA carries (RFC 5321 §4.1.1.4):
/// CRLF line ends only, no line starting with a dot (the DATA path sends
/// bodies without stuffing, §4.5.2), and a final CRLF before the
/// terminating dot.
pub fn body_from_file(path: &std::path::Path) -> Result<Vec<u8>> {
    let body = std::fs::read(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    check_body(&body).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(body)
}

fn check_body(body: &[u8]) -> Result<()> {
    if body.is_empty() || !body.ends_with(b"\r\n") {
        bail!("the message must end with CRLF");
    }
    for (i, b) in body.iter().enumerate() {
        let after_cr = i > 0 && body[i - 1] == b'\r';
        if *b == b'\n' && !after_cr {
            bail!("bare LF at octet {i}: lines must end with CRLF");
        }
        if *b == b'\r' && body.get(i + 1) != Some(&b'\n') {
            bail!("bare CR at octet {i}: lines must end with CRLF");
        }
        let line_start = i == 0 || body[i - 1] == b'\n';
        if line_start && *b == b'.' {
            bail!("a line starts with a dot at octet {i} (it would need dot-stuffing)");
        }
    }
    Ok(())
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
        let io = self.io.get_mut();
        io.write_all(bytes).await?;
        // TLS: write_all can return with the last records still in the
        // session's buffer (the socket was full); without a flush the
        // server never sees them and both sides wait.
        io.flush().await?;
        Ok(())
    }

    async fn expect(&mut self, class: u16, what: &str) -> Result<String> {
        let (code, text) = self.reply().await?;
        if code / 100 == 4 && class != 4 {
            return Err(Pushback(format!("{what}: {}", text.trim_end())).into());
        }
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

/// A temporary refusal (4xx, or the server closing on us with 421): the
/// client backs off and sends the message again.
#[derive(Debug)]
pub struct Pushback(pub String);

impl std::fmt::Display for Pushback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pushed back: {}", self.0)
    }
}

impl std::error::Error for Pushback {}

/// How one client sends: BDAT or DATA, and to the submission listener
/// (with the TLS and AUTH of the arguments) or unauthenticated, in
/// plaintext, to the relay listener (`--relay-server`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Mode {
    pub bdat: bool,
    pub relay: bool,
}

impl Mode {
    /// The mode of client `i`: `--mix` gives the four combinations in
    /// turn, an equal share each when the client count is a multiple of 4.
    pub fn of(i: usize, args: &Args) -> Mode {
        if args.mix {
            Mode {
                bdat: i % 2 == 1,
                relay: (i / 2) % 2 == 1,
            }
        } else {
            Mode {
                bdat: args.bdat,
                relay: false,
            }
        }
    }

    pub fn name(self) -> &'static str {
        match (self.bdat, self.relay) {
            (false, false) => "data_auth",
            (true, false) => "bdat_auth",
            (false, true) => "data_relay",
            (true, true) => "bdat_relay",
        }
    }
}

/// Connects, greets, upgrades and authenticates as the arguments say.
pub async fn open(args: &Args, tls: &TlsConnector) -> Result<Conn> {
    open_mode(args, tls, Mode::default()).await.map(|(c, _)| c)
}

/// Like `open`, for a client of `mode`; also says whether the last EHLO
/// advertised CHUNKING.
pub async fn open_mode(args: &Args, tls: &TlsConnector, mode: Mode) -> Result<(Conn, bool)> {
    let server = match (mode.relay, args.relay_server) {
        (true, Some(s)) => s,
        (true, None) => bail!("--mix needs --relay-server"),
        (false, _) => args.server,
    };
    let (use_tls, starttls, auth) = if mode.relay {
        (false, false, false)
    } else {
        (args.tls, args.starttls, true)
    };
    let tcp = TcpStream::connect(server).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(server.ip().into());
    let stream: Box<dyn Io> = if use_tls {
        Box::new(tls.connect(name.clone(), tcp).await?)
    } else {
        Box::new(tcp)
    };
    let mut c = Conn {
        io: BufReader::new(stream),
    };
    c.expect(2, "greeting").await?;
    c.send(b"EHLO loadgen.test\r\n").await?;
    let mut ehlo = c.expect(2, "EHLO").await?;
    if starttls {
        c.send(b"STARTTLS\r\n").await?;
        c.expect(2, "STARTTLS").await?;
        let tcp = c.io.into_inner();
        let stream: Box<dyn Io> = Box::new(tls.connect(name, tcp).await?);
        c = Conn {
            io: BufReader::new(stream),
        };
        c.send(b"EHLO loadgen.test\r\n").await?;
        ehlo = c.expect(2, "EHLO").await?;
    }
    if auth {
        if let (Some(u), Some(p)) = (&args.user, &args.password) {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{u}\0{p}"));
            c.send(format!("AUTH PLAIN {token}\r\n").as_bytes()).await?;
            c.expect(2, "AUTH").await?;
        }
    }
    let chunking = ehlo.lines().any(|l| {
        l.get(4..)
            .is_some_and(|k| k.trim().eq_ignore_ascii_case("CHUNKING"))
    });
    Ok((c, chunking))
}

/// What one client did: latencies of accepted messages, 4xx pushbacks
/// (each followed by a backoff and a new attempt), and the error that ended
/// it early, if any.
#[derive(Default)]
pub struct ClientResult {
    pub latencies: Vec<Duration>,
    pub pushbacks: usize,
    pub error: Option<String>,
}

/// One connection's share of the load (`--messages` messages). With
/// `--retry-4xx`, a message refused with 4xx is sent again on a new
/// connection after a short backoff, until accepted or `deadline`.
pub async fn connection(
    i: usize,
    args: &Args,
    tls: Arc<TlsConnector>,
    body: &[u8],
    next_rcpt: &std::sync::atomic::AtomicUsize,
    deadline: Instant,
) -> ClientResult {
    let mode = Mode::of(i, args);
    let mut out = ClientResult {
        latencies: Vec::with_capacity(args.messages),
        ..Default::default()
    };
    let mut conn: Option<Conn> = None;
    let mut sent = 0usize;
    let mut t0 = Instant::now();
    let mut attempt = 0u32;
    while sent < args.messages {
        let to = match args.domains {
            _ if mode.relay => args.relay_to.clone().unwrap_or_else(|| args.to.clone()),
            Some(n) if n > 0 => {
                let k = next_rcpt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (local, domain) = args.to.split_once('@').unwrap_or((&args.to, "example.net"));
                format!("{local}{k}@d{}.{domain}", k % n)
            }
            _ => args.to.clone(),
        };
        let r: Result<()> = async {
            if conn.is_none() {
                let (c, chunking) = open_mode(args, &tls, mode).await?;
                if mode.bdat && !chunking {
                    bail!("the server does not advertise CHUNKING (BDAT)");
                }
                conn = Some(c);
            }
            let c = conn.as_mut().expect("connected above");
            send_message(c, args, mode, &to, body).await
        }
        .await;
        match r {
            Ok(()) => {
                out.latencies.push(t0.elapsed());
                t0 = Instant::now();
                sent += 1;
                attempt = 0;
            }
            Err(e) if args.retry_4xx && is_pushback(&e) => {
                out.pushbacks += 1;
                attempt += 1;
                // A refused transaction leaves the session in a state the
                // client need not reason about: start again on a new
                // connection, as an MTA would retry a deferred message.
                if let Some(mut c) = conn.take() {
                    let _ = c.send(b"QUIT\r\n").await;
                }
                let Some(backoff) = retry_backoff(attempt, i, deadline) else {
                    out.error = Some(format!("gave up after {} pushbacks: {e}", out.pushbacks));
                    return out;
                };
                tokio::time::sleep(backoff).await;
            }
            Err(e) => {
                out.error = Some(e.to_string());
                return out;
            }
        }
    }
    if let Some(mut c) = conn {
        let _ = c.send(b"QUIT\r\n").await;
        let _ = c.reply().await;
    }
    out
}

fn is_pushback(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Pushback>().is_some()
}

/// One transaction: MAIL, RCPT, then the body by DATA or in BDAT chunks.
async fn send_message(c: &mut Conn, args: &Args, mode: Mode, to: &str, body: &[u8]) -> Result<()> {
    let mail = if args.size_param {
        format!("MAIL FROM:<{}> SIZE={}\r\n", args.from, body.len())
    } else {
        format!("MAIL FROM:<{}>\r\n", args.from)
    };
    let rcpt = format!("RCPT TO:<{to}>\r\n");
    if mode.bdat {
        c.send(mail.as_bytes()).await?;
        c.expect(2, "MAIL").await?;
        c.send(rcpt.as_bytes()).await?;
        c.expect(2, "RCPT").await?;
        let chunk = args.bdat_chunk.max(1);
        let mut rest = body;
        loop {
            let n = rest.len().min(chunk);
            let last = n == rest.len();
            let cmd = if last {
                format!("BDAT {n} LAST\r\n")
            } else {
                format!("BDAT {n}\r\n")
            };
            c.send(cmd.as_bytes()).await?;
            c.send(&rest[..n]).await?;
            // RFC 3030: after a 4xx or 5xx to a chunk the client sends no
            // more chunks of this message.
            c.expect(2, "BDAT").await?;
            rest = &rest[n..];
            if last {
                return Ok(());
            }
        }
    }
    if args.pipelining {
        c.send(format!("{mail}{rcpt}DATA\r\n").as_bytes()).await?;
        c.expect(2, "MAIL").await?;
        c.expect(2, "RCPT").await?;
        c.expect(3, "DATA").await?;
    } else {
        for (cmd, class, what) in [
            (mail.as_str(), 2, "MAIL"),
            (rcpt.as_str(), 2, "RCPT"),
            ("DATA\r\n", 3, "DATA"),
        ] {
            c.send(cmd.as_bytes()).await?;
            c.expect(class, what).await?;
        }
    }
    // The body is shared by every client (no copy per connection); it has
    // no line starting with a dot, so it goes as it is.
    c.send(body).await?;
    c.send(b".\r\n").await?;
    c.expect(2, "end of DATA").await?;
    Ok(())
}

/// How long client `i` waits before its `attempt`-th retry after a
/// pushback (growing, spread across clients), or None past `deadline`.
pub(crate) fn retry_backoff(attempt: u32, i: usize, deadline: Instant) -> Option<Duration> {
    let backoff = Duration::from_millis((100 * u64::from(attempt.min(10))) + (i as u64 * 37) % 100);
    (Instant::now() + backoff <= deadline).then_some(backoff)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn mix_gives_each_combination_a_quarter() {
        let args = Args::parse_from(["loadgen", "--server", "127.0.0.1:25", "--mix"]);
        let mut counts = std::collections::HashMap::new();
        for i in 0..200 {
            *counts.entry(Mode::of(i, &args).name()).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 4);
        assert!(counts.values().all(|&n| n == 50), "{counts:?}");
        let plain = Args::parse_from(["loadgen", "--server", "127.0.0.1:25", "--bdat"]);
        assert!(Mode::of(1, &plain).bdat && !Mode::of(1, &plain).relay);
    }

    #[test]
    fn a_body_file_is_taken_only_as_data_carries_it() {
        let ok = b"From: a@b.test\r\n\r\nbody. with a dot\r\n";
        assert!(check_body(ok).is_ok());
        for (bad, why) in [
            (&b"From: a@b.test\r\n\r\n.starts with a dot\r\n"[..], "dot"),
            (&b".\r\n"[..], "dot"),
            (&b"From: a@b.test\n\r\nbody\r\n"[..], "bare LF"),
            (&b"From: a@b.test\r\n\r\nbo\rdy\r\n"[..], "bare CR"),
            (
                &b"From: a@b.test\r\n\r\nno final line end"[..],
                "end with CRLF",
            ),
            (&b""[..], "end with CRLF"),
        ] {
            let e = check_body(bad).expect_err(why).to_string();
            assert!(e.contains(why), "{e} (wanted {why})");
        }
    }

    #[test]
    fn body_from_file_reads_the_bytes_unchanged() {
        let dir = std::env::temp_dir().join(format!("loadgen-body-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.eml");
        let msg = b"DKIM-Signature: v=1; a=rsa-sha256;\r\n b=abc\r\nFrom: a@b.test\r\n\r\nhi\r\n";
        std::fs::write(&path, msg).unwrap();
        assert_eq!(body_from_file(&path).unwrap(), msg);
        // Ends with CRLF, so the bare LFs inside are what is refused.
        std::fs::write(&path, b"From: a@b.test\n\nhi\r\n").unwrap();
        assert!(body_from_file(&path)
            .unwrap_err()
            .to_string()
            .contains("bare LF"));
        assert!(body_from_file(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn message_body_has_the_size_and_no_dot_lines() {
        let body = message_body(20 * 1024 * 1024);
        assert_eq!(body.len(), 20 * 1024 * 1024);
        assert!(body.ends_with(b"\r\n"));
        assert!(!body.windows(3).any(|w| w == b"\n.\r" || w == b"\n.."));
    }
}
