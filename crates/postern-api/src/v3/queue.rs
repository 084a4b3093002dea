//! /v3/queue: the calling account's messages still waiting for delivery
//! (Postern's own route; SendGrid has no such API). List, show, retry now,
//! delete (recipients are recorded `dropped`).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use postern_store::{QueueFilter, QueuedMessage};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::caller::Caller;
use crate::{ApiError, ApiState};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v3/queue", get(list))
        .route("/v3/queue/retry", post(retry_all))
        .route("/v3/queue/{id}", get(show).delete(delete))
        .route("/v3/queue/{id}/retry", post(retry_one))
}

#[derive(Deserialize)]
struct ListQuery {
    /// Only messages with a recipient waiting in this domain.
    domain: Option<String>,
    limit: Option<usize>,
}

async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require("queue.read")?;
    let messages = state
        .store
        .queued_messages(QueueFilter {
            account: Some(caller.account.clone()),
            with_subusers: true,
            domain: q.domain,
            limit: Some(q.limit.unwrap_or(100).min(10_000)),
        })
        .await?;
    let result: Vec<Value> = messages.iter().map(QueuedMessage::to_json).collect();
    Ok(Json(json!({ "messages": result })))
}

/// The message, if the caller's account (or a subuser of it) sent it. Any
/// other message is "not found": the caller learns nothing about it.
async fn owned(state: &ApiState, caller: &Caller, id: String) -> Result<QueuedMessage, ApiError> {
    let Some(m) = state.store.queued_message(id).await? else {
        return Err(ApiError::not_found("queued message"));
    };
    let owner = m.account.clone().unwrap_or_default();
    if owner == caller.account {
        return Ok(m);
    }
    let parent = state.store.get_account(owner).await?.and_then(|a| a.parent);
    if parent.as_deref() == Some(caller.account.as_str()) {
        Ok(m)
    } else {
        Err(ApiError::not_found("queued message"))
    }
}

async fn show(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require("queue.read")?;
    Ok(Json(owned(&state, &caller, id).await?.to_json()))
}

async fn retry_one(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require("queue.update")?;
    let m = owned(&state, &caller, id).await?;
    let now = postern_core::time::now_millis();
    let n = state
        .store
        .retry_now(Some(m.id.clone()), QueueFilter::default(), now)
        .await?;
    caller.audit(
        &state,
        "queue.retry",
        format!("message={} recipients={n}", m.id),
    );
    state.wake_delivery();
    Ok(Json(json!({ "recipients": n })))
}

async fn retry_all(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require("queue.update")?;
    let now = postern_core::time::now_millis();
    let filter = QueueFilter {
        account: Some(caller.account.clone()),
        with_subusers: true,
        domain: q.domain.clone(),
        limit: q.limit,
    };
    let n = state.store.retry_now(None, filter, now).await?;
    caller.audit(
        &state,
        "queue.retry",
        format!(
            "all domain={} recipients={n}",
            q.domain.as_deref().unwrap_or("*")
        ),
    );
    state.wake_delivery();
    Ok(Json(json!({ "recipients": n })))
}

async fn delete(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require("queue.delete")?;
    let m = owned(&state, &caller, id).await?;
    let now = postern_core::time::now_millis();
    let reason = format!("deleted from the queue by {}", caller.actor());
    let n = state.store.delete_queued(m.id.clone(), reason, now).await?;
    caller.audit(
        &state,
        "queue.delete",
        format!("message={} recipients={n}", m.id),
    );
    Ok(StatusCode::NO_CONTENT)
}
