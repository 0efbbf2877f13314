//! Request extractors that fail with the API's error shape instead of axum's plain text.

use crate::error::Error;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

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
        if !content_type.starts_with("application/json") {
            return Err(Error::Malformed {
                field: String::new(),
                message: "expected a JSON body with Content-Type: application/json".into(),
            });
        }
        let bytes =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection| match rejection.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => Error::TooLarge {
                        limit: super::BODY_LIMIT,
                    },
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
