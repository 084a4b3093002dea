//! EHLO and HELO (RFC 5321 §4.1.1.1), and the extensions Postern advertises.

use postern_core::config::ListenerRole;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Close, Session};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// Whether AUTH may be offered and used right now: only on submission
    /// listeners, and only once TLS is up unless the development override is
    /// set.
    pub(crate) fn auth_allowed(&self) -> bool {
        matches!(
            self.listener.role,
            ListenerRole::Submission | ListenerRole::Submissions
        ) && (self.tls.is_some() || self.listener.allow_plaintext_auth)
    }

    pub(crate) fn starttls_available(&self) -> bool {
        self.tls.is_none()
            && self.listener.tls.is_some()
            && self.listener.role != ListenerRole::Submissions
    }

    pub(crate) async fn ehlo(&mut self, host: String, extended: bool) -> Result<(), Close> {
        // RFC 5321 §4.1.4: EHLO/HELO resets any transaction in progress.
        self.txn = None;
        if self.check_helo {
            if let Some(screener) = self.listener.screen.clone() {
                let ip = self.peer.ip();
                if let Some(problem) = screener.check_helo(&host, ip) {
                    if let Some(reply) = crate::screen::helo_verdict(&screener, ip, &host, &problem)
                    {
                        // Refused: no name is recorded, so MAIL stays out
                        // of sequence until an acceptable HELO/EHLO.
                        self.conn.helo = None;
                        self.record_refusal(None, &reply).await;
                        return self.error(reply);
                    }
                }
            }
        }
        self.conn.helo = Some(host);
        self.conn.esmtp = extended;
        let greeting = format!("{} Hello [{}]", self.hostname(), self.peer.ip());
        if !extended {
            self.out
                .extend_from_slice(format!("250 {greeting}\r\n").as_bytes());
            return Ok(());
        }
        // EHLO replies are written by hand: smtp-proto's generator fixes its
        // own greeting text, and the keyword lines carry no status codes
        // (RFC 2034 §3 applies enhanced codes to other replies only).
        let mut lines = vec![
            greeting,
            "PIPELINING".to_owned(),
            format!("SIZE {}", self.ctx.config.limits.max_message_size),
            "8BITMIME".to_owned(),
            "SMTPUTF8".to_owned(),
            "ENHANCEDSTATUSCODES".to_owned(),
            "DSN".to_owned(),
            "CHUNKING".to_owned(),
            "HELP".to_owned(),
        ];
        if self.starttls_available() {
            lines.push("STARTTLS".to_owned());
        }
        if self.auth_allowed()
            && self.conn.principal.is_none()
            && self.listener.auth_mechanisms != 0
        {
            let mut names = Vec::new();
            for (bit, name) in [
                (smtp_proto::AUTH_PLAIN, "PLAIN"),
                (smtp_proto::AUTH_LOGIN, "LOGIN"),
                (smtp_proto::AUTH_CRAM_MD5, "CRAM-MD5"),
                (smtp_proto::AUTH_XOAUTH2, "XOAUTH2"),
                (smtp_proto::AUTH_OAUTHBEARER, "OAUTHBEARER"),
            ] {
                if self.listener.auth_mechanisms & bit != 0 {
                    names.push(name);
                }
            }
            lines.push(format!("AUTH {}", names.join(" ")));
        }
        let last = lines.len() - 1;
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            self.out
                .extend_from_slice(format!("250{sep}{line}\r\n").as_bytes());
        }
        Ok(())
    }
}
