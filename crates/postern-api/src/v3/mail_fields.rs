//! Validation of every `/v3/mail/send` field that is written into a header
//! of the built message, one function per kind of field. mail-builder
//! writes some values verbatim (the Content-ID between `<` and `>`, the
//! MIME type, addresses inside `<>`), so anything that could end a header
//! line, a parameter or a bracket must be refused here, before the builder
//! sees it. Each refusal is a 400 naming the field (SendGrid's error shape).
//!
//! The request fields and the checks they get:
//! - subject (global and per personalization), header values: [`text`];
//! - header names: [`header_name`];
//! - every name of from, to, cc, bcc, reply_to, reply_to_list (global and
//!   per personalization): [`display_name`];
//! - every email of those: [`email`];
//! - attachments: [`filename`], [`mime_type`], [`disposition`],
//!   [`content_id`].
//!
//! `categories`, `custom_args`, `asm`, `tracking_settings` and
//! `mail_settings` are not written into the message, so they are not
//! checked here; templates, scheduling and substitutions are refused
//! before building.

use axum::http::StatusCode;
use postern_core::address::Address;

use crate::ApiError;

/// RFC 5322 §2.1.1: a line is at most 998 characters. A subject or header
/// value longer than a line is folded by the builder, but nothing real is
/// that long; the bound keeps requests (and error messages) small.
pub const MAX_TEXT: usize = 998;
/// A display name: long enough for any person or company.
pub const MAX_NAME: usize = 256;
/// RFC 5322 §2.2 field names; nothing registered is near this.
pub const MAX_HEADER_NAME: usize = 76;
/// A file name as file systems allow it (255 bytes is the usual limit).
pub const MAX_FILENAME: usize = 255;
/// RFC 6838 §4.2: type and subtype names are at most 127 characters each.
pub const MAX_MIME_NAME: usize = 127;
/// A Content-ID: RFC 5322 §3.6.4 msg-ids of real mail are far shorter.
pub const MAX_CONTENT_ID: usize = 250;

fn bad(field: &'static str, message: String) -> ApiError {
    ApiError::field(StatusCode::BAD_REQUEST, field, message)
}

/// A control character: C0 (CR, LF, NUL...), DEL, C1, and the Unicode line
/// and paragraph separators, which some readers treat as line breaks.
/// HTAB is white space (RFC 5322 §2.2 WSP) and allowed only where `tab`.
fn is_control(c: char, tab: bool) -> bool {
    (c.is_control() && !(tab && c == '\t')) || c == '\u{2028}' || c == '\u{2029}'
}

fn no_controls(field: &'static str, value: &str, tab: bool) -> Result<(), ApiError> {
    match value.chars().find(|&c| is_control(c, tab)) {
        Some('\r' | '\n') => Err(bad(field, format!("{field} contains a line break"))),
        Some(c) => Err(bad(
            field,
            format!("{field} contains a control character (U+{:04X})", c as u32),
        )),
        None => Ok(()),
    }
}

fn bounded(field: &'static str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.chars().count() > max {
        return Err(bad(
            field,
            format!("{field} is longer than {max} characters"),
        ));
    }
    Ok(())
}

/// Unstructured text (RFC 5322 §3.2.5 unstructured: a subject, a custom
/// header's value): no control characters but HTAB, at most a line long.
/// Non-ASCII is fine: the builder writes it as encoded words (RFC 2047).
pub fn text(field: &'static str, value: &str) -> Result<(), ApiError> {
    no_controls(field, value, true)?;
    bounded(field, value, MAX_TEXT)
}

/// A display name: free text as [`text`], shorter. The builder quotes it
/// or encodes it as a phrase (RFC 5322 §3.2.5), so quotes and angle
/// brackets are harmless once the controls are gone.
pub fn display_name(field: &'static str, value: &str) -> Result<(), ApiError> {
    no_controls(field, value, true)?;
    bounded(field, value, MAX_NAME)
}

/// An email address: a dot-atom local part and a domain, as SMTP carries
/// it (RFC 5321 §4.1.2; UTF-8 allowed, RFC 6531). Surrounding spaces are
/// trimmed as before; controls anywhere (a CR or LF the trim would have
/// hidden) are refused first. Returns the parsed address.
pub fn email(field: &'static str, value: &str) -> Result<Address, ApiError> {
    no_controls(field, value, false)?;
    Address::parse(value.trim(), true).map_err(|err| {
        bad(
            field,
            format!("{value:?} is not a valid email address ({err})"),
        )
    })
}

/// A custom header's name: RFC 5322 §2.2 ftext (printable ASCII but ':').
pub fn header_name(field: &'static str, name: &str) -> Result<(), ApiError> {
    if name.is_empty()
        || name.len() > MAX_HEADER_NAME
        || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
    {
        return Err(bad(field, format!("{name:?} is not a valid header name")));
    }
    Ok(())
}

/// An attachment's file name, written as the `filename` parameter of
/// Content-Disposition (RFC 2183 §2.3; non-ASCII as RFC 2231): no
/// controls, and no `"` or `\`, which could end or escape the quoted
/// parameter value.
pub fn filename(field: &'static str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(bad(field, format!("{field} is required")));
    }
    no_controls(field, value, false)?;
    if value.contains(['"', '\\']) {
        return Err(bad(
            field,
            format!("{field} must not contain quotes or backslashes"),
        ));
    }
    bounded(field, value, MAX_FILENAME)
}

/// RFC 2045 §5.1 token: printable ASCII without space and tspecials.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_MIME_NAME
        && s.bytes()
            .all(|b| (33..=126).contains(&b) && !b"()<>@,;:\\\"/[]?=".contains(&b))
}

/// A MIME type, written verbatim as the Content-Type value: `type/subtype`,
/// both tokens (RFC 2045 §5.1), no parameters (a `;` would let the caller
/// add any).
pub fn mime_type(field: &'static str, value: &str) -> Result<(), ApiError> {
    match value.split_once('/') {
        Some((t, s)) if is_token(t) && is_token(s) => Ok(()),
        _ => Err(bad(
            field,
            format!("{:?} is not a MIME type (type/subtype)", shorten(value)),
        )),
    }
}

/// Content-Disposition (RFC 2183 §2): SendGrid takes `inline` or
/// `attachment`; anything else used to become an attachment silently.
pub fn disposition(field: &'static str, value: &str) -> Result<(), ApiError> {
    match value {
        "inline" | "attachment" => Ok(()),
        _ => Err(bad(
            field,
            format!(
                "{:?} is not a disposition (inline or attachment)",
                shorten(value)
            ),
        )),
    }
}

/// A Content-ID, written as `<content_id>` (RFC 2045 §7, RFC 2392): the
/// msg-id's inside (RFC 5322 §3.6.4 id-left ["@" id-right]) as HTML
/// refers to it (`cid:logo`): dot-atom text with at most one `@`, so no
/// `<`, `>`, white space or controls can break out of the brackets.
pub fn content_id(field: &'static str, value: &str) -> Result<(), ApiError> {
    no_controls(field, value, false)?;
    let dot_atom = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|a| {
                !a.is_empty()
                    && a.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b))
            })
    };
    let ok = value.len() <= MAX_CONTENT_ID
        && match value.split_once('@') {
            Some((l, r)) => dot_atom(l) && dot_atom(r),
            None => dot_atom(value),
        };
    if !ok {
        return Err(bad(
            field,
            format!(
                "{:?} is not a valid content id (letters, digits, RFC 5322 atext, dots and at most one @; {MAX_CONTENT_ID} characters at most)",
                shorten(value)
            ),
        ));
    }
    Ok(())
}

/// The start of a refused value for an error message (never the whole of
/// a megabyte string).
fn shorten(value: &str) -> String {
    value.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(r: Result<(), ApiError>) -> Option<&'static str> {
        r.err().and_then(|e| e.field)
    }

    #[test]
    fn text_fields() {
        assert!(text("subject", "Hello, Jörg\tand all").is_ok());
        for v in [
            "a\r\nBcc: x@y",
            "a\nb",
            "a\rb",
            "a\0b",
            "a\u{85}b",
            "a\u{2028}b",
            "a\x1bb",
        ] {
            assert_eq!(field_of(text("subject", v)), Some("subject"), "{v:?}");
        }
        assert!(text("subject", &"x".repeat(MAX_TEXT)).is_ok());
        assert!(text("subject", &"x".repeat(MAX_TEXT + 1)).is_err());
    }

    #[test]
    fn names() {
        assert!(display_name("from.name", "\"Doe, Jane\" <x>").is_ok());
        assert!(display_name("from.name", "Jane\r\nBcc: x@y").is_err());
        assert!(display_name("from.name", &"n".repeat(MAX_NAME + 1)).is_err());
    }

    #[test]
    fn emails() {
        assert!(email("to.email", " a@example.net ").is_ok());
        assert!(email("to.email", "jörg@exämple.net").is_ok());
        for v in [
            "a@example.net\r\n",
            "a@example.net\r\nBcc: x@y",
            "a@exa\tmple.net",
            "a@example.net>, evil@example.com",
            "\"a b\"@example.net",
            "a@[192.0.2.1]",
            "a@exa\u{85}mple.net",
            "",
        ] {
            assert!(email("to.email", v).is_err(), "{v:?}");
        }
    }

    #[test]
    fn header_names() {
        assert!(header_name("headers", "X-Campaign").is_ok());
        for v in [
            "",
            "X A",
            "X:A",
            "X\r\nA",
            "Ä",
            &"x".repeat(MAX_HEADER_NAME + 1),
        ] {
            assert!(header_name("headers", v).is_err(), "{v:?}");
        }
    }

    #[test]
    fn attachment_fields() {
        assert!(filename("attachments.filename", "report 2024 (final).pdf").is_ok());
        assert!(filename("attachments.filename", "Bericht-Übersicht.pdf").is_ok());
        for v in [
            "",
            "a\".pdf",
            "a\\b",
            "a\r\nb",
            "a\0",
            &"f".repeat(MAX_FILENAME + 1),
        ] {
            assert!(filename("attachments.filename", v).is_err(), "{v:?}");
        }
        assert!(mime_type("attachments.type", "image/png").is_ok());
        assert!(mime_type("attachments.type", "application/vnd.ms-excel").is_ok());
        for v in [
            "image",
            "image/png; name=x",
            "text/plain\r\nX: y",
            "text /plain",
            "/png",
            "image/",
            "a/b/c",
        ] {
            assert!(mime_type("attachments.type", v).is_err(), "{v:?}");
        }
        assert!(disposition("attachments.disposition", "inline").is_ok());
        assert!(disposition("attachments.disposition", "attachment").is_ok());
        assert!(disposition("attachments.disposition", "inline\r\nX: y").is_err());
        assert!(disposition("attachments.disposition", "form-data").is_err());
        for v in [
            "logo",
            "ii_139db99fdb5c3704",
            "part1.abc@example.net",
            "a+b=c",
        ] {
            assert!(content_id("attachments.content_id", v).is_ok(), "{v:?}");
        }
        for v in [
            "",
            "logo\r\nBcc: x@y",
            "logo>\r\n",
            "logo><script",
            "<logo>",
            "a b",
            "a@b@c",
            "a..b",
            "lögo",
            &"c".repeat(MAX_CONTENT_ID + 1),
        ] {
            assert!(content_id("attachments.content_id", v).is_err(), "{v:?}");
        }
    }
}
