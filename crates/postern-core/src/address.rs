//! Envelope addresses and the rules that keep Postern from ever relaying mail
//! to a host other than the one the domain part names.

use std::fmt;

use thiserror::Error;

/// A mailbox `local@domain` with the domain lower-cased. The local part is kept
/// as given (RFC 5321 §2.4: local parts may be case-sensitive).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    local: String,
    domain: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("address has no domain")]
    NoDomain,
    #[error("address literals ([...]) are not accepted as destinations")]
    AddressLiteral,
    #[error("domain is not a valid host name")]
    BadDomain,
    #[error("local part contains a routing character ({0:?})")]
    RoutingCharacter(char),
    #[error("local part is empty or not a dot-atom")]
    BadLocalPart,
    #[error("non-ASCII address requires SMTPUTF8")]
    NeedsSmtpUtf8,
    #[error("address is longer than 254 octets")]
    TooLong,
}

// RFC 5321 §4.5.3.1.3 limits a path to 256 octets including the angle brackets.
const MAX_ADDRESS_LEN: usize = 254;
// RFC 5321 §4.5.3.1.1: 64 octets for a local part.
const MAX_LOCAL_LEN: usize = 64;

impl Address {
    /// Parses a mailbox as smtp-proto hands it over (source route already
    /// stripped, quotes already removed).
    ///
    /// Only dot-atom local parts are accepted. smtp-proto removes the quotes of
    /// a quoted local part, so `"user@ext"@relay` arrives as `user@ext@relay`;
    /// refusing anything but dot-atom text means such an address can never be
    /// re-emitted with a different meaning to the next hop.
    pub fn parse(s: &str, smtputf8: bool) -> Result<Self, AddressError> {
        if s.len() > MAX_ADDRESS_LEN {
            return Err(AddressError::TooLong);
        }
        if !smtputf8 && !s.is_ascii() {
            return Err(AddressError::NeedsSmtpUtf8);
        }
        let (local, domain) = s.rsplit_once('@').ok_or(AddressError::NoDomain)?;
        if domain.starts_with('[') {
            return Err(AddressError::AddressLiteral);
        }
        let domain = normalize_domain(domain)?;
        if local.is_empty() || local.len() > MAX_LOCAL_LEN || !is_dot_atom(local) {
            if let Some(c) = local.chars().find(|c| *c == '@' || *c == '"') {
                return Err(AddressError::RoutingCharacter(c));
            }
            return Err(AddressError::BadLocalPart);
        }
        Ok(Address {
            local: local.to_owned(),
            domain,
        })
    }

    /// The stricter rule for mail that arrives unauthenticated for a relay
    /// domain: the local part must not carry the percent hack (`user%ext@relay`)
    /// or a UUCP bang path (`ext!user@relay`), which some internal servers would
    /// still honour and so turn Postern into a relay for another host.
    pub fn check_no_routing(&self) -> Result<(), AddressError> {
        match self.local.chars().find(|c| matches!(c, '%' | '!')) {
            Some(c) => Err(AddressError::RoutingCharacter(c)),
            None => Ok(()),
        }
    }

    pub fn local(&self) -> &str {
        &self.local
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// Lower-cases a domain and checks it is a host name (RFC 1035 §2.3.1 labels,
/// RFC 5321 §4.5.3.1.2 length). A trailing dot is refused rather than stripped:
/// `user@ext.` must not be treated as a different spelling of a relay domain.
pub fn normalize_domain(domain: &str) -> Result<String, AddressError> {
    if domain.is_empty() || domain.len() > 253 || domain.ends_with('.') {
        return Err(AddressError::BadDomain);
    }
    for label in domain.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii());
        if !ok {
            return Err(AddressError::BadDomain);
        }
    }
    Ok(domain.to_lowercase())
}

// RFC 5322 §3.2.3 atext, plus UTF-8 (RFC 6532 §3.2) when the transaction allows it.
fn is_dot_atom(local: &str) -> bool {
    !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| {
            c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c) || !c.is_ascii()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_addresses() {
        let a = Address::parse("Alice.B+tag@Example.ORG", false).unwrap();
        assert_eq!(a.local(), "Alice.B+tag");
        assert_eq!(a.domain(), "example.org");
        assert_eq!(a.to_string(), "Alice.B+tag@example.org");
        assert!(a.check_no_routing().is_ok());
    }

    #[test]
    fn refuses_relay_tricks() {
        // Each of these must never be read as mail for another host.
        assert_eq!(
            Address::parse("user@ext@relay.example", false),
            Err(AddressError::RoutingCharacter('@'))
        );
        assert_eq!(
            Address::parse("user@[192.0.2.1]", false),
            Err(AddressError::AddressLiteral)
        );
        assert_eq!(
            Address::parse("user@ext.", false),
            Err(AddressError::BadDomain)
        );
        let pct = Address::parse("user%ext@relay.example", false).unwrap();
        assert_eq!(
            pct.check_no_routing(),
            Err(AddressError::RoutingCharacter('%'))
        );
        let bang = Address::parse("ext!user@relay.example", false).unwrap();
        assert_eq!(
            bang.check_no_routing(),
            Err(AddressError::RoutingCharacter('!'))
        );
        assert_eq!(
            Address::parse("a b@relay.example", false),
            Err(AddressError::BadLocalPart)
        );
    }

    #[test]
    fn non_ascii_needs_smtputf8() {
        assert_eq!(
            Address::parse("jörg@example.org", false),
            Err(AddressError::NeedsSmtpUtf8)
        );
        assert!(Address::parse("jörg@example.org", true).is_ok());
    }
}
