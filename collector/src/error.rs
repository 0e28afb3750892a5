//! API errors: each becomes a status and a JSON body `{"error": code, "message": ..., "field"?}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug)]
pub enum ApiError {
    /// 400: something in the request is wrong; `field` names it when one field is to blame.
    BadRequest {
        message: String,
        field: Option<String>,
    },
    Unauthorized,
    /// 401 with its own message (a credential other than an org key was wanted).
    Unauthenticated(String),
    /// 403: the caller may not use this endpoint (said why).
    Forbidden(String),
    PayloadTooLarge(usize),
    NotFound,
    Internal(String),
}

impl ApiError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            message: message.into(),
            field: Some(field.into()),
        }
    }

    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            message: message.into(),
            field: None,
        }
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        ApiError::Internal(format!("database: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::BadRequest { message, field } => (
                StatusCode::BAD_REQUEST,
                json!({"error": "bad_request", "message": message, "field": field}),
            ),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "unauthorized", "message": "a valid org key is required: Authorization: Bearer tly_... (filters may send events and read controls with a mesh token, tlm_...)"}),
            ),
            ApiError::Unauthenticated(message) => {
                let body = json!({"error": "unauthorized", "message": message});
                return (
                    StatusCode::UNAUTHORIZED,
                    [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                    Json(body),
                )
                    .into_response();
            }
            ApiError::Forbidden(message) => (
                StatusCode::FORBIDDEN,
                json!({"error": "forbidden", "message": message}),
            ),
            ApiError::PayloadTooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "payload_too_large", "message": format!("a batch may be at most {limit} bytes; send smaller batches")}),
            ),
            ApiError::NotFound => (
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "message": "no such endpoint"}),
            ),
            ApiError::Internal(detail) => {
                // Details go to the log, not to the client.
                crate::log::error(&format!("internal error: {detail}"));
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": "internal", "message": "internal error; nothing was stored"}),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}
