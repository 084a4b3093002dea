//! Large `/v3/mail/send` requests (SendGrid's v3 API, as Postern serves
//! it): each client POSTs one JSON body with a base64 attachment, shared by
//! every client, and retries after a short backoff when the server pushes
//! back (503, or 429).

use crate::smtp::retry_backoff;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::smtp::{ClientResult, Pushback};
use crate::Args;

/// The request body: one recipient, a short text part and an attachment
/// of `attachment` bytes (not very compressible, base64 in the JSON).
pub fn request_body(args: &Args, attachment: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(attachment);
    let mut x: u32 = 0x2545_f491;
    while bytes.len() < attachment {
        // xorshift32: cheap bytes that do not compress to nothing.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes.truncate(attachment);
    let content = base64::engine::general_purpose::STANDARD.encode(&bytes);
    drop(bytes);
    serde_json::to_vec(&serde_json::json!({
        "personalizations": [{"to": [{"email": args.to}]}],
        "from": {"email": args.from},
        "subject": "large attachment",
        "content": [{"type": "text/plain", "value": "see the attachment"}],
        "attachments": [{"content": content, "filename": "large.bin", "type": "application/octet-stream"}],
    }))
    .expect("a JSON value serializes")
}

/// One client: `--messages` requests, one after the other, each on its own
/// connection. 503 and 429 count as pushbacks and are retried after a
/// backoff until `deadline`.
pub async fn client(
    i: usize,
    args: &Args,
    addr: SocketAddr,
    body: &[u8],
    deadline: Instant,
) -> ClientResult {
    let mut out = ClientResult::default();
    let mut t0 = Instant::now();
    let mut attempt = 0u32;
    while out.latencies.len() < args.messages {
        match post(args, addr, body).await {
            Ok(()) => {
                out.latencies.push(t0.elapsed());
                t0 = Instant::now();
                attempt = 0;
            }
            Err(e) if args.retry_4xx && e.downcast_ref::<Pushback>().is_some() => {
                out.pushbacks += 1;
                attempt += 1;
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
    out
}

/// One POST with `Expect: 100-continue` (as curl sends for large bodies):
/// the body goes only once the server asks for it, so a request the server
/// refuses up front (503 on the declared length) costs no upload.
async fn post(args: &Args, addr: SocketAddr, body: &[u8]) -> Result<()> {
    let key = args
        .password
        .as_deref()
        .ok_or_else(|| anyhow!("--api needs --password (the API key)"))?;
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut io = BufReader::new(tcp);
    let head = format!(
        "POST /v3/mail/send HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    io.get_mut().write_all(head.as_bytes()).await?;
    // Servers that ignore Expect get the body after a second, as curl does.
    let status = match tokio::time::timeout(Duration::from_secs(1), read_status(&mut io)).await {
        Ok(s) => Some(s?),
        Err(_) => None,
    };
    let status = match status {
        Some(100) | None => {
            io.get_mut().write_all(body).await?;
            loop {
                let s =
                    tokio::time::timeout(Duration::from_secs(120), read_status(&mut io)).await??;
                if s != 100 {
                    break s;
                }
            }
        }
        Some(s) => s,
    };
    match status {
        200..=299 => Ok(()),
        503 | 429 => Err(Pushback(format!("HTTP {status}")).into()),
        s => bail!("HTTP {s}"),
    }
}

/// Reads one response's status line and headers (not its body).
async fn read_status(io: &mut BufReader<TcpStream>) -> Result<u16> {
    let mut line = String::new();
    if io.read_line(&mut line).await? == 0 {
        bail!("connection closed");
    }
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {line:?}"))?;
    loop {
        let mut h = String::new();
        if io.read_line(&mut h).await? == 0 || h == "\r\n" || h == "\n" {
            return Ok(code);
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn request_body_carries_the_attachment_in_base64() {
        let args = Args::parse_from(["loadgen", "--server", "127.0.0.1:25"]);
        let body = request_body(&args, 1000);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let content = v["attachments"][0]["content"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(content)
            .unwrap();
        assert_eq!(bytes.len(), 1000);
        assert_eq!(
            v["personalizations"][0]["to"][0]["email"],
            "rcpt@example.net"
        );
    }
}
