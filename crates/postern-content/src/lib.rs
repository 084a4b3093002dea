//! Content checks of mail that arrives without AUTH on `mx` listeners,
//! after its authentication: viruses, spam, listed URLs, refused
//! attachments. The message is parsed once (`mail-parser`) for every
//! check, the checks run side by side, and what each finds is turned into
//! one verdict with the action configured for it (`[content]`): the
//! strictest wins.
//!
//! Each check lives in a module of its own and implements [`Check`]; a
//! check whose table is missing from the configuration is not built.

mod attachments;
mod clamd;
mod finding;
pub mod spam;
pub mod uri;
mod verdict;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use postern_core::config::ContentConfig;
use postern_core::Envelope;
use postern_queue::{ClientInfo, ContentInspector, InboundVerdict};
use postern_smtp::screen::ScreenDns;

pub use attachments::{sniff, AttachmentCheck};
pub use clamd::{Clamd, Scan, ScanError, VirusCheck};
pub use finding::Finding;

/// What the checks need from the server around them.
pub struct Services {
    /// DNS for the URI lists: the server's resolver on `[dns]
    /// nameservers`, the one the `mx` screening asks.
    pub dns: Arc<dyn ScreenDns>,
    /// This server's name (`server.hostname`), given to rspamd as the
    /// MTA's.
    pub hostname: String,
}

/// A check that cannot be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("content.rspamd.url: {0}")]
    RspamdUrl(String),
}

/// The message as the checks see it.
pub struct Inspected<'a> {
    pub client: &'a ClientInfo,
    pub envelope: &'a Envelope,
    /// The message as received (forged fields of ours removed).
    pub raw: &'a [u8],
    /// `raw` parsed; None when it does not parse as a message at all
    /// (each check decides what that means for it).
    pub parsed: Option<&'a mail_parser::Message<'a>>,
    /// The recipients' domains, lower-cased, once each: the keys of the
    /// per-domain actions (`ContentConfig::action`).
    pub domains: Vec<String>,
}

impl Inspected<'_> {
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.domains.iter().map(String::as_str)
    }
}

/// One content check.
pub trait Check: Send + Sync {
    /// Its name in summaries, logs and metrics (`virus`, `spam`, …).
    fn name(&self) -> &'static str;
    /// The header field names this check writes: forged copies are
    /// removed from the message before any check runs.
    fn owned_fields(&self) -> &'static [&'static str] {
        &[]
    }
    fn run<'a>(
        &'a self,
        message: &'a Inspected<'a>,
    ) -> Pin<Box<dyn Future<Output = Finding> + Send + 'a>>;
}

/// Every configured check, as the intake's content inspector.
pub struct ContentChecks {
    config: ContentConfig,
    checks: Vec<Box<dyn Check>>,
}

impl ContentChecks {
    /// The checks `config` turns on; None when it turns on none (no
    /// parsing, nothing added to inbound mail).
    pub fn from_config(
        config: &ContentConfig,
        services: &Services,
    ) -> Result<Option<Self>, SetupError> {
        let mut checks: Vec<Box<dyn Check>> = Vec::new();
        if let Some(clamd) = &config.clamd {
            checks.push(Box::new(VirusCheck::new(clamd, config)));
        }
        if let Some(attachments) = &config.attachments {
            checks.push(Box::new(AttachmentCheck::new(attachments, config)));
        }
        if let Some(uri) = uri::UriBlocklists::new(config, services.dns.clone()) {
            checks.push(Box::new(uri));
        }
        if let Some(spam) = spam::Rspamd::new(config, &services.hostname)? {
            checks.push(Box::new(spam));
        }
        Ok(Self::with_checks(config, checks))
    }

    /// `config`'s actions with the given checks (tests build their own).
    pub fn with_checks(config: &ContentConfig, checks: Vec<Box<dyn Check>>) -> Option<Self> {
        if checks.is_empty() {
            return None;
        }
        Some(ContentChecks {
            config: config.clone(),
            checks,
        })
    }

    /// Names of the checks in force, for the start-up log.
    pub fn names(&self) -> Vec<&'static str> {
        self.checks.iter().map(|c| c.name()).collect()
    }
}

impl ContentInspector for ContentChecks {
    fn inspect<'a>(
        &'a self,
        client: &'a ClientInfo,
        envelope: &'a Envelope,
        message: &'a mut Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = InboundVerdict> + Send + 'a>> {
        Box::pin(async move {
            let owned: Vec<&str> = self
                .checks
                .iter()
                .flat_map(|c| c.owned_fields().iter().copied())
                .collect();
            let removed = verdict::remove_fields(message, &owned);
            if removed > 0 {
                metrics::counter!("postern_content_forged_fields_removed_total")
                    .increment(removed as u64);
                tracing::info!(peer = %client.ip, removed, "removed header fields only the content checks write");
            }
            let message: &Vec<u8> = message;
            let parsed = mail_parser::MessageParser::default().parse(message.as_slice());
            let mut domains: Vec<String> = envelope
                .recipients
                .iter()
                .map(|r| r.domain.to_lowercase())
                .collect();
            domains.sort();
            domains.dedup();
            let inspected = Inspected {
                client,
                envelope,
                raw: message,
                parsed: parsed.as_ref(),
                domains,
            };
            let findings = futures_util::future::join_all(
                self.checks
                    .iter()
                    .map(|c| async { (c.name(), c.run(&inspected).await) }),
            )
            .await;
            verdict::combine(&findings, self.config.on_error(inspected.domains()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_core::config::{CheckFailure, ContentDomainPolicy, InboundAction};
    use postern_core::Recipient;
    use postern_smtp::screen::Query;
    use std::sync::Mutex;

    /// DNS for checks that never ask.
    struct NoDns;

    impl ScreenDns for NoDns {
        fn resolve<'a>(
            &'a self,
            _: &'a Query,
        ) -> Pin<Box<dyn Future<Output = Result<Vec<String>, String>> + Send + 'a>> {
            Box::pin(async { Err("no DNS here".into()) })
        }
    }

    /// The message, its subject as parsed, its domains.
    type Seen = Arc<Mutex<Vec<(Vec<u8>, Option<String>, Vec<String>)>>>;

    /// Records what it saw and finds what the message's domains say.
    struct Probe {
        seen: Seen,
        config: ContentConfig,
    }

    impl Check for Probe {
        fn name(&self) -> &'static str {
            "probe"
        }
        fn owned_fields(&self) -> &'static [&'static str] {
            &["X-Spam-Flag"]
        }
        fn run<'a>(
            &'a self,
            m: &'a Inspected<'a>,
        ) -> Pin<Box<dyn Future<Output = Finding> + Send + 'a>> {
            Box::pin(async move {
                self.seen.lock().unwrap().push((
                    m.raw.to_vec(),
                    m.parsed.and_then(|p| p.subject()).map(str::to_owned),
                    m.domains.clone(),
                ));
                // Stands in for a check's own per-domain key.
                let action = self.config.action(
                    m.domains(),
                    |p| (p.domain == "strict.test").then_some(InboundAction::Reject),
                    InboundAction::Tag,
                );
                Finding::Found {
                    action,
                    reason: "probe found it".into(),
                    headers: b"X-Spam-Flag: YES\r\n".to_vec(),
                }
            })
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

    #[tokio::test]
    async fn forged_fields_go_before_the_checks_see_the_parsed_message() {
        let mut config = ContentConfig::default();
        config.domain.push(ContentDomainPolicy {
            on_error: Some(CheckFailure::Defer),
            ..ContentDomainPolicy::new("strict.test")
        });
        let seen = Arc::new(Mutex::new(Vec::new()));
        let probe = Probe {
            seen: seen.clone(),
            config: config.clone(),
        };
        let services = Services {
            dns: Arc::new(NoDns),
            hostname: "postern.test".into(),
        };
        assert!(
            ContentChecks::from_config(&config, &services)
                .unwrap()
                .is_none(),
            "no check, no inspector"
        );
        let checks = ContentChecks::with_checks(&config, vec![Box::new(probe)]).unwrap();
        let client = ClientInfo {
            ip: "192.0.2.1".parse().unwrap(),
            helo: "mx.sender.test".into(),
            protocol: "ESMTP",
            tls: None,
        };
        let original =
            b"X-Spam-Flag: NO\r\nX-Postern-Content: accept\r\nSubject: hello\r\n\r\nbody\r\n";

        let mut message = original.to_vec();
        let v = checks
            .inspect(
                &client,
                &envelope(&["Loose.test", "loose.test"]),
                &mut message,
            )
            .await;
        assert_eq!(message, b"Subject: hello\r\n\r\nbody\r\n");
        let h = String::from_utf8(v.headers).unwrap();
        assert_eq!(
            h,
            "X-Spam-Flag: YES\r\nX-Postern-Content: tag;\r\n\tprobe found it\r\n"
        );
        assert_eq!(v.summary, "content: probe=tag(probe found it)");

        let mut message = original.to_vec();
        let v = checks
            .inspect(
                &client,
                &envelope(&["loose.test", "strict.test"]),
                &mut message,
            )
            .await;
        assert_eq!(v.refused.as_deref(), Some("probe found it"));

        // What the probe saw: the cleaned message, parsed, and each
        // recipient domain once, lower-cased.
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].0, b"Subject: hello\r\n\r\nbody\r\n");
        assert_eq!(seen[0].1.as_deref(), Some("hello"));
        assert_eq!(seen[0].2, vec!["loose.test".to_owned()]);
        assert_eq!(
            seen[1].2,
            vec!["loose.test".to_owned(), "strict.test".to_owned()]
        );
    }
}
