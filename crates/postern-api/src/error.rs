//! Errors in SendGrid's shape: `{"errors":[{"field":…,"message":…}]}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use postern_store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            field: None,
        }
    }

    pub fn field(status: StatusCode, field: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            field: Some(field),
        }
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "API: store error");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store unavailable, try again",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{"field": self.field, "message": self.message}]
        });
        (self.status, Json(body)).into_response()
    }
}
