//! Health, readiness and the service's own metrics.

use super::AppState;
use crate::api::error::ErrorBody;
use crate::error::{Error, Result};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "system", responses((status = 200, description = "Alive", body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Which readiness checks to leave out.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
pub struct ReadyQuery {
    /// A check to leave out (repeatable, or comma-separated): `push`, `save`, `take-over`,
    /// `reload`, `proxies`. The shipped Deployment's readiness probe leaves out `proxies`, so
    /// that proxies rejecting a config never take the API and the module download away.
    #[serde(default)]
    pub exclude: Option<String>,
}

/// Readiness: the current filter config is pushed and saved; a leader has taken over (adopted or
/// resumed its config) and the watched proxies run the generation it pushed; a follower can read
/// the leader's state.
#[utoipa::path(get, path = "/readyz", tag = "system", params(ReadyQuery),
    responses((status = 200, description = "Ready", body = String), (status = 503, description = "Not ready (`not_ready`), and why: the last push, save, take-over or reload failed, or proxies do not run the pushed generation", body = ErrorBody)))]
pub async fn readyz(
    State(state): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<ReadyQuery>,
) -> Result<&'static str> {
    let exclude: Vec<&str> = query
        .exclude
        .as_deref()
        .map(|list| list.split(',').map(str::trim).collect())
        .unwrap_or_default();
    match state.controller.not_ready(&exclude) {
        None => Ok("ready"),
        Some(problem) => Err(Error::Unavailable(problem)),
    }
}

/// The service's metrics in Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "system", responses((status = 200, description = "Prometheus text", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let rollouts = state.controller.list().await;
    let generation = state.controller.filter().await.generation;
    let propagation = state.controller.propagation(generation);
    let text = state.controller.metrics.render(&rollouts, &propagation);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}
