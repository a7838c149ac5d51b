//! The API's error type: a status and a message for the client, internals logged only.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error answered as `{"error": "..."}` with a matching status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing, malformed or unknown token (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The token is valid but may not see this (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such resource, or not visible to the caller (404).
    #[error("{0}")]
    NotFound(String),
    /// A parameter or body the client must fix (400).
    #[error("{0}")]
    BadRequest(String),
    /// Anything else: logged with its cause, answered without it (500).
    #[error("internal error: {0}")]
    Internal(String),
    /// The change conflicts with what is stored (409).
    #[error("{0}")]
    Conflict(String),
    /// Too many heavy requests of this token at once (429, retry after a second).
    #[error("{0}")]
    TooManyRequests(String),
    /// The database pool cannot give a connection (503).
    #[error("database unavailable: {0}")]
    Unavailable(String),
}

impl ApiError {
    /// A 400 with `msg`.
    pub fn bad(msg: impl Into<String>) -> Self {
        Self::BadRequest(msg.into())
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<crate::store::deliver::DeliverError> for ApiError {
    fn from(e: crate::store::deliver::DeliverError) -> Self {
        use crate::store::deliver::DeliverError as E;
        match e {
            E::NotFound(id) => Self::NotFound(format!("no destination {id}")),
            E::Conflict(m) => Self::Conflict(m),
            E::Pool(p) => Self::Unavailable(p.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        Self::BadRequest(e.body_text())
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        Self::BadRequest(e.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, msg) = match self {
            Self::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            Self::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, m),
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            Self::TooManyRequests(m) => (StatusCode::TOO_MANY_REQUESTS, m),
            Self::Conflict(m) => (StatusCode::CONFLICT, m),
            Self::Internal(cause) => {
                tracing::error!(error = %cause, "API request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
            }
            Self::Unavailable(cause) => {
                tracing::warn!(error = %cause, "API: no database connection");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database unavailable, retry later".into(),
                )
            }
        };
        let mut r = (status, Json(serde_json::json!({ "error": msg }))).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

/// Handler result.
pub type ApiResult<T> = Result<T, ApiError>;
