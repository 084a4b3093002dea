//! NOOP, VRFY and HELP: commands that change nothing.

use tokio::io::{AsyncRead, AsyncWrite};

use super::Session;
use crate::reply::Reply;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(crate) fn noop(&mut self) {
        self.reply(Reply::new(250, (2, 0, 0), "OK"));
    }

    /// RFC 5321 §3.5.3: 252 says neither yes nor no, so VRFY cannot be used
    /// to find out which addresses exist.
    pub(crate) fn vrfy(&mut self) {
        self.reply(Reply::new(
            252,
            (2, 5, 0),
            "Cannot VRFY user, but will accept message and attempt delivery",
        ));
    }

    pub(crate) fn help(&mut self) {
        self.reply(Reply::new(
            214,
            (2, 0, 0),
            "Postern: commands EHLO HELO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT\n\
             Submission: STARTTLS, then AUTH PLAIN or LOGIN with user \"apikey\" and an API key",
        ));
    }
}
