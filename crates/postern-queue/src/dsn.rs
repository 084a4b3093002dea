//! Delivery status notifications (RFC 3464): the bounce a sender gets when
//! recipients fail, honouring the RFC 3461 parameters given at MAIL/RCPT
//! (NOTIFY, RET, ENVID, ORCPT).
//!
//! The message is assembled here rather than with a MIME builder: its
//! layout is fixed by RFC 3464 (three parts, the middle one a list of
//! header-style fields), and writing it out directly keeps every field where
//! the RFC puts it. Python's `email` package parses it in the tests.

use postern_core::envelope::DsnReturn;
use postern_core::time::rfc5322_date;

/// One recipient that failed.
#[derive(Debug, Clone)]
pub struct FailedRecipient {
    pub address: String,
    pub orcpt: Option<String>,
    /// RFC 3463 status, e.g. "5.1.1".
    pub status: String,
    /// The remote reply or local reason.
    pub diagnostic: String,
    pub remote_mta: Option<String>,
}

pub struct Bounce<'a> {
    /// The reporting host (our hostname).
    pub reporting_mta: &'a str,
    pub original_sender: &'a str,
    pub envid: Option<&'a str>,
    pub ret: Option<DsnReturn>,
    pub arrival_millis: i64,
    pub now_millis: i64,
    pub message_id: &'a str,
    pub recipients: &'a [FailedRecipient],
    /// The original message as queued.
    pub original: &'a [u8],
}

/// Whether a recipient wants a failure DSN: RFC 3461 §4.1 — default
/// (no NOTIFY) means FAILURE; NEVER means none.
pub fn wants_failure_notice(notify: &[String]) -> bool {
    notify.is_empty() || notify.iter().any(|n| n.eq_ignore_ascii_case("FAILURE"))
}

/// An RFC 3463 code found in a reply ("550 5.1.1 no such user" → "5.1.1"),
/// else a generic one for the class.
pub fn status_from_reply(reply: &str, permanent: bool) -> String {
    for word in reply.split(|c: char| c.is_whitespace() || c == ':') {
        let parts: Vec<&str> = word.split('.').collect();
        if parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        {
            return word.to_owned();
        }
    }
    if permanent { "5.0.0" } else { "4.0.0" }.to_owned()
}

/// Header section of a message: everything before the first empty line.
fn headers_of(message: &[u8]) -> &[u8] {
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &message[..i + 2],
        None => message,
    }
}

/// Keeps a field value on one line of printable ASCII (RFC 3464 §2.1.3: the
/// fields are header-like), so nothing a remote server said can add fields.
fn field_text(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                ' '
            }
        })
        .take(900)
        .collect()
}

pub fn build(b: &Bounce<'_>) -> Vec<u8> {
    let boundary = format!("=_postern_dsn_{}", b.message_id);
    let host = field_text(b.reporting_mta);
    let mut m = String::new();
    m.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n"
    ));
    m.push_str(&format!("To: <{}>\r\n", field_text(b.original_sender)));
    m.push_str("Subject: Undelivered Mail Returned to Sender\r\n");
    m.push_str(&format!("Date: {}\r\n", rfc5322_date(b.now_millis)));
    m.push_str(&format!("Message-ID: <{}.dsn@{host}>\r\n", b.message_id));
    // RFC 3834 §5: an automatic reply, never to be answered automatically.
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
    ));
    m.push_str("This is a MIME-encapsulated message.\r\n\r\n");

    // Part 1: for people.
    m.push_str(&format!(
        "--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    ));
    m.push_str(&format!(
        "This is the mail system at host {host}.\r\n\r\nYour message could not be delivered to the following recipients:\r\n\r\n"
    ));
    for r in b.recipients {
        m.push_str(&format!(
            "<{}>: {}\r\n",
            field_text(&r.address),
            field_text(&r.diagnostic)
        ));
    }
    m.push_str("\r\n");

    // Part 2: for machines (RFC 3464 §2.2 per-message, §2.3 per-recipient).
    m.push_str(&format!(
        "--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
    ));
    m.push_str(&format!("Reporting-MTA: dns; {host}\r\n"));
    if let Some(envid) = b.envid {
        m.push_str(&format!("Original-Envelope-Id: {}\r\n", field_text(envid)));
    }
    m.push_str(&format!(
        "Arrival-Date: {}\r\n",
        rfc5322_date(b.arrival_millis)
    ));
    for r in b.recipients {
        m.push_str("\r\n");
        m.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\n",
            field_text(&r.address)
        ));
        if let Some(o) = &r.orcpt {
            m.push_str(&format!(
                "Original-Recipient: rfc822; {}\r\n",
                field_text(o)
            ));
        }
        m.push_str("Action: failed\r\n");
        m.push_str(&format!("Status: {}\r\n", field_text(&r.status)));
        if let Some(mta) = &r.remote_mta {
            m.push_str(&format!("Remote-MTA: dns; {}\r\n", field_text(mta)));
        }
        m.push_str(&format!(
            "Diagnostic-Code: smtp; {}\r\n",
            field_text(&r.diagnostic)
        ));
        m.push_str(&format!(
            "Last-Attempt-Date: {}\r\n",
            rfc5322_date(b.now_millis)
        ));
    }
    m.push_str("\r\n");

    // Part 3: the original, in full only when RET=FULL was asked for.
    let mut out = m.into_bytes();
    match b.ret {
        Some(DsnReturn::Full) => {
            out.extend_from_slice(
                format!("--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n").as_bytes(),
            );
            out.extend_from_slice(b.original);
        }
        _ => {
            out.extend_from_slice(
                format!("--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n").as_bytes(),
            );
            out.extend_from_slice(headers_of(b.original));
        }
    }
    // RFC 2046 §5.1.1: the CRLF before a boundary delimiter belongs to the
    // delimiter, not to the part, so one is always added: the returned
    // content keeps its own last line break (RET=FULL returns the message
    // whole, byte for byte).
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_come_from_the_reply() {
        assert_eq!(
            status_from_reply("RCPT: 550 5.1.1 no such user", true),
            "5.1.1"
        );
        assert_eq!(status_from_reply("550 no such user", true), "5.0.0");
        assert_eq!(
            status_from_reply("gave up: 451 4.4.1 timeout", false),
            "4.4.1"
        );
        assert_eq!(
            status_from_reply("version 1.2.3 of something", true),
            "5.0.0"
        );
    }

    #[test]
    fn notify_rules() {
        assert!(wants_failure_notice(&[]));
        assert!(wants_failure_notice(&["SUCCESS".into(), "FAILURE".into()]));
        assert!(!wants_failure_notice(&["NEVER".into()]));
        assert!(!wants_failure_notice(&["DELAY".into()]));
    }

    #[test]
    fn layout() {
        let r = FailedRecipient {
            address: "gone@example.net".into(),
            orcpt: Some("Gone@Example.net".into()),
            status: "5.1.1".into(),
            diagnostic: "RCPT: 550 5.1.1 no such user\r\nInjected: header".into(),
            remote_mta: Some("mx.example.net".into()),
        };
        let dsn = build(&Bounce {
            reporting_mta: "relay.example",
            original_sender: "a@example.org",
            envid: Some("env-1"),
            ret: None,
            arrival_millis: 0,
            now_millis: 1000,
            message_id: "0123",
            recipients: &[r],
            original: b"Subject: hi\r\n\r\nsecret body\r\n",
        });
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(text.contains("Final-Recipient: rfc822; gone@example.net\r\nOriginal-Recipient: rfc822; Gone@Example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"));
        assert!(text.contains("Original-Envelope-Id: env-1\r\n"));
        assert!(
            !text.contains("\r\nInjected: header"),
            "a remote reply cannot add fields"
        );
        assert!(text.contains("Subject: hi"), "headers are returned");
        assert!(!text.contains("secret body"), "the body only with RET=FULL");
        assert!(!text.replace("\r\n", "").contains('\n'));
    }

    #[test]
    fn ret_full_returns_the_message_with_its_last_line_break() {
        let original = b"Subject: hi\r\n\r\nsecret body\r\n";
        let full = |original: &[u8]| {
            let dsn = build(&Bounce {
                reporting_mta: "relay.example",
                original_sender: "a@example.org",
                envid: None,
                ret: Some(DsnReturn::Full),
                arrival_millis: 0,
                now_millis: 1000,
                message_id: "0123",
                recipients: &[],
                original,
            });
            String::from_utf8(dsn).unwrap()
        };
        // The part's content runs up to the CRLF that belongs to the
        // closing delimiter; it must still end with the message's own CRLF.
        assert!(full(original).ends_with(
            "Content-Type: message/rfc822\r\n\r\nSubject: hi\r\n\r\nsecret body\r\n\r\n--=_postern_dsn_0123--\r\n"
        ));
        // A message without a final line break gets none added to it.
        assert!(full(b"Subject: hi\r\n\r\nno break")
            .ends_with("\r\n\r\nno break\r\n--=_postern_dsn_0123--\r\n"));
    }
}
