//! The security rules (README, "Security defaults") that belong to the SMTP session, each
//! proven against a real server on loopback.

mod harness;

use std::time::{Duration, Instant};

use harness::{connect, start, starttls, Client};
use postern_core::Config;
use postern_store::QueueStore;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

#[tokio::test]
async fn plaintext_pipelined_after_starttls_is_discarded() {
    let server = start(Config::default()).await;
    for addr in [server.submission, server.mx] {
        let mut c = connect(addr).await;
        assert!(c.reply().await.unwrap().starts_with("220 "));
        assert!(c.cmd("EHLO client.test").await.contains("STARTTLS"));
        // STARTTLS and an injected command in one write.
        c.send(b"STARTTLS\r\nRSET\r\n").await;
        let r = c.reply().await.unwrap();
        assert!(r.starts_with("220 "), "{r}");
        let (stream, leftover) = c.into_inner();
        assert!(leftover.is_empty(), "nothing may follow the 220");
        let tls = server
            .tls_connector()
            .connect(ServerName::try_from("localhost").unwrap(), stream)
            .await
            .unwrap();
        let mut c = Client::new(tls);
        // The first reply over TLS must answer our EHLO, not the injected RSET.
        let r = c.cmd("EHLO client.test").await;
        assert!(
            r.starts_with("250-mx.test Hello"),
            "injected command was answered: {r}"
        );
        assert!(!r.contains("Reset"), "{r}");
        let r = c.cmd("NOOP").await;
        assert_eq!(r, "250 2.0.0 OK\r\n");
    }
}

/// The keyword lines of an EHLO reply (RFC 5321 §4.1.1.1: the first line
/// is the greeting, each further line one extension), in order.
fn ehlo_keywords(reply: &str) -> Vec<String> {
    let lines: Vec<&str> = reply.split("\r\n").filter(|l| !l.is_empty()).collect();
    for (i, l) in lines.iter().enumerate() {
        // "250-" on every line but the last, "250 " on the last (§4.2.1).
        let sep = if i + 1 == lines.len() { "250 " } else { "250-" };
        assert!(l.starts_with(sep), "line {i} of {reply:?}");
    }
    lines.iter().skip(1).map(|l| l[4..].to_owned()).collect()
}

/// What every EHLO advertises, whatever the listener and TLS state.
fn base_keywords() -> Vec<String> {
    let size = Config::default().limits.max_message_size;
    [
        "PIPELINING".to_owned(),
        format!("SIZE {size}"),
        "8BITMIME".to_owned(),
        "SMTPUTF8".to_owned(),
        "ENHANCEDSTATUSCODES".to_owned(),
        "DSN".to_owned(),
        "CHUNKING".to_owned(),
        "HELP".to_owned(),
    ]
    .into()
}

#[tokio::test]
async fn auth_is_neither_offered_nor_accepted_before_tls() {
    let server = start(Config::default()).await;
    let mut c = connect(server.submission).await;
    c.reply().await;
    let ehlo = c.cmd("EHLO client.test").await;
    // Exactly the base extensions and STARTTLS: no AUTH before TLS
    // (RFC 8314 §3.3, RFC 4954 §4).
    let mut expected = base_keywords();
    expected.push("STARTTLS".into());
    assert_eq!(ehlo_keywords(&ehlo), expected, "{ehlo}");
    // Valid credentials: still refused, and not checked.
    let r = c.cmd(&format!("AUTH PLAIN {}", server.plain_auth())).await;
    assert!(r.starts_with("538 5.7.11 "), "{r}");
    let r = c.cmd("AUTH LOGIN").await;
    assert!(r.starts_with("538 5.7.11 "), "{r}");
    let r = c.cmd("MAIL FROM:<a@example.org>").await;
    assert!(r.starts_with("530 5.7.0 "), "{r}");

    // After STARTTLS the same credentials work.
    let mut c = starttls(&server, c).await;
    let ehlo = c.cmd("EHLO client.test").await;
    // Over TLS: AUTH with the listener's mechanisms, and no second STARTTLS
    // (RFC 3207 §4.2).
    let mut expected = base_keywords();
    expected.push("AUTH PLAIN LOGIN".into());
    assert_eq!(ehlo_keywords(&ehlo), expected, "{ehlo}");
    let r = c.cmd(&format!("AUTH PLAIN {}", server.plain_auth())).await;
    assert!(r.starts_with("235 2.7.0 "), "{r}");

    // The mx listener never offers AUTH, even over TLS.
    let mut c = connect(server.mx).await;
    c.reply().await;
    let ehlo = c.cmd("EHLO client.test").await;
    let mut expected = base_keywords();
    expected.push("STARTTLS".into());
    assert_eq!(ehlo_keywords(&ehlo), expected, "{ehlo}");
    let mut c = starttls(&server, c).await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert_eq!(ehlo_keywords(&ehlo), base_keywords(), "{ehlo}");
}

#[tokio::test]
async fn wrong_credentials_get_one_reply_and_a_limit() {
    let server = start(Config::default()).await;
    let mut c = connect(server.submission).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    let mut c = starttls(&server, c).await;
    c.cmd("EHLO client.test").await;
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let unknown_user = c
        .cmd(&format!(
            "AUTH PLAIN {}",
            b64(&format!("\0nobody\0{}", server.api_key))
        ))
        .await;
    let wrong_key = c
        .cmd(&format!("AUTH PLAIN {}", b64("\0apikey\0pst_wrong")))
        .await;
    assert_eq!(
        unknown_user, wrong_key,
        "same reply for unknown user and wrong key"
    );
    assert!(wrong_key.starts_with("535 5.7.8 "), "{wrong_key}");
    let third = c
        .cmd(&format!("AUTH PLAIN {}", b64("\0apikey\0pst_again")))
        .await;
    assert!(third.starts_with("535 5.7.8 "), "{third}");
    let rest = c.rest().await;
    assert!(rest.contains("421 4.7.0"), "{rest}");
}

async fn mx_session_with_data(server: &harness::Server, data: &[u8]) -> String {
    let mut c = connect(server.mx).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    assert!(c.cmd("MAIL FROM:<a@example.org>").await.starts_with("250 "));
    assert!(c
        .cmd("RCPT TO:<user@relay.example>")
        .await
        .starts_with("250 "));
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(data).await;
    c.rest().await
}

#[tokio::test]
async fn data_ends_only_at_crlf_dot_crlf_and_bare_line_endings_are_refused() {
    let server = start(Config::default()).await;
    let smuggle = |end: &str| {
        format!(
            "Subject: a\r\n\r\nfirst{end}MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@relay.example>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n"
        )
    };
    for end in ["\n.\r\n", "\n.\n", "\r\n.\n", "\r.\r\n", "\r\n.\r"] {
        let out = mx_session_with_data(&server, smuggle(end).as_bytes()).await;
        assert!(out.starts_with("554 5.6.11 "), "{end:?}: {out}");
        assert!(!out.contains("250 2.0.0 OK queued"), "{end:?}: {out}");
        assert_eq!(server.queued().await, 0, "{end:?} queued something");
    }
    // A plain bare LF line inside an otherwise proper message.
    let out = mx_session_with_data(&server, b"Subject: a\r\n\r\nline one\nline two\r\n.\r\n").await;
    assert!(out.starts_with("554 5.6.11 "), "{out}");
    assert_eq!(server.queued().await, 0);

    // The proper terminator still works, and dot-stuffing is undone.
    let out = mx_session_with_data(
        &server,
        b"Subject: ok\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n",
    )
    .await;
    assert!(out.starts_with("250 2.0.0 OK queued as "), "{out}");
    let bodies = server.bodies().await;
    assert_eq!(bodies.len(), 1);
    assert!(bodies[0].ends_with(b"\r\nSubject: ok\r\n\r\n.leading dot\r\n"));
}

#[tokio::test]
async fn normalize_mode_rewrites_but_never_ends_early() {
    let mut config = Config::default();
    config.smtp.bare_line_endings = postern_core::config::BareLineEndings::Normalize;
    let server = start(config).await;
    let out = mx_session_with_data(
        &server,
        b"Subject: n\r\n\r\nfirst\n.\nMAIL FROM:<evil@example.org>\r\nlast\r\n.\r\nQUIT\r\n",
    )
    .await;
    assert!(out.starts_with("250 2.0.0 OK queued as "), "{out}");
    let bodies = server.bodies().await;
    assert_eq!(bodies.len(), 1, "exactly one message, nothing smuggled");
    let body = &bodies[0];
    assert!(
        body.ends_with(b"Subject: n\r\n\r\nfirst\r\n.\r\nMAIL FROM:<evil@example.org>\r\nlast\r\n"),
        "{}",
        String::from_utf8_lossy(body)
    );
}

#[tokio::test]
async fn bare_line_endings_inside_bdat_chunks_are_refused() {
    let server = start(Config::default()).await;
    for chunk in [
        &b"Subject: b\r\n\r\nx\ny\r\n"[..],
        b"Subject: b\r\n\r\nx\ry\r\n",
        b"Subject: b\r\n\r\nx\r",
    ] {
        let mut c = connect(server.mx).await;
        c.reply().await;
        assert!(c.cmd("EHLO client.test").await.contains("CHUNKING"));
        c.cmd("MAIL FROM:<a@example.org>").await;
        c.cmd("RCPT TO:<user@relay.example>").await;
        c.send(format!("BDAT {} LAST\r\n", chunk.len()).as_bytes())
            .await;
        c.send(chunk).await;
        let r = c.reply().await.unwrap();
        assert!(r.starts_with("554 5.6.11 "), "{chunk:?}: {r}");
        // The session stays in step (BDAT is length-counted) and usable.
        assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK\r\n");
    }
    assert_eq!(server.queued().await, 0);

    // Proper chunks, split across two BDATs, are queued byte-exact.
    let mut c = connect(server.mx).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@example.org>").await;
    c.cmd("RCPT TO:<user@relay.example>").await;
    c.send(b"BDAT 14\r\nSubject: b\r\n\r\n").await;
    assert!(c.reply().await.unwrap().starts_with("250 2.0.0 14 octets"));
    c.send(b"BDAT 7 LAST\r\n.x\r\n.\r\n").await;
    let r = c.reply().await.unwrap();
    assert!(r.starts_with("250 2.0.0 OK queued"), "{r}");
    let bodies = server.bodies().await;
    assert!(bodies[0].ends_with(b"\r\nSubject: b\r\n\r\n.x\r\n.\r\n"));
}

#[tokio::test]
async fn mx_never_relays_to_another_host() {
    let server = start(Config::default()).await;
    let mut c = connect(server.mx).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@example.org>").await;
    for rcpt in [
        "<user%ext.example@relay.example>",
        "<@relay.example:user@ext.example>",
        "<ext.example!user@relay.example>",
        "<\"user@ext.example\"@relay.example>",
        "<user@ext.example@relay.example>",
        "<user@[192.0.2.1]>",
        "<user@ext.example.>",
        "<user@relay.example.>",
        "<user@ext.example>",
    ] {
        let r = c.cmd(&format!("RCPT TO:{rcpt}")).await;
        assert!(r.starts_with('5'), "{rcpt} was accepted: {r}");
    }
    let r = c.cmd("RCPT TO:<user@relay.example>").await;
    // Past the refusal limit the session is closed instead.
    assert!(r.starts_with("250 ") || r.contains("421 4.7.0"), "{r}");
    if r.contains("421 4.7.0") {
        assert_eq!(c.rest().await, "", "421 must close (RFC 5321 §3.8)");
    }
    assert_eq!(server.queued().await, 0);
}

#[tokio::test]
async fn repeated_refused_recipients_slow_down_then_disconnect() {
    let server = start(Config::default()).await; // max_refused_recipients = 5
    let mut c = connect(server.mx).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@example.org>").await;
    let mut times = Vec::new();
    let mut closed = false;
    for i in 0..12 {
        let t = Instant::now();
        let r = c.cmd(&format!("RCPT TO:<u{i}@elsewhere.example>")).await;
        times.push(t.elapsed());
        if r.contains("421 4.7.0") {
            // The 421 alone is not the disconnect: the socket must close
            // too (RFC 5321 §3.8).
            assert_eq!(c.rest().await, "");
            closed = true;
            break;
        }
        assert!(r.starts_with("550 5.7.1 "), "{r}");
    }
    assert!(closed, "session was never closed");
    assert!(times[0] < Duration::from_millis(500));
    assert!(
        times[6] >= Duration::from_millis(900),
        "no slow-down: {times:?}"
    );
}

#[tokio::test]
async fn bad_input_gets_clear_replies() {
    let server = start(Config::default()).await;
    let mut c = connect(server.mx).await;
    c.reply().await;
    let r = c.cmd("EHLO client.test").await;
    assert!(r.contains("SIZE 26214400"), "{r}");
    c.send(b"NOOP \0\r\n").await;
    assert!(c.reply().await.unwrap().starts_with("500 5.5.2 "));
    c.send(b"NOOP \xff\xfe\r\n").await;
    assert!(c.reply().await.unwrap().starts_with("500 5.5.2 "));
    c.send(format!("NOOP {}\r\n", "x".repeat(600)).as_bytes())
        .await;
    assert!(c.reply().await.unwrap().starts_with("500 5.5.6 "));
    // An endless line without LF is cut off, then the session goes on.
    c.send("y".repeat(20_000).as_bytes()).await;
    c.send(b"\r\n").await;
    assert!(c.reply().await.unwrap().starts_with("500 5.5.6 "));
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK\r\n");
    // Bare LF ends no command.
    c.send(b"NOOP\n").await;
    assert!(c.reply().await.unwrap().starts_with("500 5.5.2 "));
    let r = c.cmd("VRFY postmaster").await;
    assert!(r.starts_with("252 2.5.0 "), "{r}");
    let r = c.cmd("MAIL FROM:<jörg@example.org>").await;
    assert!(r.starts_with("553 5.6.7 "), "{r}");
    let r = c.cmd("MAIL FROM:<a@example.org> SIZE=999999999").await;
    assert!(r.starts_with("552 5.3.4 "), "{r}");
    let r = c.cmd("DATA").await;
    assert!(r.starts_with("503 5.5.1 "), "{r}");
    // Ten errors close the session.
    let mut rest = String::new();
    for _ in 0..10 {
        c.send(b"BOGUS\r\n").await;
    }
    rest.push_str(&c.rest().await);
    assert!(rest.contains("421 4.7.0 Too many errors"), "{rest}");
}

#[tokio::test]
async fn nul_bytes_in_a_message_are_refused() {
    let server = start(Config::default()).await;
    let out = mx_session_with_data(&server, b"Subject: a\r\n\r\nnul\0here\r\n.\r\nQUIT\r\n").await;
    assert!(out.starts_with("554 5.6.0 "), "{out}");
    assert_eq!(server.queued().await, 0);
}

#[tokio::test]
async fn endless_data_is_cut_off_at_the_size_limit() {
    let mut config = Config::default();
    config.limits.max_message_size = 64 * 1024;
    let server = start(config).await;
    let mut c = connect(server.mx).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@example.org>").await;
    c.cmd("RCPT TO:<user@relay.example>").await;
    c.cmd("DATA").await;
    let line = "z".repeat(998) + "\r\n";
    let mut reply = None;
    for _ in 0..200 {
        if tokio::io::AsyncWriteExt::write_all(&mut c.stream, line.as_bytes())
            .await
            .is_err()
        {
            break;
        }
    }
    if let Some(r) = c.reply().await {
        reply = Some(r);
    }
    let r = reply.expect("no reply");
    assert!(r.starts_with("552 5.3.4 "), "{r}");
    // The rest of an endless body is never read: the reply says the
    // connection closes, and it does.
    assert_eq!(c.rest().await, "");
    assert_eq!(server.queued().await, 0);
}

#[tokio::test]
async fn an_oversized_bdat_chunk_is_refused_and_the_connection_closed() {
    let mut config = Config::default();
    config.limits.max_message_size = 64 * 1024;
    let server = start(config).await;
    let mut c = connect(server.mx).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@example.org>").await;
    c.cmd("RCPT TO:<user@relay.example>").await;
    // A BDAT chunk is length-counted (RFC 3030 §2): staying in step would
    // mean reading all of a declared size past the limit, so the server
    // refuses and closes instead. Nothing of the chunk is sent: the close
    // must come from the server, not from reading a body to its end.
    let r = c.cmd("BDAT 1000000 LAST").await;
    assert!(r.starts_with("552 5.3.4 "), "{r}");
    assert_eq!(c.rest().await, "");
    assert_eq!(server.queued().await, 0);
}

#[tokio::test]
async fn submission_over_starttls_and_implicit_tls_queues_mail() {
    let server = start(Config::default()).await;
    let mut c = connect(server.submission).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    let mut c = starttls(&server, c).await;
    c.cmd("EHLO client.test").await;
    assert!(c
        .cmd(&format!("AUTH PLAIN {}", server.plain_auth()))
        .await
        .starts_with("235 "));
    // Pipelined transaction (RFC 2920).
    c.send(b"MAIL FROM:<a@example.org> BODY=8BITMIME RET=HDRS ENVID=e1\r\nRCPT TO:<b@example.net> NOTIFY=FAILURE,DELAY ORCPT=rfc822;b@example.net\r\nRCPT TO:<c@example.com>\r\nDATA\r\n").await;
    for expect in ["250 2.1.0", "250 2.1.5", "250 2.1.5", "354"] {
        let r = c.reply().await.unwrap();
        assert!(r.starts_with(expect), "{expect}: {r}");
    }
    c.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n").await;
    let r = c.reply().await.unwrap();
    assert!(r.starts_with("250 2.0.0 OK queued as "), "{r}");

    // Implicit TLS (RFC 8314), AUTH LOGIN this time.
    let stream = TcpStream::connect(server.submissions).await.unwrap();
    let tls = server
        .tls_connector()
        .connect(ServerName::try_from("localhost").unwrap(), stream)
        .await
        .unwrap();
    let mut c = Client::new(tls);
    let greeting = c.reply().await;
    assert!(
        greeting.as_deref().unwrap_or("").starts_with("220 mx.test"),
        "{greeting:?}"
    );
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(
        !ehlo.contains("STARTTLS") && ehlo.contains("AUTH PLAIN LOGIN"),
        "{ehlo}"
    );
    assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6\r\n");
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    assert_eq!(c.cmd(&b64("apikey")).await, "334 UGFzc3dvcmQ6\r\n");
    let r = c.cmd(&b64(&server.api_key)).await;
    assert!(r.starts_with("235 2.7.0"), "{r}");
    c.cmd("MAIL FROM:<>").await;
    c.cmd("RCPT TO:<d@example.org>").await;
    c.cmd("DATA").await;
    c.send(b"Subject: two\r\n\r\nbody\r\n.\r\n").await;
    assert!(c.reply().await.unwrap().starts_with("250 2.0.0 OK queued"));
    assert_eq!(server.queued().await, 2);
    let jobs = server.store.claim_due(i64::MAX / 4, 100, 1).await.unwrap();
    let received: Vec<String> = jobs
        .iter()
        .map(|j| String::from_utf8_lossy(&j.body).into_owned())
        .collect();
    assert!(
        received.iter().all(|b| b.contains("with ESMTPSA id ")),
        "{received:?}"
    );
    assert!(received.iter().any(|b| b.contains("using TLSv1.3")));
}

#[tokio::test]
async fn a_dot_on_the_first_body_line_is_unstuffed() {
    let server = start(Config::default()).await;
    let out = mx_session_with_data(&server, b"..first\r\nsecond\r\n.\r\nQUIT\r\n").await;
    assert!(out.starts_with("250 2.0.0 OK queued as "), "{out}");
    let bodies = server.bodies().await;
    let body = String::from_utf8_lossy(&bodies[0]).into_owned();
    assert!(body.ends_with("\r\n.first\r\nsecond\r\n"), "{body:?}");
}
