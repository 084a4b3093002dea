//! Who is calling: `Authorization: Bearer <API key>`, checked by the same
//! `Authenticator` (and brute-force defence) as SMTP AUTH. An optional
//! `On-Behalf-Of: <subuser>` header lets a parent account act for one of its
//! subusers, as in SendGrid.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::StatusCode;
use postern_accounts::authenticator::OnBehalfRefusal;
use postern_accounts::sasl::Credentials;
use postern_accounts::{LoginAttempt, Rejection};
use postern_core::Principal;
use postern_store::AuditEntry;

use crate::{ApiError, ApiState};

/// The routes that edit an IP allowlist (see `Authenticator::on_behalf_of`).
const ALLOWLIST_ROUTES: &str = "/v3/access_settings/whitelist";

pub struct Caller {
    pub principal: Principal,
    /// The account the call acts on: the caller's, or the subuser named by
    /// `On-Behalf-Of`.
    pub account: String,
    /// Its immutable id.
    pub account_id: i64,
    pub ip: std::net::IpAddr,
    /// A TOTP code sent with the request (`X-Postern-TOTP`), for actions
    /// that need a second factor.
    pub totp_header: Option<String>,
}

/// The header that carries a current TOTP code with a request.
pub const TOTP_HEADER: &str = "x-postern-totp";

impl Caller {
    pub fn require(&self, scope: &str) -> Result<(), ApiError> {
        if self.principal.has_scope(scope) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("access forbidden: this API key lacks the {scope} scope"),
            ))
        }
    }

    pub fn actor(&self) -> String {
        format!("key:{}", self.principal.key_id)
    }

    /// Appends to the audit log (without making the call wait for it).
    pub fn audit(&self, state: &ApiState, kind: &str, detail: String) {
        let entry = AuditEntry {
            at: postern_core::time::now_millis(),
            kind: kind.to_owned(),
            actor: self.actor(),
            account: Some(self.account.clone()),
            client_ip: Some(self.ip.to_string()),
            detail,
        };
        let store = state.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.append_audit(entry).await {
                tracing::error!(error = %e, "audit append failed");
            }
        });
    }
}

impl Caller {
    /// Appends to the audit log for `account` and waits for it, so that
    /// entries of one request keep their order.
    pub async fn audit_now(&self, state: &ApiState, account: &str, kind: &str, detail: String) {
        let entry = AuditEntry {
            at: postern_core::time::now_millis(),
            kind: kind.to_owned(),
            actor: self.actor(),
            account: Some(account.to_owned()),
            client_ip: Some(self.ip.to_string()),
            detail,
        };
        if let Err(e) = state.store.append_audit(entry).await {
            tracing::error!(error = %e, "audit append failed");
        }
    }

    /// Actions that mint credentials (API keys, sending domains) call this
    /// first: when the logged-in account has `require_2fa_for_credentials`
    /// and the caller logged in with a password, the request must carry a
    /// current code in `X-Postern-TOTP` (see
    /// `postern_accounts::totp::second_factor_needed`). Today every HTTP
    /// caller presents an API key, so this refuses nothing yet; a
    /// password (dashboard) login will go through it.
    pub async fn require_second_factor_for_credentials(
        &self,
        state: &ApiState,
        action: &str,
    ) -> Result<(), ApiError> {
        use postern_accounts::totp::{second_factor_needed, SecondFactorError, Totp};
        let Some(account) = state
            .store
            .get_account(self.principal.account.clone())
            .await?
        else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "authorization required",
            ));
        };
        if !second_factor_needed(&self.principal, &account) {
            return Ok(());
        }
        let result = Totp::new(state.store.clone(), "Postern")
            .require_for_credentials(&self.principal, &account, self.totp_header.as_deref())
            .await;
        let (kind, detail) = match &result {
            Ok(()) => ("totp.verify.success", format!("purpose={action}")),
            Err(e) => ("totp.verify.failure", format!("purpose={action} {e}")),
        };
        self.audit_now(state, &account.name, kind, detail).await;
        match result {
            Ok(()) => Ok(()),
            Err(SecondFactorError::Store(e)) => Err(e.into()),
            Err(SecondFactorError::Locked { until }) => Err(locked_error(until)),
            Err(SecondFactorError::Rejected {
                locked_until: Some(until),
            }) => {
                self.audit_now(
                    state,
                    &account.name,
                    "totp.locked",
                    format!(
                        "too many failed codes; refused until {}",
                        postern_core::time::rfc3339(until)
                    ),
                )
                .await;
                Err(locked_error(until))
            }
            Err(e) => Err(ApiError::field(
                StatusCode::FORBIDDEN,
                "X-Postern-TOTP",
                e.to_string(),
            )),
        }
    }
}

/// 429 while an account's TOTP attempts are locked.
pub(crate) fn locked_error(until: i64) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "too many failed two-factor codes; try again after {}",
            postern_core::time::rfc3339(until)
        ),
    )
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let unauthorized = || ApiError::new(StatusCode::UNAUTHORIZED, "authorization required");
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no peer address"))?;
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(unauthorized)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(unauthorized)?
            .trim();
        let creds = Credentials {
            authzid: String::new(),
            username: postern_accounts::authenticator::API_KEY_USERNAME.to_owned(),
            secret: token.to_owned(),
        };
        let attempt = LoginAttempt {
            creds: &creds,
            ip,
            mechanism: "HTTP-BEARER",
            proof: postern_accounts::Proof::Secret,
        };
        let principal = match state.authenticator.authenticate(&attempt).await {
            Ok(p) => p,
            Err(Rejection::Invalid { delay, .. }) => {
                tokio::time::sleep(delay).await;
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "authorization required",
                ));
            }
            Err(Rejection::Blocked { .. }) => {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed authentication attempts; try again later",
                ))
            }
            Err(Rejection::Temporary(_)) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "try again later",
                ))
            }
        };
        let mut account = principal.account.clone();
        let mut account_id = principal.account_id;
        if let Some(subuser) = parts
            .headers
            .get("on-behalf-of")
            .and_then(|v| v.to_str().ok())
        {
            // The same checks as an SMTP authzid: a subuser of the caller's,
            // enabled (parent too), and inside its IP allowlist.
            match state
                .authenticator
                .on_behalf_of(
                    &principal.account,
                    subuser,
                    ip,
                    parts.uri.path().starts_with(ALLOWLIST_ROUTES),
                )
                .await
            {
                Ok((name, id)) => {
                    account = name;
                    account_id = id;
                }
                Err(OnBehalfRefusal::NotPermitted(reason)) => {
                    tracing::info!(%ip, subuser, reason, "On-Behalf-Of refused");
                    metrics::counter!("postern_on_behalf_of_refused_total", "reason" => reason)
                        .increment(1);
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "On-Behalf-Of names no subuser this key may act for from this address",
                    ));
                }
                Err(OnBehalfRefusal::Temporary(e)) => {
                    tracing::warn!(error = %e, "On-Behalf-Of check failed");
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "try again later",
                    ));
                }
            }
        }
        let totp_header = parts
            .headers
            .get(TOTP_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned());
        Ok(Caller {
            principal,
            account,
            account_id,
            ip,
            totp_header,
        })
    }
}
