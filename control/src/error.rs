//! The control service's error type, and how each error looks on the HTTP API:
//! `{ "error": { "code", "message", "field" } }` with a fitting status. Server-side failures (5xx)
//! are logged in full and answered with a generic message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Results in the control service.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the control service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request or config field is invalid (422).
    #[error("{}{reason}", field_prefix(field))]
    Invalid {
        /// Field path, e.g. `steps[1].setWeight.percent`.
        field: String,
        /// Why.
        reason: String,
    },
    /// The request body is not the JSON expected (400).
    #[error("{}{message}", field_prefix(field))]
    Malformed {
        /// Field path where parsing failed, if known.
        field: String,
        /// What the parser said.
        message: String,
    },
    /// No such thing (404).
    #[error("{0}")]
    NotFound(String),
    /// The action does not fit the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// `If-Match` did not match the current version (412).
    #[error("{what} is at version {current}, not {expected}: re-read it and retry")]
    VersionMismatch {
        /// The resource.
        what: String,
        /// The version the client expected.
        expected: String,
        /// The version it has.
        current: u64,
    },
    /// The request body is larger than the service accepts (413).
    #[error("request body exceeds {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The route exists but not with this method (405); `allowed` is its `Allow` header.
    #[error("{method} is not allowed on {path}; use {}", allowed.replace(',', ", "))]
    MethodNotAllowed {
        /// The method asked for.
        method: String,
        /// The path.
        path: String,
        /// The methods the path accepts, as in `Allow`.
        allowed: String,
    },
    /// The client took too long to send its request (408).
    #[error("{0}")]
    Timeout(String),
    /// This replica does not lead; only the leader writes (503).
    #[error("this replica is not the leader{}; send writes to the leader", leader.as_deref().map(|l| format!(" (the leader is {l})")).unwrap_or_default())]
    NotLeader {
        /// The leader's identity, if known.
        leader: Option<String>,
    },
    /// This replica leads but cannot serve writes yet: it is taking over, or waiting for what it
    /// drives to exist (503).
    #[error("not ready: {0}")]
    Unavailable(String),
    /// Someone else changed the saved state since this replica read it: re-read and retry.
    #[error("state store {path}: {reason}")]
    StateConflict {
        /// Where the state lives.
        path: String,
        /// What changed.
        reason: String,
    },
    /// Something went wrong inside the service (500); the message is logged, not shown.
    #[error("{0}")]
    Internal(String),
    /// The API's address could not be listened on.
    #[error("cannot listen on {address}")]
    Bind {
        /// The address.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file the service was pointed at (token, routes, module) could not be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// Missing or wrong bearer token (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Reading or writing the state on disk failed.
    #[error("state store {path}: {source}")]
    Store {
        /// The file involved.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The state on disk could not be understood.
    #[error("state store {path} is corrupt: {reason}")]
    CorruptState {
        /// The file involved.
        path: String,
        /// Why.
        reason: String,
    },
    /// Pushing the filter config failed.
    #[error("push to {target}: {reason}")]
    Push {
        /// Where it was pushed.
        target: String,
        /// Why it failed.
        reason: String,
    },
    /// Talking to another service (Envoy admin, the control API) failed.
    #[error("{target}: {reason}")]
    Remote {
        /// Whom.
        target: String,
        /// Why.
        reason: String,
    },
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}

impl Error {
    /// An invalid field.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
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

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Invalid { .. } => "invalid_field",
            Error::Malformed { .. } => "malformed_request",
            Error::NotFound(_) => "not_found",
            Error::Conflict(_) => "conflict",
            Error::VersionMismatch { .. } => "version_mismatch",
            Error::Unauthorized(_) => "unauthorized",
            Error::TooLarge { .. } => "payload_too_large",
            Error::MethodNotAllowed { .. } => "method_not_allowed",
            Error::Timeout(_) => "request_timeout",
            Error::NotLeader { .. } => "not_leader",
            Error::Unavailable(_) => "not_ready",
            Error::StateConflict { .. } => "conflict",
            Error::Store { .. }
            | Error::CorruptState { .. }
            | Error::Internal(_)
            | Error::Bind { .. }
            | Error::File { .. } => "internal",
            Error::Push { .. } => "push_failed",
            Error::Remote { .. } => "upstream_failed",
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            Error::Invalid { field, .. } | Error::Malformed { field, .. } if !field.is_empty() => {
                Some(field)
            }
            _ => None,
        }
    }
}

impl From<meshcanary_core::ConfigError> for Error {
    fn from(error: meshcanary_core::ConfigError) -> Error {
        Error::Invalid {
            field: error.field,
            reason: error.reason,
        }
    }
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
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

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
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
            if let Ok(allowed) = axum::http::HeaderValue::from_str(allowed) {
                response
                    .headers_mut()
                    .insert(axum::http::header::ALLOW, allowed);
            }
        }
        response
    }
}
