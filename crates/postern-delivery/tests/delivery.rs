//! Delivery end to end: the scheduler takes messages from a real embedded
//! store and delivers them with the real client to scriptable sinks on
//! loopback, finding MX hosts through a DNS server on loopback.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, MX};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use postern_core::config::{RouteConfig, RouteProtocol, RouteTls};
use postern_core::{Envelope, EventKind, Recipient};
use postern_delivery::dnssec_probe::ProbeResult;
use postern_delivery::{
    ClientSettings, DaneState, MxResolver, Router, Scheduler, Shaping, SmtpClient, TrustAnchor,
};
use postern_queue::{ClientInfo, Intake, RetrySchedule, Submission};
use postern_store::{EmbeddedStore, EventFilter, EventStore, QueueStore};
use rustls_pki_types::PrivateKeyDer;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type RcptPolicy = Arc<dyn Fn(usize, &str) -> String + Send + Sync>;

#[derive(Debug, Clone)]
struct Received {
    mail_from: String,
    rcpts: Vec<String>,
    /// DATA as sent on the wire, dot-stuffed, up to and including CRLF.CRLF.
    wire: Vec<u8>,
    tls: bool,
    /// Where the connection came from, the EHLO name it gave, and which
    /// connection (0, 1, …) it was.
    peer: SocketAddr,
    ehlo: String,
    conn_no: usize,
}

#[derive(Clone)]
struct SinkOptions {
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Bytes the sink sends right after its STARTTLS 220, in plaintext.
    inject_after_starttls: Option<&'static [u8]>,
    rcpt: RcptPolicy,
    /// Close the connection after reading this many bytes of DATA.
    drop_mid_data: bool,
    /// AUTH PLAIN credentials the sink requires (offered only over TLS).
    auth: Option<(&'static str, &'static str)>,
    /// Waits this long before the reply to the final dot (a slow receiver).
    data_delay: Option<Duration>,
    /// Offer SMTPUTF8 (RFC 6531).
    smtputf8: bool,
    /// Speak LMTP (RFC 2033): LHLO only, and after the message one reply
    /// per accepted recipient, from this policy (connection, recipient).
    lmtp: Option<RcptPolicy>,
}

struct Sink {
    addr: SocketAddr,
    /// AUTH PLAIN payloads received, decoded.
    auth_seen: Arc<Mutex<Vec<String>>>,
    received: Arc<Mutex<Vec<Received>>>,
    connections: Arc<AtomicUsize>,
    /// Sessions that have ended (the client quit or closed).
    closed: Arc<AtomicUsize>,
    mail_commands: Arc<AtomicUsize>,
}

fn accept_all() -> RcptPolicy {
    Arc::new(|_, _| "250 2.1.5 ok".to_string())
}

impl Default for SinkOptions {
    /// Plain SMTP, every recipient accepted.
    fn default() -> Self {
        SinkOptions {
            tls: None,
            inject_after_starttls: None,
            rcpt: accept_all(),
            drop_mid_data: false,
            auth: None,
            data_delay: None,
            smtputf8: false,
            lmtp: None,
        }
    }
}

async fn start_sink(opts: SinkOptions) -> Sink {
    start_sink_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), opts)
}

fn start_sink_on(listener: TcpListener, opts: SinkOptions) -> Sink {
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let mail_commands = Arc::new(AtomicUsize::new(0));
    let auth_seen = Arc::new(Mutex::new(Vec::new()));
    let (r, c, m, a, ended) = (
        received.clone(),
        connections.clone(),
        mail_commands.clone(),
        auth_seen.clone(),
        closed.clone(),
    );
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            let n = c.fetch_add(1, Ordering::SeqCst);
            let (opts, r, m, a) = (opts.clone(), r.clone(), m.clone(), a.clone());
            let ended = ended.clone();
            tokio::spawn(async move {
                let _ = sink_session(Box::new(stream), n, peer, opts, r, m, a).await;
                ended.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    Sink {
        addr,
        auth_seen,
        received,
        connections,
        closed,
        mail_commands,
    }
}

async fn sink_session(
    stream: Box<dyn Io>,
    conn_no: usize,
    peer: SocketAddr,
    opts: SinkOptions,
    received: Arc<Mutex<Vec<Received>>>,
    mails: Arc<AtomicUsize>,
    auth_seen: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let mut authenticated = false;
    let mut io = BufReader::new(stream);
    let mut tls = false;
    io.get_mut().write_all(b"220 sink.test ESMTP\r\n").await?;
    let mut current: Option<Received> = None;
    let mut ehlo = String::new();
    loop {
        let mut line = String::new();
        if io.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        let lhlo = upper.starts_with("LHLO");
        let reply: String = if (lhlo || upper.starts_with("EHLO")) && lhlo != opts.lmtp.is_some() {
            // RFC 2033 §4.1: an LMTP server knows no EHLO (nor an SMTP
            // server LHLO).
            "500 5.5.1 wrong greeting for this protocol\r\n".into()
        } else if lhlo || upper.starts_with("EHLO") {
            ehlo = line[4..].trim().to_string();
            let starttls = if opts.tls.is_some() && !tls {
                "250-STARTTLS\r\n"
            } else {
                ""
            };
            let auth = if opts.auth.is_some() && tls {
                "250-AUTH PLAIN\r\n"
            } else {
                ""
            };
            let utf8 = if opts.smtputf8 {
                "250-SMTPUTF8\r\n"
            } else {
                ""
            };
            format!(
                "250-sink.test\r\n{starttls}{auth}{utf8}250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 100000\r\n"
            )
        } else if upper.starts_with("AUTH PLAIN ") {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(line[11..].trim())
                .unwrap_or_default();
            let decoded = String::from_utf8_lossy(&decoded).into_owned();
            auth_seen.lock().unwrap().push(decoded.clone());
            match opts.auth {
                Some((u, p)) if tls && decoded == format!("\0{u}\0{p}") => {
                    authenticated = true;
                    "235 2.7.0 ok\r\n".into()
                }
                _ => "535 5.7.8 no\r\n".into(),
            }
        } else if upper.starts_with("STARTTLS") {
            let Some(acceptor) = opts.tls.clone() else {
                io.get_mut().write_all(b"502 no\r\n").await?;
                continue;
            };
            // One write, so the injected bytes arrive in the same read as
            // the 220 (the case a client must handle by discarding them).
            let mut go = b"220 go ahead\r\n".to_vec();
            go.extend_from_slice(opts.inject_after_starttls.unwrap_or_default());
            io.get_mut().write_all(&go).await?;
            let inner = io.into_inner();
            let stream = acceptor.accept(inner).await?;
            io = BufReader::new(Box::new(stream));
            tls = true;
            continue;
        } else if upper.starts_with("MAIL FROM:") && opts.auth.is_some() && !authenticated {
            "530 5.7.0 authentication required\r\n".into()
        } else if upper.starts_with("MAIL FROM:") && current.is_some() {
            // RFC 5321 §4.1.1.2: a transaction is open until DATA completes
            // or RSET; strict, as real servers are.
            "503 5.5.1 nested MAIL command\r\n".into()
        } else if upper.starts_with("MAIL FROM:") {
            mails.fetch_add(1, Ordering::SeqCst);
            let from = line[10..]
                .trim()
                .trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or("")
                .to_string();
            current = Some(Received {
                mail_from: from,
                rcpts: vec![],
                wire: vec![],
                tls,
                peer,
                ehlo: ehlo.clone(),
                conn_no,
            });
            "250 2.1.0 ok\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = line[8..]
                .trim()
                .trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or("")
                .to_string();
            let r = (opts.rcpt)(conn_no, &rcpt);
            if r.starts_with('2') {
                if let Some(c) = current.as_mut() {
                    c.rcpts.push(rcpt);
                }
            }
            format!("{r}\r\n")
        } else if upper.starts_with("DATA") {
            if current.as_ref().is_none_or(|c| c.rcpts.is_empty()) {
                // The transaction stays open (MAIL was accepted).
                io.get_mut()
                    .write_all(b"554 no valid recipients\r\n")
                    .await?;
                continue;
            }
            let Some(mut msg) = current.take() else {
                continue;
            };
            io.get_mut().write_all(b"354 go\r\n").await?;
            if opts.drop_mid_data {
                let mut some = [0u8; 8];
                let _ = io.read(&mut some).await;
                return Ok(());
            }
            loop {
                let mut l = Vec::new();
                if io.read_until(b'\n', &mut l).await? == 0 {
                    return Ok(());
                }
                msg.wire.extend_from_slice(&l);
                if msg.wire.ends_with(b"\r\n.\r\n") || msg.wire == b".\r\n" {
                    break;
                }
            }
            if let Some(d) = opts.data_delay {
                tokio::time::sleep(d).await;
            }
            let reply = match &opts.lmtp {
                // RFC 2033 §4.2: one reply per accepted recipient, in order;
                // "CLOSE" from the policy drops the connection there.
                Some(policy) => {
                    let mut out = String::new();
                    for r in &msg.rcpts {
                        let answer = policy(conn_no, r);
                        if answer == "CLOSE" {
                            io.get_mut().write_all(out.as_bytes()).await?;
                            received.lock().unwrap().push(msg);
                            return Ok(());
                        }
                        out.push_str(&format!("{answer}\r\n"));
                    }
                    out
                }
                None => "250 2.0.0 queued at sink\r\n".to_string(),
            };
            received.lock().unwrap().push(msg);
            reply
        } else if upper.starts_with("QUIT") {
            io.get_mut().write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else if upper.starts_with("RSET") {
            current = None;
            "250 ok\r\n".into()
        } else if upper.starts_with("NOOP") {
            "250 ok\r\n".into()
        } else {
            "500 what\r\n".into()
        };
        io.get_mut().write_all(reply.as_bytes()).await?;
    }
}

/// A DNS server on loopback answering from a fixed table; anything not in
/// it is NXDOMAIN.
async fn start_dns(records: Vec<(&'static str, RData)>) -> SocketAddr {
    start_dns_claiming(records, false).await
}

/// As `start_dns`; with `authentic_data`, every answer carries the AD bit,
/// the upstream's claim that it validated the answer (RFC 4035 §3.2.3),
/// though no answer is signed.
async fn start_dns_claiming(
    records: Vec<(&'static str, RData)>,
    authentic_data: bool,
) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let mut table: HashMap<(String, RecordType), Vec<RData>> = HashMap::new();
    let mut names = std::collections::HashSet::new();
    for (name, rdata) in records {
        names.insert(name.to_string());
        table
            .entry((name.to_string(), rdata.record_type()))
            .or_default()
            .push(rdata);
    }
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(req) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut resp = Message::new();
            resp.set_id(req.id())
                .set_message_type(MessageType::Response)
                .set_op_code(OpCode::Query)
                .set_recursion_desired(req.recursion_desired())
                .set_recursion_available(true)
                .set_authoritative(true)
                .set_authentic_data(authentic_data);
            resp.add_queries(req.queries().to_vec());
            for q in req.queries() {
                let name = q.name().to_ascii().to_lowercase();
                if !names.contains(&name) {
                    resp.set_response_code(ResponseCode::NXDomain);
                    continue;
                }
                for rdata in table
                    .get(&(name.clone(), q.query_type()))
                    .into_iter()
                    .flatten()
                {
                    resp.add_answer(Record::from_rdata(q.name().clone(), 60, rdata.clone()));
                }
            }
            if let Ok(bytes) = resp.to_vec() {
                let _ = socket.send_to(&bytes, peer).await;
            }
        }
    });
    addr
}

struct Node {
    store: Arc<EmbeddedStore>,
    intake: Intake,
    shutdown: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn start_node(routes: Vec<RouteConfig>, dns: Option<SocketAddr>, mx_port: u16) -> Node {
    start_shaped_node(routes, dns, mx_port, Shaping::default()).await
}

async fn start_shaped_node(
    routes: Vec<RouteConfig>,
    dns: Option<SocketAddr>,
    mx_port: u16,
    shaping: Shaping,
) -> Node {
    start_node_full(routes, dns, mx_port, shaping, None).await
}

/// A node whose MX resolver is given (DANE tests: a validating one).
async fn start_node_with_resolver(resolver: Arc<MxResolver>, mx_port: u16) -> Node {
    start_node_inner(vec![], resolver, mx_port, Shaping::default(), None).await
}

/// `mta_sts`: the CA file trusted for policy-required TLS, and the port
/// policies are fetched from.
async fn start_node_full(
    routes: Vec<RouteConfig>,
    dns: Option<SocketAddr>,
    mx_port: u16,
    shaping: Shaping,
    mta_sts: Option<(std::path::PathBuf, u16)>,
) -> Node {
    let nameservers: Vec<SocketAddr> = dns.into_iter().collect();
    let resolver = Arc::new(MxResolver::new(&nameservers).unwrap());
    start_node_inner(routes, resolver, mx_port, shaping, mta_sts).await
}

async fn start_node_inner(
    routes: Vec<RouteConfig>,
    resolver: Arc<MxResolver>,
    mx_port: u16,
    shaping: Shaping,
    mta_sts: Option<(std::path::PathBuf, u16)>,
) -> Node {
    let (node, _) = start_node_watched(
        routes,
        resolver,
        mx_port,
        shaping,
        mta_sts,
        64 * 1024 * 1024,
    )
    .await;
    node
}

/// A node whose scheduler claims through a [`WatchedStore`] (returned, to
/// read what the scheduler held) and holds at most `max_body_bytes` of
/// bodies.
async fn start_node_watched(
    routes: Vec<RouteConfig>,
    resolver: Arc<MxResolver>,
    mx_port: u16,
    shaping: Shaping,
    mta_sts: Option<(std::path::PathBuf, u16)>,
    max_body_bytes: usize,
) -> (Node, Arc<WatchedStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let intake = Intake::new(store.clone(), "postern.test".into());
    let client = SmtpClient::new(
        ClientSettings {
            ehlo_name: "postern.test".into(),
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(10),
            mx_port,
            ca_file: mta_sts.as_ref().map(|(ca, _)| ca.clone()),
            mta_sts_port: mta_sts.as_ref().map(|(_, p)| *p).unwrap_or(443),
            mta_sts: mta_sts.is_some(),
        },
        resolver,
    )
    .unwrap()
    .with_tls_reports(store.clone());
    let watched = Arc::new(WatchedStore {
        inner: store.clone(),
        handed_out: Mutex::new(Vec::new()),
        at_claims: Mutex::new(Vec::new()),
        claims: AtomicUsize::new(0),
    });
    let scheduler = Scheduler {
        store: watched.clone(),
        client: Arc::new(client),
        router: Arc::new(Router::new(&routes)),
        retry: RetrySchedule {
            initial: Duration::from_millis(200),
            max: Duration::from_millis(400),
            max_age: Duration::from_secs(3600),
        },
        concurrency: 8,
        wakeup: intake.wakeup(),
        bounces: Some(intake.clone()),
        suppressions: Some(store.clone()),
        shaping,
        accounts: Some(store.clone()),
        unauthenticated_dsns: Arc::new(postern_delivery::dsn_limit::DsnLimiter::new(100, 1000)),
        max_body_bytes,
    };
    let (tx, rx) = watch::channel(false);
    tokio::spawn(scheduler.run(rx, Duration::from_secs(5)));
    let node = Node {
        store,
        intake,
        shutdown: tx,
        _dir: dir,
    };
    (node, watched)
}

/// The embedded store, watching what the scheduler holds: it keeps a weak
/// reference to every body it hands out in a claim, so the bodies still
/// alive are the ones the scheduler (its backlogs, workers and the
/// recording of outcomes) holds. Bodies come into memory only through
/// claims, so what is alive just after each claim is the most held
/// between that claim and the next: the largest of these is the peak.
struct WatchedStore {
    inner: Arc<EmbeddedStore>,
    handed_out: Mutex<Vec<std::sync::Weak<Vec<u8>>>>,
    /// After each claim that returned work: the sizes of the bodies alive.
    at_claims: Mutex<Vec<Vec<usize>>>,
    /// Claims asked for, whether or not they returned work.
    claims: AtomicUsize,
}

impl WatchedStore {
    fn alive(&self) -> Vec<usize> {
        let mut handed = self.handed_out.lock().unwrap();
        handed.retain(|w| w.strong_count() > 0);
        handed
            .iter()
            .filter_map(|w| w.upgrade().map(|b| b.len()))
            .collect()
    }
}

#[async_trait::async_trait]
impl QueueStore for WatchedStore {
    async fn enqueue(&self, msg: postern_store::NewMessage) -> postern_store::Result<()> {
        self.inner.enqueue(msg).await
    }
    async fn record_refusal(&self, event: postern_core::Event) -> postern_store::Result<()> {
        self.inner.record_refusal(event).await
    }
    async fn hold(&self, msg: postern_store::HeldMessage) -> postern_store::Result<()> {
        self.inner.hold(msg).await
    }
    async fn claim_due_within(
        &self,
        now: i64,
        limit: usize,
        lease_millis: i64,
        max_bytes: i64,
        at_least_one: bool,
    ) -> postern_store::Result<Vec<postern_store::DeliveryJob>> {
        self.claims.fetch_add(1, Ordering::SeqCst);
        let jobs = self
            .inner
            .claim_due_within(now, limit, lease_millis, max_bytes, at_least_one)
            .await?;
        if !jobs.is_empty() {
            self.handed_out
                .lock()
                .unwrap()
                .extend(jobs.iter().map(|j| Arc::downgrade(&j.body)));
            let alive = self.alive();
            self.at_claims.lock().unwrap().push(alive);
        }
        Ok(jobs)
    }
    async fn settle(
        &self,
        outcomes: Vec<postern_store::RecipientOutcome>,
    ) -> postern_store::Result<()> {
        self.inner.settle(outcomes).await
    }
    async fn release_all_leases(&self) -> postern_store::Result<u64> {
        self.inner.release_all_leases().await
    }
    async fn next_due(&self) -> postern_store::Result<Option<i64>> {
        self.inner.next_due().await
    }
    async fn queue_summary(&self) -> postern_store::Result<postern_store::QueueSummary> {
        self.inner.queue_summary().await
    }
    async fn postpone(
        &self,
        recipients: Vec<(postern_core::MessageId, u32)>,
        next_attempt: i64,
    ) -> postern_store::Result<()> {
        self.inner.postpone(recipients, next_attempt).await
    }
    async fn queued_messages(
        &self,
        filter: postern_store::QueueFilter,
    ) -> postern_store::Result<Vec<postern_store::QueuedMessage>> {
        self.inner.queued_messages(filter).await
    }
    async fn queued_message(
        &self,
        id: String,
    ) -> postern_store::Result<Option<postern_store::QueuedMessage>> {
        self.inner.queued_message(id).await
    }
    async fn retry_now(
        &self,
        id: Option<String>,
        filter: postern_store::QueueFilter,
        now: i64,
    ) -> postern_store::Result<u64> {
        self.inner.retry_now(id, filter, now).await
    }
    async fn delete_queued(
        &self,
        id: String,
        reason: String,
        now: i64,
    ) -> postern_store::Result<u64> {
        self.inner.delete_queued(id, reason, now).await
    }
}

impl Node {
    async fn send(&self, from: &str, rcpts: &[&str], body: &[u8]) -> String {
        self.send_as(None, from, rcpts, body).await
    }

    async fn send_as(
        &self,
        account: Option<&str>,
        from: &str,
        rcpts: &[&str],
        body: &[u8],
    ) -> String {
        self.send_envelope(account, from, rcpts, body, false).await
    }

    async fn send_envelope(
        &self,
        account: Option<&str>,
        from: &str,
        rcpts: &[&str],
        body: &[u8],
        smtputf8: bool,
    ) -> String {
        let envelope = Envelope {
            smtputf8,
            mail_from: from.into(),
            recipients: rcpts
                .iter()
                .map(|r| Recipient {
                    address: r.to_string(),
                    domain: r.rsplit_once('@').unwrap().1.to_string(),
                    notify: vec![],
                    orcpt: None,
                })
                .collect(),
            ..Default::default()
        };
        let id = self
            .intake
            .submit(Submission {
                envelope,
                principal: account.map(|a| postern_core::Principal {
                    account_id: 0,
                    account: a.into(),
                    key_id: "test".into(),
                    scopes: vec!["mail.send".into()],
                }),
                client: ClientInfo {
                    ip: "127.0.0.1".parse().unwrap(),
                    helo: "test".into(),
                    protocol: "ESMTP",
                    tls: None,
                },
                body: body.to_vec(),
            })
            .await
            .unwrap();
        id.to_string()
    }

    /// Waits until every recipient of the message has a final event.
    async fn final_events(&self, id: &str, recipients: usize) -> Vec<postern_core::Event> {
        for _ in 0..200 {
            let events = self
                .store
                .events(EventFilter {
                    message_id: Some(id.into()),
                    ..EventFilter::default()
                })
                .await
                .unwrap();
            let finals = events
                .iter()
                .filter(|e| matches!(e.kind, EventKind::Delivered | EventKind::Bounce))
                .count();
            if finals >= recipients {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let events = self
            .store
            .events(EventFilter {
                message_id: Some(id.into()),
                ..EventFilter::default()
            })
            .await
            .unwrap();
        panic!("message {id} never settled: {events:?}");
    }
}

fn route(
    domain: &str,
    sink: &Sink,
    tls: RouteTls,
    ca_file: Option<std::path::PathBuf>,
) -> RouteConfig {
    RouteConfig {
        domain: domain.into(),
        next_hop: sink.addr.to_string(),
        tls,
        protocol: RouteProtocol::Smtp,
        ca_file,
        auth_username: None,
        auth_password: None,
    }
}

fn kinds(events: &[postern_core::Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

fn tls_pair(dir: &std::path::Path) -> (tokio_rustls::TlsAcceptor, std::path::PathBuf) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let ca = dir.join("sink-ca.pem");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    (acceptor_of(&ck), ca)
}

/// A TLS acceptor presenting `ck`'s self-signed certificate.
fn acceptor_of(ck: &rcgen::CertifiedKey<rcgen::KeyPair>) -> tokio_rustls::TlsAcceptor {
    acceptor_with(vec![ck.cert.der().clone()], &ck.signing_key)
}

/// A TLS acceptor presenting `chain` (leaf first) with the leaf's `key`.
fn acceptor_with(
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: &rcgen::KeyPair,
) -> tokio_rustls::TlsAcceptor {
    let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[tokio::test]
async fn delivers_byte_exact_with_dot_stuffing() {
    let sink = start_sink(SinkOptions::default()).await;
    let node = start_node(vec![route("*", &sink, RouteTls::None, None)], None, 25).await;
    let id = node
        .send(
            "a@example.org",
            &["b@example.net", "c@example.net"],
            b"Subject: x\r\n\r\n.dot\r\nend\r\n",
        )
        .await;
    let events = node.final_events(&id, 2).await;
    assert_eq!(
        kinds(&events),
        vec![
            EventKind::Processed,
            EventKind::Processed,
            EventKind::Delivered,
            EventKind::Delivered
        ]
    );
    let got = sink.received.lock().unwrap().clone();
    assert_eq!(
        got.len(),
        1,
        "one transaction for both recipients of one domain"
    );
    assert_eq!(got[0].rcpts, vec!["b@example.net", "c@example.net"]);
    assert_eq!(got[0].mail_from, "a@example.org");
    assert!(got[0]
        .wire
        .ends_with(b"\r\nSubject: x\r\n\r\n..dot\r\nend\r\n.\r\n"));
}

/// The scheduler claims queued mail only while the bodies it holds fit in
/// its bound (`max_body_bytes`, the body memory budget), and a message
/// larger than the whole bound is still delivered, held alone. Eight
/// 300 KiB messages to a sink that takes a second over each: without the
/// bound all eight would be held at once (2.4 MiB); with 1,000 KiB at
/// most three fit. Then a 1.5 MiB message with a small one behind it.
#[tokio::test]
async fn claims_keep_held_bodies_within_the_bound_and_deliver_everything() {
    const KIB: usize = 1024;
    const BOUND: usize = 1000 * KIB;
    let sink = start_sink(SinkOptions {
        data_delay: Some(Duration::from_secs(1)),
        ..SinkOptions::default()
    })
    .await;
    let resolver = Arc::new(MxResolver::new(&[]).unwrap());
    let (node, watched) = start_node_watched(
        vec![route("*", &sink, RouteTls::None, None)],
        resolver,
        25,
        Shaping::default(),
        None,
        BOUND,
    )
    .await;
    let body = |size: usize, tag: usize| {
        let mut b = format!("Subject: {tag}\r\n\r\n").into_bytes();
        let line = b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n";
        while b.len() + line.len() <= size {
            b.extend_from_slice(line);
        }
        b.resize(size, b'x');
        b
    };
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(
            node.send(
                "a@example.org",
                &[&format!("r{i}@example.net")],
                &body(300 * KIB, i),
            )
            .await,
        );
    }
    for id in &ids {
        node.final_events(id, 1).await;
    }
    let big = node
        .send("a@example.org", &["big@example.net"], &body(1536 * KIB, 8))
        .await;
    let small = node
        .send("a@example.org", &["small@example.net"], &body(10 * KIB, 9))
        .await;
    for id in [&big, &small] {
        node.final_events(id, 1).await;
    }

    let got = sink.received.lock().unwrap().clone();
    assert_eq!(got.len(), 10, "every message delivered once");
    let snapshots = watched.at_claims.lock().unwrap().clone();
    for alive in &snapshots {
        let held: usize = alive.iter().sum();
        assert!(
            held <= BOUND || alive.len() == 1,
            "held {held} bytes in {alive:?} (bound {BOUND})"
        );
    }
    // The scheduler did hold several messages at once, so the bound, not
    // one-at-a-time delivery, is what kept it within.
    let most = snapshots
        .iter()
        .map(|a| a.iter().sum::<usize>())
        .max()
        .unwrap();
    assert!(most >= 2 * 300 * KIB, "at most {most} bytes held at once");
    assert!(
        // (Stored bodies carry Postern's Received field too.)
        snapshots.iter().any(|a| a.len() == 1 && a[0] > 1536 * KIB),
        "the large message was held alone: {snapshots:?}"
    );
    // Work that does not fit waits for a delivery to finish; the loop does
    // not ask the store again and again meanwhile (about four seconds of
    // deliveries here; a claim per turn of a busy loop would be thousands).
    let claims = watched.claims.load(Ordering::SeqCst);
    assert!(claims < 200, "{claims} claims");
}

#[tokio::test]
async fn temporary_failures_are_retried_and_permanent_ones_fail() {
    // First RCPT for ok@: 451; later: 250. Always 550 for "gone".
    let asked = Arc::new(AtomicUsize::new(0));
    let rcpt: RcptPolicy = Arc::new(move |_conn, rcpt| {
        if rcpt.starts_with("gone@") {
            "550 5.1.1 no such user".into()
        } else if asked.fetch_add(1, Ordering::SeqCst) == 0 {
            "451 4.3.0 try later".into()
        } else {
            "250 2.1.5 ok".into()
        }
    });
    let sink = start_sink(SinkOptions {
        rcpt,
        ..Default::default()
    })
    .await;
    let node = start_node(vec![route("*", &sink, RouteTls::None, None)], None, 25).await;
    let id = node
        .send(
            "a@example.org",
            &["ok@example.net", "gone@example.net"],
            b"Subject: r\r\n\r\nx\r\n",
        )
        .await;
    let events = node.final_events(&id, 2).await;
    let by_rcpt = |r: &str| -> Vec<EventKind> {
        events
            .iter()
            .filter(|e| e.recipient.as_deref() == Some(r))
            .map(|e| e.kind)
            .collect()
    };
    assert_eq!(
        by_rcpt("ok@example.net"),
        vec![
            EventKind::Processed,
            EventKind::Deferred,
            EventKind::Delivered
        ]
    );
    assert_eq!(
        by_rcpt("gone@example.net"),
        vec![EventKind::Processed, EventKind::Bounce]
    );
    let failed = events.iter().find(|e| e.kind == EventKind::Bounce).unwrap();
    assert!(failed.detail.contains("550 5.1.1"), "{}", failed.detail);
    // The send log says how each attempt went.
    assert_eq!(failed.info.status.as_deref(), Some("5.1.1"));
    assert_eq!(
        failed.info.classification.as_deref(),
        Some("invalid_address")
    );
    assert_eq!(failed.info.attempt, Some(1));
    assert_eq!(failed.info.remote_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(failed.info.source_ip.as_deref(), Some("127.0.0.1"));
    let deferred = events
        .iter()
        .find(|e| e.kind == EventKind::Deferred)
        .unwrap();
    assert_eq!(deferred.info.attempt, Some(1));
    assert!(deferred
        .info
        .status
        .as_deref()
        .unwrap_or("")
        .starts_with('4'));
    let delivered = events
        .iter()
        .find(|e| e.kind == EventKind::Delivered)
        .unwrap();
    assert_eq!(delivered.info.attempt, Some(2));
    assert!(delivered.info.remote_host.is_some());
    // The retry, 200–400 ms later, went over the connection kept open
    // from the first attempt.
    assert_eq!(sink.connections.load(Ordering::SeqCst), 1);
}

/// An LMTP next hop answers for each recipient after the message (RFC
/// 2033 §4.2): each is delivered, deferred or bounced on its own, and the
/// retry carries only the deferred one, so no mailbox gets a second copy.
#[tokio::test]
async fn lmtp_replies_after_the_message_decide_each_recipient_alone() {
    let stored: Arc<Mutex<Vec<String>>> = Arc::default();
    let full_once = Arc::new(AtomicBool::new(false));
    let (s, f) = (stored.clone(), full_once.clone());
    let at_end: RcptPolicy = Arc::new(move |_conn, rcpt| {
        if rcpt.starts_with("full@") && !f.swap(true, Ordering::SeqCst) {
            "452 4.2.2 <full@corp.test> mailbox full".into()
        } else if rcpt.starts_with("broken@") {
            "552 5.2.2 <broken@corp.test> quota exceeded for good".into()
        } else {
            s.lock().unwrap().push(rcpt.to_owned());
            format!("250 2.0.0 <{rcpt}> saved")
        }
    });
    let sink = start_sink(SinkOptions {
        lmtp: Some(at_end),
        ..Default::default()
    })
    .await;
    let mut r = route("corp.test", &sink, RouteTls::None, None);
    r.protocol = RouteProtocol::Lmtp;
    let node = start_node(vec![r], None, 25).await;
    let id = node
        .send(
            "a@example.org",
            &["ok@corp.test", "full@corp.test", "broken@corp.test"],
            b"Subject: l\r\n\r\nx\r\n",
        )
        .await;
    let events = node.final_events(&id, 3).await;
    let by_rcpt = |r: &str| -> Vec<EventKind> {
        events
            .iter()
            .filter(|e| e.recipient.as_deref() == Some(r))
            .map(|e| e.kind)
            .collect()
    };
    assert_eq!(
        by_rcpt("ok@corp.test"),
        vec![EventKind::Processed, EventKind::Delivered]
    );
    assert_eq!(
        by_rcpt("full@corp.test"),
        vec![
            EventKind::Processed,
            EventKind::Deferred,
            EventKind::Delivered
        ]
    );
    assert_eq!(
        by_rcpt("broken@corp.test"),
        vec![EventKind::Processed, EventKind::Bounce]
    );
    let bounce = events.iter().find(|e| e.kind == EventKind::Bounce).unwrap();
    assert!(bounce.detail.contains("552 5.2.2"), "{}", bounce.detail);
    // Each mailbox has the message once; the retry's transaction named
    // only the recipient that was deferred.
    assert_eq!(
        *stored.lock().unwrap(),
        vec!["ok@corp.test".to_owned(), "full@corp.test".to_owned()]
    );
    let received = sink.received.lock().unwrap();
    assert_eq!(received.len(), 2);
    assert_eq!(received[1].rcpts, vec!["full@corp.test".to_owned()]);
}

/// An LMTP session that breaks after some of the replies after DATA: the
/// recipients answered keep their answer (no second copy), the others are
/// tried again.
#[tokio::test]
async fn an_lmtp_session_lost_between_replies_retries_only_the_unanswered() {
    let stored: Arc<Mutex<Vec<String>>> = Arc::default();
    let cut_once = Arc::new(AtomicBool::new(false));
    let (s, c) = (stored.clone(), cut_once.clone());
    let at_end: RcptPolicy = Arc::new(move |_conn, rcpt| {
        if rcpt.starts_with("second@") && !c.swap(true, Ordering::SeqCst) {
            "CLOSE".into()
        } else {
            s.lock().unwrap().push(rcpt.to_owned());
            format!("250 2.0.0 <{rcpt}> saved")
        }
    });
    let sink = start_sink(SinkOptions {
        lmtp: Some(at_end),
        ..Default::default()
    })
    .await;
    let mut r = route("corp.test", &sink, RouteTls::None, None);
    r.protocol = RouteProtocol::Lmtp;
    let node = start_node(vec![r], None, 25).await;
    let id = node
        .send(
            "a@example.org",
            &["first@corp.test", "second@corp.test", "third@corp.test"],
            b"Subject: l\r\n\r\nx\r\n",
        )
        .await;
    let events = node.final_events(&id, 3).await;
    let by_rcpt = |r: &str| -> Vec<EventKind> {
        events
            .iter()
            .filter(|e| e.recipient.as_deref() == Some(r))
            .map(|e| e.kind)
            .collect()
    };
    assert_eq!(
        by_rcpt("first@corp.test"),
        vec![EventKind::Processed, EventKind::Delivered]
    );
    for late in ["second@corp.test", "third@corp.test"] {
        assert_eq!(
            by_rcpt(late),
            vec![
                EventKind::Processed,
                EventKind::Deferred,
                EventKind::Delivered
            ],
            "{late}"
        );
    }
    let mut got = stored.lock().unwrap().clone();
    got.sort();
    assert_eq!(
        got,
        vec![
            "first@corp.test".to_owned(),
            "second@corp.test".to_owned(),
            "third@corp.test".to_owned()
        ],
        "each mailbox has the message once"
    );
}

#[tokio::test]
async fn a_connection_dropped_mid_data_is_deferred_not_lost() {
    let sink = start_sink(SinkOptions {
        drop_mid_data: true,
        ..Default::default()
    })
    .await;
    let node = start_node(vec![route("*", &sink, RouteTls::None, None)], None, 25).await;
    let id = node
        .send(
            "a@example.org",
            &["b@example.net"],
            b"Subject: d\r\n\r\nx\r\n",
        )
        .await;
    for _ in 0..100 {
        let events = node
            .store
            .events(EventFilter {
                message_id: Some(id.clone()),
                ..EventFilter::default()
            })
            .await
            .unwrap();
        if events
            .iter()
            .filter(|e| e.kind == EventKind::Deferred)
            .count()
            >= 2
        {
            assert!(!events.iter().any(|e| e.kind == EventKind::Bounce));
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never deferred twice");
}

#[tokio::test]
async fn required_tls_is_never_downgraded() {
    let dir = tempfile::tempdir().unwrap();
    let (acceptor, ca) = tls_pair(dir.path());
    // A next hop that does not offer STARTTLS: nothing may be sent to it.
    let plain = start_sink(SinkOptions::default()).await;
    // A next hop with a certificate from the configured CA.
    let secure = start_sink(SinkOptions {
        tls: Some(acceptor),
        ..Default::default()
    })
    .await;
    let node = start_node(
        vec![
            route(
                "plain.example",
                &plain,
                RouteTls::Required,
                Some(ca.clone()),
            ),
            route("secure.example", &secure, RouteTls::Required, Some(ca)),
        ],
        None,
        25,
    )
    .await;
    let id_plain = node
        .send(
            "a@example.org",
            &["x@plain.example"],
            b"Subject: p\r\n\r\nx\r\n",
        )
        .await;
    let id_secure = node
        .send(
            "a@example.org",
            &["x@secure.example"],
            b"Subject: s\r\n\r\nx\r\n",
        )
        .await;
    let events = node.final_events(&id_secure, 1).await;
    let delivered = events
        .iter()
        .find(|e| e.kind == EventKind::Delivered)
        .unwrap();
    assert!(delivered.detail.contains("TLSv1.3"), "{}", delivered.detail);
    assert!(secure.received.lock().unwrap()[0].tls);

    // The plaintext-only host's attempt ends deferred, for want of
    // STARTTLS (polled for); nothing was delivered and no MAIL sent.
    let deferred = node.wait_kind(&id_plain, EventKind::Deferred).await;
    assert!(deferred.detail.contains("STARTTLS"), "{}", deferred.detail);
    let events = node
        .store
        .events(EventFilter {
            message_id: Some(id_plain),
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert!(!events.iter().any(|e| e.kind == EventKind::Delivered));
    assert_eq!(
        plain.mail_commands.load(Ordering::SeqCst),
        0,
        "MAIL was sent without TLS"
    );
}

#[tokio::test]
async fn plaintext_after_the_starttls_220_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let (acceptor, _ca) = tls_pair(dir.path());
    // The sink (an attacker in the path) appends a fake reply in plaintext.
    let sink = start_sink(SinkOptions {
        tls: Some(acceptor),
        inject_after_starttls: Some(b"250-injected\r\n250 PIPELINING\r\n"),
        ..Default::default()
    })
    .await;
    let node = start_node(
        vec![route("*", &sink, RouteTls::Opportunistic, None)],
        None,
        25,
    )
    .await;
    let id = node
        .send(
            "a@example.org",
            &["b@example.net"],
            b"Subject: i\r\n\r\nx\r\n",
        )
        .await;
    let events = node.final_events(&id, 1).await;
    assert_eq!(
        kinds(&events),
        vec![EventKind::Processed, EventKind::Delivered],
        "{events:?}"
    );
    assert!(sink.received.lock().unwrap()[0].tls);
}

#[tokio::test]
async fn mx_resolution_order_fallback_and_null_mx() {
    let sink = start_sink(SinkOptions::default()).await;
    let mx = |pref, host: &str| RData::MX(MX::new(pref, Name::from_str(host).unwrap()));
    let a = |ip: [u8; 4]| RData::A(A(Ipv4Addr::from(ip)));
    let dns = start_dns(vec![
        // Preference 5 is tried first and is down (127.0.0.9 has no sink on
        // the port); preference 10 answers.
        ("mx-order.example.", mx(10, "good.mx.example.")),
        ("mx-order.example.", mx(5, "down.mx.example.")),
        ("down.mx.example.", a([127, 0, 0, 9])),
        ("good.mx.example.", a([127, 0, 0, 1])),
        // No MX: the domain's own address (RFC 5321 §5.1).
        ("no-mx.example.", a([127, 0, 0, 1])),
        // Null MX (RFC 7505).
        ("null-mx.example.", mx(0, ".")),
    ])
    .await;
    let node = start_node(vec![], Some(dns), sink.addr.port()).await;
    let ordered = node
        .send(
            "a@example.org",
            &["u@mx-order.example"],
            b"Subject: m\r\n\r\nx\r\n",
        )
        .await;
    let fallback = node
        .send(
            "a@example.org",
            &["u@no-mx.example"],
            b"Subject: f\r\n\r\nx\r\n",
        )
        .await;
    let null = node
        .send(
            "a@example.org",
            &["u@null-mx.example"],
            b"Subject: n\r\n\r\nx\r\n",
        )
        .await;
    let nx = node
        .send(
            "a@example.org",
            &["u@nxdomain.example"],
            b"Subject: nx\r\n\r\nx\r\n",
        )
        .await;

    let e = node.final_events(&ordered, 1).await;
    let d = e
        .iter()
        .find(|e| e.kind == EventKind::Delivered)
        .expect("delivered");
    assert!(d.detail.contains("good.mx.example"), "{}", d.detail);
    let e = node.final_events(&fallback, 1).await;
    assert!(e.iter().any(|e| e.kind == EventKind::Delivered), "{e:?}");
    let e = node.final_events(&null, 1).await;
    let f = e
        .iter()
        .find(|e| e.kind == EventKind::Bounce)
        .expect("null MX fails");
    assert!(f.detail.contains("null MX"), "{}", f.detail);
    let e = node.final_events(&nx, 1).await;
    let f = e
        .iter()
        .find(|e| e.kind == EventKind::Bounce)
        .expect("NXDOMAIN fails");
    assert!(f.detail.contains("no such domain"), "{}", f.detail);
    let _ = node.shutdown.send(true);
}

/// RFC 5321 §5.1: the MX host with the lowest preference is tried first,
/// and while it accepts the mail the others are never contacted. Both hosts
/// answer (same port, two loopback addresses), so only the order decides
/// which one gets the mail; the less preferred one is listed first in the
/// DNS answer, so neither keeping the answer's order nor sorting the wrong
/// way round passes.
#[tokio::test]
async fn the_most_preferred_mx_gets_the_mail_and_the_other_no_connection() {
    let preferred_listener = TcpListener::bind("127.0.0.41:0").await.unwrap();
    let port = preferred_listener.local_addr().unwrap().port();
    let preferred = start_sink_on(preferred_listener, SinkOptions::default());
    let backup = start_sink_on(
        TcpListener::bind(("127.0.0.42", port)).await.unwrap(),
        SinkOptions::default(),
    );
    let mx = |pref, host: &str| RData::MX(MX::new(pref, Name::from_str(host).unwrap()));
    let a = |ip: [u8; 4]| RData::A(A(Ipv4Addr::from(ip)));
    let dns = start_dns(vec![
        ("two-mx.example.", mx(20, "backup.two-mx.example.")),
        ("two-mx.example.", mx(10, "primary.two-mx.example.")),
        ("backup.two-mx.example.", a([127, 0, 0, 42])),
        ("primary.two-mx.example.", a([127, 0, 0, 41])),
    ])
    .await;
    let node = start_node(vec![], Some(dns), port).await;
    let id = node
        .send(
            "a@example.org",
            &["u@two-mx.example", "v@two-mx.example"],
            b"Subject: pref\r\n\r\nx\r\n",
        )
        .await;
    let events = node.final_events(&id, 2).await;
    let delivered: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::Delivered)
        .collect();
    assert_eq!(delivered.len(), 2, "{events:?}");
    for d in &delivered {
        assert!(d.detail.contains("primary.two-mx.example"), "{}", d.detail);
    }
    let got = preferred.received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].rcpts, ["u@two-mx.example", "v@two-mx.example"]);
    // Both recipients are settled, so every attempt this message will ever
    // make has been made: had the backup been tried (first, or at all), its
    // accept counter would already show it. Connections, not messages, so a
    // connection that was opened and abandoned counts too.
    assert_eq!(backup.connections.load(Ordering::SeqCst), 0);
    assert_eq!(backup.mail_commands.load(Ordering::SeqCst), 0);
    assert!(backup.received.lock().unwrap().is_empty());
    assert_eq!(preferred.connections.load(Ordering::SeqCst), 1);
    let _ = node.shutdown.send(true);
}

#[tokio::test]
async fn smart_host_auth_is_sent_only_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (acceptor, ca) = tls_pair(dir.path());
    let smart = start_sink(SinkOptions {
        tls: Some(acceptor),
        auth: Some(("relay-user", "s3cret")),
        ..Default::default()
    })
    .await;
    // Same credentials towards a host without STARTTLS (opportunistic route):
    // they must never be sent in plaintext.
    let plain = start_sink(SinkOptions::default()).await;
    let with_auth = |domain: &str, sink: &Sink, tls, ca| RouteConfig {
        auth_username: Some("relay-user".into()),
        auth_password: Some("s3cret".into()),
        ..route(domain, sink, tls, ca)
    };
    let node = start_node(
        vec![
            with_auth("smart.example", &smart, RouteTls::Required, Some(ca)),
            with_auth("plain.example", &plain, RouteTls::Opportunistic, None),
        ],
        None,
        25,
    )
    .await;
    let id = node
        .send(
            "a@example.org",
            &["x@smart.example"],
            b"Subject: a\r\n\r\nx\r\n",
        )
        .await;
    let events = node.final_events(&id, 1).await;
    assert!(
        events.iter().any(|e| e.kind == EventKind::Delivered),
        "{events:?}"
    );
    assert_eq!(
        smart.auth_seen.lock().unwrap().as_slice(),
        ["\0relay-user\0s3cret"]
    );

    let id = node
        .send(
            "a@example.org",
            &["x@plain.example"],
            b"Subject: b\r\n\r\nx\r\n",
        )
        .await;
    // Deferred (polled for): credentials are never offered without TLS.
    let deferred = node.wait_kind(&id, EventKind::Deferred).await;
    assert!(
        deferred.detail.contains("without TLS"),
        "{}",
        deferred.detail
    );
    assert!(plain.auth_seen.lock().unwrap().is_empty());
    assert_eq!(plain.mail_commands.load(Ordering::SeqCst), 0);
}

fn shaping(toml: &str) -> Shaping {
    Shaping::from_config(&postern_core::Config::parse(toml).unwrap())
}

#[tokio::test]
async fn connections_are_reused_up_to_the_message_limit() {
    let sink = start_sink(SinkOptions::default()).await;
    let node = start_shaped_node(
        vec![route("*", &sink, RouteTls::None, None)],
        None,
        25,
        shaping("[queue]\nmax_connections_per_destination = 1\nmax_messages_per_connection = 3\n"),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let rcpt = format!("r{i}@example.net");
        ids.push(
            node.send(
                "a@example.org",
                &[rcpt.as_str()],
                b"Subject: r\r\n\r\nx\r\n",
            )
            .await,
        );
    }
    for id in &ids {
        node.final_events(id, 1).await;
    }
    assert_eq!(sink.received.lock().unwrap().len(), 7);
    // 7 messages, 3 per connection: 3 connections, used in turn.
    assert_eq!(sink.connections.load(Ordering::SeqCst), 3);
    let per_conn = sink.received.lock().unwrap().iter().fold(
        HashMap::new(),
        |mut m: HashMap<usize, usize>, r| {
            *m.entry(r.conn_no).or_default() += 1;
            m
        },
    );
    assert_eq!(per_conn.get(&0), Some(&3), "{per_conn:?}");
    assert_eq!(per_conn.get(&1), Some(&3), "{per_conn:?}");
    assert_eq!(per_conn.get(&2), Some(&1), "{per_conn:?}");
}

/// README: delivery is shaped per destination, one MX host, "so every
/// domain a provider serves shares it". Two domains whose MX is the same
/// host, one connection per destination: that one connection carries both
/// domains' mail (shaped per domain, each would have had its own).
#[tokio::test]
async fn domains_served_by_one_mx_host_share_its_connections() {
    let sink = start_sink(SinkOptions::default()).await;
    let mx = |host: &str| RData::MX(MX::new(10, Name::from_str(host).unwrap()));
    let dns = start_dns(vec![
        ("one.example.", mx("mx.provider.example.")),
        ("two.example.", mx("mx.provider.example.")),
        (
            "mx.provider.example.",
            RData::A(A(Ipv4Addr::new(127, 0, 0, 1))),
        ),
    ])
    .await;
    let node = start_shaped_node(
        vec![],
        Some(dns),
        sink.addr.port(),
        shaping("[queue]\nmax_connections_per_destination = 1\n"),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        for domain in ["one.example", "two.example"] {
            let rcpt = format!("r{i}@{domain}");
            ids.push(
                node.send(
                    "a@example.org",
                    &[rcpt.as_str()],
                    b"Subject: p\r\n\r\nx\r\n",
                )
                .await,
            );
        }
    }
    for id in &ids {
        node.final_events(id, 1).await;
    }
    let got = sink.received.lock().unwrap().clone();
    assert_eq!(got.len(), 6);
    assert_eq!(
        sink.connections.load(Ordering::SeqCst),
        1,
        "one destination, one connection, for both domains"
    );
    let mut rcpts: Vec<String> = got.iter().flat_map(|r| r.rcpts.clone()).collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [
            "r0@one.example",
            "r0@two.example",
            "r1@one.example",
            "r1@two.example",
            "r2@one.example",
            "r2@two.example"
        ]
    );
}

#[tokio::test]
async fn accounts_send_from_their_ip_pool_with_its_ehlo_name() {
    use postern_store::{AccountRecord, AccountStore};
    let sink = start_sink(SinkOptions::default()).await;
    let node = start_shaped_node(
        vec![route("*", &sink, RouteTls::None, None)],
        None,
        25,
        shaping(
            "[queue]\ndefault_ip_pool = \"shared\"\n\
             [[ip_pool]]\nname = \"shared\"\n[[ip_pool.address]]\nip = \"127.0.0.3\"\nehlo_name = \"three.postern.test\"\n\
             [[ip_pool]]\nname = \"dedicated\"\n[[ip_pool.address]]\nip = \"127.0.0.2\"\nehlo_name = \"two.postern.test\"\n",
        ),
    )
    .await;
    let account = |name: &str, parent: Option<&str>, pool: Option<&str>| AccountRecord {
        id: 0,
        name: name.into(),
        parent: parent.map(Into::into),
        disabled: false,
        allow_password_auth: false,
        password_hash: None,
        created_at: 0,
        email: None,
        cram_md5: None,
        max_messages_per_hour: None,
        ip_pool: pool.map(Into::into),
        sender_alignment: None,
        require_2fa_for_credentials: false,
    };
    node.store
        .create_account(account("acme", None, Some("dedicated")))
        .await
        .unwrap();
    node.store
        .create_account(account("acme-news", Some("acme"), None))
        .await
        .unwrap();
    node.store
        .create_account(account("other", None, None))
        .await
        .unwrap();
    let a = node
        .send_as(
            Some("acme"),
            "a@acme.example",
            &["x@example.net"],
            b"Subject: 1\r\n\r\nx\r\n",
        )
        .await;
    let b = node
        .send_as(
            Some("acme-news"),
            "n@acme.example",
            &["y@example.net"],
            b"Subject: 2\r\n\r\nx\r\n",
        )
        .await;
    let c = node
        .send_as(
            Some("other"),
            "o@other.example",
            &["z@example.net"],
            b"Subject: 3\r\n\r\nx\r\n",
        )
        .await;
    for id in [&a, &b, &c] {
        node.final_events(id, 1).await;
    }
    let got = sink.received.lock().unwrap().clone();
    let from = |rcpt: &str| {
        let r = got.iter().find(|r| r.rcpts == [rcpt]).unwrap();
        (r.peer.ip().to_string(), r.ehlo.clone())
    };
    assert_eq!(
        from("x@example.net"),
        ("127.0.0.2".into(), "two.postern.test".into())
    );
    // A subuser without a pool of its own uses its parent's.
    assert_eq!(
        from("y@example.net"),
        ("127.0.0.2".into(), "two.postern.test".into())
    );
    // An account without one uses queue.default_ip_pool.
    assert_eq!(
        from("z@example.net"),
        ("127.0.0.3".into(), "three.postern.test".into())
    );
    let events = node
        .store
        .events(EventFilter {
            message_id: Some(a.clone()),
            kinds: vec![EventKind::Delivered],
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(events[0].info.source_ip.as_deref(), Some("127.0.0.2"));
}

#[tokio::test]
async fn a_slow_destination_does_not_hold_up_the_others() {
    // Every message to the slow host takes 3 s to be accepted.
    let slow = start_sink(SinkOptions {
        data_delay: Some(Duration::from_secs(3)),
        ..Default::default()
    })
    .await;
    let fast = start_sink(SinkOptions::default()).await;
    let node = start_shaped_node(
        vec![
            route("slow.example", &slow, RouteTls::None, None),
            route("fast.example", &fast, RouteTls::None, None),
        ],
        None,
        25,
        shaping("[queue]\nmax_connections_per_destination = 2\n"),
    )
    .await;
    for i in 0..30 {
        let rcpt = format!("s{i}@slow.example");
        node.send(
            "a@example.org",
            &[rcpt.as_str()],
            b"Subject: s\r\n\r\nx\r\n",
        )
        .await;
    }
    // The slow host's two connections are taken (each stuck for 3 s in
    // DATA) and the rest of its mail waits behind them.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while slow.connections.load(Ordering::SeqCst) < 2 {
        assert!(std::time::Instant::now() < deadline, "slow host never busy");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = std::time::Instant::now();
    let id = node
        .send(
            "a@example.org",
            &["f@fast.example"],
            b"Subject: f\r\n\r\nx\r\n",
        )
        .await;
    node.final_events(&id, 1).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "fast mail waited {took:?}");
    // The slow host never had more than its two connections.
    assert!(slow.connections.load(Ordering::SeqCst) <= 2);
}

#[tokio::test]
async fn an_hourly_limit_makes_mail_wait_without_counting_attempts() {
    let sink = start_sink(SinkOptions::default()).await;
    let node = start_shaped_node(
        vec![route("*", &sink, RouteTls::None, None)],
        None,
        25,
        // Idle connections close at once, so the destination goes idle
        // between the two batches: its hour must still count.
        shaping("[queue]\nconnection_idle = \"50ms\"\n[[destination]]\nmatch = \"127.0.0.1\"\nmax_messages_per_hour = 2\n"),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..2 {
        let rcpt = format!("h{i}@example.net");
        ids.push(
            node.send(
                "a@example.org",
                &[rcpt.as_str()],
                b"Subject: h\r\n\r\nx\r\n",
            )
            .await,
        );
    }
    for id in &ids {
        node.final_events(id, 1).await;
    }
    // The idle connection has closed (connection_idle, 50 ms): the
    // destination is idle before the second batch.
    wait_for("the idle connection closed", || {
        sink.closed.load(Ordering::SeqCst) == sink.connections.load(Ordering::SeqCst)
    })
    .await;
    for i in 2..4 {
        let rcpt = format!("h{i}@example.net");
        node.send(
            "a@example.org",
            &[rcpt.as_str()],
            b"Subject: h\r\n\r\nx\r\n",
        )
        .await;
    }
    // Both held until the hour has room (polled for): from then on they
    // cannot reach the sink during the test.
    let waiting = node.wait_held(2).await;
    assert_eq!(sink.received.lock().unwrap().len(), 2);
    for m in &waiting {
        let r = &m.recipients[0];
        assert_eq!(r.attempts, 0, "waiting for the limit is not an attempt");
    }
    let deferred = node
        .store
        .events(EventFilter {
            kinds: vec![EventKind::Deferred],
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert!(deferred.is_empty(), "{deferred:?}");
}

#[tokio::test]
async fn a_source_address_cap_holds_across_destinations() {
    let one = start_sink(SinkOptions::default()).await;
    let two = start_sink(SinkOptions::default()).await;
    let node = start_shaped_node(
        vec![
            route("one.example", &one, RouteTls::None, None),
            route("two.example", &two, RouteTls::None, None),
        ],
        None,
        25,
        shaping(
            "[queue]\ndefault_ip_pool = \"warm\"\n[[ip_pool]]\nname = \"warm\"\n[[ip_pool.address]]\nip = \"127.0.0.2\"\nmax_messages_per_hour = 3\n",
        ),
    )
    .await;
    for i in 0..3 {
        let a = format!("a{i}@one.example");
        let b = format!("b{i}@two.example");
        node.send("a@example.org", &[a.as_str()], b"Subject: s\r\n\r\nx\r\n")
            .await;
        node.send("a@example.org", &[b.as_str()], b"Subject: s\r\n\r\nx\r\n")
            .await;
    }
    // Three held for the next hour (polled for); the other three sent.
    let waiting = node.wait_held(3).await;
    let sent = one.received.lock().unwrap().len() + two.received.lock().unwrap().len();
    assert_eq!(
        sent, 3,
        "the address sent its hourly 3, whatever the destination"
    );
    assert!(waiting.iter().all(|m| m.recipients[0].attempts == 0));
}

/// A TLS acceptor presenting a self-signed certificate for `names`; the
/// certificate's PEM is appended to `ca` (the trust anchors of the test).
fn acceptor_for(names: &[&str], ca: &std::path::Path) -> tokio_rustls::TlsAcceptor {
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let mut pem = std::fs::read_to_string(ca).unwrap_or_default();
    pem.push_str(&ck.cert.pem());
    std::fs::write(ca, pem).unwrap();
    acceptor_of(&ck)
}

/// An HTTPS server answering `/.well-known/mta-sts.txt` with the policy
/// for the domain in the Host header; counts fetches per host.
async fn start_policy_server(
    acceptor: tokio_rustls::TlsAcceptor,
    policies: HashMap<String, String>,
) -> (u16, Arc<Mutex<HashMap<String, usize>>>) {
    let server = start_policy_server_on(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        acceptor,
        policies,
    );
    (server.port, server.fetches)
}

struct PolicyServer {
    port: u16,
    /// Requests read (after a completed TLS handshake), per Host header.
    fetches: Arc<Mutex<HashMap<String, usize>>>,
    /// TCP connections accepted, whatever became of their handshake.
    connections: Arc<AtomicUsize>,
}

/// As `start_policy_server`, on a listener the test bound.
fn start_policy_server_on(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    policies: HashMap<String, String>,
) -> PolicyServer {
    let port = listener.local_addr().unwrap().port();
    let fetches = Arc::new(Mutex::new(HashMap::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (counted, accepted) = (fetches.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            let (acceptor, policies, counted) =
                (acceptor.clone(), policies.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut io = BufReader::new(tls);
                let mut host = String::new();
                loop {
                    let mut line = String::new();
                    if io.read_line(&mut line).await.unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(h) = line.to_ascii_lowercase().strip_prefix("host:") {
                        host = h.trim().to_string();
                    }
                }
                *counted.lock().unwrap().entry(host.clone()).or_default() += 1;
                let response = match policies.get(&host) {
                    Some(p) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{p}",
                        p.len()
                    ),
                    None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
                };
                let _ = io.get_mut().write_all(response.as_bytes()).await;
                let _ = io.get_mut().shutdown().await;
            });
        }
    });
    PolicyServer {
        port,
        fetches,
        connections,
    }
}

/// A `metrics` recorder keeping counters in memory, for a test to read
/// what the delivery code counted. Installed with
/// `metrics::set_default_local_recorder`, it records what runs on the
/// test's thread only: `#[tokio::test]` runs the node and every task it
/// spawns on that thread (a current-thread runtime), and the tests that
/// run beside it in other threads count elsewhere.
#[derive(Default)]
struct Counters(Arc<Mutex<HashMap<CounterKey, u64>>>);

/// A counter's name and its labels, sorted.
type CounterKey = (String, Vec<(String, String)>);

struct CounterCell {
    key: CounterKey,
    counts: Arc<Mutex<HashMap<CounterKey, u64>>>,
}

impl metrics::CounterFn for CounterCell {
    fn increment(&self, value: u64) {
        *self
            .counts
            .lock()
            .unwrap()
            .entry(self.key.clone())
            .or_default() += value;
    }

    fn absolute(&self, value: u64) {
        let mut counts = self.counts.lock().unwrap();
        let c = counts.entry(self.key.clone()).or_default();
        *c = (*c).max(value);
    }
}

impl metrics::Recorder for Counters {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let mut labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        labels.sort();
        metrics::Counter::from_arc(Arc::new(CounterCell {
            key: (key.name().to_owned(), labels),
            counts: self.0.clone(),
        }))
    }

    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

impl Counters {
    /// The counter `name` summed by the value of its label `label`
    /// (counters without that label are left out).
    fn by(&self, name: &str, label: &str) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        for ((n, labels), count) in self.0.lock().unwrap().iter() {
            if n != name {
                continue;
            }
            if let Some((_, v)) = labels.iter().find(|(k, _)| k == label) {
                *out.entry(v.clone()).or_default() += count;
            }
        }
        out
    }
}

/// The log lines written on the test's thread, as `postern serve` formats
/// them (without colours or times). Installed with
/// `tracing::subscriber::set_default`, so, like `Counters`, it sees the
/// node's tasks (they run on the test's thread) and not the tests beside it.
#[derive(Clone, Default)]
struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .without_time()
                .with_max_level(tracing::Level::INFO)
                .finish(),
        )
    }

    /// The captured lines at `level` ("WARN") that contain every one of
    /// `parts`.
    fn lines(&self, level: &str, parts: &[&str]) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.trim_start().starts_with(level) && parts.iter().all(|p| l.contains(p)))
            .map(str::to_owned)
            .collect()
    }
}

/// For each of `domains` ("passes" for passes.example): the `_mta-sts` TXT
/// record `txt` (RFC 8461 §3.1) and the policy host's address, 127.0.0.1,
/// where the tests' policy server listens.
fn mta_sts_records(domains: &[&str], txt: &str) -> Vec<(&'static str, RData)> {
    let mut records = Vec::new();
    for d in domains {
        let txt_name: &'static str = Box::leak(format!("_mta-sts.{d}.example.").into_boxed_str());
        let host: &'static str = Box::leak(format!("mta-sts.{d}.example.").into_boxed_str());
        records.push((
            txt_name,
            RData::TXT(hickory_proto::rr::rdata::TXT::new(vec![txt.to_string()])),
        ));
        records.push((host, RData::A(A(Ipv4Addr::LOCALHOST))));
    }
    records
}

/// `[(value, count)]` as the map `Counters::by` returns.
fn counted(pairs: &[(&str, u64)]) -> std::collections::BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Polls `condition` every 10 ms until it holds; panics naming `what`
/// after 10 s.
async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Node {
    /// Waits until exactly `count` messages are queued, every recipient
    /// held back until at least 50 minutes from now (a limit's hour), and
    /// returns them: once they are, none of them can be sent during the
    /// test.
    async fn wait_held(&self, count: usize) -> Vec<postern_store::QueuedMessage> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let waiting = self
                .store
                .queued_messages(postern_store::QueueFilter::default())
                .await
                .unwrap();
            let later = postern_core::time::now_millis() + 3_000_000;
            if waiting.len() == count
                && waiting
                    .iter()
                    .all(|m| m.recipients.iter().all(|r| r.next_attempt > later))
            {
                return waiting;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not {count} held messages: {waiting:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The message's events of `kind`, oldest first.
    async fn events_of(&self, id: &str, kind: EventKind) -> Vec<postern_core::Event> {
        self.store
            .events(EventFilter {
                message_id: Some(id.into()),
                kinds: vec![kind],
                ..EventFilter::default()
            })
            .await
            .unwrap()
    }

    /// Waits until the message has `n` events of `kind` (10 s at most).
    async fn wait_count(&self, id: &str, kind: EventKind, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.events_of(id, kind).await;
            if events.len() >= n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n} {kind} events for {id}",
                events.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for an event of `kind` for the message.
    /// Sends `body` from a@example.org to `rcpt` alone and waits for the
    /// message's first event of `kind`.
    async fn send_until(&self, rcpt: &str, body: &[u8], kind: EventKind) -> postern_core::Event {
        let id = self.send("a@example.org", &[rcpt], body).await;
        self.wait_kind(&id, kind).await
    }

    async fn wait_kind(&self, id: &str, kind: EventKind) -> postern_core::Event {
        for _ in 0..200 {
            if let Some(e) = self.events_of(id, kind).await.into_iter().next() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let all = self
            .store
            .events(EventFilter {
                message_id: Some(id.into()),
                ..EventFilter::default()
            })
            .await
            .unwrap();
        panic!("no {kind} event for {id}: {all:?}");
    }
}

#[tokio::test]
async fn mta_sts_policies_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    // MX sinks share one port on different loopback addresses.
    let good_listener = TcpListener::bind("127.0.0.11:0").await.unwrap();
    let port = good_listener.local_addr().unwrap().port();
    let good = start_sink_on(
        good_listener,
        SinkOptions {
            tls: Some(acceptor_for(&["mx.good.example"], &ca)),
            ..Default::default()
        },
    );
    let bad = start_sink_on(
        TcpListener::bind(("127.0.0.12", port)).await.unwrap(),
        SinkOptions {
            // A valid chain, for another name.
            tls: Some(acceptor_for(&["wrong.example"], &ca)),
            ..Default::default()
        },
    );
    let plain = start_sink_on(
        TcpListener::bind(("127.0.0.13", port)).await.unwrap(),
        SinkOptions::default(),
    );
    let policy = |mode: &str, mx: &str| {
        format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
    };
    let policies: HashMap<String, String> = [
        (
            "mta-sts.enforce.example",
            policy("enforce", "mx.good.example"),
        ),
        (
            "mta-sts.badcert.example",
            policy("enforce", "mx.bad.example"),
        ),
        (
            "mta-sts.notls.example",
            policy("enforce", "*.plain.example"),
        ),
        (
            "mta-sts.unlisted.example",
            policy("enforce", "mx.elsewhere.example"),
        ),
        (
            "mta-sts.testing.example",
            policy("testing", "mx.bad.example"),
        ),
    ]
    .into_iter()
    .map(|(h, p)| (h.to_string(), p))
    .collect();
    let policy_names: Vec<&str> = policies.keys().map(String::as_str).collect();
    let (policy_port, fetches) =
        start_policy_server(acceptor_for(&policy_names, &ca), policies.clone()).await;

    let mx = |host: &str| RData::MX(MX::new(10, Name::from_str(host).unwrap()));
    let a = |ip: [u8; 4]| RData::A(A(Ipv4Addr::from(ip)));
    let mut records = vec![
        ("mx.good.example.", a([127, 0, 0, 11])),
        ("mx.bad.example.", a([127, 0, 0, 12])),
        ("mx.plain.example.", a([127, 0, 0, 13])),
        ("enforce.example.", mx("mx.good.example.")),
        ("badcert.example.", mx("mx.bad.example.")),
        ("notls.example.", mx("mx.plain.example.")),
        ("unlisted.example.", mx("mx.good.example.")),
        ("testing.example.", mx("mx.bad.example.")),
        // No policy at all: opportunistic, plaintext allowed.
        ("nopolicy.example.", mx("mx.plain.example.")),
    ];
    records.extend(mta_sts_records(
        &["enforce", "badcert", "notls", "unlisted", "testing"],
        "v=STSv1; id=20261123;",
    ));
    let dns = start_dns(records).await;
    let node = start_node_full(
        vec![],
        Some(dns),
        port,
        Shaping::default(),
        Some((ca.clone(), policy_port)),
    )
    .await;
    let send = |rcpt: &'static str| {
        let node = &node;
        async move {
            node.send("a@example.org", &[rcpt], b"Subject: s\r\n\r\nx\r\n")
                .await
        }
    };

    // enforce + a valid certificate for a listed MX: delivered over TLS.
    let ok = send("u@enforce.example").await;
    let e = node.wait_kind(&ok, EventKind::Delivered).await;
    assert_eq!(e.info.tls_policy.as_deref(), Some("mta-sts"));
    assert!(e.info.tls.is_some());
    let ok2 = send("v@enforce.example").await;
    node.wait_kind(&ok2, EventKind::Delivered).await;

    // enforce + a certificate for another name: deferred, never sent.
    let badcert = send("u@badcert.example").await;
    let e = node.wait_kind(&badcert, EventKind::Deferred).await;
    assert!(e.detail.contains("TLS handshake"), "{}", e.detail);
    // enforce + no STARTTLS: deferred, never sent in plaintext.
    let notls = send("u@notls.example").await;
    let e = node.wait_kind(&notls, EventKind::Deferred).await;
    assert!(e.detail.contains("does not offer STARTTLS"), "{}", e.detail);
    // enforce + an MX the policy does not list: deferred.
    let unlisted = send("u@unlisted.example").await;
    let e = node.wait_kind(&unlisted, EventKind::Deferred).await;
    assert!(e.detail.contains("matches its policy"), "{}", e.detail);
    // testing: delivered despite the wrong certificate (and reported).
    let testing = send("u@testing.example").await;
    let e = node.wait_kind(&testing, EventKind::Delivered).await;
    assert_eq!(e.info.tls_policy.as_deref(), Some("mta-sts-testing"));
    // No policy: opportunistic, plaintext when there is no STARTTLS.
    let nopolicy = send("u@nopolicy.example").await;
    let e = node.wait_kind(&nopolicy, EventKind::Delivered).await;
    assert_eq!(e.info.tls_policy.as_deref(), Some("opportunistic"));
    assert!(e.info.tls.is_none());

    // Let the deferred ones be retried (every 200-400 ms here): after
    // three attempts each, still nothing leaks.
    for id in [&badcert, &notls, &unlisted] {
        node.wait_count(id, EventKind::Deferred, 3).await;
    }
    let mut at_good = rcpts_at(&good);
    at_good.sort();
    assert_eq!(at_good, ["u@enforce.example", "v@enforce.example"]);
    assert!(good.received.lock().unwrap().iter().all(|r| r.tls));
    assert_eq!(rcpts_at(&bad), ["u@testing.example"]);
    assert_eq!(rcpts_at(&plain), ["u@nopolicy.example"]);
    assert_eq!(
        bad.mail_commands.load(Ordering::SeqCst),
        1,
        "the enforce domain never reached MAIL on the wrong-name host"
    );
    assert_eq!(
        plain.mail_commands.load(Ordering::SeqCst),
        1,
        "the enforce domain never reached MAIL on the host without TLS"
    );
    // Policies are cached: one fetch per domain despite retries.
    let fetched = fetches.lock().unwrap().clone();
    assert_eq!(
        fetched.get("mta-sts.enforce.example"),
        Some(&1),
        "{fetched:?}"
    );
    assert_eq!(
        fetched.get("mta-sts.badcert.example"),
        Some(&1),
        "{fetched:?}"
    );

    // TLS-RPT (RFC 8460): every session attempt to an MX host is recorded
    // under the policy it went by, each failure with its §4.3 type.
    let sessions = |domain: &'static str| {
        let store = node.store.clone();
        async move {
            let pending = postern_store::ReportDataStore::tls_pending(store.as_ref())
                .await
                .unwrap();
            let mut out: Vec<(String, String, u64)> = Vec::new();
            for p in pending.into_iter().filter(|p| p.policy_domain == domain) {
                for (policy, failure, n) in p.rows {
                    let policy: serde_json::Value = serde_json::from_str(&policy).unwrap();
                    let result = match failure {
                        None => "success".to_owned(),
                        Some(f) => {
                            let f: serde_json::Value = serde_json::from_str(&f).unwrap();
                            f["result-type"].as_str().unwrap().to_owned()
                        }
                    };
                    out.push((
                        policy["policy-type"].as_str().unwrap().to_owned(),
                        result,
                        n,
                    ));
                }
            }
            out
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let badcert = sessions("badcert.example").await;
        let notls = sessions("notls.example").await;
        let testing = sessions("testing.example").await;
        let nopolicy = sessions("nopolicy.example").await;
        let enforce = sessions("enforce.example").await;
        let settled = badcert.first().is_some_and(|r| r.2 >= 3)
            && notls.first().is_some_and(|r| r.2 >= 3)
            && !testing.is_empty()
            && !nopolicy.is_empty()
            && !enforce.is_empty();
        if settled || tokio::time::Instant::now() > deadline {
            let one = |rows: &[(String, String, u64)]| -> Vec<(String, String)> {
                rows.iter()
                    .map(|(p, r, _)| (p.clone(), r.clone()))
                    .collect()
            };
            let pair = |p: &str, r: &str| vec![(p.to_owned(), r.to_owned())];
            // A valid certificate for a listed MX: success (two messages,
            // one or two sessions: a kept connection may carry both).
            assert_eq!(one(&enforce), pair("sts", "success"), "{enforce:?}");
            // A certificate for another name, under enforce: refused each
            // time, never a success.
            assert_eq!(
                one(&badcert),
                pair("sts", "certificate-host-mismatch"),
                "{badcert:?}"
            );
            assert!(badcert[0].2 >= 3, "{badcert:?}");
            assert_eq!(
                one(&notls),
                pair("sts", "starttls-not-supported"),
                "{notls:?}"
            );
            // testing: delivered, and the certificate reported as enforce
            // would have refused it.
            assert_eq!(
                one(&testing),
                pair("sts", "certificate-host-mismatch"),
                "{testing:?}"
            );
            // No policy, no STARTTLS: delivered in plaintext, reported.
            assert_eq!(
                one(&nopolicy),
                pair("no-policy-found", "starttls-not-supported"),
                "{nopolicy:?}"
            );
            // The MX the policy does not list was never connected to.
            assert!(sessions("unlisted.example").await.is_empty());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// RFC 8461 §3.3: the policy is fetched over HTTPS, and the server's
/// certificate must chain to a trusted root (here the Mozilla roots plus
/// the test's `queue.tls_ca_file`) and carry `mta-sts.<domain>`. A policy
/// server with a self-signed certificate for the right name, not in the
/// CA file, gives no policy: the domain is served as one without a policy
/// (opportunistic, so plaintext to a host without STARTTLS), and the fetch
/// is counted as failed. A second domain with the same `enforce` policy
/// from a trusted server is held to it (deferred, its only MX host is not
/// listed): what the first would get if its policy were taken.
#[tokio::test]
async fn an_mta_sts_policy_behind_an_untrusted_certificate_is_not_used() {
    use hickory_proto::rr::rdata::TXT;
    let counters = Counters::default();
    let _recording = metrics::set_default_local_recorder(&counters);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let plain = start_sink_on(
        TcpListener::bind("127.0.0.71:0").await.unwrap(),
        SinkOptions::default(),
    );
    // Both policy servers on the one port policies are fetched from, on
    // two addresses.
    let trusted_listener = TcpListener::bind("127.0.0.72:0").await.unwrap();
    let policy_port = trusted_listener.local_addr().unwrap().port();
    let untrusted_listener = TcpListener::bind(("127.0.0.73", policy_port))
        .await
        .unwrap();
    let policy =
        "version: STSv1\r\nmode: enforce\r\nmx: mx.elsewhere.example\r\nmax_age: 86400\r\n";
    let serving = |host: &str| HashMap::from([(host.to_string(), policy.to_string())]);
    let trusted = start_policy_server_on(
        trusted_listener,
        acceptor_for(&["mta-sts.trusted.example"], &ca),
        serving("mta-sts.trusted.example"),
    );
    let rogue =
        rcgen::generate_simple_self_signed(vec!["mta-sts.untrusted.example".into()]).unwrap();
    let untrusted = start_policy_server_on(
        untrusted_listener,
        acceptor_of(&rogue),
        serving("mta-sts.untrusted.example"),
    );

    let mx = |host: &str| RData::MX(MX::new(10, Name::from_str(host).unwrap()));
    let a = |ip: [u8; 4]| RData::A(A(Ipv4Addr::from(ip)));
    let txt = || RData::TXT(TXT::new(vec!["v=STSv1; id=20261202;".to_string()]));
    let dns = start_dns(vec![
        ("mx.plain.example.", a([127, 0, 0, 71])),
        ("trusted.example.", mx("mx.plain.example.")),
        ("_mta-sts.trusted.example.", txt()),
        ("mta-sts.trusted.example.", a([127, 0, 0, 72])),
        ("untrusted.example.", mx("mx.plain.example.")),
        ("_mta-sts.untrusted.example.", txt()),
        ("mta-sts.untrusted.example.", a([127, 0, 0, 73])),
    ])
    .await;
    let node = start_node_full(
        vec![],
        Some(dns),
        plain.addr.port(),
        Shaping::default(),
        Some((ca, policy_port)),
    )
    .await;

    let held = node
        .send(
            "a@example.org",
            &["u@trusted.example"],
            b"Subject: s\r\n\r\nx\r\n",
        )
        .await;
    let e = node.wait_kind(&held, EventKind::Deferred).await;
    assert!(e.detail.contains("matches its policy"), "{}", e.detail);

    let e = node
        .send_until(
            "u@untrusted.example",
            b"Subject: s\r\n\r\nx\r\n",
            EventKind::Delivered,
        )
        .await;
    assert_eq!(e.info.tls_policy.as_deref(), Some("opportunistic"));
    assert!(e.info.tls.is_none(), "{:?}", e.info.tls);
    assert_eq!(rcpts_at(&plain), ["u@untrusted.example"]);

    // The untrusted server was reached, and its handshake is where the
    // fetch ended: it never read a request.
    assert!(untrusted.connections.load(Ordering::SeqCst) >= 1);
    assert!(untrusted.fetches.lock().unwrap().is_empty());
    assert_eq!(
        *trusted.fetches.lock().unwrap(),
        HashMap::from([("mta-sts.trusted.example".to_string(), 1)])
    );
    assert_eq!(
        counters.by("postern_mta_sts_fetch_total", "result"),
        counted(&[("ok", 1), ("failed", 1)])
    );
}

/// README: under `testing` mail is delivered, "and the failures are
/// logged and counted" (RFC 8461 §5: a testing policy's failures are
/// reported, not acted on). Four domains under `testing`, each delivered:
/// one whose MX passes (counted as such, not as a failure), one whose MX
/// presents a certificate for another name, one whose MX the policy does
/// not list, and one whose MX offers no STARTTLS. Each failure is counted
/// once under its own result of `postern_mta_sts_total`, and nothing else.
#[tokio::test]
async fn mta_sts_testing_failures_are_counted() {
    let counters = Counters::default();
    let _recording = metrics::set_default_local_recorder(&counters);
    let logs = LogCapture::default();
    let _logging = logs.install();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    // MX sinks share one port on different loopback addresses; every host
    // is its own destination, so no connection is reused across domains
    // (a reused connection has no handshake to check).
    let good_listener = TcpListener::bind("127.0.0.74:0").await.unwrap();
    let port = good_listener.local_addr().unwrap().port();
    let tls = |names: &[&str]| SinkOptions {
        tls: Some(acceptor_for(names, &ca)),
        ..Default::default()
    };
    let good = start_sink_on(good_listener, tls(&["mx.good.example"]));
    let other = start_sink_on(
        TcpListener::bind(("127.0.0.75", port)).await.unwrap(),
        tls(&["mx.other.example"]),
    );
    // A valid chain, for another name.
    let bad = start_sink_on(
        TcpListener::bind(("127.0.0.76", port)).await.unwrap(),
        tls(&["wrong.example"]),
    );
    let plain = start_sink_on(
        TcpListener::bind(("127.0.0.77", port)).await.unwrap(),
        SinkOptions::default(),
    );
    let testing =
        |mx: &str| format!("version: STSv1\r\nmode: testing\r\nmx: {mx}\r\nmax_age: 86400\r\n");
    let policies: HashMap<String, String> = [
        ("mta-sts.passes.example", testing("mx.good.example")),
        ("mta-sts.badcert.example", testing("mx.bad.example")),
        ("mta-sts.unlisted.example", testing("mx.listed.example")),
        ("mta-sts.notls.example", testing("mx.plain.example")),
    ]
    .into_iter()
    .map(|(h, p)| (h.to_string(), p))
    .collect();
    let policy_names: Vec<&str> = policies.keys().map(String::as_str).collect();
    let (policy_port, _) = start_policy_server(acceptor_for(&policy_names, &ca), policies).await;

    let mx = |host: &str| RData::MX(MX::new(10, Name::from_str(host).unwrap()));
    let a = |ip: [u8; 4]| RData::A(A(Ipv4Addr::from(ip)));
    let mut records = vec![
        ("mx.good.example.", a([127, 0, 0, 74])),
        ("mx.other.example.", a([127, 0, 0, 75])),
        ("mx.bad.example.", a([127, 0, 0, 76])),
        ("mx.plain.example.", a([127, 0, 0, 77])),
        ("passes.example.", mx("mx.good.example.")),
        ("badcert.example.", mx("mx.bad.example.")),
        ("unlisted.example.", mx("mx.other.example.")),
        ("notls.example.", mx("mx.plain.example.")),
    ];
    records.extend(mta_sts_records(
        &["passes", "badcert", "unlisted", "notls"],
        "v=STSv1; id=1;",
    ));
    let dns = start_dns(records).await;
    let node = start_node_full(
        vec![],
        Some(dns),
        port,
        Shaping::default(),
        Some((ca.clone(), policy_port)),
    )
    .await;

    for d in ["passes", "badcert", "unlisted", "notls"] {
        let rcpt = format!("u@{d}.example");
        let id = node
            .send(
                "a@example.org",
                &[rcpt.as_str()],
                b"Subject: s\r\n\r\nx\r\n",
            )
            .await;
        let e = node.wait_kind(&id, EventKind::Delivered).await;
        assert_eq!(e.info.tls_policy.as_deref(), Some("mta-sts-testing"), "{d}");
    }
    assert_eq!(rcpts_at(&good), ["u@passes.example"]);
    assert_eq!(rcpts_at(&bad), ["u@badcert.example"]);
    assert_eq!(rcpts_at(&other), ["u@unlisted.example"]);
    assert_eq!(rcpts_at(&plain), ["u@notls.example"]);
    // Every policy was fetched and taken (the results below need one).
    assert_eq!(
        counters.by("postern_mta_sts_fetch_total", "result"),
        counted(&[("ok", 4)])
    );
    // passes: its certificate checks out; unlisted: the host is not in
    // the policy, though its certificate is good; badcert: the name is
    // wrong; notls: no STARTTLS at all.
    assert_eq!(
        counters.by("postern_mta_sts_total", "result"),
        counted(&[
            ("testing_ok", 2),
            ("testing_mx_mismatch", 1),
            ("testing_failure", 1),
            ("testing_no_tls", 1),
        ])
    );
    // …and each failure is logged as a warning naming where it happened
    // (README: "under `testing` it is delivered and the failures are
    // logged and counted"); the domain that passes logs none.
    for (what, host) in [
        ("MX host not in the policy", "mx.other.example"),
        ("no STARTTLS", "mx.plain.example"),
        (
            "certificate would be refused under enforce",
            "mx.bad.example",
        ),
    ] {
        assert_eq!(
            logs.lines("WARN", &["MTA-STS testing", what, host]).len(),
            1,
            "{what} for {host}"
        );
    }
    assert_eq!(logs.lines("WARN", &["MTA-STS testing"]).len(), 3);
    assert!(logs.lines("WARN", &["mx.good.example"]).is_empty());
}

#[tokio::test]
async fn a_stored_mta_sts_policy_binds_after_a_restart_without_dns() {
    use postern_delivery::mta_sts::{Mode, MtaSts};
    use postern_store::TlsPolicyStore;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    // Fetched before the restart…
    store
        .put_mta_sts_policy(
            "enforce.example".into(),
            "7".into(),
            "version: STSv1\nmode: enforce\nmx: mx.good.example\nmax_age: 86400\n".into(),
            postern_core::time::now_millis() + 3_600_000,
        )
        .await
        .unwrap();
    // …and now DNS says nothing at all (the TXT record is stripped).
    let dns = start_dns(vec![]).await;
    let resolver = Arc::new(MxResolver::new(&[dns]).unwrap());
    let (tls, _) = postern_delivery::tls::webpki_config(None).unwrap();
    let sts = MtaSts::new(resolver.clone(), tls.clone(), 443, Some(store.clone()));
    let p = sts
        .policy("enforce.example")
        .await
        .expect("the stored policy");
    assert_eq!(p.mode, Mode::Enforce);
    assert!(p.allows("mx.good.example") && !p.allows("mx.evil.example"));
    // Without the stored copy there would be no policy: the downgrade the
    // store prevents.
    let forgetful = MtaSts::new(resolver, tls, 443, None);
    assert!(forgetful.policy("enforce.example").await.is_none());
}

#[tokio::test]
async fn internationalized_domains_are_resolved_by_their_a_labels() {
    let sink = start_sink(SinkOptions {
        smtputf8: true,
        ..Default::default()
    })
    .await;
    let mx = |host: &str| RData::MX(MX::new(10, Name::from_str(host).unwrap()));
    let a = |ip: [u8; 4]| RData::A(A(Ipv4Addr::from(ip)));
    // The zone knows only the A-label (RFC 5890) form of bücher.example.
    let dns = start_dns(vec![
        ("xn--bcher-kva.example.", mx("mx.xn--bcher-kva.example.")),
        ("mx.xn--bcher-kva.example.", a([127, 0, 0, 1])),
    ])
    .await;
    let node = start_node(vec![], Some(dns), sink.addr.port()).await;
    let id = node
        .send_envelope(
            None,
            "absender@example.org",
            &["käufer@bücher.example"],
            "Subject: Grüße\r\n\r\nx\r\n".as_bytes(),
            true,
        )
        .await;
    let events = node.final_events(&id, 1).await;
    assert!(
        events.iter().any(|e| e.kind == EventKind::Delivered),
        "{events:?}"
    );
    let got = sink.received.lock().unwrap().clone();
    // RFC 6531: with SMTPUTF8 the address goes out as it came in.
    assert_eq!(got[0].rcpts, ["käufer@bücher.example"]);
}

/// A DNSSEC-signed zone served on loopback: every answer carries its RRSIG
/// (ECDSA P-256, RFC 6605), the zone's DNSKEY is returned signed by itself,
/// and a name or type that is not there gets NODATA with a signed SOA and
/// a signed NSEC at the name denying the type (enough for the validator's
/// proof of absence). Returns the server's address and the key to trust.
/// Answers for names in `forged` carry a corrupted signature (an
/// attacker's record).
async fn start_signed_dns(
    zone: &'static str,
    records: Vec<(&'static str, RData)>,
    forged: &'static [&'static str],
) -> (SocketAddr, Vec<u8>) {
    start_signed_dns_strippable(zone, records, forged, Arc::new(AtomicBool::new(false))).await
}

/// As `start_signed_dns`; while `strip` is true, answers lose their RRSIGs
/// and denials their NSEC records (an on-path attacker, or a resolver that
/// drops DNSSEC data).
async fn start_signed_dns_strippable(
    zone: &'static str,
    records: Vec<(&'static str, RData)>,
    forged: &'static [&'static str],
    strip: Arc<AtomicBool>,
) -> (SocketAddr, Vec<u8>) {
    use hickory_proto::dnssec::crypto::EcdsaSigningKey;
    use hickory_proto::dnssec::rdata::{DNSSECRData, DNSKEY, NSEC, RRSIG};
    use hickory_proto::dnssec::{Algorithm, SigSigner, SigningKey, TBS};
    use hickory_proto::rr::rdata::SOA;
    use hickory_proto::rr::{DNSClass, RecordSet};

    let pkcs8 = EcdsaSigningKey::generate_pkcs8(Algorithm::ECDSAP256SHA256).unwrap();
    let key = EcdsaSigningKey::from_pkcs8(&pkcs8, Algorithm::ECDSAP256SHA256).unwrap();
    let public = key.to_public_key().unwrap();
    let anchor = hickory_proto::dnssec::PublicKey::public_bytes(&public).to_vec();
    let dnskey = DNSKEY::from_key(&public);
    let zone_name = Name::from_str(zone).unwrap();
    let signer = Arc::new(SigSigner::dnssec(
        dnskey.clone(),
        Box::new(key),
        zone_name.clone(),
        Duration::from_secs(86_400),
    ));
    let mut table: HashMap<(Name, RecordType), Vec<RData>> = HashMap::new();
    for (name, rdata) in records {
        table
            .entry((Name::from_str(name).unwrap(), rdata.record_type()))
            .or_default()
            .push(rdata);
    }
    table.insert(
        (zone_name.clone(), RecordType::DNSKEY),
        vec![RData::DNSSEC(DNSSECRData::DNSKEY(dnskey))],
    );
    let soa = RData::SOA(SOA::new(
        Name::from_str(&format!("ns.{zone}")).unwrap(),
        Name::from_str(&format!("hostmaster.{zone}")).unwrap(),
        1,
        3600,
        600,
        86400,
        60,
    ));
    table.insert((zone_name.clone(), RecordType::SOA), vec![soa]);
    let table = Arc::new(table);

    // An RRset with its signature.
    let signed = move |signer: &SigSigner, name: &Name, rdatas: &[RData]| -> Vec<Record> {
        let rtype = rdatas[0].record_type();
        let mut set = RecordSet::with_ttl(name.clone(), rtype, 60);
        for r in rdatas {
            set.add_rdata(r.clone());
        }
        let now = time::OffsetDateTime::now_utc();
        let inception = now - time::Duration::hours(1);
        let expiration = now + time::Duration::days(1);
        let tbs = TBS::from_rrset(&set, DNSClass::IN, inception, expiration, signer).unwrap();
        let mut sig = signer.sign(&tbs).unwrap();
        if forged
            .iter()
            .any(|f| Name::from_str(f).is_ok_and(|f| &f == name))
        {
            sig[0] ^= 0xff;
        }
        let rrsig = RRSIG::new(
            rtype,
            Algorithm::ECDSAP256SHA256,
            name.num_labels(),
            60,
            expiration.unix_timestamp() as u32,
            inception.unix_timestamp() as u32,
            signer.calculate_key_tag().unwrap(),
            signer.signer_name().clone(),
            sig,
        );
        let mut out: Vec<Record> = rdatas
            .iter()
            .map(|r| Record::from_rdata(name.clone(), 60, r.clone()))
            .collect();
        out.push(Record::from_rdata(
            name.clone(),
            60,
            RData::DNSSEC(DNSSECRData::RRSIG(rrsig)),
        ));
        out
    };

    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(req) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut resp = Message::new();
            resp.set_id(req.id())
                .set_message_type(MessageType::Response)
                .set_op_code(OpCode::Query)
                .set_recursion_desired(req.recursion_desired())
                .set_recursion_available(true)
                .set_authoritative(true)
                // The AD bit a validating upstream sets (RFC 4035 §3.2.3),
                // here on forged and stripped answers too: Postern must
                // judge the signatures, not this claim.
                .set_authentic_data(true);
            if let Some(edns) = req.extensions() {
                let mut e = hickory_proto::op::Edns::new();
                e.set_dnssec_ok(edns.flags().dnssec_ok);
                e.set_max_payload(1232);
                resp.set_edns(e);
            }
            let stripped = strip.load(Ordering::SeqCst);
            let keep = |r: &Record| {
                !stripped || !matches!(r.record_type(), RecordType::RRSIG | RecordType::NSEC)
            };
            for q in req.queries() {
                resp.add_query(q.clone());
                let name = q.name().clone();
                match table.get(&(name.clone(), q.query_type())) {
                    Some(rdatas) => {
                        for r in signed(&signer, &name, rdatas).into_iter().filter(keep) {
                            resp.add_answer(r);
                        }
                    }
                    None => {
                        let soa = &table[&(zone_name.clone(), RecordType::SOA)];
                        for r in signed(&signer, &zone_name, soa).into_iter().filter(keep) {
                            resp.add_name_server(r);
                        }
                        let nsec = RData::DNSSEC(DNSSECRData::NSEC(NSEC::new(
                            Name::from_str(&format!("\\000.{name}")).unwrap_or(name.clone()),
                            [RecordType::RRSIG, RecordType::NSEC],
                        )));
                        for r in signed(&signer, &name, &[nsec]).into_iter().filter(keep) {
                            resp.add_name_server(r);
                        }
                    }
                }
            }
            if let Ok(bytes) = resp.to_vec() {
                let _ = socket.send_to(&bytes, peer).await;
            }
        }
    });
    (addr, anchor)
}

#[tokio::test]
async fn dane_tlsa_records_decide_and_never_fall_back() {
    use hickory_proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
    use hickory_proto::rr::rdata::TLSA;
    // Three MX hosts on one port: the pinned certificate, another
    // certificate, and one without STARTTLS.
    let pinned_listener = TcpListener::bind("127.0.0.21:0").await.unwrap();
    let port = pinned_listener.local_addr().unwrap().port();
    let pinned_cert = rcgen::generate_simple_self_signed(vec!["mx.pinned.test".into()]).unwrap();
    let spki = {
        use base64::Engine;
        let pem = pinned_cert.signing_key.public_key_pem();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    };
    let pinned = start_sink_on(
        pinned_listener,
        SinkOptions {
            tls: Some(acceptor_of(&pinned_cert)),
            ..Default::default()
        },
    );
    let other_cert = rcgen::generate_simple_self_signed(vec!["mx.other.test".into()]).unwrap();
    let other = start_sink_on(
        TcpListener::bind(("127.0.0.22", port)).await.unwrap(),
        SinkOptions {
            tls: Some(acceptor_of(&other_cert)),
            ..Default::default()
        },
    );
    let plain = start_sink_on(
        TcpListener::bind(("127.0.0.23", port)).await.unwrap(),
        SinkOptions::default(),
    );
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spki)
        .as_ref()
        .to_vec();
    // "3 1 1": DANE-EE, the host's public key, SHA-256.
    let tlsa = RData::TLSA(TLSA::new(
        CertUsage::DaneEe,
        Selector::Spki,
        Matching::Sha256,
        digest,
    ));
    let mx = |host: &str| RData::MX(MX::new(10, Name::from_str(host).unwrap()));
    let a = |ip: [u8; 4]| RData::A(A(Ipv4Addr::from(ip)));
    let (dns, anchor) = start_signed_dns(
        "test.",
        vec![
            ("mx.pinned.test.", a([127, 0, 0, 21])),
            ("mx.other.test.", a([127, 0, 0, 22])),
            ("mx.plain.test.", a([127, 0, 0, 23])),
            // The same sink under a name without TLSA records.
            ("mx.bare.test.", a([127, 0, 0, 23])),
            // The pinned key, at the right host.
            ("_25._tcp.mx.pinned.test.", tlsa.clone()),
            ("good.test.", mx("mx.pinned.test.")),
            // The same pin published for a host presenting another key.
            ("_25._tcp.mx.other.test.", tlsa.clone()),
            ("mismatch.test.", mx("mx.other.test.")),
            // A pin for a host that offers no STARTTLS.
            ("_25._tcp.mx.plain.test.", tlsa),
            ("notls.test.", mx("mx.plain.test.")),
            // A host without TLSA (proven absent): opportunistic as usual.
            ("nodane.test.", mx("mx.bare.test.")),
            // A TLSA record whose signature does not verify (forged).
            ("mx.forged.test.", a([127, 0, 0, 23])),
            (
                "_25._tcp.mx.forged.test.",
                RData::TLSA(TLSA::new(
                    CertUsage::DaneEe,
                    Selector::Spki,
                    Matching::Sha256,
                    vec![0; 32],
                )),
            ),
            ("forged.test.", mx("mx.forged.test.")),
        ],
        &["_25._tcp.mx.forged.test."],
    )
    .await;
    let resolver = Arc::new(MxResolver::with_dnssec(&[dns], Some(test_anchor(anchor))).unwrap());
    let probe = resolver.dane_probe().unwrap();
    let node = start_node_with_resolver(resolver, port).await;
    let send = |rcpt: &'static str| {
        let node = &node;
        async move {
            node.send("a@example.org", &[rcpt], b"Subject: d\r\n\r\nx\r\n")
                .await
        }
    };

    let good = send("u@good.test").await;
    let e = node.wait_kind(&good, EventKind::Delivered).await;
    assert_eq!(e.info.tls_policy.as_deref(), Some("dane"));
    assert!(e.info.tls.is_some());

    let mismatch = send("u@mismatch.test").await;
    let e = node.wait_kind(&mismatch, EventKind::Deferred).await;
    assert!(e.detail.contains("DANE"), "{}", e.detail);

    let notls = send("u@notls.test").await;
    let e = node.wait_kind(&notls, EventKind::Deferred).await;
    assert!(e.detail.contains("does not offer STARTTLS"), "{}", e.detail);

    let forged = send("u@forged.test").await;
    let e = node.wait_kind(&forged, EventKind::Deferred).await;
    assert!(e.detail.contains("DANE: no usable MX host"), "{}", e.detail);

    let nodane = send("u@nodane.test").await;
    let e = node.wait_kind(&nodane, EventKind::Delivered).await;
    assert_eq!(e.info.tls_policy.as_deref(), Some("opportunistic"));

    // The refused ones are retried (every 200-400 ms): after three
    // attempts each, still none reached a wrong host.
    for id in [&mismatch, &notls, &forged] {
        node.wait_count(id, EventKind::Deferred, 3).await;
    }
    assert_eq!(rcpts_at(&pinned), ["u@good.test"]);
    assert!(
        rcpts_at(&other).is_empty(),
        "never to a host with another key"
    );
    assert_eq!(
        rcpts_at(&plain),
        ["u@nodane.test"],
        "never in plaintext to a host with TLSA records"
    );
    assert_eq!(other.mail_commands.load(Ordering::SeqCst), 0);
    // The probe validated through the same anchors: DANE was in force.
    assert_eq!(probe.state(), DaneState::Active);
}

/// The trust anchor of `start_signed_dns`'s zone "test.".
fn test_anchor(key: Vec<u8>) -> TrustAnchor {
    TrustAnchor {
        zone: "test.".into(),
        keys: vec![(key, hickory_proto::dnssec::Algorithm::ECDSAP256SHA256)],
    }
}

#[tokio::test]
async fn ipv6_only_mx_hosts_are_reached_over_aaaa() {
    use hickory_proto::rr::rdata::AAAA;
    let v6 = TcpListener::bind("[::1]:0").await.unwrap();
    let port = v6.local_addr().unwrap().port();
    let sink = start_sink_on(v6, SinkOptions::default());
    let mx = |host: &str| RData::MX(MX::new(10, Name::from_str(host).unwrap()));
    let dns = start_dns(vec![
        ("v6.example.", mx("mx6.v6.example.")),
        (
            "mx6.v6.example.",
            RData::AAAA(AAAA(std::net::Ipv6Addr::LOCALHOST)),
        ),
        // No MX and only an AAAA record: the address fallback covers IPv6.
        (
            "v6only.example.",
            RData::AAAA(AAAA(std::net::Ipv6Addr::LOCALHOST)),
        ),
    ])
    .await;
    let node = start_node(vec![], Some(dns), port).await;
    for rcpt in ["u@v6.example", "u@v6only.example"] {
        let id = node
            .send("a@example.org", &[rcpt], b"Subject: 6\r\n\r\nx\r\n")
            .await;
        let e = node.final_events(&id, 1).await;
        let d = e
            .iter()
            .find(|e| e.kind == EventKind::Delivered)
            .expect("delivered");
        assert_eq!(d.info.remote_ip.as_deref(), Some("::1"), "{d:?}");
    }
    assert_eq!(sink.received.lock().unwrap().len(), 2);
}

/// Issue 10 item 13: with DANE on (the default, built-in root anchors) and
/// a resolver that serves no DNSSEC data at all, mail is delivered with the
/// usual TLS policy instead of being deferred as "bogus" until it expires.
#[tokio::test]
async fn dane_on_with_an_unsigned_resolver_still_delivers() {
    let listener = TcpListener::bind("127.0.0.31:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sink = start_sink_on(listener, SinkOptions::default());
    let dns = start_dns(vec![
        (
            "plain.example.",
            RData::MX(MX::new(10, Name::from_str("mx.plain.example.").unwrap())),
        ),
        (
            "mx.plain.example.",
            RData::A(A(Ipv4Addr::new(127, 0, 0, 31))),
        ),
    ])
    .await;
    // As `postern serve` builds it with `dns.dane = true`: the built-in
    // root trust anchors, queried through the configured (loopback) server.
    let resolver = Arc::new(MxResolver::with_dnssec(&[dns], None).unwrap());
    let probe = resolver.dane_probe().unwrap();
    let node = start_node_with_resolver(resolver, port).await;
    let id = node
        .send(
            "a@example.org",
            &["u@plain.example"],
            b"Subject: p\r\n\r\nx\r\n",
        )
        .await;
    let e = node.wait_kind(&id, EventKind::Delivered).await;
    assert_eq!(e.info.tls_policy.as_deref(), Some("opportunistic"));
    assert_eq!(sink.received.lock().unwrap().len(), 1);
    assert_eq!(probe.state(), DaneState::Inactive);
    let status = probe.status();
    assert_eq!(status.zone, ".");
    assert!(
        matches!(status.last, Some(ref r) if r.result.label() == "not_validated"),
        "{status:?}"
    );

    // `dns.dane_required`: the same path defers MX mail instead.
    let resolver = Arc::new(
        MxResolver::with_dnssec(&[dns], None)
            .unwrap()
            .require_dane(true),
    );
    let node = start_node_with_resolver(resolver, port).await;
    let id = node
        .send(
            "a@example.org",
            &["u@plain.example"],
            b"Subject: p\r\n\r\nx\r\n",
        )
        .await;
    let e = node.wait_kind(&id, EventKind::Deferred).await;
    assert!(e.detail.contains("DANE required"), "{}", e.detail);
    assert_eq!(sink.received.lock().unwrap().len(), 1);
}

/// RFC 7672 §2.1.1: once the path has validated, DANE stays on. An
/// on-path attacker who strips the signatures later makes the probe fail,
/// but answers that fail validation still defer; they are not read as
/// "this resolver has no DNSSEC".
#[tokio::test]
async fn dane_stays_active_when_signatures_vanish_later() {
    let listener = TcpListener::bind("127.0.0.32:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sink = start_sink_on(listener, SinkOptions::default());
    let strip = Arc::new(AtomicBool::new(false));
    let mx = |host: &str| RData::MX(MX::new(10, Name::from_str(host).unwrap()));
    let (dns, anchor) = start_signed_dns_strippable(
        "test.",
        vec![
            ("mx.sticky.test.", RData::A(A(Ipv4Addr::new(127, 0, 0, 32)))),
            ("before.test.", mx("mx.sticky.test.")),
            ("after.test.", mx("mx.sticky.test.")),
        ],
        &[],
        strip.clone(),
    )
    .await;
    let resolver = Arc::new(MxResolver::with_dnssec(&[dns], Some(test_anchor(anchor))).unwrap());
    let probe = resolver.dane_probe().unwrap();
    assert_eq!(probe.probe().await, ProbeResult::Secure);
    assert_eq!(probe.state(), DaneState::Active);
    let node = start_node_with_resolver(resolver, port).await;

    // Signed MX, no TLSA (proven absent): delivered as usual.
    let id = node
        .send(
            "a@example.org",
            &["u@before.test"],
            b"Subject: s\r\n\r\nx\r\n",
        )
        .await;
    node.wait_kind(&id, EventKind::Delivered).await;

    strip.store(true, Ordering::SeqCst);
    assert!(matches!(probe.probe().await, ProbeResult::NotValidated(_)));
    assert_eq!(probe.state(), DaneState::Active, "Active is sticky");
    let id = node
        .send(
            "a@example.org",
            &["u@after.test"],
            b"Subject: s\r\n\r\nx\r\n",
        )
        .await;
    let e = node.wait_kind(&id, EventKind::Deferred).await;
    assert!(e.detail.contains("DNSSEC"), "{}", e.detail);
    // Retried (every 200-400 ms) and deferred again: not sent meanwhile.
    node.wait_count(&id, EventKind::Deferred, 2).await;
    assert_eq!(rcpts_at(&sink), ["u@before.test"]);
}

/// A certificate authority (CA:TRUE, may sign certificates) named `name`.
fn test_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// A TLS acceptor presenting a server certificate for `names` issued by
/// `ca`, with the chain `[leaf, ca]` when `send_ca`, else `[leaf]`.
fn issued_acceptor(
    names: &[&str],
    ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    send_ca: bool,
) -> tokio_rustls::TlsAcceptor {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = params.signed_by(&key, ca).unwrap();
    let mut chain = vec![leaf.der().clone()];
    if send_ca {
        chain.push(ca.der().clone());
    }
    acceptor_with(chain, &key)
}

/// What each sink took, recipients only.
fn rcpts_at(sink: &Sink) -> Vec<String> {
    sink.received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|r| r.rcpts.clone())
        .collect()
}

/// RFC 7672 §3.1.2, DANE-TA(2): the record names a trust anchor; the host
/// must send it in its chain (even a self-signed root), the chain must
/// validate up to it, and the leaf must carry the MX host's name (§3.2.2).
/// A chain from another CA, one that leaves the anchor out, or a leaf for
/// another name is refused, and the mail is deferred, never sent.
#[tokio::test]
async fn dane_ta_needs_the_named_anchor_in_the_chain() {
    use hickory_proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
    use hickory_proto::rr::rdata::TLSA;
    let ca = test_ca("Postern Test TA");
    let other_ca = test_ca("Someone Else's CA");
    // "2 0 1": DANE-TA, the whole anchor certificate, SHA-256.
    let ta_record = |anchor: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>| {
        RData::TLSA(TLSA::new(
            CertUsage::DaneTa,
            Selector::Full,
            Matching::Sha256,
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, anchor.der())
                .as_ref()
                .to_vec(),
        ))
    };
    // MX hosts on one port: the right chain, a chain without the anchor,
    // a chain from the anchor for another host name, and the right kind of
    // chain at a host whose TLSA record names another CA.
    let good_listener = TcpListener::bind("127.0.0.41:0").await.unwrap();
    let port = good_listener.local_addr().unwrap().port();
    let good = start_sink_on(
        good_listener,
        SinkOptions {
            tls: Some(issued_acceptor(&["mx.ta.test"], &ca, true)),
            ..Default::default()
        },
    );
    // A valid chain from the anchor, at a host whose record names another CA.
    let other_ca_host = start_sink_on(
        TcpListener::bind(("127.0.0.44", port)).await.unwrap(),
        SinkOptions {
            tls: Some(issued_acceptor(&["mx.otherca.test"], &ca, true)),
            ..Default::default()
        },
    );
    let no_anchor = start_sink_on(
        TcpListener::bind(("127.0.0.42", port)).await.unwrap(),
        SinkOptions {
            tls: Some(issued_acceptor(&["mx.noanchor.test"], &ca, false)),
            ..Default::default()
        },
    );
    let wrong_name = start_sink_on(
        TcpListener::bind(("127.0.0.43", port)).await.unwrap(),
        SinkOptions {
            tls: Some(issued_acceptor(&["mx.elsewhere.test"], &ca, true)),
            ..Default::default()
        },
    );
    let mx = |host: &str| RData::MX(MX::new(10, Name::from_str(host).unwrap()));
    let a = |ip: [u8; 4]| RData::A(A(Ipv4Addr::from(ip)));
    let (dns, anchor) = start_signed_dns(
        "test.",
        vec![
            ("mx.ta.test.", a([127, 0, 0, 41])),
            ("_25._tcp.mx.ta.test.", ta_record(&ca)),
            ("ta.test.", mx("mx.ta.test.")),
            ("mx.otherca.test.", a([127, 0, 0, 44])),
            ("_25._tcp.mx.otherca.test.", ta_record(&other_ca)),
            ("otherca.test.", mx("mx.otherca.test.")),
            ("mx.noanchor.test.", a([127, 0, 0, 42])),
            ("_25._tcp.mx.noanchor.test.", ta_record(&ca)),
            ("noanchor.test.", mx("mx.noanchor.test.")),
            ("mx.wrongname.test.", a([127, 0, 0, 43])),
            ("_25._tcp.mx.wrongname.test.", ta_record(&ca)),
            ("wrongname.test.", mx("mx.wrongname.test.")),
        ],
        &[],
    )
    .await;
    let resolver = Arc::new(MxResolver::with_dnssec(&[dns], Some(test_anchor(anchor))).unwrap());
    let probe = resolver.dane_probe().unwrap();
    let node = start_node_with_resolver(resolver, port).await;
    let send = |rcpt: &'static str| {
        let node = &node;
        async move {
            node.send("a@example.org", &[rcpt], b"Subject: ta\r\n\r\nx\r\n")
                .await
        }
    };

    let ok = send("u@ta.test").await;
    let e = node.wait_kind(&ok, EventKind::Delivered).await;
    assert_eq!(e.info.tls_policy.as_deref(), Some("dane"));
    assert!(e.info.tls.is_some());
    assert_eq!(e.info.remote_ip.as_deref(), Some("127.0.0.41"));

    let mut refused_ids = Vec::new();
    for (rcpt, why) in [
        ("u@otherca.test", "the record names another CA"),
        ("u@noanchor.test", "the anchor is not in the chain"),
        ("u@wrongname.test", "the leaf is for another host name"),
    ] {
        let id = send(rcpt).await;
        let e = node.wait_kind(&id, EventKind::Deferred).await;
        assert!(
            e.detail.contains("DANE TLSA records") && e.detail.contains("TLS policy: dane"),
            "{why}: {}",
            e.detail
        );
        refused_ids.push(id);
    }

    // The deferred ones are retried (every 200-400 ms): after three
    // attempts each, none may have delivered.
    for id in &refused_ids {
        node.wait_count(id, EventKind::Deferred, 3).await;
    }
    assert_eq!(rcpts_at(&good), ["u@ta.test"]);
    assert!(good.received.lock().unwrap().iter().all(|r| r.tls));
    for refused in [&other_ca_host, &no_anchor, &wrong_name] {
        assert!(rcpts_at(refused).is_empty());
        assert_eq!(refused.mail_commands.load(Ordering::SeqCst), 0);
        assert!(
            refused.connections.load(Ordering::SeqCst) > 0,
            "it was tried"
        );
    }
    assert_eq!(probe.state(), DaneState::Active);
}

/// RFC 4035 §4.9.3: the AD bit is only as good as the upstream and the
/// path to it, so Postern validates DNSSEC itself and never takes an
/// upstream's word. An unsigned resolver path that sets AD on everything
/// (the root's SOA included) does not switch DANE on, and its TLSA record
/// is ignored; on a path that does validate, a TLSA answer with AD but a
/// signature that fails is bogus: the host it pins is not used.
#[tokio::test]
async fn an_upstream_ad_bit_is_not_trusted() {
    use hickory_proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
    use hickory_proto::rr::rdata::{SOA, TLSA};
    let listener = TcpListener::bind("127.0.0.51:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // No STARTTLS: a TLSA record taken as secure would defer all mail to it.
    let plain = start_sink_on(listener, SinkOptions::default());
    let mx = |host: &str| RData::MX(MX::new(10, Name::from_str(host).unwrap()));
    let a = |ip: [u8; 4]| RData::A(A(Ipv4Addr::from(ip)));
    let root_soa = RData::SOA(SOA::new(
        Name::from_str("a.root-servers.net.").unwrap(),
        Name::from_str("nstld.verisign-grs.com.").unwrap(),
        2026010100,
        1800,
        900,
        604800,
        86400,
    ));
    let dns = start_dns_claiming(
        vec![
            (".", root_soa),
            ("adbit.example.", mx("mx.adbit.example.")),
            ("mx.adbit.example.", a([127, 0, 0, 51])),
            (
                "_25._tcp.mx.adbit.example.",
                RData::TLSA(TLSA::new(
                    CertUsage::DaneEe,
                    Selector::Spki,
                    Matching::Sha256,
                    vec![7; 32],
                )),
            ),
        ],
        true,
    )
    .await;
    // The built-in root anchors, as `postern serve` has them.
    let resolver = Arc::new(MxResolver::with_dnssec(&[dns], None).unwrap());
    let probe = resolver.dane_probe().unwrap();
    let node = start_node_with_resolver(resolver, port).await;
    let id = node
        .send(
            "a@example.org",
            &["u@adbit.example"],
            b"Subject: ad\r\n\r\nx\r\n",
        )
        .await;
    let e = node.wait_kind(&id, EventKind::Delivered).await;
    assert_eq!(e.info.tls_policy.as_deref(), Some("opportunistic"));
    assert_eq!(rcpts_at(&plain), ["u@adbit.example"]);
    assert_eq!(
        probe.state(),
        DaneState::Inactive,
        "an AD bit on an unsigned root SOA is not a validated path"
    );
    // The SOA did come back (with AD), and failed validation.
    let last = probe.status().last.expect("probed");
    assert_eq!(
        last.result,
        ProbeResult::NotValidated("the SOA of . did not validate (Bogus)".into())
    );

    // A path that validates, and an attacker's TLSA answer: AD set, the
    // signature broken, pinning the key the attacker's host presents.
    let evil_listener = TcpListener::bind("127.0.0.52:0").await.unwrap();
    let port = evil_listener.local_addr().unwrap().port();
    let evil_cert = rcgen::generate_simple_self_signed(vec!["mx.evil.test".into()]).unwrap();
    let evil = start_sink_on(
        evil_listener,
        SinkOptions {
            tls: Some(acceptor_of(&evil_cert)),
            ..Default::default()
        },
    );
    let pin = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, evil_cert.cert.der())
        .as_ref()
        .to_vec();
    let (dns, anchor) = start_signed_dns(
        "test.",
        vec![
            ("mx.evil.test.", a([127, 0, 0, 52])),
            (
                "_25._tcp.mx.evil.test.",
                // "3 0 1": DANE-EE, the attacker's whole certificate.
                RData::TLSA(TLSA::new(
                    CertUsage::DaneEe,
                    Selector::Full,
                    Matching::Sha256,
                    pin,
                )),
            ),
            ("evil.test.", mx("mx.evil.test.")),
        ],
        &["_25._tcp.mx.evil.test."],
    )
    .await;
    let resolver = Arc::new(MxResolver::with_dnssec(&[dns], Some(test_anchor(anchor))).unwrap());
    let probe = resolver.dane_probe().unwrap();
    let node = start_node_with_resolver(resolver, port).await;
    let id = node
        .send(
            "a@example.org",
            &["u@evil.test"],
            b"Subject: ad\r\n\r\nx\r\n",
        )
        .await;
    let e = node.wait_kind(&id, EventKind::Deferred).await;
    assert!(e.detail.contains("DANE: no usable MX host"), "{}", e.detail);
    assert_eq!(probe.state(), DaneState::Active);
    // Retried (every 200-400 ms): after three attempts, none delivered.
    node.wait_count(&id, EventKind::Deferred, 3).await;
    assert!(rcpts_at(&evil).is_empty());
    assert_eq!(evil.mail_commands.load(Ordering::SeqCst), 0);
}

/// RFC 8461 §2: a domain with both DANE and MTA-STS is delivered under
/// DANE. Here the MTA-STS policy (enforce) lists only another MX host, so
/// applied it would defer; with the host's TLSA record DNSSEC-proven, the
/// mail goes out under DANE and the policy is not even fetched. A domain
/// with the same policy and no TLSA shows the policy is live and binding.
#[tokio::test]
async fn dane_takes_precedence_over_mta_sts() {
    use hickory_proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
    use hickory_proto::rr::rdata::{TLSA, TXT};
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let listener = TcpListener::bind("127.0.0.61:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cert = rcgen::generate_simple_self_signed(vec!["mx.dane.test".into()]).unwrap();
    let sink = start_sink_on(
        listener,
        SinkOptions {
            tls: Some(acceptor_of(&cert)),
            ..Default::default()
        },
    );
    // "3 0 1": DANE-EE, the host's certificate.
    let tlsa = RData::TLSA(TLSA::new(
        CertUsage::DaneEe,
        Selector::Full,
        Matching::Sha256,
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.cert.der())
            .as_ref()
            .to_vec(),
    ));
    let policy = "version: STSv1\r\nmode: enforce\r\nmx: mx.elsewhere.test\r\nmax_age: 86400\r\n";
    let policies: HashMap<String, String> = ["mta-sts.both.test", "mta-sts.stsonly.test"]
        .into_iter()
        .map(|h| (h.to_string(), policy.to_string()))
        .collect();
    let policy_names: Vec<&str> = policies.keys().map(String::as_str).collect();
    let (policy_port, fetches) =
        start_policy_server(acceptor_for(&policy_names, &ca), policies.clone()).await;

    let mx = |host: &str| RData::MX(MX::new(10, Name::from_str(host).unwrap()));
    let a = |ip: [u8; 4]| RData::A(A(Ipv4Addr::from(ip)));
    let txt = || RData::TXT(TXT::new(vec!["v=STSv1; id=20260101;".to_string()]));
    let (dns, anchor) = start_signed_dns(
        "test.",
        vec![
            ("mx.dane.test.", a([127, 0, 0, 61])),
            ("_25._tcp.mx.dane.test.", tlsa),
            ("both.test.", mx("mx.dane.test.")),
            ("_mta-sts.both.test.", txt()),
            ("mta-sts.both.test.", a([127, 0, 0, 1])),
            // The same host under a name without TLSA records.
            ("mx.nodane.test.", a([127, 0, 0, 61])),
            ("stsonly.test.", mx("mx.nodane.test.")),
            ("_mta-sts.stsonly.test.", txt()),
            ("mta-sts.stsonly.test.", a([127, 0, 0, 1])),
        ],
        &[],
    )
    .await;
    let resolver = Arc::new(MxResolver::with_dnssec(&[dns], Some(test_anchor(anchor))).unwrap());
    let node = start_node_inner(
        vec![],
        resolver,
        port,
        Shaping::default(),
        Some((ca.clone(), policy_port)),
    )
    .await;

    let e = node
        .send_until(
            "u@stsonly.test",
            b"Subject: sts\r\n\r\nx\r\n",
            EventKind::Deferred,
        )
        .await;
    assert!(e.detail.contains("matches its policy"), "{}", e.detail);

    let both = node
        .send(
            "a@example.org",
            &["u@both.test"],
            b"Subject: both\r\n\r\nx\r\n",
        )
        .await;
    let e = node.wait_kind(&both, EventKind::Delivered).await;
    assert_eq!(e.info.tls_policy.as_deref(), Some("dane"));
    assert!(e.info.tls.is_some());
    assert_eq!(rcpts_at(&sink), ["u@both.test"]);
    let fetched = fetches.lock().unwrap().clone();
    assert_eq!(fetched.get("mta-sts.stsonly.test"), Some(&1), "{fetched:?}");
    assert_eq!(
        fetched.get("mta-sts.both.test"),
        None,
        "MTA-STS not consulted under DANE: {fetched:?}"
    );
}
