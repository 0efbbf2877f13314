//! Kubernetes mode's parts against a real kube-apiserver (`meshcanary_testkit::envtest`, one per
//! test binary, a pair of namespaces per test): the WasmPlugin router, the drift watch, the
//! ConfigMap state store and Lease leader election, each acting as the control service's own
//! ServiceAccount with exactly the RBAC that `envoy-config/istio/` ships, while the test plays the
//! cluster's other clients as an administrator. The last test proves that RBAC is no more than
//! needed.
//!
//! Where a race needs another client's write to land between our read and our write, the
//! service's client goes through `meshcanary_testkit::interpose`, which runs that write at the
//! right moment against the same real server. No fake API server is used.

use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use meshcanary_control::crd::MeshRollout;
use meshcanary_control::leader::lease::{LeaderElector, LeaderState, LeaseConfig};
use meshcanary_control::rollout::engine::{self, Action};
use meshcanary_control::rollout::{Rollout, RolloutSpec};
use meshcanary_control::router::wasmplugin::drift::{
    watch_drift_with, Difference, DriftEvent, DriftWatchConfig,
};
use meshcanary_control::router::wasmplugin::WasmPluginRouter;
use meshcanary_control::router::{LiveConfig, TrafficRouter};
use meshcanary_control::state::ServiceState;
use meshcanary_control::store::configmap::{ConfigMapStore, STATE_KEY};
use meshcanary_control::store::resources::{Claims, ResourceStore};
use meshcanary_control::store::StateStore;
use meshcanary_control::time::Timestamp as ServiceTime;
use meshcanary_control::Error;
use meshcanary_core::config::FilterConfig;
use meshcanary_testkit::envtest::{Envtest, HOW_TO_GET};
use meshcanary_testkit::install::{SERVICE_ACCOUNT, WASMPLUGIN};
use meshcanary_testkit::interpose::Interposer;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The state ConfigMap and the Lease, as the Deployment names them (and the Role allows).
const STATE: &str = "meshcanary-state";
const LEASE: &str = "meshcanary-control";

fn config(value: Value) -> FilterConfig {
    serde_json::from_value(value).unwrap()
}

fn route(name: &str, canary_weight: u32) -> Value {
    json!({"name": name, "hosts": [name], "variants": [
        {"name": "v1", "weight": 10000 - canary_weight}, {"name": "v2", "weight": canary_weight}
    ]})
}

#[path = "support/cluster.rs"]
mod cluster;

use cluster::Cluster;

impl Cluster {
    /// Replaces the installed WasmPlugin by one with every field meshcanary must leave alone set,
    /// and `plugin_config`.
    async fn install_plugin(&self, plugin_config: Value) -> Value {
        let plugins = self.plugins();
        if plugins.get_opt(WASMPLUGIN).await.unwrap().is_some() {
            plugins
                .delete(WASMPLUGIN, &DeleteParams::default())
                .await
                .unwrap();
        }
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "extensions.istio.io/v1alpha1",
            "kind": "WasmPlugin",
            "metadata": {
                "name": WASMPLUGIN,
                "labels": {"app.kubernetes.io/part-of": "shop", "team": "payments"},
                "annotations": {"argocd.argoproj.io/tracking-id": "shop:extensions.istio.io/WasmPlugin:shop/reviews-canary"},
            },
            "spec": {
                "url": "oci://registry.example/meshcanary:1.0.0",
                "sha256": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
                "imagePullPolicy": "IfNotPresent",
                "selector": {"matchLabels": {"app": "frontend"}},
                "match": [{"mode": "CLIENT"}],
                "phase": "STATS",
                "priority": 10,
                "failStrategy": "FAIL_OPEN",
                "pluginName": "meshcanary",
                "pluginConfig": plugin_config,
            },
        }))
        .unwrap();
        let created = plugins
            .create(&PostParams::default(), &object)
            .await
            .unwrap();
        serde_json::to_value(created).unwrap()
    }

    /// A client acting as the ServiceAccount through `proxy`.
    async fn service_account_via(&self, proxy: &Interposer) -> kube::Client {
        Envtest::client_from(&self.installed.service_account_kubeconfig(Some(&proxy.url))).await
    }
}

/// `object` without the fields at `pointers`.
fn without(object: &Value, pointers: &[&str]) -> Value {
    let mut object = object.clone();
    for pointer in pointers {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        if let Some(Value::Object(map)) = object.pointer_mut(parent) {
            map.remove(key);
        }
    }
    object
}

/// What the service may change in its WasmPlugin (and what the server changes with it).
const OURS: [&str; 4] = [
    "/spec/pluginConfig",
    "/metadata/resourceVersion",
    "/metadata/generation",
    "/metadata/managedFields",
];

/// The fields meshcanary owns in `object`, per operation: `{"Apply": {...}, "Update": {...}}`.
fn owned_by_meshcanary(object: &Value) -> serde_json::Map<String, Value> {
    object["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["manager"] == "meshcanary")
        .map(|entry| {
            (
                entry["operation"].as_str().unwrap().to_string(),
                entry["fieldsV1"].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_router_writes_plugin_config_and_nothing_else() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let before = cluster
        .install_plugin(json!({"generation": 4, "responseHeader": "x-meshcanary", "routes": [route("reviews", 1000), route("ratings", 0)]}))
        .await;
    let router = WasmPluginRouter::new(cluster.service_account.clone(), cluster.apps(), WASMPLUGIN);
    assert_eq!(
        router.describe(),
        format!("WasmPlugin {}/{WASMPLUGIN}", cluster.apps())
    );
    // Generation 5: the ratings route and the response header are gone, reviews moved on.
    let pushed = config(json!({"generation": 5, "routes": [route("reviews", 2500)]}));
    router.apply(&pushed).await.unwrap();

    let after = cluster.plugin().await;
    assert_eq!(
        after["spec"]["pluginConfig"],
        serde_json::to_value(&pushed).unwrap(),
        "exactly the pushed config: removed keys and routes are gone"
    );
    assert_eq!(without(&after, &OURS), without(&before, &OURS));
    assert_eq!(
        after["metadata"]["generation"].as_i64(),
        Some(before["metadata"]["generation"].as_i64().unwrap() + 2),
        "an apply, then the removal of the key it did not own"
    );
    // The API server records meshcanary as the owner of pluginConfig and of nothing else.
    let owned = owned_by_meshcanary(&after);
    let applied = &owned["Apply"];
    let spec_fields: Vec<&String> = applied["f:spec"].as_object().unwrap().keys().collect();
    assert_eq!(spec_fields, ["f:pluginConfig"], "{applied}");
    assert!(
        applied
            .get("f:metadata")
            .is_none_or(|m| m.get("f:labels").is_none() && m.get("f:annotations").is_none()),
        "{applied}"
    );

    // The same config again changes nothing and writes nothing.
    let version = after["metadata"]["resourceVersion"].clone();
    router.apply(&pushed).await.unwrap();
    assert_eq!(
        cluster.plugin().await["metadata"]["resourceVersion"],
        version
    );

    // What the router reads back before it has written anything.
    let live = router.live().await.unwrap();
    let LiveConfig::Present { config, seed, .. } = live else {
        panic!("{live:?}")
    };
    assert_eq!(config, Some(serde_json::to_value(&pushed).unwrap()));
    assert_eq!(seed, None);
}

#[tokio::test]
async fn a_foreign_write_between_read_and_patch_is_kept_and_the_patch_recomputed() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    cluster
        .install_plugin(json!({"generation": 1, "routes": [route("reviews", 0)]}))
        .await;
    let proxy = Interposer::start(cluster.installed.envtest).await;
    let router = WasmPluginRouter::new(
        cluster.service_account_via(&proxy).await,
        cluster.apps(),
        WASMPLUGIN,
    );
    // Between our read and our write, someone raises the priority and slips a key into
    // pluginConfig: the stale write must be refused and the retry must keep the priority and
    // still end at exactly our config.
    let admin = cluster.plugins();
    proxy.before_next(axum::http::Method::PATCH, "/wasmplugins/", move || async move {
        admin
            .patch(WASMPLUGIN, &PatchParams::default(), &Patch::Merge(json!({"spec": {"priority": 99, "pluginConfig": {"responseHeader": "x-foreign"}}})))
            .await
            .unwrap();
    });
    let pushed = config(json!({"generation": 2, "routes": [route("reviews", 500)]}));
    router.apply(&pushed).await.unwrap();

    let after = cluster.plugin().await;
    assert_eq!(
        after["spec"]["priority"], 99,
        "the concurrent edit survived"
    );
    assert_eq!(
        after["spec"]["pluginConfig"],
        serde_json::to_value(&pushed).unwrap()
    );
    let statuses: Vec<u16> = proxy
        .requests_to("PATCH", "/wasmplugins/")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(
        statuses,
        [409, 200, 200],
        "stale apply refused, apply again, drop the foreign key"
    );
    assert_eq!(
        proxy.requests_to("GET", "/wasmplugins/").len(),
        2,
        "re-read after the 409"
    );

    // Someone who writes before every one of our writes wins every race: give up, loudly.
    for _ in 0..5 {
        let admin = cluster.plugins();
        proxy.before_next(
            axum::http::Method::PATCH,
            "/wasmplugins/",
            move || async move {
                let plugin = admin.get(WASMPLUGIN).await.unwrap();
                let priority = plugin.data["spec"]["priority"].as_i64().unwrap();
                admin
                    .patch(
                        WASMPLUGIN,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"priority": priority + 1}})),
                    )
                    .await
                    .unwrap();
            },
        );
    }
    let error = router
        .apply(&config(
            json!({"generation": 3, "routes": [route("reviews", 600)]}),
        ))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Push { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("changed under every one of 5 attempts"),
        "{error}"
    );
    let after = cluster.plugin().await;
    assert_eq!(
        after["spec"]["pluginConfig"]["generation"], 2,
        "nothing forced"
    );
    assert_eq!(after["spec"]["priority"], 104);
}

#[tokio::test]
async fn missing_forbidden_and_rejected_plugins_give_clear_errors() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let pushed = config(json!({"generation": 1, "routes": [route("reviews", 0)]}));
    // A WasmPlugin the RBAC does not name.
    let error = WasmPluginRouter::new(
        cluster.service_account.clone(),
        cluster.apps(),
        "another-plugin",
    )
    .apply(&pushed)
    .await
    .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("not allowed") && text.contains("forbidden"),
        "{text}"
    );

    // Its own WasmPlugin, not installed (yet, or any more).
    cluster
        .plugins()
        .delete(WASMPLUGIN, &DeleteParams::default())
        .await
        .unwrap();
    let router = WasmPluginRouter::new(cluster.service_account.clone(), cluster.apps(), WASMPLUGIN);
    let error = router.apply(&pushed).await.unwrap_err();
    assert!(matches!(error, Error::Push { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&format!(
            "WasmPlugin {}/{WASMPLUGIN} does not exist",
            cluster.apps()
        )),
        "{error}"
    );
    assert!(matches!(
        router.live().await.unwrap(),
        LiveConfig::TargetMissing(_)
    ));

    // A validation rule on the resource: an admission policy in CEL, enforced by the API server.
    cluster.install_plugin(json!({})).await;
    let policy = format!("meshcanary-test-one-route-{}", cluster.apps());
    let policies = cluster.installed.envtest;
    let manifest = format!(
        "apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: {policy}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: [extensions.istio.io]
      apiVersions: ['*']
      operations: [CREATE, UPDATE]
      resources: [wasmplugins]
  validations:
  - expression: \"!has(object.spec.pluginConfig) || !has(object.spec.pluginConfig.routes) || size(object.spec.pluginConfig.routes) <= 1\"
    message: at most one route per plugin in this namespace
    reason: Invalid
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: {policy}
spec:
  policyName: {policy}
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels:
        kubernetes.io/metadata.name: {}
",
        cluster.apps()
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), manifest).unwrap();
    policies.kubectl_ok(&["apply", "-f", &file.path().display().to_string()]);
    let two_routes = config(json!({"routes": [route("a", 0), route("b", 0)]}));
    // The policy takes effect once the API server has loaded it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let error = loop {
        match router.apply(&two_routes).await {
            Err(error) => break error,
            Ok(()) => {
                assert!(Instant::now() < deadline, "the policy never took effect");
                cluster
                    .edit_plugin(json!({"spec": {"pluginConfig": null}}))
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let text = error.to_string();
    assert!(
        text.starts_with(&format!(
            "push to WasmPlugin {}/{WASMPLUGIN}: the API server rejected the pluginConfig: ",
            cluster.apps()
        )),
        "{text}"
    );
    assert!(
        text.contains("at most one route per plugin in this namespace"),
        "{text}"
    );
    assert!(cluster.plugin().await["spec"]
        .get("pluginConfig")
        .is_none_or(|c| c.get("routes").is_none()));
    router.apply(&pushed).await.unwrap();
    policies.kubectl_ok(&[
        "delete",
        "validatingadmissionpolicybinding,validatingadmissionpolicy",
        &policy,
    ]);
}

fn watched(events: &[DriftEvent]) -> Vec<&'static str> {
    events
        .iter()
        .map(|e| match e {
            DriftEvent::InSync { .. } => "in sync",
            DriftEvent::Drifted(_) => "drifted",
            DriftEvent::Deleted => "deleted",
            DriftEvent::WatchError(_) => "error",
        })
        .collect()
}

/// The drift events, consumed as they come (as the service will): a task drives the stream.
struct Events {
    receiver: tokio::sync::mpsc::UnboundedReceiver<DriftEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Events {
    fn drive(stream: impl Stream<Item = DriftEvent> + Send + 'static) -> Events {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if sender.send(event).is_err() {
                    return;
                }
            }
        });
        Events { receiver, task }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn next_within(events: &mut Events, wait: Duration) -> Option<DriftEvent> {
    tokio::time::timeout(wait, events.receiver.recv())
        .await
        .ok()
        .flatten()
}

#[tokio::test]
async fn drift_is_reported_for_plugin_config_edits_only() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let pushed = config(json!({"generation": 3, "routes": [route("reviews", 1000)]}));
    let installed = cluster
        .install_plugin(serde_json::to_value(&pushed).unwrap())
        .await;
    let (expected, receiver) = watch::channel(pushed.clone());
    let settle = Duration::from_millis(300);
    // The watch runs as the ServiceAccount: its list and watch by name are what RBAC allows.
    let mut events = Events::drive(watch_drift_with(
        cluster.service_account.clone(),
        cluster.apps(),
        WASMPLUGIN,
        receiver,
        DriftWatchConfig { settle },
    ));
    let first = next_within(&mut events, Duration::from_secs(5)).await;
    let generation = installed["metadata"]["generation"].as_i64();
    assert!(
        matches!(first, Some(DriftEvent::InSync { generation: g }) if g == generation),
        "{first:?}"
    );

    // An edit of another field is not drift.
    cluster.edit_plugin(json!({"spec": {"priority": 20}})).await;
    let quiet = next_within(&mut events, Duration::from_millis(1200)).await;
    assert_eq!(quiet, None);

    // A hand edit of a weight is, within seconds.
    let edited = Instant::now();
    cluster
        .edit_plugin(json!({"spec": {"pluginConfig": {"routes": [{"name": "reviews", "hosts": ["reviews"], "variants": [{"name": "v1", "weight": 10000}, {"name": "v2", "weight": 0}]}]}}}))
        .await;
    let event = next_within(&mut events, Duration::from_secs(5)).await;
    let elapsed = edited.elapsed();
    let Some(DriftEvent::Drifted(drift)) = event else {
        panic!("expected drift, got {event:?}");
    };
    assert!(
        elapsed >= settle && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert_eq!(
        drift.generation,
        generation.map(|g| g + 2),
        "priority edit, then the weight edit"
    );
    assert_eq!(drift.config_generation, Some(3));
    assert_eq!(
        drift.differences,
        [Difference::RouteChanged {
            route: "reviews".into(),
            fields: vec!["variants".into()]
        }]
    );

    // Re-applying ends the drift.
    let router = WasmPluginRouter::new(cluster.service_account.clone(), cluster.apps(), WASMPLUGIN);
    router.apply(&pushed).await.unwrap();
    let event = next_within(&mut events, Duration::from_secs(5)).await;
    assert!(
        matches!(event, Some(DriftEvent::InSync { .. })),
        "{event:?}"
    );

    // The service's own next pushes are not drift, although the watch sees the new expected
    // config a moment before the object catches up (or the other way round).
    let next = config(json!({"generation": 4, "routes": [route("reviews", 2000)]}));
    expected.send(next.clone()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    router.apply(&next).await.unwrap();
    let quiet = next_within(&mut events, Duration::from_millis(1000)).await;
    assert_eq!(quiet, None);
    // A router given the sender publishes each config just before it writes.
    let published = expected.subscribe();
    let router = router.with_expected(expected);
    let next = config(json!({"generation": 5, "routes": [route("reviews", 3000)]}));
    router.apply(&next).await.unwrap();
    assert_eq!(*published.borrow(), next);
    let quiet = next_within(&mut events, Duration::from_millis(1000)).await;
    assert_eq!(quiet, None);

    // A GitOps revert to the old config is drift against the new one.
    cluster
        .edit_plugin(json!({"spec": {"pluginConfig": serde_json::to_value(&pushed).unwrap()}}))
        .await;
    let event = next_within(&mut events, Duration::from_secs(5)).await;
    let Some(DriftEvent::Drifted(drift)) = event else {
        panic!("expected drift, got {event:?}");
    };
    assert!(
        drift.to_string().contains("generation is 3, pushed 5"),
        "{drift}"
    );

    cluster
        .plugins()
        .delete(WASMPLUGIN, &DeleteParams::default())
        .await
        .unwrap();
    let event = next_within(&mut events, Duration::from_secs(5)).await;
    assert_eq!(watched(&[event.unwrap()]), ["deleted"]);
}

fn state_with_rollouts() -> ServiceState {
    let filter =
        config(json!({"generation": 7, "routes": [route("reviews", 0), route("ratings", 0)]}));
    let mut state = ServiceState::new(filter).unwrap();
    for (name, route) in [("reviews-v2", "reviews"), ("ratings-v2", "ratings")] {
        let spec: RolloutSpec = serde_json::from_value(json!({
            "name": name, "route": route, "stable": "v1", "canary": "v2",
            "steps": [{"setWeight": {"percent": 10}}, {"pause": {}}, {"setWeight": {"percent": 100}}]
        }))
        .unwrap();
        state
            .create_rollout(spec, ServiceTime(1_700_000_000_000))
            .unwrap();
    }
    state
}

impl Cluster {
    fn store(&self) -> ConfigMapStore {
        ConfigMapStore::new(self.service_account.clone(), self.system(), STATE)
    }

    async fn saved(&self) -> Option<ServiceState> {
        let object = self.configmaps().get_opt(STATE).await.unwrap()?;
        let text = object.data.unwrap()[STATE_KEY].clone();
        Some(serde_json::from_str(&text).unwrap())
    }
}

#[tokio::test]
async fn the_configmap_store_saves_loads_and_survives_a_restart() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let store = cluster.store();
    assert_eq!(
        store.describe(),
        format!("ConfigMap {}/{STATE}", cluster.system())
    );
    assert_eq!(store.load().await.unwrap(), None);
    let mut state = state_with_rollouts();
    store.save(&state).await.unwrap();
    assert_eq!(store.load().await.unwrap(), Some(state.clone()));
    state.filter.generation = 8;
    store.save(&state).await.unwrap();

    let stored = cluster.configmaps().get(STATE).await.unwrap();
    assert_eq!(
        stored.metadata.labels.unwrap()["app.kubernetes.io/managed-by"],
        "meshcanary"
    );
    assert_eq!(cluster.saved().await, Some(state.clone()));

    // A restarted instance finds the state the old one saved.
    drop(store);
    let restarted = cluster.store();
    assert_eq!(restarted.load().await.unwrap(), Some(state.clone()));
    state.filter.generation = 9;
    restarted.save(&state).await.unwrap();
    assert_eq!(restarted.load().await.unwrap(), Some(state));
}

#[tokio::test]
async fn the_configmap_store_absorbs_metadata_edits_and_refuses_stale_state() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let (first, second) = (cluster.store(), cluster.store());
    assert_eq!(first.load().await.unwrap(), None);
    assert_eq!(second.load().await.unwrap(), None);
    let state = state_with_rollouts();
    first.save(&state).await.unwrap();
    let error = second.save(&state).await.unwrap_err();
    assert!(matches!(error, Error::StateConflict { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("another writer created the ConfigMap first"),
        "{error}"
    );

    // Someone annotates and labels the ConfigMap (a backup tool, `kubectl annotate`): that is
    // not a conflict. The next save goes through and keeps their metadata.
    let mut newer = state.clone();
    for edit in [
        json!({"metadata": {"annotations": {"backup.example/last": "2026-12-07"}}}),
        json!({"metadata": {"labels": {"team": "platform"}}}),
    ] {
        cluster
            .configmaps()
            .patch(STATE, &PatchParams::default(), &Patch::Merge(edit))
            .await
            .unwrap();
        newer.filter.generation += 1;
        first.save(&newer).await.unwrap();
    }
    let stored = cluster.configmaps().get(STATE).await.unwrap();
    assert_eq!(
        stored.metadata.annotations.unwrap()["backup.example/last"],
        "2026-12-07"
    );
    let labels = stored.metadata.labels.unwrap();
    assert_eq!(labels["team"], "platform");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "meshcanary");
    assert_eq!(cluster.saved().await, Some(newer.clone()));

    // A change of the state itself is a real conflict: refused, and refused until re-read.
    assert_eq!(second.load().await.unwrap(), Some(newer.clone()));
    let mut theirs = newer.clone();
    theirs.filter.generation = 50;
    second.save(&theirs).await.unwrap();
    let mut stale = newer.clone();
    stale.filter.generation = 100;
    let error = first.save(&stale).await.unwrap_err();
    assert!(matches!(error, Error::StateConflict { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("another writer changed the state"),
        "{error}"
    );
    let error = first.save(&stale).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("until the state is loaded again"),
        "{error}"
    );
    assert_eq!(
        cluster.saved().await,
        Some(theirs.clone()),
        "not overwritten"
    );
    assert_eq!(first.load().await.unwrap(), Some(theirs.clone()));
    first.save(&stale).await.unwrap();

    // Too big for a ConfigMap: refused before it reaches the API server, which refuses it too.
    let before = cluster.configmaps().get(STATE).await.unwrap();
    let mut huge = stale.clone();
    huge.filter.routes[0].path_prefix = Some("/".repeat(1024 * 1024));
    let error = first.save(&huge).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("more than the 1048576 bytes a ConfigMap holds"),
        "{error}"
    );
    assert_eq!(
        cluster
            .configmaps()
            .get(STATE)
            .await
            .unwrap()
            .metadata
            .resource_version,
        before.metadata.resource_version
    );
    let big: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "big"}, "data": {"a": "x".repeat(1024 * 1024 + 1)}
    }))
    .unwrap();
    let error = cluster
        .configmaps()
        .create(&PostParams::default(), &big)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("Too long"),
        "the real limit: {error}"
    );

    // A store that never loaded cannot overwrite what is there either.
    let error = cluster.store().save(&state).await.unwrap_err();
    assert!(error.to_string().contains("has not loaded it"), "{error}");

    // Someone else's ConfigMap of the same name is not taken over.
    cluster
        .configmaps()
        .delete(STATE, &DeleteParams::default())
        .await
        .unwrap();
    let theirs: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": STATE}, "data": {"state.json": "{}"}}))
            .unwrap();
    cluster
        .configmaps()
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    let error = cluster.store().load().await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("not labelled app.kubernetes.io/managed-by"),
        "{error}"
    );
}

impl Cluster {
    fn elector(&self, client: kube::Client, identity: &str) -> LeaderElector {
        let config = LeaseConfig {
            lease_duration: Duration::from_secs(2),
            renew_interval: Duration::from_millis(500),
            retry_interval: Duration::from_millis(200),
        };
        LeaderElector::new(client, self.system(), LEASE, identity, config).unwrap()
    }

    async fn lease(&self) -> Value {
        let leases: Api<Lease> = Api::namespaced(self.admin.clone(), self.system());
        serde_json::to_value(leases.get(LEASE).await.unwrap()).unwrap()
    }
}

async fn wait_for(
    state: &mut watch::Receiver<LeaderState>,
    within: Duration,
    what: impl Fn(&LeaderState) -> bool,
) -> LeaderState {
    let reached = tokio::time::timeout(within, state.wait_for(|s| what(s)))
        .await
        .map(|state| state.map(|s| s.clone()));
    match reached {
        Ok(state) => state.unwrap(),
        Err(_) => panic!("not within {within:?}: {:?}", *state.borrow()),
    }
}

#[tokio::test]
async fn exactly_one_leader_and_quick_takeovers() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let proxy = Interposer::start(cluster.installed.envtest).await;
    let client = cluster.service_account_via(&proxy).await;
    let (a, b) = (
        cluster.elector(client.clone(), "pod-a"),
        cluster.elector(client.clone(), "pod-b"),
    );
    let (mut state_a, task_a) = a.spawn();
    let (mut state_b, task_b) = b.spawn();
    // Watch both for the whole time they run: never two leaders at once.
    let (both_watch, both_lead) = (state_a.clone(), state_b.clone());
    let overlap = tokio::spawn(async move {
        loop {
            if both_watch.borrow().is_leader && both_lead.borrow().is_leader {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });

    let wait = Duration::from_secs(3);
    tokio::select! {
        _ = state_a.wait_for(|s| s.is_leader) => {}
        _ = state_b.wait_for(|s| s.is_leader) => {}
        _ = tokio::time::sleep(wait) => panic!("nobody leads"),
    }
    let (leader, follower, mut leader_state, mut follower_state, leader_task, follower_task) =
        if state_a.borrow().is_leader {
            (a, b, state_a, state_b, task_a, task_b)
        } else {
            (b, a, state_b, state_a, task_b, task_a)
        };
    let first = leader.identity().to_string();
    let seen = wait_for(&mut follower_state, wait, |s| s.leader.is_some()).await;
    assert_eq!(
        seen,
        LeaderState {
            is_leader: false,
            leader: Some(first.clone())
        }
    );
    let lease = cluster.lease().await;
    assert_eq!(lease["spec"]["holderIdentity"], first.as_str());
    assert_eq!(lease["spec"]["leaseTransitions"], 0);
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 2);
    // Renewals keep it; the follower does not take a live lease.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(leader_state.borrow().is_leader && !follower_state.borrow().is_leader);

    // A graceful release hands over at the follower's next look, not after the lease expires.
    let released = Instant::now();
    leader.release().await.unwrap();
    assert!(!leader_state.borrow_and_update().is_leader);
    wait_for(&mut follower_state, Duration::from_secs(1), |s| s.is_leader).await;
    assert!(
        released.elapsed() < Duration::from_secs(1),
        "{:?}",
        released.elapsed()
    );
    let second = follower.identity().to_string();
    let lease = cluster.lease().await;
    assert_eq!(lease["spec"]["holderIdentity"], second.as_str());
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    leader_task.await.unwrap();
    assert!(!overlap.is_finished(), "two leaders at once");
    overlap.abort();

    // A third replica follows; the second one crashes (stops renewing without releasing): the
    // third takes over once the lease has expired, not before.
    let c = cluster.elector(client.clone(), "pod-c");
    let (mut state_c, task_c) = c.spawn();
    wait_for(&mut state_c, wait, |s| {
        s.leader.as_deref() == Some(second.as_str())
    })
    .await;
    follower_task.abort();
    let crashed = Instant::now();
    wait_for(&mut state_c, Duration::from_secs(4), |s| s.is_leader).await;
    let took = crashed.elapsed();
    assert!(
        took > Duration::from_millis(1000) && took < Duration::from_millis(3500),
        "{took:?}"
    );
    let lease = cluster.lease().await;
    assert_eq!(lease["spec"]["holderIdentity"], "pod-c");
    assert_eq!(lease["spec"]["leaseTransitions"], 2);

    // Deposed by someone who wrote the lease between our read and our renewal: the 409 makes
    // the leader step down at once, and a read right after it names who leads.
    let leases: Api<Lease> = Api::namespaced(cluster.admin.clone(), cluster.system());
    proxy.before_next(axum::http::Method::PUT, "/leases/", move || async move {
        let renewed = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        leases
            .patch(
                LEASE,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"holderIdentity": "pod-intruder", "leaseDurationSeconds": 30, "renewTime": renewed}})),
            )
            .await
            .unwrap();
    });
    let deposed = wait_for(&mut state_c, Duration::from_secs(2), |s| !s.is_leader).await;
    assert_eq!(
        deposed,
        LeaderState {
            is_leader: false,
            leader: Some("pod-intruder".into())
        },
        "the first state after the 409 names the new holder"
    );
    assert!(
        proxy
            .requests_to("PUT", "/leases/")
            .iter()
            .any(|r| r.status == 409),
        "the conflict path ran"
    );
    // Our release does not touch a lease we no longer hold.
    c.release().await.unwrap();
    assert_eq!(
        cluster.lease().await["spec"]["holderIdentity"],
        "pod-intruder"
    );
    task_c.await.unwrap();
}

/// Whether `kubectl` acting as the ServiceAccount may do something: its exit status and why.
fn as_service_account(
    cluster: &Cluster,
    kubeconfig: &std::path::Path,
    args: &[String],
) -> (bool, String) {
    let output = cluster
        .installed
        .envtest
        .kubectl_with(kubeconfig)
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), stderr)
}

/// The RBAC that `envoy-config/istio/` ships lets the ServiceAccount do exactly what the service
/// does (the other tests do it as that ServiceAccount) and nothing else: no other WasmPlugin, no
/// other ConfigMap or Lease, no listing, no Secrets, nothing in other namespaces; MeshRollouts in
/// its own namespace only, never created or deleted by it, and not their CRD.
#[tokio::test]
async fn the_service_account_may_do_what_the_service_needs_and_nothing_more() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    // The state ConfigMap and Lease exist (the service creates them; here the test does).
    cluster.store().save(&state_with_rollouts()).await.unwrap();
    let elector = cluster.elector(cluster.service_account.clone(), "pod-a");
    let (mut leading, election) = elector.spawn();
    wait_for(&mut leading, Duration::from_secs(3), |s| s.is_leader).await;
    election.abort();
    // Another WasmPlugin, ConfigMap and Lease beside ours, and the same WasmPlugin name in a
    // namespace that did not enrol.
    let (sys, apps) = (cluster.system().to_string(), cluster.apps().to_string());
    let other_ns = cluster.installed.envtest.create_namespace("mc-other");
    let admin = cluster.installed.envtest;
    for (namespace, name) in [(&apps, "another-plugin"), (&other_ns, WASMPLUGIN)] {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            format!("apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {{url: oci://x/y, pluginName: p}}\n"),
        )
        .unwrap();
        admin.kubectl_ok(&["apply", "-f", &file.path().display().to_string()]);
    }
    admin.kubectl_ok(&[
        "create",
        "configmap",
        "other-config",
        "-n",
        &sys,
        "--from-literal=a=b",
    ]);
    admin.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "other-secret",
        "-n",
        &sys,
        "--from-literal=a=b",
    ]);
    // A MeshRollout in the service's namespace and one in another; an Event to write.
    let files = tempfile::tempdir().unwrap();
    let rollout_file = files.path().join("rollout.json");
    std::fs::write(
        &rollout_file,
        json!({"apiVersion": "meshcanary.io/v1alpha1", "kind": "MeshRollout",
            "metadata": {"name": "reviews-v2"},
            "spec": {"target": {"wasmPlugin": WASMPLUGIN}, "route": "reviews", "stable": "v1", "canary": "v2",
                "steps": [{"setWeight": {"percent": 10}}]}})
        .to_string(),
    )
    .unwrap();
    let event_file = |namespace: &str| {
        let path = files.path().join(format!("event-{namespace}.json"));
        std::fs::write(
            &path,
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "reviews-v2.1"},
                "involvedObject": {"apiVersion": "meshcanary.io/v1alpha1", "kind": "MeshRollout",
                    "name": "reviews-v2", "namespace": namespace},
                "reason": "WeightSet", "message": "canary at 10%", "type": "Normal"})
            .to_string(),
        )
        .unwrap();
        path.display().to_string()
    };
    let (sys_event, other_event) = (event_file(&sys), event_file(&other_ns));
    let rollout_file = rollout_file.display().to_string();
    for namespace in [&sys, &other_ns] {
        admin.kubectl_ok(&["create", "-n", namespace, "-f", &rollout_file]);
    }
    let kubeconfig = cluster.installed.service_account_kubeconfig(None);
    let patch = r#"{"spec":{"pluginConfig":{"generation":9}}}"#;
    let words = |line: &str| -> Vec<String> {
        line.split_whitespace()
            .map(|w| {
                w.replace("PATCH", patch)
                    .replace("MRO_SPEC", r#"{"spec":{"paused":true}}"#)
                    .replace("ROLLOUT_FILE", &rollout_file)
                    .replace("SYS_EVENT", &sys_event)
                    .replace("OTHER_EVENT", &other_event)
            })
            .collect()
    };
    // (kubectl arguments, allowed?)
    let cases = [
        // What the service does.
        (format!("get wasmplugin {WASMPLUGIN} -n {apps}"), true),
        (
            format!("get wasmplugins -n {apps} --field-selector metadata.name={WASMPLUGIN}"),
            true,
        ),
        (
            format!("patch wasmplugin {WASMPLUGIN} -n {apps} --type merge -p PATCH"),
            true,
        ),
        (format!("get configmap {STATE} -n {sys}"), true),
        (format!("get lease {LEASE} -n {sys}"), true),
        // MeshRollouts in its namespace: follow them, edit them (their status: below), and say
        // what happened in Events.
        (format!("get meshrollouts -n {sys}"), true),
        (format!("get mro reviews-v2 -n {sys}"), true),
        (
            format!("patch mro reviews-v2 -n {sys} --type merge -p MRO_SPEC"),
            true,
        ),
        (format!("create -n {sys} -f SYS_EVENT"), true),
        // The HTTP API's rollouts are MeshRollouts: it deletes and creates them (in this order:
        // the object exists).
        (format!("delete mro reviews-v2 -n {sys}"), true),
        (format!("create -n {sys} -f ROLLOUT_FILE"), true),
        // What it must not.
        (format!("get meshrollouts -n {other_ns}"), false),
        (format!("delete mro reviews-v2 -n {other_ns}"), false),
        (
            format!("patch mro reviews-v2 -n {other_ns} --type merge -p MRO_SPEC"),
            false,
        ),
        (format!("create -n {other_ns} -f OTHER_EVENT"), false),
        (format!("get events -n {sys}"), false),
        ("delete crd meshrollouts.meshcanary.io".to_string(), false),
        ("get crd meshrollouts.meshcanary.io".to_string(), false),
        (format!("get wasmplugins -n {apps}"), false),
        (format!("get wasmplugin another-plugin -n {apps}"), false),
        (
            format!("patch wasmplugin another-plugin -n {apps} --type merge -p PATCH"),
            false,
        ),
        (
            format!("patch wasmplugin {WASMPLUGIN} -n {other_ns} --type merge -p PATCH"),
            false,
        ),
        (format!("delete wasmplugin {WASMPLUGIN} -n {apps}"), false),
        (format!("get configmaps -n {sys}"), false),
        (format!("get configmap other-config -n {sys}"), false),
        (format!("delete configmap {STATE} -n {sys}"), false),
        (format!("get configmap {STATE} -n {apps}"), false),
        (format!("get secret other-secret -n {sys}"), false),
        (format!("get secrets -n {sys}"), false),
        (format!("get leases -n {sys}"), false),
        (format!("delete lease {LEASE} -n {sys}"), false),
        (format!("get deployments -n {sys}"), false),
        (format!("get pods -n {apps}"), false),
        (format!("get virtualservices -n {apps}"), false),
        (
            format!("get serviceaccount {SERVICE_ACCOUNT} -n {sys}"),
            false,
        ),
        ("get namespaces".to_string(), false),
    ];
    let mut wrong = Vec::new();
    for (line, allowed) in &cases {
        let (succeeded, stderr) = as_service_account(&cluster, &kubeconfig, &words(line));
        let forbidden = stderr.contains("forbidden") || stderr.contains("Forbidden");
        match allowed {
            true if !succeeded => {
                wrong.push(format!("should be allowed: kubectl {line}: {stderr}"))
            }
            false if succeeded => {
                wrong.push(format!("should be forbidden, but worked: kubectl {line}"))
            }
            false if !forbidden => wrong.push(format!(
                "failed, but not for RBAC: kubectl {line}: {stderr}"
            )),
            _ => {}
        }
    }
    // The status subresource, written as the service writes it (kubectl would read the
    // subresource first, which the service never needs): in its namespace, and nowhere else.
    let status = Patch::Merge(json!({"status": {"phase": "paused", "step": 0}}));
    for (namespace, allowed) in [(&sys, true), (&other_ns, false)] {
        let rollouts: Api<MeshRollout> =
            Api::namespaced(cluster.service_account.clone(), namespace);
        match (
            rollouts
                .patch_status("reviews-v2", &PatchParams::default(), &status)
                .await,
            allowed,
        ) {
            (Ok(_), true) => {}
            (Err(kube::Error::Api(s)), false) if s.code == 403 => {}
            (outcome, _) => wrong.push(format!(
                "patch meshrollouts/status in {namespace} (allowed: {allowed}): {outcome:?}"
            )),
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}\n{HOW_TO_GET}");
}

impl Cluster {
    /// A state store as the service builds it in Kubernetes mode: rollouts `claims` names in
    /// their MeshRollouts, the rest in the ConfigMap; `configmap` names the ConfigMap.
    fn resource_store(&self, configmap: &str, claims: &Arc<Claims>) -> ResourceStore {
        ResourceStore::new(
            self.service_account.clone(),
            self.system(),
            ConfigMapStore::new(self.service_account.clone(), self.system(), configmap),
            claims.clone(),
        )
    }

    /// Creates MeshRollout `name` (a v1 → v2 rollout of `route`) as a GitOps tool would.
    async fn apply_mesh_rollout(&self, name: &str, route: &str, canary: &str) {
        let body = json!({
            "apiVersion": "meshcanary.io/v1alpha1", "kind": "MeshRollout",
            "metadata": {"name": name},
            "spec": {
                "target": {"wasmPlugin": WASMPLUGIN, "namespace": self.apps()},
                "route": route, "stable": "v1", "canary": canary,
                "steps": [{"setWeight": {"percent": 10}}, {"pause": {}}, {"setWeight": {"percent": 100}}],
            },
        });
        self.mesh_rollouts()
            .patch(name, &PatchParams::apply("argocd"), &Patch::Apply(body))
            .await
            .unwrap();
    }
}

/// `state` with rollout `name` advanced into its first step (10 %).
fn advanced(state: &ServiceState, name: &str) -> ServiceState {
    let mut state = state.clone();
    let rollout = state.rollouts[name].clone();
    let rollout = engine::apply(
        &rollout,
        &Action::EnterStep { index: 0 },
        ServiceTime(1_700_000_001_000),
    );
    state.put_rollout(rollout).unwrap();
    state.filter.generation += 1;
    state
}

/// The state in Kubernetes mode: rollouts with a MeshRollout live in its `status.run`, the rest and
/// the filter config in the ConfigMap; a restarted store puts the two back together.
#[tokio::test]
async fn rollouts_with_a_mesh_rollout_live_in_its_status() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    cluster
        .apply_mesh_rollout("reviews-v2", "reviews", "v2")
        .await;
    let claims = Arc::new(Claims::default());
    let store = cluster.resource_store(STATE, &claims);
    assert_eq!(store.load().await.unwrap(), None);
    claims.claim("reviews-v2");
    let state = state_with_rollouts();
    store.save(&state).await.unwrap();

    let record: Rollout = serde_json::from_value(cluster.record("reviews-v2").await).unwrap();
    assert_eq!(record, state.rollouts["reviews-v2"]);
    let rest = cluster.saved().await.unwrap();
    assert_eq!(
        rest.rollouts.keys().collect::<Vec<_>>(),
        ["ratings-v2"],
        "no resource: kept in the ConfigMap"
    );
    assert_eq!(
        rest.kept_elsewhere.keys().collect::<Vec<_>>(),
        ["reviews-v2"]
    );
    assert_eq!(rest.filter, state.filter);
    // Only the store's own field manager writes the record.
    let object =
        serde_json::to_value(cluster.mesh_rollouts().get("reviews-v2").await.unwrap()).unwrap();
    let managers: Vec<&str> = object["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["fieldsV1"].to_string().contains("f:run"))
        .map(|m| m["manager"].as_str().unwrap())
        .collect();
    assert_eq!(managers, ["meshcanary-state"]);

    // GitOps re-applies the spec between two saves: the record write goes on top of it.
    cluster
        .apply_mesh_rollout("reviews-v2", "reviews", "v2")
        .await;
    cluster
        .mesh_rollouts()
        .patch(
            "reviews-v2",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "reviews"}}})),
        )
        .await
        .unwrap();
    let moved = advanced(&state, "reviews-v2");
    store.save(&moved).await.unwrap();
    assert_eq!(
        cluster.record("reviews-v2").await["status"]["canaryWeight"],
        1000
    );

    // A restarted store (a new leader) finds exactly the state saved.
    let restarted = cluster.resource_store(STATE, &Arc::new(Claims::default()));
    assert_eq!(restarted.load().await.unwrap(), Some(moved.clone()));
}

/// A crash between the record write and the ConfigMap write leaves the record ahead: the next
/// load brings the filter config in line with the record under a new generation. Another
/// writer's record is never overwritten.
#[tokio::test]
async fn a_record_ahead_of_the_configmap_wins_and_a_foreign_record_is_not_overwritten() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    cluster
        .apply_mesh_rollout("reviews-v2", "reviews", "v2")
        .await;
    let claims = Arc::new(Claims::default());
    claims.claim("reviews-v2");
    let store = cluster.resource_store(STATE, &claims);
    store.load().await.unwrap();
    let state = state_with_rollouts();
    store.save(&state).await.unwrap();

    // The save of the next step wrote the record, then the process died: its ConfigMap write
    // (here: to another ConfigMap) never reached the state's.
    let moved = advanced(&state, "reviews-v2");
    let crashed = cluster.resource_store("elsewhere", &claims);
    crashed.save(&moved).await.unwrap();
    assert_eq!(
        cluster.saved().await.unwrap().filter.routes[0].variants[1].weight,
        0
    );

    // The first store never read that record: writing over it is refused.
    let mut other = state.clone();
    other.rollouts.get_mut("reviews-v2").unwrap().status.message = "another change".into();
    let error = store.save(&other).await.unwrap_err();
    assert!(matches!(error, Error::StateConflict { .. }), "{error}");
    assert!(error.to_string().contains("status.run"), "{error}");

    let loaded = store.load().await.unwrap().unwrap();
    assert_eq!(loaded.rollouts["reviews-v2"], moved.rollouts["reviews-v2"]);
    let reviews = &loaded.filter.routes[0];
    assert_eq!(
        (reviews.variants[0].weight, reviews.variants[1].weight),
        (9000, 1000),
        "the route carries the record's weight"
    );
    assert!(
        loaded.filter.generation > state.filter.generation,
        "a new generation to push"
    );
    loaded.check().unwrap();
    // After the load it writes again.
    store.save(&loaded).await.unwrap();
}

/// A MeshRollout deleted (its finalizer released) hands its finished rollout back to the
/// ConfigMap; a ConfigMap of an older version that kept every rollout is migrated on the next
/// save.
#[tokio::test]
async fn deleted_resources_hand_back_and_old_configmaps_migrate() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    // An older version saved everything in the ConfigMap.
    let old = cluster.store();
    old.load().await.unwrap();
    let state = state_with_rollouts();
    old.save(&state).await.unwrap();
    cluster
        .apply_mesh_rollout("reviews-v2", "reviews", "v2")
        .await;

    let claims = Arc::new(Claims::default());
    let store = cluster.resource_store(STATE, &claims);
    assert_eq!(
        store.load().await.unwrap(),
        Some(state.clone()),
        "the old ConfigMap loads as it is"
    );
    // The reconciler takes the resource's rollout over: the next save moves it.
    claims.claim("reviews-v2");
    store.save(&state).await.unwrap();
    assert_eq!(
        cluster.record("reviews-v2").await["spec"]["name"],
        "reviews-v2"
    );
    let rest = cluster.saved().await.unwrap();
    assert!(
        !rest.rollouts.contains_key("reviews-v2"),
        "moved out of the ConfigMap"
    );

    // The resource goes (its finalizer long released): the rollout goes back to the ConfigMap.
    cluster
        .mesh_rollouts()
        .delete("reviews-v2", &DeleteParams::default())
        .await
        .unwrap();
    let moved = advanced(&state, "reviews-v2");
    store.save(&moved).await.unwrap();
    assert!(!claims.contains("reviews-v2"));
    let rest = cluster.saved().await.unwrap();
    assert_eq!(rest.rollouts["reviews-v2"], moved.rollouts["reviews-v2"]);
    assert!(rest.kept_elsewhere.is_empty());
    assert_eq!(store.load().await.unwrap(), Some(moved));
}
