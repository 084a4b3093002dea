//! Message bodies share one memory budget: a transaction that cannot be
//! covered is refused with 452 4.3.1 (at MAIL when the SIZE does not fit,
//! or at the end of DATA/BDAT when the budget ran out mid-body), the session
//! stays usable, and bytes sent without a transaction are never kept.
//! Outside the budget, each connection reads through an 8 KiB buffer.

mod harness;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use harness::{connect, start};
use postern_core::config::ListenerRole;
use postern_core::Config;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

const KIB: usize = 1024;

fn config() -> Config {
    let mut c = Config::default();
    c.limits.max_message_size = 256 * KIB;
    c.limits.body_memory_budget = 320 * KIB;
    // These tests are about the total: every client here is one network.
    c.limits.body_memory_per_client = Some(320 * KIB);
    c
}

fn body(size: usize) -> Vec<u8> {
    let mut b = b"Subject: big\r\n\r\n".to_vec();
    while b.len() < size {
        b.extend_from_slice(
            b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n",
        );
    }
    b
}

async fn open_transaction(server: &harness::Server) -> harness::Client<tokio::net::TcpStream> {
    let mut c = connect(server.mx).await;
    c.reply().await;
    assert!(c.cmd("EHLO client.test").await.starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@sender.test>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<x@relay.example>").await.starts_with("250"));
    c
}

#[tokio::test]
async fn transactions_past_the_budget_get_452_and_the_session_goes_on() {
    let server = start(config()).await;
    // A holds 200 KiB of the 320 KiB budget while it is still sending.
    let mut a = open_transaction(&server).await;
    assert!(a.cmd("DATA").await.starts_with("354"));
    let big = body(200 * KIB);
    a.send(&big).await;
    // The server has read A's body (all but the final CRLF it may still
    // be looking at) into its lease.
    harness::wait_for("A's body leased", || {
        server.budget.in_use() >= big.len() - 2
    })
    .await;

    // B declares a size that does not fit: refused at MAIL.
    let mut b = connect(server.mx).await;
    b.reply().await;
    b.cmd("EHLO client.test").await;
    let r = b.cmd("MAIL FROM:<b@sender.test> SIZE=200000").await;
    assert!(r.starts_with("452 4.3.1"), "{r}");
    // Without SIZE it may start, but its body cannot be covered: the body
    // is read to its end and the message refused, and the session goes on.
    assert!(b.cmd("MAIL FROM:<b@sender.test>").await.starts_with("250"));
    assert!(b.cmd("RCPT TO:<y@relay.example>").await.starts_with("250"));
    assert!(b.cmd("DATA").await.starts_with("354"));
    b.send(&big).await;
    let r = b.cmd(".").await;
    assert!(r.starts_with("452 4.3.1"), "{r}");
    assert!(b.cmd("NOOP").await.starts_with("250"));

    // A finishes; its lease goes back, and B's retry fits.
    assert!(a.cmd(".").await.starts_with("250"));
    assert!(b.cmd("MAIL FROM:<b@sender.test>").await.starts_with("250"));
    assert!(b.cmd("RCPT TO:<y@relay.example>").await.starts_with("250"));
    assert!(b.cmd("DATA").await.starts_with("354"));
    b.send(&big).await;
    assert!(b.cmd(".").await.starts_with("250"));
    assert_eq!(server.queued().await, 2);
}

#[tokio::test]
async fn bdat_chunks_past_the_budget_get_452() {
    let server = start(config()).await;
    let mut a = open_transaction(&server).await;
    // A first chunk of 200 KiB is held until the last one.
    a.send(format!("BDAT {}\r\n", 200 * KIB).as_bytes()).await;
    a.send(&vec![b'a'; 200 * KIB]).await;
    assert!(a.reply().await.unwrap().starts_with("250"));

    let mut b = open_transaction(&server).await;
    b.send(format!("BDAT {} LAST\r\n", 200 * KIB).as_bytes())
        .await;
    b.send(&vec![b'b'; 200 * KIB]).await;
    let r = b.reply().await.unwrap();
    assert!(r.starts_with("452 4.3.1"), "{r}");
    assert!(b.cmd("NOOP").await.starts_with("250"), "still in step");

    a.send(b"BDAT 2 LAST\r\n\r\n").await;
    let r = a.reply().await.unwrap();
    assert!(r.starts_with("250"), "{r}");
}

#[tokio::test]
async fn bdat_before_mail_is_read_and_dropped() {
    let server = start(config()).await;
    let mut c = connect(server.mx).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    // 250 KiB without a transaction, repeated past the budget many times:
    // each chunk is refused and none is kept (or the budget would not let
    // the transaction below through).
    for _ in 0..8 {
        c.send(format!("BDAT {} LAST\r\n", 250 * KIB).as_bytes())
            .await;
        c.send(&vec![b'z'; 250 * KIB]).await;
        let r = c.reply().await.unwrap();
        assert!(r.starts_with("503"), "{r}");
    }
    let mut ok = open_transaction(&server).await;
    ok.send(format!("BDAT {} LAST\r\n", 250 * KIB).as_bytes())
        .await;
    let mut msg = body(250 * KIB);
    msg.truncate(250 * KIB);
    ok.send(&msg).await;
    let r = ok.reply().await.unwrap();
    assert!(r.starts_with("250"), "{r}");
}

/// A client connected from `source` (any 127/8 address is local, and each
/// /24 of it is a network of its own to the budget).
async fn connect_from(
    source: &str,
    to: std::net::SocketAddr,
) -> harness::Client<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    harness::Client::new(socket.connect(to).await.unwrap())
}

async fn start_body(c: &mut harness::Client<tokio::net::TcpStream>, size: usize) {
    c.reply().await;
    assert!(c.cmd("EHLO client.test").await.starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@sender.test>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<x@relay.example>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(&body(size)).await;
}

/// Polls `MAIL FROM:<from> SIZE=100000` (RSET after each 250) until it
/// gets 452 4.3.1: the server reads the holder's slow body at its own
/// pace. Fails after 10 s naming `holder`.
async fn refused_once_held<S>(c: &mut harness::Client<S>, from: &str, holder: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = c.cmd(&format!("MAIL FROM:<{from}> SIZE=100000")).await;
        if r.starts_with("452 4.3.1") {
            return;
        }
        assert!(r.starts_with("250"), "{r}");
        c.cmd("RSET").await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "{holder} was never held to its share"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A slow upload from one network holds that network's share of the
/// budget: the network's next transaction is refused while another
/// network's goes through, although the total has room for both.
#[tokio::test]
async fn one_network_holds_only_its_share() {
    let mut c = Config::default();
    c.limits.max_message_size = 256 * KIB;
    c.limits.body_memory_budget = 1024 * KIB;
    c.limits.body_memory_per_client = Some(256 * KIB);
    let server = start(c).await;

    // An unfinished body of 200 KiB from 127.0.0.0/24.
    let mut slow = connect_from("127.0.0.1", server.mx).await;
    start_body(&mut slow, 200 * KIB).await;

    // Another client of that network cannot start 100 KiB more once the
    // server has read that body (polled: it reads at its own pace).
    let mut same = connect_from("127.0.0.2", server.mx).await;
    same.reply().await;
    same.cmd("EHLO client.test").await;
    refused_once_held(&mut same, "c@sender.test", "127.0.0.0/24").await;

    // Another network is not affected: a whole message goes through.
    let mut other = connect_from("127.0.1.1", server.mx).await;
    start_body(&mut other, 200 * KIB).await;
    let r = other.cmd(".").await;
    assert!(r.starts_with("250"), "{r}");

    // The share comes back when the slow body ends.
    assert!(slow.cmd(".").await.starts_with("250"));
    assert!(same
        .cmd("MAIL FROM:<c@sender.test> SIZE=100000")
        .await
        .starts_with("250"));
    assert_eq!(server.queued().await, 2);
}

/// A submission session from `source`, authenticated with `key`, in a
/// transaction and ready for DATA.
async fn authenticated_from(
    server: &harness::Server,
    source: &str,
    key: &str,
) -> harness::Client<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use base64::Engine;
    let mut c = connect_from(source, server.submission).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    let mut c = harness::starttls(server, c).await;
    c.cmd("EHLO client.test").await;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("\0apikey\0{key}"));
    let r = c.cmd(&format!("AUTH PLAIN {auth}")).await;
    assert!(r.starts_with("235"), "{r}");
    c
}

/// Authenticated mail is held to its account's share, wherever it comes
/// from: the account's second session from another network is refused
/// while another tenant from the slow upload's own address goes through.
#[tokio::test]
async fn an_account_holds_only_its_share_from_any_network() {
    let mut c = Config::default();
    c.limits.max_message_size = 256 * KIB;
    c.limits.body_memory_budget = 1024 * KIB;
    c.limits.body_memory_per_client = Some(256 * KIB);
    let server = start(c).await;

    // The admin account's unfinished 200 KiB body, from 127.0.0.1.
    let mut slow = authenticated_from(&server, "127.0.0.1", &server.api_key).await;
    assert!(slow
        .cmd("MAIL FROM:<a@sender.test>")
        .await
        .starts_with("250"));
    assert!(slow
        .cmd("RCPT TO:<x@relay.example>")
        .await
        .starts_with("250"));
    assert!(slow.cmd("DATA").await.starts_with("354"));
    slow.send(&body(200 * KIB)).await;

    // The same account from another network: refused once that body is
    // read (polled).
    let mut same = authenticated_from(&server, "127.0.1.1", &server.api_key).await;
    refused_once_held(&mut same, "a@sender.test", "the account").await;

    // Another tenant from the slow upload's own address: not affected.
    let mut other = authenticated_from(&server, "127.0.0.1", &server.other_key).await;
    assert!(other
        .cmd("MAIL FROM:<b@sender.test> SIZE=100000")
        .await
        .starts_with("250"));
    assert!(other
        .cmd("RCPT TO:<y@relay.example>")
        .await
        .starts_with("250"));
    assert!(other.cmd("DATA").await.starts_with("354"));
    other.send(&body(100 * KIB)).await;
    let r = other.cmd(".").await;
    assert!(r.starts_with("250"), "{r}");

    assert!(slow.cmd(".").await.starts_with("250"));
    assert_eq!(server.queued().await, 2);
}

/// A stream that records how many bytes each read asks for.
struct AskRecorder {
    inner: DuplexStream,
    asked: Arc<Mutex<Vec<usize>>>,
}

impl AsyncRead for AskRecorder {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        me.asked.lock().unwrap().push(buf.remaining());
        Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AskRecorder {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Outside the budget, a connection holds a read buffer of 8 KiB: the
/// session asks its stream for at most 8 KiB per read, and reads a body
/// through 8 KiB asks (a 1 MiB body takes at least 128 of them), whatever
/// the client sends at once. The stream here can hand over 64 KiB per read.
#[tokio::test]
async fn a_session_reads_through_an_8_kib_buffer() {
    // The default limits: a 1 MiB body is within them.
    let server = start(Config::default()).await;
    let (ours, theirs) = tokio::io::duplex(64 * KIB);
    let asked = Arc::new(Mutex::new(Vec::new()));
    let stream = AskRecorder {
        inner: theirs,
        asked: asked.clone(),
    };
    let listener = Arc::new(postern_smtp::ListenerContext {
        role: ListenerRole::Mx,
        address: server.mx,
        tls: None,
        allow_plaintext_auth: false,
        auth_mechanisms: postern_smtp::mechanism_bits(&[]),
        screen: None,
    });
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let session = postern_smtp::session::Session::new(
        stream,
        server.ctx.clone(),
        listener,
        "127.0.0.1:40000".parse().unwrap(),
        None,
        shutdown,
    );
    let running = tokio::spawn(session.run(true));

    let mut c = harness::Client::new(ours);
    assert!(c.reply().await.unwrap().starts_with("220"));
    assert!(c.cmd("EHLO client.test").await.starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@sender.test>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<x@relay.example>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    let big = body(1024 * KIB);
    // The session reads while the client writes (the duplex holds 64 KiB),
    // so it always has more waiting than one read can take.
    c.send(&big).await;
    assert!(
        c.cmd(".").await.starts_with("250"),
        "the message was queued"
    );
    assert!(c.cmd("QUIT").await.starts_with("221"));
    let _ = running.await;
    assert_eq!(server.queued().await, 1);

    let asked = asked.lock().unwrap().clone();
    let largest = asked.iter().copied().max().unwrap();
    assert!(largest <= 8 * KIB, "a read asked for {largest} bytes");
    let full = asked.iter().filter(|&&n| n == 8 * KIB).count();
    assert!(
        full >= big.len() / (8 * KIB),
        "{full} reads of 8 KiB for a body of {} bytes",
        big.len()
    );
}
