//! /v3/user/totp: enrol, verify and remove the calling account's second
//! factor (TOTP, RFC 6238). Postern's own route: SendGrid has no public
//! API for this. Needs a full-access key of the account itself.
//!
//! Once a factor is active, removing it or replacing it (a new enrolment)
//! needs a current code or an unused recovery code, in the JSON body
//! (`{"code": …}` or `{"recovery_code": …}`) or the `X-Postern-TOTP`
//! header: an API key alone (which may have leaked) must not be able to
//! strip the account's second factor. Every check, here and in
//! `/verify`, goes through the per-account attempt limit
//! (`postern_accounts::totp::MAX_FAILURES` per `FAILURE_WINDOW`, kept in
//! the store so the CLI and every node share it), and is audited.

use axum::body::Bytes;
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

/// A code given with a request, if any.
#[derive(Deserialize, Default)]
struct CodeBody {
    code: Option<String>,
    recovery_code: Option<String>,
}

/// The code from the body (which may be empty: DELETE usually has none)
/// or else the `X-Postern-TOTP` header. Bad JSON is a 400, not "no code".
fn presented_code(caller: &Caller, body: &Bytes) -> Result<Option<String>, ApiError> {
    let parsed: CodeBody = if body.iter().all(u8::is_ascii_whitespace) {
        CodeBody::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the body is not valid JSON"))?
    };
    Ok(parsed
        .code
        .or(parsed.recovery_code)
        .or_else(|| caller.totp_header.clone())
        .filter(|c| !c.trim().is_empty()))
}

/// Checks a code for `purpose` under the attempt limit, audits the
/// attempt (and a lockout it starts), and turns refusals into errors:
/// 429 while locked, otherwise `rejected_status` (403 when the code
/// guards an action, 400 on `/verify`).
pub(crate) async fn check_code(
    state: &ApiState,
    caller: &Caller,
    account: &str,
    code: &str,
    purpose: &str,
    rejected_status: StatusCode,
) -> Result<TotpOutcome, ApiError> {
    let outcome = totp(state).verify(account, code).await?;
    let kind = if outcome.accepted() {
        "totp.verify.success"
    } else {
        "totp.verify.failure"
    };
    caller
        .audit_now(
            state,
            account,
            kind,
            format!("purpose={purpose} {outcome:?}"),
        )
        .await;
    match outcome {
        o if o.accepted() => Ok(o),
        TotpOutcome::Locked { until } => Err(locked(until)),
        TotpOutcome::Rejected { locked_until } => {
            if let Some(until) = locked_until {
                caller
                    .audit_now(
                        state,
                        account,
                        "totp.locked",
                        format!(
                            "too many failed codes; refused until {}",
                            postern_core::time::rfc3339(until)
                        ),
                    )
                    .await;
                return Err(locked(until));
            }
            Err(ApiError::field(rejected_status, "code", "code rejected"))
        }
        _ => Err(ApiError::field(
            rejected_status,
            "code",
            "this account has no second factor",
        )),
    }
}

fn locked(until: i64) -> ApiError {
    crate::caller::locked_error(until)
}

/// An active factor may only be removed or replaced with a code.
async fn require_code_if_active(
    state: &ApiState,
    caller: &Caller,
    body: &Bytes,
    purpose: &str,
) -> Result<(), ApiError> {
    if !totp(state).active(&caller.account).await? {
        return Ok(());
    }
    let Some(code) = presented_code(caller, body)? else {
        caller
            .audit_now(
                state,
                &caller.account,
                "totp.verify.failure",
                format!("purpose={purpose} no code given"),
            )
            .await;
        return Err(ApiError::field(
            StatusCode::FORBIDDEN,
            "code",
            "two-factor authentication is active: a current code or an unused recovery code is required (\"code\" or \"recovery_code\")",
        ));
    };
    check_code(
        state,
        caller,
        &caller.account,
        &code,
        purpose,
        StatusCode::FORBIDDEN,
    )
    .await?;
    Ok(())
}

async fn enroll(
    State(state): State<ApiState>,
    caller: Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(postern_core::principal::SCOPE_FULL_ACCESS)?;
    require_code_if_active(&state, &caller, &body, "enroll").await?;
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
    let outcome = check_code(
        &state,
        &caller,
        &caller.account,
        &body.code,
        "verify",
        StatusCode::BAD_REQUEST,
    )
    .await?;
    if outcome == TotpOutcome::Confirmed {
        caller.audit(&state, "totp.confirm", "second factor active".into());
    }
    Ok(Json(json!({"valid": true, "active": true})))
}

async fn disable(
    State(state): State<ApiState>,
    caller: Caller,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    caller.require(postern_core::principal::SCOPE_FULL_ACCESS)?;
    require_code_if_active(&state, &caller, &body, "disable").await?;
    if !totp(&state).disable(&caller.account).await? {
        return Err(ApiError::not_found("second factor"));
    }
    caller.audit(&state, "totp.disable", "second factor removed".into());
    Ok(StatusCode::NO_CONTENT)
}
