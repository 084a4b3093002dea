//! The per-input function of the `session` cargo-fuzz target (`fuzz/`),
//! here so that the corpus replay test (`tests/fuzz_corpus.rs`) runs the
//! very same code on stable: a finding, once in `fuzz/corpus/session/`,
//! stays fixed without a nightly toolchain. Not an API.
//!
//! One input is one client connection: the first byte picks the session's
//! starting state, the second the size of the in-memory pipe (so the
//! session's reads are cut at arbitrary points), and the rest is what the
//! client sends. A session runs on a `tokio::io::duplex` stream against a
//! real embedded store (in `/dev/shm` when there is one) with an intake and
//! an authenticator, exactly as the listener builds it, with one exception:
//! TLS is never negotiated. The "as if TLS" states start the session with a
//! TLS description, as the listener does after a handshake, and a STARTTLS
//! that the session accepts is followed by a fresh session on the same
//! stream (no greeting), as after a successful handshake. Real handshakes
//! would spend the fuzzer's time in rustls, which has fuzzers of its own.
//!
//! First byte (`b`), bits:
//!
//! | `b & 7` | listener   | starting state                                  |
//! |---------|------------|-------------------------------------------------|
//! | 0       | mx         | plaintext                                       |
//! | 1       | mx         | as if after STARTTLS                            |
//! | 2       | submission | plaintext (AUTH refused until TLS)              |
//! | 3       | submission | as if after STARTTLS                            |
//! | 4       | submission | as if after STARTTLS, authenticated             |
//! | 5       | submissions| implicit TLS (RFC 8314)                         |
//! | 6       | submission | plaintext, `allow_plaintext_auth` (dev override)|
//! | 7       | submission | plaintext, dev override, authenticated          |
//!
//! `b & 8`: `smtp.bare_line_endings = "normalize"` (else `reject`).
//! `b & 16`: the listener has no TLS certificate (no STARTTLS offered).
//! So `@`, `A`..`G` are states 0..7 with TLS configured and `reject`.
//!
//! Second byte: the pipe's capacity in bytes, 1..=255 (0: 64 KiB).
//!
//! The runtime's clock is paused (tokio test-util): sleeps and timeouts
//! complete as soon as nothing else can run, so the session's deliberate
//! slow-downs (refused recipients, failed AUTH) cost no real time.
//!
//! Checked for every input: no panic; the session ends by itself once the
//! client has sent everything and closed, never by its own read timeout
//! (which, on the paused clock, is what a session waiting for something that
//! will not come runs into); every reply line is
//! `NNN<SP or ->text<CRLF>` (nothing the client sent can split a reply);
//! no `334` or `235` before TLS on a listener without the dev override, and
//! never on mx (AUTH is for submission listeners only).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use postern_accounts::Authenticator;
use postern_core::config::{BareLineEndings, ListenerRole};
use postern_core::principal::SCOPE_MAIL_SEND;
use postern_core::{Config, Principal};
use postern_queue::{Intake, Quotas};
use postern_store::{AccountRecord, AccountStore, ApiKeyRecord, CredentialStore, EmbeddedStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;

use crate::listener::{ListenerContext, SmtpContext};
use crate::session::{Session, SessionEnd};
use crate::ConnectionLimiter;

/// The API key the fuzz store knows (account `fuzz`), so seeds can reach a
/// successful `AUTH PLAIN`: `AHB...` below is `\0apikey\0<key>` in base64.
pub const FUZZ_API_KEY: &str = "pst_fuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuz";
/// A subuser of `fuzz`, for authzid (RFC 4616) exchanges.
pub const FUZZ_SUBUSER: &str = "fuzz-sub";

/// Server output kept for the reply checks; more is read and dropped, so a
/// session that answers without end cannot grow the harness.
const OUTPUT_KEPT: usize = 1 << 20;
/// Small enough that DATA and BDAT reach the size limit within an input.
const MAX_MESSAGE_SIZE: usize = 32 * 1024;
const TLS_DESCRIPTION: &str = "TLSv1.3 TLS13_AES_256_GCM_SHA384 (fuzz: no handshake)";
const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 40_000);

/// Runs one input through a session on the process-wide harness (built on
/// first use; its store directory lives as long as the process).
pub fn session(data: &[u8]) {
    static HARNESS: OnceLock<SessionHarness> = OnceLock::new();
    HARNESS.get_or_init(SessionHarness::new).run(data);
}

/// What every input's session shares: a runtime, a store with the `fuzz`
/// account and key, and the contexts the listener would build.
pub struct SessionHarness {
    runtime: tokio::runtime::Runtime,
    store: Arc<EmbeddedStore>,
    /// Indexed by `bare_line_endings`: reject, normalize.
    contexts: [Arc<SmtpContext>; 2],
    /// Indexed by listener role and whether TLS is configured.
    listeners: Vec<Arc<ListenerContext>>,
    dir: PathBuf,
}

#[derive(Clone, Copy)]
struct Mode {
    role: ListenerRole,
    tls_up: bool,
    authenticated: bool,
    plaintext_auth: bool,
    normalize: bool,
    tls_configured: bool,
}

impl Mode {
    fn from_byte(b: u8) -> Mode {
        use ListenerRole::{Mx, Submission, Submissions};
        let (role, tls_up, authenticated, plaintext_auth) = match b & 7 {
            0 => (Mx, false, false, false),
            1 => (Mx, true, false, false),
            2 => (Submission, false, false, false),
            3 => (Submission, true, false, false),
            4 => (Submission, true, true, false),
            5 => (Submissions, true, false, false),
            6 => (Submission, false, false, true),
            _ => (Submission, false, true, true),
        };
        Mode {
            role,
            tls_up,
            authenticated,
            plaintext_auth,
            normalize: b & 8 != 0,
            // Implicit TLS implies a certificate.
            tls_configured: b & 16 == 0 || role == Submissions,
        }
    }

    fn listener_index(self) -> usize {
        let role = match self.role {
            ListenerRole::Mx => 0,
            ListenerRole::Submission if self.plaintext_auth => 2,
            ListenerRole::Submission => 1,
            ListenerRole::Submissions => 3,
        };
        role * 2 + usize::from(self.tls_configured)
    }
}

impl Default for SessionHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionHarness {
    /// Builds the store and contexts. Panics if the machine cannot give it
    /// a runtime or a store directory: that is the harness failing, not an
    /// input.
    pub fn new() -> Self {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            // The store fsyncs every accepted message; in memory that is cheap.
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "postern-fuzz-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // No deadline is put on an input with this clock: it jumps ahead
            // whenever the runtime waits on the store's writer thread. A
            // session that never ends is caught by its own timeouts (see
            // `check_replies`) or by libFuzzer's -timeout.
            .start_paused(true)
            .build()
            .expect("fuzz harness: tokio runtime");
        let store = Arc::new(EmbeddedStore::open(&dir).expect("fuzz harness: store"));

        let mut config = Config::default();
        config.server.hostname = "mx.test".into();
        config.relay.domains = vec!["relay.example".into()];
        config.limits.max_message_size = MAX_MESSAGE_SIZE;
        // The brute-force defence is shared by every input here; left at
        // its defaults it would block the fuzz peer after a few inputs and
        // make every later AUTH end the same way (and sleep between).
        config.auth.delay_after_failures = u32::MAX;
        config.auth.max_delay = Duration::ZERO;
        config.auth.block_ip_after_failures = u32::MAX;
        config.auth.block_network_after_failures = u32::MAX;
        config.auth.spraying_accounts = u32::MAX;
        config.auth.stuffing_sources = u32::MAX;
        config.auth.failure_window = Duration::from_millis(1);
        config.auth.block_duration = Duration::from_millis(1);

        let authenticator = runtime.block_on(async {
            let authenticator = Authenticator::new(store.clone(), &config.auth)
                .await
                .expect("fuzz harness: authenticator");
            let now = postern_core::time::now_millis();
            for (name, parent) in [("fuzz", None), (FUZZ_SUBUSER, Some("fuzz".to_owned()))] {
                store
                    .create_account(AccountRecord::new(name, parent, now))
                    .await
                    .expect("fuzz harness: account");
            }
            store
                .insert_api_key(ApiKeyRecord {
                    id: "fuzzkey".into(),
                    account: "fuzz".into(),
                    name: "fuzz".into(),
                    hash: authenticator.api_keys().hash(FUZZ_API_KEY),
                    scopes: vec![SCOPE_MAIL_SEND.into()],
                    created_at: now,
                    expires_at: None,
                    revoked_at: None,
                    networks: Vec::new(),
                    last_used_at: None,
                })
                .await
                .expect("fuzz harness: api key");
            authenticator
        });

        let context = |bare: BareLineEndings| {
            let mut config = config.clone();
            config.smtp.bare_line_endings = bare;
            let config = Arc::new(config);
            Arc::new(SmtpContext {
                relay_domains: config.relay_domains().into_iter().collect(),
                intake: Intake::new(store.clone(), config.server.hostname.clone())
                    .with_quotas(Quotas::new(store.clone())),
                authenticator: authenticator.clone(),
                limiter: ConnectionLimiter::new(
                    config.limits.max_connections,
                    config.limits.max_connections_per_ip,
                ),
                // A fixed list: deterministic, and no next hop to ask.
                recipients: Arc::new(crate::ListedRecipients::new(&[
                    "@relay.fuzz.test".into(),
                    "@relay.example".into(),
                ])),
                config,
            })
        };
        let contexts = [
            context(BareLineEndings::Reject),
            context(BareLineEndings::Normalize),
        ];

        let acceptor = tokio_rustls::TlsAcceptor::from(no_certificate_tls());
        let mut listeners = Vec::new();
        for (role, plaintext_auth) in [
            (ListenerRole::Mx, false),
            (ListenerRole::Submission, false),
            (ListenerRole::Submission, true),
            (ListenerRole::Submissions, false),
        ] {
            for tls_configured in [false, true] {
                listeners.push(Arc::new(ListenerContext {
                    role,
                    address: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 25),
                    tls: tls_configured.then(|| acceptor.clone()),
                    allow_plaintext_auth: plaintext_auth,
                    auth_mechanisms: crate::mechanism_bits(&[
                        "PLAIN".into(),
                        "LOGIN".into(),
                        "CRAM-MD5".into(),
                        "XOAUTH2".into(),
                        "OAUTHBEARER".into(),
                    ]),
                    screen: None,
                }));
            }
        }
        SessionHarness {
            runtime,
            store,
            contexts,
            listeners,
            dir,
        }
    }

    /// Runs one input (see the module documentation for its layout) and
    /// returns what the server answered, for tests that check the wiring.
    pub fn run(&self, data: &[u8]) -> Vec<u8> {
        let [mode, pipe, input @ ..] = data else {
            return Vec::new();
        };
        let mode = Mode::from_byte(*mode);
        let pipe = if *pipe == 0 {
            64 * 1024
        } else {
            usize::from(*pipe)
        };
        let ctx = self.contexts[usize::from(mode.normalize)].clone();
        let listener = self.listeners[mode.listener_index()].clone();
        let output = self.runtime.block_on(async {
            let (client, server) = tokio::io::duplex(pipe);
            let server = Box::pin(serve(server, ctx, listener, mode));
            let client = drive_client(client, input);
            tokio::join!(server, client).1
        });
        check_replies(&output, mode);
        output
    }
}

impl Drop for SessionHarness {
    fn drop(&mut self) {
        self.store.close();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS configuration that would fail every handshake: the listener needs
/// one for STARTTLS to be offered, and the harness never hands it a
/// connection (see the module documentation).
fn no_certificate_tls() -> Arc<rustls::ServerConfig> {
    #[derive(Debug)]
    struct NoCertificate;
    impl rustls::server::ResolvesServerCert for NoCertificate {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            None
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("fuzz harness: TLS versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(NoCertificate));
    Arc::new(config)
}

/// The listener's part: a session, and after an accepted STARTTLS a fresh
/// one on the same stream as if the handshake had succeeded.
async fn serve(
    stream: DuplexStream,
    ctx: Arc<SmtpContext>,
    listener: Arc<ListenerContext>,
    mode: Mode,
) {
    // Never sent: the harness does not test shutdown, but the session
    // needs the receiver.
    let (_shutdown, shutdown_rx) = watch::channel(false);
    let tls = mode.tls_up.then(|| TLS_DESCRIPTION.to_owned());
    let mut session = Session::new(
        stream,
        ctx.clone(),
        listener.clone(),
        PEER,
        tls,
        shutdown_rx.clone(),
    );
    if mode.authenticated {
        session = session.authenticated_as(Principal {
            account_id: 0,
            account: "fuzz".into(),
            key_id: "fuzzkey".into(),
            scopes: vec![SCOPE_MAIL_SEND.into()],
        });
    }
    if let SessionEnd::StartTls(stream) = session.run(true).await {
        let session = Session::new(
            stream,
            ctx,
            listener,
            PEER,
            Some(TLS_DESCRIPTION.to_owned()),
            shutdown_rx,
        );
        // RFC 3207 §4.2: no greeting after STARTTLS. A second STARTTLS is
        // refused by the session (TLS already active), so this ends it.
        let _ = session.run(false).await;
    }
}

/// The client's part: sends `input` (blocking while the pipe is full, so
/// the server's reads are cut at the pipe's size), then EOF, while reading
/// every reply until the server closes.
async fn drive_client(client: DuplexStream, input: &[u8]) -> Vec<u8> {
    let (mut rd, mut wr) = tokio::io::split(client);
    let write = async move {
        // An error means the server has closed; the rest is not sent.
        if wr.write_all(input).await.is_ok() {
            let _ = wr.shutdown().await;
        }
    };
    let read = async move {
        let mut output = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = OUTPUT_KEPT.saturating_sub(output.len());
                    output.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        output
    };
    tokio::join!(write, read).1
}

/// The properties every transcript must have (module documentation).
fn check_replies(output: &[u8], mode: Mode) {
    let complete = output.len() < OUTPUT_KEPT;
    let mut rest = output;
    let mut tls = mode.tls_up;
    while !rest.is_empty() {
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            assert!(
                !complete,
                "reply without CRLF at the end: {:?}",
                String::from_utf8_lossy(rest)
            );
            break;
        };
        let line = &rest[..=lf];
        rest = &rest[lf + 1..];
        let well_formed = line.len() >= 6
            && line[..3].iter().all(u8::is_ascii_digit)
            && (b'2'..=b'5').contains(&line[0])
            && (line[3] == b' ' || line[3] == b'-')
            && line[line.len() - 2] == b'\r'
            && !line[..line.len() - 2].contains(&b'\r');
        assert!(
            well_formed,
            "malformed reply line {:?}",
            String::from_utf8_lossy(line)
        );
        assert!(
            !line.starts_with(b"421 4.4.2 Timeout"),
            "the session waited for input after the client had closed"
        );
        if line.starts_with(b"220 2.0.0 Ready to start TLS") {
            tls = true;
        }
        let auth_reply = line.starts_with(b"334 ") || line.starts_with(b"235 ");
        if auth_reply {
            assert!(
                mode.role != ListenerRole::Mx,
                "AUTH exchange on an mx listener: {:?}",
                String::from_utf8_lossy(line)
            );
            assert!(
                tls || mode.plaintext_auth,
                "AUTH exchange before TLS: {:?}",
                String::from_utf8_lossy(line)
            );
        }
    }
}
