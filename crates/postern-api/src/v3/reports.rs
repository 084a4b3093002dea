//! /v3/reports: DMARC aggregate and TLS-RPT reports received for the
//! company's domains (Postern's own route; SendGrid has none), for the
//! account that holds each report's policy domain verified. A caller sees
//! its own domains' reports and its subusers' only; any other report is
//! "not found", as in /v3/quarantine, so an id tells nothing about another
//! tenant's domains. The operator sees all with `postern reports`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use postern_store::{ReportFilter, ReportRecord};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::caller::Caller;
use crate::{ApiError, ApiState};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v3/reports", get(list))
        .route("/v3/reports/{id}", get(show))
}

#[derive(Deserialize)]
struct ListQuery {
    kind: Option<String>,
    domain: Option<String>,
    limit: Option<usize>,
}

/// What the caller may see: its account's domains' reports and its
/// subusers'.
fn scope(caller: &Caller) -> ReportFilter {
    ReportFilter {
        account: Some(caller.account.clone()),
        with_subusers: true,
        ..Default::default()
    }
}

async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require("reports.read")?;
    if let Some(k) = &q.kind {
        if k != "dmarc" && k != "tlsrpt" {
            return Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                "kind",
                "dmarc or tlsrpt",
            ));
        }
    }
    let list = state
        .store
        .reports(ReportFilter {
            kind: q.kind,
            domain: q.domain,
            limit: Some(q.limit.unwrap_or(100).min(10_000)),
            ..scope(&caller)
        })
        .await?;
    let result: Vec<Value> = list.iter().map(ReportRecord::to_json).collect();
    Ok(Json(json!({ "reports": result })))
}

async fn show(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require("reports.read")?;
    // An id that is not a number names no report either.
    let not_found = || ApiError::not_found("report");
    let id: i64 = id.parse().map_err(|_| not_found())?;
    let r = state
        .store
        .report(id, scope(&caller))
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(r.to_json()))
}
