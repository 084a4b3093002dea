//! `/v3/verified_senders`: single sender verification in SendGrid's shape.
//! Adding a sender mails it a one-time link; the link
//! (`GET /v3/verified_senders/verify/{token}`) needs no API key — the token,
//! 256 random bits that work once and expire, is the proof of ownership of
//! the mailbox, and whoever clicks it has no key.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use postern_mailauth::single_sender::{SenderError, SenderFields, SenderVerification};
use postern_store::SenderRecord;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::caller::Caller;
use crate::{ApiError, ApiState};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v3/verified_senders", get(list).post(create))
        .route("/v3/verified_senders/{id}", patch(update).delete(remove))
        .route("/v3/verified_senders/resend/{id}", post(resend))
        .route("/v3/verified_senders/verify/{token}", get(verify))
}

/// SendGrid's descriptive fields besides names and reply-to.
const DETAIL_FIELDS: &[&str] = &["address", "address2", "city", "state", "zip", "country"];

#[derive(Deserialize)]
struct SenderBody {
    from_email: Option<String>,
    nickname: Option<String>,
    from_name: Option<String>,
    reply_to: Option<String>,
    reply_to_name: Option<String>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

fn sender_json(s: &SenderRecord) -> Value {
    let mut v = json!({
        "id": s.id,
        "nickname": s.nickname,
        "from_email": s.address,
        "from_name": s.from_name,
        "reply_to": s.reply_to,
        "reply_to_name": s.reply_to_name,
        "verified": s.verified_at.is_some(),
        "locked": false,
    });
    if let (Ok(Value::Object(details)), Value::Object(out)) =
        (serde_json::from_str::<Value>(&s.details), &mut v)
    {
        for (k, val) in details {
            out.insert(k, val);
        }
    }
    v
}

fn details_of(rest: &Map<String, Value>) -> String {
    let kept: Map<String, Value> = rest
        .iter()
        .filter(|(k, v)| DETAIL_FIELDS.contains(&k.as_str()) && v.is_string())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Value::Object(kept).to_string()
}

fn verification(state: &ApiState) -> Result<&SenderVerification, ApiError> {
    state.senders.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "sender verification is not available on this node",
        )
    })
}

fn sender_error(e: SenderError) -> ApiError {
    match e {
        SenderError::BadAddress(_) => {
            ApiError::field(StatusCode::BAD_REQUEST, "from_email", e.to_string())
        }
        SenderError::Exists(_) => {
            ApiError::field(StatusCode::BAD_REQUEST, "from_email", e.to_string())
        }
        SenderError::NotFound => ApiError::not_found("verified sender"),
        SenderError::AlreadyVerified => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
        SenderError::TooSoon(_) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
        SenderError::Expired => ApiError::new(StatusCode::GONE, e.to_string()),
        SenderError::UnknownToken => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
        SenderError::Mail(_) | SenderError::Store(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

/// The sender, if it belongs to the caller's account ("not found" otherwise:
/// ids of other accounts are not revealed).
async fn owned(state: &ApiState, caller: &Caller, id: i64) -> Result<SenderRecord, ApiError> {
    match state.store.get_sender(id).await? {
        Some(s) if s.account == caller.account => Ok(s),
        _ => Err(ApiError::not_found("verified sender")),
    }
}

async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    Json(body): Json<SenderBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require("verified_senders.create")?;
    let Some(address) = body.from_email.filter(|a| !a.trim().is_empty()) else {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "from_email",
            "from_email is required",
        ));
    };
    let fields = SenderFields {
        address,
        nickname: body.nickname.unwrap_or_default(),
        from_name: body.from_name.unwrap_or_default(),
        reply_to: body.reply_to.unwrap_or_default(),
        reply_to_name: body.reply_to_name.unwrap_or_default(),
        details: details_of(&body.rest),
    };
    let created = verification(&state)?
        .add(&caller.account, fields)
        .await
        .map_err(sender_error)?;
    caller.audit(
        &state,
        "sender.add",
        format!("sender={} id={}", created.address, created.id),
    );
    Ok((StatusCode::CREATED, Json(sender_json(&created))))
}

async fn list(State(state): State<ApiState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require("verified_senders.read")?;
    let all = state
        .store
        .list_senders(Some(caller.account.clone()))
        .await?;
    Ok(Json(
        json!({ "results": all.iter().map(sender_json).collect::<Vec<_>>() }),
    ))
}

async fn update(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<i64>,
    Json(body): Json<SenderBody>,
) -> Result<Json<Value>, ApiError> {
    caller.require("verified_senders.update")?;
    let mut s = owned(&state, &caller, id).await?;
    if body
        .from_email
        .as_deref()
        .is_some_and(|a| !a.trim().eq_ignore_ascii_case(&s.address))
    {
        // Another address is another sender: it must prove itself anew.
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "from_email",
            "the address of a sender cannot change; add a new sender instead",
        ));
    }
    if let Some(v) = body.nickname {
        s.nickname = v;
    }
    if let Some(v) = body.from_name {
        s.from_name = v;
    }
    if let Some(v) = body.reply_to {
        s.reply_to = v;
    }
    if let Some(v) = body.reply_to_name {
        s.reply_to_name = v;
    }
    let mut details: Map<String, Value> = serde_json::from_str(&s.details).unwrap_or_default();
    if let Value::Object(new) =
        serde_json::from_str::<Value>(&details_of(&body.rest)).unwrap_or(Value::Null)
    {
        details.extend(new);
    }
    s.details = Value::Object(details).to_string();
    state.store.update_sender(s.clone()).await?;
    caller.audit(
        &state,
        "sender.update",
        format!("sender={} id={id}", s.address),
    );
    Ok(Json(sender_json(&s)))
}

async fn remove(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    caller.require("verified_senders.delete")?;
    let s = owned(&state, &caller, id).await?;
    state.store.delete_sender(id).await?;
    caller.audit(
        &state,
        "sender.remove",
        format!("sender={} id={id}", s.address),
    );
    Ok(StatusCode::NO_CONTENT)
}

async fn resend(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    caller.require("verified_senders.create")?;
    let s = owned(&state, &caller, id).await?;
    verification(&state)?.send(id).await.map_err(sender_error)?;
    caller.audit(
        &state,
        "sender.resend",
        format!("sender={} id={id}", s.address),
    );
    Ok(StatusCode::NO_CONTENT)
}

/// The link from the verification mail; no API key.
async fn verify(
    State(state): State<ApiState>,
    Path(token): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let verified = verification(&state)?
        .verify(&token)
        .await
        .map_err(sender_error)?;
    let store = state.store.clone();
    let entry = postern_store::AuditEntry {
        at: postern_core::time::now_millis(),
        kind: "sender.verify".into(),
        actor: format!("token:{}", verified.address),
        account: Some(verified.account.clone()),
        client_ip: None,
        detail: format!("sender={} id={}", verified.address, verified.id),
    };
    if let Err(e) = store.append_audit(entry).await {
        tracing::error!(error = %e, "audit append failed");
    }
    Ok(Json(json!({
        "verified": true,
        "from_email": verified.address,
        "message": format!("{} is now a verified sender", verified.address),
    })))
}
