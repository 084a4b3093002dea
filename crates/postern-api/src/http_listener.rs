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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::ApiError;

/// How long a graceful shutdown waits for requests in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
}

impl HttpLimits {
    pub fn from_config(c: &postern_core::config::HttpConfig) -> Self {
        HttpLimits {
            header_timeout: c.header_timeout,
            request_timeout: c.request_timeout,
            max_connections: c.max_connections.max(1),
            max_connections_per_ip: c.max_connections_per_ip.max(1),
        }
    }
}

/// Connections open per client address.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

/// One connection's place in the per-address count, given back on drop.
struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
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
/// requests in progress finish (for up to `SHUTDOWN_GRACE`).
pub async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = with_request_timeout(app, limits.request_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = Arc::new(PerIp::default());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
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
        tokio::spawn(async move {
            serve_one(stream, peer, app, limits, shutdown).await;
            drop((slot, ip_slot));
        });
    }
    // Every slot back means every connection has ended.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all)).await;
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
