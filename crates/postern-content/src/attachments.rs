//! Attachments refused by type and size. The type is sniffed from the
//! decoded content (magic bytes, the `infer` crate plus the disk images
//! and shortcuts it does not know), never taken from the part's
//! Content-Type or file name, which the sender writes: an executable
//! called `invoice.pdf` is an executable. File names are refused on their
//! own too, for what has no magic bytes (scripts: `.js`, `.vbs`, `.hta`,
//! `.ps1`, `.bat`, …).
//!
//! Every leaf part is looked at, in nested messages (`message/rfc822`,
//! which mail-parser parses as messages of their own) as well, down to
//! `MAX_DEPTH`. A zip archive's central directory is read (names only,
//! nothing decompressed) and its entries' names are held to
//! `refused_names`; archives inside archives, and other archive formats,
//! are not opened (their own type can be refused: `rar`, `7z`, …).

use std::collections::HashSet;
use std::future::Future;
use std::io::Cursor;
use std::pin::Pin;

use mail_parser::{Encoding, Message, MessagePart, MimeHeaders, PartType};
use postern_core::config::{AttachmentsConfig, ContentConfig};

use crate::{Check, Finding, Inspected};

/// Nested messages looked into, at most; a deeper one is refused (what it
/// holds was not looked at).
const MAX_DEPTH: usize = 8;
/// Zip entries whose names are read, at most, per archive.
const MAX_ZIP_ENTRIES: usize = 10_000;
/// The longest file name repeated in a reason (characters).
const MAX_NAME: usize = 80;
/// Problems named in one reason; the rest are counted.
const MAX_NAMED: usize = 3;

/// The type of `data` from its first octets (or, for ISO 9660 and VHD,
/// where the format puts its mark), by its usual extension; None when no
/// signature matches (plain text, unknown formats).
pub fn sniff(data: &[u8]) -> Option<&'static str> {
    own_types(data).or_else(|| infer::get(data).map(|t| t.extension()))
}

/// Formats `infer` does not know, each by its specification's mark.
fn own_types(data: &[u8]) -> Option<&'static str> {
    // ISO 9660 §8.1: volume descriptors from sector 16 (of 2048 octets),
    // "CD001" after the type octet; 0x8801 and 0x9001 when the first is
    // not the primary one.
    if [0x8001, 0x8801, 0x9001]
        .iter()
        .any(|&at| data.get(at..at + 5) == Some(b"CD001"))
    {
        return Some("iso");
    }
    // VHDX: the file type identifier "vhdxfile" at offset 0.
    if data.starts_with(b"vhdxfile") {
        return Some("vhdx");
    }
    // VHD: the footer's cookie "conectix", in the last 512 octets (fixed
    // disks) and copied at offset 0 (dynamic ones).
    if data.starts_with(b"conectix")
        || (data.len() >= 512 && data[data.len() - 512..].starts_with(b"conectix"))
    {
        return Some("vhd");
    }
    // MS-SHLLINK §2.1: HeaderSize 0x4C, then the ShellLink CLSID
    // 00021401-0000-0000-C000-000000000046.
    const LNK: [u8; 20] = [
        0x4C, 0, 0, 0, 0x01, 0x14, 0x02, 0, 0, 0, 0, 0, 0xC0, 0, 0, 0, 0, 0, 0, 0x46,
    ];
    if data.starts_with(&LNK) {
        return Some("lnk");
    }
    None
}

/// The names `own_types` gives.
#[cfg(test)]
const OWN_TYPES: [&str; 4] = ["iso", "vhdx", "vhd", "lnk"];

/// The extension of a file name, lower-cased (`Open-Me.JS` → `js`); a
/// trailing dot or blank, which Windows drops, is dropped first.
fn extension(name: &str) -> Option<String> {
    let name = name.trim_end_matches(['.', ' ']);
    let (_, ext) = name.rsplit_once('.')?;
    (!ext.is_empty() && !ext.contains(['/', '\\'])).then(|| ext.to_ascii_lowercase())
}

/// A name as it may be repeated to the client: no control characters, no
/// quotes, at most `MAX_NAME` characters.
fn printable(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_control() || c == '"' { '?' } else { c })
        .take(MAX_NAME)
        .collect();
    if name.chars().count() > MAX_NAME {
        out.push('…');
    }
    out
}

/// Whether a part is a message (`message/rfc822`, `message/global`).
fn is_message(part: &MessagePart<'_>) -> bool {
    part.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case("message")
            && ct.subtype().is_some_and(|s| {
                s.eq_ignore_ascii_case("rfc822") || s.eq_ignore_ascii_case("global")
            })
    })
}

/// A part's body with its Content-Transfer-Encoding undone and nothing
/// else: the bytes a recipient's mail program saves. None when the
/// offsets do not lie in `raw` or the encoding does not decode.
fn transfer_decoded(raw: &[u8], part: &MessagePart<'_>) -> Option<Vec<u8>> {
    let body = raw.get(part.offset_body as usize..part.offset_end as usize)?;
    match part.encoding {
        Encoding::Base64 => mail_parser::decoders::base64::base64_decode(body),
        Encoding::QuotedPrintable => {
            mail_parser::decoders::quoted_printable::quoted_printable_decode(body)
        }
        Encoding::None => Some(body.to_vec()),
    }
}

/// The attachment check.
pub struct AttachmentCheck {
    refused_types: HashSet<String>,
    refused_names: HashSet<String>,
    max_size: usize,
    config: ContentConfig,
}

impl AttachmentCheck {
    pub fn new(attachments: &AttachmentsConfig, config: &ContentConfig) -> AttachmentCheck {
        AttachmentCheck {
            refused_types: attachments.refused_types.iter().cloned().collect(),
            refused_names: attachments
                .refused_names
                .iter()
                .map(|n| n.to_ascii_lowercase())
                .collect(),
            max_size: attachments.max_size,
            config: config.clone(),
        }
    }

    /// Why each refused part of `message` is refused.
    pub fn problems(&self, message: &Message<'_>) -> Vec<String> {
        let mut out = Vec::new();
        self.walk(message, 0, &mut out);
        out
    }

    fn walk(&self, message: &Message<'_>, depth: usize, out: &mut Vec<String>) {
        for (i, part) in message.parts.iter().enumerate() {
            match &part.body {
                PartType::Multipart(_) => {}
                PartType::Message(nested) => {
                    if depth >= MAX_DEPTH {
                        out.push(format!(
                            "messages nested more than {MAX_DEPTH} deep, not looked into"
                        ));
                    } else {
                        self.walk(nested, depth + 1, out);
                    }
                }
                PartType::Binary(_) | PartType::InlineBinary(_) if is_message(part) => {
                    // mail-parser stops parsing messages nested in encoded
                    // parts a few levels down and hands them over as
                    // bytes: what they hold was not looked into.
                    out.push(format!(
                        "a message nested in encoded parts too deep to look into ({})",
                        part.attachment_name()
                            .map_or("no file name".to_owned(), printable)
                    ));
                }
                _ => {
                    // The message's own text and HTML bodies are held to
                    // the message size, not the attachment size.
                    let body = message.text_body.contains(&(i as u32))
                        || message.html_body.contains(&(i as u32));
                    self.leaf(message.raw_message(), part, body, out);
                }
            }
        }
    }

    fn leaf(&self, raw: &[u8], part: &MessagePart<'_>, body: bool, out: &mut Vec<String>) {
        // mail-parser decodes text/* parts through their charset: an
        // attachment labelled `text/plain; charset=utf-16le` would be
        // sniffed as re-encoded text, not as the bytes a mail program
        // saves under its file name. Those bytes are the part with only
        // its transfer encoding undone.
        let saved;
        let data = match &part.body {
            PartType::Text(_) | PartType::Html(_) if !body => {
                saved = transfer_decoded(raw, part);
                saved.as_deref().unwrap_or_else(|| part.contents())
            }
            _ => part.contents(),
        };
        let name = part.attachment_name();
        let shown = match name {
            Some(n) => format!("\"{}\"", printable(n)),
            None => "(no file name)".to_owned(),
        };
        let sniffed = sniff(data);
        let type_name = sniffed.unwrap_or("unknown");
        if let Some(t) = sniffed.filter(|t| self.refused_types.contains(*t)) {
            out.push(format!("attachment {shown} refused: its content is {t}"));
            return;
        }
        if let Some(ext) = name
            .and_then(extension)
            .filter(|e| self.refused_names.contains(e))
        {
            out.push(format!(
                "attachment {shown} refused: file name .{ext} (content {type_name})"
            ));
            return;
        }
        if !body && self.max_size > 0 && data.len() > self.max_size {
            out.push(format!(
                "attachment {shown} refused: {} octets, above {} (content {type_name})",
                data.len(),
                self.max_size
            ));
            return;
        }
        if sniffed == Some("zip") {
            self.zip(data, &shown, out);
        }
    }

    /// The names in a zip archive's central directory. One that does not
    /// open as a zip (a damaged or disguised one) is left to clamd: it
    /// cannot be unpacked by the recipient either.
    fn zip(&self, data: &[u8], shown: &str, out: &mut Vec<String>) {
        let Ok(archive) = zip::ZipArchive::new(Cursor::new(data)) else {
            return;
        };
        for raw in archive.file_names_raw().take(MAX_ZIP_ENTRIES) {
            let inner = String::from_utf8_lossy(raw);
            if let Some(ext) = extension(&inner).filter(|e| self.refused_names.contains(e)) {
                out.push(format!(
                    "attachment {shown} refused: it holds \"{}\" (.{ext})",
                    printable(&inner)
                ));
                return;
            }
        }
    }
}

impl Check for AttachmentCheck {
    fn name(&self) -> &'static str {
        "attachment"
    }

    fn run<'a>(
        &'a self,
        message: &'a Inspected<'a>,
    ) -> Pin<Box<dyn Future<Output = Finding> + Send + 'a>> {
        Box::pin(async move {
            // mail-parser takes nearly anything as a message; what it
            // cannot parse has no parts to look at.
            let Some(parsed) = message.parsed else {
                return Finding::clean();
            };
            let problems = self.problems(parsed);
            if problems.is_empty() {
                return Finding::clean();
            }
            let mut reason = problems[..problems.len().min(MAX_NAMED)].join("; ");
            if problems.len() > MAX_NAMED {
                reason.push_str(&format!(
                    "; and {} more refused",
                    problems.len() - MAX_NAMED
                ));
            }
            let action =
                self.config
                    .action(message.domains(), |p| p.attachment, self.config.attachment);
            Finding::Found {
                action,
                reason,
                headers: Vec::new(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use std::path::Path;

    fn vector(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn types_come_from_the_content() {
        for (file, want) in [
            ("pe.bin", Some("exe")),
            ("elf.bin", Some("elf")),
            ("macho.bin", Some("mach")),
            ("shortcut.bin", Some("lnk")),
            ("disk.iso.bin", Some("iso")),
            ("disk.vhdx.bin", Some("vhdx")),
            ("pixel.png.bin", Some("png")),
            ("empty.pdf.bin", Some("pdf")),
            ("script.zip.bin", Some("zip")),
            ("text.zip.bin", Some("zip")),
            ("script.js.bin", None),
        ] {
            assert_eq!(sniff(&vector(file)), want, "{file}");
        }
        // A fixed VHD: its only mark is the footer at the end.
        let mut vhd = vec![0u8; 4096];
        vhd[4096 - 512..4096 - 504].copy_from_slice(b"conectix");
        assert_eq!(sniff(&vhd), Some("vhd"));
        assert_eq!(sniff(&vhd[..4000]), None, "cut short, no footer");
    }

    #[test]
    fn every_type_the_config_accepts_is_one_the_sniffer_gives() {
        let config = postern_core::config::SNIFFED_TYPES;
        for t in config {
            assert!(
                OWN_TYPES.contains(t) || infer::is_supported(t),
                "{t} is accepted by the configuration but never sniffed"
            );
        }
        for t in OWN_TYPES {
            assert!(
                config.contains(&t),
                "{t} is sniffed but refused by the configuration"
            );
        }
        // MZ is the header of EXEs and DLLs alike: infer's "dll" is never
        // given, so a list naming it would refuse nothing.
        assert!(!config.contains(&"dll"));

        // Each type refused by default is what the sniffer says for a
        // file of that kind: the files above, and the other formats' own
        // headers (padded: some checks want a minimum length).
        let header = |h: &[u8]| {
            let mut v = h.to_vec();
            v.resize(256, 0);
            v
        };
        let mut dex = header(b"dex\n035\0");
        dex[36] = 0x70; // header_size, dex-format "header_item"
        let samples = [
            ("exe", vector("pe.bin")),
            ("elf", vector("elf.bin")),
            ("mach", vector("macho.bin")),
            ("lnk", vector("shortcut.bin")),
            ("iso", vector("disk.iso.bin")),
            ("vhdx", vector("disk.vhdx.bin")),
            ("vhd", header(b"conectix")),
            ("class", header(&[0xCA, 0xFE, 0xBA, 0xBE, 0, 0, 0, 52])),
            ("dex", dex),
            ("wasm", header(b"\0asm\x01\0\0\0")),
            ("deb", header(b"!<arch>\ndebian-binary   ")),
            ("rpm", header(&[0xED, 0xAB, 0xEE, 0xDB, 3, 0])),
            ("cab", header(b"MSCF\0\0\0\0")),
            ("crx", header(b"Cr24\x02\0\0\0")),
            ("qcow2", header(&[b'Q', b'F', b'I', 0xFB, 0, 0, 0, 3])),
        ];
        for t in &AttachmentsConfig::default().refused_types {
            assert!(config.contains(&t.as_str()), "default {t} is not sniffed");
            let (_, sample) = samples
                .iter()
                .find(|(name, _)| name == t)
                .unwrap_or_else(|| panic!("no sample of default {t}"));
            assert_eq!(sniff(sample), Some(t.as_str()), "{t}");
        }
    }

    #[test]
    fn extensions_are_compared_without_case_and_trailing_dots() {
        assert_eq!(extension("Open-Me.JS").as_deref(), Some("js"));
        assert_eq!(extension("run.vbs. . ").as_deref(), Some("vbs"));
        assert_eq!(extension("README"), None);
        assert_eq!(extension("dir.d/file"), None);
    }

    /// A multipart message with one base64 attachment per (name, content
    /// type, bytes); `inner`, when given, as a message/rfc822 part.
    fn message(parts: &[(&str, &str, &[u8])], inner: Option<&[u8]>) -> Vec<u8> {
        message_with("b", parts, inner)
    }

    fn message_with(b: &str, parts: &[(&str, &str, &[u8])], inner: Option<&[u8]>) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut m = format!(
            "From: a@sender.test\r\nTo: u@relay.test\r\nSubject: files\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary={b}\r\n\r\n--{b}\r\n\
             Content-Type: text/plain\r\n\r\nSee attached.\r\n",
        );
        for (name, ctype, data) in parts {
            m.push_str(&format!(
                "--{b}\r\nContent-Type: {ctype}\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n\
                 Content-Transfer-Encoding: base64\r\n\r\n{}\r\n",
                b64.encode(data)
            ));
        }
        let mut m = m.into_bytes();
        if let Some(inner) = inner {
            m.extend_from_slice(
                format!("--{b}\r\nContent-Type: message/rfc822\r\n\r\n").as_bytes(),
            );
            m.extend_from_slice(inner);
            m.extend_from_slice(b"\r\n");
        }
        m.extend_from_slice(format!("--{b}--\r\n").as_bytes());
        m
    }

    fn check() -> AttachmentCheck {
        AttachmentCheck::new(
            &AttachmentsConfig {
                max_size: 1000,
                ..AttachmentsConfig::default()
            },
            &ContentConfig::default(),
        )
    }

    fn problems(raw: &[u8]) -> Vec<String> {
        let parsed = mail_parser::MessageParser::default().parse(raw).unwrap();
        check().problems(&parsed)
    }

    #[test]
    fn a_claimed_type_and_name_do_not_hide_the_content() {
        let pe = vector("pe.bin");
        let got = problems(&message(&[("invoice.pdf", "application/pdf", &pe)], None));
        assert_eq!(
            got,
            ["attachment \"invoice.pdf\" refused: its content is exe"]
        );
        // The same bytes as an image, inline: still the content decides.
        let got = problems(&message(&[("logo.png", "image/png", &pe)], None));
        assert_eq!(got, ["attachment \"logo.png\" refused: its content is exe"]);
        // A real PDF and PNG pass.
        let got = problems(&message(
            &[
                ("invoice.pdf", "application/pdf", &vector("empty.pdf.bin")),
                ("pixel.png", "image/png", &vector("pixel.png.bin")),
                ("notes.zip", "application/zip", &vector("text.zip.bin")),
            ],
            None,
        ));
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn names_sizes_zips_and_nested_messages() {
        let js = vector("script.js.bin");
        let got = problems(&message(&[("Open-Me.JS", "text/plain", &js)], None));
        assert_eq!(
            got,
            ["attachment \"Open-Me.JS\" refused: file name .js (content unknown)"]
        );

        let big = vec![b'a'; 1001];
        let got = problems(&message(&[("big.txt", "text/plain", &big)], None));
        assert_eq!(
            got,
            ["attachment \"big.txt\" refused: 1001 octets, above 1000 (content unknown)"]
        );
        let fits = vec![b'a'; 1000];
        assert!(problems(&message(&[("fits.txt", "text/plain", &fits)], None)).is_empty());

        let got = problems(&message(
            &[("docs.zip", "application/zip", &vector("script.zip.bin"))],
            None,
        ));
        assert_eq!(
            got,
            ["attachment \"docs.zip\" refused: it holds \"invoice/open-me.JS\" (.js)"]
        );

        // An executable in a forwarded message.
        let inner = message_with(
            "inner",
            &[("setup.bin", "application/octet-stream", &vector("elf.bin"))],
            None,
        );
        let got = problems(&message(&[], Some(&inner)));
        assert_eq!(
            got,
            ["attachment \"setup.bin\" refused: its content is elf"]
        );
    }

    #[test]
    fn an_attachment_labelled_text_is_judged_by_its_saved_bytes() {
        // A Windows executable and a zip holding a script, each declared
        // text in a charset that would re-encode them: sniffed from the
        // bytes the recipient saves, not from mail-parser's text.
        for ctype in [
            "text/plain; charset=utf-16le",
            "text/x-log; charset=iso-8859-1",
        ] {
            let got = problems(&message(&[("notes.txt", ctype, &vector("pe.bin"))], None));
            assert_eq!(
                got,
                ["attachment \"notes.txt\" refused: its content is exe"],
                "{ctype}"
            );
            let got = problems(&message(
                &[("notes.dat", ctype, &vector("script.zip.bin"))],
                None,
            ));
            assert_eq!(
                got,
                ["attachment \"notes.dat\" refused: it holds \"invoice/open-me.JS\" (.js)"],
                "{ctype}"
            );
        }
        // Real text in a text part is still text.
        let got = problems(&message(
            &[("notes.txt", "text/plain; charset=utf-8", b"just words\r\n")],
            None,
        ));
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn messages_nested_in_encoded_parts_past_the_parser_are_refused() {
        // Each level base64-encoded: mail-parser stops parsing such nesting
        // after a few levels and hands the rest over as bytes.
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut m = message(
            &[("setup.bin", "application/octet-stream", &vector("elf.bin"))],
            None,
        );
        for level in 0..6 {
            m = format!(
                "From: a@sender.test\r\nSubject: fwd {level}\r\nMIME-Version: 1.0\r\n\
                 Content-Type: multipart/mixed; boundary=n{level}\r\n\r\n--n{level}\r\n\
                 Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--n{level}--\r\n",
                b64.encode(&m)
            )
            .into_bytes();
        }
        let got = problems(&m);
        assert!(
            !got.is_empty(),
            "the executable inside was neither found nor refused"
        );
        assert!(
            got.iter()
                .any(|p| p.contains("its content is elf") || p.contains("too deep to look into")),
            "{got:?}"
        );
    }

    #[test]
    fn bodies_are_not_attachments_and_deep_nesting_is_refused() {
        // The message's own text body, above the attachment limit of 1000.
        let long = format!(
            "From: a@sender.test\r\nSubject: long\r\nContent-Type: text/plain\r\n\r\n{}\r\n",
            "word ".repeat(400)
        );
        assert!(problems(long.as_bytes()).is_empty());

        // A message forwarded inside another, and so on: MAX_DEPTH levels
        // are looked into, one more is refused (what it holds was not).
        let nest = |levels: usize| {
            let mut m = b"From: a@sender.test\r\nSubject: innermost\r\n\r\nhello\r\n".to_vec();
            for level in 0..levels {
                m = message_with(&format!("b{level}"), &[], Some(&m));
            }
            m
        };
        assert!(problems(&nest(MAX_DEPTH)).is_empty());
        assert_eq!(
            problems(&nest(MAX_DEPTH + 1)),
            [format!(
                "messages nested more than {MAX_DEPTH} deep, not looked into"
            )]
        );
    }

    #[test]
    fn names_in_reasons_are_printable_and_capped() {
        let name = format!("a\u{1b}]0;x\u{7}{}.exe", "n".repeat(200));
        let got = problems(&message(
            &[(&name, "application/octet-stream", b"text")],
            None,
        ));
        assert_eq!(got.len(), 1);
        let shown = got[0]
            .strip_prefix("attachment \"")
            .and_then(|r| r.split_once('"'))
            .map(|(n, _)| n)
            .unwrap();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.starts_with("a?]0;x?nnn"), "{shown:?}");
        assert_eq!(shown.chars().count(), MAX_NAME + 1, "{shown:?}");
    }
}
