//! BDAT / CHUNKING (RFC 3030). Chunks are counted in octets, so the stream
//! cannot be desynchronised; bare CR/LF are still refused because the next
//! hop may receive the message over DATA.

use postern_core::config::BareLineEndings;
use smtp_proto::request::receiver::BdatReceiver;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Close, Session};
use crate::reply::{common, Reply};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(crate) async fn bdat(&mut self, chunk_size: usize, is_last: bool) -> Result<(), Close> {
        let max = self.ctx.config.limits.max_message_size;
        let precheck = match &self.txn {
            None => Some(common::bad_sequence("need MAIL before BDAT")),
            Some(t) if t.envelope.recipients.is_empty() => {
                Some(Reply::new(554, (5, 5, 1), "No valid recipients"))
            }
            Some(_) => None,
        };
        let so_far = self.txn.as_ref().map_or(0, |t| t.body.len());
        if so_far.saturating_add(chunk_size) > max {
            // Reading an oversized chunk just to stay in step would let a
            // client make us read without end; close instead.
            self.txn = None;
            metrics::counter!("postern_smtp_rejected_total", "reason" => "size").increment(1);
            self.reply(Reply::new(
                552,
                (5, 3, 4),
                format!("Message size exceeds fixed maximum message size of {max} octets. Closing connection"),
            ));
            return Err(Close::Policy("BDAT too large"));
        }

        // The chunk's bytes go straight into the transaction's body when it
        // can take them: a valid transaction, nothing failed yet, and room
        // in the shared memory budget (claimed before reading, since the
        // size is declared). Otherwise they are read and dropped as they
        // arrive: bytes without a valid transaction (BDAT before MAIL or
        // AUTH) are counted, never buffered.
        let keep = precheck.is_none()
            && match self.txn.as_mut() {
                Some(t) if t.failed.is_none() => {
                    if t.lease.cover(t.body.len().saturating_add(chunk_size)) {
                        // Exactly the declared chunk: no doubling slack
                        // beyond what the lease covers.
                        t.body.reserve_exact(chunk_size);
                        true
                    } else {
                        metrics::counter!("postern_smtp_rejected_total", "reason" => "memory_budget")
                            .increment(1);
                        t.failed = Some(common::insufficient_storage());
                        t.body = Vec::new();
                        t.lease.release();
                        false
                    }
                }
                _ => false,
            };
        let start = self.txn.as_ref().map_or(0, |t| t.body.len());
        let mut sink = Vec::new();
        // RFC 3030 §2: the chunk is read whatever the reply will be.
        let mut receiver = BdatReceiver::new(chunk_size, is_last);
        loop {
            let mut iter = self.inbuf.iter();
            let before = iter.len();
            let out = match self.txn.as_mut() {
                Some(t) if keep => &mut t.body,
                _ => &mut sink,
            };
            let done = receiver.ingest(&mut iter, out);
            let consumed = before - iter.len();
            self.inbuf.drain(..consumed);
            if !sink.is_empty() {
                metrics::counter!("postern_smtp_discarded_bytes_total")
                    .increment(sink.len() as u64);
                sink.clear();
            }
            if done {
                break;
            }
            self.read_more(false).await?;
        }

        if let Some(reply) = precheck {
            return self.error(reply);
        }
        let Some(txn) = &mut self.txn else {
            return Ok(());
        };
        txn.used_bdat = true;
        if keep {
            let chunk = &txn.body[start..];
            txn.bare_scanner.scan(chunk);
        }
        let bare = if is_last {
            txn.bare_scanner.finish()
        } else {
            txn.bare_scanner.found()
        };
        if bare
            && self.ctx.config.smtp.bare_line_endings == BareLineEndings::Reject
            && txn.failed.is_none()
        {
            metrics::counter!("postern_smtp_rejected_total", "reason" => "bare_line_ending")
                .increment(1);
            txn.failed = Some(Reply::new(
                554,
                (5, 6, 11),
                "Message contains a bare CR or LF; lines must end with CRLF",
            ));
            txn.body = Vec::new();
            txn.lease.release();
        }
        if let Some(failed) = txn.failed.clone() {
            if is_last {
                self.txn = None;
            }
            return self.error(failed);
        }
        if !is_last {
            self.reply(Reply::new(
                250,
                (2, 0, 0),
                format!("{chunk_size} octets received"),
            ));
            return Ok(());
        }
        let body = std::mem::take(&mut txn.body);
        self.finish_body(body, bare).await;
        Ok(())
    }
}
