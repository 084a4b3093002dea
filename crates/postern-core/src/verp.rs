//! VERP-style return paths: the envelope sender of an outgoing message is
//! rewritten, per recipient, to `b-<message id>-<tag>@<return-path domain>`,
//! so a bounce that comes back names the message and the recipient even
//! when it is not a well-formed DSN. The tag is an HMAC of the message id
//! and the recipient under a server secret: a forged bounce cannot name a
//! recipient it does not know, nor a message it has not seen, and the
//! recipient's address (often longer than the 64 octets a local part may
//! have, RFC 5321 §4.5.3.1.1) need not be carried.

use aws_lc_rs::hmac;

/// Hex digits of the tag: 48 bits, against guessing by someone sending
/// forged bounces.
const TAG_HEX: usize = 12;

pub struct Verp {
    key: hmac::Key,
}

/// What a return-path address names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerpAddress {
    pub message_id: String,
    pub tag: String,
}

impl Verp {
    pub fn new(secret: &[u8]) -> Self {
        Verp {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    pub fn tag(&self, message_id: &str, recipient: &str) -> String {
        let mut data = Vec::with_capacity(message_id.len() + recipient.len() + 1);
        data.extend_from_slice(message_id.as_bytes());
        data.push(0);
        data.extend_from_slice(recipient.to_lowercase().as_bytes());
        let sig = hmac::sign(&self.key, &data);
        sig.as_ref()
            .iter()
            .take(TAG_HEX / 2)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The envelope sender for one recipient of a message.
    pub fn address(&self, message_id: &str, recipient: &str, domain: &str) -> String {
        format!(
            "b-{message_id}-{}@{domain}",
            self.tag(message_id, recipient)
        )
    }

    /// Whether `tag` is the one for this message and recipient.
    pub fn matches(&self, parsed: &VerpAddress, recipient: &str) -> bool {
        let expected = self.tag(&parsed.message_id, recipient);
        let (e, g) = (expected.as_bytes(), parsed.tag.as_bytes());
        // Compared without an early exit, so timing tells nothing of the tag.
        e.len() == g.len() && e.iter().zip(g).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// Reads the local part of a return-path address (case-insensitive, as
/// some bounce senders change case).
pub fn parse_local(local: &str) -> Option<VerpAddress> {
    let rest = local.to_ascii_lowercase();
    let rest = rest.strip_prefix("b-")?;
    let (id, tag) = rest.rsplit_once('-')?;
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    if tag.len() != TAG_HEX || !hex(tag) || !hex(id) || id.len() > 40 {
        return None;
    }
    Some(VerpAddress {
        message_id: id.to_owned(),
        tag: tag.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_forgery() {
        let v = Verp::new(b"secret");
        let a = v.address("0123abcd", "Alice@Example.net", "pst-bounces.example.org");
        let (local, domain) = a.rsplit_once('@').unwrap();
        assert_eq!(domain, "pst-bounces.example.org");
        assert!(local.len() <= 64, "RFC 5321 §4.5.3.1.1");
        let parsed = parse_local(&local.to_uppercase()).unwrap();
        assert_eq!(parsed.message_id, "0123abcd");
        assert!(v.matches(&parsed, "alice@example.net"));
        assert!(!v.matches(&parsed, "bob@example.net"));
        assert!(!Verp::new(b"other").matches(&parsed, "alice@example.net"));
        assert!(parse_local("b-xyz-123").is_none());
        assert!(parse_local("postmaster").is_none());
    }
}
