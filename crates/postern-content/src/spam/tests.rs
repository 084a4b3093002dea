//! The rspamd client against a stand-in server that reads the request as
//! HTTP and answers what each test gives it. (The real rspamd is driven by
//! tests/e2e/test_content_spam.py.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_core::config::{ContentDomainPolicy, InboundAction, RspamdConfig};
use postern_core::{Envelope, Recipient};
use postern_queue::ClientInfo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// One request as the stand-in read it.
#[derive(Debug, Clone)]
struct Seen {
    request_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    fn one(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(all.len() <= 1, "{name}: {all:?}");
        all.first().copied()
    }
}

enum Answer {
    /// Status and body.
    Reply(u16, String),
    /// Reads the request, then says nothing.
    Stall,
}

struct Stand {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// Serves `answers` in turn, one per connection.
async fn stand_in(answers: Vec<Answer>) -> Stand {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        for answer in answers {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut data = Vec::new();
            let mut buf = [0u8; 8192];
            let head_end = loop {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed before the request's head");
                data.extend_from_slice(&buf[..n]);
                if let Some(p) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p;
                }
            };
            let head = String::from_utf8(data[..head_end].to_vec()).unwrap();
            let mut lines = head.split("\r\n");
            let request_line = lines.next().unwrap().to_owned();
            let headers: Vec<(String, String)> = lines
                .map(|l| {
                    let (n, v) = l.split_once(':').unwrap();
                    (n.to_owned(), v.trim().to_owned())
                })
                .collect();
            let length: usize = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().unwrap())
                .expect("a Content-Length");
            let mut body = data[head_end + 4..].to_vec();
            while body.len() < length {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed in the body");
                body.extend_from_slice(&buf[..n]);
            }
            record.lock().unwrap().push(Seen {
                request_line,
                headers,
                body,
            });
            match answer {
                Answer::Reply(status, text) => {
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    conn.write_all(reply.as_bytes()).await.unwrap();
                }
                Answer::Stall => {
                    tokio::spawn(async move {
                        // Held open, unanswered, until the test ends.
                        std::future::pending::<()>().await;
                        drop(conn);
                    });
                }
            }
        }
    });
    Stand { url, seen }
}

fn reply(score: f64, symbols: &[(&str, f64)]) -> Answer {
    let symbols: serde_json::Map<String, serde_json::Value> = symbols
        .iter()
        .map(|(n, s)| {
            (
                n.to_string(),
                serde_json::json!({"name": n, "score": s, "metric_score": 1.0}),
            )
        })
        .collect();
    Answer::Reply(
        200,
        serde_json::json!({
            "is_skipped": false,
            "score": score,
            "required_score": 15.0,
            "action": "no action",
            "symbols": symbols,
            "messages": {},
            "message-id": "m@sender.test",
            "time_real": 0.01,
        })
        .to_string(),
    )
}

fn config(url: &str) -> ContentConfig {
    ContentConfig {
        rspamd: Some(RspamdConfig {
            url: url.to_owned(),
            timeout: Duration::from_millis(500),
            password: Some("q1".into()),
            tag_score: 5.0,
            quarantine_score: Some(10.0),
            reject_score: 15.0,
        }),
        ..ContentConfig::default()
    }
}

const RAW: &[u8] = b"From: a@sender.test\r\nTo: u@relay.test\r\nSubject: offer\r\n\r\nbody\r\n";

async fn scan(check: &Rspamd, domains: &[&str], tls: Option<&str>) -> Finding {
    let client = ClientInfo {
        ip: "::ffff:192.0.2.1".parse().unwrap(),
        helo: "mx.sender.test".into(),
        protocol: "ESMTP",
        tls: tls.map(str::to_owned),
    };
    let envelope = Envelope {
        mail_from: "a@sender.test".into(),
        recipients: domains
            .iter()
            .enumerate()
            .map(|(i, d)| Recipient {
                address: format!("u{i}@{d}"),
                domain: d.to_string(),
                notify: vec![],
                orcpt: None,
            })
            .collect(),
        ..Default::default()
    };
    let parsed = mail_parser::MessageParser::default().parse(RAW);
    let inspected = Inspected {
        client: &client,
        envelope: &envelope,
        raw: RAW,
        parsed: parsed.as_ref(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
    };
    check.run(&inspected).await
}

fn build(config: &ContentConfig) -> Rspamd {
    Rspamd::new(config, "postern.test").unwrap().unwrap()
}

/// rspamd's protocol: POST /checkv2, the message as the body, the session
/// in request headers (one Rcpt per recipient).
#[tokio::test]
async fn the_request_carries_the_message_and_the_session() {
    let stand = stand_in(vec![reply(0.0, &[])]).await;
    let check = build(&config(&stand.url));
    let f = scan(
        &check,
        &["relay.test", "other.test"],
        Some("TLSv1.3 TLS13_AES_256_GCM_SHA384"),
    )
    .await;
    assert!(matches!(f, Finding::Clean { .. }), "{f:?}");
    let seen = stand.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.request_line, "POST /checkv2 HTTP/1.1");
    assert_eq!(seen.body, RAW);
    assert_eq!(
        seen.one("IP"),
        Some("192.0.2.1"),
        "the IPv4 of a mapped address"
    );
    assert_eq!(seen.one("Helo"), Some("mx.sender.test"));
    assert_eq!(seen.one("From"), Some("a@sender.test"));
    assert_eq!(seen.all("Rcpt"), vec!["u0@relay.test", "u1@other.test"]);
    assert_eq!(seen.one("MTA-Name"), Some("postern.test"));
    assert_eq!(seen.one("TLS-Version"), Some("TLSv1.3"));
    assert_eq!(seen.one("TLS-Cipher"), Some("TLS13_AES_256_GCM_SHA384"));
    assert_eq!(seen.one("Pass"), Some("all"));
    assert_eq!(seen.one("Password"), Some("q1"));
    assert_eq!(seen.one("Hostname"), None, "not known: rspamd looks it up");
}

/// The score goes on the message whatever it is; the thresholds decide
/// the action: tag, quarantine, reject.
#[tokio::test]
async fn the_score_and_symbols_become_headers_and_the_thresholds_the_action() {
    let stand = stand_in(vec![
        reply(1.2, &[("MIME_GOOD", -0.1), ("R_SPF_NA", 1.3)]),
        reply(7.5, &[("POSTERN_TEST_SCORE", 7.5)]),
        reply(12.0, &[]),
        reply(15.0, &[]),
    ])
    .await;
    let check = build(&config(&stand.url));

    let f = scan(&check, &["relay.test"], None).await;
    assert_eq!(
        f,
        Finding::Clean {
            note: "score=1.20".into(),
            headers: b"X-Spam-Score: 1.20\r\nX-Spam-Status: No, score=1.20 action=accept\r\nX-Spam-Symbols: R_SPF_NA(1.30), MIME_GOOD(-0.10)\r\n".to_vec(),
        }
    );
    let f = scan(&check, &["relay.test"], None).await;
    assert_eq!(
        f,
        Finding::Found {
            action: InboundAction::Tag,
            reason: "spam score 7.50".into(),
            headers: b"X-Spam-Score: 7.50\r\nX-Spam-Status: Yes, score=7.50 action=tag\r\nX-Spam-Symbols: POSTERN_TEST_SCORE(7.50)\r\n".to_vec(),
        }
    );
    let f = scan(&check, &["relay.test"], None).await;
    assert!(
        matches!(&f, Finding::Found { action: InboundAction::Quarantine, reason, .. } if reason == "spam score 12.00"),
        "{f:?}"
    );
    // At the threshold counts.
    let f = scan(&check, &["relay.test"], None).await;
    assert!(
        matches!(&f, Finding::Found { action: InboundAction::Reject, reason, .. } if reason == "spam score 15.00"),
        "{f:?}"
    );
}

/// A relay domain's thresholds replace the defaults for it; a message to
/// several domains gets the strictest.
#[tokio::test]
async fn per_domain_thresholds_and_the_strictest_domain() {
    let stand = stand_in(vec![reply(16.0, &[]), reply(16.0, &[]), reply(3.0, &[])]).await;
    let mut config = config(&stand.url);
    config.domain.push(ContentDomainPolicy {
        spam_reject_score: Some(30.0),
        ..ContentDomainPolicy::new("lenient.test")
    });
    config.domain.push(ContentDomainPolicy {
        spam_tag_score: Some(2.0),
        ..ContentDomainPolicy::new("touchy.test")
    });
    let check = build(&config);
    let f = scan(&check, &["lenient.test"], None).await;
    assert!(
        matches!(
            f,
            Finding::Found {
                action: InboundAction::Quarantine,
                ..
            }
        ),
        "{f:?}"
    );
    let f = scan(&check, &["lenient.test", "relay.test"], None).await;
    assert!(
        matches!(
            f,
            Finding::Found {
                action: InboundAction::Reject,
                ..
            }
        ),
        "{f:?}"
    );
    let f = scan(&check, &["touchy.test"], None).await;
    assert!(
        matches!(
            f,
            Finding::Found {
                action: InboundAction::Tag,
                ..
            }
        ),
        "{f:?}"
    );
}

/// No rspamd, one that never answers, one that answers an error or
/// something else than its JSON: no answer, for `on_error` to decide.
#[tokio::test]
async fn an_unreachable_silent_or_confused_rspamd_is_a_failure() {
    // A port nothing listens on: bound, then let go.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let check = build(&config(&format!("http://{closed}")));
    match scan(&check, &["relay.test"], None).await {
        Finding::Failed { reason } => {
            assert!(reason.starts_with("rspamd: "), "{reason}");
            assert!(reason.contains("Connection refused"), "{reason}");
        }
        other => panic!("{other:?}"),
    }

    let stand = stand_in(vec![
        Answer::Stall,
        Answer::Reply(500, "{\"error\":\"internal\"}".into()),
        Answer::Reply(200, "<html>not rspamd</html>".into()),
        Answer::Reply(200, "{\"action\":\"no action\"}".into()),
        Answer::Reply(
            200,
            "{\"is_skipped\":true,\"score\":0.0,\"required_score\":15.0,\"action\":\"no action\",\"symbols\":{}}".into(),
        ),
    ])
    .await;
    let check = build(&config(&stand.url));
    let started = std::time::Instant::now();
    assert_eq!(
        scan(&check, &["relay.test"], None).await,
        Finding::Failed {
            reason: "rspamd: no answer within 0.5 s".into()
        }
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    for want in [
        "HTTP 500",
        "reply not understood",
        "reply not understood",
        "skipped the message",
    ] {
        match scan(&check, &["relay.test"], None).await {
            Finding::Failed { reason } => assert!(reason.contains(want), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}

/// Long symbol lists are folded under 78 characters a line, the heaviest
/// first; odd characters in a name never reach the header.
#[test]
fn symbols_fold_and_stay_clean() {
    let mut symbols = BTreeMap::new();
    for i in 0..20 {
        symbols.insert(format!("SYMBOL_NUMBER_{i:02}"), Symbol { score: i as f64 });
    }
    symbols.insert("BAD\r\nX-Injected: 1".into(), Symbol { score: 100.0 });
    let reply = Reply {
        score: 290.0,
        is_skipped: false,
        symbols,
    };
    let text = String::from_utf8(spam_headers(&reply, InboundAction::Reject)).unwrap();
    assert!(text.ends_with("\r\n"));
    let lines: Vec<&str> = text.trim_end_matches("\r\n").split("\r\n").collect();
    assert!(lines.iter().all(|l| l.len() <= 78), "{text}");
    assert!(!text.contains("X-Injected:"), "{text}");
    assert!(
        lines[2].starts_with("X-Spam-Symbols: BADX-Injected1(100.00), SYMBOL_NUMBER_19(19.00),"),
        "{text}"
    );
    // Folded lines start with white space: one field.
    assert!(lines[3..].iter().all(|l| l.starts_with('\t')), "{text}");
    assert_eq!(text.matches("SYMBOL_NUMBER_").count(), 20);
}

#[test]
fn no_table_no_check_and_a_bad_url_is_an_error() {
    assert!(Rspamd::new(&ContentConfig::default(), "h")
        .unwrap()
        .is_none());
    let mut c = config("http://");
    assert!(Rspamd::new(&c, "h").is_err());
    c.rspamd.as_mut().unwrap().url = "http://exa mple:11333".into();
    assert!(Rspamd::new(&c, "h").is_err());
}
