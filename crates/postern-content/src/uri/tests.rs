use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use postern_core::config::{ContentDomainPolicy, InboundAction};
use postern_core::Recipient;
use postern_queue::ClientInfo;

use super::extract::{self, Hosts, UrlHost};
use super::*;

fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/uri")
        .join(rel)
}

fn key_line(k: &LookupKey) -> String {
    match k {
        LookupKey::Domain(d) => format!("domain {d}"),
        LookupKey::Address(a) => format!("address {a}"),
    }
}

/// The lines of a vector file, without comments and blank lines.
fn lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Each `hosts/NAME.{txt,html,eml}` read as plain text, as an HTML part,
/// or as a whole message, gives the lookup keys in `NAME.expect`, in
/// order, once each.
#[test]
fn url_extraction_vectors() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(testdata("hosts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e != "expect"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    for file in files {
        let input = std::fs::read(&file).unwrap();
        let hosts = match file.extension().and_then(|e| e.to_str()) {
            Some("txt") => {
                let mut h = Hosts::default();
                extract::text_hosts(std::str::from_utf8(&input).unwrap(), &mut h);
                h.found
            }
            Some("html") => {
                let mut h = Hosts::default();
                extract::html_hosts(std::str::from_utf8(&input).unwrap(), &mut h);
                h.found
            }
            Some("eml") => {
                let message = mail_parser::MessageParser::default().parse(&input).unwrap();
                extract::message_hosts(&message)
            }
            other => panic!("{}: unknown kind {other:?}", file.display()),
        };
        let mut keys: Vec<LookupKey> = Vec::new();
        for k in hosts.iter().filter_map(LookupKey::of) {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        let got: Vec<String> = keys.iter().map(key_line).collect();
        let want = lines(&std::fs::read_to_string(file.with_extension("expect")).unwrap());
        assert_eq!(got, want, "{}", file.display());
    }
}

/// `domains.tsv`: a URL host, what it is looked up as, and the name asked.
#[test]
fn domain_reduction_vectors() {
    let text = std::fs::read_to_string(testdata("domains.tsv")).unwrap();
    let rows = lines(&text);
    assert!(rows.len() >= 10);
    for row in rows {
        let cols: Vec<&str> = row.split('\t').collect();
        assert_eq!(cols.len(), 3, "{row}");
        let host = match cols[0].parse::<IpAddr>() {
            Ok(ip) => UrlHost::Address(ip),
            Err(_) => UrlHost::Domain(cols[0].to_owned()),
        };
        let key = LookupKey::of(&host);
        assert_eq!(
            key.as_ref().map(key_line).as_deref().unwrap_or("-"),
            cols[1],
            "{row}"
        );
        assert_eq!(
            key.map(|k| k.query_name("multi.uribl.test"))
                .as_deref()
                .unwrap_or("-"),
            cols[2],
            "{row}"
        );
    }
}

fn zone(name: &str, codes: &[&str], mask: Option<u8>) -> UriblZone {
    UriblZone {
        zone: name.into(),
        codes: codes.iter().map(|c| c.parse().unwrap()).collect(),
        mask,
    }
}

/// Any 127/8 answer lists, but for the lists' "query refused" answers;
/// codes and masks narrow it.
#[test]
fn which_answers_count_as_a_listing() {
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    let any = zone("uribl.test", &[], None);
    assert!(is_listing(&any, &[ip("127.0.0.2")]));
    assert!(is_listing(&any, &[ip("127.0.0.64")]));
    assert!(!is_listing(&any, &[]));
    assert!(
        !is_listing(&any, &[ip("127.0.0.1")]),
        "URIBL: query refused"
    );
    assert!(
        !is_listing(&any, &[ip("127.255.255.252")]),
        "Spamhaus errors"
    );
    assert!(!is_listing(&any, &[ip("192.0.2.2")]));
    let codes = zone("uribl.test", &["127.0.0.2"], None);
    assert!(is_listing(&codes, &[ip("127.0.0.4"), ip("127.0.0.2")]));
    assert!(!is_listing(&codes, &[ip("127.0.0.4")]));
    // SURBL multi: 127.0.0.X, X a bit set; mask 8|64 (PH and ABUSE).
    let multi = zone("multi.surbl.test", &[], Some(8 | 64));
    assert!(is_listing(&multi, &[ip("127.0.0.8")]));
    assert!(is_listing(&multi, &[ip("127.0.0.72")]));
    assert!(!is_listing(&multi, &[ip("127.0.0.16")]));
    assert!(!is_listing(&multi, &[ip("127.1.0.8")]));
}

/// A name server on paper: answers from `listed`, NXDOMAIN for the rest;
/// names in `slow` never answer; every question counted.
#[derive(Default)]
struct FakeDns {
    listed: HashMap<String, Vec<String>>,
    slow: Vec<String>,
    asked: Mutex<Vec<String>>,
}

impl ScreenDns for FakeDns {
    fn resolve<'a>(
        &'a self,
        query: &'a Query,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<String>, String>> + Send + 'a>> {
        Box::pin(async move {
            let Query::Ipv4(name) = query else {
                return Err(format!("not a URI list question: {query:?}"));
            };
            self.asked.lock().unwrap().push(name.clone());
            if self.slow.contains(name) {
                std::future::pending::<()>().await;
            }
            Ok(self.listed.get(name).cloned().unwrap_or_default())
        })
    }
}

impl FakeDns {
    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

fn config(zones: &[&str]) -> ContentConfig {
    ContentConfig {
        uribl: zones.iter().map(|z| zone(z, &[], None)).collect(),
        uribl_lookup_timeout: Duration::from_millis(200),
        ..ContentConfig::default()
    }
}

fn client() -> ClientInfo {
    ClientInfo {
        ip: "192.0.2.1".parse().unwrap(),
        helo: "mx.sender.test".into(),
        protocol: "ESMTP",
        tls: None,
    }
}

fn envelope(domains: &[&str]) -> Envelope {
    Envelope {
        mail_from: "a@sender.test".into(),
        recipients: domains
            .iter()
            .map(|d| Recipient {
                address: format!("u@{d}"),
                domain: d.to_string(),
                notify: vec![],
                orcpt: None,
            })
            .collect(),
        ..Default::default()
    }
}

/// Runs the check on a text/plain message with `body` to `domains`.
async fn check(uri: &UriBlocklists, body: &str, domains: &[&str]) -> Finding {
    let raw = format!("From: a@sender.test\r\nSubject: s\r\n\r\n{body}\r\n").into_bytes();
    let parsed = mail_parser::MessageParser::default().parse(&raw);
    let client = client();
    let envelope = envelope(domains);
    let inspected = Inspected {
        client: &client,
        envelope: &envelope,
        raw: &raw,
        parsed: parsed.as_ref(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
    };
    uri.run(&inspected).await
}

use postern_core::Envelope;
use postern_smtp::screen::Query;

#[tokio::test]
async fn a_listed_domain_is_found_with_the_zone_named_and_the_domains_action() {
    let dns = Arc::new(FakeDns {
        listed: HashMap::from([
            (
                "evil.test.black.test".to_owned(),
                vec!["127.0.0.2".to_owned()],
            ),
            (
                "7.2.0.192.black.test".to_owned(),
                vec!["127.0.0.2".to_owned()],
            ),
        ]),
        ..Default::default()
    });
    let mut config = config(&["grey.test", "black.test"]);
    config.domain.push(ContentDomainPolicy {
        uri_listed: Some(InboundAction::Quarantine),
        ..ContentDomainPolicy::new("soft.test")
    });
    let uri = UriBlocklists::new(&config, dns.clone()).unwrap();

    let f = check(
        &uri,
        "buy at http://www.shop.evil.test/now",
        &["relay.test"],
    )
    .await;
    assert_eq!(
        f,
        Finding::Found {
            action: InboundAction::Reject,
            reason: "URL domain evil.test listed by black.test".into(),
            headers: vec![],
        }
    );
    // Each zone asked once for the registrable domain.
    let mut asked = dns.asked();
    asked.sort();
    assert_eq!(asked, vec!["evil.test.black.test", "evil.test.grey.test"]);

    // The domain's own action; the strictest of several domains.
    let f = check(&uri, "http://evil.test/", &["soft.test"]).await;
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
    let f = check(&uri, "http://evil.test/", &["soft.test", "relay.test"]).await;
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

    // An address host, asked reversed.
    let f = check(&uri, "http://192.0.2.7/login", &["relay.test"]).await;
    assert_eq!(
        f,
        Finding::Found {
            action: InboundAction::Reject,
            reason: "URL address 192.0.2.7 listed by black.test".into(),
            headers: vec![],
        }
    );

    // Unlisted: clean, with the count in the note.
    let f = check(
        &uri,
        "see http://good.test/ and www.fine.test",
        &["relay.test"],
    )
    .await;
    assert_eq!(
        f,
        Finding::Clean {
            note: "2 domains".into(),
            headers: vec![]
        }
    );
}

#[tokio::test]
async fn answers_are_cached_across_messages() {
    let dns = Arc::new(FakeDns {
        listed: HashMap::from([(
            "evil.test.black.test".to_owned(),
            vec!["127.0.0.2".to_owned()],
        )]),
        ..Default::default()
    });
    let uri = UriBlocklists::new(&config(&["black.test"]), dns.clone()).unwrap();
    for _ in 0..3 {
        let f = check(&uri, "http://evil.test/ http://good.test/", &["relay.test"]).await;
        assert!(matches!(f, Finding::Found { .. }), "{f:?}");
    }
    let mut asked = dns.asked();
    asked.sort();
    assert_eq!(asked, vec!["evil.test.black.test", "good.test.black.test"]);
}

/// A URL domain DNS cannot carry (a label over 63 octets) is not listed
/// and not asked: asking would fail and defer the message on every retry.
#[tokio::test]
async fn a_domain_dns_cannot_carry_is_not_listed_and_not_asked() {
    let dns = Arc::new(FakeDns::default());
    let uri = UriBlocklists::new(&config(&["black.test"]), dns.clone()).unwrap();
    let long = "a".repeat(64);
    let f = check(
        &uri,
        &format!("http://{long}.test/ http://good.test/"),
        &["relay.test"],
    )
    .await;
    assert!(matches!(f, Finding::Clean { .. }), "{f:?}");
    assert_eq!(dns.asked(), vec!["good.test.black.test"]);
    assert!(representable(&format!("{}.test", "a".repeat(63))));
    assert!(!representable(&format!("{long}.test")));
    assert!(!representable(&format!("{}.test", "a.".repeat(130))));
    assert!(!representable("a..test"));
}

/// A lookup past its time limit fails the check only when no other
/// lookup found a listing; the check never takes much longer than one
/// time limit (the lookups run side by side).
#[tokio::test]
async fn a_timed_out_lookup_fails_the_check_only_without_a_listing() {
    let dns = Arc::new(FakeDns {
        listed: HashMap::from([(
            "evil.test.black.test".to_owned(),
            vec!["127.0.0.2".to_owned()],
        )]),
        slow: vec![
            "slow.test.black.test".to_owned(),
            "slower.test.black.test".to_owned(),
        ],
        ..Default::default()
    });
    let uri = UriBlocklists::new(&config(&["black.test"]), dns.clone()).unwrap();
    let started = std::time::Instant::now();
    let f = check(
        &uri,
        "http://slow.test/ http://slower.test/ http://evil.test/",
        &["relay.test"],
    )
    .await;
    assert!(matches!(f, Finding::Found { .. }), "{f:?}");
    let f = check(&uri, "http://slow.test/ http://good.test/", &["relay.test"]).await;
    match f {
        Finding::Failed { reason } => assert_eq!(
            reason,
            "URI list lookup of slow.test.black.test timed out after 200 ms"
        ),
        other => panic!("{other:?}"),
    }
    // Two messages with one time limit each (200 ms), not one per lookup.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    // A timeout is not cached: the next message asks again.
    let before = dns.asked().len();
    let _ = check(&uri, "http://slow.test/", &["relay.test"]).await;
    assert_eq!(dns.asked().len(), before + 1);
}

#[tokio::test]
async fn at_most_max_domains_are_looked_up_the_first_found() {
    let dns = Arc::new(FakeDns::default());
    let mut config = config(&["black.test"]);
    config.uribl_max_domains = 3;
    let uri = UriBlocklists::new(&config, dns.clone()).unwrap();
    let body: String = (0..10).map(|i| format!("http://d{i}.test/ ")).collect();
    // The same domain again and again is one lookup.
    let body = format!("http://www.d0.test/a http://d0.test/b {body}");
    let f = check(&uri, &body, &["relay.test"]).await;
    assert_eq!(
        f,
        Finding::Clean {
            note: "3 domains".into(),
            headers: vec![]
        }
    );
    let mut asked = dns.asked();
    asked.sort();
    assert_eq!(
        asked,
        vec![
            "d0.test.black.test",
            "d1.test.black.test",
            "d2.test.black.test"
        ]
    );
}

#[test]
fn no_zone_no_check() {
    assert!(UriBlocklists::new(&ContentConfig::default(), Arc::new(FakeDns::default())).is_none());
}

/// A message naming a great many hosts costs at most MAX_HOSTS of them,
/// the first found.
#[test]
fn at_most_max_hosts_are_kept_per_message() {
    let body: String = (0..5000).map(|i| format!("http://h{i}.test/ ")).collect();
    let raw = format!("Subject: many\r\nContent-Type: text/plain\r\n\r\n{body}\r\n");
    let parsed = mail_parser::MessageParser::default()
        .parse(raw.as_bytes())
        .unwrap();
    let hosts = extract::message_hosts(&parsed);
    assert_eq!(hosts.len(), extract::MAX_HOSTS);
    assert_eq!(hosts[0], extract::UrlHost::Domain("h0.test".into()));
    assert_eq!(
        hosts[extract::MAX_HOSTS - 1],
        extract::UrlHost::Domain(format!("h{}.test", extract::MAX_HOSTS - 1))
    );
}
