//! /v3/suppression/bounces: the calling account's hard-bounced addresses.
//! Mail to them is dropped (event `dropped`) until they are removed here.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use postern_store::Suppression;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::caller::Caller;
use crate::{ApiError, ApiState};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v3/suppression/bounces", get(list).delete(remove_many))
        .route(
            "/v3/suppression/bounces/{email}",
            get(read).delete(remove_one),
        )
}

fn entry_json(s: &Suppression) -> Value {
    json!({"created": s.created_at / 1000, "email": s.address, "reason": s.reason, "status": s.status})
}

async fn list(State(state): State<ApiState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require("suppression.bounces.read")?;
    let all = state.store.suppressions(caller.account.clone()).await?;
    Ok(Json(Value::Array(all.iter().map(entry_json).collect())))
}

async fn read(
    State(state): State<ApiState>,
    caller: Caller,
    Path(email): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require("suppression.bounces.read")?;
    let all = state.store.suppressions(caller.account.clone()).await?;
    let found: Vec<Value> = all
        .iter()
        .filter(|s| s.address.eq_ignore_ascii_case(&email))
        .map(entry_json)
        .collect();
    Ok(Json(Value::Array(found)))
}

#[derive(Deserialize)]
struct RemoveBody {
    delete_all: Option<bool>,
    emails: Option<Vec<String>>,
}

async fn remove_many(
    State(state): State<ApiState>,
    caller: Caller,
    Json(body): Json<RemoveBody>,
) -> Result<StatusCode, ApiError> {
    caller.require("suppression.bounces.delete")?;
    if body.delete_all == Some(true) {
        let n = state.store.unsuppress(caller.account.clone(), None).await?;
        caller.audit(&state, "suppression.remove", format!("all ({n})"));
        return Ok(StatusCode::NO_CONTENT);
    }
    let Some(emails) = body.emails.filter(|e| !e.is_empty()) else {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "emails",
            "give emails, or delete_all: true",
        ));
    };
    for e in emails {
        if state
            .store
            .unsuppress(caller.account.clone(), Some(e.clone()))
            .await?
            > 0
        {
            caller.audit(&state, "suppression.remove", format!("email={e}"));
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_one(
    State(state): State<ApiState>,
    caller: Caller,
    Path(email): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require("suppression.bounces.delete")?;
    if state
        .store
        .unsuppress(caller.account.clone(), Some(email.clone()))
        .await?
        == 0
    {
        return Err(ApiError::not_found("suppression"));
    }
    caller.audit(&state, "suppression.remove", format!("email={email}"));
    Ok(StatusCode::NO_CONTENT)
}
