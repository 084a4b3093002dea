//! The 220 greeting (RFC 5321 §4.3.1).

use tokio::io::{AsyncRead, AsyncWrite};

use super::Session;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// RFC 5321 §4.3.1: the greeting starts with our domain. RFC 2034 §3:
    /// the greeting (like replies to HELO and EHLO) carries no enhanced code.
    pub(crate) fn greet(&mut self) {
        let text = format!("220 {} ESMTP Postern\r\n", self.hostname());
        self.out.extend_from_slice(text.as_bytes());
    }
}
