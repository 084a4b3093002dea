//! Single sender verification, for users who cannot edit DNS: an address is
//! added, Postern mails it a one-time link, and the address becomes a
//! verified sender when the link's token comes back. Tokens are 256 random
//! bits, stored only as their SHA-256, expire, work once, and a new mail
//! replaces the outstanding token; mails per address are rate-limited.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::rand::SecureRandom;
use base64::Engine;
use postern_queue::Intake;
use postern_store::{SendLimits, SenderRecord, SenderStore, StoreError, TokenIssue, TokenUse};

#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error("{0:?} is not an email address")]
    BadAddress(String),
    #[error("{0} is already a sender of this account")]
    Exists(String),
    #[error("no such sender")]
    NotFound,
    #[error("this sender is already verified")]
    AlreadyVerified,
    #[error("a verification mail was sent recently; try again in {0} s")]
    TooSoon(i64),
    #[error("this verification link has expired; ask for a new one")]
    Expired,
    #[error("this verification link is not valid (already used, replaced by a newer one, or never issued)")]
    UnknownToken,
    #[error("the verification mail could not be queued: {0}")]
    Mail(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// Descriptive fields of a sender, as SendGrid's API takes them.
#[derive(Debug, Clone, Default)]
pub struct SenderFields {
    pub address: String,
    pub nickname: String,
    pub from_name: String,
    pub reply_to: String,
    pub reply_to_name: String,
    /// The rest (postal address, company…) as a JSON object.
    pub details: String,
}

#[derive(Clone)]
pub struct SenderVerification {
    store: Arc<dyn SenderStore>,
    intake: Intake,
    /// The HTTP API's public base URL, for the link.
    base_url: String,
    /// From address of the verification mail.
    from: String,
    ttl: Duration,
    limits: SendLimits,
}

/// A fresh token: 256 random bits, base64url without padding (43
/// characters, safe in a URL path).
fn new_token() -> Result<String, SenderError> {
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| SenderError::Mail("no randomness".into()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

/// The SHA-256 of a token, as stored.
fn token_hash(token: &str) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

/// Checks the shape of an address (one `@`, a domain with a dot, no
/// spaces or brackets); the mail itself proves it works.
fn valid_address(address: &str) -> bool {
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && local.len() <= 64
                && postern_core::address::normalize_domain(domain).is_ok()
                && !address
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || "<>,;\"".contains(c))
        }
        None => false,
    }
}

impl SenderVerification {
    pub fn new(
        store: Arc<dyn SenderStore>,
        intake: Intake,
        base_url: String,
        from: String,
        ttl: Duration,
        limits: SendLimits,
    ) -> Self {
        SenderVerification {
            store,
            intake,
            base_url,
            from,
            ttl,
            limits,
        }
    }

    /// The link a sender's token is checked at.
    pub fn link(&self, token: &str) -> String {
        format!("{}/v3/verified_senders/verify/{token}", self.base_url)
    }

    /// Adds a sender to `account` and mails it a verification link.
    pub async fn add(
        &self,
        account: &str,
        fields: SenderFields,
    ) -> Result<SenderRecord, SenderError> {
        let address = fields.address.trim().to_ascii_lowercase();
        if !valid_address(&address) {
            return Err(SenderError::BadAddress(fields.address));
        }
        let now = postern_core::time::now_millis();
        let record = SenderRecord {
            id: 0,
            account: account.to_owned(),
            address: address.clone(),
            nickname: fields.nickname,
            from_name: fields.from_name,
            reply_to: fields.reply_to,
            reply_to_name: fields.reply_to_name,
            details: if fields.details.is_empty() {
                "{}".into()
            } else {
                fields.details
            },
            created_at: now,
            verified_at: None,
            token_hash: None,
            token_expires_at: None,
            last_sent_at: None,
            window_start: now,
            window_sends: 0,
        };
        let id = match self.store.add_sender(record).await {
            Err(StoreError::Conflict) => return Err(SenderError::Exists(address)),
            other => other?,
        };
        self.send(id).await?;
        self.store
            .get_sender(id)
            .await?
            .ok_or(SenderError::NotFound)
    }

    /// Mails a new link (replacing the outstanding one), within the limits.
    pub async fn send(&self, id: i64) -> Result<(), SenderError> {
        let Some(sender) = self.store.get_sender(id).await? else {
            return Err(SenderError::NotFound);
        };
        let token = new_token()?;
        let now = postern_core::time::now_millis();
        let expires_at = now + self.ttl.as_millis() as i64;
        match self
            .store
            .issue_sender_token(id, token_hash(&token), expires_at, now, self.limits)
            .await?
        {
            TokenIssue::Issued => {}
            TokenIssue::NotFound => return Err(SenderError::NotFound),
            TokenIssue::AlreadyVerified => return Err(SenderError::AlreadyVerified),
            TokenIssue::TooSoon { retry_at } => {
                metrics::counter!("postern_sender_verification_total", "outcome" => "rate_limited")
                    .increment(1);
                return Err(SenderError::TooSoon(((retry_at - now) / 1000).max(1)));
            }
        }
        let body = self.mail(&sender, &token, expires_at);
        self.intake
            .submit_generated(
                &sender.address,
                body,
                format!("sender verification for account={}", sender.account),
            )
            .await
            .map_err(|e| SenderError::Mail(e.to_string()))?;
        metrics::counter!("postern_sender_verification_total", "outcome" => "mailed").increment(1);
        tracing::info!(account = %sender.account, sender_id = id, "verification mail queued");
        Ok(())
    }

    /// Verifies the sender holding `token`.
    pub async fn verify(&self, token: &str) -> Result<SenderRecord, SenderError> {
        let now = postern_core::time::now_millis();
        let outcome = self.store.use_sender_token(token_hash(token), now).await?;
        let label = match &outcome {
            TokenUse::Verified(_) => "verified",
            TokenUse::Expired => "expired",
            TokenUse::Unknown => "unknown_token",
        };
        metrics::counter!("postern_sender_verification_total", "outcome" => label).increment(1);
        match outcome {
            TokenUse::Verified(s) => Ok(*s),
            TokenUse::Expired => Err(SenderError::Expired),
            TokenUse::Unknown => Err(SenderError::UnknownToken),
        }
    }

    fn mail(&self, sender: &SenderRecord, token: &str, expires_at: i64) -> Vec<u8> {
        let link = self.link(token);
        let text = format!(
            "Someone asked to send mail as {address} through the Postern server at {host}\r\n\
             (account \"{account}\").\r\n\r\n\
             If that was you, open this link to confirm:\r\n\r\n  {link}\r\n\r\n\
             The link works once, until {until}. If you did not ask for this,\r\n\
             ignore this mail: nothing will be sent as you.\r\n",
            address = sender.address,
            host = self.intake.hostname(),
            account = sender.account,
            until = postern_core::time::rfc3339(expires_at),
        );
        let message_id = format!(
            "{}.verify@{}",
            postern_core::MessageId::generate(),
            self.intake.hostname()
        );
        mail_builder::MessageBuilder::new()
            .from(("Postern", self.from.as_str()))
            .to(sender.address.as_str())
            .subject("Confirm your sender address")
            .message_id(message_id)
            .header(
                "Auto-Submitted",
                mail_builder::headers::raw::Raw::new("auto-generated"),
            )
            .text_body(text)
            .write_to_vec()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_shapes() {
        assert!(valid_address("alice@example.com"));
        assert!(valid_address("a.b+c@sub.example.co.uk"));
        assert!(!valid_address("alice"));
        assert!(!valid_address("@example.com"));
        assert!(!valid_address("a b@example.com"));
        assert!(!valid_address("a@example.com>\r\nBcc: x@y.z"));
        assert!(!valid_address("a@"));
    }

    #[test]
    fn tokens_are_stored_hashed() {
        // SHA-256 exactly: the FIPS 180-2 test vector for "abc" (appendix
        // B.1), so neither the token itself nor some other 32 bytes pass.
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let hex: String = token_hash("abc")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, abc);
    }

    #[test]
    fn tokens_are_256_random_bits_in_base64url() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let tokens: Vec<String> = (0..64).map(|_| new_token().unwrap()).collect();
        let raw: Vec<Vec<u8>> = tokens
            .iter()
            .map(|t| {
                assert_eq!(t.len(), 43, "{t}");
                assert!(t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
                URL_SAFE_NO_PAD.decode(t).unwrap()
            })
            .collect();
        assert!(raw.iter().all(|r| r.len() == 32));
        // Every byte position varies across the 64 tokens: a constant or
        // counter-like part would not (all 64 equal by chance at one of
        // 32 positions: 32 * 256^-63).
        for pos in 0..32 {
            assert!(raw.iter().any(|r| r[pos] != raw[0][pos]), "byte {pos}");
        }
    }
}
