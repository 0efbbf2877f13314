//! `/v1/rollouts`: create, list, read, delete, and the actions on a rollout.

use super::extract::{ApiJson, ApiPath, IfMatch};
use super::paging::{self, ListQuery};
use super::AppState;
use crate::analysis::MirrorCounters;
use crate::api::error::ErrorBody;
use crate::error::{Error, Result};
pub use crate::rollout::action::RolloutAction;
use crate::rollout::action::UnknownAction;
use crate::rollout::engine::Command;
use crate::rollout::{Rollout, RolloutSpec, Weight};
use crate::view::{Propagation, WorkloadsView};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A rollout as the API shows it: the rollout and how far its weight has reached.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutView {
    /// The rollout as stored: its spec, plan and status, flattened into this object.
    #[serde(flatten)]
    pub rollout: Rollout,
    /// How many proxies run the generation carrying `status.canaryWeight`.
    pub propagation: Propagation,
    /// Once the rollout has mirrored (a `mirror` step), what the proxies counted of the copies
    /// sent to the canary (since they started), where the observer can tell (Envoy admin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirrored: Option<MirrorCounters>,
    /// With `workloads`: each variant's Deployment with its desired and ready replicas, and the
    /// current batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workloads: Option<WorkloadsView>,
}

fn view(state: &AppState, rollout: Rollout) -> RolloutView {
    let propagation = state
        .controller
        .propagation(rollout.status.weight_generation);
    let mirrored = state.controller.mirrored(&rollout.spec.name);
    let workloads = WorkloadsView::of(
        &rollout,
        &state.controller.workload_readings(),
        &state.controller.workload_failures(),
    );
    RolloutView {
        rollout,
        propagation,
        mirrored,
        workloads,
    }
}

fn with_etag(status: StatusCode, view: RolloutView) -> Response {
    let etag = HeaderValue::from_str(&format!("\"{}\"", view.rollout.version)).ok();
    let mut response = (status, Json(view)).into_response();
    if let Some(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// A page of rollouts, finished ones included (those the retention policy keeps).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutList {
    /// The rollouts, newest first (by creation time, then name).
    pub items: Vec<RolloutView>,
    /// Pass as `continue` for the next page; absent on the last page.
    #[serde(rename = "continue", default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// How many rollouts there are now, on every page together.
    pub total: usize,
}

/// Rollouts, newest first, a page at a time: `limit` (1 to 1000, default 100) and `continue`, the
/// token of the page before. Paging is stable under concurrent writes: a rollout that exists
/// while a client pages is listed once.
#[utoipa::path(get, path = "/v1/rollouts", tag = "rollouts",
    params(("limit" = Option<usize>, Query, description = "Rollouts per page, 1 to 1000 (default 100)"),
           ("continue" = Option<String>, Query, description = "The `continue` of the page before")),
    responses((status = 200, description = "A page of rollouts", body = RolloutList),
              (status = 400, description = "An unknown or repeated parameter, a limit that is not a number", body = ErrorBody),
              (status = 422, description = "A limit out of range, a token this service did not make", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<RolloutList>> {
    let query = ListQuery::parse(query.as_deref())?;
    let rollouts = state.controller.list().await;
    let total = rollouts.len();
    let (page, next) = paging::page(rollouts, &query);
    Ok(Json(RolloutList {
        items: page.into_iter().map(|r| view(&state, r)).collect(),
        next: next.map(|cursor| cursor.token()),
        total,
    }))
}

/// Creates a rollout; it starts at once.
#[utoipa::path(post, path = "/v1/rollouts", tag = "rollouts", request_body = RolloutSpec,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created and started", body = RolloutView, headers(("ETag" = String), ("Location" = String))),
        (status = 400, description = "Malformed JSON or unknown field", body = ErrorBody),
        (status = 401, description = "No or wrong token", body = ErrorBody),
        (status = 409, description = "Name taken, or the route already has a running rollout", body = ErrorBody),
        (status = 422, description = "A field is invalid", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(spec): ApiJson<RolloutSpec>,
) -> Result<Response> {
    let rollout = match &state.resources {
        Some(resources) => resources.create(spec).await?,
        None => state.controller.create(spec).await?,
    };
    let location = HeaderValue::from_str(&format!("/v1/rollouts/{}", rollout.spec.name)).ok();
    let mut response = with_etag(StatusCode::CREATED, view(&state, rollout));
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// One rollout.
#[utoipa::path(get, path = "/v1/rollouts/{name}", tag = "rollouts",
    params(("name" = String, Path, description = "Rollout name")),
    responses((status = 200, description = "The rollout", body = RolloutView, headers(("ETag" = String))),
              (status = 404, description = "No such rollout", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response> {
    let rollout = state.controller.get(&name).await?;
    Ok(with_etag(StatusCode::OK, view(&state, rollout)))
}

/// Deletes a finished rollout (abort a running one first).
#[utoipa::path(delete, path = "/v1/rollouts/{name}", tag = "rollouts",
    params(("name" = String, Path, description = "Rollout name"), ("If-Match" = Option<String>, Header, description = "Only if the rollout is at this version")),
    security(("bearer" = [])),
    responses((status = 204, description = "Deleted"),
              (status = 404, description = "No such rollout", body = ErrorBody),
              (status = 409, description = "Still running", body = ErrorBody),
              (status = 412, description = "Version mismatch", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    IfMatch(version): IfMatch,
) -> Result<StatusCode> {
    state.controller.delete(&name, version).await?;
    if let Some(resources) = &state.resources {
        // Its record would bring it back on the next load while the resource lives.
        resources.delete(&name).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Pauses, resumes, promotes, aborts or finishes a rollout.
#[utoipa::path(post, path = "/v1/rollouts/{name}/{action}", tag = "rollouts",
    params(("name" = String, Path, description = "Rollout name"),
           ("action" = RolloutAction, Path, description = "pause, resume, promote, abort or finish"),
           ("If-Match" = Option<String>, Header, description = "Only if the rollout is at this version")),
    security(("bearer" = [])),
    responses((status = 200, description = "Done", body = RolloutView, headers(("ETag" = String))),
              (status = 404, description = "No such rollout or action", body = ErrorBody),
              (status = 409, description = "The action does not fit the rollout's phase", body = ErrorBody),
              (status = 412, description = "Version mismatch", body = ErrorBody)))]
pub async fn action(
    State(state): State<AppState>,
    ApiPath((name, action)): ApiPath<(String, String)>,
    IfMatch(version): IfMatch,
) -> Result<Response> {
    let action: RolloutAction = action
        .parse()
        .map_err(|error: UnknownAction| Error::NotFound(error.to_string()))?;
    let rollout = state
        .controller
        .command(&name, action.into(), version)
        .await?;
    Ok(with_etag(StatusCode::OK, view(&state, rollout)))
}

/// Sets the canary weight by hand and pauses the rollout; `resume` continues from the current step.
#[utoipa::path(put, path = "/v1/rollouts/{name}/weight", tag = "rollouts", request_body = Weight,
    params(("name" = String, Path, description = "Rollout name"), ("If-Match" = Option<String>, Header, description = "Only if the rollout is at this version")),
    security(("bearer" = [])),
    responses((status = 200, description = "Weight set, rollout paused", body = RolloutView, headers(("ETag" = String))),
              (status = 409, description = "The rollout is finished or promoting", body = ErrorBody),
              (status = 422, description = "Invalid weight", body = ErrorBody)))]
pub async fn set_weight(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    IfMatch(version): IfMatch,
    ApiJson(weight): ApiJson<Weight>,
) -> Result<Response> {
    let basis_points = weight.checked("")?;
    let rollout = state
        .controller
        .command(&name, Command::SetWeight(basis_points), version)
        .await?;
    Ok(with_etag(StatusCode::OK, view(&state, rollout)))
}

/// The body of `PUT /v1/rollouts/{name}/partition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PartitionBody {
    /// The last batch (0-based) the rollout may enter; `null` or absent removes the partition.
    #[serde(default)]
    pub batch_partition: Option<u32>,
}

/// Raises, lowers or removes a rollout's `workloads.batchPartition`; a rollout it held goes on
/// once it no longer holds it.
#[utoipa::path(put, path = "/v1/rollouts/{name}/partition", tag = "rollouts", request_body = PartitionBody,
    params(("name" = String, Path, description = "Rollout name"), ("If-Match" = Option<String>, Header, description = "Only if the rollout is at this version")),
    security(("bearer" = [])),
    responses((status = 200, description = "Partition set", body = RolloutView, headers(("ETag" = String))),
              (status = 409, description = "The rollout is finished", body = ErrorBody),
              (status = 422, description = "The rollout has no batches, or the index is past them", body = ErrorBody)))]
pub async fn set_partition(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    IfMatch(version): IfMatch,
    ApiJson(body): ApiJson<PartitionBody>,
) -> Result<Response> {
    let rollout = state
        .controller
        .command(&name, Command::SetPartition(body.batch_partition), version)
        .await?;
    Ok(with_etag(StatusCode::OK, view(&state, rollout)))
}
