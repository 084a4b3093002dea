//! Postern's HTTP listener: the SendGrid-compatible `/v3` management API
//! (API keys, scopes, subusers, IP access), its OpenAPI document,
//! `/metrics` (Prometheus) and `/healthz`.

mod caller;
mod error;
pub mod http_listener;
pub mod scopes;
mod v3;

/// Per-input functions for the fuzz targets in `fuzz/` and their corpus
/// replay test; not an API.
#[doc(hidden)]
pub mod fuzzing {
    /// A `POST /v3/mail/send` body: parsed, validated and built as the
    /// route does, without queueing; panics on a property violation.
    /// Returns how many messages were built (0: the request was refused).
    pub fn mail_send(data: &[u8]) -> usize {
        crate::v3::fuzz_mail_send(data)
    }
}
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, HOST};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use postern_accounts::Authenticator;
use postern_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use error::ApiError;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub authenticator: Authenticator,
    pub metrics: Option<PrometheusHandle>,
    /// Wakes the delivery scheduler (after a retry-now).
    pub delivery_wakeup: Option<Arc<tokio::sync::Notify>>,
    /// Sends event webhooks (the settings routes check URLs with its
    /// policy; the test route posts through it).
    pub webhooks: Option<Arc<webhook::WebhookDispatcher>>,
    /// What sending domains' records depend on, and where they are looked up.
    pub domains: Option<DomainSupport>,
    /// Mails single senders their verification links.
    pub senders: Option<postern_mailauth::single_sender::SenderVerification>,
    /// The intake `/v3/mail/send` queues through.
    pub mail: Option<MailSupport>,
    /// Subsystems `/healthz` reports on, a line each after its first.
    pub health: Vec<Arc<dyn HealthDetail>>,
}

/// A subsystem's state for `/healthz`.
pub trait HealthDetail: Send + Sync {
    /// One line, e.g. "dane: active".
    fn line(&self) -> String;
    /// Whether the node is not doing work it should (mail held back): the
    /// first line then says "degraded" instead of "ok". The status stays
    /// 200: the process is alive, and restarting it would not help.
    fn degraded(&self) -> bool {
        false
    }
}

/// What `/v3/mail/send` needs from the node.
#[derive(Clone)]
pub struct MailSupport {
    pub intake: postern_queue::Intake,
    /// `limits.max_message_size`, applied to each built message.
    pub max_message_size: usize,
}

#[derive(Clone)]
pub struct DomainSupport {
    pub publishing: postern_mailauth::records::Publishing,
    pub dns: Arc<dyn postern_mailauth::check::RecordLookup>,
    /// How long a rotated-out DKIM selector stays published.
    pub rotation_overlap: std::time::Duration,
}

impl ApiState {
    pub fn wake_delivery(&self) {
        if let Some(n) = &self.delivery_wakeup {
            n.notify_one();
        }
    }
}

/// The API, `/healthz`, the OpenAPI document, and `/metrics` unless it has
/// a listener of its own.
pub fn router(state: ApiState, with_metrics: bool) -> Router {
    let mut r = Router::new()
        .route("/healthz", get(healthz))
        .route("/.well-known/mta-sts.txt", get(mta_sts_policy))
        .route("/v3/openapi.json", get(openapi))
        .merge(v3::routes());
    if with_metrics {
        r = r.route("/metrics", get(render_metrics));
    }
    r.with_state(state)
}

/// `/metrics` alone, for `http.metrics_address` (a listener that only the
/// monitoring network can reach).
pub fn metrics_router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .with_state(state)
}

async fn render_metrics(State(state): State<ApiState>) -> impl IntoResponse {
    let body = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// "ok" (or "degraded"), then a line per subsystem.
async fn healthz(State(state): State<ApiState>) -> impl IntoResponse {
    let degraded = state.health.iter().any(|h| h.degraded());
    let mut body = String::from(if degraded { "degraded\n" } else { "ok\n" });
    for h in &state.health {
        body.push_str(&h.line());
        body.push('\n');
    }
    ([(CONTENT_TYPE, "text/plain; charset=utf-8")], body)
}

/// `GET /.well-known/mta-sts.txt` (RFC 8461 §3.2): the policy of the
/// domain the request's Host names as `mta-sts.<domain>`, as text/plain
/// (§3.2: the media type is "text/plain"). Any other host, or a domain
/// without a policy, is 404: a sender then has no policy (§3.3), rather
/// than someone else's.
async fn mta_sts_policy(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let policy = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(postern_mailauth::mta_sts_policy::policy_domain_of_host)
        .and_then(|domain| {
            state
                .domains
                .as_ref()
                .and_then(|d| d.publishing.mta_sts.get(&domain).cloned())
        });
    match policy {
        Some(p) => {
            metrics::counter!("postern_mta_sts_policy_served_total").increment(1);
            ([(CONTENT_TYPE, "text/plain")], p.text).into_response()
        }
        None => {
            ApiError::new(StatusCode::NOT_FOUND, "no MTA-STS policy for this host").into_response()
        }
    }
}

async fn openapi() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "application/json")],
        include_str!("../openapi.json"),
    )
}

/// Serves `app` until `shutdown` turns true, within `limits`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: http_listener::HttpLimits,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(address = ?addr, ?limits, "HTTP listening");
    http_listener::serve_connections(listener, app, limits, shutdown).await
}
