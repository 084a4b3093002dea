//! SendGrid's event webhook settings for the calling account:
//! `/v3/user/webhooks/event/settings` (URL and which events),
//! `/settings/signed` (the verification key) and `/test`.
//!
//! Postern has no open or click tracking, so `open`, `click`,
//! `spam_report`, `unsubscribe`, `group_unsubscribe` and `group_resubscribe`
//! are accepted and always reported false.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use postern_core::{AttemptInfo, Event, EventKind};
use postern_store::WebhookRecord;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::caller::Caller;
use crate::webhook::{signing, WebhookDispatcher};
use crate::{ApiError, ApiState};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route(
            "/v3/user/webhooks/event/settings",
            get(read_settings).patch(update_settings),
        )
        .route(
            "/v3/user/webhooks/event/settings/signed",
            get(read_signed).patch(update_signed),
        )
        .route("/v3/user/webhooks/event/test", post(test))
}

fn dispatcher(state: &ApiState) -> Result<&Arc<WebhookDispatcher>, ApiError> {
    state.webhooks.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "event webhooks are not running on this node",
        )
    })
}

fn settings_json(w: Option<&WebhookRecord>) -> Value {
    let has = |k: EventKind| w.is_some_and(|w| w.kinds.contains(&k));
    json!({
        "enabled": w.is_some_and(|w| w.enabled),
        "url": w.map(|w| w.url.clone()).unwrap_or_default(),
        "processed": has(EventKind::Processed),
        "delivered": has(EventKind::Delivered),
        "deferred": has(EventKind::Deferred),
        "bounce": has(EventKind::Bounce),
        "dropped": has(EventKind::Dropped),
        "open": false,
        "click": false,
        "spam_report": false,
        "unsubscribe": false,
        "group_unsubscribe": false,
        "group_resubscribe": false,
        "oauth_client_id": "",
        "oauth_token_url": "",
    })
}

async fn read_settings(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require("user.webhooks.event.settings.read")?;
    let w = state.store.get_webhook(caller.account.clone()).await?;
    Ok(Json(settings_json(w.as_ref())))
}

#[derive(Deserialize)]
struct SettingsBody {
    enabled: Option<bool>,
    url: Option<String>,
    processed: Option<bool>,
    delivered: Option<bool>,
    deferred: Option<bool>,
    bounce: Option<bool>,
    dropped: Option<bool>,
    // Accepted for SendGrid clients that send the whole object; Postern
    // has no tracking to report them.
    #[serde(default, rename = "open")]
    _open: Option<bool>,
    #[serde(default, rename = "click")]
    _click: Option<bool>,
    #[serde(default, rename = "spam_report")]
    _spam_report: Option<bool>,
    #[serde(default, rename = "unsubscribe")]
    _unsubscribe: Option<bool>,
    #[serde(default, rename = "group_unsubscribe")]
    _group_unsubscribe: Option<bool>,
    #[serde(default, rename = "group_resubscribe")]
    _group_resubscribe: Option<bool>,
    #[serde(default, rename = "oauth_client_id")]
    _oauth_client_id: Option<String>,
    #[serde(default, rename = "oauth_token_url")]
    _oauth_token_url: Option<String>,
}

async fn update_settings(
    State(state): State<ApiState>,
    caller: Caller,
    Json(body): Json<SettingsBody>,
) -> Result<Json<Value>, ApiError> {
    caller.require("user.webhooks.event.settings.update")?;
    let dispatcher = dispatcher(&state)?;
    let now = postern_core::time::now_millis();
    let current = state.store.get_webhook(caller.account.clone()).await?;
    let mut w = current.clone().unwrap_or(WebhookRecord {
        account: caller.account.clone(),
        url: String::new(),
        enabled: false,
        kinds: Vec::new(),
        signing_key: None,
        cursor: 0,
        created_at: now,
        updated_at: now,
        last_success_at: None,
        last_error: None,
        last_error_at: None,
    });
    if let Some(url) = body.url {
        w.url = url.trim().to_owned();
    }
    if let Some(e) = body.enabled {
        w.enabled = e;
    }
    for (flag, kind) in [
        (body.processed, EventKind::Processed),
        (body.delivered, EventKind::Delivered),
        (body.deferred, EventKind::Deferred),
        (body.bounce, EventKind::Bounce),
        (body.dropped, EventKind::Dropped),
    ] {
        match flag {
            Some(true) if !w.kinds.contains(&kind) => w.kinds.push(kind),
            Some(false) => w.kinds.retain(|k| *k != kind),
            _ => {}
        }
    }
    if w.enabled {
        if w.url.is_empty() {
            return Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                "url",
                "an enabled webhook needs a url",
            ));
        }
        dispatcher
            .check_destination(&w.url)
            .await
            .map_err(|e| ApiError::field(StatusCode::BAD_REQUEST, "url", e))?;
    }
    w.updated_at = now;
    state.store.put_webhook(w.clone()).await?;
    caller.audit(
        &state,
        "webhook.update",
        format!(
            "enabled={} url={} events={}",
            w.enabled,
            w.url,
            w.kinds
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(",")
        ),
    );
    Ok(Json(settings_json(Some(&w))))
}

fn signed_json(w: Option<&WebhookRecord>) -> Result<Value, ApiError> {
    let key = match w.and_then(|w| w.signing_key.as_deref()) {
        Some(k) => signing::public_key_base64(k)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
        None => String::new(),
    };
    Ok(json!({ "enabled": !key.is_empty(), "public_key": key }))
}

async fn read_signed(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require("user.webhooks.event.settings.read")?;
    let w = state.store.get_webhook(caller.account.clone()).await?;
    Ok(Json(signed_json(w.as_ref())?))
}

#[derive(Deserialize)]
struct SignedBody {
    enabled: bool,
}

async fn update_signed(
    State(state): State<ApiState>,
    caller: Caller,
    Json(body): Json<SignedBody>,
) -> Result<Json<Value>, ApiError> {
    caller.require("user.webhooks.event.settings.update")?;
    let now = postern_core::time::now_millis();
    let Some(mut w) = state.store.get_webhook(caller.account.clone()).await? else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "set up the event webhook (PATCH /v3/user/webhooks/event/settings) first",
        ));
    };
    match (body.enabled, w.signing_key.is_some()) {
        (true, false) => {
            w.signing_key =
                Some(signing::generate_key().map_err(|e| {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                })?);
        }
        (false, true) => w.signing_key = None,
        _ => {}
    }
    w.updated_at = now;
    state.store.put_webhook(w.clone()).await?;
    caller.audit(
        &state,
        "webhook.signing",
        format!("enabled={}", body.enabled),
    );
    Ok(Json(signed_json(Some(&w))?))
}

#[derive(Deserialize)]
struct TestBody {
    url: String,
}

/// Posts one sample event of each kind to `url`, signed with the account's
/// key when signing is on: for checking a receiver before enabling it.
async fn test(
    State(state): State<ApiState>,
    caller: Caller,
    Json(body): Json<TestBody>,
) -> Result<StatusCode, ApiError> {
    caller.require("user.webhooks.event.test.create")?;
    let dispatcher = dispatcher(&state)?;
    dispatcher
        .check_destination(&body.url)
        .await
        .map_err(|e| ApiError::field(StatusCode::BAD_REQUEST, "url", e))?;
    let key = state
        .store
        .get_webhook(caller.account.clone())
        .await?
        .and_then(|w| w.signing_key);
    let now = postern_core::time::now_millis();
    let sample: Vec<Value> = EventKind::ALL
        .iter()
        .enumerate()
        .map(|(i, kind)| {
            Event {
                seq: i as i64,
                at_millis: now,
                message_id: "test".into(),
                kind: *kind,
                recipient: Some("example@test.com".into()),
                detail: "a test event from Postern".into(),
                account: Some(caller.account.clone()),
                info: AttemptInfo::default(),
            }
            .to_webhook_json()
        })
        .collect();
    let payload = serde_json::to_vec(&sample)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    dispatcher
        .post_body(&body.url, key.as_deref(), payload)
        .await
        .map_err(|e| ApiError::field(StatusCode::BAD_REQUEST, "url", e))?;
    Ok(StatusCode::NO_CONTENT)
}
