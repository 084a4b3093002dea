//! Virus scanning through ClamAV's daemon, clamd, with its INSTREAM
//! command (clamd(8)): `zINSTREAM\0`, then the message in chunks each
//! preceded by its length (4 octets, network order), then a chunk of
//! length zero; clamd answers `stream: OK`, `stream: <name> FOUND` or
//! `<text> ERROR`, NUL-terminated (the `z` prefix asks for that).
//!
//! The protocol side is the `clamav-client` crate (TCP and unix sockets,
//! tokio); what its answer means, the time limit and the size limit are
//! here. Its reply is read to the end without a bound: clamd is the
//! operator's own daemon, and the time limit ends a reply that never
//! stops.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use postern_core::config::{ClamdConfig, ContentConfig};

use crate::{Check, Finding, Inspected};

/// Octets per INSTREAM chunk: clamd reads each chunk whole before the
/// next (and refuses one above its StreamMaxLength), so a modest size.
const CHUNK_SIZE: usize = 64 * 1024;

/// The longest virus name or error text repeated to the client and kept.
const MAX_TEXT: usize = 120;

/// Where clamd listens.
#[derive(Debug, Clone)]
enum Target {
    Tcp(String),
    Unix(PathBuf),
}

/// What clamd said about the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    Clean,
    /// The signature's name, as clamd gave it (made printable).
    Found(String),
}

/// Why a scan has no answer.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("{size} octets is above content.clamd.max_size ({max}), not scanned")]
    TooBig { size: usize, max: usize },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// clamd's own error reply (`INSTREAM size limit exceeded. ERROR`).
    #[error("clamd refused the scan: {0}")]
    Refused(String),
    #[error("not a clamd answer: {0:?}")]
    Unexpected(String),
}

/// A clamd to scan with.
#[derive(Debug, Clone)]
pub struct Clamd {
    target: Target,
    timeout: Duration,
    max_size: usize,
    chunk_size: usize,
}

impl Clamd {
    pub fn new(config: &ClamdConfig) -> Clamd {
        // The configuration checks the address is a path or host:port.
        let target = if config.address.starts_with('/') {
            Target::Unix(PathBuf::from(&config.address))
        } else {
            Target::Tcp(config.address.clone())
        };
        Clamd {
            target,
            timeout: config.timeout,
            max_size: config.max_size,
            chunk_size: CHUNK_SIZE,
        }
    }

    #[cfg(test)]
    fn with_chunk_size(mut self, chunk_size: usize) -> Clamd {
        self.chunk_size = chunk_size;
        self
    }

    /// Scans `data` (the whole message: clamd takes MIME apart itself).
    pub async fn scan(&self, data: &[u8]) -> Result<Scan, ScanError> {
        // Not sent at all rather than cut: clamd would refuse the stream
        // past its StreamMaxLength, and a scan of the first part only
        // would call the rest clean.
        if data.len() > self.max_size {
            return Err(ScanError::TooBig {
                size: data.len(),
                max: self.max_size,
            });
        }
        let chunk = Some(self.chunk_size);
        let scan = async {
            match &self.target {
                Target::Tcp(address) => {
                    let tcp = clamav_client::tokio::Tcp {
                        host_address: address.as_str(),
                    };
                    clamav_client::tokio::scan_buffer(data, tcp, chunk).await
                }
                Target::Unix(path) => {
                    let socket = clamav_client::tokio::Socket {
                        socket_path: path.as_path(),
                    };
                    clamav_client::tokio::scan_buffer(data, socket, chunk).await
                }
            }
        };
        let reply = tokio::time::timeout(self.timeout, scan)
            .await
            .map_err(|_| ScanError::Timeout(self.timeout))??;
        parse_reply(&reply)
    }
}

/// Control characters out (the text goes into an SMTP reply and the send
/// log), and at most `MAX_TEXT` characters.
fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(MAX_TEXT)
        .collect();
    if text.chars().count() > MAX_TEXT {
        out.push('…');
    }
    out
}

fn parse_reply(reply: &[u8]) -> Result<Scan, ScanError> {
    let text = String::from_utf8_lossy(reply);
    let text = text.trim_end_matches(['\0', '\r', '\n']);
    if text == "stream: OK" {
        return Ok(Scan::Clean);
    }
    if let Some(name) = text
        .strip_prefix("stream: ")
        .and_then(|rest| rest.strip_suffix(" FOUND"))
        .filter(|name| !name.is_empty())
    {
        return Ok(Scan::Found(printable(name)));
    }
    if text.ends_with(" ERROR") {
        return Err(ScanError::Refused(printable(text)));
    }
    Err(ScanError::Unexpected(printable(text)))
}

/// The virus check: the message through clamd.
pub struct VirusCheck {
    clamd: Clamd,
    config: ContentConfig,
}

impl VirusCheck {
    pub fn new(clamd: &ClamdConfig, config: &ContentConfig) -> VirusCheck {
        VirusCheck {
            clamd: Clamd::new(clamd),
            config: config.clone(),
        }
    }
}

impl Check for VirusCheck {
    fn name(&self) -> &'static str {
        "virus"
    }

    fn run<'a>(
        &'a self,
        message: &'a Inspected<'a>,
    ) -> Pin<Box<dyn Future<Output = Finding> + Send + 'a>> {
        Box::pin(async move {
            match self.clamd.scan(message.raw).await {
                Ok(Scan::Clean) => Finding::clean(),
                Ok(Scan::Found(name)) => {
                    metrics::counter!("postern_content_viruses_total").increment(1);
                    let action =
                        self.config
                            .action(message.domains(), |p| p.virus, self.config.virus);
                    tracing::info!(peer = %message.client.ip, virus = %name, ?action, "clamd found a virus");
                    Finding::Found {
                        action,
                        reason: format!("virus found: {name}"),
                        headers: Vec::new(),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "virus scan failed");
                    Finding::Failed {
                        reason: format!("clamd: {e}"),
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What the fake clamd read: the command and each chunk's length.
    type Seen = Arc<Mutex<Vec<(Vec<u8>, Vec<usize>, Vec<u8>)>>>;

    /// Reads one INSTREAM request as clamd does, then answers `reply`
    /// (None: never answers, holding the connection open).
    async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        mut s: S,
        reply: Option<&'static [u8]>,
        seen: Seen,
    ) {
        let mut command = vec![0u8; 10];
        if s.read_exact(&mut command).await.is_err() {
            return;
        }
        let (mut lengths, mut data) = (Vec::new(), Vec::new());
        loop {
            let mut len = [0u8; 4];
            if s.read_exact(&mut len).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes(len) as usize;
            lengths.push(len);
            if len == 0 {
                break;
            }
            let mut chunk = vec![0u8; len];
            if s.read_exact(&mut chunk).await.is_err() {
                return;
            }
            data.extend_from_slice(&chunk);
        }
        seen.lock().unwrap().push((command, lengths, data));
        match reply {
            Some(r) => {
                let _ = s.write_all(r).await;
            }
            // Holds the connection (and so the client) until the test ends.
            None => std::future::pending::<()>().await,
        }
    }

    /// A fake clamd on a loopback TCP port answering every request with
    /// `reply`.
    async fn fake_tcp(reply: Option<&'static [u8]>) -> (String, Seen) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let seen: Seen = Arc::default();
        let s2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((c, _)) = listener.accept().await {
                tokio::spawn(serve(c, reply, s2.clone()));
            }
        });
        (address, seen)
    }

    fn config(address: &str, timeout: Duration, max_size: usize) -> ClamdConfig {
        ClamdConfig {
            address: address.into(),
            timeout,
            max_size,
        }
    }

    #[tokio::test]
    async fn the_message_goes_in_length_prefixed_chunks_ended_by_an_empty_one() {
        let (address, seen) = fake_tcp(Some(b"stream: OK\0")).await;
        let clamd =
            Clamd::new(&config(&address, Duration::from_secs(5), 10_000)).with_chunk_size(1000);
        let message: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(clamd.scan(&message).await.unwrap(), Scan::Clean);
        let seen = seen.lock().unwrap();
        let (command, lengths, data) = &seen[0];
        assert_eq!(command, b"zINSTREAM\0");
        assert_eq!(lengths, &[1000, 1000, 500, 0]);
        assert_eq!(data, &message, "the chunks put together are the message");
    }

    #[tokio::test]
    async fn the_three_kinds_of_reply() {
        let (address, _) = fake_tcp(Some(b"stream: Eicar-Signature.UNOFFICIAL FOUND\0")).await;
        let clamd = Clamd::new(&config(&address, Duration::from_secs(5), 1000));
        assert_eq!(
            clamd.scan(b"X5O!P%@AP").await.unwrap(),
            Scan::Found("Eicar-Signature.UNOFFICIAL".into())
        );

        let (address, _) = fake_tcp(Some(b"INSTREAM size limit exceeded. ERROR\0")).await;
        let clamd = Clamd::new(&config(&address, Duration::from_secs(5), 1000));
        let e = clamd.scan(b"data").await.unwrap_err();
        assert!(
            matches!(&e, ScanError::Refused(t) if t == "INSTREAM size limit exceeded. ERROR"),
            "{e:?}"
        );

        // Anything else is not taken for clean: a name with a line break
        // in it is made printable, an empty reply is no answer.
        assert!(matches!(
            parse_reply(b"stream: Bad\r\nName FOUND\0"),
            Ok(Scan::Found(n)) if n == "Bad??Name"
        ));
        assert!(matches!(
            parse_reply(b""),
            Err(ScanError::Unexpected(t)) if t.is_empty()
        ));
        assert!(matches!(
            parse_reply(b"stream: OKAY\0"),
            Err(ScanError::Unexpected(_))
        ));
        assert!(matches!(
            parse_reply(b"stream:  FOUND\0"),
            Err(ScanError::Unexpected(_))
        ));
    }

    #[tokio::test]
    async fn a_stalled_clamd_is_given_up_after_the_time_limit() {
        let (address, seen) = fake_tcp(None).await;
        let limit = Duration::from_millis(400);
        let clamd = Clamd::new(&config(&address, limit, 1000));
        let start = Instant::now();
        let e = clamd.scan(b"hello").await.unwrap_err();
        let took = start.elapsed();
        assert!(matches!(e, ScanError::Timeout(_)), "{e:?}");
        assert!(took >= limit, "gave up early: {took:?}");
        assert!(took < limit + Duration::from_secs(2), "too late: {took:?}");
        assert_eq!(seen.lock().unwrap().len(), 1, "the request was sent whole");
    }

    #[tokio::test]
    async fn too_big_is_not_sent_and_a_closed_port_is_an_error() {
        let (address, seen) = fake_tcp(Some(b"stream: OK\0")).await;
        let clamd = Clamd::new(&config(&address, Duration::from_secs(5), 10));
        let e = clamd.scan(&[b'a'; 11]).await.unwrap_err();
        assert!(
            matches!(e, ScanError::TooBig { size: 11, max: 10 }),
            "{e:?}"
        );
        assert_eq!(clamd.scan(&[b'a'; 10]).await.unwrap(), Scan::Clean);
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "only the one within the limit"
        );

        // A port nothing listens on (bound, then closed).
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = closed.local_addr().unwrap().to_string();
        drop(closed);
        let clamd = Clamd::new(&config(&address, Duration::from_secs(5), 10));
        assert!(matches!(
            clamd.scan(b"x").await.unwrap_err(),
            ScanError::Io(_)
        ));
    }

    #[tokio::test]
    async fn a_unix_socket_path_is_used_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clamd.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let seen: Seen = Arc::default();
        let s2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((c, _)) = listener.accept().await {
                tokio::spawn(serve(c, Some(b"stream: Test.Sig FOUND\0"), s2.clone()));
            }
        });
        let clamd = Clamd::new(&config(
            path.to_str().unwrap(),
            Duration::from_secs(5),
            1000,
        ));
        assert_eq!(
            clamd.scan(b"payload").await.unwrap(),
            Scan::Found("Test.Sig".into())
        );
        assert_eq!(seen.lock().unwrap()[0].2, b"payload");
    }
}
