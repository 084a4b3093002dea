//! The intake's inbound authenticator: what Postern checks on mail that
//! arrives without AUTH on an `mx` listener, before it goes to the relay
//! domain's internal next hop.
//!
//! - SPF (RFC 7208) on the HELO identity and on the MAIL FROM identity;
//! - DKIM (RFC 6376, Ed25519 per RFC 8463);
//! - ARC (RFC 8617) verification;
//! - DMARC (RFC 7489) with alignment, from the SPF and DKIM results.
//!
//! The results go into an Authentication-Results header field (RFC 8601)
//! in front of the message, with the server's hostname as authserv-id;
//! fields already in the message claiming that authserv-id are removed
//! first (RFC 8601 §5), in place (`headers::strip_own_fields`).
//!
//! What is done with a failure is `verdict::decide`'s: the sender's DMARC
//! policy (`p=reject` refuses with `550 5.7.1`; `p=quarantine` holds the
//! message in the quarantine, `Intake` storing it there), local
//! actions per relay domain that may be stricter, and trusted forwarders
//! whose validated ARC chain says the original passed DMARC (RFC 7489 §6.7,
//! RFC 8617 §7.2).
//!
//! Every lookup has a time limit (`inbound_auth.dns_timeout`, set on the
//! resolver), and each check one for all its lookups together
//! (`inbound_auth.check_timeout`): a slow DNS makes a temporary error, never
//! a stalled port.

pub mod arc_seal;
pub mod headers;
pub mod verdict;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mail_auth::arc::ChainValidation;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput,
    DmarcResult, DnsError, Error, MessageAuthenticator, SpfOutput, SpfResult,
};
use postern_core::config::{CheckFailure, InboundAction, InboundAuthConfig, InboundSenderPolicy};
use postern_core::network::IpNet;
use postern_core::Envelope;
use postern_queue::{ClientInfo, InboundAuthenticator, InboundVerdict};
use postern_store::{DmarcObservation, ReportDataStore};

use crate::MailAuthError;
use verdict::{decide, Decision, DmarcState, Facts, Rules, SenderPolicy};

/// DMARC recordings waiting for the store at most.
const MAX_RECORDING: usize = 1024;

/// The inbound checks of one server, shared by every session.
pub struct InboundChecks {
    dns: MessageAuthenticator,
    /// The authserv-id (RFC 8601 §2.5): `server.hostname`.
    hostname: String,
    check_timeout: Duration,
    default_rules: Rules,
    /// Relay domain (lower-cased) → its own rules.
    domain_rules: HashMap<String, Rules>,
    /// Per From domain: what overrides the relay domain's rules.
    sender_rules: Vec<InboundSenderPolicy>,
    trusted_networks: Vec<IpNet>,
    /// ARC-Seal `d=` domains, lower-cased.
    trusted_sealers: Vec<String>,
    /// Seals what is passed on (`inbound_auth.arc_seal_domain`).
    arc_seal: Option<arc_seal::ArcSealing>,
    /// Where each message evaluated under DMARC is recorded for the
    /// aggregate reports (`reports.dmarc_aggregate`).
    reports: Option<Arc<dyn ReportDataStore>>,
    /// Recordings waiting for the store (at most `MAX_RECORDING`).
    recording: Arc<tokio::sync::Semaphore>,
}

/// A resolver for the checks: `[dns] nameservers` (UDP, TCP when a reply
/// is truncated), or the system's when that is empty; one try of at most
/// `timeout` per lookup.
pub(crate) fn resolver(
    nameservers: &[SocketAddr],
    timeout: Duration,
) -> Result<MessageAuthenticator, String> {
    use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
    let (config, mut opts) = if nameservers.is_empty() {
        mail_auth::hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| format!("the system's resolver configuration: {e}"))?
    } else {
        let servers = nameservers
            .iter()
            .map(|a| {
                let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                for c in &mut ns.connections {
                    c.port = a.port();
                }
                ns
            })
            .collect();
        (
            ResolverConfig::from_name_servers(servers),
            ResolverOpts::default(),
        )
    };
    opts.timeout = timeout;
    // hickory's `attempts` counts retries after the first try: none, so
    // a lookup takes at most `timeout`.
    opts.attempts = 0;
    MessageAuthenticator::new(config, opts).map_err(|e| e.to_string())
}

impl InboundChecks {
    pub fn new(
        config: &InboundAuthConfig,
        nameservers: &[SocketAddr],
        hostname: &str,
    ) -> Result<Self, MailAuthError> {
        let default_rules = Rules {
            honor_sender_policy: config.honor_dmarc_policy,
            dmarc_fail: config.dmarc_fail,
            spf_fail: config.spf_fail,
            defer_temperror: config.dmarc_temperror == CheckFailure::Defer,
        };
        let domain_rules = config
            .domain
            .iter()
            .map(|d| {
                (
                    d.domain.to_lowercase(),
                    default_rules.overridden(
                        d.honor_dmarc_policy,
                        d.dmarc_fail,
                        d.spf_fail,
                        d.dmarc_temperror,
                    ),
                )
            })
            .collect();
        Ok(InboundChecks {
            dns: resolver(nameservers, config.dns_timeout).map_err(MailAuthError::Resolver)?,
            hostname: hostname.to_ascii_lowercase(),
            check_timeout: config.check_timeout,
            default_rules,
            domain_rules,
            sender_rules: config.sender.clone(),
            // Validated with the config: every entry parses.
            trusted_networks: config
                .trusted_forwarders
                .iter()
                .filter_map(|n| postern_core::network::parse_network(n))
                .collect(),
            trusted_sealers: config
                .trusted_arc_sealers
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            arc_seal: None,
            reports: None,
            recording: Arc::new(tokio::sync::Semaphore::new(MAX_RECORDING)),
        })
    }

    /// Seals every message passed on with an ARC set (RFC 8617) in the
    /// name of a domain Postern holds verified.
    pub fn with_arc_sealing(mut self, sealing: arc_seal::ArcSealing) -> Self {
        self.arc_seal = Some(sealing);
        self
    }

    /// `rules` with what the sender's own entry says over them (the most
    /// specific entry covering the From domain).
    fn for_sender(&self, rules: Rules, from_domain: &str) -> Rules {
        let Some(p) = self
            .sender_rules
            .iter()
            .filter(|p| p.covers(from_domain))
            .max_by_key(|p| p.domain.len())
        else {
            return rules;
        };
        rules.overridden(
            p.honor_dmarc_policy,
            p.dmarc_fail,
            p.spf_fail,
            p.dmarc_temperror,
        )
    }

    /// Records every message evaluated under DMARC in `store`, for the
    /// aggregate reports (`crate::reports`).
    pub fn with_dmarc_reports(mut self, store: Arc<dyn ReportDataStore>) -> Self {
        self.reports = Some(store);
        self
    }

    /// Keeps the observation without holding up the message: the write
    /// joins the store's next group commit while the session goes on, and
    /// a failure costs the report a row, never the message its answer.
    fn record(&self, observation: Option<DmarcObservation>) {
        let (Some(store), Some(observation)) = (&self.reports, observation) else {
            return;
        };
        // Bounded: a store slower than the sessions for long leaves
        // messages out of the report (counted), never piles up tasks.
        let Ok(permit) = self.recording.clone().try_acquire_owned() else {
            metrics::counter!("postern_dmarc_records_dropped_total").increment(1);
            return;
        };
        let store = store.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = store.record_dmarc(observation).await {
                metrics::counter!("postern_dmarc_records_failed_total").increment(1);
                tracing::warn!(error = %e, "cannot record a message for the DMARC aggregate report");
            }
        });
    }

    /// The rules of each distinct recipient domain.
    fn rules_for(&self, envelope: &Envelope) -> Vec<Rules> {
        let mut seen: Vec<&str> = Vec::new();
        let mut out = Vec::new();
        for r in &envelope.recipients {
            let d = r.domain.as_str();
            if seen.contains(&d) {
                continue;
            }
            seen.push(d);
            out.push(
                self.domain_rules
                    .get(&d.to_ascii_lowercase())
                    .copied()
                    .unwrap_or(self.default_rules),
            );
        }
        if out.is_empty() {
            out.push(self.default_rules);
        }
        out
    }

    /// Runs `check` within `check_timeout`; past it, `timed_out()`.
    async fn limited<T>(
        &self,
        check: &'static str,
        fut: impl Future<Output = T>,
        timed_out: impl FnOnce() -> T,
    ) -> T {
        match tokio::time::timeout(self.check_timeout, fut).await {
            Ok(v) => v,
            Err(_) => {
                metrics::counter!("postern_inbound_check_timeouts_total", "check" => check)
                    .increment(1);
                timed_out()
            }
        }
    }

    /// Every check on the message as received; returns the header fields
    /// to add, the decision and the summary for the event log.
    async fn verify(
        &self,
        client: &ClientInfo,
        envelope: &Envelope,
        message: &[u8],
    ) -> (String, Decision, String, Option<DmarcObservation>) {
        let ip = client.ip.to_canonical();
        let helo = client
            .helo
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        // RFC 7208 §2.3: the HELO identity is checked only when it is a
        // domain name (not an address literal or a bare word).
        let helo_is_domain =
            helo.contains('.') && postern_core::address::normalize_domain(&helo).is_ok();
        let mail_from = envelope.mail_from.as_str();

        let spf_helo = if helo_is_domain {
            Some(
                self.limited(
                    "spf",
                    self.dns
                        .verify_spf(SpfParameters::verify_ehlo(ip, &helo, &self.hostname)),
                    || SpfOutput::new(helo.clone()).with_result(SpfResult::TempError),
                )
                .await,
            )
        } else {
            None
        };
        // RFC 7208 §2.4: with a null reverse-path the MAIL FROM identity is
        // postmaster@<HELO>, whose result is the HELO check's.
        let spf_mail_from = if mail_from.is_empty() {
            spf_helo.clone().unwrap_or_default()
        } else {
            let domain = mail_from.rsplit_once('@').map_or("", |(_, d)| d);
            self.limited(
                "spf",
                self.dns.verify_spf(SpfParameters::verify_mail_from(
                    ip,
                    &helo,
                    &self.hostname,
                    mail_from,
                )),
                || SpfOutput::new(domain.to_owned()).with_result(SpfResult::TempError),
            )
            .await
        };
        // DMARC's SPF identity (RFC 7489 §4.1): the MAIL FROM domain, the
        // HELO domain for a null reverse-path.
        let spf_domain = if mail_from.is_empty() {
            helo.clone()
        } else {
            mail_from
                .rsplit_once('@')
                .map_or(String::new(), |(_, d)| d.to_ascii_lowercase())
        };

        let parsed = AuthenticatedMessage::parse(message);
        let timed_out = || Error::Dns(DnsError::Resolver("timed out".into()));
        let (dkim, arc, dmarc, header_from): (Vec<DkimOutput>, ArcOutput, DmarcOutput, String) =
            match &parsed {
                Some(msg) => {
                    let from_domain = msg
                        .from()
                        .rsplit_once('@')
                        .map_or(String::new(), |(_, d)| d.to_ascii_lowercase());
                    let dkim = self
                        .limited("dkim", self.dns.verify_dkim(msg), || {
                            vec![DkimOutput::temp_err(timed_out())]
                        })
                        .await;
                    let arc = self
                        .limited("arc", self.dns.verify_arc(msg), || {
                            ArcOutput::default().with_result(DkimResult::TempError(timed_out()))
                        })
                        .await;
                    let dmarc = self
                        .limited(
                            "dmarc",
                            self.dns.verify_dmarc(DmarcParameters::new(
                                msg,
                                &dkim,
                                &spf_domain,
                                &spf_mail_from,
                            )),
                            || {
                                DmarcOutput::new(from_domain.clone())
                                    .with_spf_result(DmarcResult::TempError(timed_out()))
                                    .with_dkim_result(DmarcResult::TempError(timed_out()))
                            },
                        )
                        .await;
                    (dkim, arc, dmarc, msg.from().to_owned())
                }
                // No header section to verify: nothing but SPF applies.
                None => (
                    Vec::new(),
                    ArcOutput::default(),
                    DmarcOutput::default(),
                    String::new(),
                ),
            };

        let forwarded_pass = self.forwarded_pass(ip, &arc);
        let dmarc_result = dmarc.result();
        let facts = Facts {
            spf_fail: spf_mail_from.result() == SpfResult::Fail,
            spf_domain: spf_domain.clone(),
            dmarc: match &dmarc_result {
                DmarcResult::Pass => DmarcState::Pass,
                DmarcResult::Fail(_) => DmarcState::Fail,
                DmarcResult::TempError(_) => DmarcState::TempError,
                DmarcResult::PermError(_) => DmarcState::PermError,
                DmarcResult::None => DmarcState::None,
            },
            policy: match dmarc.policy() {
                Policy::Reject => SenderPolicy::Reject,
                Policy::Quarantine => SenderPolicy::Quarantine,
                Policy::None | Policy::Unspecified => SenderPolicy::None,
            },
            from_domain: verdict::sanitize(dmarc.domain()),
            forwarded_pass,
        };
        let decision = self
            .rules_for(envelope)
            .into_iter()
            .map(|rules| decide(&facts, &self.for_sender(rules, &facts.from_domain)))
            // The strictest action; a deferral for any domain holds for all
            // (the message is one).
            .reduce(|a, b| {
                let deferred = a.deferred.clone().or(b.deferred.clone());
                let mut kept = if b.action > a.action { b } else { a };
                kept.deferred = deferred;
                kept
            })
            .unwrap_or_else(|| {
                decide(
                    &facts,
                    &self.for_sender(self.default_rules, &facts.from_domain),
                )
            });

        // Metrics: one count per check and result.
        let spf_helo_word = spf_helo.as_ref().map(|o| spf_word(o.result()));
        if let Some(w) = spf_helo_word {
            metrics::counter!("postern_inbound_auth_total", "check" => "spf_helo", "result" => w)
                .increment(1);
        }
        let spf_word_mf = spf_word(spf_mail_from.result());
        metrics::counter!("postern_inbound_auth_total", "check" => "spf_mailfrom", "result" => spf_word_mf)
            .increment(1);
        let dkim_words: Vec<&'static str> = dkim.iter().map(|o| dkim_word(o.result())).collect();
        if dkim_words.is_empty() {
            metrics::counter!("postern_inbound_auth_total", "check" => "dkim", "result" => "none")
                .increment(1);
        }
        for w in &dkim_words {
            metrics::counter!("postern_inbound_auth_total", "check" => "dkim", "result" => *w)
                .increment(1);
        }
        let arc_word = dkim_word(arc.result());
        metrics::counter!("postern_inbound_auth_total", "check" => "arc", "result" => arc_word)
            .increment(1);
        let dmarc_word = facts.dmarc.word();
        metrics::counter!("postern_inbound_auth_total", "check" => "dmarc", "result" => dmarc_word)
            .increment(1);

        // RFC 8601 §2.2: one resinfo per method and identity checked.
        let mut ar = AuthenticationResults::new(&self.hostname);
        if let Some(o) = &spf_helo {
            ar = ar.with_spf_ehlo_result(o, ip, &helo);
        }
        ar = ar.with_spf_mailfrom_result(&spf_mail_from, ip, mail_from, &helo);
        let mut field = format!("Authentication-Results: {ar}");
        for o in &dkim {
            // mail-auth's resinfo (result, header.d or header.i, header.s,
            // header.b) without the authserv-id it starts with.
            let resinfo = AuthenticationResults::new("")
                .with_dkim_result(o, &header_from)
                .to_string();
            if body_hash_failed(o.result()) {
                field.push_str(&resinfo.replacen("dkim=neutral", "dkim=fail", 1));
            } else {
                field.push_str(&resinfo);
            }
        }
        if dkim.is_empty() {
            // RFC 8601 §2.7.1: "none" when the message was not signed.
            field.push_str(";\r\n\tdkim=none");
        }
        field.push_str(&format!(
            ";\r\n\tarc={arc_word} smtp.remote-ip={}",
            ip_pvalue(ip)
        ));
        field.push_str(&verdict::dmarc_resinfo(&facts, &decision));
        field.push_str("\r\n");
        // RFC 8617 §5.1: what is passed on gets this hop's ARC set (the
        // quarantine's mail too, for its release), above everything.
        if let (Some(sealing), Some(msg)) = (&self.arc_seal, &parsed) {
            if decision.refusal.is_none() && decision.deferred.is_none() {
                if let Some(sealer) = sealing.sealer().await {
                    let mut results = AuthenticationResults::new(&self.hostname);
                    if let Some(o) = &spf_helo {
                        results = results.with_spf_ehlo_result(o, ip, &helo);
                    }
                    let results = results
                        .with_spf_mailfrom_result(&spf_mail_from, ip, mail_from, &helo)
                        .with_dkim_results(&dkim, &header_from)
                        .with_arc_result(&arc, ip)
                        .with_dmarc_result(&dmarc);
                    if let Some(set) = arc_seal::ArcSealing::seal(&sealer, msg, &results, &arc) {
                        field.insert_str(0, &set);
                    }
                }
            }
        }
        // Held mail carries the verdict too: whoever reviews it in the
        // quarantine (and the internal server, if it is released) sees why.
        if matches!(
            decision.action,
            InboundAction::Tag | InboundAction::Quarantine
        ) {
            field.push_str(&decision.verdict_field());
        }

        let summary = format!(
            "auth: spf={spf_word_mf} helo={} dkim={} arc={arc_word} dmarc={dmarc_word}{}{} action={}",
            spf_helo_word.unwrap_or("none"),
            if dkim_words.is_empty() {
                "none".to_owned()
            } else {
                dkim_words.join(",")
            },
            match facts.policy {
                SenderPolicy::None if facts.dmarc == DmarcState::None => "",
                SenderPolicy::None => "(p=none)",
                SenderPolicy::Quarantine => "(p=quarantine)",
                SenderPolicy::Reject => "(p=reject)",
            },
            if decision.overridden.is_some() {
                " override=trusted_forwarder"
            } else {
                ""
            },
            decision.action_word(),
        );
        let observation = if self.reports.is_some() {
            crate::reports::dmarc::observation(
                postern_core::time::now_millis(),
                crate::reports::dmarc::Checked {
                    source_ip: ip,
                    spf: &spf_mail_from,
                    spf_scope_helo: mail_from.is_empty(),
                    dkim: &dkim,
                    dmarc: &dmarc,
                    envelope_from_domain: &spf_domain,
                },
                crate::reports::dmarc::Applied {
                    action: decision.action,
                    forwarded_by: if decision.overridden.is_some() {
                        facts.forwarded_pass.as_deref()
                    } else {
                        None
                    },
                },
            )
        } else {
            None
        };
        (field, decision, summary, observation)
    }

    /// The sealer of a validated ARC chain whose last set comes from a
    /// trusted forwarder (by the client's network or the seal's `d=`) and
    /// whose results say the message passed DMARC there (RFC 8617 §7.2).
    /// Only the last set counts: an earlier trusted set vouches for the
    /// message as it was then, not for what a later hop made of it.
    fn forwarded_pass(&self, ip: IpAddr, arc: &ArcOutput) -> Option<String> {
        if arc.result() != &DkimResult::Pass {
            return None;
        }
        let last = arc.sets().last()?;
        if last.seal.header.cv == ChainValidation::Fail {
            return None;
        }
        let sealer = last.seal.header.d.to_ascii_lowercase();
        let trusted = self.trusted_networks.iter().any(|n| n.contains(&ip))
            || self.trusted_sealers.contains(&sealer);
        (trusted && headers::results_say_pass(last.results.value, "dmarc"))
            .then(|| verdict::sanitize(&sealer))
    }
}

impl InboundAuthenticator for InboundChecks {
    fn authenticate<'a>(
        &'a self,
        client: &'a ClientInfo,
        envelope: &'a Envelope,
        message: &'a mut Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = InboundVerdict> + Send + 'a>> {
        Box::pin(async move {
            // Verified as received: a signature may cover any field,
            // including one removed below.
            let (field, decision, summary, observation) =
                self.verify(client, envelope, message).await;
            self.record(observation);
            let removed = headers::strip_own_fields(message, &self.hostname);
            if removed > 0 {
                metrics::counter!("postern_inbound_forged_results_removed_total")
                    .increment(removed as u64);
                tracing::info!(peer = %client.ip, removed, "removed header fields claiming this server's authserv-id");
            }
            metrics::counter!("postern_inbound_verdicts_total", "action" => decision.action_word())
                .increment(1);
            let refused = decision.refusal.as_ref().map(|(reason, label)| {
                metrics::counter!("postern_inbound_rejected_total", "reason" => *label)
                    .increment(1);
                reason.clone()
            });
            let quarantined = (refused.is_none() && decision.action == InboundAction::Quarantine)
                .then(|| decision.reasons.join("; "));
            InboundVerdict {
                headers: if refused.is_some() {
                    Vec::new()
                } else {
                    field.into_bytes()
                },
                deferred: decision.deferred.clone().filter(|_| refused.is_none()),
                refused,
                quarantined,
                summary,
            }
        })
    }
}

fn spf_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

/// RFC 6376 §3.7: a body hash that does not match makes the signature
/// PERMFAIL ("body hash did not verify"), which RFC 8601 §2.7.1 records as
/// `fail`; mail-auth reports it as neutral.
fn body_hash_failed(r: &DkimResult) -> bool {
    matches!(
        r,
        DkimResult::Neutral(Error::Dkim(mail_auth::dkim::DkimError::FailedBodyHashMatch))
    )
}

fn dkim_word(r: &DkimResult) -> &'static str {
    match r {
        r if body_hash_failed(r) => "fail",
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

/// RFC 8601 §2.2 pvalue: an IPv6 address holds ':' and is quoted.
fn ip_pvalue(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("\"{a}\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_check_past_its_time_limit_gives_the_timed_out_result() {
        let config = InboundAuthConfig {
            dns_timeout: Duration::from_millis(10),
            check_timeout: Duration::from_millis(50),
            ..Default::default()
        };
        let checks =
            InboundChecks::new(&config, &["127.0.0.1:9".parse().unwrap()], "Postern.Test").unwrap();
        assert_eq!(checks.hostname, "postern.test");
        let started = std::time::Instant::now();
        let got = checks
            .limited("spf", std::future::pending::<&str>(), || "temperror")
            .await;
        assert_eq!(got, "temperror");
        assert!(started.elapsed() < Duration::from_secs(5));
        // A check that finishes in time gives its own result.
        let got = checks
            .limited("spf", async { "pass" }, || "temperror")
            .await;
        assert_eq!(got, "pass");
    }
}
