//! Kubernetes mode against an in-memory API server (`support/fake_apiserver.rs`): the WasmPlugin
//! router, the drift watcher, the ConfigMap state store and Lease leader election, each through
//! a real `kube` client over HTTP, with foreign writers injected where real clusters have them.

#[path = "support/fake_apiserver.rs"]
mod fake_apiserver;

use axum::http::Method;
use fake_apiserver::{FakeApiServer, FieldError, Kind, Request};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use meshcanary_control::kube::configmap_store::{ConfigMapStore, STATE_KEY};
use meshcanary_control::kube::drift::{watch_drift_with, Difference, DriftEvent, DriftWatchConfig};
use meshcanary_control::kube::leader::{LeaderElector, LeaderState, LeaseConfig};
use meshcanary_control::kube::wasmplugin::{wasmplugin_resource, WasmPluginRouter};
use meshcanary_control::rollout::RolloutSpec;
use meshcanary_control::router::TrafficRouter;
use meshcanary_control::state::ServiceState;
use meshcanary_control::store::StateStore;
use meshcanary_control::time::Timestamp as ServiceTime;
use meshcanary_control::Error;
use meshcanary_core::config::FilterConfig;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const NS: &str = "shop";
const PLUGIN: &str = "meshcanary";

fn config(value: Value) -> FilterConfig {
    serde_json::from_value(value).unwrap()
}

fn route(name: &str, canary_weight: u32) -> Value {
    json!({"name": name, "hosts": [name], "variants": [
        {"name": "v1", "weight": 10000 - canary_weight}, {"name": "v2", "weight": canary_weight}
    ]})
}

/// A WasmPlugin as someone installs it: every field meshcanary must leave alone is set.
fn install_plugin(fake: &FakeApiServer, plugin_config: Value) -> Value {
    fake.create(
        Kind::WasmPlugin,
        NS,
        json!({
            "apiVersion": "extensions.istio.io/v1alpha1",
            "kind": "WasmPlugin",
            "metadata": {
                "name": PLUGIN,
                "labels": {"app.kubernetes.io/part-of": "shop", "team": "payments"},
                "annotations": {"argocd.argoproj.io/tracking-id": "shop:extensions.istio.io/WasmPlugin:shop/meshcanary"},
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
        }),
    )
}

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

fn requests(fake: &FakeApiServer, method: &str, plural: &str) -> Vec<Request> {
    fake.requests()
        .into_iter()
        .filter(|r| r.method == method && r.path.contains(plural) && !r.query.contains("watch="))
        .collect()
}

#[tokio::test]
async fn the_router_writes_plugin_config_and_nothing_else() {
    let fake = FakeApiServer::start().await;
    let before = install_plugin(
        &fake,
        json!({"generation": 4, "responseHeader": "x-meshcanary", "routes": [route("reviews", 1000), route("ratings", 0)]}),
    );
    let router = WasmPluginRouter::new(fake.client(), NS, PLUGIN);
    assert_eq!(router.describe(), "WasmPlugin shop/meshcanary");
    // Generation 5: the ratings route and the response header are gone, reviews moved on.
    let pushed = config(json!({"generation": 5, "routes": [route("reviews", 2500)]}));
    router.apply(&pushed).await.unwrap();

    let after = fake.get(Kind::WasmPlugin, NS, PLUGIN).unwrap();
    assert_eq!(
        after["spec"]["pluginConfig"],
        serde_json::to_value(&pushed).unwrap(),
        "exactly the pushed config: removed keys and routes are gone"
    );
    let untouched = [
        "/spec/pluginConfig",
        "/metadata/resourceVersion",
        "/metadata/generation",
    ];
    assert_eq!(without(&after, &untouched), without(&before, &untouched));
    assert_eq!(after["metadata"]["generation"], 2);

    let patches = requests(&fake, "PATCH", "wasmplugins");
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert_eq!(patches[0].status, 200);
    assert!(
        patches[0].query.contains("fieldManager=meshcanary"),
        "{patches:?}"
    );

    // The same config again changes nothing and writes nothing.
    let version = after["metadata"]["resourceVersion"].clone();
    router.apply(&pushed).await.unwrap();
    assert_eq!(requests(&fake, "PATCH", "wasmplugins").len(), 1);
    assert_eq!(
        fake.get(Kind::WasmPlugin, NS, PLUGIN).unwrap()["metadata"]["resourceVersion"],
        version
    );
}

#[tokio::test]
async fn a_foreign_write_between_read_and_patch_is_kept_and_the_patch_recomputed() {
    let fake = FakeApiServer::start().await;
    install_plugin(
        &fake,
        json!({"generation": 1, "routes": [route("reviews", 0)]}),
    );
    // Between our read and our patch, someone raises the priority and slips a key into
    // pluginConfig: the stale patch must be refused and the retry must keep the priority and
    // still end at exactly our config.
    fake.before_next(Method::PATCH, Kind::WasmPlugin, |cluster| {
        cluster.edit(Kind::WasmPlugin, NS, PLUGIN, |plugin| {
            plugin["spec"]["priority"] = json!(99);
            plugin["spec"]["pluginConfig"]["responseHeader"] = json!("x-foreign");
        });
    });
    let router = WasmPluginRouter::new(fake.client(), NS, PLUGIN);
    let pushed = config(json!({"generation": 2, "routes": [route("reviews", 500)]}));
    router.apply(&pushed).await.unwrap();

    let after = fake.get(Kind::WasmPlugin, NS, PLUGIN).unwrap();
    assert_eq!(
        after["spec"]["priority"], 99,
        "the concurrent edit survived"
    );
    assert_eq!(
        after["spec"]["pluginConfig"],
        serde_json::to_value(&pushed).unwrap()
    );
    let statuses: Vec<u16> = requests(&fake, "PATCH", "wasmplugins")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [409, 200], "the conflict path ran");
    assert_eq!(
        requests(&fake, "GET", "wasmplugins").len(),
        2,
        "re-read after the 409"
    );

    // Someone who writes before every one of our patches wins every race: give up, loudly.
    for _ in 0..5 {
        fake.before_next(Method::PATCH, Kind::WasmPlugin, |cluster| {
            cluster.edit(Kind::WasmPlugin, NS, PLUGIN, |plugin| {
                let priority = plugin["spec"]["priority"].as_i64().unwrap();
                plugin["spec"]["priority"] = json!(priority + 1);
            });
        });
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
    let after = fake.get(Kind::WasmPlugin, NS, PLUGIN).unwrap();
    assert_eq!(
        after["spec"]["pluginConfig"]["generation"], 2,
        "nothing forced"
    );
    assert_eq!(after["spec"]["priority"], 104);
}

#[tokio::test]
async fn missing_and_rejected_plugins_give_clear_errors() {
    let fake = FakeApiServer::start().await;
    let pushed = config(json!({"generation": 1, "routes": [route("reviews", 0)]}));
    let error = WasmPluginRouter::new(fake.client(), NS, "nope")
        .apply(&pushed)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Push { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("WasmPlugin shop/nope does not exist"),
        "{error}"
    );

    install_plugin(&fake, json!({}));
    // A validation rule on the resource, like a CEL rule in the CRD or an admission policy.
    fake.add_rule(Kind::WasmPlugin, |plugin| {
        let routes = plugin.pointer("/spec/pluginConfig/routes")?.as_array()?;
        (routes.len() > 1).then(|| {
            FieldError::invalid(
                "spec.pluginConfig.routes",
                "Invalid value: \"array\": at most one route per plugin in this namespace",
            )
        })
    });
    let router = WasmPluginRouter::new(fake.client(), NS, PLUGIN);
    let error = router
        .apply(&config(json!({"routes": [route("a", 0), route("b", 0)]})))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with(
            "push to WasmPlugin shop/meshcanary: the API server rejected the pluginConfig: "
        ),
        "{text}"
    );
    assert!(text.contains("spec.pluginConfig.routes: Invalid value: \"array\": at most one route per plugin in this namespace"), "{text}");
    assert_eq!(
        fake.get(Kind::WasmPlugin, NS, PLUGIN).unwrap()["spec"]["pluginConfig"],
        json!({})
    );
    router.apply(&pushed).await.unwrap();
}

/// The fake refuses what a real API server refuses, so the tests above cannot pass by accident.
#[tokio::test]
async fn the_fake_api_server_refuses_what_a_real_one_refuses() {
    let fake = FakeApiServer::start().await;
    let plugin = install_plugin(&fake, json!({}));
    let api: Api<DynamicObject> = Api::namespaced_with(fake.client(), NS, &wasmplugin_resource());
    let code = |result: kube::Result<DynamicObject>| match result {
        Ok(_) => 200,
        Err(kube::Error::Api(status)) => status.code,
        Err(other) => panic!("{other}"),
    };
    let merge = |patch: Value| Patch::Merge(patch);
    let pp = PatchParams::default();
    let version = plugin["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let cases = [
        (json!({"spec": {"pluginConfig": "text"}}), 422),
        (json!({"spec": {"pluginConfig": [1]}}), 422),
        (json!({"spec": {"url": null}}), 422),
        (json!({"spec": {"failStrategy": "FAIL_SOMETIMES"}}), 422),
        (json!({"kind": "EnvoyFilter"}), 400),
        (
            json!({"metadata": {"resourceVersion": "1"}, "spec": {"priority": 1}}),
            409,
        ),
        (
            json!({"metadata": {"resourceVersion": version}, "spec": {"priority": 1}}),
            200,
        ),
    ];
    for (patch, expected) in cases {
        assert_eq!(
            code(api.patch(PLUGIN, &pp, &merge(patch.clone())).await),
            expected,
            "{patch}"
        );
    }
    assert_eq!(code(api.patch("nope", &pp, &merge(json!({}))).await), 404);
    let stale: DynamicObject = serde_json::from_value(plugin.clone()).unwrap();
    assert_eq!(
        code(api.replace(PLUGIN, &PostParams::default(), &stale).await),
        409
    );
    assert_eq!(
        code(api.create(&PostParams::default(), &stale).await),
        400,
        "resourceVersion set on create"
    );
    let mut fresh = stale.clone();
    fresh.metadata.resource_version = None;
    assert_eq!(
        code(api.create(&PostParams::default(), &fresh).await),
        409,
        "already exists"
    );

    let configmaps: Api<ConfigMap> = Api::namespaced(fake.client(), NS);
    let big: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "big"}, "data": {"a": "x".repeat(1024 * 1024 + 1)}
    }))
    .unwrap();
    let error = configmaps
        .create(&PostParams::default(), &big)
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("Too long: may not be more than 1048576 bytes"),
        "{error}"
    );
    assert!(fake.get(Kind::ConfigMap, NS, "big").is_none());
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
    let fake = FakeApiServer::start().await;
    let pushed = config(json!({"generation": 3, "routes": [route("reviews", 1000)]}));
    install_plugin(&fake, serde_json::to_value(&pushed).unwrap());
    let (expected, receiver) = watch::channel(pushed.clone());
    let settle = Duration::from_millis(300);
    let mut events = Events::drive(watch_drift_with(
        fake.client(),
        NS,
        PLUGIN,
        receiver,
        DriftWatchConfig { settle },
    ));
    let first = next_within(&mut events, Duration::from_secs(5)).await;
    assert!(
        matches!(
            first,
            Some(DriftEvent::InSync {
                generation: Some(1)
            })
        ),
        "{first:?}"
    );

    // An edit of another field is not drift.
    fake.edit(Kind::WasmPlugin, NS, PLUGIN, |plugin| {
        plugin["spec"]["priority"] = json!(20)
    });
    let quiet = next_within(&mut events, Duration::from_millis(1200)).await;
    assert_eq!(quiet, None);

    // A hand edit of a weight is, within seconds.
    let edited = Instant::now();
    fake.edit(Kind::WasmPlugin, NS, PLUGIN, |plugin| {
        plugin["spec"]["pluginConfig"]["routes"][0]["variants"] =
            json!([{"name": "v1", "weight": 10000}, {"name": "v2", "weight": 0}]);
    });
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
        Some(3),
        "priority edit, then the weight edit"
    );
    assert_eq!(
        drift.differences,
        [Difference::RouteChanged {
            route: "reviews".into(),
            fields: vec!["variants".into()]
        }]
    );

    // Re-applying ends the drift.
    let router = WasmPluginRouter::new(fake.client(), NS, PLUGIN);
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
    // A router given the sender publishes each config just before it patches.
    let published = expected.subscribe();
    let router = router.with_expected(expected);
    let next = config(json!({"generation": 5, "routes": [route("reviews", 3000)]}));
    router.apply(&next).await.unwrap();
    assert_eq!(*published.borrow(), next);
    let quiet = next_within(&mut events, Duration::from_millis(1000)).await;
    assert_eq!(quiet, None);

    // A GitOps revert to the old config is drift against the new one.
    fake.edit(Kind::WasmPlugin, NS, PLUGIN, |plugin| {
        plugin["spec"]["pluginConfig"] = serde_json::to_value(&pushed).unwrap();
    });
    let event = next_within(&mut events, Duration::from_secs(5)).await;
    let Some(DriftEvent::Drifted(drift)) = event else {
        panic!("expected drift, got {event:?}");
    };
    assert!(
        drift.to_string().contains("generation is 3, pushed 5"),
        "{drift}"
    );

    fake.delete(Kind::WasmPlugin, NS, PLUGIN);
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

#[tokio::test]
async fn the_configmap_store_saves_loads_and_survives_a_restart() {
    let fake = FakeApiServer::start().await;
    let store = ConfigMapStore::new(fake.client(), NS, "meshcanary-state");
    assert_eq!(store.describe(), "ConfigMap shop/meshcanary-state");
    assert_eq!(store.load().await.unwrap(), None);
    let mut state = state_with_rollouts();
    store.save(&state).await.unwrap();
    assert_eq!(store.load().await.unwrap(), Some(state.clone()));
    state.filter.generation = 8;
    store.save(&state).await.unwrap();

    let stored = fake.get(Kind::ConfigMap, NS, "meshcanary-state").unwrap();
    assert_eq!(
        stored["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "meshcanary"
    );
    let data: ServiceState =
        serde_json::from_str(stored["data"][STATE_KEY].as_str().unwrap()).unwrap();
    assert_eq!(data, state);
    assert_eq!(data.rollouts.len(), 2);

    // A restarted instance finds the state the old one saved.
    drop(store);
    let restarted = ConfigMapStore::new(fake.client(), NS, "meshcanary-state");
    assert_eq!(restarted.load().await.unwrap(), Some(state.clone()));
    state.filter.generation = 9;
    restarted.save(&state).await.unwrap();
    assert_eq!(restarted.load().await.unwrap(), Some(state));
}

#[tokio::test]
async fn the_configmap_store_refuses_oversized_state_and_stale_writes() {
    let fake = FakeApiServer::start().await;
    let first = ConfigMapStore::new(fake.client(), NS, "state");
    let second = ConfigMapStore::new(fake.client(), NS, "state");
    assert_eq!(first.load().await.unwrap(), None);
    assert_eq!(second.load().await.unwrap(), None);
    let state = state_with_rollouts();
    first.save(&state).await.unwrap();
    let error = second.save(&state).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("another writer created the ConfigMap first"),
        "{error}"
    );

    // Both read the same version; the first to write wins, the second is refused, and keeps
    // being refused until it loads again.
    assert_eq!(second.load().await.unwrap(), Some(state.clone()));
    let mut newer = state.clone();
    newer.filter.generation = 8;
    first.save(&newer).await.unwrap();
    let mut stale = state.clone();
    stale.filter.generation = 100;
    let error = second.save(&stale).await.unwrap_err();
    assert!(matches!(error, Error::Store { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("another writer changed the ConfigMap"),
        "{error}"
    );
    let error = second.save(&stale).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("until the state is loaded again"),
        "{error}"
    );
    assert_eq!(
        first.load().await.unwrap(),
        Some(newer.clone()),
        "not overwritten"
    );
    assert_eq!(second.load().await.unwrap(), Some(newer.clone()));
    second.save(&stale).await.unwrap();

    // Too big for a ConfigMap: refused before it reaches the API server.
    let before = fake.get(Kind::ConfigMap, NS, "state").unwrap();
    let mut huge = newer.clone();
    huge.filter.routes[0].path_prefix = Some("/".repeat(1024 * 1024));
    let error = first.save(&huge).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("more than the 1048576 bytes a ConfigMap holds"),
        "{error}"
    );
    assert_eq!(fake.get(Kind::ConfigMap, NS, "state").unwrap(), before);

    // A store that never loaded cannot overwrite what is there either.
    let error = ConfigMapStore::new(fake.client(), NS, "state")
        .save(&state)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("has not loaded it"), "{error}");

    // Someone else's ConfigMap of the same name is not taken over.
    fake.create(
        Kind::ConfigMap,
        NS,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "theirs"}, "data": {"state.json": "{}"}}),
    );
    let error = ConfigMapStore::new(fake.client(), NS, "theirs")
        .load()
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("not labelled app.kubernetes.io/managed-by"),
        "{error}"
    );
}

fn elector(fake: &FakeApiServer, identity: &str) -> LeaderElector {
    let config = LeaseConfig {
        lease_duration: Duration::from_secs(2),
        renew_interval: Duration::from_millis(500),
        retry_interval: Duration::from_millis(200),
    };
    LeaderElector::new(fake.client(), NS, "meshcanary-leader", identity, config).unwrap()
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

fn lease(fake: &FakeApiServer) -> Value {
    fake.get(Kind::Lease, NS, "meshcanary-leader").unwrap()
}

#[tokio::test]
async fn exactly_one_leader_and_quick_takeovers() {
    let fake = FakeApiServer::start().await;
    let (a, b) = (elector(&fake, "pod-a"), elector(&fake, "pod-b"));
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
    assert_eq!(lease(&fake)["spec"]["holderIdentity"], first.as_str());
    assert_eq!(lease(&fake)["spec"]["leaseTransitions"], 0);
    assert_eq!(lease(&fake)["spec"]["leaseDurationSeconds"], 2);
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
    assert_eq!(lease(&fake)["spec"]["holderIdentity"], second.as_str());
    assert_eq!(lease(&fake)["spec"]["leaseTransitions"], 1);
    leader_task.await.unwrap();
    assert!(!overlap.is_finished(), "two leaders at once");
    overlap.abort();

    // A third replica follows; the second one crashes (stops renewing without releasing): the
    // third takes over once the lease has expired, not before.
    let c = elector(&fake, "pod-c");
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
        took > Duration::from_millis(1000) && took < Duration::from_millis(3000),
        "{took:?}"
    );
    assert_eq!(lease(&fake)["spec"]["holderIdentity"], "pod-c");
    assert_eq!(lease(&fake)["spec"]["leaseTransitions"], 2);

    // Deposed by someone who wrote the lease between our read and our renewal: the 409 makes
    // the leader step down at once, and a read right after it names who leads.
    fake.before_next(Method::PUT, Kind::Lease, |cluster| {
        cluster.edit(Kind::Lease, NS, "meshcanary-leader", |lease| {
            lease["spec"]["holderIdentity"] = json!("pod-intruder");
            lease["spec"]["leaseDurationSeconds"] = json!(30);
            lease["spec"]["renewTime"] = json!(Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string());
        });
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
        requests(&fake, "PUT", "leases")
            .iter()
            .any(|r| r.status == 409),
        "the conflict path ran"
    );
    // Our release does not touch a lease we no longer hold.
    c.release().await.unwrap();
    assert_eq!(lease(&fake)["spec"]["holderIdentity"], "pod-intruder");
    task_c.await.unwrap();
}
