//! /v3/api_keys: create (the secret is shown once), list, read, rename,
//! rescope, revoke. A key can only grant scopes its creator has.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use postern_store::{ApiKeyRecord, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::caller::Caller;
use crate::{scopes, ApiError, ApiState};
use postern_accounts::api_key::narrow_to_creator;

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v3/api_keys", get(list).post(create))
        .route(
            "/v3/api_keys/{id}",
            get(read).put(replace).patch(rename).delete(revoke),
        )
}

#[derive(Deserialize)]
struct CreateKey {
    name: Option<String>,
    scopes: Option<Vec<String>>,
    /// Postern extension: networks the key may be used from.
    allowed_ips: Option<Vec<String>>,
}

fn check_scopes(caller: &Caller, requested: &[String]) -> Result<(), ApiError> {
    let mine = scopes::expand(&caller.principal.scopes);
    for s in requested {
        if !scopes::is_known(s) {
            return Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                "scopes",
                format!("unknown scope {s:?}"),
            ));
        }
        let granted = if s == postern_core::principal::SCOPE_FULL_ACCESS {
            caller.principal.has_scope(s)
        } else {
            mine.contains(s)
        };
        if !granted {
            return Err(ApiError::field(
                StatusCode::FORBIDDEN,
                "scopes",
                format!("cannot grant {s:?}: the calling key does not have it"),
            ));
        }
    }
    Ok(())
}

fn valid_name(name: Option<String>) -> Result<String, ApiError> {
    match name {
        Some(n)
            if !n.trim().is_empty()
                && n.len() <= 100
                && !postern_core::printable::has_control(&n) =>
        {
            Ok(n)
        }
        _ => Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "name",
            "a name of 1 to 100 characters, without control characters, is required",
        )),
    }
}

async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    Json(body): Json<CreateKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require("api_keys.create")?;
    let name = valid_name(body.name)?;
    caller
        .require_second_factor_for_credentials(&state, "api_key.create")
        .await?;
    // SendGrid: a key created without scopes has the creator's full access.
    let requested = body
        .scopes
        .unwrap_or_else(|| caller.principal.scopes.clone());
    // An explicit empty list grants nothing the check below could refuse,
    // and the key store reads "no scopes" as full access: refused, or any
    // key allowed to create keys could mint a full-access one.
    if requested.is_empty() {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "scopes",
            "name at least one scope, or leave scopes out for the calling key's own",
        ));
    }
    check_scopes(&caller, &requested)?;
    let mut networks = Vec::new();
    for ip in body.allowed_ips.unwrap_or_default() {
        let net = postern_core::network::parse_network(&ip).ok_or_else(|| {
            ApiError::field(
                StatusCode::BAD_REQUEST,
                "allowed_ips",
                format!("{ip:?} is not an IP address or network"),
            )
        })?;
        networks.push(net);
    }
    // The new key gets no network or lifetime its creator lacks.
    let creator = state
        .store
        .list_api_keys(Some(caller.principal.account.clone()))
        .await?
        .into_iter()
        .find(|k| k.id == caller.principal.key_id);
    let (networks, expires_at) = match &creator {
        Some(c) => narrow_to_creator(c, networks, None)
            .map_err(|e| ApiError::field(StatusCode::FORBIDDEN, "allowed_ips", e.to_string()))?,
        // Not a stored key (a password login): nothing to narrow to.
        None => (networks.iter().map(|n| n.to_string()).collect(), None),
    };
    let issued = state
        .authenticator
        .api_keys()
        .create_restricted(
            state.store.as_ref(),
            &caller.account,
            &name,
            requested,
            expires_at,
            networks,
        )
        .await?;
    caller.audit(
        &state,
        "key.create",
        format!(
            "id={} name={name} scopes={}",
            issued.record.id,
            issued.record.scopes.join(",")
        ),
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "api_key": issued.secret,
            "api_key_id": issued.record.id,
            "name": issued.record.name,
            "scopes": issued.record.scopes,
            "allowed_ips": issued.record.networks,
        })),
    ))
}

async fn own_key(state: &ApiState, caller: &Caller, id: &str) -> Result<ApiKeyRecord, ApiError> {
    state
        .store
        .list_api_keys(Some(caller.account.clone()))
        .await?
        .into_iter()
        .find(|k| k.id == id && k.revoked_at.is_none())
        .ok_or_else(|| ApiError::not_found("API key"))
}

async fn list(State(state): State<ApiState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require("api_keys.read")?;
    let keys = state
        .store
        .list_api_keys(Some(caller.account.clone()))
        .await?;
    let result: Vec<Value> = keys
        .iter()
        .filter(|k| k.revoked_at.is_none())
        .map(|k| json!({"api_key_id": k.id, "name": k.name}))
        .collect();
    Ok(Json(json!({ "result": result })))
}

async fn read(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require("api_keys.read")?;
    let k = own_key(&state, &caller, &id).await?;
    Ok(Json(json!({"result": [{
        "api_key_id": k.id,
        "name": k.name,
        "scopes": k.scopes,
        "allowed_ips": k.networks,
        "last_used_at": k.last_used_at.map(|t| t / 1000),
    }]})))
}

async fn replace(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<CreateKey>,
) -> Result<Json<Value>, ApiError> {
    caller.require("api_keys.update")?;
    own_key(&state, &caller, &id).await?;
    let name = valid_name(body.name)?;
    let requested = body.scopes.unwrap_or_default();
    check_scopes(&caller, &requested)?;
    state
        .store
        .update_api_key(id.clone(), Some(name.clone()), Some(requested.clone()))
        .await?;
    caller.audit(
        &state,
        "key.update",
        format!("id={id} name={name} scopes={}", requested.join(",")),
    );
    Ok(Json(
        json!({"api_key_id": id, "name": name, "scopes": requested}),
    ))
}

async fn rename(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<CreateKey>,
) -> Result<Json<Value>, ApiError> {
    caller.require("api_keys.update")?;
    own_key(&state, &caller, &id).await?;
    let name = valid_name(body.name)?;
    state
        .store
        .update_api_key(id.clone(), Some(name.clone()), None)
        .await?;
    caller.audit(&state, "key.rename", format!("id={id} name={name}"));
    Ok(Json(json!({"api_key_id": id, "name": name})))
}

async fn revoke(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require("api_keys.delete")?;
    own_key(&state, &caller, &id).await?;
    match state
        .store
        .revoke_api_key(id.clone(), postern_core::time::now_millis())
        .await
    {
        Ok(true) => {}
        Ok(false) | Err(StoreError::NotFound) => return Err(ApiError::not_found("API key")),
        Err(e) => return Err(e.into()),
    }
    caller.audit(&state, "key.revoke", format!("id={id}"));
    Ok(StatusCode::NO_CONTENT)
}
