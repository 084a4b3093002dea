//! The configuration schema, its defaults, and validation that names the key
//! at fault. `postern.example.toml` at the repository root documents every key;
//! a test keeps the two in step.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::address::normalize_domain;

mod content;
mod inbound;
mod mta_sts;
mod reports;
pub use content::{
    AttachmentsConfig, CheckFailure, ClamdConfig, ContentConfig, ContentDomainPolicy, RspamdConfig,
    SpamThresholds, UriblZone, SNIFFED_TYPES,
};
pub use inbound::{InboundAction, InboundAuthConfig, InboundDomainPolicy, InboundSenderPolicy};
pub use mta_sts::{MtaStsMode, MtaStsPolicyConfig, MTA_STS_MAX_AGE_LIMIT};
pub use reports::ReportsConfig;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub tls: TlsConfig,
    pub listener: Vec<ListenerConfig>,
    pub http: HttpConfig,
    pub route: Vec<RouteConfig>,
    pub dns: DnsConfig,
    pub relay: RelayConfig,
    /// What `mx` listeners check about a client before they greet it.
    pub screen: ScreenConfig,
    /// SPF, DKIM, DMARC and ARC on unauthenticated mail on `mx` listeners.
    pub inbound_auth: InboundAuthConfig,
    /// Virus, spam, URL and attachment checks of that mail.
    pub content: ContentConfig,
    pub smtp: SmtpConfig,
    pub limits: LimitsConfig,
    pub queue: QueueConfig,
    /// Per-destination limits overriding the `[queue]` defaults.
    pub destination: Vec<DestinationConfig>,
    /// Pools of source addresses outbound connections are bound to.
    pub ip_pool: Vec<IpPoolConfig>,
    pub webhooks: WebhooksConfig,
    /// Sender authentication: DKIM key rotation and single sender
    /// verification.
    pub senders: SendersConfig,
    pub auth: AuthConfig,
    /// Issuers whose JWT access tokens are accepted by XOAUTH2 and
    /// OAUTHBEARER (RFC 7628).
    pub oauth_issuer: Vec<OAuthIssuerConfig>,
    pub audit: AuditConfig,
    pub quarantine: QuarantineConfig,
    /// MTA-STS policies (RFC 8461) served on the HTTP listener for the
    /// company's own domains.
    pub mta_sts: Vec<MtaStsPolicyConfig>,
    /// The reports Postern sends (DMARC aggregate, TLS-RPT) and the
    /// addresses at which it receives them.
    pub reports: ReportsConfig,
}

/// `[quarantine]`: inbound mail held for a decision.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuarantineConfig {
    /// Held messages are deleted this long after they were held (each
    /// expiry recorded in the send log and the audit log).
    #[serde(with = "crate::duration")]
    pub retention: Duration,
}

impl Default for QuarantineConfig {
    fn default() -> Self {
        QuarantineConfig {
            retention: Duration::from_secs(30 * 86_400),
        }
    }
}

/// `[audit]`: where the key that signs the audit chain's recorded head is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The HMAC key for `<data_dir>/audit.head` and `postern audit anchor`
    /// (hex, created 0600 if missing). Default `<data_dir>/audit-anchor.key`;
    /// keeping it outside the data directory (readable by Postern, not
    /// writable) means a copy of the data directory cannot forge a head.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchor_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthIssuerConfig {
    /// Must equal the token's `iss` claim.
    pub issuer: String,
    /// Must be (one of) the token's `aud`.
    pub audience: String,
    /// JWKS document (RFC 7517) with the issuer's RS256/ES256 public keys:
    /// a file, or an https:// URL fetched at start and every `jwks_refresh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// PEM CA bundle for `jwks_url` (default: the built-in Mozilla roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_ca_file: Option<PathBuf>,
    #[serde(default = "default_jwks_refresh", with = "crate::duration")]
    pub jwks_refresh: Duration,
    /// The claim whose value is the Postern account name.
    #[serde(default = "default_account_claim")]
    pub account_claim: String,
}

fn default_account_claim() -> String {
    "sub".into()
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(3600)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            store: StoreConfig::default(),
            tls: TlsConfig::default(),
            listener: default_listeners(),
            http: HttpConfig::default(),
            route: Vec::new(),
            dns: DnsConfig::default(),
            relay: RelayConfig::default(),
            screen: ScreenConfig::default(),
            inbound_auth: InboundAuthConfig::default(),
            content: ContentConfig::default(),
            smtp: SmtpConfig::default(),
            limits: LimitsConfig::default(),
            queue: QueueConfig::default(),
            destination: Vec::new(),
            ip_pool: Vec::new(),
            webhooks: WebhooksConfig::default(),
            senders: SendersConfig::default(),
            auth: AuthConfig::default(),
            oauth_issuer: Vec::new(),
            audit: AuditConfig::default(),
            quarantine: QuarantineConfig::default(),
            mta_sts: Vec::new(),
            reports: ReportsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// EHLO name and the host in `Received:` headers.
    pub hostname: String,
    pub data_dir: PathBuf,
    /// How long a shutdown waits for sessions and deliveries in progress.
    #[serde(with = "crate::duration")]
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: "localhost".into(),
            data_dir: PathBuf::from("./postern-data"),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Embedded,
    Postgres,
}

/// When the embedded store syncs a commit to disk: SQLite's `synchronous`
/// setting for its WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreSynchronous {
    /// Every commit fsyncs the WAL before it is acknowledged, so a `250`
    /// (or `202`) is given only for mail that survives a power loss.
    #[default]
    Full,
    /// The WAL is synced only at checkpoints: acknowledged mail survives a
    /// crash of the process but not of the machine.
    Normal,
    /// Never synced: for throwaway data only.
    Off,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub kind: StoreKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Anything but `full` gives up the durability of acknowledged mail;
    /// the durability test uses `off` to show that its check notices.
    pub synchronous: StoreSynchronous,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; when both are absent a self-signed pair is
    /// generated under `<data_dir>/tls/` on first start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerRole {
    /// Message submission with STARTTLS (RFC 6409, RFC 3207); AUTH required.
    Submission,
    /// Message submission over implicit TLS (RFC 8314 §3.3); AUTH required.
    Submissions,
    /// Inbound MX: mail for relay domains only, AUTH not required.
    Mx,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub role: ListenerRole,
    pub address: SocketAddr,
    /// Overrides `[tls] cert` for this listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Development only: offer AUTH on a plaintext submission connection.
    /// Logged as a warning at every start.
    #[serde(default)]
    pub allow_plaintext_auth: bool,
    /// SASL mechanisms offered (after TLS) on submission listeners:
    /// PLAIN, LOGIN, CRAM-MD5.
    #[serde(default = "default_mechanisms")]
    pub auth_mechanisms: Vec<String>,
}

/// SASL mechanisms Postern implements.
pub const KNOWN_MECHANISMS: &[&str] = &["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER"];

fn default_mechanisms() -> Vec<String> {
    vec!["PLAIN".into(), "LOGIN".into()]
}

fn default_listeners() -> Vec<ListenerConfig> {
    let l = |role, port| ListenerConfig {
        role,
        address: SocketAddr::from(([127, 0, 0, 1], port)),
        tls_cert: None,
        tls_key: None,
        allow_plaintext_auth: false,
        auth_mechanisms: default_mechanisms(),
    };
    vec![
        l(ListenerRole::Submission, 2587),
        l(ListenerRole::Submissions, 2465),
        l(ListenerRole::Mx, 2025),
    ]
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serves `/metrics` (Prometheus) and `/healthz`.
    pub address: Option<SocketAddr>,
    /// How users reach the HTTP listener (links in verification mails);
    /// default: `http://<address>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Serve `/metrics` only here (and not on `address`): a listener that
    /// only the monitoring network reaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<SocketAddr>,
    /// For a request's line and headers, and for an idle kept-alive
    /// connection to begin its next request; then the connection closes.
    #[serde(with = "crate::duration")]
    pub header_timeout: Duration,
    /// For a whole request (body upload and handling); 408 past it.
    #[serde(with = "crate::duration")]
    pub request_timeout: Duration,
    /// Open connections in all; past it new ones are closed at once.
    pub max_connections: usize,
    /// Open connections from one client address.
    pub max_connections_per_ip: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            address: Some(SocketAddr::from(([127, 0, 0, 1], 8025))),
            public_url: None,
            metrics_address: None,
            header_timeout: Duration::from_secs(10),
            // A 30 MB `/v3/mail/send` body at 1 Mbit/s takes about 4 minutes.
            request_timeout: Duration::from_secs(300),
            max_connections: 1024,
            max_connections_per_ip: 64,
        }
    }
}

impl HttpConfig {
    /// The base URL for links, without a trailing slash.
    pub fn base_url(&self) -> String {
        match (&self.public_url, self.address) {
            (Some(u), _) => u.trim_end_matches('/').to_owned(),
            (None, Some(a)) => format!("http://{a}"),
            (None, None) => "http://localhost".to_owned(),
        }
    }
}

/// The protocol a route's next hop speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RouteProtocol {
    #[default]
    Smtp,
    /// RFC 2033: LHLO instead of EHLO, and after the message one reply
    /// per accepted recipient, so each recipient is delivered, deferred
    /// or bounced on its own.
    Lmtp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RouteTls {
    /// Plain SMTP, STARTTLS never attempted.
    None,
    /// STARTTLS when offered, without certificate checks (RFC 7435).
    #[default]
    Opportunistic,
    /// STARTTLS with a verified certificate, or no delivery (the message is deferred).
    Required,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A recipient domain, or `*` for every domain without a route of its own.
    pub domain: String,
    /// `host:port` of the next hop.
    pub next_hop: String,
    #[serde(default)]
    pub tls: RouteTls,
    /// What the next hop speaks: SMTP, or LMTP (RFC 2033) for a mail
    /// store that delivers to mailboxes itself (Dovecot, Cyrus).
    #[serde(default)]
    pub protocol: RouteProtocol,
    /// PEM CA bundle to verify the next hop with when `tls = "required"`
    /// (default: the Mozilla roots built into Postern).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// AUTH PLAIN credentials for a smart host. Sent only over TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_password: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Name servers for MX, MTA-STS, TLSA and domain-record lookups, for
    /// webhook hosts and for the screening of `mx` clients (DNSBL, reverse
    /// DNS); empty means the system's resolver.
    pub nameservers: Vec<SocketAddr>,
    /// Validate DNSSEC (from the root trust anchors, not trusting the
    /// upstream's AD bit) and honour DANE TLSA records (RFC 7672). DANE is
    /// in force once the resolver path is seen to supply DNSSEC data that
    /// validates (probed at start and every 10 minutes); until then mail
    /// takes the usual TLS policy.
    pub dane: bool,
    /// Defer MX mail while DANE is not in force (the resolver path does not
    /// validate), instead of sending it under the usual TLS policy.
    pub dane_required: bool,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            dane: true,
            dane_required: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Domains accepted without AUTH on `mx` listeners.
    pub domains: Vec<String>,
    /// Which recipients at those domains are accepted at RCPT: every
    /// local part would let a spammer make us bounce to forged senders.
    pub recipient_check: RecipientCheck,
    /// With `recipient_check = "list"`: the addresses accepted; `@domain`
    /// accepts every address of a domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// With `recipient_check = "callahead"`: how long a next hop's answer
    /// about an address is kept (refusals for a tenth of it).
    #[serde(with = "crate::duration")]
    pub callahead_cache: Duration,
    /// DSNs for mail that arrived without authentication (headers only):
    /// at most this many an hour to one address...
    pub dsn_per_address_per_hour: u32,
    /// ...and this many an hour in all.
    pub dsn_per_hour: u32,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            domains: Vec::new(),
            recipient_check: RecipientCheck::Callahead,
            recipients: Vec::new(),
            callahead_cache: Duration::from_secs(3600),
            dsn_per_address_per_hour: 5,
            dsn_per_hour: 200,
        }
    }
}

/// How recipients at relay domains are checked at RCPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientCheck {
    /// Ask the domain's next hop (RCPT TO, without sending anything), and
    /// keep its answer for `callahead_cache`.
    Callahead,
    /// Only the addresses in `relay.recipients`.
    List,
    /// Every address (the next hop refuses later; bounces then go out,
    /// rate-limited): only for next hops that accept everything.
    Any,
}

/// `[screen]`: the checks an `mx` listener makes of a client before it
/// sends the 220 greeting, as Postfix's postscreen does: DNS block and
/// allow lists, a client that talks before the greeting, and (logged by
/// default) reverse DNS and the HELO name. Submission listeners are never
/// screened.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScreenConfig {
    /// How long the greeting is held back; a client that sends anything
    /// meanwhile is refused (RFC 5321 §3.1: the client waits for the
    /// greeting). 0 turns the pregreet check off.
    #[serde(with = "crate::duration")]
    pub greet_delay: Duration,
    /// Clients never screened (IP or CIDR), as postscreen passes
    /// `mynetworks`.
    pub exempt_networks: Vec<String>,
    /// The summed weight of the `[[screen.dnsbl]]` zones listing a client
    /// at which it is refused.
    pub threshold: i32,
    /// At or below this sum (allow lists have negative weights) the client
    /// is allowlisted: it skips every other check.
    pub allowlist_threshold: i32,
    /// Each DNS lookup gets this long; one that takes longer counts as "not
    /// listed" (and is counted), so a dead list never holds up mail.
    #[serde(with = "crate::duration")]
    pub lookup_timeout: Duration,
    /// How long an answer that lists something (or names a host) is kept.
    #[serde(with = "crate::duration")]
    pub cache_ttl: Duration,
    /// How long an empty answer (not listed, no such name) is kept.
    #[serde(with = "crate::duration")]
    pub negative_cache_ttl: Duration,
    /// Answers kept at most (and as many clients that passed the pregreet
    /// check).
    pub cache_entries: usize,
    /// A client that waited for a held greeting is not held again for this
    /// long (postscreen's `postscreen_greet_ttl`): a mail server coming back
    /// every few seconds pays the delay once, not on each connection. Its
    /// lookups still run (from the cache when fresh). 0 holds every time.
    #[serde(with = "crate::duration")]
    pub pregreet_pass_ttl: Duration,
    /// Forward-confirmed reverse DNS of the client (its PTR names resolve
    /// back to it).
    pub fcrdns: ScreenAction,
    /// The HELO/EHLO name: its syntax, our own host name, an address
    /// literal that is not the client's.
    pub helo: ScreenAction,
    /// DNS block lists (positive weight) and allow lists (negative).
    pub dnsbl: Vec<DnsblConfig>,
}

impl Default for ScreenConfig {
    fn default() -> Self {
        ScreenConfig {
            greet_delay: Duration::from_secs(1),
            exempt_networks: vec!["127.0.0.0/8".into(), "::1".into()],
            threshold: 1,
            allowlist_threshold: -1,
            lookup_timeout: Duration::from_secs(2),
            cache_ttl: Duration::from_secs(600),
            negative_cache_ttl: Duration::from_secs(60),
            cache_entries: 50_000,
            pregreet_pass_ttl: Duration::from_secs(86_400),
            fcrdns: ScreenAction::Log,
            helo: ScreenAction::Log,
            dnsbl: Vec::new(),
        }
    }
}

/// What a failed screening check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScreenAction {
    /// Refuse the client.
    Reject,
    /// Log and count the failure; the client goes on.
    Log,
    /// Do not check.
    Off,
}

/// One `[[screen.dnsbl]]` zone (RFC 5782).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsblConfig {
    pub zone: String,
    /// Added to the client's score when the zone lists it; negative for an
    /// allow list (DNSWL).
    #[serde(default = "default_dnsbl_weight")]
    pub weight: i32,
    /// Only these answers (127.0.0.0/8 codes) count as a listing; empty:
    /// any answer in 127.0.0.0/8 does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<std::net::Ipv4Addr>,
}

fn default_dnsbl_weight() -> i32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BareLineEndings {
    /// Refuse the message and close the connection (default).
    #[default]
    Reject,
    /// Rewrite bare CR and bare LF in the body to CRLF. They are still never
    /// treated as line ends when looking for the end of DATA.
    Normalize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    pub bare_line_endings: BareLineEndings,
    /// Authenticated senders may use only envelope senders and header From
    /// addresses in domains verified for their account (550 5.7.1 otherwise).
    pub require_verified_senders: bool,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            bare_line_endings: BareLineEndings::default(),
            require_verified_senders: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// RFC 5321 §4.5.3.1.4: 512 octets for a command line, CRLF included.
    pub max_command_line: usize,
    /// Advertised with SIZE (RFC 1870) and enforced during DATA/BDAT.
    pub max_message_size: usize,
    /// RFC 5321 §4.5.3.1.8: at least 100 must be accepted.
    pub max_recipients: usize,
    /// Syntax and sequence errors before the session is closed.
    pub max_errors: usize,
    /// Refused recipients before replies slow down, and twice that before
    /// the connection is closed (directory harvesting defence).
    pub max_refused_recipients: usize,
    /// RFC 5321 §4.5.3.2.7: a server waits at least 5 minutes for a command.
    #[serde(with = "crate::duration")]
    pub command_timeout: Duration,
    /// RFC 5321 §4.5.3.2.5: 3 minutes for each block of DATA.
    #[serde(with = "crate::duration")]
    pub data_timeout: Duration,
    #[serde(with = "crate::duration")]
    pub tls_handshake_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Message bytes held in memory by all transactions and API requests
    /// together (each body until it is stored); past it new transactions
    /// get `452 4.3.1` (SMTP) or 503 (HTTP). At least `max_message_size`.
    pub body_memory_budget: usize,
    /// Most of that budget one holder may hold at once: an authenticated
    /// account, or an unauthenticated client's network (/24, /64). Absent:
    /// a quarter of the budget, at least `max_message_size`. Keeps slow
    /// uploads from one tenant or network from starving everyone else.
    pub body_memory_per_client: Option<usize>,
}

impl LimitsConfig {
    /// The per-holder share of the body budget in effect.
    pub fn body_memory_share(&self) -> usize {
        self.body_memory_per_client
            .unwrap_or_else(|| (self.body_memory_budget / 4).max(self.max_message_size))
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_command_line: 512,
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_errors: 10,
            max_refused_recipients: 5,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            tls_handshake_timeout: Duration::from_secs(30),
            max_connections: 20_000,
            max_connections_per_ip: 200,
            // Ten bodies of the largest size, or thousands of typical ones.
            body_memory_budget: 256 * 1024 * 1024,
            body_memory_per_client: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// First retry delay; each later one doubles (with jitter) up to `retry_max`.
    #[serde(with = "crate::duration")]
    pub retry_initial: Duration,
    #[serde(with = "crate::duration")]
    pub retry_max: Duration,
    /// A recipient still undelivered after this long fails for good.
    #[serde(with = "crate::duration")]
    pub max_age: Duration,
    /// Delivery attempts in flight at once.
    pub concurrency: usize,
    #[serde(with = "crate::duration")]
    pub connect_timeout: Duration,
    /// Per-command timeout when talking to the next hop.
    #[serde(with = "crate::duration")]
    pub command_timeout: Duration,
    /// Connections at once to one destination: one MX host (so all domains
    /// served by the same provider share them) or one route's next hop.
    pub max_connections_per_destination: usize,
    /// Messages sent over one connection before it is closed and a new one
    /// opened.
    pub max_messages_per_connection: u32,
    /// How long an idle connection waits for more mail to its destination
    /// before QUIT.
    #[serde(with = "crate::duration")]
    pub connection_idle: Duration,
    /// The IP pool for accounts that have none of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_ip_pool: Option<String>,
    /// Look up receivers' MTA-STS policies (RFC 8461) and honour them.
    pub mta_sts: bool,
    /// Extra CA certificates (PEM) trusted with the Mozilla roots where a
    /// receiver's policy demands a valid certificate (MTA-STS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// The port MX hosts are connected on: 25 (RFC 5321 §4.5.4.2); another
    /// only to point delivery at a test receiver. TLSA names use 25
    /// whatever it is.
    pub mx_port: u16,
}

/// Limits for destinations whose host matches `match`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// An MX host (`gmail-smtp-in.l.google.com`), a suffix (`*.google.com`),
    /// or a route's next-hop host.
    #[serde(rename = "match")]
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages_per_connection: Option<u32>,
    /// Messages per rolling hour; beyond it mail waits (no attempt is
    /// counted, no event written) until the hour has room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages_per_hour: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpPoolConfig {
    pub name: String,
    pub address: Vec<SourceAddressConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceAddressConfig {
    /// A local address to connect from.
    pub ip: std::net::IpAddr,
    /// The EHLO name for connections from this address (its PTR name);
    /// default `server.hostname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ehlo_name: Option<String>,
    /// Messages per rolling hour from this address, across destinations
    /// (warming up a new address); beyond it mail waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages_per_hour: Option<u32>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(4 * 3600),
            max_age: Duration::from_secs(5 * 86_400),
            concurrency: 100,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            max_connections_per_destination: 20,
            max_messages_per_connection: 100,
            connection_idle: Duration::from_secs(2),
            default_ip_pool: None,
            mta_sts: true,
            tls_ca_file: None,
            mx_port: 25,
        }
    }
}

/// Event webhooks: how Postern POSTs each account's events to the URL the
/// account set (`/v3/user/webhooks/event/settings`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Most events in one POST (a JSON array, as SendGrid sends).
    pub batch_size: usize,
    /// How often new events are looked for.
    #[serde(with = "crate::duration")]
    pub flush_interval: Duration,
    #[serde(with = "crate::duration")]
    pub timeout: Duration,
    /// Longest wait between retries of a failing URL (backoff doubles up
    /// to this).
    #[serde(with = "crate::duration")]
    pub retry_max: Duration,
    /// Events a URL has not taken for this long are given up (logged and
    /// counted), so one dead receiver cannot hold its account's log forever.
    #[serde(with = "crate::duration")]
    pub give_up_after: Duration,
    /// Allow http:// URLs (events carry recipient addresses: off by default).
    pub allow_plain_http: bool,
    /// Allow URLs that resolve to loopback, private, link-local or other
    /// internal addresses. Off by default: an API user must not be able to
    /// make the server call into the operator's network (SSRF).
    pub allow_private_destinations: bool,
    /// Internal addresses or networks (CIDR) webhooks may go to while
    /// `allow_private_destinations` is off: the operator's own receiver,
    /// without opening the rest of the internal ranges.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_internal_networks: Vec<String>,
    /// Extra CA certificates (PEM) trusted for https:// URLs besides the
    /// built-in Mozilla roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            batch_size: 500,
            flush_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            retry_max: Duration::from_secs(600),
            give_up_after: Duration::from_secs(86_400),
            allow_plain_http: false,
            allow_private_destinations: false,
            allowed_internal_networks: Vec::new(),
            ca_file: None,
        }
    }
}

/// Sender authentication.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SendersConfig {
    /// After a DKIM key rotation, how long the replaced selector stays
    /// published (mail signed with it may still be in queues).
    #[serde(with = "crate::duration")]
    pub dkim_rotation_overlap: Duration,
    /// How long a single sender's verification link works.
    #[serde(with = "crate::duration")]
    pub verification_token_ttl: Duration,
    /// Least time between two verification mails to one address.
    #[serde(with = "crate::duration")]
    pub verification_resend_interval: Duration,
    /// Most verification mails to one address per day.
    pub verification_mails_per_day: u32,
    /// From address of verification mails; default `no-reply@<server.hostname>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_from: Option<String>,
}

impl Default for SendersConfig {
    fn default() -> Self {
        SendersConfig {
            dkim_rotation_overlap: Duration::from_secs(7 * 86_400),
            verification_token_ttl: Duration::from_secs(86_400),
            verification_resend_interval: Duration::from_secs(60),
            verification_mails_per_day: 5,
            verification_from: None,
        }
    }
}

/// Brute-force defence. Failures are counted per client IP, per network
/// (/24 for IPv4, /64 for IPv6), per account and across all accounts, within
/// `failure_window`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    #[serde(with = "crate::duration")]
    pub failure_window: Duration,
    /// Failures from one IP before its replies are slowed down.
    pub delay_after_failures: u32,
    /// Longest slow-down of one reply.
    #[serde(with = "crate::duration")]
    pub max_delay: Duration,
    /// Failures from one IP before it is blocked.
    pub block_ip_after_failures: u32,
    /// Failures from one network before the whole network is blocked.
    pub block_network_after_failures: u32,
    #[serde(with = "crate::duration")]
    pub block_duration: Duration,
    /// Distinct accounts failed from one IP: password spraying; the IP is blocked.
    pub spraying_accounts: u32,
    /// Distinct IPs failing on one account: credential stuffing; those
    /// sources are blocked for that account, others keep working.
    pub stuffing_sources: u32,
    /// Hashing slots for passwords (default: half the cores, at least one),
    /// so a flood of password guesses can never take every core.
    pub password_hash_parallelism: usize,
    /// Networks (CIDR) that may never log in, whatever the credentials.
    pub deny_networks: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            failure_window: Duration::from_secs(15 * 60),
            delay_after_failures: 3,
            max_delay: Duration::from_secs(5),
            block_ip_after_failures: 20,
            block_network_after_failures: 100,
            block_duration: Duration::from_secs(15 * 60),
            spraying_accounts: 5,
            stuffing_sources: 10,
            password_hash_parallelism: std::thread::available_parallelism()
                .map_or(1, |n| (n.get() / 2).max(1)),
            deny_networks: Vec::new(),
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types alone cannot; every error names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.hostname.is_empty() || normalize_domain(&self.server.hostname).is_err() {
            return Err(invalid("server.hostname", "must be a host name"));
        }
        if self.store.kind == StoreKind::Postgres {
            return Err(invalid(
                "store.kind",
                "\"postgres\" is not implemented yet; use \"embedded\"",
            ));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(invalid("tls", "set both cert and key, or neither"));
        }
        if self.listener.is_empty() {
            return Err(invalid("listener", "at least one [[listener]] is needed"));
        }
        if self.dns.dane_required && !self.dns.dane {
            return Err(invalid(
                "dns.dane_required",
                "needs dns.dane = true (DANE cannot be required while it is off)",
            ));
        }
        let mut seen = HashSet::new();
        for (i, l) in self.listener.iter().enumerate() {
            if !seen.insert(l.address) {
                return Err(invalid(
                    format!("listener[{i}].address"),
                    format!("{} is used by two listeners", l.address),
                ));
            }
            if l.tls_cert.is_some() != l.tls_key.is_some() {
                return Err(invalid(
                    format!("listener[{i}]"),
                    "set both tls_cert and tls_key, or neither",
                ));
            }
            for m in &l.auth_mechanisms {
                let upper = m.to_ascii_uppercase();
                if (upper == "XOAUTH2" || upper == "OAUTHBEARER") && self.oauth_issuer.is_empty() {
                    return Err(invalid(
                        format!("listener[{i}].auth_mechanisms"),
                        format!("{m} needs at least one [[oauth_issuer]]"),
                    ));
                }
                if !KNOWN_MECHANISMS.contains(&upper.as_str()) {
                    return Err(invalid(
                        format!("listener[{i}].auth_mechanisms"),
                        format!(
                            "unknown mechanism {m:?}; known: {}",
                            KNOWN_MECHANISMS.join(", ")
                        ),
                    ));
                }
            }
            if l.allow_plaintext_auth && l.role != ListenerRole::Submission {
                return Err(invalid(
                    format!("listener[{i}].allow_plaintext_auth"),
                    "only applies to role = \"submission\"",
                ));
            }
        }
        let mut domains = HashSet::new();
        for (i, r) in self.route.iter().enumerate() {
            if r.domain != "*" && normalize_domain(&r.domain).is_err() {
                return Err(invalid(
                    format!("route[{i}].domain"),
                    "must be a domain name or \"*\"",
                ));
            }
            if !domains.insert(r.domain.to_lowercase()) {
                return Err(invalid(
                    format!("route[{i}].domain"),
                    format!("{} has two routes", r.domain),
                ));
            }
            if split_host_port(&r.next_hop).is_none() {
                return Err(invalid(
                    format!("route[{i}].next_hop"),
                    "must be host:port (IPv6 as [addr]:port)",
                ));
            }
            if r.auth_username.is_some() != r.auth_password.is_some() {
                return Err(invalid(
                    format!("route[{i}]"),
                    "set both auth_username and auth_password, or neither",
                ));
            }
            if r.auth_username.is_some() && r.tls == RouteTls::None {
                return Err(invalid(
                    format!("route[{i}].tls"),
                    "AUTH credentials are never sent without TLS; use \"required\"",
                ));
            }
        }
        for (i, d) in self.relay.domains.iter().enumerate() {
            if normalize_domain(d).is_err() {
                return Err(invalid(
                    format!("relay.domains[{i}]"),
                    "must be a domain name",
                ));
            }
        }
        self.validate_screen()?;
        self.inbound_auth.validate(&self.relay.domains)?;
        self.content.validate(&self.relay.domains)?;
        mta_sts::validate(&self.mta_sts)?;
        self.reports.validate(&self.relay.domains)?;
        if self.queue.mx_port == 0 {
            return Err(invalid("queue.mx_port", "must be a port (1-65535)"));
        }
        let l = &self.limits;
        if l.max_command_line < 512 {
            return Err(invalid(
                "limits.max_command_line",
                "RFC 5321 §4.5.3.1.4 requires at least 512",
            ));
        }
        if l.max_recipients < 1 {
            return Err(invalid("limits.max_recipients", "must be at least 1"));
        }
        if l.max_message_size < 1024 {
            return Err(invalid("limits.max_message_size", "must be at least 1024"));
        }
        match self.relay.recipient_check {
            RecipientCheck::Callahead => {
                for d in &self.relay.domains {
                    let routed = self
                        .route
                        .iter()
                        .any(|r| r.domain == "*" || r.domain.eq_ignore_ascii_case(d));
                    if !routed {
                        return Err(invalid(
                            "relay.recipient_check",
                            format!("\"callahead\" needs a [[route]] for relay domain {d} (its MX is this server); add one, or use \"list\""),
                        ));
                    }
                }
            }
            RecipientCheck::List
                if !self.relay.domains.is_empty() && self.relay.recipients.is_empty() =>
            {
                return Err(invalid(
                    "relay.recipients",
                    "is empty, so \"list\" would refuse every recipient of the relay domains",
                ));
            }
            _ => {}
        }
        if l.body_memory_budget < l.max_message_size {
            return Err(invalid(
                "limits.body_memory_budget",
                "must be at least limits.max_message_size, or no message of the largest size could ever be taken",
            ));
        }
        if let Some(share) = l.body_memory_per_client {
            if share < l.max_message_size || share > l.body_memory_budget {
                return Err(invalid(
                    "limits.body_memory_per_client",
                    "must be between limits.max_message_size and limits.body_memory_budget",
                ));
            }
        }
        if l.max_connections == 0 || l.max_connections_per_ip == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        let q = &self.queue;
        if q.max_connections_per_destination == 0 || q.max_messages_per_connection == 0 {
            return Err(invalid(
                "queue.max_connections_per_destination",
                "max_connections_per_destination and max_messages_per_connection must be at least 1",
            ));
        }
        for (i, d) in self.destination.iter().enumerate() {
            let host = d.host.strip_prefix("*.").unwrap_or(&d.host);
            if host.is_empty()
                || (host.parse::<std::net::IpAddr>().is_err() && normalize_domain(host).is_err())
            {
                return Err(invalid(
                    format!("destination[{i}].match"),
                    "must be a host name, *.suffix, or an IP address",
                ));
            }
            if d.max_connections == Some(0) || d.max_messages_per_connection == Some(0) {
                return Err(invalid(
                    format!("destination[{i}]"),
                    "limits must be at least 1",
                ));
            }
        }
        let mut pools = HashSet::new();
        for (i, p) in self.ip_pool.iter().enumerate() {
            if p.name.is_empty() || !pools.insert(p.name.as_str()) {
                return Err(invalid(
                    format!("ip_pool[{i}].name"),
                    "must be set and unique",
                ));
            }
            if p.address.is_empty() {
                return Err(invalid(
                    format!("ip_pool[{i}].address"),
                    "a pool needs at least one address",
                ));
            }
            for (j, a) in p.address.iter().enumerate() {
                if let Some(name) = &a.ehlo_name {
                    if normalize_domain(name).is_err() {
                        return Err(invalid(
                            format!("ip_pool[{i}].address[{j}].ehlo_name"),
                            "must be a host name",
                        ));
                    }
                }
            }
        }
        if let Some(p) = &q.default_ip_pool {
            if !pools.contains(p.as_str()) {
                return Err(invalid(
                    "queue.default_ip_pool",
                    format!("no [[ip_pool]] named {p:?}"),
                ));
            }
        }
        if self.senders.verification_mails_per_day == 0 {
            return Err(invalid(
                "senders.verification_mails_per_day",
                "must be at least 1",
            ));
        }
        if self.senders.verification_token_ttl.is_zero() {
            return Err(invalid("senders.verification_token_ttl", "must not be 0"));
        }
        // 0 would delete every held message at the next sweep: mail
        // accepted (250) and then thrown away unseen.
        if self.quarantine.retention < Duration::from_secs(1) {
            return Err(invalid("quarantine.retention", "must be at least 1s"));
        }
        if let Some(u) = &self.http.public_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(invalid(
                    "http.public_url",
                    "must start with http:// or https://",
                ));
            }
        }
        if !(1..=10_000).contains(&self.webhooks.batch_size) {
            return Err(invalid("webhooks.batch_size", "must be 1 to 10000"));
        }
        if self.webhooks.flush_interval.is_zero() || self.webhooks.timeout.is_zero() {
            return Err(invalid(
                "webhooks.flush_interval",
                "flush_interval and timeout must be more than zero",
            ));
        }
        for (i, o) in self.oauth_issuer.iter().enumerate() {
            match (&o.jwks_file, &o.jwks_url) {
                (Some(_), None) => {}
                (None, Some(url)) if url.starts_with("https://") => {}
                (None, Some(_)) => {
                    return Err(invalid(
                        format!("oauth_issuer[{i}].jwks_url"),
                        "must be an https:// URL",
                    ))
                }
                _ => {
                    return Err(invalid(
                        format!("oauth_issuer[{i}]"),
                        "set exactly one of jwks_file and jwks_url",
                    ))
                }
            }
        }
        let a = &self.auth;
        if a.block_ip_after_failures == 0 || a.block_network_after_failures == 0 {
            return Err(invalid(
                "auth.block_ip_after_failures",
                "must be at least 1",
            ));
        }
        for (i, n) in a.deny_networks.iter().enumerate() {
            if crate::network::parse_network(n).is_none() {
                return Err(invalid(
                    format!("auth.deny_networks[{i}]"),
                    "must be an IP address or CIDR",
                ));
            }
        }
        for (i, n) in self.webhooks.allowed_internal_networks.iter().enumerate() {
            if crate::network::parse_network(n).is_none() {
                return Err(invalid(
                    format!("webhooks.allowed_internal_networks[{i}]"),
                    "must be an IP address or CIDR",
                ));
            }
        }
        if a.password_hash_parallelism == 0 {
            return Err(invalid(
                "auth.password_hash_parallelism",
                "must be at least 1",
            ));
        }
        if self.queue.concurrency == 0 {
            return Err(invalid("queue.concurrency", "must be at least 1"));
        }
        if self.queue.retry_initial.is_zero() || self.queue.retry_max < self.queue.retry_initial {
            return Err(invalid(
                "queue.retry_max",
                "must be at least queue.retry_initial, which must be above zero",
            ));
        }
        Ok(())
    }

    fn validate_screen(&self) -> Result<(), ConfigError> {
        let s = &self.screen;
        // RFC 5321 §4.5.3.2.1: a client waits 5 minutes for the greeting;
        // a delay near that would lose legitimate mail.
        if s.greet_delay > Duration::from_secs(60) {
            return Err(invalid("screen.greet_delay", "must be at most 1m"));
        }
        if s.lookup_timeout.is_zero() || s.lookup_timeout > Duration::from_secs(60) {
            return Err(invalid(
                "screen.lookup_timeout",
                "must be above zero and at most 1m",
            ));
        }
        if s.cache_entries == 0 {
            return Err(invalid("screen.cache_entries", "must be at least 1"));
        }
        if s.threshold < 1 || s.allowlist_threshold >= s.threshold {
            return Err(invalid(
                "screen.threshold",
                "must be at least 1, and above screen.allowlist_threshold",
            ));
        }
        for (i, n) in s.exempt_networks.iter().enumerate() {
            if crate::network::parse_network(n).is_none() {
                return Err(invalid(
                    format!("screen.exempt_networks[{i}]"),
                    "must be an IP address or CIDR",
                ));
            }
        }
        let mut zones = HashSet::new();
        for (i, z) in s.dnsbl.iter().enumerate() {
            if normalize_domain(&z.zone).is_err() || !zones.insert(z.zone.to_lowercase()) {
                return Err(invalid(
                    format!("screen.dnsbl[{i}].zone"),
                    "must be a domain name, once",
                ));
            }
            if z.weight == 0 {
                return Err(invalid(
                    format!("screen.dnsbl[{i}].weight"),
                    "must not be 0 (positive: a block list, negative: an allow list)",
                ));
            }
            // RFC 5782 §2.1: listings are answered in 127.0.0.0/8.
            if let Some(c) = z.codes.iter().find(|c| c.octets()[0] != 127) {
                return Err(invalid(
                    format!("screen.dnsbl[{i}].codes"),
                    format!("{c} is not in 127.0.0.0/8"),
                ));
            }
        }
        Ok(())
    }

    /// Relay domains, lower-cased.
    pub fn relay_domains(&self) -> Vec<String> {
        self.relay
            .domains
            .iter()
            .map(|d| d.to_lowercase())
            .collect()
    }
}

/// Splits `host:port` or `[v6]:port`.
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:")?;
        (h, p)
    } else {
        s.rsplit_once(':')?
    };
    if host.is_empty() || host.contains(':') && !s.starts_with('[') {
        return None;
    }
    Some((host.to_owned(), port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_embedded_default() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.listener.len(), 3);
        assert_eq!(c.limits.max_command_line, 512);
        assert_eq!(c.store.kind, StoreKind::Embedded);
        assert_eq!(c.store.synchronous, StoreSynchronous::Full);
    }

    /// README, first start: submission with STARTTLS on 2587, implicit TLS
    /// on 2465, inbound MX on 2025 and HTTP on 8025, all on loopback; and
    /// a file that names no `[[listener]]` keeps those listeners.
    #[test]
    fn default_listeners_are_loopback_on_the_documented_ports() {
        let documented = [
            (ListenerRole::Submission, "127.0.0.1:2587"),
            (ListenerRole::Submissions, "127.0.0.1:2465"),
            (ListenerRole::Mx, "127.0.0.1:2025"),
        ];
        let routed = "[[route]]\ndomain = \"*\"\nnext_hop = \"127.0.0.1:2626\"\ntls = \"none\"\n";
        for text in ["", routed] {
            let c = Config::parse(text).unwrap();
            let listeners: Vec<(ListenerRole, String)> = c
                .listener
                .iter()
                .map(|l| (l.role, l.address.to_string()))
                .collect();
            let expected: Vec<(ListenerRole, String)> = documented
                .iter()
                .map(|(role, address)| (*role, address.to_string()))
                .collect();
            assert_eq!(listeners, expected, "{text:?}");
            assert_eq!(
                c.http.address.map(|a| a.to_string()).as_deref(),
                Some("127.0.0.1:8025"),
                "{text:?}"
            );
        }
    }

    /// The defaults the README states as fact ("Security defaults" and
    /// the status paragraph), value by value: a change here must change
    /// the README too.
    #[test]
    fn the_readme_defaults_are_the_defaults() {
        const MIB: usize = 1024 * 1024;
        let c = Config::default();
        // The HTTP listener: 10 s for a head, 5 min for a request, 1024
        // connections, 64 from one address.
        assert_eq!(c.http.header_timeout, Duration::from_secs(10));
        assert_eq!(c.http.request_timeout, Duration::from_secs(300));
        assert_eq!(c.http.max_connections, 1024);
        assert_eq!(c.http.max_connections_per_ip, 64);
        // Relay domains: a call-ahead by default, at most 5 DSNs an hour to
        // one address and 200 in all.
        assert_eq!(c.relay.recipient_check, RecipientCheck::Callahead);
        assert_eq!(c.relay.dsn_per_address_per_hour, 5);
        assert_eq!(c.relay.dsn_per_hour, 200);
        // Bare CR/LF refused; senders verified.
        assert_eq!(c.smtp.bare_line_endings, BareLineEndings::Reject);
        assert!(c.smtp.require_verified_senders);
        // 256 MiB for bodies in flight, a quarter of it (at least
        // max_message_size) per holder.
        assert_eq!(c.limits.body_memory_budget, 256 * MIB);
        assert_eq!(c.limits.body_memory_share(), 64 * MIB);
        assert!(c.limits.body_memory_share() >= c.limits.max_message_size);
        // Brute force: slower after 3 failures, an IP blocked after 20, a
        // network after 100; hashing on half the cores.
        assert_eq!(c.auth.delay_after_failures, 3);
        assert_eq!(c.auth.block_ip_after_failures, 20);
        assert_eq!(c.auth.block_network_after_failures, 100);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(c.auth.password_hash_parallelism, (cores / 2).max(1));
        // DKIM rotation overlap 7 days; DANE on, not required.
        assert_eq!(
            c.senders.dkim_rotation_overlap,
            Duration::from_secs(7 * 86_400)
        );
        assert!(c.dns.dane && !c.dns.dane_required);
        // Webhooks: https to public addresses only unless relaxed.
        assert!(!c.webhooks.allow_plain_http && !c.webhooks.allow_private_destinations);
        // Durable: every commit synced.
        assert_eq!(c.store.synchronous, StoreSynchronous::Full);
        // Screening: a 1 s greeting delay, thresholds 1 and -1, lookups of
        // at most 2 s cached 10 min (empty ones 1 min), reverse DNS and
        // HELO logged only, loopback exempt.
        let s = &c.screen;
        assert_eq!(s.greet_delay, Duration::from_secs(1));
        assert_eq!((s.threshold, s.allowlist_threshold), (1, -1));
        assert_eq!(s.lookup_timeout, Duration::from_secs(2));
        assert_eq!(s.cache_ttl, Duration::from_secs(600));
        assert_eq!(s.pregreet_pass_ttl, Duration::from_secs(86_400));
        assert_eq!(s.negative_cache_ttl, Duration::from_secs(60));
        assert_eq!((s.fcrdns, s.helo), (ScreenAction::Log, ScreenAction::Log));
        assert_eq!(s.exempt_networks, ["127.0.0.0/8", "::1"]);
        assert!(s.dnsbl.is_empty());
        // Content checks: none on; checks that cannot answer defer; a
        // listed URL refused; URI lookups of at most 2 s, 20 domains a
        // message, cached 10 min (not listed 1 min); rspamd on its
        // default port within 15 s, tagging at 6, refusing at 15, no
        // quarantine score.
        let ct = &c.content;
        assert!(ct.uribl.is_empty() && ct.rspamd.is_none());
        assert_eq!(ct.on_error, CheckFailure::Defer);
        assert_eq!(ct.uri_listed, InboundAction::Reject);
        assert_eq!(ct.uribl_lookup_timeout, Duration::from_secs(2));
        assert_eq!(ct.uribl_max_domains, 20);
        assert_eq!(ct.uribl_cache_ttl, Duration::from_secs(600));
        assert_eq!(ct.uribl_negative_cache_ttl, Duration::from_secs(60));
        let r = RspamdConfig::default();
        assert_eq!(r.url, "http://127.0.0.1:11333");
        assert_eq!(r.timeout, Duration::from_secs(15));
        assert_eq!(
            (r.tag_score, r.quarantine_score, r.reject_score),
            (6.0, None, 15.0)
        );
        assert!(r.password.is_none());
    }

    /// `[screen]` values that cannot work are refused, naming the key.
    #[test]
    fn screen_settings_are_validated() {
        for (text, key) in [
            ("greet_delay = \"2m\"", "screen.greet_delay"),
            ("lookup_timeout = \"0s\"", "screen.lookup_timeout"),
            ("cache_entries = 0", "screen.cache_entries"),
            ("threshold = 0", "screen.threshold"),
            ("allowlist_threshold = 1", "screen.threshold"),
            (
                "exempt_networks = [\"10.0.0.0/33\"]",
                "screen.exempt_networks[0]",
            ),
            (
                "[[screen.dnsbl]]\nzone = \"bad zone\"",
                "screen.dnsbl[0].zone",
            ),
            (
                "[[screen.dnsbl]]\nzone = \"a.test\"\n[[screen.dnsbl]]\nzone = \"A.test\"",
                "screen.dnsbl[1].zone",
            ),
            (
                "[[screen.dnsbl]]\nzone = \"a.test\"\nweight = 0",
                "screen.dnsbl[0].weight",
            ),
            (
                "[[screen.dnsbl]]\nzone = \"a.test\"\ncodes = [\"10.0.0.2\"]",
                "screen.dnsbl[0].codes",
            ),
        ] {
            let e = Config::parse(&format!("[screen]\n{text}\n")).unwrap_err();
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
        let c = Config::parse(
            "[screen]\ngreet_delay = \"0s\"\nfcrdns = \"reject\"\nhelo = \"off\"\n[[screen.dnsbl]]\nzone = \"bl.test\"\nweight = 2\ncodes = [\"127.0.0.2\"]\n[[screen.dnsbl]]\nzone = \"wl.test\"\nweight = -5\n",
        )
        .unwrap();
        assert!(c.screen.greet_delay.is_zero());
        assert_eq!(c.screen.fcrdns, ScreenAction::Reject);
        assert_eq!(c.screen.helo, ScreenAction::Off);
        assert_eq!(c.screen.dnsbl.len(), 2);
        assert_eq!(
            c.screen.dnsbl[0].codes,
            [std::net::Ipv4Addr::new(127, 0, 0, 2)]
        );
        assert_eq!(c.screen.dnsbl[1].weight, -5);
        // Inbound mail authenticated; the sender's DMARC policy honoured,
        // SPF failures tagged; 5 s per lookup, 20 s per check.
        let i = &c.inbound_auth;
        assert!(i.enabled && i.honor_dmarc_policy);
        assert_eq!(i.dmarc_fail, InboundAction::Accept);
        assert_eq!(i.spf_fail, InboundAction::Tag);
        assert_eq!(i.dns_timeout, Duration::from_secs(5));
        assert_eq!(i.check_timeout, Duration::from_secs(20));
    }

    #[test]
    fn store_synchronous_takes_the_three_sqlite_levels_only() {
        for (text, want) in [
            ("full", StoreSynchronous::Full),
            ("normal", StoreSynchronous::Normal),
            ("off", StoreSynchronous::Off),
        ] {
            let c = Config::parse(&format!("[store]\nsynchronous = \"{text}\"\n")).unwrap();
            assert_eq!(c.store.synchronous, want);
        }
        let e = Config::parse("[store]\nsynchronous = \"extra\"\n").unwrap_err();
        assert!(e.to_string().contains("synchronous"), "{e}");
    }

    #[test]
    fn dane_required_needs_dane() {
        let e = Config::parse("[dns]\ndane = false\ndane_required = true\n").unwrap_err();
        assert!(e.to_string().contains("dns.dane_required"), "{e}");
        let c = Config::parse("[dns]\ndane_required = true\n").unwrap();
        assert!(c.dns.dane && c.dns.dane_required);
    }

    /// Every key path in a TOML tree (array elements by index).
    fn key_paths(v: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    out.push(path.clone());
                    key_paths(v, &path, out);
                }
            }
            toml::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    key_paths(v, &format!("{prefix}[{i}]"), out);
                }
            }
            _ => {}
        }
    }

    /// The example file is the defaults written out, key by key: parsed, it
    /// is exactly `Config::default()` (every value, compared as the whole
    /// serialized tree), and it spells out every key the defaults have, so
    /// no default is documented only by its absence. Keys without a default
    /// value (optional paths, URLs) are absent from both and shown
    /// commented out.
    #[test]
    fn the_example_file_is_every_default_key_by_key() {
        let text = include_str!("../../../postern.example.toml");
        let parsed = Config::parse(text).expect("postern.example.toml must be valid");
        let from_example = toml::Value::try_from(&parsed).unwrap();
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let (mut want, mut have) = (Vec::new(), Vec::new());
        key_paths(&defaults, "", &mut want);
        key_paths(&from_example, "", &mut have);
        assert!(want.len() > 80, "the walk sees every key: {}", want.len());
        for path in &want {
            // Leaves only, so a difference is reported by its key.
            if matches!(path_value(&defaults, path), Some(toml::Value::Table(_)))
                || matches!(path_value(&defaults, path), Some(toml::Value::Array(a)) if a.iter().any(toml::Value::is_table))
            {
                continue;
            }
            let a = path_value(&defaults, path);
            let b = path_value(&from_example, path);
            assert_eq!(a, b, "{path}: the example's value is not the default");
        }
        assert_eq!(want, have, "the example has keys the defaults lack");
        // Written out, not left to the default: each key at least once (a
        // listener key on one listener shows it for all). Exempt: tables
        // and lists that are empty by default (shown commented out), and
        // the one default that depends on the machine.
        let any_index = |p: &str| {
            let mut out = String::new();
            let mut skipping = false;
            for c in p.chars() {
                match c {
                    '[' => skipping = true,
                    ']' => skipping = false,
                    _ if !skipping => out.push(c),
                    _ => {}
                }
            }
            out
        };
        let raw: toml::Value = toml::from_str(text).unwrap();
        let mut written = Vec::new();
        key_paths(&raw, "", &mut written);
        let written: Vec<String> = written.iter().map(|p| any_index(p)).collect();
        let missing: Vec<_> = want
            .iter()
            .filter(|p| !written.contains(&any_index(p)))
            .filter(|p| match path_value(&defaults, p) {
                Some(toml::Value::Table(t)) => !t.is_empty(),
                Some(toml::Value::Array(a)) => !a.is_empty(),
                _ => true,
            })
            .filter(|p| *p != "auth.password_hash_parallelism")
            .collect();
        assert!(
            missing.is_empty(),
            "keys not written in the example: {missing:?}"
        );
    }

    #[test]
    fn webhook_internal_networks_must_parse() {
        let e = Config::parse("[webhooks]\nallowed_internal_networks = [\"10.0.0.0/33\"]\n")
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("webhooks.allowed_internal_networks[0]"),
            "{e}"
        );
        let c = Config::parse(
            "[webhooks]\nallowed_internal_networks = [\"10.1.0.0/16\", \"127.0.0.2\"]\n",
        )
        .unwrap();
        assert_eq!(c.webhooks.allowed_internal_networks.len(), 2);
    }

    fn path_value<'a>(root: &'a toml::Value, path: &str) -> Option<&'a toml::Value> {
        let mut v = root;
        for part in path.split('.') {
            let (key, index) = match part.split_once('[') {
                Some((k, i)) => (k, i.trim_end_matches(']').parse::<usize>().ok()),
                None => (part, None),
            };
            v = v.get(key)?;
            if let Some(i) = index {
                v = v.get(i)?;
            }
        }
        Some(v)
    }

    #[test]
    fn pools_and_destinations() {
        let ok = Config::parse(
            "[queue]\ndefault_ip_pool = \"a\"\n[[ip_pool]]\nname = \"a\"\n[[ip_pool.address]]\nip = \"127.0.0.2\"\nehlo_name = \"mta2.example\"\n[[destination]]\nmatch = \"*.google.com\"\nmax_messages_per_hour = 10\n",
        )
        .unwrap();
        assert_eq!(ok.ip_pool[0].address[0].ip.to_string(), "127.0.0.2");
        assert_eq!(ok.destination[0].max_messages_per_hour, Some(10));
        let err = Config::parse("[queue]\ndefault_ip_pool = \"nope\"\n").unwrap_err();
        assert!(
            err.to_string().starts_with("queue.default_ip_pool"),
            "{err}"
        );
        let err = Config::parse("[[ip_pool]]\nname = \"a\"\naddress = []\n").unwrap_err();
        assert!(err.to_string().starts_with("ip_pool[0].address"), "{err}");
        let err = Config::parse("[[destination]]\nmatch = \"bad host\"\n").unwrap_err();
        assert!(err.to_string().starts_with("destination[0].match"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[limits]\nmax_recipientz = 5\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("max_recipientz"), "{msg}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = Config::parse("[limits]\ncommand_timeout = \"5 minutes\"\n").unwrap_err();
        assert!(err.to_string().contains("command_timeout"), "{err}");
        let err = Config::parse("[[route]]\ndomain = \"example.net\"\nnext_hop = \"nohost\"\n")
            .unwrap_err();
        assert!(err.to_string().starts_with("route[0].next_hop"), "{err}");
        let err = Config::parse("[limits]\nmax_command_line = 100\n").unwrap_err();
        assert!(
            err.to_string().starts_with("limits.max_command_line"),
            "{err}"
        );
        let err = Config::parse("[relay]\ndomains = [\"bad domain\"]\n").unwrap_err();
        assert!(err.to_string().starts_with("relay.domains[0]"), "{err}");
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("127.0.0.1:25"),
            Some(("127.0.0.1".into(), 25))
        );
        assert_eq!(split_host_port("[::1]:2526"), Some(("::1".into(), 2526)));
        assert_eq!(
            split_host_port("mx.example.net:587"),
            Some(("mx.example.net".into(), 587))
        );
        assert_eq!(split_host_port("::1:25"), None);
        assert_eq!(split_host_port("host"), None);
    }
}
