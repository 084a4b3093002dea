//! /v3/subusers: a top-level account's subusers, each with its own
//! credentials. Disabling one stops its credentials at once.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, patch};
use axum::{Json, Router};
use postern_accounts::password::check_policy;
use postern_store::{AccountRecord, AccountUpdate, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::caller::Caller;
use crate::{ApiError, ApiState};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v3/subusers", get(list).post(create))
        .route("/v3/subusers/{name}", patch(update).delete(remove))
}

#[derive(Deserialize)]
struct CreateSubuser {
    username: Option<String>,
    email: Option<String>,
    password: Option<String>,
    /// SendGrid's sending IPs. Accepted for compatibility; Postern's IP
    /// pools are configured separately (see the delivery engine).
    #[allow(dead_code)]
    ips: Option<Vec<String>>,
}

fn subuser_json(a: &AccountRecord) -> Value {
    json!({"id": a.name, "username": a.name, "email": a.email, "disabled": a.disabled})
}

async fn parent_account(state: &ApiState, caller: &Caller) -> Result<AccountRecord, ApiError> {
    let me = state
        .store
        .get_account(caller.account.clone())
        .await?
        .ok_or_else(|| ApiError::not_found("account"))?;
    if me.parent.is_some() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "subusers cannot have subusers",
        ));
    }
    Ok(me)
}

async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    Json(body): Json<CreateSubuser>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require("subusers.create")?;
    let parent = parent_account(&state, &caller).await?;
    let username = body.username.unwrap_or_default();
    if !postern_accounts::valid_account_name(&username) {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "username",
            postern_accounts::ACCOUNT_NAME_RULE,
        ));
    }
    let email = body.email.filter(|e| e.contains('@'));
    let password_hash = match body.password {
        Some(p) => {
            check_policy(&username, &p)
                .map_err(|e| ApiError::field(StatusCode::BAD_REQUEST, "password", e.to_string()))?;
            let phc = state
                .authenticator
                .password_hasher()
                .hash(p)
                .await
                .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
            Some(phc)
        }
        None => None,
    };
    let record = AccountRecord {
        id: 0,
        name: username.clone(),
        parent: Some(parent.name.clone()),
        disabled: false,
        // Basic auth stays off until an operator switches it on.
        allow_password_auth: false,
        password_hash,
        created_at: postern_core::time::now_millis(),
        email: email.clone(),
        cram_md5: None,
        max_messages_per_hour: None,
        ip_pool: None,
        sender_alignment: None,
        require_2fa_for_credentials: false,
    };
    match state.store.create_account(record).await {
        Ok(()) => {}
        Err(StoreError::Conflict) => {
            return Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                "username",
                "username exists",
            ))
        }
        Err(e) => return Err(e.into()),
    }
    caller.audit(&state, "subuser.create", format!("subuser={username}"));
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"username": username, "user_id": username, "email": email, "credit_allocation": {"type": "unlimited"}}),
        ),
    ))
}

#[derive(Deserialize)]
struct ListQuery {
    username: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require("subusers.read")?;
    let all = state.store.list_accounts().await?;
    let subs: Vec<Value> = all
        .iter()
        .filter(|a| a.parent.as_deref() == Some(caller.account.as_str()))
        .filter(|a| q.username.as_ref().is_none_or(|u| &a.name == u))
        .skip(q.offset.unwrap_or(0))
        .take(q.limit.unwrap_or(500))
        .map(subuser_json)
        .collect();
    Ok(Json(Value::Array(subs)))
}

async fn own_subuser(
    state: &ApiState,
    caller: &Caller,
    name: &str,
) -> Result<AccountRecord, ApiError> {
    match state.store.get_account(name.to_owned()).await? {
        Some(a) if a.parent.as_deref() == Some(caller.account.as_str()) => Ok(a),
        _ => Err(ApiError::not_found("subuser")),
    }
}

#[derive(Deserialize)]
struct UpdateSubuser {
    disabled: Option<bool>,
}

async fn update(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<UpdateSubuser>,
) -> Result<StatusCode, ApiError> {
    caller.require("subusers.update")?;
    own_subuser(&state, &caller, &name).await?;
    let Some(disabled) = body.disabled else {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "disabled",
            "expected {\"disabled\": true|false}",
        ));
    };
    state
        .store
        .update_account(
            name.clone(),
            AccountUpdate {
                disabled: Some(disabled),
                ..Default::default()
            },
        )
        .await?;
    caller.audit(
        &state,
        if disabled {
            "subuser.disable"
        } else {
            "subuser.enable"
        },
        format!("subuser={name}"),
    );
    Ok(StatusCode::NO_CONTENT)
}

async fn remove(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require("subusers.delete")?;
    own_subuser(&state, &caller, &name).await?;
    let Some(removed) = state.store.delete_account(name.clone()).await? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "subuser not found"));
    };
    // What went with it (keys, domains and their DKIM keys, senders,
    // queued mail, events, ...), so the audit log says what was retired.
    let removed: Vec<String> = removed
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(table, n)| format!("{table}:{n}"))
        .collect();
    caller.audit(
        &state,
        "subuser.delete",
        format!("subuser={name} removed={}", removed.join(",")),
    );
    Ok(StatusCode::NO_CONTENT)
}
