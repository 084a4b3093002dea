//! The SendGrid v3 API shapes Postern implements. Each resource has its own
//! file; routes follow SendGrid's paths so its client libraries work by
//! changing only the base URL.

mod access_settings;
mod api_keys;
mod audit;
mod mail_fields;
mod mail_json;
mod mail_send;
pub(crate) use mail_send::fuzz_one as fuzz_mail_send;
mod messages;
mod quarantine;
mod queue;
mod reports;
mod subusers;
mod suppression;
mod totp;
mod verified_senders;
mod webhooks;
mod whitelabel;

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::caller::Caller;
use crate::ApiState;

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v3/scopes", get(scopes))
        .merge(api_keys::routes())
        .merge(subusers::routes())
        .merge(access_settings::routes())
        .merge(totp::routes())
        .merge(audit::routes())
        .merge(suppression::routes())
        .merge(messages::routes())
        .merge(queue::routes())
        .merge(quarantine::routes())
        .merge(reports::routes())
        .merge(webhooks::routes())
        .merge(whitelabel::routes())
        .merge(verified_senders::routes())
        .merge(mail_send::routes())
}

/// GET /v3/scopes: the calling key's scopes.
async fn scopes(caller: Caller) -> Json<Value> {
    Json(json!({ "scopes": crate::scopes::expand(&caller.principal.scopes) }))
}
