//! /v3/access_settings/whitelist: the networks the calling account may log
//! in from (SMTP AUTH and this API). Once there is any entry, logins from
//! anywhere else are refused.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use postern_store::IpRule;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::caller::Caller;
use crate::{ApiError, ApiState};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route(
            "/v3/access_settings/whitelist",
            get(list).post(add).delete(remove_many),
        )
        .route(
            "/v3/access_settings/whitelist/{id}",
            get(read).delete(remove_one),
        )
}

fn rule_json(r: &IpRule) -> Value {
    let secs = r.created_at / 1000;
    json!({"id": r.id, "ip": r.cidr, "created_at": secs, "updated_at": secs})
}

/// SendGrid accepts addresses, CIDR, and trailing wildcards (`192.168.*.*`).
fn parse_entry(s: &str) -> Option<String> {
    let s = s.trim();
    if s.contains('*') {
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() != 4 {
            return None;
        }
        let fixed = parts.iter().take_while(|p| **p != "*").count();
        if fixed == 0 || parts[fixed..].iter().any(|p| *p != "*") {
            return None;
        }
        let mut octets: Vec<String> = parts[..fixed].iter().map(|p| p.to_string()).collect();
        octets.resize(4, "0".into());
        return postern_core::network::parse_network(&format!(
            "{}/{}",
            octets.join("."),
            fixed * 8
        ))
        .map(|n| n.to_string());
    }
    postern_core::network::parse_network(s).map(|n| n.to_string())
}

async fn list(State(state): State<ApiState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require("access_settings.whitelist.read")?;
    let rules = state.store.ip_rules(caller.account.clone()).await?;
    Ok(Json(
        json!({"result": rules.iter().map(rule_json).collect::<Vec<_>>()}),
    ))
}

#[derive(Deserialize)]
struct IpEntry {
    ip: String,
}

#[derive(Deserialize)]
struct AddBody {
    ips: Vec<IpEntry>,
}

async fn add(
    State(state): State<ApiState>,
    caller: Caller,
    Json(body): Json<AddBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require("access_settings.whitelist.create")?;
    if body.ips.is_empty() {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "ips",
            "at least one IP is required",
        ));
    }
    let mut nets = Vec::new();
    for e in &body.ips {
        let net = parse_entry(&e.ip).ok_or_else(|| {
            ApiError::field(
                StatusCode::BAD_REQUEST,
                "ips",
                format!("{:?} is not an IP address or network", e.ip),
            )
        })?;
        nets.push(net);
    }
    let existing: Vec<String> = state
        .store
        .ip_rules(caller.account.clone())
        .await?
        .into_iter()
        .map(|r| r.cidr)
        .collect();
    for net in nets {
        if !existing.contains(&net) {
            state
                .store
                .add_ip_rule(caller.account.clone(), net.clone())
                .await?;
            caller.audit(&state, "ip_access.add", format!("network={net}"));
        }
    }
    let rules = state.store.ip_rules(caller.account.clone()).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"result": rules.iter().map(rule_json).collect::<Vec<_>>()})),
    ))
}

#[derive(Deserialize)]
struct RemoveBody {
    ids: Vec<i64>,
}

async fn remove_many(
    State(state): State<ApiState>,
    caller: Caller,
    Json(body): Json<RemoveBody>,
) -> Result<StatusCode, ApiError> {
    caller.require("access_settings.whitelist.delete")?;
    for id in body.ids {
        if state
            .store
            .remove_ip_rule_by_id(caller.account.clone(), id)
            .await?
        {
            caller.audit(&state, "ip_access.remove", format!("id={id}"));
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn read(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    caller.require("access_settings.whitelist.read")?;
    let rules = state.store.ip_rules(caller.account.clone()).await?;
    let rule = rules
        .iter()
        .find(|r| r.id == id)
        .ok_or_else(|| ApiError::not_found("whitelist entry"))?;
    Ok(Json(rule_json(rule)))
}

async fn remove_one(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    caller.require("access_settings.whitelist.delete")?;
    if !state
        .store
        .remove_ip_rule_by_id(caller.account.clone(), id)
        .await?
    {
        return Err(ApiError::not_found("whitelist entry"));
    }
    caller.audit(&state, "ip_access.remove", format!("id={id}"));
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::parse_entry;

    #[test]
    fn sendgrid_entry_forms() {
        assert_eq!(
            parse_entry("192.168.1.1").as_deref(),
            Some("192.168.1.1/32")
        );
        assert_eq!(
            parse_entry("192.168.1.0/24").as_deref(),
            Some("192.168.1.0/24")
        );
        assert_eq!(parse_entry("192.*.*.*").as_deref(), Some("192.0.0.0/8"));
        assert_eq!(parse_entry("10.1.*.*").as_deref(), Some("10.1.0.0/16"));
        assert_eq!(
            parse_entry("2001:db8::/32").as_deref(),
            Some("2001:db8::/32")
        );
        assert_eq!(parse_entry("*.1.2.3"), None);
        assert_eq!(parse_entry("10.*.2.*"), None);
        assert_eq!(parse_entry("nonsense"), None);
    }
}
