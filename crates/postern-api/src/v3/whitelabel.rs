//! /v3/whitelabel/domains: SendGrid's domain authentication. Creating a
//! domain generates its DKIM keys; the answer lists the DNS records to
//! publish; `/validate` looks them up. Postern publishes DKIM keys as TXT
//! records (SendGrid uses CNAMEs to its own keys), so `dns.dkim1` and
//! `dns.dkim2` are of type "txt".

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use postern_mailauth::check::Status;
use postern_mailauth::domain_check::check_domain;
use postern_mailauth::records::records_for;
use postern_mailauth::DkimKeys;
use postern_store::{DomainRecord, StoreError};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::caller::Caller;
use crate::{ApiError, ApiState};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v3/whitelabel/domains", get(list).post(create))
        .route("/v3/whitelabel/domains/{id}", get(read).delete(remove))
        .route("/v3/whitelabel/domains/{id}/validate", post(validate))
}

fn domain_json(state: &ApiState, d: &DomainRecord, checks: Option<&[Status]>) -> Value {
    let publishing = state
        .domains
        .as_ref()
        .map(|d| d.publishing.clone())
        .unwrap_or_default();
    let mut dns = Map::new();
    for (i, r) in records_for(d, &publishing, None).iter().enumerate() {
        let valid = match checks.and_then(|c| c.get(i)) {
            Some(s) => *s == Status::Found,
            None => d.verified_at.is_some(),
        };
        dns.insert(
            r.key.to_owned(),
            json!({"valid": valid, "type": r.rtype.to_ascii_lowercase(), "host": r.name, "data": r.value, "required": r.required}),
        );
    }
    json!({
        "id": d.id,
        "user_id": d.account,
        "domain": d.domain,
        "subdomain": d.return_path,
        "username": d.account,
        "ips": publishing.source_ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
        "custom_spf": false,
        "default": false,
        "legacy": false,
        "automatic_security": false,
        "valid": d.verified_at.is_some(),
        "dns": dns,
    })
}

/// The domain, if it belongs to the caller's account; others are "not
/// found" (nothing is learnt about them).
async fn owned(state: &ApiState, caller: &Caller, id: i64) -> Result<DomainRecord, ApiError> {
    match state.store.get_domain_by_id(id).await? {
        Some(d) if d.account == caller.account => Ok(d),
        _ => Err(ApiError::not_found("domain")),
    }
}

#[derive(Deserialize)]
struct CreateDomain {
    domain: String,
    /// The return-path label (SendGrid: the subdomain for its CNAMEs).
    subdomain: Option<String>,
    custom_dkim_selector: Option<String>,
}

async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    Json(body): Json<CreateDomain>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require("whitelabel.create")?;
    let domain = postern_core::address::normalize_domain(&body.domain)
        .map_err(|_| ApiError::field(StatusCode::BAD_REQUEST, "domain", "not a domain name"))?;
    let label_ok = |s: &str| {
        !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let selector = body.custom_dkim_selector.unwrap_or_else(|| "pst1".into());
    if !label_ok(&selector) {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "custom_dkim_selector",
            "letters, digits and '-' only",
        ));
    }
    let return_path = body.subdomain.unwrap_or_else(|| "pst-bounces".into());
    if !label_ok(&return_path) {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "subdomain",
            "letters, digits and '-' only",
        ));
    }
    caller
        .require_second_factor_for_credentials(&state, "domain.add")
        .await?;
    // RSA generation is CPU-bound (about a second): off the runtime.
    let keys = tokio::task::spawn_blocking(DkimKeys::generate)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let record = DomainRecord {
        id: 0,
        domain: domain.clone(),
        account: caller.account.clone(),
        selector,
        rsa_private: keys.rsa_private,
        rsa_public: keys.rsa_public,
        ed25519_private: keys.ed25519_private,
        ed25519_public: keys.ed25519_public,
        return_path,
        return_path_mode: Default::default(),
        created_at: postern_core::time::now_millis(),
        verified_at: None,
        verified_by: None,
        next: None,
        previous: None,
    };
    // Another account's unverified claim is no obstacle: the first to
    // verify through DNS owns the domain (issue 10 item 11).
    let id = match state.store.add_domain(record).await {
        Err(StoreError::Conflict) => {
            return Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                "domain",
                "this domain is already added (by this account, or verified by another)",
            ))
        }
        other => other?,
    };
    caller.audit(&state, "domain.add", format!("domain={domain} id={id}"));
    let stored = state
        .store
        .get_domain_by_id(id)
        .await?
        .ok_or_else(|| ApiError::not_found("domain"))?;
    Ok((
        StatusCode::CREATED,
        Json(domain_json(&state, &stored, None)),
    ))
}

async fn list(State(state): State<ApiState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require("whitelabel.read")?;
    let all = state
        .store
        .list_domains(Some(caller.account.clone()))
        .await?;
    Ok(Json(Value::Array(
        all.iter().map(|d| domain_json(&state, d, None)).collect(),
    )))
}

async fn read(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    caller.require("whitelabel.read")?;
    let d = owned(&state, &caller, id).await?;
    Ok(Json(domain_json(&state, &d, None)))
}

async fn remove(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    caller.require("whitelabel.delete")?;
    let d = owned(&state, &caller, id).await?;
    state.store.delete_domain(d.id).await?;
    caller.audit(&state, "domain.remove", format!("domain={}", d.domain));
    Ok(StatusCode::NO_CONTENT)
}

async fn validate(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    caller.require("whitelabel.update")?;
    let d = owned(&state, &caller, id).await?;
    let Some(domains) = &state.domains else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "DNS checks are not available on this node",
        ));
    };
    let result = check_domain(
        state.store.as_ref(),
        &d,
        &domains.publishing,
        None,
        domains.dns.as_ref(),
        domains.rotation_overlap,
    )
    .await
    .map_err(|e| match e {
        StoreError::Conflict => ApiError::field(
            StatusCode::BAD_REQUEST,
            "domain",
            "another account has verified this domain",
        ),
        e => e.into(),
    })?;
    if result.newly_verified {
        caller.audit(
            &state,
            "domain.verify",
            format!("domain={} id={} by=dns", d.domain, d.id),
        );
    }
    for r in &result.retired_claims {
        caller
            .audit_now(
                &state,
                &r.account,
                "domain.claim.retired",
                format!(
                    "domain={} id={} verified by account {} (id {})",
                    r.domain, r.id, d.account, d.id
                ),
            )
            .await;
    }
    if let Some(selector) = &result.promoted {
        caller.audit(
            &state,
            "domain.rotate.promote",
            format!(
                "domain={} selector={selector} previous={}",
                d.domain, d.selector
            ),
        );
    }
    let (checked, ok) = (result.checked, result.valid);
    let mut results = Map::new();
    for c in &checked {
        let (valid, reason) = match &c.status {
            Status::Found => (true, Value::Null),
            Status::Missing => (
                false,
                json!(format!(
                    "no {} record found at {}",
                    c.record.rtype, c.record.name
                )),
            ),
            Status::Wrong(w) => (false, json!(w)),
        };
        results.insert(
            c.record.key.to_owned(),
            json!({"valid": valid, "reason": reason, "required": c.record.required}),
        );
    }
    Ok(Json(
        json!({"id": d.id, "valid": ok, "validation_results": results}),
    ))
}
