//! `[content]`: what `mx` listeners check in the content of mail that
//! arrives without AUTH, once it is authenticated (viruses, spam, listed
//! URLs, attachments), and what is done with what a check finds. Each
//! check has its own table; a check without one is off.

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
}

impl Default for ContentConfig {
    fn default() -> Self {
        ContentConfig {
            on_error: CheckFailure::Defer,
            virus: InboundAction::Reject,
            attachment: InboundAction::Reject,
            clamd: None,
            attachments: None,
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
        }
        Ok(())
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
}
