//! An in-process Postern SMTP server on loopback, with a real store, and a
//! raw client for byte-level tests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use postern_accounts::Authenticator;
use postern_core::config::ListenerRole;
use postern_core::Config;
use postern_queue::Intake;
use postern_smtp::{serve_listener, ConnectionLimiter, ListenerContext, SmtpContext};
use postern_store::{EmbeddedStore, QueueStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Server {
    pub submission: SocketAddr,
    pub submissions: SocketAddr,
    pub mx: SocketAddr,
    pub store: Arc<EmbeddedStore>,
    pub api_key: String,
    /// A key of a second tenant, "tenant2".
    pub other_key: String,
    pub cert: CertificateDer<'static>,
    pub shutdown: watch::Sender<bool>,
    /// The body memory budget the sessions lease from (to watch it).
    pub budget: postern_queue::BodyBudget,
    /// What the listeners' sessions share, to run a session over a stream
    /// of a test's own.
    pub ctx: Arc<SmtpContext>,
    _dir: tempfile::TempDir,
}

/// Polls `condition` every 10 ms until it holds; panics naming `what`
/// after 10 s.
pub async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn start(mut config: Config) -> Server {
    let dir = tempfile::tempdir().unwrap();
    config.relay.domains = vec!["relay.example".into()];
    config.server.hostname = "mx.test".into();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let authenticator = Authenticator::new(store.clone(), &config.auth)
        .await
        .unwrap();
    let issued = authenticator
        .api_keys()
        .create(store.as_ref(), "admin", "test", vec![], None)
        .await
        .unwrap();
    postern_store::AccountStore::create_account(
        store.as_ref(),
        postern_store::AccountRecord::new("tenant2", None, postern_core::time::now_millis()),
    )
    .await
    .unwrap();
    let other = authenticator
        .api_keys()
        .create(store.as_ref(), "tenant2", "test", vec![], None)
        .await
        .unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let tls = postern_smtp::tls::server_config_from_der(vec![cert.clone()], key).unwrap();
    let limiter = ConnectionLimiter::new(
        config.limits.max_connections,
        config.limits.max_connections_per_ip,
    );
    let config = Arc::new(config);
    let budget = postern_queue::BodyBudget::new(
        config.limits.body_memory_budget,
        config.limits.body_memory_share(),
    );
    let ctx = Arc::new(SmtpContext {
        relay_domains: config.relay_domains().into_iter().collect(),
        intake: Intake::new(store.clone(), config.server.hostname.clone())
            .with_body_budget(budget.clone())
            .with_quotas(postern_queue::Quotas::new(store.clone())),
        authenticator,
        limiter,
        recipients: match config.relay.recipient_check {
            postern_core::config::RecipientCheck::List => Arc::new(
                postern_smtp::ListedRecipients::new(&config.relay.recipients),
            ),
            // No next hop in these tests to ask.
            _ => Arc::new(postern_smtp::AnyRecipient),
        },
        config: config.clone(),
    });
    let (tx, rx) = watch::channel(false);
    let mut addrs = Vec::new();
    for role in [
        ListenerRole::Submission,
        ListenerRole::Submissions,
        ListenerRole::Mx,
    ] {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = l.local_addr().unwrap();
        addrs.push(address);
        let lctx = Arc::new(ListenerContext {
            role,
            address,
            tls: Some(tokio_rustls::TlsAcceptor::from(tls.clone())),
            allow_plaintext_auth: false,
            auth_mechanisms: postern_smtp::mechanism_bits(&["PLAIN".into(), "LOGIN".into()]),
            screen: None,
        });
        tokio::spawn(serve_listener(l, lctx, ctx.clone(), rx.clone()));
    }
    Server {
        submission: addrs[0],
        submissions: addrs[1],
        mx: addrs[2],
        store,
        api_key: issued.secret,
        other_key: other.secret,
        cert,
        shutdown: tx,
        budget,
        ctx,
        _dir: dir,
    }
}

impl Server {
    pub async fn queued(&self) -> u64 {
        self.store.queue_summary().await.unwrap().messages
    }

    pub async fn bodies(&self) -> Vec<Vec<u8>> {
        self.store
            .claim_due(i64::MAX / 4, 10_000, 1)
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.body.to_vec())
            .collect()
    }

    pub fn tls_connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    pub fn plain_auth(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("\0apikey\0{}", self.api_key))
    }
}

/// How long a server that must close a connection may take to do it. Long
/// enough for a loaded two-core machine; a server that keeps the socket
/// open waits for the client's next command for minutes
/// (`limits.command_timeout`), so it cannot close within this by accident.
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(10);

/// A raw client: writes bytes, reads replies.
pub struct Client<S> {
    pub stream: S,
    buf: Vec<u8>,
}

pub async fn connect(addr: SocketAddr) -> Client<TcpStream> {
    Client {
        stream: TcpStream::connect(addr).await.unwrap(),
        buf: Vec::new(),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(stream: S) -> Self {
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads one complete (possibly multi-line) reply; None at EOF.
    pub async fn reply(&mut self) -> Option<String> {
        loop {
            if let Some(end) = complete_reply(&self.buf) {
                let r: Vec<u8> = self.buf.drain(..end).collect();
                return Some(String::from_utf8_lossy(&r).into_owned());
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(20), self.stream.read(&mut chunk))
                .await
                .expect("reply timed out")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a command and returns its reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await.unwrap_or_default()
    }

    /// Everything the server sends until it closes the connection. Used
    /// where a rule says the server closes (after 221 to QUIT, RFC 5321
    /// §4.1.1.10; after a 421, §3.8; after refusing a smuggled message): a
    /// connection still open [`CLOSE_DEADLINE`] after the last byte fails
    /// the test, so a server that forgets to close cannot pass by matching
    /// the replies alone.
    pub async fn rest(&mut self) -> String {
        let mut all = std::mem::take(&mut self.buf);
        let read = tokio::time::timeout(CLOSE_DEADLINE, self.stream.read_to_end(&mut all)).await;
        let got = String::from_utf8_lossy(&all).into_owned();
        match read {
            Ok(Ok(_)) => {}
            // Closing with client input still unread makes the kernel send
            // RST instead of FIN (RFC 9293 §3.6.1's "abort"); over TLS a
            // close without close_notify reads as UnexpectedEof. Both are
            // the server closing the connection.
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::UnexpectedEof
                ) => {}
            Ok(Err(e)) => panic!("reading until the server closes: {e}; got {got:?}"),
            Err(_) => panic!(
                "the server left the connection open for {CLOSE_DEADLINE:?} after sending {got:?}"
            ),
        }
        got
    }

    pub fn into_inner(self) -> (S, Vec<u8>) {
        (self.stream, self.buf)
    }
}

/// Length of the first complete reply in `buf`: lines until one whose fourth
/// character is a space.
fn complete_reply(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(lf) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + lf + 1];
        start += lf + 1;
        if line.len() < 4 || line[3] == b' ' {
            return Some(start);
        }
    }
    None
}

pub async fn starttls(
    server: &Server,
    mut client: Client<TcpStream>,
) -> Client<tokio_rustls::client::TlsStream<TcpStream>> {
    let r = client.cmd("STARTTLS").await;
    assert!(r.starts_with("220 "), "{r}");
    let (stream, leftover) = client.into_inner();
    assert!(leftover.is_empty());
    let tls = server
        .tls_connector()
        .connect(ServerName::try_from("localhost").unwrap(), stream)
        .await
        .unwrap();
    Client::new(tls)
}
