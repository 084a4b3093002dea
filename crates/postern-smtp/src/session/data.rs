//! DATA (RFC 5321 §4.1.1.4). The message ends only at <CRLF>.<CRLF>; bare
//! CR and LF are caught here (see `crate::body`).

use postern_core::config::BareLineEndings;
use smtp_proto::request::receiver::DataReceiver;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Close, Session};
use crate::body::BareLineEndingScanner;
use crate::reply::{common, Reply};

/// The scratch buffer a refused body is read through.
const READ_SCRATCH: usize = 16 * 1024;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(crate) async fn data(&mut self) -> Result<(), Close> {
        let Some(txn) = &self.txn else {
            return self.error(common::bad_sequence("need MAIL before DATA"));
        };
        if txn.used_bdat {
            // RFC 3030 §2: DATA and BDAT are not mixed in one transaction.
            return self.error(common::bad_sequence("DATA after BDAT"));
        }
        if txn.envelope.recipients.is_empty() {
            return self.error(Reply::new(554, (5, 5, 1), "No valid recipients"));
        }
        self.out
            .extend_from_slice(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n");

        let max = self.ctx.config.limits.max_message_size;
        let mut receiver = DataReceiver::new();
        // RFC 5321 §4.1.1.4: the CRLF that ends the DATA command is the first
        // CRLF of "<CRLF>.<CRLF>", so an empty message is just ".\r\n", and a
        // first line starting with a dot is stuffed too. smtp-proto's receiver
        // starts as if mid-line; feeding it that CRLF (and dropping it) puts it
        // at the start of a line. Found by the `data_round_trip` fuzz target.
        receiver.ingest(&mut b"\r\n".iter(), &mut Vec::new());
        let mut scanner = BareLineEndingScanner::default();
        let mut body = Vec::new();
        // Set once the memory budget could not cover the body: the rest is
        // read (to stay in step with the client) and thrown away.
        let mut over_budget = false;
        let mut discarded = 0usize;
        loop {
            if !self.inbuf.is_empty() {
                // Grown by a quarter at a time, not doubled: the lease
                // covers the capacity, so what is counted is what is held.
                let need = self.inbuf.len();
                if !over_budget && body.capacity() - body.len() < need {
                    body.reserve_exact(need.max(body.len() / 4));
                }
                let mut iter = self.inbuf.iter();
                let before = iter.len();
                let done = receiver.ingest(&mut iter, &mut body);
                let consumed = before - iter.len();
                scanner.scan(&self.inbuf[..consumed]);
                self.inbuf.drain(..consumed);

                if scanner.found()
                    && self.ctx.config.smtp.bare_line_endings == BareLineEndings::Reject
                {
                    // The client's idea of where the message ends may differ
                    // from ours; nothing more from it can be trusted.
                    self.txn = None;
                    metrics::counter!("postern_smtp_rejected_total", "reason" => "bare_line_ending").increment(1);
                    tracing::warn!(peer = %self.peer, "bare CR or LF in DATA; closing");
                    self.reply(Reply::new(
                        554,
                        (5, 6, 11),
                        "Message contains a bare CR or LF; lines must end with CRLF. Closing connection",
                    ));
                    return Err(Close::Policy("bare CR/LF in DATA"));
                }
                if discarded.saturating_add(body.len()) > max {
                    self.txn = None;
                    metrics::counter!("postern_smtp_rejected_total", "reason" => "size")
                        .increment(1);
                    self.reply(Reply::new(
                        552,
                        (5, 3, 4),
                        format!("Message size exceeds fixed maximum message size of {max} octets. Closing connection"),
                    ));
                    return Err(Close::Policy("message too large"));
                }
                if !over_budget {
                    if let Some(txn) = self.txn.as_mut() {
                        if !txn.lease.cover(body.capacity()) {
                            over_budget = true;
                            txn.lease.release();
                            discarded = body.len();
                            metrics::counter!("postern_smtp_discarded_bytes_total")
                                .increment(body.len() as u64);
                            // From here on `body` is a scratch buffer of
                            // about one read, emptied after each.
                            body = Vec::with_capacity(READ_SCRATCH);
                        }
                    }
                }
                if over_budget {
                    metrics::counter!("postern_smtp_discarded_bytes_total")
                        .increment(body.len() as u64);
                    discarded += body.len();
                    // Cleared, not replaced: a fresh allocation per read
                    // (freed on whichever thread the task runs next) left
                    // the allocator holding pages for the whole body.
                    body.clear();
                }
                if done {
                    break;
                }
            }
            self.read_more(false).await?;
        }
        if over_budget {
            self.txn = None;
            metrics::counter!("postern_smtp_rejected_total", "reason" => "memory_budget")
                .increment(1);
            tracing::info!(peer = %self.peer, "memory budget for bodies spent; message refused for now");
            self.reply(common::insufficient_storage());
            return Ok(());
        }
        self.finish_body(body, scanner.found()).await;
        Ok(())
    }
}
