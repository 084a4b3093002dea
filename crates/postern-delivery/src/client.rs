//! The outbound SMTP client: one delivery attempt for one job (a message's
//! recipients in one domain), across the candidate hosts in order.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use postern_core::config::{RouteProtocol, RouteTls};
use postern_store::DeliveryJob;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use smtp_proto::response::parser::ResponseReceiver;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::mx::MxResolver;
use crate::outcome::Outcome;
use crate::route::Destination;
use crate::tls_report::{Failure, PolicyType, ReportPolicy, ResultType, TlsRecorder};

/// RFC 5321 §4.5.3.2.6 allows 10 minutes for the reply to the final dot;
/// other replies use the configured command timeout.
const DATA_END_TIMEOUT: Duration = Duration::from_secs(600);
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);
/// The port MX hosts listen on (RFC 5321 §4.5.4.2).
pub const SMTP_PORT: u16 = 25;

#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Our EHLO name.
    pub ehlo_name: String,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    /// Port for hosts found through MX: always 25 in service; tests point
    /// it at a sink on an unprivileged port.
    pub mx_port: u16,
    /// Extra CA certificates trusted, with the Mozilla roots, where a
    /// receiver's policy asks for a valid certificate (MTA-STS).
    pub ca_file: Option<PathBuf>,
    /// Port MTA-STS policies are fetched from: 443 in service.
    pub mta_sts_port: u16,
    /// Look up and honour MTA-STS policies.
    pub mta_sts: bool,
}

impl ClientSettings {
    /// The settings a node's delivery uses, from its configuration
    /// (`queue.mx_port`, 25, for MX hosts; 443 for MTA-STS policies).
    pub fn from_config(config: &postern_core::Config) -> Self {
        ClientSettings {
            ehlo_name: config.server.hostname.clone(),
            connect_timeout: config.queue.connect_timeout,
            command_timeout: config.queue.command_timeout,
            mx_port: config.queue.mx_port,
            ca_file: config.queue.tls_ca_file.clone(),
            mta_sts_port: 443,
            mta_sts: config.queue.mta_sts,
        }
    }
}

impl ClientSettings {
    /// The port in TLSA names (`_25._tcp.`): the real SMTP port even when
    /// tests connect to a sink elsewhere.
    fn mx_port_for_tlsa(&self) -> u16 {
        SMTP_PORT
    }
}

/// The result of one attempt: an outcome per recipient (in job order) and
/// how the connection went, for the event log.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub outcomes: Vec<Outcome>,
    /// The host that answered, when one did.
    pub via: Option<Via>,
}

/// Which host took (or refused) the message, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    pub host: String,
    pub addr: SocketAddr,
    /// Our end of the connection.
    pub source: Option<IpAddr>,
    /// "TLSv1.3 TLS13_AES_256_GCM_SHA384"; None for plaintext.
    pub tls: Option<String>,
    /// What decided the TLS requirement: none, opportunistic, required.
    pub tls_policy: &'static str,
}

impl std::fmt::Display for Via {
    /// "mx.example.net [192.0.2.1]:25 TLSv1.3 …"
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} [{}]", self.host, self.addr)?;
        if let Some(t) = &self.tls {
            write!(f, " {t}")?;
        }
        Ok(())
    }
}

fn policy_label(tls: RouteTls) -> &'static str {
    match tls {
        RouteTls::None => "none",
        RouteTls::Opportunistic => "opportunistic",
        RouteTls::Required => "required",
    }
}

/// Where outbound connections leave from: an address of an IP pool and the
/// EHLO name that goes with it (its PTR name).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Source {
    pub ip: IpAddr,
    pub ehlo_name: String,
}

/// A connection left open after a transaction, for the next message to the
/// same destination (RFC 5321 §4.1.4: a session may carry any number of
/// transactions).
pub struct KeptConnection {
    conn: Conn,
    caps: Capabilities,
    via: Via,
    messages: u32,
}

impl KeptConnection {
    pub fn via(&self) -> &Via {
        &self.via
    }

    /// Ends the session politely.
    pub async fn close(mut self) {
        quit(&mut self.conn).await;
    }
}

async fn quit(conn: &mut Conn) {
    conn.step = "QUIT";
    let _ = tokio::time::timeout(QUIT_TIMEOUT, async {
        conn.send(b"QUIT\r\n").await?;
        conn.reply().await
    })
    .await;
    let _ = conn.stream.shutdown().await;
}

struct Candidate {
    host: String,
    port: u16,
    tls: RouteTls,
    ca_file: Option<PathBuf>,
    auth: Option<(String, String)>,
    /// What decided the TLS requirement (for events and metrics).
    policy: &'static str,
    /// A required TLS connection verified against the Mozilla roots (plus
    /// `ca_file` of the settings), as MTA-STS asks; else `ca_file` above.
    webpki: bool,
    /// MTA-STS `testing`: deliver whatever happens, but check the
    /// certificate and report a failure.
    report_only: bool,
    /// DANE TLSA records proven by DNSSEC: they alone decide the
    /// certificate (an empty list: TLS required, unauthenticated, because
    /// every record was unusable — RFC 7672 §2.2).
    dane: Option<Vec<crate::mx::Tlsa>>,
    /// The next hop speaks LMTP (RFC 2033): only static routes say so.
    lmtp: bool,
    /// An MX host of the recipient domain: the policy its TLS-RPT report
    /// (RFC 8460) names. None for a static route's next hop.
    report: Option<Arc<ReportPolicy>>,
}

pub struct SmtpClient {
    settings: ClientSettings,
    resolver: Arc<MxResolver>,
    opportunistic: Arc<ClientConfig>,
    verified: Mutex<HashMap<Option<PathBuf>, Arc<ClientConfig>>>,
    webpki: Arc<ClientConfig>,
    webpki_verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    mta_sts: Option<crate::mta_sts::MtaSts>,
    /// Rewrites envelope senders into verified return paths (VERP).
    verp: Option<Arc<postern_core::verp::Verp>>,
    /// Records each TLS session to an MX host for TLS-RPT.
    tls_reports: Option<TlsRecorder>,
}

/// Why a host was given up on (the next one is tried).
struct HostFailure(Outcome);

impl SmtpClient {
    pub fn new(settings: ClientSettings, resolver: Arc<MxResolver>) -> Result<Self, String> {
        Self::with_policy_store(settings, resolver, None)
    }

    /// As `new`, keeping MTA-STS policies in `store` across restarts.
    pub fn with_policy_store(
        settings: ClientSettings,
        resolver: Arc<MxResolver>,
        store: Option<Arc<dyn postern_store::TlsPolicyStore>>,
    ) -> Result<Self, String> {
        let (webpki, webpki_verifier) = crate::tls::webpki_config(settings.ca_file.as_deref())?;
        let mta_sts = settings.mta_sts.then(|| {
            crate::mta_sts::MtaSts::new(
                resolver.clone(),
                webpki.clone(),
                settings.mta_sts_port,
                store,
            )
        });
        Ok(SmtpClient {
            settings,
            resolver,
            opportunistic: crate::tls::opportunistic_config()?,
            verified: Mutex::new(HashMap::new()),
            webpki,
            webpki_verifier,
            mta_sts,
            verp: None,
            tls_reports: None,
        })
    }

    /// Records the outcome of every TLS session attempt to a recipient
    /// domain's MX host in `store`, for its TLS-RPT report (RFC 8460).
    pub fn with_tls_reports(mut self, store: Arc<dyn postern_store::ReportDataStore>) -> Self {
        self.tls_reports = Some(TlsRecorder::new(store));
        self
    }

    /// One session's outcome for the TLS-RPT report, when the candidate
    /// is an MX host of the recipient domain.
    fn report_tls(
        &self,
        c: &Candidate,
        conn: &Conn,
        addr: SocketAddr,
        failure: Option<(ResultType, String)>,
    ) {
        let (Some(recorder), Some(policy)) = (&self.tls_reports, &c.report) else {
            return;
        };
        recorder.record(
            policy,
            failure.map(|(result, reason)| Failure {
                result,
                sending_ip: conn.local_ip(),
                mx_host: Some(c.host.clone()),
                receiving_ip: Some(addr.ip()),
                reason: Some(reason),
            }),
        );
    }

    /// Envelope senders of jobs with a return path become VERP addresses
    /// tagged with this secret (postern_core::verp).
    pub fn with_verp(mut self, verp: Arc<postern_core::verp::Verp>) -> Self {
        self.verp = Some(verp);
        self
    }

    /// The MAIL FROM of a job: its VERP return path (one recipient per
    /// such job), else the sender as submitted.
    fn envelope_sender(&self, job: &DeliveryJob) -> String {
        match (&job.return_path, &self.verp, job.recipients.as_slice()) {
            (Some(domain), Some(verp), [only]) => {
                verp.address(job.message_id.as_str(), &only.address, domain)
            }
            _ => job.mail_from.clone(),
        }
    }

    /// The most preferred MX host of a domain (from the resolver's cache
    /// when it can), used to sort work by provider.
    pub async fn first_mx(&self, domain: &str) -> Option<String> {
        self.resolver
            .mx_hosts(domain)
            .await
            .ok()?
            .into_iter()
            .next()
    }

    /// Candidates for MX hosts under the domain's MTA-STS policy, if any.
    async fn mx_candidates(
        &self,
        domain: &str,
        hosts: Vec<String>,
    ) -> Result<Vec<Candidate>, Outcome> {
        if let Some(c) = self.dane_candidates(domain, &hosts).await? {
            return Ok(c);
        }
        let policy = match &self.mta_sts {
            Some(m) => m.policy(domain).await,
            None => None,
        };
        use crate::mta_sts::Mode;
        // RFC 8460 §4.4: the policy each session is reported under.
        let report = Arc::new(match &policy {
            Some(p) if matches!(p.mode, Mode::Enforce | Mode::Testing) => {
                let mut r = ReportPolicy::new(domain, PolicyType::Sts);
                r.strings.push("version: STSv1".into());
                r.strings.push(format!(
                    "mode: {}",
                    if p.mode == Mode::Enforce {
                        "enforce"
                    } else {
                        "testing"
                    }
                ));
                r.strings.extend(p.mx.iter().map(|m| format!("mx: {m}")));
                r.strings.push(format!("max_age: {}", p.max_age.as_secs()));
                r.mx_host = p.mx.clone();
                r
            }
            _ => ReportPolicy::new(domain, PolicyType::NoPolicyFound),
        });
        let candidate = |host: String, tls, policy, webpki, report_only| Candidate {
            host,
            port: self.settings.mx_port,
            tls,
            ca_file: None,
            auth: None,
            policy,
            webpki,
            report_only,
            dane: None,
            lmtp: false,
            report: Some(report.clone()),
        };
        match policy {
            Some(p) if p.mode == Mode::Enforce => {
                // RFC 8461 §4.1: only MX hosts the policy names are used,
                // and only over TLS with a valid certificate (§4.2).
                let (allowed, refused): (Vec<String>, Vec<String>) =
                    hosts.into_iter().partition(|h| p.allows(h));
                for h in &refused {
                    metrics::counter!("postern_mta_sts_total", "result" => "mx_mismatch").increment(1);
                    tracing::warn!(%domain, host = %h, "MTA-STS: MX host not in the policy; skipped");
                }
                if allowed.is_empty() {
                    return Err(Outcome::Transient(format!(
                        "MTA-STS: no MX host of {domain} ({}) matches its policy (mx: {})",
                        refused.join(", "),
                        p.mx.join(", ")
                    )));
                }
                Ok(allowed
                    .into_iter()
                    .map(|h| candidate(h, RouteTls::Required, "mta-sts", true, false))
                    .collect())
            }
            Some(p) if p.mode == Mode::Testing => Ok(hosts
                .into_iter()
                .map(|h| {
                    if !p.allows(&h) {
                        metrics::counter!("postern_mta_sts_total", "result" => "testing_mx_mismatch").increment(1);
                        tracing::warn!(%domain, host = %h, "MTA-STS testing: MX host not in the policy (delivering anyway)");
                    }
                    candidate(h, RouteTls::Opportunistic, "mta-sts-testing", false, true)
                })
                .collect()),
            _ => Ok(hosts
                .into_iter()
                .map(|h| candidate(h, RouteTls::Opportunistic, "opportunistic", false, false))
                .collect()),
        }
    }

    /// DANE (RFC 7672), when the domain's MX records are DNSSEC-secure and
    /// at least one host has TLSA records: it then decides for every host
    /// (MTA-STS is not consulted, RFC 8461 §2). Hosts without TLSA are used
    /// opportunistically; a host whose TLSA lookup fails is not used.
    async fn dane_candidates(
        &self,
        domain: &str,
        hosts: &[String],
    ) -> Result<Option<Vec<Candidate>>, Outcome> {
        use crate::dnssec_probe::DaneState;
        use crate::mx::Dnssec;
        let Some(probe) = self.resolver.dane_probe() else {
            return Ok(None);
        };
        // The operator asked for DANE outright (`dns.dane_required`): a
        // path that does not validate stops MX mail, loudly, instead of
        // falling back to the usual TLS policy.
        if self.resolver.dane_required() && probe.current().await != DaneState::Active {
            metrics::counter!("postern_dane_total", "result" => "required_inactive").increment(1);
            // RFC 8460 §4.3.2.2 dane-required: DANE was required and could
            // not be used.
            if let Some(recorder) = &self.tls_reports {
                recorder.record(
                    &ReportPolicy::new(domain, PolicyType::Tlsa),
                    Some(Failure {
                        result: ResultType::DaneRequired,
                        sending_ip: None,
                        mx_host: None,
                        receiving_ip: None,
                        reason: Some(
                            "dns.dane_required, and the resolver path does not validate DNSSEC"
                                .into(),
                        ),
                    }),
                );
            }
            tracing::warn!(%domain, "DANE required (dns.dane_required) but inactive: the resolver path does not supply DNSSEC data that validates; deferring");
            return Err(Outcome::Transient(format!(
                "DANE required (dns.dane_required) but inactive: the resolver path does not \
                 supply DNSSEC data that validates; {domain} deferred"
            )));
        }
        match self.resolver.secure_mx(domain).await {
            Dnssec::Secure(_) => {}
            Dnssec::Insecure => return Ok(None),
            Dnssec::Bogus(e) => {
                metrics::counter!("postern_dane_total", "result" => "mx_bogus").increment(1);
                return Err(Outcome::Transient(format!(
                    "DNSSEC: the MX records of {domain} failed validation: {e}"
                )));
            }
        }
        let mut found = Vec::with_capacity(hosts.len());
        for h in hosts {
            found.push((
                h.clone(),
                self.resolver
                    .tlsa(h, self.settings.mx_port_for_tlsa())
                    .await,
            ));
        }
        if !found
            .iter()
            .any(|(_, t)| matches!(t, Dnssec::Secure(_) | Dnssec::Bogus(_)))
        {
            return Ok(None);
        }
        let mut candidates = Vec::new();
        let mut unusable = Vec::new();
        for (host, tlsa) in found {
            let (tls, policy, dane) = match tlsa {
                Dnssec::Secure(records) => {
                    let usable: Vec<_> = records.into_iter().filter(crate::dane::usable).collect();
                    metrics::counter!("postern_dane_total", "result" => if usable.is_empty() { "unusable_records" } else { "tlsa" }).increment(1);
                    (RouteTls::Required, "dane", Some(usable))
                }
                Dnssec::Insecure => (RouteTls::Opportunistic, "opportunistic", None),
                Dnssec::Bogus(e) => {
                    metrics::counter!("postern_dane_total", "result" => "tlsa_bogus").increment(1);
                    // RFC 8460 §4.3.2.2: the TLSA answer failed DNSSEC
                    // validation; no session was attempted.
                    if let Some(recorder) = &self.tls_reports {
                        recorder.record(
                            &ReportPolicy::new(domain, PolicyType::Tlsa),
                            Some(Failure {
                                result: ResultType::DnssecInvalid,
                                sending_ip: None,
                                mx_host: Some(host.clone()),
                                receiving_ip: None,
                                reason: Some(e.to_string()),
                            }),
                        );
                    }
                    tracing::warn!(%domain, %host, error = %e, "DANE: TLSA lookup failed; host not used");
                    unusable.push(format!("{host}: {e}"));
                    continue;
                }
            };
            let mut report = ReportPolicy::new(
                domain,
                if dane.is_some() {
                    PolicyType::Tlsa
                } else {
                    PolicyType::NoPolicyFound
                },
            );
            report.strings = dane
                .iter()
                .flatten()
                .map(|t| {
                    format!(
                        "{} {} {} {}",
                        t.usage,
                        t.selector,
                        t.matching,
                        data_encoding_hex(&t.data)
                    )
                })
                .collect();
            candidates.push(Candidate {
                host,
                port: self.settings.mx_port,
                tls,
                ca_file: None,
                auth: None,
                policy,
                webpki: false,
                report_only: false,
                dane,
                lmtp: false,
                report: Some(Arc::new(report)),
            });
        }
        if candidates.is_empty() {
            return Err(Outcome::Transient(format!(
                "DANE: no usable MX host for {domain} ({})",
                unusable.join("; ")
            )));
        }
        Ok(Some(candidates))
    }

    fn verified_config(&self, ca_file: &Option<PathBuf>) -> Result<Arc<ClientConfig>, String> {
        let mut cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(ca_file) {
            return Ok(c.clone());
        }
        let c = crate::tls::verified_config(ca_file.as_deref())?;
        cache.insert(ca_file.clone(), c.clone());
        Ok(c)
    }

    /// One attempt for one job. `kept` is the connection the caller holds for
    /// this destination: it is used first, and a connection that is still
    /// good afterwards is left there (up to `max_messages` messages).
    pub async fn deliver(
        &self,
        destination: &Destination,
        job: &DeliveryJob,
        source: Option<&Source>,
        kept: &mut Option<KeptConnection>,
        max_messages: u32,
    ) -> Attempt {
        let all = |o: Outcome| Attempt {
            outcomes: vec![o; job.recipients.len()],
            via: None,
        };
        let candidates = match destination {
            Destination::Static(r) => vec![Candidate {
                host: r.host.clone(),
                port: r.port,
                tls: r.tls,
                ca_file: r.ca_file.clone(),
                auth: r.auth.clone(),
                policy: policy_label(r.tls),
                webpki: false,
                report_only: false,
                dane: None,
                lmtp: r.protocol == RouteProtocol::Lmtp,
                report: None,
            }],
            Destination::Mx => {
                let hosts = match self.resolver.mx_hosts(&job.domain).await {
                    Ok(hosts) => hosts,
                    Err(o) => return all(o),
                };
                match self.mx_candidates(&job.domain, hosts).await {
                    Ok(c) => c,
                    Err(o) => return all(o),
                }
            }
        };
        // A kept connection serves this job only if it goes to one of the
        // job's hosts under the same TLS policy: mail for a domain with an
        // MTA-STS policy never rides a connection opened without one.
        if let Some(k) = kept.take() {
            let fits = candidates
                .iter()
                .any(|c| c.host == k.via.host && c.policy == k.via.tls_policy);
            if fits {
                *kept = Some(k);
            } else {
                k.close().await;
            }
        }
        if let Some(mut k) = kept.take() {
            k.conn.replies = 0;
            match self.transaction(&mut k.conn, &k.caps, job).await {
                Ok(outcomes) => {
                    metrics::counter!("postern_delivery_connections_total", "kind" => "reused")
                        .increment(1);
                    k.messages += 1;
                    let via = k.via.clone();
                    if !k.conn.closing && k.messages < max_messages {
                        *kept = Some(k);
                    } else {
                        k.close().await;
                    }
                    return Attempt {
                        outcomes,
                        via: Some(via),
                    };
                }
                // Nothing was answered: the server closed the idle session.
                // Nothing can have been accepted, so a new connection is safe.
                Err(e) if k.conn.replies == 0 => {
                    tracing::debug!(host = %k.via.host, error = %e, "kept connection was closed; reconnecting");
                }
                Err(e) => {
                    let detail = format!(
                        "{} [{}] during {}: {e}",
                        k.via.host, k.via.addr, k.conn.step
                    );
                    let via = k.via.clone();
                    return Attempt {
                        outcomes: vec![Outcome::Transient(detail); job.recipients.len()],
                        via: Some(via),
                    };
                }
            }
        }
        let mut failures = Vec::new();
        for c in &candidates {
            let ips = match self.resolver.addresses(&c.host).await {
                Ok(ips) => ips,
                Err(o) => {
                    failures.push(o);
                    continue;
                }
            };
            for ip in ips {
                match self.try_host(c, ip, Errand::Deliver(job), source).await {
                    Ok((attempt, conn)) => {
                        if let Some(mut conn) = conn {
                            metrics::counter!("postern_delivery_connections_total", "kind" => "new")
                                .increment(1);
                            if conn.messages < max_messages && !conn.conn.closing {
                                *kept = Some(conn);
                            } else {
                                quit(&mut conn.conn).await;
                            }
                        }
                        return attempt;
                    }
                    Err(HostFailure(o)) => {
                        tracing::info!(message = %job.message_id, host = %c.host, %ip, reason = %o.detail(), "host failed");
                        failures.push(o);
                    }
                }
            }
        }
        // Only when every host said no for good is the failure permanent.
        let permanent =
            !failures.is_empty() && failures.iter().all(|o| matches!(o, Outcome::Permanent(_)));
        let detail = failures
            .last()
            .map(|o| o.detail().to_owned())
            .unwrap_or_else(|| format!("no host to deliver {} to", job.domain));
        all(if permanent {
            Outcome::Permanent(detail)
        } else {
            Outcome::Transient(detail)
        })
    }

    async fn try_host(
        &self,
        c: &Candidate,
        ip: IpAddr,
        errand: Errand<'_>,
        source: Option<&Source>,
    ) -> Result<(Attempt, Option<KeptConnection>), HostFailure> {
        let addr = SocketAddr::new(ip, c.port);
        let transient = |what: String| HostFailure(Outcome::Transient(what));
        let connect = async {
            match source {
                Some(src) => {
                    if src.ip.is_ipv4() != ip.is_ipv4() {
                        return Err(io::Error::other(format!(
                            "source address {} cannot reach {ip}",
                            src.ip
                        )));
                    }
                    let socket = if ip.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        tokio::net::TcpSocket::new_v6()?
                    };
                    socket.bind(SocketAddr::new(src.ip, 0))?;
                    socket.connect(addr).await
                }
                None => TcpStream::connect(addr).await,
            }
        };
        let tcp = match tokio::time::timeout(self.settings.connect_timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(transient(format!("connect to {} [{addr}]: {e}", c.host))),
            Err(_) => {
                return Err(transient(format!(
                    "connect to {} [{addr}]: timed out",
                    c.host
                )))
            }
        };
        let _ = tcp.set_nodelay(true);
        let mut conn = Conn {
            stream: Stream::Plain(tcp),
            buf: Vec::new(),
            timeout: self.settings.command_timeout,
            step: "greeting",
            replies: 0,
            closing: false,
        };
        let ehlo_name = source
            .map(|s| s.ehlo_name.as_str())
            .unwrap_or(&self.settings.ehlo_name);
        match self.session(&mut conn, c, addr, errand, ehlo_name).await {
            Ok((attempt, caps, via)) => Ok((
                attempt,
                Some(KeptConnection {
                    conn,
                    caps,
                    via,
                    messages: 1,
                }),
            )),
            Err(e) => {
                let _ = conn.stream.shutdown().await;
                Err(e)
            }
        }
    }

    async fn session(
        &self,
        conn: &mut Conn,
        c: &Candidate,
        addr: SocketAddr,
        errand: Errand<'_>,
        ehlo_name: &str,
    ) -> Result<(Attempt, Capabilities, Via), HostFailure> {
        let io_fail = |conn: &Conn, e: io::Error| {
            HostFailure(Outcome::Transient(format!(
                "{} [{addr}] during {}: {e}",
                c.host, conn.step
            )))
        };
        let (code, text) = conn.reply().await.map_err(|e| io_fail(conn, e))?;
        if code != 220 {
            return Err(HostFailure(Outcome::from_reply(code, &text, "greeting")).into_transient());
        }
        let mut caps = self
            .ehlo(conn, ehlo_name, c.lmtp)
            .await
            .map_err(|e| io_fail(conn, e))?;

        let mut tls_desc = None;
        let want_tls = c.tls != RouteTls::None;
        if want_tls && caps.starttls {
            conn.step = "STARTTLS";
            conn.send(b"STARTTLS\r\n")
                .await
                .map_err(|e| io_fail(conn, e))?;
            let (code, text) = conn.reply().await.map_err(|e| io_fail(conn, e))?;
            if code != 220 {
                self.report_tls(
                    c,
                    conn,
                    addr,
                    Some((
                        ResultType::StartTlsNotSupported,
                        format!("STARTTLS refused: {code}"),
                    )),
                );
                if c.tls == RouteTls::Required {
                    return Err(HostFailure(Outcome::Transient(format!(
                        "{} refused STARTTLS: {code} {text} (TLS required by {})",
                        c.host, c.policy
                    ))));
                }
            } else {
                // Anything the server sent after its 220 arrived in plaintext
                // and is dropped unread (the client side of CVE-2011-0411).
                conn.buf.clear();
                let config = match c.tls {
                    RouteTls::Required if c.dane.as_ref().is_some_and(|d| !d.is_empty()) => {
                        crate::dane::client_config(c.dane.clone().unwrap_or_default()).map_err(
                            |e| HostFailure(Outcome::Transient(format!("TLS setup: {e}"))),
                        )?
                    }
                    // TLSA records exist but none is usable: encrypt, without
                    // authentication (RFC 7672 §2.2).
                    RouteTls::Required if c.dane.is_some() => self.opportunistic.clone(),
                    RouteTls::Required if c.webpki => self.webpki.clone(),
                    RouteTls::Required => self
                        .verified_config(&c.ca_file)
                        .map_err(|e| HostFailure(Outcome::Transient(format!("TLS setup: {e}"))))?,
                    _ => self.opportunistic.clone(),
                };
                let name = server_name(&c.host).ok_or_else(|| {
                    HostFailure(Outcome::Transient(format!(
                        "{}: not a valid TLS name",
                        c.host
                    )))
                })?;
                let Stream::Plain(tcp) = std::mem::replace(&mut conn.stream, Stream::Closed) else {
                    return Err(HostFailure(Outcome::Transient("STARTTLS twice".into())));
                };
                let handshake = TlsConnector::from(config).connect(name, tcp);
                let tls = match tokio::time::timeout(self.settings.command_timeout, handshake).await
                {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        metrics::counter!("postern_delivery_tls_total", "result" => "handshake_failed", "policy" => c.policy).increment(1);
                        let dane = c.dane.as_ref().is_some_and(|d| !d.is_empty());
                        self.report_tls(
                            c,
                            conn,
                            addr,
                            Some((ResultType::of_handshake(&e, dane), e.to_string())),
                        );
                        return Err(HostFailure(Outcome::Transient(format!(
                            "TLS handshake with {} [{addr}]: {e} (TLS policy: {})",
                            c.host, c.policy
                        ))));
                    }
                    Err(_) => {
                        self.report_tls(
                            c,
                            conn,
                            addr,
                            Some((
                                ResultType::ValidationFailure,
                                "TLS handshake timed out".into(),
                            )),
                        );
                        return Err(HostFailure(Outcome::Transient(format!(
                            "TLS handshake with {} [{addr}]: timed out",
                            c.host
                        ))));
                    }
                };
                let desc = describe(tls.get_ref().1);
                let testing_failure = if c.report_only {
                    self.report_certificate(&c.host, tls.get_ref().1)
                } else {
                    None
                };
                // The agreed key exchange group (X25519MLKEM768 where the
                // peer offers the hybrid post-quantum group).
                let group = tls
                    .get_ref()
                    .1
                    .negotiated_key_exchange_group()
                    .map(|g| format!("{:?}", g.name()))
                    .unwrap_or_else(|| "none".into());
                tracing::debug!(host = %c.host, tls = %desc, group = %group, "TLS established");
                metrics::counter!("postern_delivery_tls_total", "result" => if c.tls == RouteTls::Required { "verified" } else { "opportunistic" }, "policy" => c.policy, "group" => group).increment(1);
                tls_desc = Some(desc);
                conn.stream = Stream::Tls(Box::new(tls));
                self.report_tls(c, conn, addr, testing_failure);
                caps = self
                    .ehlo(conn, ehlo_name, c.lmtp)
                    .await
                    .map_err(|e| io_fail(conn, e))?;
            }
        } else if c.tls == RouteTls::Required {
            self.report_tls(
                c,
                conn,
                addr,
                Some((
                    ResultType::StartTlsNotSupported,
                    "STARTTLS not offered".into(),
                )),
            );
            return Err(HostFailure(Outcome::Transient(format!(
                "{} does not offer STARTTLS, and TLS is required ({})",
                c.host, c.policy
            ))));
        } else {
            if want_tls {
                // RFC 8460 §4.3.1: the MX host offered no STARTTLS (under
                // no policy too: the domain learns its mail went in clear).
                self.report_tls(
                    c,
                    conn,
                    addr,
                    Some((
                        ResultType::StartTlsNotSupported,
                        "STARTTLS not offered".into(),
                    )),
                );
            }
            if c.report_only {
                metrics::counter!("postern_mta_sts_total", "result" => "testing_no_tls")
                    .increment(1);
                tracing::warn!(host = %c.host, "MTA-STS testing: no STARTTLS (delivering in plaintext, as the policy is in testing)");
            }
            metrics::counter!("postern_delivery_tls_total", "result" => "plaintext", "policy" => c.policy).increment(1);
        }

        if let Some((user, pass)) = &c.auth {
            if tls_desc.is_none() {
                return Err(HostFailure(Outcome::Transient(format!(
                    "not sending credentials to {} without TLS",
                    c.host
                ))));
            }
            conn.step = "AUTH";
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
            conn.send(format!("AUTH PLAIN {token}\r\n").as_bytes())
                .await
                .map_err(|e| io_fail(conn, e))?;
            let (code, text) = conn.reply().await.map_err(|e| io_fail(conn, e))?;
            if code != 235 {
                // A smart host refusing our credentials is our configuration
                // problem, not the recipient's: defer, never bounce.
                return Err(HostFailure(Outcome::Transient(format!(
                    "AUTH: {code} {text}"
                ))));
            }
        }

        let via = Via {
            host: c.host.clone(),
            addr,
            source: conn.local_ip(),
            tls: tls_desc,
            tls_policy: c.policy,
        };
        let outcomes = match errand {
            Errand::Deliver(job) => self.transaction(conn, &caps, job).await,
            Errand::Probe(address) => self.probe(conn, address).await.map(|o| vec![o]),
        }
        .map_err(|e| io_fail(conn, e))?;
        Ok((
            Attempt {
                outcomes,
                via: Some(via.clone()),
            },
            caps,
            via,
        ))
    }

    /// A call-ahead: MAIL FROM:<> and RCPT TO for one address, then RSET;
    /// no message is sent. The RCPT reply is the answer.
    async fn probe(&self, conn: &mut Conn, address: &str) -> io::Result<Outcome> {
        conn.step = "MAIL";
        // RFC 6531 §3.4: an internationalized address needs SMTPUTF8, or a
        // server that would take it refuses it for the wrong reason.
        let mail: &[u8] = if address.is_ascii() {
            b"MAIL FROM:<>\r\n"
        } else {
            b"MAIL FROM:<> SMTPUTF8\r\n"
        };
        conn.send(mail).await?;
        let (code, text) = conn.reply().await?;
        if code != 250 {
            // The next hop refuses the null sender or is unwell: no answer
            // about the recipient.
            return Ok(Outcome::Transient(format!(
                "call-ahead MAIL: {code} {text}"
            )));
        }
        conn.step = "RCPT";
        conn.send(format!("RCPT TO:<{address}>\r\n").as_bytes())
            .await?;
        let (code, text) = conn.reply().await?;
        conn.step = "RSET";
        conn.send(b"RSET\r\n").await?;
        let _ = conn.reply().await;
        Ok(Outcome::from_reply(code, &text, "RCPT"))
    }

    /// Asks a static route's next hop whether it takes `address`, the way
    /// a delivery would reach it (TLS policy, credentials), without
    /// sending a message (a "call-ahead"). `Delivered` means accepted.
    pub async fn probe_recipient(
        &self,
        route: &crate::route::StaticRoute,
        address: &str,
    ) -> Outcome {
        let c = Candidate {
            host: route.host.clone(),
            port: route.port,
            tls: route.tls,
            ca_file: route.ca_file.clone(),
            auth: route.auth.clone(),
            policy: policy_label(route.tls),
            webpki: false,
            report_only: false,
            dane: None,
            lmtp: route.protocol == RouteProtocol::Lmtp,
            report: None,
        };
        let ips = match self.resolver.addresses(&c.host).await {
            Ok(ips) => ips,
            Err(o) => return o,
        };
        let mut last = Outcome::Transient(format!("no address for {}", c.host));
        for ip in ips {
            match self.try_host(&c, ip, Errand::Probe(address), None).await {
                Ok((attempt, conn)) => {
                    if let Some(mut k) = conn {
                        quit(&mut k.conn).await;
                    }
                    return attempt.outcomes.into_iter().next().unwrap_or(last);
                }
                Err(HostFailure(o)) => last = o,
            }
        }
        last
    }

    async fn ehlo(&self, conn: &mut Conn, name: &str, lmtp: bool) -> io::Result<Capabilities> {
        if lmtp {
            // RFC 2033 §4.1: LHLO, and nothing to fall back to.
            conn.step = "LHLO";
            conn.send(format!("LHLO {name}\r\n").as_bytes()).await?;
            let (code, text) = conn.reply().await?;
            if code != 250 {
                return Err(io::Error::other(format!("LHLO refused: {code} {text}")));
            }
            return Ok(Capabilities {
                lmtp: true,
                ..Capabilities::parse(&text)
            });
        }
        conn.step = "EHLO";
        conn.send(format!("EHLO {name}\r\n").as_bytes()).await?;
        let (code, text) = conn.reply().await?;
        if code == 250 {
            return Ok(Capabilities::parse(&text));
        }
        conn.step = "HELO";
        conn.send(format!("HELO {name}\r\n").as_bytes()).await?;
        let (code, text) = conn.reply().await?;
        if code != 250 {
            return Err(io::Error::other(format!("HELO refused: {code} {text}")));
        }
        Ok(Capabilities::default())
    }

    /// MAIL, RCPT…, DATA; pipelined when the server offers it (RFC 2920).
    async fn transaction(
        &self,
        conn: &mut Conn,
        caps: &Capabilities,
        job: &DeliveryJob,
    ) -> io::Result<Vec<Outcome>> {
        let n = job.recipients.len();
        if job.smtputf8 && !caps.smtputf8 {
            // RFC 6531 §3.2: without SMTPUTF8 at the next hop the message
            // cannot be relayed as it is.
            return Ok(vec![
                Outcome::Permanent(
                    "next hop does not support SMTPUTF8 (5.6.7)".into()
                );
                n
            ]);
        }
        let mut mail = format!("MAIL FROM:<{}>", self.envelope_sender(job));
        if job.eight_bit && caps.eight_bit_mime {
            mail.push_str(" BODY=8BITMIME");
        }
        if job.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if caps.size {
            mail.push_str(&format!(" SIZE={}", job.body.len()));
        }
        mail.push_str("\r\n");
        let rcpt_lines: Vec<String> = job
            .recipients
            .iter()
            .map(|r| format!("RCPT TO:<{}>\r\n", r.address))
            .collect();

        let mut rcpt_results: Vec<Option<Outcome>> = Vec::with_capacity(n);
        let mail_reply;
        let data_reply;
        if caps.pipelining {
            conn.step = "MAIL+RCPT+DATA";
            let mut batch = mail.into_bytes();
            for l in &rcpt_lines {
                batch.extend_from_slice(l.as_bytes());
            }
            batch.extend_from_slice(b"DATA\r\n");
            conn.send(&batch).await?;
            mail_reply = conn.reply().await?;
            for _ in 0..n {
                let (code, text) = conn.reply().await?;
                rcpt_results
                    .push((code / 100 != 2).then(|| Outcome::from_reply(code, &text, "RCPT")));
            }
            data_reply = Some(conn.reply().await?);
        } else {
            conn.step = "MAIL";
            conn.send(mail.as_bytes()).await?;
            mail_reply = conn.reply().await?;
            if mail_reply.0 / 100 == 2 {
                conn.step = "RCPT";
                for l in &rcpt_lines {
                    conn.send(l.as_bytes()).await?;
                    let (code, text) = conn.reply().await?;
                    rcpt_results
                        .push((code / 100 != 2).then(|| Outcome::from_reply(code, &text, "RCPT")));
                }
                if rcpt_results.iter().any(Option::is_none) {
                    conn.step = "DATA";
                    conn.send(b"DATA\r\n").await?;
                    data_reply = Some(conn.reply().await?);
                } else {
                    data_reply = None;
                }
            } else {
                data_reply = None;
            }
        }

        if mail_reply.0 / 100 != 2 {
            if data_reply.as_ref().is_some_and(|(c, _)| *c == 354) {
                // A server that said 354 anyway gets an empty message ended at once.
                conn.send(b".\r\n").await?;
                let _ = conn.reply().await;
            }
            return Ok(vec![
                Outcome::from_reply(mail_reply.0, &mail_reply.1, "MAIL");
                n
            ]);
        }
        let accepted = rcpt_results.iter().filter(|r| r.is_none()).count();
        let data_outcome = match data_reply {
            Some((354, _)) if accepted > 0 && caps.lmtp => {
                conn.step = "DATA content";
                conn.send_body(&job.body).await?;
                // RFC 2033 §4.2: one reply per recipient RCPT accepted, in
                // the order of the RCPT commands. Each is that recipient's
                // outcome alone: one mailbox over quota does not make the
                // others be delivered twice.
                // The session may break after some replies: those
                // recipients keep the answer they got (a 250 is a
                // delivery), the rest are tried again.
                let mut lost: Option<Outcome> = None;
                for r in rcpt_results.iter_mut().filter(|r| r.is_none()) {
                    if lost.is_none() {
                        match conn.reply_within(DATA_END_TIMEOUT).await {
                            Ok((code, text)) => {
                                *r = Some(Outcome::from_reply(code, &text, "end of DATA"));
                                continue;
                            }
                            Err(e) => {
                                lost = Some(Outcome::Transient(format!(
                                    "connection lost before this recipient's reply after DATA: {e}"
                                )));
                            }
                        }
                    }
                    *r = lost.clone();
                }
                if lost.is_some() {
                    // Never reused: the session is in an unknown state.
                    conn.closing = true;
                }
                return Ok(rcpt_results.into_iter().flatten().collect());
            }
            Some((354, _)) if accepted > 0 => {
                conn.step = "DATA content";
                conn.send_body(&job.body).await?;
                let (code, text) = conn.reply_within(DATA_END_TIMEOUT).await?;
                Outcome::from_reply(code, &text, "end of DATA")
            }
            Some((354, _)) => {
                conn.send(b".\r\n").await?;
                let _ = conn.reply().await;
                Outcome::Transient("no recipient accepted".into())
            }
            Some((code, text)) => {
                reset(conn).await?;
                Outcome::from_reply(code, &text, "DATA")
            }
            None => {
                reset(conn).await?;
                Outcome::Transient("no recipient accepted".into())
            }
        };
        Ok(rcpt_results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| data_outcome.clone()))
            .collect())
    }
}

/// Ends a transaction that MAIL opened but DATA never completed
/// (RFC 5321 §4.1.1.5), so the connection can carry the next message: a
/// server would otherwise answer the next MAIL with "nested MAIL command".
async fn reset(conn: &mut Conn) -> io::Result<()> {
    conn.step = "RSET";
    conn.send(b"RSET\r\n").await?;
    conn.reply().await?;
    Ok(())
}

/// What a connection is opened for.
#[derive(Clone, Copy)]
enum Errand<'a> {
    Deliver(&'a DeliveryJob),
    /// A call-ahead for one recipient.
    Probe(&'a str),
}

impl HostFailure {
    /// A refusal at the greeting is about the host, not the recipient: try
    /// another host or later, never bounce for it.
    fn into_transient(self) -> HostFailure {
        HostFailure(Outcome::Transient(self.0.detail().to_owned()))
    }
}

impl SmtpClient {
    /// MTA-STS `testing`: checks the chain and name the server presented,
    /// and reports (log, metric) what `enforce` would have refused.
    /// Checks the certificate as `enforce` would; returns the failure for
    /// the TLS-RPT report (RFC 8460 §4.3.2.1), if any: reporting is what
    /// MTA-STS `testing` is for (RFC 8461 §5).
    fn report_certificate(
        &self,
        host: &str,
        conn: &rustls::ClientConnection,
    ) -> Option<(ResultType, String)> {
        let result = match (conn.peer_certificates(), server_name(host)) {
            (Some([end, intermediates @ ..]), Some(name)) => self
                .webpki_verifier
                .verify_server_cert(
                    end,
                    intermediates,
                    &name,
                    &[],
                    rustls_pki_types::UnixTime::now(),
                )
                .map(|_| ())
                .map_err(|e| (ResultType::of_tls(&e, false), e.to_string())),
            _ => Err((
                ResultType::CertificateNotTrusted,
                "no certificate".to_owned(),
            )),
        };
        match result {
            Ok(()) => {
                metrics::counter!("postern_mta_sts_total", "result" => "testing_ok").increment(1);
                None
            }
            Err((kind, e)) => {
                metrics::counter!("postern_mta_sts_total", "result" => "testing_failure")
                    .increment(1);
                tracing::warn!(%host, error = %e, "MTA-STS testing: the certificate would be refused under enforce (delivering anyway)");
                Some((kind, e))
            }
        }
    }
}

fn server_name(host: &str) -> Option<ServerName<'static>> {
    match host.parse::<IpAddr>() {
        Ok(ip) => Some(ServerName::IpAddress(ip.into())),
        Err(_) => ServerName::try_from(host.to_owned()).ok(),
    }
}

fn describe(conn: &rustls::ClientConnection) -> String {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    };
    let suite = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    format!("{version} {suite}")
}

/// Dot-stuffs (RFC 5321 §4.5.2) and terminates a whole body in one buffer.
/// Delivery streams through [`DataEncoder`] instead; this is its one-shot
/// form.
pub fn encode_data(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 8);
    let mut encoder = DataEncoder::default();
    encoder.encode(body, &mut out);
    encoder.finish(&mut out);
    out
}

/// Most bytes handed to the connection per write when a body is streamed:
/// the encoded copy of a message never exists whole, so a delivery holds
/// the stored body plus one chunk, not twice the message.
const DATA_CHUNK: usize = 64 * 1024;

/// Dot-stuffs (RFC 5321 §4.5.2) a body given in pieces. Any bare CR or LF
/// (intake refuses or normalises them, so this is defence in depth) is
/// written as CRLF: the client never emits a bare line ending. State
/// carries across pieces, so a CRLF or a leading dot split between two
/// pieces encodes as if the body were whole.
#[derive(Debug)]
pub struct DataEncoder {
    at_line_start: bool,
    /// The last byte was a CR (already written as CRLF): an LF next is its
    /// pair, not a second line ending.
    after_cr: bool,
}

impl Default for DataEncoder {
    fn default() -> Self {
        DataEncoder {
            at_line_start: true,
            after_cr: false,
        }
    }
}

impl DataEncoder {
    /// Appends the encoding of `piece` to `out`.
    pub fn encode(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        out.reserve(piece.len() + piece.len() / 64 + 2);
        for &b in piece {
            self.push(b, out);
        }
    }

    /// Appends the encoding of as much of `piece` as keeps `out` within
    /// `limit` bytes, and returns how many bytes of `piece` it took. One
    /// input byte becomes at most two (a stuffed dot, or a bare CR or LF
    /// written as CRLF), so at least one byte is taken whenever `out` has
    /// two bytes of room.
    pub fn encode_within(&mut self, piece: &[u8], out: &mut Vec<u8>, limit: usize) -> usize {
        let limit = limit.max(out.len() + 2);
        let mut used = 0;
        for &b in piece {
            if out.len() + 2 > limit {
                break;
            }
            self.push(b, out);
            used += 1;
        }
        used
    }

    fn push(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            b'\n' if self.after_cr => self.after_cr = false,
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                self.at_line_start = true;
                self.after_cr = b == b'\r';
            }
            _ => {
                if self.at_line_start && b == b'.' {
                    out.push(b'.');
                }
                out.push(b);
                self.at_line_start = false;
                self.after_cr = false;
            }
        }
    }

    /// Ends the body: a last line without a line ending gets one, then the
    /// end-of-data line.
    pub fn finish(self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[derive(Debug, Default, Clone)]
struct Capabilities {
    starttls: bool,
    pipelining: bool,
    eight_bit_mime: bool,
    smtputf8: bool,
    size: bool,
    /// The session was opened with LHLO: one reply per accepted recipient
    /// after the message.
    lmtp: bool,
}

impl Capabilities {
    fn parse(ehlo_text: &str) -> Self {
        let mut c = Capabilities::default();
        for line in ehlo_text.lines().skip(1) {
            let keyword = line
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            match keyword.as_str() {
                "STARTTLS" => c.starttls = true,
                "PIPELINING" => c.pipelining = true,
                "8BITMIME" => c.eight_bit_mime = true,
                "SMTPUTF8" => c.smtputf8 = true,
                "SIZE" => c.size = true,
                _ => {}
            }
        }
        c
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Closed,
}

struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    timeout: Duration,
    step: &'static str,
    /// Replies read since the counter was last reset (0 after a failure on
    /// a kept connection means the server had closed it while idle).
    replies: u32,
    /// The server said 421: it is closing the session.
    closing: bool,
}

impl Conn {
    fn local_ip(&self) -> Option<IpAddr> {
        match &self.stream {
            Stream::Plain(s) => s.local_addr().ok(),
            Stream::Tls(s) => s.get_ref().0.local_addr().ok(),
            Stream::Closed => None,
        }
        .map(|a| a.ip())
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        send_within(&mut self.stream, self.timeout, bytes).await
    }

    async fn send_body(&mut self, body: &[u8]) -> io::Result<()> {
        write_body(&mut self.stream, self.timeout, body).await
    }

    async fn reply(&mut self) -> io::Result<(u16, String)> {
        let t = self.timeout;
        self.reply_within(t).await
    }

    /// Reads one reply with smtp-proto's parser; bytes after it stay buffered
    /// (pipelined replies).
    async fn reply_within(&mut self, timeout: Duration) -> io::Result<(u16, String)> {
        let mut receiver = ResponseReceiver::default();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if !self.buf.is_empty() {
                let mut iter = self.buf.iter();
                let before = iter.len();
                let parsed = receiver.parse(&mut iter);
                let consumed = before - iter.len();
                self.buf.drain(..consumed);
                match parsed {
                    Ok(r) => {
                        self.replies += 1;
                        if r.code == 421 {
                            self.closing = true;
                        }
                        // Keep the enhanced status code (RFC 3463) in the text:
                        // it is what bounce classification reads.
                        let text = match r.esc {
                            [0, 0, 0] => r.message,
                            [a, b, c] => format!("{a}.{b}.{c} {}", r.message),
                        };
                        return Ok((r.code, text));
                    }
                    Err(smtp_proto::Error::NeedsMoreData { .. }) => {}
                    Err(e) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("bad reply: {e}"),
                        ))
                    }
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "reply timed out"))??;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Writes `bytes` and flushes them within `timeout`.
async fn send_within<W: AsyncWrite + Unpin>(
    w: &mut W,
    timeout: Duration,
    bytes: &[u8],
) -> io::Result<()> {
    tokio::time::timeout(timeout, async {
        w.write_all(bytes).await?;
        w.flush().await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))?
}

/// Writes a body dot-stuffed, in pieces of at most [`DATA_CHUNK`] bytes as
/// written (stuffing and CRLF repairs included, so a body of dot-led lines
/// does not make larger pieces). Each piece has the whole write timeout
/// (RFC 5321 §4.5.3.2.5 times each data block, not the message), so a slow
/// but moving peer is not cut off. Generic over the writer so tests can see
/// the pieces it is handed.
async fn write_body<W: AsyncWrite + Unpin>(
    w: &mut W,
    timeout: Duration,
    body: &[u8],
) -> io::Result<()> {
    let mut encoder = DataEncoder::default();
    let mut out = Vec::with_capacity(DATA_CHUNK);
    let mut rest = body;
    while !rest.is_empty() {
        out.clear();
        let used = encoder.encode_within(rest, &mut out, DATA_CHUNK);
        rest = &rest[used..];
        send_within(w, timeout, &out).await?;
    }
    out.clear();
    encoder.finish(&mut out);
    send_within(w, timeout, &out).await
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

/// Lower-case hex, as TLSA data is written (RFC 6698 §2.2).
fn data_encoding_hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_and_line_endings() {
        assert_eq!(encode_data(b"a\r\n.b\r\n"), b"a\r\n..b\r\n.\r\n");
        assert_eq!(encode_data(b".\r\n"), b"..\r\n.\r\n");
        assert_eq!(encode_data(b"no newline"), b"no newline\r\n.\r\n");
        // Bare CR and LF never leave as such.
        assert_eq!(
            encode_data(b"a\nb\rc\r\n.d"),
            b"a\r\nb\r\nc\r\n..d\r\n.\r\n"
        );
        assert_eq!(encode_data(b""), b".\r\n");
    }

    /// Streaming gives the same bytes as one-shot encoding wherever the
    /// body is cut, including inside a CRLF and before a leading dot.
    #[test]
    fn streamed_encoding_matches_whole_at_every_cut() {
        let body: &[u8] = b".a\r\n.\r\n..b\rc\nd\r\r\n\n.e\r\n.";
        let whole = encode_data(body);
        for cut in 0..=body.len() {
            for cut2 in cut..=body.len() {
                let mut encoder = DataEncoder::default();
                let mut out = Vec::new();
                encoder.encode(&body[..cut], &mut out);
                encoder.encode(&body[cut..cut2], &mut out);
                encoder.encode(&body[cut2..], &mut out);
                encoder.finish(&mut out);
                assert_eq!(out, whole, "cut at {cut} and {cut2}");
            }
        }
        assert_eq!(
            whole,
            b"..a\r\n..\r\n...b\r\nc\r\nd\r\n\r\n\r\n..e\r\n..\r\n.\r\n"
        );
    }

    /// A writer that accepts everything and records the size of each
    /// piece it is handed.
    #[derive(Default)]
    struct RecordingWriter {
        pieces: Vec<usize>,
        written: Vec<u8>,
    }

    impl AsyncWrite for RecordingWriter {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let me = self.get_mut();
            me.pieces.push(buf.len());
            me.written.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The body goes to the connection dot-stuffed in pieces of at most
    /// 64 KiB as written, never as one encoded copy, even when stuffing
    /// makes the encoding larger than the body (every line here starts
    /// with a dot, and some end in a bare LF that becomes CRLF); and the
    /// pieces are full ones, not line by line.
    #[tokio::test]
    async fn bodies_are_written_in_pieces_of_at_most_64_kib() {
        let mut body = Vec::new();
        while body.len() < 1024 * 1024 {
            body.extend_from_slice(b".a dot-led line\r\n.\n..\r\n");
        }
        let mut w = RecordingWriter::default();
        write_body(&mut w, Duration::from_secs(5), &body)
            .await
            .unwrap();
        let encoded = encode_data(&body);
        assert!(
            encoded.len() > body.len() + body.len() / 8,
            "stuffing grows it"
        );
        assert_eq!(w.written, encoded, "the same bytes as the one-shot form");
        let largest = w.pieces.iter().copied().max().unwrap();
        assert!(largest <= 64 * 1024, "a piece of {largest} bytes");
        // All but the last body piece and the end-of-data line are full
        // (within the one byte an input byte may not split across).
        let body_pieces = &w.pieces[..w.pieces.len() - 2];
        assert!(
            body_pieces.iter().all(|&n| n >= 64 * 1024 - 1),
            "{:?}",
            w.pieces
        );
    }

    #[test]
    fn capabilities() {
        let c = Capabilities::parse("mx.example Hello\nPIPELINING\nSIZE 1000\nSTARTTLS\n8BITMIME");
        assert!(c.pipelining && c.size && c.starttls && c.eight_bit_mime && !c.smtputf8);
    }
}
