//! A minimal, fast SMTP sink that counts complete messages (like Postfix's
//! `smtp-sink`): the far end of an end-to-end measurement.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub struct Sink {
    count: Arc<AtomicUsize>,
    deferred: Arc<Mutex<HashSet<Vec<u8>>>>,
}

impl Sink {
    /// Listens on every address; with `defer_every = Some(n)`, every nth
    /// recipient (across all sessions) gets a 451.
    pub async fn start(addrs: &[SocketAddr], defer_every: Option<usize>) -> Result<Sink> {
        let count = Arc::new(AtomicUsize::new(0));
        let rcpts = Arc::new(AtomicUsize::new(0));
        let deferred = Arc::new(Mutex::new(HashSet::new()));
        for addr in addrs {
            let listener = TcpListener::bind(addr).await?;
            let (c, r, d) = (count.clone(), rcpts.clone(), deferred.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (c, r, d) = (c.clone(), r.clone(), d.clone());
                    tokio::spawn(async move {
                        let _ = session(stream, c, r, d, defer_every).await;
                    });
                }
            });
        }
        Ok(Sink { count, deferred })
    }

    /// Recipients answered 451 so far (each at most once).
    pub fn deferred(&self) -> usize {
        self.deferred.lock().map(|d| d.len()).unwrap_or(0)
    }

    /// Messages received, counted once per accepted recipient.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

async fn session(
    stream: TcpStream,
    count: Arc<AtomicUsize>,
    seen: Arc<AtomicUsize>,
    deferred: Arc<Mutex<HashSet<Vec<u8>>>>,
    defer_every: Option<usize>,
) -> Result<()> {
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 sink ESMTP\r\n").await?;
    let mut line = Vec::new();
    let mut rcpts = 0usize;
    let mut out = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line
            .get(..4)
            .map(|c| c.to_ascii_uppercase())
            .unwrap_or_default();
        match &cmd[..] {
            b"EHLO" => out.extend_from_slice(
                b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n",
            ),
            b"HELO" => out.extend_from_slice(b"250 sink\r\n"),
            b"MAIL" => {
                rcpts = 0;
                out.extend_from_slice(b"250 2.1.0 ok\r\n")
            }
            b"RCPT" => {
                // Every nth new recipient is deferred once; its retry is
                // accepted (a receiver greylisting part of the mail).
                let n = seen.fetch_add(1, Ordering::Relaxed) + 1;
                let defer = defer_every.is_some_and(|every| every > 0 && n.is_multiple_of(every))
                    && deferred
                        .lock()
                        .map(|mut d| d.insert(line.clone()))
                        .unwrap_or(false);
                if defer {
                    out.extend_from_slice(b"451 4.3.0 try again later\r\n")
                } else {
                    rcpts += 1;
                    out.extend_from_slice(b"250 2.1.5 ok\r\n")
                }
            }
            b"DATA" if rcpts == 0 => out.extend_from_slice(b"554 5.5.1 no valid recipients\r\n"),
            b"DATA" => {
                w.write_all(&out).await?;
                out.clear();
                w.write_all(b"354 go\r\n").await?;
                loop {
                    line.clear();
                    if r.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" {
                        break;
                    }
                }
                count.fetch_add(rcpts, Ordering::Relaxed);
                out.extend_from_slice(b"250 2.0.0 ok\r\n");
            }
            b"QUIT" => {
                out.extend_from_slice(b"221 bye\r\n");
                w.write_all(&out).await?;
                return Ok(());
            }
            _ => out.extend_from_slice(b"250 ok\r\n"),
        }
        // Pipelining: answer once the client has nothing more buffered.
        if r.buffer().is_empty() {
            w.write_all(&out).await?;
            out.clear();
        }
    }
}
