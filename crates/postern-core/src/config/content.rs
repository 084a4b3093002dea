//! `[content]`: what `mx` listeners check in the content of mail that
//! arrives without AUTH, once it is authenticated (viruses, spam, listed
//! URLs, attachments), and what is done with what a check finds. Each
//! check has its own table; a check without one is off.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError, InboundAction};

/// What is done with a message a content check could not finish (a
/// scanner down or past its time limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckFailure {
    /// `451 4.3.0`: the client keeps the message and tries again later.
    Defer,
    /// Accepted unchecked, with the failure in the summary and the log
    /// (for operators who would rather take the risk than delay mail).
    Accept,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContentConfig {
    /// What is done when a check cannot give an answer.
    pub on_error: CheckFailure,
    /// What is done with a message clamd finds a virus in.
    pub virus: InboundAction,
    /// What is done with a message carrying a refused attachment (by its
    /// sniffed type, its file name or its size).
    pub attachment: InboundAction,
    /// `[content.clamd]`: virus scanning; off without the table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clamd: Option<ClamdConfig>,
    /// `[content.attachments]`: attachment types and sizes; off without
    /// the table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachments: Option<AttachmentsConfig>,
    /// What is done with a message that has a URL whose domain a
    /// `[[content.uribl]]` zone lists.
    pub uri_listed: InboundAction,
    /// Time limit of one URI list lookup; the lookups of a message run
    /// side by side, so this is also about the most the check adds.
    #[serde(with = "crate::duration")]
    pub uribl_lookup_timeout: Duration,
    /// Distinct URL domains looked up per message, the first found.
    pub uribl_max_domains: usize,
    /// How long a listing is kept (answers are cached across messages).
    #[serde(with = "crate::duration")]
    pub uribl_cache_ttl: Duration,
    /// How long "not listed" is kept.
    #[serde(with = "crate::duration")]
    pub uribl_negative_cache_ttl: Duration,
    /// URI block lists (SURBL/URIBL style): the URL domains of text and
    /// HTML parts are looked up in each; none: the check is off.
    pub uribl: Vec<UriblZone>,
    /// Spam scoring through rspamd; absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rspamd: Option<RspamdConfig>,
    /// Per relay domain: stricter or looser actions than the defaults.
    pub domain: Vec<ContentDomainPolicy>,
}

/// `[content.clamd]`: ClamAV's daemon, asked over its INSTREAM command.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClamdConfig {
    /// `host:port` (TCP) or the absolute path of clamd's unix socket.
    pub address: String,
    /// Time limit of one scan, connecting included; past it the check
    /// has no answer (`on_error`).
    #[serde(with = "crate::duration")]
    pub timeout: Duration,
    /// The largest message (octets) sent to clamd. clamd refuses a stream
    /// longer than its `StreamMaxLength` (25M by default) with an error, so
    /// this should not be above it; a bigger message is not sent at all
    /// and counts as a check without an answer (`on_error`), never as
    /// clean.
    pub max_size: usize,
}

impl Default for ClamdConfig {
    fn default() -> Self {
        ClamdConfig {
            address: "127.0.0.1:3310".into(),
            timeout: Duration::from_secs(30),
            // clamd's own default StreamMaxLength, and Postern's default
            // limits.max_message_size: nothing Postern takes is too big.
            max_size: 25 * 1024 * 1024,
        }
    }
}

/// One `[[content.uribl]]` zone. A URL's registrable domain is looked up
/// as `<domain>.<zone>` (an IP address host as its reversed octets, as
/// DNSBLs are asked, RFC 5782 §2.1); an A record in 127.0.0.0/8 is a
/// listing, filtered by `codes` or `mask` when given.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UriblZone {
    pub zone: String,
    /// Only these answers count as a listing (URIBL: 127.0.0.2 black).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<Ipv4Addr>,
    /// SURBL's multi lists: the answer's last octet is a set of bits, one
    /// per list; a listing is an answer sharing a bit with `mask`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<u8>,
}

/// `[content.rspamd]`: spam scoring by rspamd over its HTTP protocol
/// (`POST /checkv2`). Postern's thresholds decide the action, not the
/// action rspamd suggests: each relay domain may set its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RspamdConfig {
    /// The normal worker (or the proxy, or the controller with
    /// `password`): `http://host:port`.
    pub url: String,
    /// The whole scan, connecting included; past it the check failed
    /// (`on_error`).
    #[serde(with = "crate::duration")]
    pub timeout: Duration,
    /// Sent as the `Password` header (a controller or proxy that asks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// At or above: tagged (`X-Postern-Content: tag`, `X-Spam-Status: Yes`).
    pub tag_score: f64,
    /// At or above: held in the quarantine; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine_score: Option<f64>,
    /// At or above: refused with `550 5.7.1`.
    pub reject_score: f64,
}

impl Default for RspamdConfig {
    fn default() -> Self {
        // rspamd's own defaults for "add header" and "reject".
        RspamdConfig {
            url: "http://127.0.0.1:11333".into(),
            timeout: Duration::from_secs(15),
            password: None,
            tag_score: 6.0,
            quarantine_score: None,
            reject_score: 15.0,
        }
    }
}

/// Every type name the attachment sniffer gives (postern-content's
/// `sniff`, whose tests hold the two lists equal): `refused_types` may name
/// only these, so a misspelt name is an error rather than a type that
/// silently never matches.
pub const SNIFFED_TYPES: &[&str] = &[
    // infer's names ("exe" covers DLLs: one header; infer's "dll" is
    // never given, so it is not accepted either)
    "wasm", "elf", "exe", "class", "bc", "mach", "dex", "dey", "der", "obj", "pem", "qcow2", "epub",
    "mobi", "jpg", "jp2", "png", "gif", "webp", "cr2", "tif", "bmp", "jxr", "psd", "ico", "heif",
    "avif", "jxl", "ora", "djvu", "dwg", "mp4", "m4v", "mkv", "webm", "mov", "avi", "wmv", "mpg",
    "flv", "midi", "mp3", "m4a", "opus", "ogg", "flac", "wav", "amr", "aac", "aiff", "dsf", "ape",
    "woff", "woff2", "ttf", "otf", "doc", "docx", "xls", "xlsx", "ppt", "pptx", "odt", "ods",
    "odp", "zip", "tar", "par2", "rar", "gz", "bz2", "bz3", "7z", "xz", "pdf", "swf", "rtf", "eot",
    "ps", "sqlite", "nes", "crx", "cab", "deb", "ar", "Z", "lz", "rpm", "dcm", "zst", "lz4", "msi",
    "cpio", "html", "xml", "sh",
    // Postern's own (disk images and shortcuts infer does not know)
    "iso", "vhd", "vhdx", "lnk",
];

/// `[content.attachments]`: which attachments are refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttachmentsConfig {
    /// Types sniffed from the content (magic bytes), named by their usual
    /// extension (`exe`, `elf`, `mach`, …): refused whatever the part's
    /// Content-Type or file name claims.
    pub refused_types: Vec<String>,
    /// File name extensions refused whatever the content: scripts and
    /// shortcuts have no magic bytes to sniff. Also applied to the names
    /// inside zip archives.
    pub refused_names: Vec<String>,
    /// The largest attachment (octets, decoded); 0: no limit.
    pub max_size: usize,
}

impl Default for AttachmentsConfig {
    fn default() -> Self {
        let list = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect();
        AttachmentsConfig {
            refused_types: list(&[
                "exe", "elf", "mach", "class", "dex", "wasm", "deb", "rpm", "cab", "crx", "iso",
                "vhd", "vhdx", "qcow2", "lnk",
            ]),
            refused_names: list(&[
                "exe", "dll", "scr", "com", "pif", "cpl", "msi", "msp", "msc", "jar", "js", "jse",
                "vbs", "vbe", "wsf", "wsh", "hta", "ps1", "psm1", "bat", "cmd", "lnk", "reg",
                "iso", "img", "vhd", "vhdx", "apk", "app", "dmg",
            ]),
            max_size: 10 * 1024 * 1024,
        }
    }
}

/// The spam thresholds in force for one message's domain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpamThresholds {
    pub tag: f64,
    pub quarantine: Option<f64>,
    pub reject: f64,
}

impl SpamThresholds {
    /// The action for `score`: the highest threshold it reaches.
    pub fn action(&self, score: f64) -> InboundAction {
        if score >= self.reject {
            InboundAction::Reject
        } else if self.quarantine.is_some_and(|q| score >= q) {
            InboundAction::Quarantine
        } else if score >= self.tag {
            InboundAction::Tag
        } else {
            InboundAction::Accept
        }
    }
}

/// `[[content.domain]]`: a relay domain's own actions for what the
/// content checks find. A message for several relay domains gets the
/// strictest action among its recipients' domains.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentDomainPolicy {
    pub domain: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<CheckFailure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virus: Option<InboundAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<InboundAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_listed: Option<InboundAction>,
    /// This domain's spam thresholds (each in place of
    /// `[content.rspamd]`'s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spam_tag_score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spam_quarantine_score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spam_reject_score: Option<f64>,
}

impl ContentDomainPolicy {
    /// A policy for `domain` that overrides nothing.
    pub fn new(domain: &str) -> Self {
        ContentDomainPolicy {
            domain: domain.to_owned(),
            on_error: None,
            virus: None,
            attachment: None,
            uri_listed: None,
            spam_tag_score: None,
            spam_quarantine_score: None,
            spam_reject_score: None,
        }
    }

    fn overrides_spam(&self) -> bool {
        self.spam_tag_score.is_some()
            || self.spam_quarantine_score.is_some()
            || self.spam_reject_score.is_some()
    }
}

impl Default for ContentConfig {
    fn default() -> Self {
        ContentConfig {
            on_error: CheckFailure::Defer,
            virus: InboundAction::Reject,
            attachment: InboundAction::Reject,
            clamd: None,
            attachments: None,
            uri_listed: InboundAction::Reject,
            uribl_lookup_timeout: Duration::from_secs(2),
            // SpamAssassin's uridnsbl_max_domains.
            uribl_max_domains: 20,
            uribl_cache_ttl: Duration::from_secs(600),
            uribl_negative_cache_ttl: Duration::from_secs(60),
            uribl: Vec::new(),
            rspamd: None,
            domain: Vec::new(),
        }
    }
}

impl ContentConfig {
    pub(super) fn validate(&self, relay_domains: &[String]) -> Result<(), ConfigError> {
        if let Some(c) = &self.clamd {
            let is_path = c.address.starts_with('/');
            let is_host_port = c
                .address
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !is_path && !is_host_port {
                return Err(invalid(
                    "content.clamd.address",
                    "must be host:port or the absolute path of a unix socket",
                ));
            }
            if c.timeout.is_zero() {
                return Err(invalid("content.clamd.timeout", "must be above zero"));
            }
            if c.max_size == 0 {
                return Err(invalid("content.clamd.max_size", "must be above zero"));
            }
        }
        if let Some(a) = &self.attachments {
            for (key, list) in [
                ("refused_types", &a.refused_types),
                ("refused_names", &a.refused_names),
            ] {
                for (i, e) in list.iter().enumerate() {
                    if key == "refused_types" && !SNIFFED_TYPES.contains(&e.as_str()) {
                        return Err(invalid(
                            format!("content.attachments.{key}[{i}]"),
                            format!("{e} is not a type the sniffer recognises"),
                        ));
                    }
                    if e.is_empty()
                        || e.starts_with('.')
                        || !e.chars().all(|c| c.is_ascii_alphanumeric())
                    {
                        return Err(invalid(
                            format!("content.attachments.{key}[{i}]"),
                            "must be an extension without its dot (letters and digits)",
                        ));
                    }
                }
            }
        }
        for (i, z) in self.uribl.iter().enumerate() {
            let zone = z.zone.trim_end_matches('.');
            if zone.is_empty() || zone.split('.').any(|l| l.is_empty() || l.len() > 63) {
                return Err(invalid(
                    format!("content.uribl[{i}].zone"),
                    format!("{:?} is not a DNS zone name", z.zone),
                ));
            }
            if !z.codes.is_empty() && z.mask.is_some() {
                return Err(invalid(
                    format!("content.uribl[{i}].mask"),
                    "give codes or mask, not both",
                ));
            }
            if z.mask == Some(0) {
                return Err(invalid(
                    format!("content.uribl[{i}].mask"),
                    "0 would match no answer",
                ));
            }
        }
        if self.uribl_lookup_timeout.is_zero() {
            return Err(invalid(
                "content.uribl_lookup_timeout",
                "0 would fail every lookup",
            ));
        }
        if !self.uribl.is_empty() && self.uribl_max_domains == 0 {
            return Err(invalid(
                "content.uribl_max_domains",
                "0 would look nothing up",
            ));
        }
        if let Some(r) = &self.rspamd {
            if !r.url.starts_with("http://") {
                return Err(invalid(
                    "content.rspamd.url",
                    format!("{:?}: rspamd speaks plain HTTP (http://host:port)", r.url),
                ));
            }
            if r.timeout.is_zero() {
                return Err(invalid("content.rspamd.timeout", "0 would fail every scan"));
            }
            check_thresholds(
                "content.rspamd",
                "",
                r.tag_score,
                r.quarantine_score,
                r.reject_score,
            )?;
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.domain.iter().enumerate() {
            let d = p.domain.to_lowercase();
            if !relay_domains.iter().any(|r| r.eq_ignore_ascii_case(&d)) {
                return Err(invalid(
                    format!("content.domain[{i}].domain"),
                    format!("{} is not one of relay.domains", p.domain),
                ));
            }
            if !seen.insert(d) {
                return Err(invalid(
                    format!("content.domain[{i}].domain"),
                    format!("{} has more than one [[content.domain]]", p.domain),
                ));
            }
            if self.rspamd.is_some() {
                let t = self.spam_thresholds(p);
                check_thresholds(
                    &format!("content.domain[{i}]"),
                    "spam_",
                    t.tag,
                    t.quarantine,
                    t.reject,
                )?;
            } else if p.overrides_spam() {
                return Err(invalid(
                    format!("content.domain[{i}]"),
                    "spam thresholds without [content.rspamd]",
                ));
            }
        }
        Ok(())
    }

    /// The spam thresholds of a domain with `policy` (`[content.rspamd]`'s
    /// where it sets none).
    pub fn spam_thresholds(&self, policy: &ContentDomainPolicy) -> SpamThresholds {
        let mut t = self.default_spam_thresholds();
        if let Some(s) = policy.spam_tag_score {
            t.tag = s;
        }
        if let Some(s) = policy.spam_quarantine_score {
            t.quarantine = Some(s);
        }
        if let Some(s) = policy.spam_reject_score {
            t.reject = s;
        }
        t
    }

    /// `[content.rspamd]`'s thresholds (its defaults when the table is
    /// absent).
    pub fn default_spam_thresholds(&self) -> SpamThresholds {
        let r = self.rspamd.clone().unwrap_or_default();
        SpamThresholds {
            tag: r.tag_score,
            quarantine: r.quarantine_score,
            reject: r.reject_score,
        }
    }

    /// The action for a spam `score` of a message to `domains`: each
    /// domain's thresholds give one, the strictest wins.
    pub fn spam_action<'a>(
        &self,
        domains: impl IntoIterator<Item = &'a str>,
        score: f64,
    ) -> InboundAction {
        self.action(
            domains,
            |p| {
                p.overrides_spam()
                    .then(|| self.spam_thresholds(p).action(score))
            },
            self.default_spam_thresholds().action(score),
        )
    }

    /// The action for a message to `domains` (its recipients' domains):
    /// the strictest of each domain's own (`pick`) or, for a domain with
    /// none, `default`.
    pub fn action<'a>(
        &self,
        domains: impl IntoIterator<Item = &'a str>,
        pick: impl Fn(&ContentDomainPolicy) -> Option<InboundAction>,
        default: InboundAction,
    ) -> InboundAction {
        domains
            .into_iter()
            .map(|d| {
                self.domain
                    .iter()
                    .find(|p| p.domain.eq_ignore_ascii_case(d))
                    .and_then(&pick)
                    .unwrap_or(default)
            })
            .max()
            .unwrap_or(default)
    }

    /// What is done when a check fails, for a message to `domains`:
    /// deferred if any of its domains says so.
    pub fn on_error<'a>(&self, domains: impl IntoIterator<Item = &'a str>) -> CheckFailure {
        let defer = domains.into_iter().any(|d| {
            self.domain
                .iter()
                .find(|p| p.domain.eq_ignore_ascii_case(d))
                .and_then(|p| p.on_error)
                .unwrap_or(self.on_error)
                == CheckFailure::Defer
        });
        if defer {
            CheckFailure::Defer
        } else {
            CheckFailure::Accept
        }
    }
}

/// Thresholds must be finite and rise: tag <= quarantine <= reject.
fn check_thresholds(
    table: &str,
    prefix: &str,
    tag: f64,
    quarantine: Option<f64>,
    reject: f64,
) -> Result<(), ConfigError> {
    let key = |name: &str| format!("{table}.{prefix}{name}");
    for (name, v) in [
        ("tag_score", Some(tag)),
        ("quarantine_score", quarantine),
        ("reject_score", Some(reject)),
    ] {
        if v.is_some_and(|v| !v.is_finite()) {
            return Err(invalid(key(name), "must be a finite number"));
        }
    }
    if tag > reject {
        return Err(invalid(key("tag_score"), "is above the reject score"));
    }
    if let Some(q) = quarantine {
        if q < tag || q > reject {
            return Err(invalid(
                key("quarantine_score"),
                "must lie between the tag and the reject score",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    #[test]
    fn defaults_defer_on_error_and_name_no_domain() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.content.on_error, CheckFailure::Defer);
        assert!(c.content.domain.is_empty());
    }

    #[test]
    fn domain_overrides_name_relay_domains_once() {
        let e = Config::parse(
            "[relay]\ndomains = [\"a.test\"]\nrecipient_check = \"any\"\n[[content.domain]]\ndomain = \"b.test\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("content.domain[0].domain"), "{e}");
        let e = Config::parse(
            "[relay]\ndomains = [\"a.test\"]\nrecipient_check = \"any\"\n[[content.domain]]\ndomain = \"a.test\"\n[[content.domain]]\ndomain = \"A.test\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("more than one"), "{e}");
    }

    #[test]
    fn the_strictest_domain_decides() {
        let c = Config::parse(
            "[relay]\ndomains = [\"a.test\", \"b.test\", \"c.test\"]\nrecipient_check = \"any\"\n[content]\non_error = \"accept\"\n[[content.domain]]\ndomain = \"a.test\"\non_error = \"defer\"\n[[content.domain]]\ndomain = \"b.test\"\n",
        )
        .unwrap()
        .content;
        // `pick` stands in for a check's own per-domain key.
        let pick =
            |p: &ContentDomainPolicy| (p.domain == "a.test").then_some(InboundAction::Reject);
        assert_eq!(
            c.action(["b.test", "c.test"], pick, InboundAction::Tag),
            InboundAction::Tag
        );
        assert_eq!(
            c.action(["c.test", "A.TEST"], pick, InboundAction::Tag),
            InboundAction::Reject
        );
        assert_eq!(c.on_error(["b.test", "c.test"]), CheckFailure::Accept);
        assert_eq!(c.on_error(["b.test", "a.test"]), CheckFailure::Defer);
    }

    #[test]
    fn virus_and_attachment_tables_turn_their_checks_on_and_are_checked() {
        let c = Config::parse("").unwrap().content;
        assert!(
            c.clamd.is_none() && c.attachments.is_none(),
            "off by default"
        );
        assert_eq!(
            (c.virus, c.attachment),
            (InboundAction::Reject, InboundAction::Reject)
        );

        let c = Config::parse(
            "[relay]\ndomains = [\"a.test\"]\nrecipient_check = \"any\"\n[content]\nvirus = \"quarantine\"\n[content.clamd]\naddress = \"/run/clamav/clamd.ctl\"\n[content.attachments]\nmax_size = 0\n[[content.domain]]\ndomain = \"a.test\"\nvirus = \"tag\"\nattachment = \"accept\"\n",
        )
        .unwrap()
        .content;
        let clamd = c.clamd.as_ref().unwrap();
        assert_eq!(clamd.address, "/run/clamav/clamd.ctl");
        assert_eq!(clamd.timeout, Duration::from_secs(30));
        assert_eq!(clamd.max_size, 25 * 1024 * 1024);
        let att = c.attachments.as_ref().unwrap();
        assert!(att.refused_types.iter().any(|t| t == "exe"));
        assert!(att.refused_names.iter().any(|t| t == "js"));
        assert_eq!(att.max_size, 0);
        assert_eq!(c.virus, InboundAction::Quarantine);
        assert_eq!(
            c.action(["a.test"], |p| p.virus, c.virus),
            InboundAction::Tag
        );
        assert_eq!(
            c.action(["a.test"], |p| p.attachment, c.attachment),
            InboundAction::Accept
        );

        for (table, key) in [
            (
                "[content.clamd]\naddress = \"clamd\"",
                "content.clamd.address",
            ),
            (
                "[content.clamd]\naddress = \"host:0\"",
                "content.clamd.address",
            ),
            ("[content.clamd]\ntimeout = \"0s\"", "content.clamd.timeout"),
            ("[content.clamd]\nmax_size = 0", "content.clamd.max_size"),
            (
                "[content.attachments]\nrefused_types = [\"exe\", \"exx\"]",
                "content.attachments.refused_types[1]",
            ),
            (
                "[content.attachments]\nrefused_names = [\".js\"]",
                "content.attachments.refused_names[0]",
            ),
        ] {
            let e = Config::parse(table).unwrap_err();
            assert!(e.to_string().contains(key), "{table}: {e}");
        }
    }

    #[test]
    fn uri_lists_and_rspamd_parse_with_their_defaults() {
        let c = Config::parse("").unwrap().content;
        assert_eq!(c.uri_listed, InboundAction::Reject);
        assert!(c.uribl.is_empty() && c.rspamd.is_none());
        let c = Config::parse(
            "[content]\nuri_listed = \"quarantine\"\n[[content.uribl]]\nzone = \"multi.surbl.test\"\nmask = 72\n[[content.uribl]]\nzone = \"black.uribl.test\"\ncodes = [\"127.0.0.2\"]\n[content.rspamd]\nquarantine_score = 9.5\n",
        )
        .unwrap()
        .content;
        assert_eq!(c.uri_listed, InboundAction::Quarantine);
        assert_eq!(c.uribl[0].mask, Some(72));
        assert_eq!(c.uribl[1].codes, vec![Ipv4Addr::new(127, 0, 0, 2)]);
        let r = c.rspamd.unwrap();
        assert_eq!(r.url, "http://127.0.0.1:11333");
        assert_eq!(
            (r.tag_score, r.quarantine_score, r.reject_score),
            (6.0, Some(9.5), 15.0)
        );
    }

    #[test]
    fn bad_uri_lists_and_thresholds_are_refused_by_key() {
        let relay = "[relay]\ndomains = [\"a.test\"]\nrecipient_check = \"any\"\n";
        for (text, key) in [
            ("[[content.uribl]]\nzone = \"\"\n", "content.uribl[0].zone"),
            ("[[content.uribl]]\nzone = \"a..test\"\n", "content.uribl[0].zone"),
            ("[[content.uribl]]\nzone = \"z.test\"\nmask = 0\n", "content.uribl[0].mask"),
            ("[[content.uribl]]\nzone = \"z.test\"\nmask = 2\ncodes = [\"127.0.0.2\"]\n", "content.uribl[0].mask"),
            ("[content]\nuribl_max_domains = 0\n[[content.uribl]]\nzone = \"z.test\"\n", "content.uribl_max_domains"),
            ("[content]\nuribl_lookup_timeout = \"0s\"\n", "content.uribl_lookup_timeout"),
            ("[content.rspamd]\ntimeout = \"0s\"\n", "content.rspamd.timeout"),
            ("[content.rspamd]\nurl = \"https://127.0.0.1:11333\"\n", "content.rspamd.url"),
            ("[content.rspamd]\ntag_score = 20.0\n", "content.rspamd.tag_score"),
            ("[content.rspamd]\nquarantine_score = 2.0\n", "content.rspamd.quarantine_score"),
            ("[content.rspamd]\nreject_score = nan\n", "content.rspamd.reject_score"),
            ("[content.rspamd]\n[[content.domain]]\ndomain = \"a.test\"\nspam_reject_score = 1.0\n", "content.domain[0].spam_tag_score"),
            ("[[content.domain]]\ndomain = \"a.test\"\nspam_tag_score = 1.0\n", "content.domain[0]"),
        ] {
            let e = Config::parse(&format!("{relay}{text}")).unwrap_err();
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn spam_thresholds_per_domain_strictest_wins() {
        let c = Config::parse(
            "[relay]\ndomains = [\"a.test\", \"b.test\"]\nrecipient_check = \"any\"\n[content.rspamd]\n[[content.domain]]\ndomain = \"a.test\"\nspam_quarantine_score = 8.0\nspam_reject_score = 40.0\n",
        )
        .unwrap()
        .content;
        assert_eq!(c.spam_action(["c.test"], 5.9), InboundAction::Accept);
        assert_eq!(c.spam_action(["c.test"], 6.0), InboundAction::Tag);
        assert_eq!(c.spam_action(["c.test"], 15.0), InboundAction::Reject);
        assert_eq!(c.spam_action(["a.test"], 7.0), InboundAction::Tag);
        assert_eq!(c.spam_action(["a.test"], 20.0), InboundAction::Quarantine);
        assert_eq!(
            c.spam_action(["A.test", "b.test"], 20.0),
            InboundAction::Reject
        );
        assert_eq!(c.spam_action(["a.test"], 40.0), InboundAction::Reject);
    }
}
