//! The HTTP listener's connections: how many, from whom, and for how long.
//!
//! `axum::serve` sets no header-read timeout and no connection cap, so a
//! client that sends half a request (slowloris) holds a socket and a task
//! for ever. This loop serves each connection with hyper directly:
//! - a deadline for each request head (hyper's header-read timeout, which
//!   also runs while a kept-alive connection waits for its next request,
//!   so it is the idle timeout as well);
//! - a deadline for each whole request, body upload and handler included
//!   (408 past it);
//! - a cap on connections in all and per client address: past either, new
//!   connections are closed at once, before anything is read.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::ApiError;

/// Limits of one HTTP listener (`[http]` in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// For the request line and headers, and for an idle kept-alive
    /// connection to start its next request.
    pub header_timeout: Duration,
    /// For a whole request: body upload and handling.
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// How long a shutdown waits for requests in progress
    /// (`server.shutdown_grace`).
    pub shutdown_grace: Duration,
}

impl HttpLimits {
    pub fn from_config(c: &postern_core::config::HttpConfig, shutdown_grace: Duration) -> Self {
        HttpLimits {
            shutdown_grace,
            header_timeout: c.header_timeout,
            request_timeout: c.request_timeout,
            max_connections: c.max_connections.max(1),
            max_connections_per_ip: c.max_connections_per_ip.max(1),
        }
    }
}

/// Connections open per client: an IPv4 address, or an IPv6 /64 (one
/// customer's allocation: counting single IPv6 addresses would let one
/// client take every slot).
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

/// One connection's place in the per-client count, given back on drop.
struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(_) => postern_core::network::counting_network(ip).network(),
    }
}

impl PerIp {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let ip = client_key(ip);
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = self.table.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Adds the whole-request deadline to a router.
pub fn with_request_timeout(app: Router, limit: Duration) -> Router {
    app.layer(axum::middleware::from_fn_with_state(
        limit,
        request_deadline,
    ))
}

async fn request_deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("postern_http_requests_timed_out_total").increment(1);
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request took longer than {} s to arrive and be handled",
                    limit.as_secs()
                ),
            )
            .into_response()
        }
    }
}

/// Serves `app` on `listener` until `shutdown` turns true, then lets
/// requests in progress finish for up to `limits.shutdown_grace` and closes the
/// connections still open after it: a client that keeps a request going
/// cannot hold the process past the grace. (A request cut there was never
/// answered; a message it was queueing is stored whole or not at all.)
pub async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = with_request_timeout(app, limits.request_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = Arc::new(PerIp::default());
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // Ended connections are reaped as we go, so the set holds only
        // live ones.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => (stream, postern_core::network::canonical_peer(peer)),
                Err(e) => {
                    // Out of file descriptors and the like: back off, not spin.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("postern_http_connections_refused_total", "reason" => "max_connections")
                .increment(1);
            tracing::debug!(%peer, "HTTP connection refused: listener full");
            continue;
        };
        let Some(ip_slot) = per_ip.take(peer.ip(), limits.max_connections_per_ip) else {
            metrics::counter!("postern_http_connections_refused_total", "reason" => "max_connections_per_ip")
                .increment(1);
            tracing::debug!(%peer, "HTTP connection refused: too many from this address");
            continue;
        };
        let (app, shutdown) = (app.clone(), shutdown.clone());
        connections.spawn(async move {
            serve_one(stream, peer, app, limits, shutdown).await;
            drop((slot, ip_slot));
        });
    }
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "HTTP connections still open after the grace period; closing them"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
    Ok(())
}

async fn serve_one(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        // What `into_make_service_with_connect_info` would add: handlers
        // read the client's address from it.
        req.extensions_mut().insert(ConnectInfo(peer));
        tower_service::Service::call(&mut app.clone(), req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    // A response waits for a client that stopped reading no longer than a
    // request head may take: one that pipelines requests and never reads
    // would otherwise hold its connection slot for ever.
    let stream = WriteStall::new(stream, limits.header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        // The guard `wait_for` returns is dropped inside: it is not Send.
        _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Timeouts and clients that go away are routine.
        tracing::debug!(%peer, error = %e, "HTTP connection ended");
    }
}

/// A stream whose writes fail once they have made no progress for
/// `limit` (the client stopped reading).
struct WriteStall<T> {
    inner: T,
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> WriteStall<T> {
    fn new(inner: T, limit: Duration) -> Self {
        WriteStall {
            inner,
            limit,
            timer: None,
        }
    }

    /// Ready(Err) once a pending write has waited too long.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(self.limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                metrics::counter!("postern_http_connections_closed_total", "reason" => "write_stall")
                    .increment(1);
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client stopped reading",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteStall<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteStall<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                self.timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.stalled(cx).map(|r| r.map(|()| 0)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(r) => {
                self.timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.stalled(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A peer that never reads: writes fail after the limit instead of
    /// waiting for ever.
    #[tokio::test]
    async fn writes_to_a_peer_that_stopped_reading_fail() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut s = WriteStall::new(ours, Duration::from_millis(200));
        let started = tokio::time::Instant::now();
        let err = s.write_all(&[0u8; 4096]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    /// A slow reader that keeps reading is not cut off.
    #[tokio::test]
    async fn progress_resets_the_limit() {
        use tokio::io::AsyncReadExt;
        let (ours, mut theirs) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut total = 0;
            while total < 4096 {
                tokio::time::sleep(Duration::from_millis(2)).await;
                total += theirs.read(&mut buf).await.unwrap();
            }
            total
        });
        // Each read comes long before the limit; the whole write takes
        // far longer than it.
        let mut s = WriteStall::new(ours, Duration::from_millis(50));
        s.write_all(&[0u8; 4096]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 4096);
    }

    /// A request still running when the grace ends is cut: the listener
    /// returns and the client sees its connection closed, so no client can
    /// hold the process open.
    #[tokio::test]
    async fn connections_are_closed_when_the_grace_ends() {
        use tokio::io::AsyncReadExt;
        let app = Router::new().route(
            "/hang",
            axum::routing::get(std::future::pending::<&'static str>),
        );
        let limits = HttpLimits {
            header_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(600),
            max_connections: 8,
            max_connections_per_ip: 8,
            shutdown_grace: Duration::from_millis(300),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        let server = tokio::spawn(serve_connections(listener, app, limits, rx));
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // The request is in its handler once the server accepted it;
        // nothing comes back while it hangs (50 ms is ample on loopback).
        let mut buf = [0u8; 64];
        assert!(
            tokio::time::timeout(Duration::from_millis(50), client.read(&mut buf))
                .await
                .is_err(),
            "the handler answered"
        );
        let started = tokio::time::Instant::now();
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the listener outlived its grace")
            .unwrap()
            .unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "waited the grace"
        );
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("the connection was left open after the grace")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
    }

    #[test]
    fn ipv6_clients_are_counted_by_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(client_key(v4), v4);
    }
}
