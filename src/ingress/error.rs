//! Every way a webhook request can fail, and the one place that maps them to status codes.
//! Bodies are short JSON; internals (paths, SQL, Redis errors) stay in the log.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::signature::SignatureError;

/// Seconds Attio is asked to wait before retrying when the journal cannot accept.
pub(crate) const RETRY_AFTER_SECONDS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub(crate) enum IngressError {
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("could not read the request body")]
    BodyRead,
    #[error("the request body did not arrive within {seconds} s (server.body_read_timeout)")]
    BodyTimeout { seconds: u64 },
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("journal cannot accept the delivery")]
    Unavailable,
    #[error("backlog is full")]
    BacklogFull,
}

impl IngressError {
    /// The `outcome` label of the deliveries metric.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            IngressError::TooLarge { .. } => "too_large",
            IngressError::BodyRead => "bad_request",
            IngressError::BodyTimeout { .. } => "timeout",
            IngressError::Signature(_) => "unauthorized",
            IngressError::Unavailable | IngressError::BacklogFull => "unavailable",
        }
    }
}

impl IntoResponse for IngressError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            IngressError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            IngressError::BodyRead => (StatusCode::BAD_REQUEST, "body_unreadable"),
            IngressError::BodyTimeout { .. } => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            IngressError::Signature(SignatureError::Missing) => {
                (StatusCode::UNAUTHORIZED, "signature_missing")
            }
            IngressError::Signature(_) => (StatusCode::UNAUTHORIZED, "signature_invalid"),
            IngressError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "journal_unavailable"),
            IngressError::BacklogFull => (StatusCode::SERVICE_UNAVAILABLE, "backlog_full"),
        };
        let body = Json(json!({ "error": code, "message": self.to_string() }));
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still come: the connection cannot carry another request.
            (status, [(header::CONNECTION, "close")], body).into_response()
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            (
                status,
                [(header::RETRY_AFTER, RETRY_AFTER_SECONDS.to_string())],
                body,
            )
                .into_response()
        } else {
            (status, body).into_response()
        }
    }
}
