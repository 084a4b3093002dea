//! /v3/audit: the audit log of the calling account and its subusers
//! (Postern's own route). Needs a full-access key.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use postern_store::AuditFilter;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::caller::Caller;
use crate::{ApiError, ApiState};

pub fn routes() -> Router<ApiState> {
    Router::new().route("/v3/audit", get(list))
}

#[derive(Deserialize)]
struct AuditQuery {
    /// The account or one of its subusers (default: the calling account).
    account: Option<String>,
    /// A kind, or a prefix ending in "." (`auth.`).
    kind: Option<String>,
    /// Unix seconds.
    since: Option<i64>,
    until: Option<i64>,
    limit: Option<usize>,
}

async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(postern_core::principal::SCOPE_FULL_ACCESS)?;
    let account = q.account.unwrap_or_else(|| caller.account.clone());
    if account != caller.account {
        let sub = state.store.get_account(account.clone()).await?;
        if sub.and_then(|a| a.parent).as_deref() != Some(caller.account.as_str()) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "not an account you manage",
            ));
        }
    }
    let records = state
        .store
        .audit(AuditFilter {
            account: Some(account),
            kind: q.kind,
            since: q.since.map(|s| s * 1000),
            until: q.until.map(|s| s * 1000),
            limit: Some(q.limit.unwrap_or(500).min(10_000)),
        })
        .await?;
    let result: Vec<Value> = records.iter().map(|r| r.to_json()).collect();
    Ok(Json(json!({ "result": result })))
}
