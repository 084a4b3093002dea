//! /v3/quarantine: inbound mail held for a decision, for the account that
//! holds the recipients' domain verified (Postern's own route; SendGrid
//! has no quarantine). A caller sees and acts on its own recipients and
//! its subusers' only; any other held message is "not found", so an id
//! tells nothing about another tenant's mail. Recipients whose domain no
//! account holds are the operator's (`postern quarantine`).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use postern_queue::quarantine;
use postern_store::{QuarantineFilter, QuarantinedMessage, QuarantinedRecipient};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::caller::Caller;
use crate::{ApiError, ApiState};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v3/quarantine", get(list))
        .route("/v3/quarantine/{id}", get(show).delete(delete))
        .route("/v3/quarantine/{id}/release", post(release))
}

/// What the caller may see: its account's recipients and its subusers'.
fn scope(caller: &Caller, limit: Option<usize>) -> QuarantineFilter {
    QuarantineFilter {
        account: Some(caller.account.clone()),
        with_subusers: true,
        limit,
    }
}

fn not_found() -> ApiError {
    ApiError::not_found("quarantined message")
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require("quarantine.read")?;
    let held = state
        .store
        .quarantined(scope(&caller, Some(q.limit.unwrap_or(100).min(10_000))))
        .await?;
    let result: Vec<Value> = held.iter().map(QuarantinedMessage::to_json).collect();
    Ok(Json(json!({ "messages": result })))
}

async fn show(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require("quarantine.read")?;
    let (Some(m), Some(raw)) = (
        state
            .store
            .quarantined_message(id.clone(), scope(&caller, None))
            .await?,
        state
            .store
            .quarantined_body(id, scope(&caller, None))
            .await?,
    ) else {
        return Err(not_found());
    };
    let mut v = m.to_json();
    v["preview"] = quarantine::preview(&raw).to_json();
    Ok(Json(v))
}

#[derive(Deserialize)]
struct RecipientQuery {
    /// Only this recipient (of the caller's); default: all of them.
    recipient: Option<String>,
}

fn addresses(rs: &[QuarantinedRecipient]) -> Vec<&str> {
    rs.iter().map(|r| r.address.as_str()).collect()
}

async fn release(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<RecipientQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require("quarantine.update")?;
    let now = postern_core::time::now_millis();
    let detail = format!("released from quarantine by {}", caller.actor());
    let released = state
        .store
        .release_quarantined(id.clone(), scope(&caller, None), q.recipient, now, detail)
        .await?;
    if released.is_empty() {
        return Err(not_found());
    }
    caller.audit(
        &state,
        "quarantine.release",
        format!("message={id} recipients={}", addresses(&released).join(",")),
    );
    quarantine::refresh_metrics(state.store.as_ref()).await;
    state.wake_delivery();
    Ok(Json(json!({ "released": addresses(&released) })))
}

async fn delete(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<RecipientQuery>,
) -> Result<StatusCode, ApiError> {
    caller.require("quarantine.delete")?;
    let now = postern_core::time::now_millis();
    let reason = format!("deleted from quarantine by {}", caller.actor());
    let deleted = state
        .store
        .delete_quarantined(id.clone(), scope(&caller, None), q.recipient, now, reason)
        .await?;
    if deleted.is_empty() {
        return Err(not_found());
    }
    caller.audit(
        &state,
        "quarantine.delete",
        format!("message={id} recipients={}", addresses(&deleted).join(",")),
    );
    quarantine::refresh_metrics(state.store.as_ref()).await;
    Ok(StatusCode::NO_CONTENT)
}
