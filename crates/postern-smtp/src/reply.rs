//! SMTP replies. Every reply carries an RFC 3463 enhanced status code
//! (RFC 2034 ENHANCEDSTATUSCODES is always advertised).

use std::fmt::Write;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub esc: (u8, u16, u16),
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, esc: (u8, u16, u16), text: impl Into<String>) -> Self {
        Reply {
            code,
            esc,
            text: text.into(),
        }
    }

    /// Appends the reply, one line per line of text (RFC 5321 §4.2.1).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let lines: Vec<&str> = self.text.split('\n').collect();
        let mut s = String::new();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            let (c, s1, s2) = self.esc;
            let _ = write!(s, "{}{sep}{c}.{s1}.{s2} {}\r\n", self.code, line.trim_end());
        }
        out.extend_from_slice(s.as_bytes());
    }

    /// The reply on one line, as the send log records it
    /// (`550 5.1.1 No such recipient here`).
    pub fn summary(&self) -> String {
        let (c, s1, s2) = self.esc;
        format!(
            "{} {c}.{s1}.{s2} {}",
            self.code,
            self.text.replace('\n', " / ")
        )
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }
}

/// Replies used in more than one phase.
pub mod common {
    use super::Reply;

    pub fn bad_sequence(what: &str) -> Reply {
        Reply::new(503, (5, 5, 1), format!("Bad sequence of commands: {what}"))
    }

    pub fn syntax(what: &str) -> Reply {
        Reply::new(501, (5, 5, 4), format!("Syntax error: {what}"))
    }

    pub fn queue_unavailable() -> Reply {
        Reply::new(
            451,
            (4, 3, 0),
            "Temporary failure: queue unavailable, try again later",
        )
    }

    /// The shared memory budget for message bodies is spent (RFC 5321
    /// §4.2.2 452; RFC 3463 4.3.1 "mail system full"): a client retries later.
    pub fn insufficient_storage() -> Reply {
        Reply::new(
            452,
            (4, 3, 1),
            "Insufficient system storage: too many messages in progress, try again later",
        )
    }

    pub fn shutting_down(host: &str) -> Reply {
        Reply::new(
            421,
            (4, 3, 2),
            format!("{host} Service shutting down, try again later"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_line() {
        let mut out = Vec::new();
        Reply::new(250, (2, 0, 0), "OK").write_to(&mut out);
        Reply::new(214, (2, 0, 0), "one\ntwo").write_to(&mut out);
        assert_eq!(out, b"250 2.0.0 OK\r\n214-2.0.0 one\r\n214 2.0.0 two\r\n");
    }
}
