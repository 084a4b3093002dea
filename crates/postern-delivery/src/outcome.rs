//! What happened to a recipient: the caller never parses strings to decide
//! whether to retry.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the next hop; the text is its reply.
    Delivered(String),
    /// Try again later (4xx, connection trouble, DNS timeouts).
    Transient(String),
    /// Give up (5xx, null MX, no such domain).
    Permanent(String),
}

impl Outcome {
    /// From an SMTP reply code and text, per RFC 5321 §4.2.1.
    pub fn from_reply(code: u16, text: &str, step: &str) -> Outcome {
        let detail = format!("{step}: {code} {}", text.replace('\n', " "));
        match code {
            200..=399 => Outcome::Delivered(detail),
            500..=599 => Outcome::Permanent(detail),
            _ => Outcome::Transient(detail),
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered(_) => "delivered",
            Outcome::Transient(_) => "deferred",
            Outcome::Permanent(_) => "failed",
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            Outcome::Delivered(d) | Outcome::Transient(d) | Outcome::Permanent(d) => d,
        }
    }
}
