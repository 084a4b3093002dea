//! Bounce classification: why a recipient was refused, from the RFC 3463
//! enhanced status code first and the reply's words second (many servers
//! still answer `550 Mailbox full` without a code).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BounceClass {
    /// The address does not exist (x.1.x): a hard bounce, suppressed.
    InvalidAddress,
    /// Over quota (x.2.2).
    MailboxFull,
    /// Exists but does not take mail now (x.2.0, x.2.1 disabled).
    MailboxUnavailable,
    /// Refused for policy or reputation (x.7.x: spam, blocklists, DMARC).
    Block,
    /// The content was refused (x.6.x, x.3.4 too big).
    Content,
    /// Too much, too fast (x.4.5 congestion, rate limits).
    Volume,
    /// Network, routing, protocol or system trouble (x.3.x, x.4.x, x.5.x).
    Technical,
    Unclassified,
}

impl BounceClass {
    pub const ALL: [BounceClass; 8] = [
        BounceClass::InvalidAddress,
        BounceClass::MailboxFull,
        BounceClass::MailboxUnavailable,
        BounceClass::Block,
        BounceClass::Content,
        BounceClass::Volume,
        BounceClass::Technical,
        BounceClass::Unclassified,
    ];

    /// The label in events, metrics and the CLI.
    pub fn label(self) -> &'static str {
        match self {
            BounceClass::InvalidAddress => "invalid_address",
            BounceClass::MailboxFull => "mailbox_full",
            BounceClass::MailboxUnavailable => "mailbox_unavailable",
            BounceClass::Block => "block",
            BounceClass::Content => "content",
            BounceClass::Volume => "volume",
            BounceClass::Technical => "technical",
            BounceClass::Unclassified => "unclassified",
        }
    }

    pub fn from_label(s: &str) -> Option<BounceClass> {
        BounceClass::ALL.into_iter().find(|c| c.label() == s)
    }

    /// SendGrid's `bounce_classification` vocabulary.
    pub fn sendgrid_label(self) -> &'static str {
        match self {
            BounceClass::InvalidAddress => "Invalid Address",
            BounceClass::MailboxFull | BounceClass::MailboxUnavailable => "Mailbox Unavailable",
            BounceClass::Block => "Reputation",
            BounceClass::Content => "Content",
            BounceClass::Volume => "Frequency or Volume",
            BounceClass::Technical => "Technical",
            BounceClass::Unclassified => "Unclassified",
        }
    }
}

impl fmt::Display for BounceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Hard (5.x.x: give up) or soft (4.x.x: try again).
pub fn severity(status: &str) -> &'static str {
    if status.starts_with('5') {
        "hard"
    } else {
        "soft"
    }
}

/// Classifies a refusal from its RFC 3463 status (`"5.1.1"`) and the reply
/// text it came with.
pub fn classify(status: &str, reply: &str) -> BounceClass {
    let mut parts = status.split('.').skip(1);
    let subject = parts.next().unwrap_or("0");
    let detail = parts.next().unwrap_or("0");
    // RFC 3463 §3: the subject sub-code says which part of the system
    // failed; the detail narrows it.
    let by_code = match (subject, detail) {
        ("1", "0") => None, // "other address status": look at the words
        ("1", _) => Some(BounceClass::InvalidAddress),
        ("2", "2") => Some(BounceClass::MailboxFull),
        ("2", "0") => None,
        ("2", "1") => Some(BounceClass::MailboxUnavailable),
        ("2", "3") => Some(BounceClass::Content), // message too long for the mailbox
        ("2", _) => Some(BounceClass::MailboxUnavailable),
        ("3", "4") => Some(BounceClass::Content),
        ("3", _) => Some(BounceClass::Technical),
        ("4", "5") => Some(BounceClass::Volume),
        ("4", _) => Some(BounceClass::Technical),
        ("5", _) => Some(BounceClass::Technical),
        ("6", _) => Some(BounceClass::Content),
        ("7", "0") => None,
        ("7", _) => Some(BounceClass::Block),
        _ => None,
    };
    if let Some(c) = by_code {
        return c;
    }
    classify_words(reply).unwrap_or(match subject {
        "1" => BounceClass::InvalidAddress,
        "2" => BounceClass::MailboxUnavailable,
        "7" => BounceClass::Block,
        _ => BounceClass::Unclassified,
    })
}

/// Phrases receivers use when they give no useful code.
fn classify_words(reply: &str) -> Option<BounceClass> {
    let r = reply.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| r.contains(w));
    if has(&[
        "mailbox full",
        "over quota",
        "quota exceeded",
        "insufficient storage",
        "mailbox is full",
    ]) {
        Some(BounceClass::MailboxFull)
    } else if has(&[
        "user unknown",
        "no such user",
        "unknown user",
        "does not exist",
        "no mailbox",
        "invalid recipient",
        "recipient address rejected",
        "address rejected",
        "unrouteable",
    ]) {
        Some(BounceClass::InvalidAddress)
    } else if has(&[
        "rate limit",
        "too many",
        "too fast",
        "try again later",
        "throttl",
    ]) {
        Some(BounceClass::Volume)
    } else if has(&[
        "spam",
        "blocked",
        "blacklist",
        "blocklist",
        "listed",
        "reputation",
        "policy",
        "dmarc",
        "not authorized",
    ]) {
        Some(BounceClass::Block)
    } else if has(&["virus", "content", "message too large", "too big"]) {
        Some(BounceClass::Content)
    } else if has(&["disabled", "inactive", "suspended"]) {
        Some(BounceClass::MailboxUnavailable)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_enhanced_code() {
        let cases = [
            ("5.1.1", "", BounceClass::InvalidAddress),
            ("5.1.10", "null MX", BounceClass::InvalidAddress),
            ("5.2.2", "", BounceClass::MailboxFull),
            ("4.2.2", "", BounceClass::MailboxFull),
            ("5.2.1", "", BounceClass::MailboxUnavailable),
            ("5.7.1", "", BounceClass::Block),
            ("5.7.26", "unauthenticated", BounceClass::Block),
            ("5.6.0", "", BounceClass::Content),
            ("5.3.4", "", BounceClass::Content),
            ("4.4.5", "", BounceClass::Volume),
            ("4.4.1", "", BounceClass::Technical),
            ("4.4.7", "expired", BounceClass::Technical),
        ];
        for (status, text, want) in cases {
            assert_eq!(classify(status, text), want, "{status} {text}");
        }
    }

    #[test]
    fn by_words_when_the_code_says_nothing() {
        assert_eq!(
            classify("5.0.0", "550 Mailbox full"),
            BounceClass::MailboxFull
        );
        assert_eq!(
            classify("5.0.0", "550 User unknown"),
            BounceClass::InvalidAddress
        );
        assert_eq!(
            classify("5.0.0", "554 Your IP is listed on a blocklist"),
            BounceClass::Block
        );
        assert_eq!(
            classify("4.0.0", "421 Too many connections"),
            BounceClass::Volume
        );
        assert_eq!(classify("5.0.0", "550 go away"), BounceClass::Unclassified);
        assert_eq!(classify("5.7.0", "550 rejected"), BounceClass::Block);
    }

    #[test]
    fn labels_round_trip_and_severity() {
        for c in BounceClass::ALL {
            assert_eq!(BounceClass::from_label(c.label()), Some(c));
        }
        assert_eq!(severity("5.1.1"), "hard");
        assert_eq!(severity("4.2.2"), "soft");
    }
}
