//! Configured limits give the right reply: connections in total and per IP,
//! command and DATA timeouts, recipients per message.

mod harness;

use std::time::{Duration, Instant};

use harness::{connect, start};
use postern_core::Config;
use postern_store::QueueStore;

#[tokio::test]
async fn connections_per_ip_and_in_total_are_capped() {
    let mut config = Config::default();
    config.limits.max_connections_per_ip = 2;
    let server = start(config).await;
    let mut a = connect(server.mx).await;
    let mut b = connect(server.mx).await;
    assert!(a.reply().await.unwrap().starts_with("220 "));
    assert!(b.reply().await.unwrap().starts_with("220 "));
    let mut c = connect(server.mx).await;
    let r = c.reply().await.unwrap();
    assert!(r.starts_with("421 4.7.0 Too many connections"), "{r}");
    // 421 closes the transmission channel (RFC 5321 §3.8).
    assert_eq!(c.rest().await, "");
    // Another loopback address is another client.
    let mut other = harness::Client::new(
        tokio::net::TcpSocket::new_v4()
            .and_then(|s| {
                s.bind("127.0.0.2:0".parse().unwrap())?;
                Ok(s)
            })
            .unwrap()
            .connect(server.mx)
            .await
            .unwrap(),
    );
    assert!(other.reply().await.unwrap().starts_with("220 "));
    // A slot frees up when a session ends: once the server has closed A
    // (EOF after the 221), a new connection is greeted - polled, since
    // the slot goes back as the session's task ends, just after the close.
    assert!(a.cmd("QUIT").await.starts_with("221 "));
    a.rest().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut d = connect(server.mx).await;
        let r = d.reply().await.unwrap();
        if r.starts_with("220 ") {
            break;
        }
        assert!(r.starts_with("421 4.7.0 Too many connections"), "{r}");
        assert!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut config = Config::default();
    config.limits.max_connections = 1;
    let server = start(config).await;
    let mut a = connect(server.submission).await;
    assert!(a.reply().await.unwrap().starts_with("220 "));
    let mut b = connect(server.mx).await;
    assert!(b.reply().await.unwrap().starts_with("421 4.7.0"));
    assert_eq!(b.rest().await, "");
}

#[tokio::test]
async fn command_and_data_timeouts_close_with_421() {
    let mut config = Config::default();
    config.limits.command_timeout = Duration::from_millis(300);
    config.limits.data_timeout = Duration::from_millis(300);
    let server = start(config).await;
    let mut c = connect(server.mx).await;
    c.reply().await;
    let t = Instant::now();
    let rest = c.rest().await;
    assert!(rest.starts_with("421 4.4.2 "), "{rest}");
    assert!(t.elapsed() < Duration::from_secs(5));

    let mut c = connect(server.mx).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@example.org>").await;
    c.cmd("RCPT TO:<u@relay.example>").await;
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: slow\r\n\r\nand then nothing").await;
    let rest = c.rest().await;
    assert!(rest.starts_with("421 4.4.2 "), "{rest}");
    assert_eq!(server.queued().await, 0, "a half message is never queued");
}

#[tokio::test]
async fn recipients_per_message_are_capped_with_452() {
    let mut config = Config::default();
    config.limits.max_recipients = 3;
    let server = start(config).await;
    let mut c = connect(server.mx).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@example.org>").await;
    for i in 0..3 {
        assert!(c
            .cmd(&format!("RCPT TO:<u{i}@relay.example>"))
            .await
            .starts_with("250 "));
    }
    let r = c.cmd("RCPT TO:<u9@relay.example>").await;
    assert!(r.starts_with("452 4.5.3 "), "{r}");
    c.cmd("DATA").await;
    c.send(b"Subject: x\r\n\r\nx\r\n.\r\n").await;
    assert!(c.reply().await.unwrap().starts_with("250 2.0.0"));
    let jobs = server.store.claim_due(i64::MAX / 4, 100, 1).await.unwrap();
    assert_eq!(jobs[0].recipients.len(), 3);
}

#[tokio::test]
async fn dsn_parameters_8bitmime_and_smtputf8_are_kept_with_the_envelope() {
    let server = start(Config::default()).await;
    let mut c = connect(server.mx).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    let r = c
        .cmd("MAIL FROM:<jörg@example.org> SMTPUTF8 BODY=8BITMIME RET=HDRS ENVID=env-1")
        .await;
    assert!(r.starts_with("250 2.1.0"), "{r}");
    let r = c
        .cmd("RCPT TO:<zoë@relay.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;zoe@relay.example")
        .await;
    assert!(r.starts_with("250 2.1.5"), "{r}");
    c.cmd("DATA").await;
    c.send("Subject: ünïcode\r\n\r\nbody\r\n.\r\n".as_bytes())
        .await;
    assert!(c.reply().await.unwrap().starts_with("250 2.0.0"));
    let jobs = server.store.claim_due(i64::MAX / 4, 100, 1).await.unwrap();
    let job = &jobs[0];
    assert!(job.smtputf8 && job.eight_bit);
    assert_eq!(job.mail_from, "jörg@example.org");
    assert_eq!(job.recipients[0].address, "zoë@relay.example");
    assert_eq!(job.recipients[0].notify, vec!["SUCCESS", "FAILURE"]);
    // smtp-proto accepts only the rfc822 address type and decodes the xtext.
    assert_eq!(
        job.recipients[0].orcpt.as_deref(),
        Some("zoe@relay.example")
    );
}

#[tokio::test]
async fn the_session_follows_the_command_sequence() {
    let server = start(Config::default()).await;
    let mut c = connect(server.mx).await;
    c.reply().await;
    assert!(c
        .cmd("MAIL FROM:<a@example.org>")
        .await
        .starts_with("503 5.5.1"));
    assert!(c.cmd("HELO client.test").await.starts_with("250 mx.test"));
    // HELO: no extensions, so no ESMTP parameters.
    assert!(c
        .cmd("MAIL FROM:<a@example.org> SIZE=10")
        .await
        .starts_with("555 5.5.4"));
    assert!(c
        .cmd("MAIL FROM:<a@example.org>")
        .await
        .starts_with("250 2.1.0"));
    assert!(c
        .cmd("MAIL FROM:<a@example.org>")
        .await
        .starts_with("503 5.5.1"));
    assert!(c.cmd("DATA").await.starts_with("554 5.5.1"));
    assert!(c.cmd("RSET").await.starts_with("250 2.0.0"));
    assert!(c
        .cmd("RCPT TO:<u@relay.example>")
        .await
        .starts_with("503 5.5.1"));
    let help = c.cmd("HELP").await;
    assert!(
        help.starts_with("214-2.0.0 ") && help.contains("\r\n214 2.0.0 "),
        "{help}"
    );
    assert!(c.cmd("EXPN staff").await.starts_with("502 5.5.1"));
    assert_eq!(
        c.cmd("QUIT").await,
        "221 2.0.0 mx.test closing connection\r\n"
    );
    assert_eq!(c.rest().await, "");
}
