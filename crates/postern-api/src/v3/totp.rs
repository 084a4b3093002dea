//! /v3/user/totp: enrol, verify and remove the calling account's second
//! factor (TOTP, RFC 6238). Postern's own route: SendGrid has no public
//! API for this. Needs a full-access key of the account itself.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use postern_accounts::totp::{Totp, TotpOutcome};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::caller::Caller;
use crate::{ApiError, ApiState};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v3/user/totp", post(enroll).delete(disable))
        .route("/v3/user/totp/verify", post(verify))
}

fn totp(state: &ApiState) -> Totp {
    Totp::new(state.store.clone(), "Postern")
}

async fn enroll(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(postern_core::principal::SCOPE_FULL_ACCESS)?;
    let e = totp(&state).enroll(&caller.account).await?;
    caller.audit(&state, "totp.enroll", "enrolment started".into());
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"secret": e.secret_base32, "uri": e.uri, "recovery_codes": e.recovery_codes, "active": false}),
        ),
    ))
}

#[derive(Deserialize)]
struct VerifyBody {
    code: String,
}

async fn verify(
    State(state): State<ApiState>,
    caller: Caller,
    Json(body): Json<VerifyBody>,
) -> Result<Json<Value>, ApiError> {
    caller.require(postern_core::principal::SCOPE_FULL_ACCESS)?;
    let outcome = totp(&state).verify(&caller.account, &body.code).await?;
    let (kind, ok) = match outcome {
        TotpOutcome::Confirmed => ("totp.confirm", true),
        TotpOutcome::Accepted => ("totp.verify", true),
        TotpOutcome::AcceptedRecoveryCode => ("totp.recovery_code", true),
        TotpOutcome::Rejected | TotpOutcome::NotEnrolled => ("totp.failure", false),
    };
    caller.audit(&state, kind, format!("{outcome:?}"));
    if !ok {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "code",
            "code rejected",
        ));
    }
    Ok(Json(json!({"valid": true, "active": true})))
}

async fn disable(State(state): State<ApiState>, caller: Caller) -> Result<StatusCode, ApiError> {
    caller.require(postern_core::principal::SCOPE_FULL_ACCESS)?;
    if !totp(&state).disable(&caller.account).await? {
        return Err(ApiError::not_found("second factor"));
    }
    caller.audit(&state, "totp.disable", "second factor removed".into());
    Ok(StatusCode::NO_CONTENT)
}
