//! One test's share of the real API server (`meshcanary_testkit::envtest`, shared by the tests of
//! a binary): the project's manifests installed into namespaces of its own, with clients acting as
//! the cluster's administrator (everyone else) and as the control service's ServiceAccount.

#![allow(dead_code)] // Each test binary uses a different part of it.

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, Patch, PatchParams, WatchEvent, WatchParams};
use meshcanary_control::crd::MeshRollout;
use meshcanary_control::router::wasmplugin::wasmplugin_resource;
use meshcanary_testkit::envtest::Envtest;
use meshcanary_testkit::install::{Installed, Namespaces, Options, WASMPLUGIN};
use serde_json::Value;
use std::time::Duration;

/// The installed project and the clients of a test.
pub struct Cluster {
    /// The manifests as installed.
    pub installed: Installed<'static>,
    /// The cluster's administrator: a person with `kubectl`, a GitOps tool, another replica.
    pub admin: kube::Client,
    /// The control service's ServiceAccount, with exactly the shipped RBAC.
    pub service_account: kube::Client,
    /// The WasmPlugin as installed, before any service ran.
    pub installed_plugin: Value,
}

impl Cluster {
    /// Every pluginConfig the WasmPlugin had since it was installed, in order, replayed by a
    /// watch from the installed resourceVersion: what istiod would have sent to the proxies.
    pub async fn plugin_config_history(&self) -> Vec<Value> {
        let since = self.installed_plugin["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        let params = WatchParams::default()
            .fields(&format!("metadata.name={WASMPLUGIN}"))
            .timeout(5);
        let mut events = self.plugins().watch(&params, &since).await.unwrap().boxed();
        let mut configs: Vec<Value> = Vec::new();
        // The replay comes at once; the live tail is of no interest.
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(500), events.next()).await
        {
            if let WatchEvent::Modified(object) = event.unwrap() {
                let config = object.data["spec"]["pluginConfig"].clone();
                if !config.is_null() && configs.last() != Some(&config) {
                    configs.push(config);
                }
            }
        }
        configs
    }

    /// Installs the project (bookinfo's objects too) into fresh namespaces of the binary's shared
    /// server; `None` (the test skips) without the server's binaries.
    pub async fn start() -> Option<Cluster> {
        Some(Cluster::start_on(Envtest::shared()?).await)
    }

    /// The same on a given server.
    pub async fn start_on(envtest: &'static Envtest) -> Cluster {
        let installed = Installed::install(
            envtest,
            Options {
                namespaces: Namespaces::Fresh,
                bookinfo: true,
            },
        );
        let admin = envtest.admin_client().await;
        let service_account = installed.service_account_client().await;
        let mut cluster = Cluster {
            installed,
            admin,
            service_account,
            installed_plugin: Value::Null,
        };
        cluster.installed_plugin = cluster.plugin().await;
        cluster
    }

    /// The managed namespace (the WasmPlugin's).
    pub fn apps(&self) -> &str {
        &self.installed.apps
    }

    /// The control service's namespace (its ConfigMap and Lease).
    pub fn system(&self) -> &str {
        &self.installed.system
    }

    /// The WasmPlugins of the managed namespace, as the administrator.
    pub fn plugins(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.admin.clone(), self.apps(), &wasmplugin_resource())
    }

    /// The WasmPlugin as stored, as JSON.
    pub async fn plugin(&self) -> Value {
        serde_json::to_value(self.plugins().get(WASMPLUGIN).await.unwrap()).unwrap()
    }

    /// Its `spec.pluginConfig` (`null` without one).
    pub async fn plugin_config(&self) -> Value {
        self.plugin().await["spec"]["pluginConfig"].clone()
    }

    /// A merge patch of the WasmPlugin by the administrator (a `kubectl edit`).
    pub async fn edit_plugin(&self, patch: Value) {
        self.plugins()
            .patch(WASMPLUGIN, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }

    /// The MeshRollouts of the control service's namespace, as the administrator.
    pub fn mesh_rollouts(&self) -> Api<MeshRollout> {
        Api::namespaced(self.admin.clone(), self.system())
    }

    /// MeshRollout `name`'s `status.run` (the rollout's durable record), as stored.
    pub async fn record(&self, name: &str) -> Value {
        let object = self.mesh_rollouts().get(name).await.unwrap();
        serde_json::to_value(object).unwrap()["status"]["run"].clone()
    }

    /// The ConfigMaps of the control service's namespace, as the administrator.
    pub fn configmaps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.admin.clone(), self.system())
    }
}
