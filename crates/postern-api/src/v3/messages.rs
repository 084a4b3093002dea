//! The send log over HTTP.
//!
//! `/v3/messages/{msg_id}` answers in the shape of SendGrid's Email Activity
//! message detail. `/v3/events` is Postern's own route: SendGrid's activity
//! search takes a query language Postern does not implement; plain query
//! parameters (recipient, kind, time range) cover the same questions.

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use postern_core::{Event, EventKind};
use postern_store::EventFilter;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::caller::Caller;
use crate::{ApiError, ApiState};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v3/events", get(search))
        .route("/v3/messages/{msg_id}", get(message))
}

#[derive(Deserialize)]
struct EventQuery {
    msg_id: Option<String>,
    to_email: Option<String>,
    /// Comma-separated kinds: processed, delivered, deferred, bounce, dropped.
    event: Option<String>,
    /// Unix seconds, inclusive.
    since: Option<i64>,
    /// Unix seconds, exclusive.
    until: Option<i64>,
    /// Most recent N (default 100, at most 10,000).
    limit: Option<usize>,
    /// Only events after this `seq` (oldest first): for paging forward.
    after: Option<i64>,
}

async fn search(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<EventQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require("messages.read")?;
    let kinds = match q.event.as_deref() {
        None | Some("") => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|k| k.trim().parse::<EventKind>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiError::field(axum::http::StatusCode::BAD_REQUEST, "event", e))?,
    };
    let events = state
        .store
        .events(EventFilter {
            message_id: q.msg_id,
            // The caller's account and its subusers: a parent sees what its
            // subusers sent, a subuser only its own.
            account: Some(caller.account.clone()),
            include_subusers: true,
            recipient: q.to_email,
            kinds,
            since: q.since.map(|s| s * 1000),
            until: q.until.map(|s| s * 1000),
            after_seq: q.after,
            limit: Some(q.limit.unwrap_or(100).min(10_000)),
        })
        .await?;
    let result: Vec<Value> = events.iter().map(Event::to_json).collect();
    Ok(Json(json!({ "events": result })))
}

async fn message(
    State(state): State<ApiState>,
    caller: Caller,
    Path(msg_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require("messages.read")?;
    let events = state
        .store
        .events(EventFilter {
            message_id: Some(msg_id.clone()),
            account: Some(caller.account.clone()),
            include_subusers: true,
            ..EventFilter::default()
        })
        .await?;
    if events.is_empty() {
        return Err(ApiError::not_found("message"));
    }
    let mut recipients: Vec<&str> = Vec::new();
    for r in events.iter().filter_map(|e| e.recipient.as_deref()) {
        if !recipients.contains(&r) {
            recipients.push(r);
        }
    }
    // The message's status is its latest recipient event's, as SendGrid's
    // activity feed shows it ("not_delivered" for bounce and dropped).
    let status = match events.last().map(|e| e.kind) {
        Some(EventKind::Delivered) => "delivered",
        Some(EventKind::Bounce | EventKind::Dropped) => "not_delivered",
        // Postern's own: held, waiting for a release or a deletion.
        Some(EventKind::Quarantined) => "quarantined",
        _ => "processing",
    };
    let from = events
        .iter()
        .find(|e| e.kind == EventKind::Processed)
        .and_then(|e| {
            e.detail
                .split_whitespace()
                .find_map(|w| w.strip_prefix("from=<"))
                .map(|f| f.trim_end_matches(['>', ',']).to_owned())
        });
    let detail: Vec<Value> = events
        .iter()
        .map(|e| {
            json!({
                "event_name": e.kind.as_str(),
                "processed": postern_core::time::rfc3339(e.at_millis),
                "email": e.recipient,
                "reason": e.detail,
                "mx_server": e.info.remote_host,
                "attempt_num": e.info.attempt,
                "tls": e.info.tls,
                "status": e.info.status,
                "bounce_classification": e.info.classification,
            })
        })
        .collect();
    Ok(Json(json!({
        "msg_id": msg_id,
        "from_email": from,
        "to_email": recipients.first(),
        "recipients": recipients,
        "status": status,
        "events": detail,
    })))
}
