//! AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN. Credentials are API keys
//! under the user name `apikey`, as SendGrid's clients send them.

use base64::Engine;
use postern_accounts::sasl::{self, Credentials, SaslError};
use postern_accounts::{oauth, LoginAttempt, Proof, Rejection};
use smtp_proto::{AUTH_CRAM_MD5, AUTH_LOGIN, AUTH_OAUTHBEARER, AUTH_PLAIN, AUTH_XOAUTH2};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Close, Session};
use crate::reply::{common, Reply};

/// Failed AUTH attempts on one connection before it is closed. (Counting
/// across connections, per network and per account is the brute-force
/// defence's job.)
const MAX_AUTH_FAILURES_PER_SESSION: usize = 3;

/// An AUTH exchange waiting for the client's next line.
pub enum AuthExchange {
    Plain,
    LoginUsername,
    LoginPassword {
        username: String,
    },
    CramMd5 {
        challenge: String,
    },
    XOAuth2,
    OAuthBearer,
    /// RFC 7628 §3.2.3: after the server's error challenge, the client sends
    /// one more line (a dummy), and only then gets the final 535.
    OAuthFailed,
}

impl AuthExchange {
    fn mechanism(&self) -> &'static str {
        match self {
            AuthExchange::Plain => "PLAIN",
            AuthExchange::LoginUsername | AuthExchange::LoginPassword { .. } => "LOGIN",
            AuthExchange::CramMd5 { .. } => "CRAM-MD5",
            AuthExchange::XOAuth2 => "XOAUTH2",
            AuthExchange::OAuthBearer | AuthExchange::OAuthFailed => "OAUTHBEARER",
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(crate) async fn auth_start(
        &mut self,
        mechanism: u64,
        initial: String,
    ) -> Result<(), Close> {
        if !matches!(
            self.listener.role,
            postern_core::config::ListenerRole::Submission
                | postern_core::config::ListenerRole::Submissions
        ) {
            return self.error(Reply::new(
                503,
                (5, 5, 1),
                "AUTH not available on this port",
            ));
        }
        if !self.auth_allowed() {
            // RFC 4954 §6: 538 when the mechanism needs an encrypted channel.
            // The credentials (if any were sent) are not even decoded.
            metrics::counter!("postern_auth_attempts_total", "outcome" => "plaintext_refused")
                .increment(1);
            return self.error(Reply::new(
                538,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism",
            ));
        }
        if self.conn.helo.is_none() {
            return self.error(common::bad_sequence("send EHLO first"));
        }
        if self.conn.principal.is_some() {
            return self.error(common::bad_sequence("already authenticated"));
        }
        if self.txn.is_some() {
            return self.error(common::bad_sequence(
                "AUTH not permitted during a mail transaction",
            ));
        }
        if mechanism & self.listener.auth_mechanisms == 0 {
            return self.error(Reply::new(
                504,
                (5, 5, 4),
                "Unrecognized authentication type",
            ));
        }
        match mechanism {
            AUTH_XOAUTH2 | AUTH_OAUTHBEARER if initial.is_empty() => {
                self.auth = Some(if mechanism == AUTH_XOAUTH2 {
                    AuthExchange::XOAuth2
                } else {
                    AuthExchange::OAuthBearer
                });
                self.challenge("");
            }
            AUTH_XOAUTH2 | AUTH_OAUTHBEARER => {
                let exchange = if mechanism == AUTH_XOAUTH2 {
                    AuthExchange::XOAuth2
                } else {
                    AuthExchange::OAuthBearer
                };
                match sasl::decode_base64(&initial) {
                    Ok(payload) => self.oauth_payload(exchange, &payload).await?,
                    Err(e) => self.sasl_error(e)?,
                }
            }
            AUTH_CRAM_MD5 => {
                // RFC 2195: the server speaks first; no initial response.
                let challenge = postern_accounts::cram_md5::challenge(self.hostname());
                let encoded = base64::engine::general_purpose::STANDARD.encode(&challenge);
                self.auth = Some(AuthExchange::CramMd5 { challenge });
                self.challenge(&encoded);
            }
            AUTH_PLAIN if initial.is_empty() => {
                self.auth = Some(AuthExchange::Plain);
                self.challenge("");
            }
            AUTH_PLAIN => {
                match sasl::decode_base64(&initial).and_then(|p| sasl::decode_plain(&p)) {
                    Ok(creds) => self.finish_auth(creds, "PLAIN").await?,
                    Err(e) => self.sasl_error(e)?,
                }
            }
            AUTH_LOGIN if initial.is_empty() => {
                self.auth = Some(AuthExchange::LoginUsername);
                self.challenge("VXNlcm5hbWU6"); // "Username:"
            }
            AUTH_LOGIN => {
                match sasl::decode_base64(&initial).and_then(|p| sasl::decode_login_field(&p)) {
                    Ok(username) => {
                        self.auth = Some(AuthExchange::LoginPassword { username });
                        self.challenge("UGFzc3dvcmQ6"); // "Password:"
                    }
                    Err(e) => self.sasl_error(e)?,
                }
            }
            _ => self.error(Reply::new(
                504,
                (5, 5, 4),
                "Unrecognized authentication type",
            ))?,
        }
        Ok(())
    }

    /// The client's answer to a 334 challenge.
    pub(crate) async fn auth_continue(&mut self, line: Vec<u8>) -> Result<(), Close> {
        let Some(exchange) = self.auth.take() else {
            return Ok(());
        };
        let text = String::from_utf8_lossy(&line);
        let payload = match sasl::decode_base64(&text) {
            Ok(p) => p,
            Err(e) => return self.sasl_error(e),
        };
        let mechanism = exchange.mechanism();
        match exchange {
            AuthExchange::Plain => match sasl::decode_plain(&payload) {
                Ok(creds) => self.finish_auth(creds, mechanism).await,
                Err(e) => self.sasl_error(e),
            },
            AuthExchange::LoginUsername => match sasl::decode_login_field(&payload) {
                Ok(username) => {
                    self.auth = Some(AuthExchange::LoginPassword { username });
                    self.challenge("UGFzc3dvcmQ6");
                    Ok(())
                }
                Err(e) => self.sasl_error(e),
            },
            AuthExchange::LoginPassword { username } => match sasl::decode_login_field(&payload) {
                Ok(secret) => {
                    self.finish_auth(
                        Credentials {
                            authzid: String::new(),
                            username,
                            secret,
                        },
                        mechanism,
                    )
                    .await
                }
                Err(e) => self.sasl_error(e),
            },
            AuthExchange::XOAuth2 | AuthExchange::OAuthBearer => {
                self.oauth_payload(exchange, &payload).await
            }
            AuthExchange::OAuthFailed => self.auth_failed("invalid"),
            AuthExchange::CramMd5 { challenge } => {
                // RFC 2195 §2: "user SP digest", the digest as 32 lowercase hex digits.
                let text = String::from_utf8_lossy(&payload).into_owned();
                let Some((username, digest)) = text.rsplit_once(' ') else {
                    return self.auth_failed("malformed");
                };
                if username.is_empty()
                    || digest.len() != 32
                    || !digest.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return self.auth_failed("malformed");
                }
                let creds = Credentials {
                    authzid: String::new(),
                    username: username.to_owned(),
                    secret: digest.to_owned(),
                };
                self.finish_auth_with(
                    creds,
                    mechanism,
                    Proof::CramMd5 {
                        challenge: &challenge,
                    },
                )
                .await
            }
        }
    }

    /// RFC 4954 §4: a 334 line carries only the base64 challenge.
    fn challenge(&mut self, b64: &str) {
        self.out
            .extend_from_slice(format!("334 {b64}\r\n").as_bytes());
    }

    fn sasl_error(&mut self, e: SaslError) -> Result<(), Close> {
        match e {
            // RFC 4954 §4: a cancelled exchange gets 501.
            SaslError::Cancelled => {
                self.error(Reply::new(501, (5, 0, 0), "Authentication cancelled"))
            }
            SaslError::Base64 => self.error(Reply::new(
                501,
                (5, 5, 2),
                "Invalid base64 in AUTH response",
            )),
            SaslError::Malformed => self.auth_failed("malformed"),
        }
    }

    async fn finish_auth(
        &mut self,
        creds: Credentials,
        mechanism: &'static str,
    ) -> Result<(), Close> {
        self.finish_auth_with(creds, mechanism, Proof::Secret).await
    }

    /// XOAUTH2 or OAUTHBEARER payload: a bearer token and the user it is for.
    async fn oauth_payload(&mut self, exchange: AuthExchange, payload: &[u8]) -> Result<(), Close> {
        let xoauth2 = matches!(exchange, AuthExchange::XOAuth2);
        let parsed = if xoauth2 {
            oauth::parse_xoauth2(payload)
        } else {
            oauth::parse_oauthbearer(payload)
        };
        let Some((user, token)) = parsed else {
            return self.auth_failed("malformed");
        };
        let creds = Credentials {
            authzid: String::new(),
            username: user,
            secret: token,
        };
        let mechanism = if xoauth2 { "XOAUTH2" } else { "OAUTHBEARER" };
        self.finish_auth_with(creds, mechanism, Proof::BearerToken)
            .await
    }

    async fn finish_auth_with(
        &mut self,
        creds: Credentials,
        mechanism: &'static str,
        proof: Proof<'_>,
    ) -> Result<(), Close> {
        let attempt = LoginAttempt {
            creds: &creds,
            ip: self.peer.ip(),
            mechanism,
            proof,
        };
        match self.ctx.authenticator.authenticate(&attempt).await {
            Ok(principal) => {
                tracing::info!(peer = %self.peer, account = %principal.account, key = %principal.key_id, "AUTH succeeded");
                self.conn.principal = Some(principal);
                self.reply(Reply::new(235, (2, 7, 0), "Authentication successful"));
                Ok(())
            }
            Err(Rejection::Blocked { reason }) => {
                tracing::info!(peer = %self.peer, reason, "AUTH refused: source blocked");
                self.reply(Reply::new(
                    454,
                    (4, 7, 0),
                    "Too many failed authentication attempts; try again later",
                ));
                self.reply(Reply::new(421, (4, 7, 0), "Closing connection"));
                Err(Close::Policy("blocked by brute-force defence"))
            }
            Err(Rejection::Temporary(e)) => {
                tracing::warn!(peer = %self.peer, error = %e, "AUTH: temporary failure");
                self.reply(Reply::new(
                    454,
                    (4, 7, 0),
                    "Temporary authentication failure",
                ));
                Ok(())
            }
            Err(Rejection::Invalid { reason, delay }) => {
                tracing::info!(peer = %self.peer, username = %postern_core::printable::Printable(&creds.username), reason, "AUTH failed");
                if !delay.is_zero() {
                    // Slow the guesser down; this session waits, nothing else does.
                    self.flush_quietly().await;
                    tokio::time::sleep(delay).await;
                }
                if matches!(proof, Proof::BearerToken) {
                    // RFC 7628 §3.2.2: the error goes out as a challenge;
                    // the 535 follows the client's next (dummy) line.
                    let json = oauth::failure_json(mechanism == "XOAUTH2");
                    let encoded = base64::engine::general_purpose::STANDARD.encode(json);
                    self.challenge(&encoded);
                    self.auth = Some(AuthExchange::OAuthFailed);
                    return Ok(());
                }
                self.auth_failed("invalid")
            }
        }
    }

    /// The same reply whatever was wrong, so a client cannot tell an unknown
    /// user from a wrong key.
    fn auth_failed(&mut self, _why: &'static str) -> Result<(), Close> {
        self.conn.auth_failures += 1;
        self.reply(Reply::new(
            535,
            (5, 7, 8),
            "Authentication credentials invalid",
        ));
        if self.conn.auth_failures >= MAX_AUTH_FAILURES_PER_SESSION {
            self.reply(Reply::new(
                421,
                (4, 7, 0),
                "Too many authentication failures, closing connection",
            ));
            return Err(Close::Policy("too many AUTH failures"));
        }
        Ok(())
    }
}
