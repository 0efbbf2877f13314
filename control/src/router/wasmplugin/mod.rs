//! The Istio router: writes the filter config into a `WasmPlugin`'s `spec.pluginConfig`.
//!
//! istiod sends each `WasmPlugin` to the selected proxies over ECDS, so a `pluginConfig` change
//! reaches every sidecar without touching routing (see `shared/ENVOY-NOTES.md`). The `WasmPlugin`
//! itself (its `url`, `sha256`, `selector`, `match`, `phase`, `priority`, `failStrategy`, labels…)
//! belongs to whoever installed it — Helm, a GitOps tool, a person — and this router never changes
//! any of it: it owns `spec.pluginConfig` and nothing else.
//!
//! # Server-side apply of one field, with a `resourceVersion` precondition
//!
//! Each push reads the object and sends a server-side apply (field manager `meshcanary`,
//! `force`) naming `spec.pluginConfig` alone, with the `metadata.resourceVersion` it read. So:
//! - the API server records meshcanary as the owner of every field of `pluginConfig`, and of
//!   nothing else. A GitOps tool applying the rest of the manifest (without `pluginConfig`, as the
//!   shipped one is) never conflicts with it and never resets it; if Git still carries a
//!   `pluginConfig`, that tool's own apply now fails with a conflict naming meshcanary, which is
//!   the honest answer (see README, "GitOps");
//! - fields meshcanary owned and no longer sends (a removed `responseHeader`) are removed by the
//!   apply itself; keys someone else slipped into `pluginConfig` by hand are not ours to drop by
//!   apply, so a follow-up merge patch removes them: the live config ends exactly as pushed;
//! - every write is conditional on what was read: on 409 Conflict the router reads again and
//!   retries, a bounded number of times, so a concurrent edit of another field is never lost.
//!
//! Drift (someone changing `pluginConfig` behind the service's back) is noticed by a watch and
//! handled by the service's policy ([`drift`]), not silently by the next push.

use crate::error::{Error, Result};
use crate::kube::{describe_error, is_conflict, FIELD_MANAGER};
pub mod drift;

use crate::router::LiveConfig;
use crate::router::TrafficRouter;
use async_trait::async_trait;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::Api;
use meshcanary_core::config::FilterConfig;
use serde_json::{json, Map, Value};
use tokio::sync::watch;

/// How many times a push re-reads and retries after a 409 before giving up. Each conflict means
/// someone else wrote the `WasmPlugin` during our read-patch round trip; a handful in a row means
/// something is fighting over it, and the service's retry loop will try again later anyway.
pub const MAX_CONFLICT_RETRIES: usize = 5;

/// The annotation on a `WasmPlugin` holding the filter config the service starts from when the
/// `WasmPlugin` has no `pluginConfig` yet (JSON, the `pluginConfig` schema). Whoever installs the
/// `WasmPlugin` owns it; the service only reads it.
pub const INITIAL_CONFIG_ANNOTATION: &str = "meshcanary.io/initial-plugin-config";

/// The `WasmPlugin` custom resource: `extensions.istio.io/v1alpha1`, plural `wasmplugins`.
pub fn wasmplugin_resource() -> ApiResource {
    ApiResource {
        group: "extensions.istio.io".into(),
        version: "v1alpha1".into(),
        api_version: "extensions.istio.io/v1alpha1".into(),
        kind: "WasmPlugin".into(),
        plural: "wasmplugins".into(),
    }
}

/// Pushes filter configs into one namespaced `WasmPlugin`'s `spec.pluginConfig`.
pub struct WasmPluginRouter {
    api: Api<DynamicObject>,
    namespace: String,
    name: String,
    expected: Option<watch::Sender<FilterConfig>>,
}

impl WasmPluginRouter {
    /// A router for the `WasmPlugin` `namespace/name`, which must already exist: the router
    /// changes its `pluginConfig` only, it never creates or deletes it.
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> WasmPluginRouter {
        WasmPluginRouter {
            api: Api::namespaced_with(client, namespace, &wasmplugin_resource()),
            namespace: namespace.to_string(),
            name: name.to_string(),
            expected: None,
        }
    }

    /// Also publishes each config on `expected` just before pushing it: hand the receiver to
    /// [`drift::watch_drift`] and it always compares against what was last pushed.
    /// Create the channel with the config the service starts from.
    pub fn with_expected(mut self, expected: watch::Sender<FilterConfig>) -> WasmPluginRouter {
        self.expected = Some(expected);
        self
    }

    fn push_error(&self, source: WasmPluginError) -> Error {
        Error::Push {
            target: self.describe(),
            source: Box::new(source.into()),
        }
    }

    /// A failed push call, said in terms of what to do about it.
    fn map_error(&self, error: kube::Error) -> Error {
        let source = match crate::kube::api_status(&error) {
            Some((404, _, _)) => WasmPluginError::Missing {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                source: error,
            },
            Some((422, _, message)) => WasmPluginError::Rejected {
                message: message.to_string(),
                source: error,
            },
            Some((403, _, message)) => WasmPluginError::PatchForbidden {
                message: message.to_string(),
                source: error,
            },
            _ => WasmPluginError::Api(error),
        };
        self.push_error(source)
    }
}

/// Why pushing to or reading the `WasmPlugin` failed.
#[derive(Debug, thiserror::Error)]
pub enum WasmPluginError {
    /// The `WasmPlugin` does not exist (404); the service never creates it.
    #[error("WasmPlugin {namespace}/{name} does not exist; install it first (meshcanary only writes its spec.pluginConfig)")]
    Missing {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },
    /// The API server refused the config (422): the CRD's schema or an admission webhook.
    #[error("the API server rejected the pluginConfig: {message}")]
    Rejected {
        /// What the API server said.
        message: String,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },
    /// The service account may not write the `WasmPlugin` (403).
    #[error("not allowed: {message} (the service account needs get and patch on wasmplugins.extensions.istio.io)")]
    PatchForbidden {
        /// What the API server said.
        message: String,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },
    /// The service account may not read the `WasmPlugin` (403).
    #[error(
        "not allowed to read it: {message} (a Role in its namespace must grant the service \
         account get, list, watch and patch on it, as envoy-config/istio/bookinfo/rbac.yaml does)"
    )]
    ReadForbidden {
        /// What the API server said.
        message: String,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },
    /// Any other failed call: shown by the API server's message, or the transport error.
    #[error("{}", describe_error(.0))]
    Api(#[source] kube::Error),
    /// The config could not be turned into JSON.
    #[error("cannot serialise the config: {0}")]
    Serialise(#[source] serde_json::Error),
    /// The API server answered without a `resourceVersion`, which every write is conditional on.
    #[error("the API server returned no resourceVersion")]
    NoResourceVersion,
    /// Someone else wrote the `WasmPlugin` during every read-patch round trip.
    #[error("the WasmPlugin changed under every one of {attempts} attempts; will retry")]
    Contended {
        /// How many round trips were tried.
        attempts: usize,
    },
}

impl WasmPluginError {
    /// The `error` label of a failed push: `wasmplugin_missing`, `wasmplugin_rejected`,
    /// `wasmplugin_forbidden`, `wasmplugin_conflict` (changed under every attempt),
    /// `wasmplugin_api` (any other failed call) or `internal` (the config did not serialise).
    pub fn metric_label(&self) -> &'static str {
        match self {
            WasmPluginError::Missing { .. } => "wasmplugin_missing",
            WasmPluginError::Rejected { .. } => "wasmplugin_rejected",
            WasmPluginError::PatchForbidden { .. } | WasmPluginError::ReadForbidden { .. } => {
                "wasmplugin_forbidden"
            }
            WasmPluginError::Contended { .. } => "wasmplugin_conflict",
            WasmPluginError::Api(_) | WasmPluginError::NoResourceVersion => "wasmplugin_api",
            WasmPluginError::Serialise(_) => "internal",
        }
    }
}

#[async_trait]
impl TrafficRouter for WasmPluginRouter {
    async fn apply(&self, config: &FilterConfig) -> Result<()> {
        if let Some(expected) = &self.expected {
            expected.send_if_modified(|current| {
                let changed = current != config;
                if changed {
                    *current = config.clone();
                }
                changed
            });
        }
        let desired = serde_json::to_value(config)
            .map_err(|error| self.push_error(WasmPluginError::Serialise(error)))?;
        let apply = PatchParams::apply(FIELD_MANAGER).force();
        let merge = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        for attempt in 1..=MAX_CONFLICT_RETRIES {
            let live = self
                .api
                .get(&self.name)
                .await
                .map_err(|error| self.map_error(error))?;
            let Some(version) = live.metadata.resource_version.clone() else {
                return Err(self.push_error(WasmPluginError::NoResourceVersion));
            };
            let written = match self
                .api
                .patch(
                    &self.name,
                    &apply,
                    &Patch::Apply(self.apply_body(&desired, &version)),
                )
                .await
            {
                Ok(written) => written,
                Err(error) if is_conflict(&error) => {
                    tracing::info!(target = %self.describe(), attempt, "WasmPlugin changed while pushing; re-reading");
                    continue;
                }
                Err(error) => return Err(self.map_error(error)),
            };
            // Keys someone else added to pluginConfig survive an apply (they are not ours):
            // remove them, still conditional on the version just written.
            let current = written
                .data
                .pointer("/spec/pluginConfig")
                .unwrap_or(&Value::Null);
            let Some(written_version) = written.metadata.resource_version.as_deref() else {
                return Err(self.push_error(WasmPluginError::NoResourceVersion));
            };
            let Some(patch) = plugin_config_patch(current, &desired, written_version) else {
                return Ok(());
            };
            match self
                .api
                .patch(&self.name, &merge, &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                Err(error) if is_conflict(&error) => {
                    tracing::info!(target = %self.describe(), attempt, "WasmPlugin changed while pushing; re-reading");
                }
                Err(error) => return Err(self.map_error(error)),
            }
        }
        Err(self.push_error(WasmPluginError::Contended {
            attempts: MAX_CONFLICT_RETRIES,
        }))
    }

    async fn live(&self) -> Result<LiveConfig> {
        let object = self.api.get_opt(&self.name).await.map_err(|error| {
            let source = match crate::kube::api_status(&error) {
                Some((403, _, message)) => WasmPluginError::ReadForbidden {
                    message: message.to_string(),
                    source: error,
                },
                _ => WasmPluginError::Api(error),
            };
            Error::remote(self.describe(), source)
        })?;
        let Some(object) = object else {
            return Ok(LiveConfig::TargetMissing(format!(
                "{} does not exist",
                self.describe()
            )));
        };
        let seed = object
            .metadata
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(INITIAL_CONFIG_ANNOTATION))
            .cloned();
        Ok(LiveConfig::Present {
            config: object.data.pointer("/spec/pluginConfig").cloned(),
            config_at: format!("{} spec.pluginConfig", self.describe()),
            seed,
            seed_at: format!("{} annotation {INITIAL_CONFIG_ANNOTATION}", self.describe()),
        })
    }

    fn describe(&self) -> String {
        format!("WasmPlugin {}/{}", self.namespace, self.name)
    }
}

impl WasmPluginRouter {
    /// The server-side apply body: the object's identity, the precondition, and
    /// `spec.pluginConfig` — the one field the service owns.
    fn apply_body(&self, desired: &Value, resource_version: &str) -> Value {
        let resource = wasmplugin_resource();
        json!({
            "apiVersion": resource.api_version,
            "kind": resource.kind,
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": resource_version,
            },
            "spec": {"pluginConfig": desired},
        })
    }
}

/// The merge patch body that sets `spec.pluginConfig` from `live` to `desired`, conditional on
/// `resource_version`, or `None` when they are already equal.
pub fn plugin_config_patch(live: &Value, desired: &Value, resource_version: &str) -> Option<Value> {
    let change = merge_patch(live, desired)?;
    Some(json!({
        "metadata": {"resourceVersion": resource_version},
        "spec": {"pluginConfig": change},
    }))
}

/// The RFC 7386 merge patch turning `live` into `desired`, or `None` if they are equal.
///
/// Objects are diffed key by key: keys only in `live` become `null` (a merge patch deletes them),
/// changed keys carry their new value. Anything else — arrays, scalars, an object replacing a
/// non-object — is sent whole, because a merge patch replaces such values whole anyway.
/// `desired` must not contain `null`s, which a merge patch cannot express as values;
/// a serialised [`FilterConfig`] has none (absent options are skipped).
pub fn merge_patch(live: &Value, desired: &Value) -> Option<Value> {
    if live == desired {
        return None;
    }
    let (Value::Object(live), Value::Object(desired)) = (live, desired) else {
        return Some(desired.clone());
    };
    let mut patch = Map::new();
    for key in live.keys() {
        if !desired.contains_key(key) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    for (key, want) in desired {
        let change = match live.get(key) {
            Some(have) => merge_patch(have, want),
            None => Some(want.clone()),
        };
        if let Some(change) = change {
            patch.insert(key.clone(), change);
        }
    }
    Some(Value::Object(patch))
}

/// Applies an RFC 7386 merge patch to `target`, as the API server does. Used to check
/// [`merge_patch`]; tests of callers can use it too.
pub fn apply_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                apply_merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patches_turn_live_into_desired_exactly() {
        let cases = [
            // (live, desired, expected patch)
            (json!({"a": 1}), json!({"a": 1}), None),
            (json!(null), json!({"a": 1}), Some(json!({"a": 1}))),
            (json!("text"), json!({"a": 1}), Some(json!({"a": 1}))),
            (
                json!({"a": 1, "gone": true}),
                json!({"a": 2}),
                Some(json!({"a": 2, "gone": null})),
            ),
            (
                json!({"o": {"keep": 1, "drop": 2}}),
                json!({"o": {"keep": 1}}),
                Some(json!({"o": {"drop": null}})),
            ),
            (
                json!({"routes": [{"name": "a"}, {"name": "b"}]}),
                json!({"routes": [{"name": "a"}]}),
                Some(json!({"routes": [{"name": "a"}]})),
            ),
            (
                json!({"generation": 1, "routes": []}),
                json!({"generation": 2, "routes": []}),
                Some(json!({"generation": 2})),
            ),
            (json!({"n": 1.0}), json!({"n": 1}), Some(json!({"n": 1}))),
        ];
        for (live, desired, expected) in cases {
            let patch = merge_patch(&live, &desired);
            assert_eq!(patch, expected, "{live} -> {desired}");
            let mut patched = live.clone();
            if let Some(patch) = &patch {
                apply_merge_patch(&mut patched, patch);
            }
            assert_eq!(patched, desired, "applying the patch to {live}");
        }
    }

    #[test]
    fn the_patch_names_plugin_config_and_the_version_only() {
        let patch = plugin_config_patch(&json!({"a": 1}), &json!({"b": 2}), "42").unwrap();
        assert_eq!(
            patch,
            json!({"metadata": {"resourceVersion": "42"}, "spec": {"pluginConfig": {"a": null, "b": 2}}})
        );
        assert_eq!(plugin_config_patch(&json!({}), &json!({}), "42"), None);
    }
}
