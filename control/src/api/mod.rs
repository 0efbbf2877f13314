//! The HTTP API: JSON under `/v1`, bearer-token authentication for writes, errors as
//! `{ "error": { "code", "message", "field" } }`, and an OpenAPI document generated from the
//! handlers (`GET /openapi.json`).
//!
//! Reads are open by default (they show rollout progress and the filter config, nothing secret);
//! `--protect-reads` requires the token for them too. `/healthz`, `/readyz`, `/metrics` and
//! `/openapi.json` are always open, and so are the filter module (`/filter/meshcanary.wasm`) and
//! the dashboard page (`/dashboard`, `/` leads there), which holds no data itself.

pub mod dashboard;
pub mod extract;
pub mod filter;
pub mod rollouts;
pub mod routes;
pub mod system;
#[cfg(test)]
mod tests;

use crate::error::Error;
use crate::service::Controller;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method};
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
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "meshcanary control API",
        description = "Progressive canary rollouts pushed to meshcanary's proxy-wasm filter. Writes need `Authorization: Bearer <token>`. Errors are `{\"error\": {\"code\", \"message\", \"field\"}}`."
    ),
    modifiers(&BearerAuth),
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
    router
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
        .layer(TraceLayer::new_for_http())
        .with_state(state)
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
