//! How a [`crate::Error`] looks on the HTTP API: `{ "error": { "code", "message", "field" } }`
//! with a fitting status. Server-side failures (5xx) are logged in full and answered with a
//! generic message; a peer's failure (502) and not being ready (503) are shown as they are, since
//! they say what to fix or wait for.

use crate::error::Error;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The JSON body of every error response. The CLI reads it back from the service's answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable code: `invalid_field`, `malformed_request`, `not_found`, `method_not_allowed`,
    /// `conflict`, `version_mismatch`, `unauthorized`, `request_timeout`, `payload_too_large`,
    /// `too_many_connections`, `not_leader`, `not_ready`, `push_failed`, `upstream_failed`,
    /// `internal`.
    pub code: String,
    /// For people.
    pub message: String,
    /// The offending field's path, when one field is to blame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The HTTP status an error is answered with.
pub fn status(error: &Error) -> StatusCode {
    match error {
        Error::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        Error::Malformed { .. } => StatusCode::BAD_REQUEST,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Conflict(_) => StatusCode::CONFLICT,
        Error::VersionMismatch { .. } => StatusCode::PRECONDITION_FAILED,
        Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        Error::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
        Error::NotLeader { .. } | Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::StateConflict { .. } => StatusCode::CONFLICT,
        Error::Store { .. }
        | Error::CorruptState { .. }
        | Error::Internal(_)
        | Error::Bind { .. }
        | Error::File { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        Error::Push { .. } | Error::Remote { .. } => StatusCode::BAD_GATEWAY,
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = status(&self);
        let internal = status.is_server_error()
            && status != StatusCode::BAD_GATEWAY
            && status != StatusCode::SERVICE_UNAVAILABLE;
        let message = if internal {
            tracing::error!(error = %self, "request failed");
            "internal error; the service log has the details".to_string()
        } else {
            if status.is_server_error() {
                tracing::warn!(error = %self, "request failed");
            }
            self.to_string()
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message,
                field: self.field().map(str::to_string),
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Error::MethodNotAllowed { allowed, .. } = &self {
            if let Ok(allowed) = HeaderValue::from_str(allowed) {
                response.headers_mut().insert(header::ALLOW, allowed);
            }
        }
        response
    }
}
