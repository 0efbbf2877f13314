//! What `meshcanary serve` sets in the controller besides its seams (store, router, observer):
//! the config to start from, how long proxies may take to follow a push, the client rollout hooks
//! are called with, and which finished rollouts are kept.

use crate::retention::Retention;
use crate::webhook;
use crate::workloads::WorkloadScaler;
use meshcanary_core::config::FilterConfig;
use std::sync::Arc;
use std::time::Duration;

/// The default [`ControllerOptions::proxy_grace`].
pub const DEFAULT_PROXY_GRACE: Duration = Duration::from_secs(10);

/// The controller's settings; the default is what `serve` uses without flags.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// The config to start from when there is no saved state and the router's target holds
    /// none (`--routes`).
    pub initial: Option<FilterConfig>,
    /// How long proxies may take to run a pushed config before readiness reports the ones that
    /// do not (they rejected it, or do not receive it) (`--proxy-grace`).
    pub proxy_grace: Duration,
    /// Calls rollout hooks (`--webhook-ca-file` adds CAs it trusts).
    pub webhooks: webhook::Client,
    /// Which finished rollouts are kept (`--retain-finished*`).
    pub retention: Retention,
    /// Scales the Deployments rollouts name in `workloads` (Kubernetes mode); without it a
    /// rollout with `workloads` is refused.
    pub scaler: Option<Arc<dyn WorkloadScaler>>,
}

impl Default for ControllerOptions {
    fn default() -> ControllerOptions {
        ControllerOptions {
            initial: None,
            proxy_grace: DEFAULT_PROXY_GRACE,
            webhooks: webhook::Client::default(),
            retention: Retention::default(),
            scaler: None,
        }
    }
}
