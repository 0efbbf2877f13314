//! Where the filter config goes: the seam between the service and the proxies.

pub mod ecds_file;
pub mod routing_objects;
pub mod wasmplugin;

use crate::error::Result;
use async_trait::async_trait;
use meshcanary_core::config::FilterConfig;

/// Why a push did not go through, by the kind of target: the source of
/// [`crate::Error::Push`].
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Writing the ECDS file failed.
    #[error(transparent)]
    EcdsFile(std::io::Error),
    /// The task writing the ECDS file did not finish: it panicked or was cancelled.
    #[error(transparent)]
    EcdsTask(tokio::task::JoinError),
    /// Writing the WasmPlugin failed.
    #[error(transparent)]
    WasmPlugin(#[from] wasmplugin::WasmPluginError),
    /// Bringing a route's `VirtualService` and `DestinationRule` in line failed.
    #[error(transparent)]
    RoutingObjects(#[from] routing_objects::sync::RoutingObjectsError),
}

impl PushError {
    /// The `error` label of a failed push on `meshcanary_control_pushes_total`: `ecds_file`, or
    /// for a WasmPlugin [`wasmplugin::WasmPluginError::metric_label`], `routing_objects` for a
    /// route's `VirtualService` or `DestinationRule`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            PushError::EcdsFile(_) | PushError::EcdsTask(_) => "ecds_file",
            PushError::WasmPlugin(error) => error.metric_label(),
            PushError::RoutingObjects(error) => error.metric_label(),
        }
    }
}

/// What the router's target holds before the service has written anything, so that a service
/// without saved state adopts a live config instead of overwriting it.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveConfig {
    /// The router cannot read its target back (the ECDS file: the service is its only writer).
    Unknown,
    /// The target does not exist (yet); the service never creates it.
    TargetMissing(String),
    /// The target exists.
    Present {
        /// Its filter config as JSON, if it carries one.
        config: Option<serde_json::Value>,
        /// Where that config lives, for messages (`WasmPlugin ns/name spec.pluginConfig`).
        config_at: String,
        /// The starting config its owner left for the service (JSON text), if any.
        seed: Option<String>,
        /// Where the seed lives, for messages.
        seed_at: String,
    },
}

/// Delivers a complete filter config to the proxies. Applying the same config twice is harmless,
/// so the service simply re-applies after a restart or a failed push.
#[async_trait]
pub trait TrafficRouter: Send + Sync {
    /// Pushes `config` (every route, with its generation).
    async fn apply(&self, config: &FilterConfig) -> Result<()>;
    /// What the target holds now.
    async fn live(&self) -> Result<LiveConfig> {
        Ok(LiveConfig::Unknown)
    }
    /// Where it pushes, for logs and status.
    fn describe(&self) -> String;
}

#[cfg(test)]
mod tests {
    use super::wasmplugin::WasmPluginError;
    use super::*;

    #[test]
    fn a_push_failure_is_labelled_by_its_target_and_cause() {
        let api = |code| {
            kube::Error::Api(
                kube::core::Status::failure("no", "")
                    .with_code(code)
                    .boxed(),
            )
        };
        let cases: [(PushError, &str); 7] = [
            (
                PushError::EcdsFile(std::io::Error::other("disk full")),
                "ecds_file",
            ),
            (
                WasmPluginError::Missing {
                    namespace: "ns".into(),
                    name: "p".into(),
                    source: api(404),
                }
                .into(),
                "wasmplugin_missing",
            ),
            (
                WasmPluginError::PatchForbidden {
                    message: "no".into(),
                    source: api(403),
                }
                .into(),
                "wasmplugin_forbidden",
            ),
            (WasmPluginError::Api(api(500)).into(), "wasmplugin_api"),
            (
                WasmPluginError::Contended { attempts: 5 }.into(),
                "wasmplugin_conflict",
            ),
            (WasmPluginError::NoResourceVersion.into(), "wasmplugin_api"),
            (
                super::routing_objects::sync::RoutingObjectsError::Missing {
                    object: "VirtualService ns/reviews".into(),
                    source: api(404),
                }
                .into(),
                "routing_objects",
            ),
        ];
        for (error, label) in cases {
            let error = crate::Error::Push {
                target: "t".into(),
                source: Box::new(error),
            };
            assert_eq!(error.code(), "push_failed");
            assert_eq!(error.metric_label(), label, "{error}");
        }
        assert_eq!(
            crate::Error::Internal("x".into()).metric_label(),
            "internal"
        );
    }
}
