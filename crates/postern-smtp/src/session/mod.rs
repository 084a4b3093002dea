//! One SMTP session: the I/O loop and command dispatch. Each phase of the
//! protocol has its own file beside this one.

mod auth;
mod bdat;
mod data;
mod ehlo;
mod greeting;
mod informational;
mod mail;
mod rcpt;
mod starttls;
mod transaction;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use postern_core::config::ListenerRole;
use postern_core::{Envelope, Principal};
use smtp_proto::Request;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::listener::{ListenerContext, SmtpContext};
use crate::reply::{common, Reply};

pub use auth::AuthExchange;

/// Bytes asked of the socket per read inside DATA/BDAT.
const READ_CHUNK: usize = 8192;
/// Bytes asked per read between commands: enough for a command line or a
/// pipelined group, small enough that an idle connection holds little.
const IDLE_READ_CHUNK: usize = 1024;
/// RFC 4954 §4: an AUTH continuation line may be up to 12288 octets.
const MAX_AUTH_LINE: usize = 12_288;
/// A read buffer this large while idle is given back to the allocator, so
/// idle connections stay small.
const IDLE_BUFFER_KEEP: usize = 1024;

/// Why a session stopped reading commands.
#[derive(Debug)]
pub enum Close {
    Quit,
    PeerGone,
    Timeout,
    Shutdown,
    /// A rule was broken and the connection is dropped after a final reply.
    Policy(&'static str),
    Io(std::io::Error),
}

/// How `run` ended: either the session is over, or the client asked for
/// STARTTLS and the stream must be wrapped before a fresh session starts.
pub enum SessionEnd<S> {
    Closed(Close),
    StartTls(S),
}

/// State that lasts for the whole connection (reset by STARTTLS, RFC 3207 §4.2).
#[derive(Default)]
pub(crate) struct ConnectionState {
    helo: Option<String>,
    esmtp: bool,
    principal: Option<Principal>,
    errors: usize,
    refused_recipients: usize,
    auth_failures: usize,
}

/// One mail transaction, from MAIL to the end of DATA/BDAT.
pub(crate) struct Transaction {
    envelope: Envelope,
    body: Vec<u8>,
    /// What the body holds of the shared memory budget (grown with it).
    lease: postern_queue::BodyLease,
    /// BDAT: a failure already decided; later chunks are read and dropped.
    failed: Option<Reply>,
    bare_scanner: crate::body::BareLineEndingScanner,
    used_bdat: bool,
}

pub struct Session<S> {
    stream: S,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    ctx: Arc<SmtpContext>,
    listener: Arc<ListenerContext>,
    peer: SocketAddr,
    /// "TLSv1.3 TLS13_…" once encrypted.
    tls: Option<String>,
    conn: ConnectionState,
    txn: Option<Transaction>,
    auth: Option<AuthExchange>,
    shutdown: watch::Receiver<bool>,
    /// Set while discarding the rest of an overlong line.
    discarding_line: bool,
    /// Screening refused the client: this replaces the greeting, and every
    /// command but QUIT is answered 503 (RFC 5321 §3.1).
    refusal: Option<Reply>,
    /// Screening asks for the HELO name to be checked (crate::screen).
    check_helo: bool,
    /// Names this session's `refused` events, made at the first one.
    session_id: Option<postern_core::MessageId>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub fn new(
        stream: S,
        ctx: Arc<SmtpContext>,
        listener: Arc<ListenerContext>,
        peer: SocketAddr,
        tls: Option<String>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Session {
            stream,
            inbuf: Vec::new(),
            out: Vec::new(),
            ctx,
            listener,
            peer,
            tls,
            conn: ConnectionState::default(),
            txn: None,
            auth: None,
            shutdown,
            discarding_line: false,
            refusal: None,
            check_helo: false,
            session_id: None,
        }
    }

    /// Records a refusal in the send log as a `refused` event (RFC-level
    /// detail: the reply the client got), for clients without AUTH on
    /// `mx` listeners: what an authenticated client is refused, it is told
    /// and its own account's business. `recipient`: the RCPT refused.
    pub(crate) async fn record_refusal(&mut self, recipient: Option<String>, reply: &Reply) {
        if self.listener.role != ListenerRole::Mx || self.conn.principal.is_some() {
            return;
        }
        let id = self
            .session_id
            .get_or_insert_with(postern_core::MessageId::generate)
            .clone();
        let mut detail = String::new();
        if let Some(helo) = &self.conn.helo {
            detail.push_str(&format!("helo={helo} "));
        }
        if let Some(txn) = &self.txn {
            detail.push_str(&format!("from=<{}> ", txn.envelope.mail_from));
        }
        detail.push_str(&reply.summary());
        self.ctx
            .intake
            .record_refusal(&id, self.peer.ip(), recipient, &detail)
            .await;
    }

    /// What screening decided (crate::screen::admit): a refusal to greet
    /// with, or whether the HELO name is checked. Kept across STARTTLS by
    /// passing it to the new session.
    pub fn screened(mut self, refusal: Option<Reply>, check_helo: bool) -> Self {
        self.refusal = refusal;
        self.check_helo = check_helo;
        self
    }

    /// Starts the session as if AUTH had already succeeded, so the fuzz
    /// harness (`crate::fuzzing`) reaches the authenticated states without
    /// a credential exchange in every input. Not reachable from the network.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn authenticated_as(mut self, principal: Principal) -> Self {
        self.conn.principal = Some(principal);
        self
    }

    /// Runs the session until it closes or STARTTLS hands the stream back.
    /// `greet` is false after STARTTLS, where no new greeting is sent.
    pub async fn run(mut self, greet: bool) -> SessionEnd<S> {
        if greet {
            self.greet();
        }
        let end = self.command_loop().await;
        match end {
            Ok(stream) => SessionEnd::StartTls(stream),
            Err((mut stream, out, close)) => {
                if !out.is_empty() {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), stream.write_all(&out)).await;
                }
                let _ = tokio::time::timeout(Duration::from_secs(5), stream.shutdown()).await;
                SessionEnd::Closed(close)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    async fn command_loop(mut self) -> Result<S, (S, Vec<u8>, Close)> {
        loop {
            match self.next_step().await {
                Ok(Step::Continue) => {}
                Ok(Step::StartTls) => {
                    if let Err(e) = self.flush().await {
                        return Err((self.stream, Vec::new(), Close::Io(e)));
                    }
                    // Anything the client pipelined after STARTTLS arrived in
                    // plaintext and must never be acted on (CVE-2011-0411).
                    if !self.inbuf.is_empty() {
                        metrics::counter!("postern_smtp_starttls_injection_total").increment(1);
                        tracing::warn!(peer = %self.peer, bytes = self.inbuf.len(),
                            "discarding plaintext pipelined after STARTTLS");
                    }
                    return Ok(self.stream);
                }
                Err(close) => {
                    tracing::debug!(peer = %self.peer, ?close, "session closed");
                    let out = std::mem::take(&mut self.out);
                    return Err((self.stream, out, close));
                }
            }
        }
    }

    /// Handles one complete line, or reads more input.
    async fn next_step(&mut self) -> Result<Step, Close> {
        if self.auth.is_some() {
            let Some(line) = self.take_line(MAX_AUTH_LINE)? else {
                self.read_more(true).await?;
                return Ok(Step::Continue);
            };
            // Boxed, like `dispatch` below: the command futures are large,
            // and unboxed they would make every idle session's future as
            // large as the largest of them.
            Box::pin(self.auth_continue(line)).await?;
            return Ok(Step::Continue);
        }
        // RFC 4954 §4: an AUTH command line, initial response included, may
        // be up to 12288 octets (OAuth tokens do not fit in 512).
        let limit = if self.inbuf.len() >= 5 && self.inbuf[..5].eq_ignore_ascii_case(b"AUTH ") {
            MAX_AUTH_LINE
        } else {
            self.ctx.config.limits.max_command_line
        };
        let Some(line) = self.take_line(limit)? else {
            self.read_more(true).await?;
            return Ok(Step::Continue);
        };
        Box::pin(self.dispatch(line)).await
    }

    /// Takes one CRLF-terminated line from the input buffer. Overlong lines
    /// are answered and skipped (RFC 5321 §4.5.3.1.4, §4.5.3.1.10).
    fn take_line(&mut self, max: usize) -> Result<Option<Vec<u8>>, Close> {
        let Some(lf) = self.inbuf.iter().position(|&b| b == b'\n') else {
            if self.inbuf.len() > max {
                // No end in sight: drop what we have and keep dropping until LF.
                self.inbuf.clear();
                if !self.discarding_line {
                    self.discarding_line = true;
                    self.error(Reply::new(500, (5, 5, 6), "Line too long"))?;
                }
            }
            return Ok(None);
        };
        let line: Vec<u8> = self.inbuf.drain(..=lf).collect();
        if self.discarding_line {
            self.discarding_line = false;
            return Ok(None);
        }
        if line.len() > max {
            self.error(Reply::new(500, (5, 5, 6), "Line too long"))?;
            return Ok(None);
        }
        if line.len() < 2 || line[line.len() - 2] != b'\r' {
            // RFC 5321 §2.3.8: lines end with CRLF; a bare LF is not a line end.
            self.error(Reply::new(
                500,
                (5, 5, 2),
                "Syntax error: line must end with CRLF",
            ))?;
            return Ok(None);
        }
        Ok(Some(line))
    }

    async fn dispatch(&mut self, line: Vec<u8>) -> Result<Step, Close> {
        if line.contains(&0) {
            self.error(Reply::new(
                500,
                (5, 5, 2),
                "Syntax error: NUL byte in command",
            ))?;
            return Ok(Step::Continue);
        }
        if std::str::from_utf8(&line).is_err() {
            self.error(Reply::new(
                500,
                (5, 5, 2),
                "Syntax error: invalid UTF-8 in command",
            ))?;
            return Ok(Step::Continue);
        }
        let request = match Request::parse(&mut line.iter()) {
            Ok(r) => r.into_owned(),
            Err(e) => {
                let reply = parse_error_reply(&e);
                self.error(reply)?;
                return Ok(Step::Continue);
            }
        };
        metrics::counter!("postern_smtp_commands_total", "command" => request.name()).increment(1);
        if self.refusal.is_some() && !matches!(request, Request::Quit) {
            // RFC 5321 §3.1: after a 554 greeting the server waits for QUIT
            // and answers anything else with 503.
            self.error(common::bad_sequence(
                "this connection was refused; send QUIT",
            ))?;
            return Ok(Step::Continue);
        }
        match request {
            Request::Ehlo { host } => self.ehlo(host, true).await?,
            Request::Helo { host } => self.ehlo(host, false).await?,
            Request::Lhlo { .. } => self.error(Reply::new(500, (5, 5, 1), "LHLO is for LMTP"))?,
            Request::StartTls => return self.starttls(),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth_start(mechanism, initial_response).await?,
            Request::Mail { from } => self.mail(from).await?,
            Request::Rcpt { to } => self.rcpt(to).await?,
            Request::Data => self.data().await?,
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last).await?,
            Request::Rset => self.rset(),
            Request::Noop { .. } => self.noop(),
            Request::Vrfy { .. } => self.vrfy(),
            Request::Help { .. } => self.help(),
            Request::Quit => {
                self.reply(Reply::new(
                    221,
                    (2, 0, 0),
                    format!("{} closing connection", self.ctx.config.server.hostname),
                ));
                return Err(Close::Quit);
            }
            Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => {
                self.error(Reply::new(502, (5, 5, 1), "Command not implemented"))?
            }
        }
        Ok(Step::Continue)
    }

    pub(crate) fn reply(&mut self, reply: Reply) {
        reply.write_to(&mut self.out);
    }

    /// A negative reply that counts towards `limits.max_errors`; past the
    /// limit the session is closed (RFC 5321 §4.3.2 allows 421 at any time).
    pub(crate) fn error(&mut self, reply: Reply) -> Result<(), Close> {
        self.conn.errors += 1;
        self.reply(reply);
        if self.conn.errors >= self.ctx.config.limits.max_errors {
            metrics::counter!("postern_smtp_sessions_closed_total", "reason" => "too_many_errors")
                .increment(1);
            self.reply(Reply::new(
                421,
                (4, 7, 0),
                "Too many errors, closing connection",
            ));
            return Err(Close::Policy("too many errors"));
        }
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            self.stream.write_all(&out).await?;
            self.stream.flush().await?;
            // Keep the allocation only while it is small.
            if out.capacity() <= IDLE_BUFFER_KEEP {
                self.out = out;
                self.out.clear();
            }
        }
        Ok(())
    }

    /// Flushes pending replies (RFC 2920: replies to a pipelined group may be
    /// sent together once the input runs dry), then reads more input.
    /// `idle` is true between commands, where a shutdown closes the session;
    /// inside DATA or BDAT the message is allowed to finish.
    pub(crate) async fn read_more(&mut self, idle: bool) -> Result<(), Close> {
        self.flush().await.map_err(Close::Io)?;
        let timeout = if idle {
            self.ctx.config.limits.command_timeout
        } else {
            self.ctx.config.limits.data_timeout
        };
        if idle && self.inbuf.is_empty() && self.inbuf.capacity() > IDLE_BUFFER_KEEP {
            self.inbuf = Vec::new();
        }
        let start = self.inbuf.len();
        let chunk = if idle { IDLE_READ_CHUNK } else { READ_CHUNK };
        self.inbuf.resize(start + chunk, 0);
        let mut shutdown = self.shutdown.clone();
        let result = tokio::select! {
            r = tokio::time::timeout(timeout, self.stream.read(&mut self.inbuf[start..])) => r,
            _ = shutdown.wait_for(|s| *s), if idle => {
                self.inbuf.truncate(start);
                self.reply(common::shutting_down(&self.ctx.config.server.hostname));
                return Err(Close::Shutdown);
            }
        };
        match result {
            Err(_) => {
                self.inbuf.truncate(start);
                metrics::counter!("postern_smtp_sessions_closed_total", "reason" => "timeout")
                    .increment(1);
                self.reply(Reply::new(
                    421,
                    (4, 4, 2),
                    "Timeout waiting for input, closing connection",
                ));
                Err(Close::Timeout)
            }
            Ok(Err(e)) => {
                self.inbuf.truncate(start);
                Err(Close::Io(e))
            }
            Ok(Ok(0)) => {
                self.inbuf.truncate(start);
                Err(Close::PeerGone)
            }
            Ok(Ok(n)) => {
                self.inbuf.truncate(start + n);
                Ok(())
            }
        }
    }

    pub(crate) fn hostname(&self) -> &str {
        &self.ctx.config.server.hostname
    }
}

pub(crate) enum Step {
    Continue,
    StartTls,
}

fn parse_error_reply(e: &smtp_proto::Error) -> Reply {
    use smtp_proto::Error as E;
    match e {
        E::UnknownCommand => Reply::new(500, (5, 5, 1), "Command unrecognized"),
        E::InvalidSenderAddress => Reply::new(501, (5, 1, 7), "Bad sender address syntax"),
        E::InvalidRecipientAddress => Reply::new(501, (5, 1, 3), "Bad recipient address syntax"),
        E::SyntaxError { syntax } => common::syntax(syntax),
        E::InvalidParameter { param } => {
            Reply::new(501, (5, 5, 4), format!("Invalid parameter {param}"))
        }
        E::UnsupportedParameter { param } => {
            Reply::new(555, (5, 5, 4), format!("Unsupported parameter {param}"))
        }
        E::ResponseTooLong => Reply::new(500, (5, 5, 6), "Line too long"),
        E::NeedsMoreData { .. } | E::InvalidResponse { .. } => common::syntax("incomplete command"),
    }
}
