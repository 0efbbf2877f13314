//! Request extractors that fail with the API's error shape instead of axum's plain text, naming
//! the field (body path, path parameter, header) that is wrong.

use crate::error::Error;
use axum::body::Bytes;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

/// Whether a `Content-Type` is JSON: `application/json` or an `application/…+json` type, any
/// parameters after `;` (RFC 9110's media type: case-insensitive type and subtype).
pub fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .and_then(|subtype| subtype.strip_suffix("+json"))
            .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

/// A JSON body: requires `Content-Type: application/json`, rejects unknown fields (the types do),
/// and names the field of a parse error.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Self, Error> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !is_json_media_type(content_type) {
            return Err(Error::Malformed {
                field: "Content-Type".into(),
                message: format!(
                    "{content_type:?} is not JSON: send the body with Content-Type: application/json"
                ),
            });
        }
        let bytes =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection| match rejection.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => Error::TooLarge {
                        limit: super::BODY_LIMIT,
                    },
                    _ if timed_out(&rejection) => Error::Timeout(
                        "the request body did not arrive in time (see --idle-timeout)".into(),
                    ),
                    _ => Error::Malformed {
                        field: String::new(),
                        message: rejection.body_text(),
                    },
                })?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|error| Error::Malformed {
                field: meshcanary_core::json_path::path_at(&bytes, error.line(), error.column()),
                message: error.to_string(),
            })
    }
}

/// Whether reading a body failed because it did not arrive in time (the server gives each request
/// body a deadline, see [`crate::connections`]).
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// The `If-Match` header, if sent: the rollout version the client last saw.
pub struct IfMatch(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        match parts.headers.get(header::IF_MATCH) {
            None => Ok(IfMatch(None)),
            Some(value) => value
                .to_str()
                .map(|v| IfMatch(Some(v.to_string())))
                .map_err(|_| Error::Malformed {
                    field: "If-Match".into(),
                    message: "not a valid header value".into(),
                }),
        }
    }
}

/// Path parameters, named in errors by their key: `/v1/rollouts/%ff` is a 400 naming `name`.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(PathRejection::FailedToDeserializePathParams(error)) => {
                let (field, message) = match error.kind() {
                    ErrorKind::InvalidUtf8InPathParam { key } => (
                        key.clone(),
                        "the path segment is not UTF-8 once percent-decoded".to_string(),
                    ),
                    ErrorKind::ParseErrorAtKey {
                        key,
                        value,
                        expected_type,
                    } => (key.clone(), format!("{value:?} is not a {expected_type}")),
                    ErrorKind::DeserializeError {
                        key,
                        value,
                        message,
                    } => (key.clone(), format!("{value:?}: {message}")),
                    _ => (String::new(), error.body_text()),
                };
                Err(Error::Malformed { field, message })
            }
            // The route and the handler disagree on the parameters: ours to fix, not the client's.
            Err(other) => Err(Error::Internal(other.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types() {
        for (content_type, json) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON;charset=UTF-8", true),
            (" application/json ", true),
            ("application/merge-patch+json", true),
            ("application/jsonfoo", false),
            ("application/json-seq", false),
            ("application/+json", false),
            ("text/json", false),
            ("text/plain", false),
            ("", false),
        ] {
            assert_eq!(is_json_media_type(content_type), json, "{content_type:?}");
        }
    }
}
