//! STARTTLS (RFC 3207). The handshake itself happens in the listener, which
//! then starts a fresh session on the encrypted stream (RFC 3207 §4.2: all
//! state from before is forgotten).

use tokio::io::{AsyncRead, AsyncWrite};

use super::{Close, Session, Step};
use crate::reply::Reply;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(crate) fn starttls(&mut self) -> Result<Step, Close> {
        if self.tls.is_some() {
            self.error(Reply::new(503, (5, 5, 1), "TLS already active"))?;
            return Ok(Step::Continue);
        }
        if !self.starttls_available() {
            self.error(Reply::new(454, (4, 7, 0), "TLS not available"))?;
            return Ok(Step::Continue);
        }
        self.reply(Reply::new(220, (2, 0, 0), "Ready to start TLS"));
        Ok(Step::StartTls)
    }
}
