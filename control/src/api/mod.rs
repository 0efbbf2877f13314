//! The HTTP API: JSON under `/v1`, bearer-token authentication for writes, errors as
//! `{ "error": { "code", "message", "field" } }`, and an OpenAPI document generated from the
//! handlers (`GET /openapi.json`).
//!
//! Reads are open by default (they show rollout progress and the filter config, nothing secret);
//! `--protect-reads` requires the token for them too. `/healthz`, `/readyz`, `/metrics` and
//! `/openapi.json` are always open, and so are the filter module (`/filter/meshcanary.wasm`) and
//! the dashboard page (`/dashboard`, `/` leads there), which holds no data itself.

pub mod dashboard;
pub mod error;
pub mod extract;
pub mod filter;
pub mod paging;
pub mod rollouts;
pub mod routes;
pub mod system;
#[cfg(test)]
mod tests;

use crate::controller::Controller;
use crate::error::Error;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    /// The service core.
    pub controller: Arc<Controller>,
    /// The bearer token writes need.
    pub token: Arc<str>,
    /// Whether reads need it too.
    pub protect_reads: bool,
    /// The filter module to serve, if the service has one.
    pub wasm: Option<Arc<filter::WasmArtifact>>,
    /// Where created rollouts live as resources (Kubernetes mode: MeshRollouts); without it
    /// (standalone) the API writes the service's state directly.
    pub resources: Option<Arc<dyn crate::reconcile::front::RolloutResources>>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "meshcanary control API",
        description = "Progressive canary rollouts pushed to meshcanary's proxy-wasm filter. Writes need `Authorization: Bearer <token>`. Errors are `{\"error\": {\"code\", \"message\", \"field\"}}`."
    ),
    modifiers(&BearerAuth),
    // A path parameter's type, which the routes do not register themselves.
    components(schemas(crate::rollout::action::RolloutAction)),
    tags((name = "rollouts", description = "Rollouts and their actions"), (name = "routes", description = "The live filter config"), (name = "system", description = "Health, metrics, this document"))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// The whole API with its OpenAPI document.
pub fn app(state: AppState) -> axum::Router {
    let (router, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(rollouts::list, rollouts::create))
        .routes(routes!(rollouts::get, rollouts::delete))
        .routes(routes!(rollouts::action))
        .routes(routes!(rollouts::set_weight))
        .routes(routes!(rollouts::set_partition))
        .routes(routes!(routes::get))
        .routes(routes!(routes::add_rule))
        .routes(routes!(routes::remove_rule))
        .routes(routes!(system::healthz))
        .routes(routes!(system::readyz))
        .routes(routes!(system::metrics))
        .routes(routes!(filter::module))
        .routes(routes!(filter::sha256))
        .routes(routes!(dashboard::page))
        .split_for_parts();
    let openapi = Arc::new(openapi);
    let routes = router
        .route("/", axum::routing::get(dashboard::root))
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let openapi = openapi.clone();
                async move { axum::Json(openapi.as_ref().clone()) }
            }),
        )
        .fallback(|| async { Error::NotFound("no such endpoint; see /openapi.json".into()) })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state);
    // Error answers are rewritten around the finished router, not inside it: axum adds a 405's
    // `Allow` header on the way out of the route, after any layer inside the router has run.
    let service = tower::ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(axum::middleware::from_fn(json_errors))
        .service(routes);
    axum::Router::new().fallback_service(service)
}

const OPEN_PATHS: [&str; 8] = [
    "/",
    dashboard::PATH,
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/filter/meshcanary.wasm",
    "/filter/meshcanary.wasm.sha256",
];

/// Every error answer is `{"error": {…}}`, whoever produced it: answers that axum made on its own
/// (a 405 for a path that exists with other methods, a rejection from an extractor that is not
/// one of ours) are rewritten in the API's shape, keeping their status where the API has a code
/// for it and headers such as `Allow`. The API's own errors are JSON already and pass untouched.
async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(extract::is_json_media_type);
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    // What axum says in its plain-text rejections is short; a long body is not a rejection.
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())
        .unwrap_or_default();
    let said = |fallback: &str| {
        if text.is_empty() {
            fallback.to_string()
        } else {
            text.clone()
        }
    };
    let error = match status {
        StatusCode::METHOD_NOT_ALLOWED => Error::MethodNotAllowed {
            method,
            path,
            allowed: parts
                .headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
        },
        StatusCode::NOT_FOUND => Error::NotFound(said("no such endpoint; see /openapi.json")),
        StatusCode::REQUEST_TIMEOUT => Error::Timeout(said("the request took too long to arrive")),
        StatusCode::PAYLOAD_TOO_LARGE => Error::TooLarge { limit: BODY_LIMIT },
        StatusCode::UNAUTHORIZED => Error::Unauthorized(said("unauthorized")),
        StatusCode::SERVICE_UNAVAILABLE => Error::Unavailable(said("the service is not ready")),
        status if status.is_client_error() => Error::Malformed {
            field: String::new(),
            message: said(status.canonical_reason().unwrap_or("bad request")),
        },
        _ => Error::Internal(format!("{method} {path} answered {status}: {text}")),
    };
    let mut converted = error.into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            converted.headers_mut().entry(name).or_insert(value.clone());
        }
    }
    converted
}

async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let is_read = matches!(*request.method(), Method::GET | Method::HEAD);
    let open = OPEN_PATHS.contains(&request.uri().path()) || (is_read && !state.protect_reads);
    if !open {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let valid = presented
            .is_some_and(|token| bool::from(token.as_bytes().ct_eq(state.token.as_bytes())));
        if !valid {
            let reason = match presented {
                None => "this request needs an Authorization: Bearer <token> header",
                Some(_) => "the bearer token is not valid",
            };
            return Error::Unauthorized(reason.into()).into_response();
        }
    }
    next.run(request).await
}
