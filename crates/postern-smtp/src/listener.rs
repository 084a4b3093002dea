//! Accept loops: one per configured listener. Each connection is checked
//! against the connection limits, then runs a session; STARTTLS and implicit
//! TLS (RFC 8314) wrap the stream here.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use postern_accounts::Authenticator;
use postern_core::config::ListenerRole;
use postern_core::Config;
use postern_queue::Intake;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::limits::{ConnectionGuard, ConnectionLimiter, LimitExceeded};
use crate::session::{Session, SessionEnd};

/// What every session shares.
pub struct SmtpContext {
    pub config: Arc<Config>,
    pub relay_domains: HashSet<String>,
    pub intake: Intake,
    pub authenticator: Authenticator,
    pub limiter: Arc<ConnectionLimiter>,
    /// Which recipients at relay domains the `mx` listener takes.
    pub recipients: Arc<dyn crate::recipients::RecipientVerifier>,
}

/// One listener's settings.
pub struct ListenerContext {
    pub role: ListenerRole,
    pub address: SocketAddr,
    pub tls: Option<TlsAcceptor>,
    pub allow_plaintext_auth: bool,
    /// smtp-proto `AUTH_*` bits of the mechanisms offered here.
    pub auth_mechanisms: u64,
    /// Screening before the greeting (crate::screen): given to `mx`
    /// listeners only; a submission listener's is ignored.
    pub screen: Option<Arc<crate::screen::Screener>>,
}

/// Turns configured mechanism names into smtp-proto's bits; unknown names
/// were refused when the config was validated.
pub fn mechanism_bits(names: &[String]) -> u64 {
    names.iter().fold(0, |bits, n| {
        bits | match n.to_ascii_uppercase().as_str() {
            "PLAIN" => smtp_proto::AUTH_PLAIN,
            "LOGIN" => smtp_proto::AUTH_LOGIN,
            "CRAM-MD5" => smtp_proto::AUTH_CRAM_MD5,
            "XOAUTH2" => smtp_proto::AUTH_XOAUTH2,
            "OAUTHBEARER" => smtp_proto::AUTH_OAUTHBEARER,
            _ => 0,
        }
    })
}

impl ListenerContext {
    fn role_name(&self) -> &'static str {
        match self.role {
            ListenerRole::Submission => "submission",
            ListenerRole::Submissions => "submissions",
            ListenerRole::Mx => "mx",
        }
    }
}

/// Accepts connections until `shutdown` turns true.
pub async fn serve_listener(
    listener: TcpListener,
    lctx: Arc<ListenerContext>,
    ctx: Arc<SmtpContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    if lctx.allow_plaintext_auth {
        tracing::warn!(address = %lctx.address,
            "DEVELOPMENT OVERRIDE: AUTH is offered before TLS on this listener; credentials can be read off the wire");
    }
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok((stream, peer)) => (stream, postern_core::network::canonical_peer(peer)),
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let guard = match ctx.limiter.acquire(peer.ip()) {
            Ok(g) => g,
            Err(why) => {
                let reason = match why {
                    LimitExceeded::Total => "max_connections",
                    LimitExceeded::PerIp => "max_connections_per_ip",
                };
                metrics::counter!("postern_smtp_connections_refused_total", "reason" => reason)
                    .increment(1);
                tracing::info!(peer = %peer, reason, "connection refused");
                if lctx.role != ListenerRole::Submissions {
                    let mut stream = stream;
                    tokio::spawn(async move {
                        let _ = stream
                            .write_all(b"421 4.7.0 Too many connections, try again later\r\n")
                            .await;
                    });
                }
                continue;
            }
        };
        metrics::counter!("postern_smtp_connections_total", "listener" => lctx.role_name())
            .increment(1);
        let (lctx, ctx, shutdown) = (lctx.clone(), ctx.clone(), shutdown.clone());
        tokio::spawn(async move {
            handle_connection(stream, peer, lctx, ctx, shutdown, guard).await;
        });
    }
    tracing::info!(address = %lctx.address, "listener stopped");
}

async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    lctx: Arc<ListenerContext>,
    ctx: Arc<SmtpContext>,
    shutdown: watch::Receiver<bool>,
    _guard: ConnectionGuard,
) {
    let _ = stream.set_nodelay(true);
    if lctx.role == ListenerRole::Submissions {
        // RFC 8314 §3.3: TLS from the first byte.
        if let Some(tls) = handshake(stream, peer, &lctx, &ctx).await {
            let (tls_stream, desc) = tls;
            let session = Session::new(tls_stream, ctx, lctx, peer, Some(desc), shutdown);
            let _ = session.run(true).await;
        }
        return;
    }
    let mut stream = stream;
    let (refusal, check_helo) = match lctx.screen.as_ref() {
        Some(screener) if lctx.role == ListenerRole::Mx => {
            match crate::screen::admit(screener, &mut stream, peer.ip()).await {
                crate::screen::Admission::Pass { check_helo } => (None, check_helo),
                crate::screen::Admission::Refuse(reply) => {
                    // The session this refusal starts records nothing
                    // more (every command but QUIT gets 503): this is its
                    // event.
                    ctx.intake
                        .record_refusal(
                            &postern_core::MessageId::generate(),
                            peer.ip(),
                            None,
                            &reply.summary(),
                        )
                        .await;
                    (Some(reply), false)
                }
                crate::screen::Admission::Drop(reply) => {
                    if let Some(reply) = reply {
                        ctx.intake
                            .record_refusal(
                                &postern_core::MessageId::generate(),
                                peer.ip(),
                                None,
                                &reply.summary(),
                            )
                            .await;
                        let mut out = Vec::new();
                        reply.write_to(&mut out);
                        let _ = tokio::time::timeout(
                            std::time::Duration::from_secs(5),
                            stream.write_all(&out),
                        )
                        .await;
                    }
                    let _ = stream.shutdown().await;
                    return;
                }
            }
        }
        _ => (None, false),
    };
    let session = Session::new(
        stream,
        ctx.clone(),
        lctx.clone(),
        peer,
        None,
        shutdown.clone(),
    )
    .screened(refusal, check_helo);
    match session.run(true).await {
        SessionEnd::Closed(_) => {}
        SessionEnd::StartTls(stream) => {
            if let Some((tls_stream, desc)) = handshake(stream, peer, &lctx, &ctx).await {
                // The screening's verdict holds for the whole connection.
                let session = Session::new(tls_stream, ctx, lctx, peer, Some(desc), shutdown)
                    .screened(None, check_helo);
                // No new greeting after STARTTLS (RFC 3207 §4.2).
                let _ = session.run(false).await;
            }
        }
    }
}

async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    lctx: &ListenerContext,
    ctx: &SmtpContext,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, String)> {
    let acceptor = lctx.tls.as_ref()?;
    let timeout = ctx.config.limits.tls_handshake_timeout;
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let desc = crate::tls::describe(tls.get_ref().1);
            let version = desc.split(' ').next().unwrap_or("TLS").to_owned();
            let group = crate::tls::key_exchange_group(tls.get_ref().1);
            metrics::counter!("postern_smtp_tls_sessions_total", "version" => version, "group" => group.clone()).increment(1);
            tracing::debug!(peer = %peer, tls = %desc, group = %group, "TLS established");
            Some((tls, desc))
        }
        Ok(Err(e)) => {
            metrics::counter!("postern_smtp_tls_failures_total", "reason" => "handshake")
                .increment(1);
            tracing::info!(peer = %peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            metrics::counter!("postern_smtp_tls_failures_total", "reason" => "timeout")
                .increment(1);
            tracing::info!(peer = %peer, "TLS handshake timed out");
            None
        }
    }
}
