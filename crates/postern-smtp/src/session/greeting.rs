//! The 220 greeting (RFC 5321 §4.3.1), or the 554 of a screened-out
//! client in its place (§3.1; crate::screen decides).

use tokio::io::{AsyncRead, AsyncWrite};

use super::Session;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// RFC 5321 §4.3.1: the greeting starts with our domain. RFC 2034 §3:
    /// the greeting (like replies to HELO and EHLO) carries no enhanced code.
    pub(crate) fn greet(&mut self) {
        if let Some(refusal) = &self.refusal {
            // RFC 5321 §3.1: 554 in place of the 220 refuses the client.
            refusal.write_to(&mut self.out);
            return;
        }
        let text = format!("220 {} ESMTP Postern\r\n", self.hostname());
        self.out.extend_from_slice(text.as_bytes());
    }
}
