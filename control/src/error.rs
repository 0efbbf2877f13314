//! The control service's error type: what went wrong, with its cause kept as the error's source,
//! and a stable machine-readable [`Error::code`]. It knows nothing of HTTP: how an error looks on
//! the API (its status and JSON body) is [`crate::api::error`]'s business.

use crate::router::PushError;

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
        /// What is wrong with the value and what would be right, for the person who sent it.
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
        /// The resource, e.g. `rollout r1`.
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
        /// The request's path, as sent.
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
        /// The `--listen` address, e.g. `0.0.0.0:8080`.
        address: String,
        /// What the OS said (in use, not permitted, no such address).
        #[source]
        source: std::io::Error,
    },
    /// A file the service was pointed at (token, routes, module) could not be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file's path, as given on the command line.
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
        /// What does not parse or check, with the field.
        reason: String,
    },
    /// Pushing the filter config failed.
    #[error("push to {target}: {source}")]
    Push {
        /// Where it was pushed.
        target: String,
        /// Why it failed (boxed: a kube error is large, and every `Result` carries the space).
        #[source]
        source: Box<PushError>,
    },
    /// Talking to another service (the Kubernetes API, a Lease) failed.
    #[error("{target}: {source}")]
    Remote {
        /// Which service or object, e.g. `WasmPlugin istio-system/meshcanary`.
        target: String,
        /// What went wrong talking to it.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// An error and its causes in one line, outermost first, leaving out a cause whose text is
/// already there: the service's errors show their cause in their own message (the API shows
/// that message), and a cause that does not (`cannot listen on …`) still gets said.
pub fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut cause = error.source();
    while let Some(error) = cause {
        let text = error.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        cause = error.source();
    }
    parts.join(": ")
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

    /// Talking to `target` failed because of `source`.
    pub fn remote(
        target: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::Remote {
            target: target.into(),
            source: source.into(),
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

    /// The label of this error on the service's metrics: for a failed push, what failed where
    /// ([`PushError::metric_label`]: `ecds_file`, `wasmplugin_missing`, …), since every push
    /// failure has the same [`Error::code`]; otherwise the code.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Push { source, .. } => source.metric_label(),
            other => other.code(),
        }
    }

    /// The path of the one field to blame, when there is one.
    pub fn field(&self) -> Option<&str> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_said_once() {
        let push = Error::Push {
            target: "ECDS file /e.json".into(),
            source: Box::new(PushError::EcdsFile(std::io::Error::other("disk full"))),
        };
        let bind = Error::Bind {
            address: "127.0.0.1:1".into(),
            source: std::io::Error::other("Address already in use"),
        };
        let cases = [
            (push, "push to ECDS file /e.json: disk full"),
            (bind, "cannot listen on 127.0.0.1:1: Address already in use"),
        ];
        for (error, want) in cases {
            assert_eq!(with_causes(&error), want);
        }
    }
}
