//! SASL payload decoding for the mechanisms the SMTP server offers. smtp-proto
//! names the mechanism; the payloads are ours to decode.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SaslError {
    #[error("invalid base64")]
    Base64,
    #[error("malformed credentials")]
    Malformed,
    #[error("authentication cancelled")]
    Cancelled,
}

/// Credentials as presented, before any check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// RFC 4616 authorization identity; empty when not given.
    pub authzid: String,
    pub username: String,
    pub secret: String,
}

/// RFC 4954 §4: a client may cancel an exchange with a single `*`.
pub fn decode_base64(line: &str) -> Result<Vec<u8>, SaslError> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line == "*" {
        return Err(SaslError::Cancelled);
    }
    // RFC 4954 §4: "=" stands for an empty initial response.
    if line == "=" {
        return Ok(Vec::new());
    }
    STANDARD.decode(line).map_err(|_| SaslError::Base64)
}

/// RFC 4616 §2: `[authzid] NUL authcid NUL passwd`, UTF-8, no NUL inside.
pub fn decode_plain(payload: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = payload.split(|b| *b == 0);
    let (Some(authzid), Some(authcid), Some(passwd), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| SaslError::Malformed);
    let (authzid, username, secret) = (text(authzid)?, text(authcid)?, text(passwd)?);
    // RFC 4616 §2: authcid and passwd are non-empty; all three fields are
    // at most 255 octets (the limit every server must accept; longer is
    // refused here, so nothing longer reaches a lookup, a log or the audit).
    if username.is_empty()
        || secret.is_empty()
        || username.len() > 255
        || secret.len() > 255
        || authzid.len() > 255
    {
        return Err(SaslError::Malformed);
    }
    Ok(Credentials {
        authzid,
        username,
        secret,
    })
}

/// One field of the LOGIN mechanism (draft-murchison-sasl-login): the user
/// name or the password, each a base64 line.
pub fn decode_login_field(payload: &[u8]) -> Result<String, SaslError> {
    let s = String::from_utf8(payload.to_vec()).map_err(|_| SaslError::Malformed)?;
    if s.is_empty() || s.len() > 255 || s.contains('\0') {
        return Err(SaslError::Malformed);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_forms() {
        let c = decode_plain(b"\0apikey\0pst_x").unwrap();
        assert_eq!(c.username, "apikey");
        assert_eq!(c.secret, "pst_x");
        assert_eq!(c.authzid, "");
        let c = decode_plain(b"other\0apikey\0pst_x").unwrap();
        assert_eq!(c.authzid, "other");
        assert_eq!(decode_plain(b"apikey\0pst_x"), Err(SaslError::Malformed));
        assert_eq!(decode_plain(b"\0\0pw"), Err(SaslError::Malformed));
        assert_eq!(decode_plain(b"\0u\0p\0extra"), Err(SaslError::Malformed));
        assert_eq!(decode_plain(b"\0u\0\xff"), Err(SaslError::Malformed));
    }

    /// Every field is bounded at 255 octets at input (RFC 4616 §2), the
    /// LOGIN fields too: 255 is taken, 256 refused.
    #[test]
    fn fields_are_bounded_at_255_octets() {
        let (ok, long) = ("u".repeat(255), "u".repeat(256));
        let plain = |z: &str, c: &str, p: &str| decode_plain(format!("{z}\0{c}\0{p}").as_bytes());
        assert_eq!(plain("", &ok, "pw").unwrap().username, ok);
        assert_eq!(plain(&ok, "a", "pw").unwrap().authzid, ok);
        assert_eq!(plain("", &long, "pw"), Err(SaslError::Malformed));
        assert_eq!(plain(&long, "a", "pw"), Err(SaslError::Malformed));
        assert_eq!(plain("", "a", &long), Err(SaslError::Malformed));
        assert_eq!(decode_login_field(ok.as_bytes()).unwrap(), ok);
        assert_eq!(
            decode_login_field(long.as_bytes()),
            Err(SaslError::Malformed)
        );
    }

    #[test]
    fn base64_lines() {
        assert_eq!(decode_base64("AGEAYg==\r\n").unwrap(), b"\0a\0b");
        assert_eq!(decode_base64("*"), Err(SaslError::Cancelled));
        assert_eq!(decode_base64("="), Ok(vec![]));
        assert_eq!(decode_base64("not base64!"), Err(SaslError::Base64));
    }
}
