//! Message identifiers: time-ordered so queue listings sort by arrival, with
//! enough randomness that two nodes never mint the same one.

use std::fmt;

use rand::Rng;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(String);

impl MessageId {
    /// 12 hex digits of milliseconds (good until the year 10889) and 64 random bits.
    pub fn generate() -> Self {
        let millis = crate::time::now_millis().max(0) as u64 & 0xffff_ffff_ffff;
        let random: u64 = rand::rng().random();
        MessageId(format!("{millis:012x}{random:016x}"))
    }

    /// Accepts only strings that `generate` could have produced, so an id taken
    /// from a command line or URL cannot carry anything else.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 28
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then(|| MessageId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_differ() {
        let a = MessageId::generate();
        let b = MessageId::generate();
        assert_ne!(a, b);
        assert_eq!(MessageId::parse(a.as_str()), Some(a));
        assert_eq!(MessageId::parse("zz"), None);
        assert_eq!(MessageId::parse("0123456789abcdef0123456789AB"), None);
    }
}
