//! What the proxies report back: the seam between the service and the proxies' stats.

pub mod envoy_admin;
pub mod prometheus;

use crate::analysis::{MirrorCounters, Snapshot};
use async_trait::async_trait;
use serde::Serialize;
use utoipa::ToSchema;

/// One proxy's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyGeneration {
    /// Which proxy (its admin address).
    pub proxy: String,
    /// The filter config generation it runs, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Why it did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why the proxies' stats could not be read, by the observer that read them.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// An Envoy admin endpoint could not be read.
    #[error(transparent)]
    EnvoyAdmin(#[from] envoy_admin::EnvoyAdminError),
    /// The Prometheus query failed.
    #[error(transparent)]
    Prometheus(#[from] prometheus::PrometheusError),
}

/// Reads the filter's stats from the proxies.
#[async_trait]
pub trait MetricsObserver: Send + Sync {
    /// The config generation every watched proxy runs (`meshcanary_config_generation`).
    async fn generations(&self) -> Vec<ProxyGeneration>;

    /// Every proxy's cumulative per-variant counters for `route`, keyed by proxy. An error when
    /// any proxy could not be read: a check that sees only part of the traffic must not pass.
    async fn snapshots(&self, route: &str) -> Result<Vec<(String, Snapshot)>, ObserveError>;

    /// The copies mirrored to `route`'s `variant`, summed over the proxies, if this observer can
    /// tell (`None` when it cannot, as over Prometheus, where the mesh's own telemetry counts
    /// them). An error when any proxy could not be read.
    async fn mirrored(
        &self,
        _route: &str,
        _variant: &str,
    ) -> Result<Option<MirrorCounters>, ObserveError> {
        Ok(None)
    }

    /// Where it reads from, for logs and status.
    fn describe(&self) -> String;
}
