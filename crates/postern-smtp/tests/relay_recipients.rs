//! Relay domains take only recipients that exist (no backscatter): with
//! `relay.recipient_check = "list"`, unknown addresses are refused at RCPT
//! with 550 5.1.1, and refusals count toward the harvest slow-down.

mod harness;

use harness::{connect, start};
use postern_core::config::RecipientCheck;
use postern_core::Config;

#[tokio::test]
async fn unknown_recipients_at_relay_domains_are_refused_at_rcpt() {
    let mut config = Config::default();
    config.relay.recipient_check = RecipientCheck::List;
    config.relay.recipients = vec!["Known@relay.example".into()];
    let server = start(config).await;
    let mut c = connect(server.mx).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    assert!(c
        .cmd("MAIL FROM:<someone@sender.test>")
        .await
        .starts_with("250"));
    let r = c.cmd("RCPT TO:<nobody@relay.example>").await;
    assert!(r.starts_with("550 5.1.1"), "{r}");
    let r = c.cmd("RCPT TO:<known@relay.example>").await;
    assert!(r.starts_with("250"), "{r}");
    // Not a relay domain at all: still "relaying denied".
    let r = c.cmd("RCPT TO:<x@elsewhere.example>").await;
    assert!(r.starts_with("550 5.7.1"), "{r}");
}
