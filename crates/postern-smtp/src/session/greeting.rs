//! The 220 greeting (RFC 5321 §4.3.1).

use tokio::io::{AsyncRead, AsyncWrite};

use super::Session;
use crate::reply::Reply;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(crate) fn greet(&mut self) {
        let text = format!("{} ESMTP Postern", self.hostname());
        self.reply(Reply::new(220, (2, 0, 0), text));
    }
}
