//! `/v1/routes`: the live filter config, and QA rules on it.

use super::extract::{ApiJson, ApiPath};
use super::AppState;
use crate::api::error::ErrorBody;
use crate::error::{Error, Result};
use crate::view::Propagation;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use meshcanary_core::config::{FilterConfig, RuleConfig};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The filter config as pushed, and how far it has reached.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoutesView {
    /// The config (what the filter's `pluginConfig` holds).
    pub config: FilterConfig,
    /// Why the last push failed, if the current generation is not pushed yet (it is retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_error: Option<String>,
    /// Proxies running `config.generation`.
    pub propagation: Propagation,
    /// In Kubernetes mode: how the live WasmPlugin's pluginConfig differs from `config`, if
    /// someone changed it outside meshcanary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<String>,
}

/// A rule was added.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleAdded {
    /// Its index in the route's `rules`.
    pub index: usize,
    /// The config generation that carries it.
    pub generation: u64,
}

/// The live filter config, signed rules' secrets redacted (`k1:<redacted>`): reads are open by
/// default, and whoever has a key can mint QA tokens.
#[utoipa::path(get, path = "/v1/routes", tag = "routes",
    responses((status = 200, description = "The filter config", body = RoutesView)))]
pub async fn get(State(state): State<AppState>) -> Json<RoutesView> {
    let config = state.controller.filter().await.redacted();
    let propagation = state.controller.propagation(config.generation);
    Json(RoutesView {
        drift: state.controller.drift_seen(),
        push_error: state.controller.push_error(),
        propagation,
        config,
    })
}

/// Appends a QA rule to a route (evaluated after the existing ones).
#[utoipa::path(post, path = "/v1/routes/{route}/rules", tag = "routes", request_body = RuleConfig,
    params(("route" = String, Path, description = "Route name")),
    security(("bearer" = [])),
    responses((status = 201, description = "Added", body = RuleAdded),
              (status = 404, description = "No such route", body = ErrorBody),
              (status = 422, description = "Invalid rule", body = ErrorBody)))]
pub async fn add_rule(
    State(state): State<AppState>,
    ApiPath(route): ApiPath<String>,
    ApiJson(rule): ApiJson<RuleConfig>,
) -> Result<(StatusCode, Json<RuleAdded>)> {
    let index = state.controller.add_rule(&route, rule).await?;
    let generation = state.controller.filter().await.generation;
    Ok((StatusCode::CREATED, Json(RuleAdded { index, generation })))
}

/// Removes a route's QA rule by index.
#[utoipa::path(delete, path = "/v1/routes/{route}/rules/{index}", tag = "routes",
    params(("route" = String, Path, description = "Route name"), ("index" = usize, Path, description = "Rule index")),
    security(("bearer" = [])),
    responses((status = 200, description = "Removed; the removed rule", body = RuleConfig),
              (status = 404, description = "No such route or rule", body = ErrorBody)))]
pub async fn remove_rule(
    State(state): State<AppState>,
    ApiPath((route, index)): ApiPath<(String, String)>,
) -> Result<Json<RuleConfig>> {
    let index: usize = index
        .parse()
        .map_err(|_| Error::NotFound(format!("{index:?} is not a rule index")))?;
    Ok(Json(
        state
            .controller
            .remove_rule(&route, index)
            .await?
            .redacted(),
    ))
}
