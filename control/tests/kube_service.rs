//! The whole service in Kubernetes mode against a real kube-apiserver: `meshcanary serve`
//! processes run with the arguments and environment of the shipped Deployment, as the shipped
//! ServiceAccount (a TokenRequest token in a kubeconfig, where a pod would mount it), in
//! namespaces of the test's own with the shipped manifests installed. The test plays the rest of
//! the cluster as an administrator: a person with `kubectl edit`, a GitOps tool, a second replica.
//!
//! What each test changes in the Deployment's command is explicit: `--listen` (a free port), the
//! managed namespace, `--lease-duration 3s` (quicker hand-overs), `--on-drift`, and no
//! `--prometheus-url`: no proxies run here, so a weight counts as applied once written (the
//! walkthrough test in tests/ runs the real data plane).
//!
//! "No step applied twice" is checked on what the proxies would have seen: a watch replays every
//! version of the WasmPlugin, and the canary weight in them must only ever go up. Where a race
//! needs a late answer or a foreign write at the right moment, `meshcanary_testkit::interpose`
//! sits between one replica and the server.

use axum::http::Method;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use meshcanary_control::router::wasmplugin::wasmplugin_resource;
use meshcanary_testkit::envtest::Envtest;
use meshcanary_testkit::install::WASMPLUGIN;
use meshcanary_testkit::interpose::Interposer;
use meshcanary_testkit::pod::PodCommand;
use meshcanary_testkit::service::ServiceProcess;
use meshcanary_testkit::wait::eventually;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The service under test: this build, or another one named by `MESHCANARY_BIN_UNDER_TEST` (to
/// show what an older build does with the same tests).
fn bin() -> std::path::PathBuf {
    std::env::var_os("MESHCANARY_BIN_UNDER_TEST")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_meshcanary").into())
}
/// The service's state ConfigMap and Lease, as the Deployment names them.
const STATE: &str = "meshcanary-state";
const LEASE: &str = "meshcanary-control";
const LEASE_DURATION: Duration = Duration::from_secs(3);

#[path = "support/cluster.rs"]
mod cluster;

use cluster::Cluster;

impl Cluster {
    /// The state the service saved, as JSON.
    async fn saved_state(&self) -> Value {
        let saved = self.configmaps().get(STATE).await.unwrap();
        serde_json::from_str(&saved.data.unwrap()["state.json"]).unwrap()
    }

    /// Who holds the service's Lease (`None` when nobody does or it does not exist).
    async fn lease_holder(&self) -> Option<String> {
        let leases: Api<Lease> = Api::namespaced(self.admin.clone(), self.system());
        leases
            .get_opt(LEASE)
            .await
            .unwrap()?
            .spec?
            .holder_identity
            .filter(|holder| !holder.is_empty())
    }

    /// The Deployment's command for pod `name`, adapted to this test (see the module doc).
    fn command(&self, name: &str, on_drift: &str) -> PodCommand {
        let mut command = self.installed.pod_command(name);
        command
            .set_flag("--kube-namespace", self.apps())
            .remove_flag("--prometheus-url")
            .add_flag("--lease-duration", "3s")
            .add_flag("--on-drift", on_drift);
        command
    }

    /// Starts `meshcanary serve` as pod `name` and waits until it answers.
    async fn serve(&self, name: &str, on_drift: &str) -> Service {
        self.serve_command(name, &self.command(name, on_drift), None)
            .await
    }

    async fn serve_command(&self, name: &str, command: &PodCommand, via: Option<&str>) -> Service {
        let process = self.installed.run_pod_via(&bin(), command, name, via);
        process.wait_ready(Duration::from_secs(20)).await.unwrap();
        Service::new(process, &self.installed.api_token)
    }

    /// Starts pod `name` and waits until it leads.
    async fn serve_leader(&self, name: &str, on_drift: &str) -> Service {
        let service = self.serve(name, on_drift).await;
        self.wait_leader(&service).await;
        service
    }

    /// Waits until `service` holds the Lease and takes writes.
    async fn wait_leader(&self, service: &Service) {
        eventually(
            &format!("{} leads", service.name()),
            Duration::from_secs(5),
            async || match (self.lease_holder().await, service.readyz().await) {
                (Some(holder), (200, _)) if holder == service.name() => Ok(()),
                other => Err(format!("lease holder and readiness {other:?}")),
            },
        )
        .await;
    }
}

/// A running service and an HTTP client for its API.
struct Service {
    process: ServiceProcess,
    http: reqwest::Client,
    token: String,
}

/// An HTTP answer: status and JSON body (`null` if the body is not JSON).
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    /// The stable error code of an error answer.
    fn code(&self) -> &str {
        self.body
            .pointer("/error/code")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    fn message(&self) -> &str {
        self.body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

impl Service {
    fn new(process: ServiceProcess, token: &str) -> Service {
        Service {
            process,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            token: token.to_string(),
        }
    }

    fn name(&self) -> &str {
        &self.process.name
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.process.url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", self.name()));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None).await
    }

    /// `GET /readyz`: status and text.
    async fn readyz(&self) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}/readyz", self.process.url))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// A write that must succeed: retried only while this replica does not take writes yet
    /// (503 `not_leader` or `not_ready` right after winning the Lease).
    async fn write(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let answer = self.call(method.clone(), path, body.clone()).await;
            if (200..300).contains(&answer.status) {
                return answer.body;
            }
            let waiting = ["not_leader", "not_ready"].contains(&answer.code());
            if !waiting || Instant::now() > deadline {
                panic!(
                    "{method} {path} on {}: {} {}",
                    self.name(),
                    answer.status,
                    answer.body
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates rollout `reviews-v2` (v1 → v2 on route reviews) with `steps`.
    async fn create_rollout(&self, steps: Value) -> Value {
        self.write(
            Method::POST,
            "/v1/rollouts",
            Some(rollout_spec("reviews-v2", steps)),
        )
        .await
    }

    async fn rollout(&self, name: &str) -> Value {
        let answer = self.get(&format!("/v1/rollouts/{name}")).await;
        assert_eq!(answer.status, 200, "{}: {answer:?}", self.name());
        answer.body
    }

    /// `GET /v1/routes`: `{config, propagation, drift?, pushError?}`.
    async fn routes(&self) -> Value {
        let answer = self.get("/v1/routes").await;
        assert_eq!(answer.status, 200, "{}: {answer:?}", self.name());
        answer.body
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

/// What the service may change in its WasmPlugin (and what the server changes with it);
/// everything else belongs to whoever installed it.
const OURS: [&str; 4] = [
    "/spec/pluginConfig",
    "/metadata/resourceVersion",
    "/metadata/generation",
    "/metadata/managedFields",
];

/// The canary's weight in a filter config (route `reviews`, variant `v2`).
fn canary_weight(config: &Value) -> u64 {
    config["routes"][0]["variants"]
        .as_array()
        .and_then(|variants| variants.iter().find(|v| v["name"] == "v2"))
        .and_then(|v| v["weight"].as_u64())
        .unwrap_or_else(|| panic!("no v2 weight in {config}"))
}

/// `version 4, step index 3, 2000 bp`.
fn describe(rollout: &Value) -> String {
    format!(
        "version {}, step index {}, {} bp",
        rollout["version"], rollout["status"]["step"], rollout["status"]["canaryWeight"]
    )
}

fn phase(rollout: &Value) -> &str {
    rollout["status"]["phase"].as_str().unwrap_or("")
}

/// The step numbers ("step 3/7: …", 1-based) of every step entry in the rollout's history.
fn entered_steps(rollout: &Value) -> Vec<u64> {
    rollout["status"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|event| {
            let message = event["message"].as_str()?;
            let number = message.strip_prefix("step ")?.split('/').next()?;
            number.parse().ok()
        })
        .collect()
}

/// Waits until the rollout is in `phase` at `step` (0-based), on `service`.
async fn wait_rollout(service: &Service, name: &str, want: &str, step: u64) -> Value {
    let path = format!("/v1/rollouts/{name}");
    eventually(
        &format!("rollout {name} {want} at step {step} on {}", service.name()),
        Duration::from_secs(5),
        async || {
            let answer = service.get(&path).await;
            let rollout = answer.body;
            match (phase(&rollout), rollout["status"]["step"].as_u64()) {
                (phase, Some(at)) if phase == want && at == step => Ok(rollout),
                _ => Err(format!("{} {rollout}", answer.status)),
            }
        },
    )
    .await
}

/// Waits until the WasmPlugin's pluginConfig is exactly the config `service` reports; returns
/// that config.
async fn wait_in_sync(cluster: &Cluster, service: &Service) -> Value {
    eventually(
        "the WasmPlugin's pluginConfig is the service's config",
        Duration::from_secs(5),
        async || {
            let routes = service.routes().await;
            let live = cluster.plugin_config().await;
            if live == routes["config"] {
                Ok(live)
            } else {
                Err(format!("service {} / live {live}", routes["config"]))
            }
        },
    )
    .await
}

/// Waits until `GET /v1/routes` shows no drift.
async fn wait_no_drift(service: &Service) {
    eventually(
        "the drift clears",
        Duration::from_secs(3),
        async || match service.routes().await.get("drift") {
            None => Ok(()),
            Some(drift) => Err(drift.to_string()),
        },
    )
    .await;
}

fn rollout_spec(name: &str, steps: Value) -> Value {
    json!({"name": name, "route": "reviews", "stable": "v1", "canary": "v2", "steps": steps})
}

/// The filter config in the shipped WasmPlugin's `meshcanary.io/initial-plugin-config`.
fn shipped_seed(cluster: &Cluster) -> Value {
    let seed = cluster.installed_plugin["metadata"]["annotations"]
        ["meshcanary.io/initial-plugin-config"]
        .as_str()
        .expect("the shipped WasmPlugin carries the initial config");
    serde_json::from_str(seed).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_writes_exactly_the_plugin_config_and_nothing_else() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    assert!(
        cluster.installed_plugin["spec"]
            .get("pluginConfig")
            .is_none(),
        "the shipped WasmPlugin leaves pluginConfig to the service"
    );
    let service = cluster.serve_leader("a", "reapply").await;
    // No saved state and no pluginConfig: the service starts from the seed and writes it.
    let seed = shipped_seed(&cluster);
    let first = wait_in_sync(&cluster, &service).await;
    assert_eq!(
        first, seed,
        "the seed, as generation {}",
        seed["generation"]
    );

    let steps = json!([{"setWeight": {"percent": 10}}, {"pause": {}}]);
    service.create_rollout(steps).await;
    let rollout = wait_rollout(&service, "reviews-v2", "paused", 1).await;
    assert_eq!(rollout["status"]["canaryWeight"], 1000);

    let live = wait_in_sync(&cluster, &service).await;
    assert_eq!(canary_weight(&live), 1000, "{live}");
    assert_eq!(live["routes"][0]["variants"][0]["weight"], 9000, "{live}");
    assert_eq!(
        live["routes"][0]["rules"], seed["routes"][0]["rules"],
        "the QA rules are still there"
    );
    assert!(
        live["generation"].as_u64() > seed["generation"].as_u64(),
        "{live}"
    );
    let plugin = cluster.plugin().await;
    assert_eq!(
        without(&plugin, &OURS),
        without(&cluster.installed_plugin, &OURS)
    );

    // Removing a QA rule through the API removes it from the WasmPlugin too.
    let removed = service
        .write(Method::DELETE, "/v1/routes/reviews/rules/0", None)
        .await;
    assert_eq!(removed, seed["routes"][0]["rules"][0]);
    let after = wait_in_sync(&cluster, &service).await;
    assert_eq!(
        after["routes"][0]["rules"].as_array().map(Vec::len),
        Some(2),
        "{after}"
    );
    assert_eq!(canary_weight(&after), 1000, "the weight stays");
    assert!(after["generation"].as_u64() > live["generation"].as_u64());
    let plugin = cluster.plugin().await;
    assert_eq!(
        without(&plugin, &OURS),
        without(&cluster.installed_plugin, &OURS)
    );

    // The API server records meshcanary (server-side apply) as the owner of pluginConfig and of
    // nothing else; nothing else was written under its name.
    let ours: Vec<&Value> = plugin["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["manager"] == "meshcanary")
        .collect();
    assert_eq!(ours.len(), 1, "{ours:#?}");
    assert_eq!(ours[0]["operation"], "Apply");
    let spec: Vec<&String> = ours[0]["fieldsV1"]["f:spec"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(spec, ["f:pluginConfig"]);
    // Each config reached the WasmPlugin once, in order: the seed, 10 %, rule removed.
    let history = cluster.plugin_config_history().await;
    let weights: Vec<u64> = history.iter().map(canary_weight).collect();
    assert_eq!(weights, [0, 1000, 1000], "{history:#?}");
    assert_eq!(history.last(), Some(&after));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_foreign_edit_is_not_lost() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let proxy = Interposer::start(cluster.installed.envtest).await;
    let command = cluster.command("a", "reapply");
    let service = cluster.serve_command("a", &command, Some(&proxy.url)).await;
    cluster.wait_leader(&service).await;
    let steps = json!([{"setWeight": {"percent": 5}}, {"pause": {}}]);
    service.create_rollout(steps).await;
    wait_rollout(&service, "reviews-v2", "paused", 1).await;
    wait_in_sync(&cluster, &service).await;

    // Someone raises the priority: between the service's read and its write for the next two
    // pushes (so those writes are stale and must be re-done), and all along in a loop.
    let edits = Arc::new(AtomicUsize::new(0));
    let raise = |plugins: Api<DynamicObject>, edits: Arc<AtomicUsize>| async move {
        let plugin = plugins.get(WASMPLUGIN).await.unwrap();
        let priority = plugin.data["spec"]["priority"].as_i64().unwrap_or(0);
        let patch = json!({"metadata": {"resourceVersion": plugin.metadata.resource_version}, "spec": {"priority": priority + 1}});
        if plugins
            .patch(WASMPLUGIN, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .is_ok()
        {
            edits.fetch_add(1, Ordering::SeqCst);
        }
    };
    for _ in 0..2 {
        let (plugins, edits) = (cluster.plugins(), edits.clone());
        proxy.before_next(Method::PATCH, "/wasmplugins/", move || {
            raise(plugins, edits)
        });
    }
    let done = AtomicBool::new(false);
    let weights = [10, 15, 20, 25, 30, 35, 40, 45, 50];
    let set_weights = async {
        for percent in weights {
            let rollout = service
                .write(
                    Method::PUT,
                    "/v1/rollouts/reviews-v2/weight",
                    Some(json!({"percent": percent})),
                )
                .await;
            assert_eq!(rollout["status"]["canaryWeight"], percent * 100);
        }
        done.store(true, Ordering::SeqCst);
    };
    let edit_loop = async {
        while !done.load(Ordering::SeqCst) {
            raise(cluster.plugins(), edits.clone()).await;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    };
    tokio::join!(set_weights, edit_loop);

    let live = wait_in_sync(&cluster, &service).await;
    assert_eq!(canary_weight(&live), 5000, "the last weight: {live}");
    let plugin = cluster.plugin().await;
    let edits = edits.load(Ordering::SeqCst);
    assert!(edits >= 2, "{edits}");
    assert_eq!(
        plugin["spec"]["priority"].as_i64().unwrap_or(0),
        edits as i64,
        "every one of the {edits} priority edits survived"
    );
    let others = |p: &Value| without(p, &[&OURS[..], &["/spec/priority"]].concat());
    assert_eq!(others(&plugin), others(&cluster.installed_plugin));
    let patches: Vec<u16> = proxy
        .requests_to("PATCH", "/wasmplugins/")
        .iter()
        .map(|r| r.status)
        .collect();
    assert!(patches.contains(&409), "the race was run: {patches:?}");
    assert!(
        patches.iter().all(|s| [200, 409].contains(s)),
        "{patches:?}"
    );
    // A change outside pluginConfig is not drift.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let routes = service.routes().await;
    assert_eq!(routes.get("drift"), None, "{routes}");
    assert_eq!(routes["config"], cluster.plugin_config().await);
}

/// Sets the canary's weight in the live WasmPlugin by hand (`kubectl edit`), keeping the rest.
async fn edit_weight_by_hand(cluster: &Cluster, canary: u64) {
    let mut config = cluster.plugin_config().await;
    let variants = &mut config["routes"][0]["variants"];
    variants[0]["weight"] = json!(10000 - canary);
    variants[1]["weight"] = json!(canary);
    cluster
        .edit_plugin(json!({"spec": {"pluginConfig": config}}))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_re_applied_under_a_new_generation_and_recorded() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let service = cluster.serve_leader("a", "reapply").await;
    let steps = json!([{"setWeight": {"percent": 20}}, {"pause": {}}]);
    service.create_rollout(steps).await;
    wait_rollout(&service, "reviews-v2", "paused", 1).await;
    let pushed = wait_in_sync(&cluster, &service).await;

    // The hand edit also claims a generation far ahead of the service's.
    edit_weight_by_hand(&cluster, 5000).await;
    cluster
        .edit_plugin(json!({"spec": {"pluginConfig": {"generation": 40}}}))
        .await;
    let edited = Instant::now();
    let note = eventually(
        "the drift is re-applied and recorded",
        Duration::from_secs(8),
        async || {
            let rollout = service.rollout("reviews-v2").await;
            let note = rollout["status"]["history"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["message"].as_str())
                .find(|m| m.contains("changed outside meshcanary"))
                .map(str::to_string);
            let live = cluster.plugin_config().await;
            match (note, canary_weight(&live) == 2000) {
                (Some(note), true) => Ok(note),
                (note, _) => Err(format!("note {note:?}, live {live}")),
            }
        },
    )
    .await;
    let reapplied_after = edited.elapsed();
    assert!(
        reapplied_after < Duration::from_secs(5),
        "{reapplied_after:?}"
    );
    assert!(note.contains("re-applied"), "{note}");
    assert!(note.contains("pluginConfig drifted"), "{note}");
    assert!(note.contains("reviews"), "names the route: {note}");
    // The re-applied config is the service's, under a generation above the edit's: proxies
    // running the edit cannot count as running the re-applied config.
    let live = wait_in_sync(&cluster, &service).await;
    assert_eq!(
        without(&live, &["/generation"]),
        without(&pushed, &["/generation"])
    );
    assert!(live["generation"].as_u64() > Some(40), "{live}");
    let rollout = service.rollout("reviews-v2").await;
    assert_eq!(phase(&rollout), "paused", "re-applying does not pause");
    assert_eq!(
        rollout["status"]["weightGeneration"], live["generation"],
        "{rollout:#}"
    );
    wait_no_drift(&service).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_pauses_the_rollout_and_resume_re_applies_the_config() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let service = cluster.serve_leader("a", "pause").await;
    let steps = json!([
        {"setWeight": {"percent": 20}},
        {"pause": {"duration": "60s"}},
        {"setWeight": {"percent": 50}},
    ]);
    service.create_rollout(steps).await;
    wait_rollout(&service, "reviews-v2", "progressing", 1).await;
    let pushed = wait_in_sync(&cluster, &service).await;

    edit_weight_by_hand(&cluster, 5000).await;
    let edited = Instant::now();
    let drift = eventually(
        "GET /v1/routes shows the drift",
        Duration::from_secs(6),
        async || {
            let routes = service.routes().await;
            routes
                .get("drift")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| routes.to_string())
        },
    )
    .await;
    let detected_after = edited.elapsed();
    assert!(
        detected_after < Duration::from_secs(5),
        "{detected_after:?}"
    );
    assert!(drift.starts_with("pluginConfig drifted"), "{drift}");
    assert!(drift.contains("reviews"), "{drift}");
    let rollout = wait_rollout(&service, "reviews-v2", "paused", 1).await;
    let message = rollout["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("changed outside meshcanary") && message.contains(&drift),
        "{message}"
    );
    assert_eq!(rollout["status"]["hold"], "request");
    // The hand edit stays until a person decides.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(canary_weight(&cluster.plugin_config().await), 5000);
    assert_eq!(canary_weight(&service.routes().await["config"]), 2000);

    // Deciding: resume. The weights do not change, but the service's config replaces the edit,
    // under a new generation, and the rollout waits for that generation, not the edited one.
    let resumed = service
        .write(Method::POST, "/v1/rollouts/reviews-v2/resume", None)
        .await;
    assert_eq!(phase(&resumed), "progressing", "{resumed:#}");
    let live = wait_in_sync(&cluster, &service).await;
    assert_eq!(
        canary_weight(&live),
        2000,
        "the hand-edited weight is gone: {live}"
    );
    assert!(
        live["generation"].as_u64() > pushed["generation"].as_u64(),
        "{live}"
    );
    assert_eq!(
        resumed["status"]["weightGeneration"], live["generation"],
        "{resumed:#}"
    );
    wait_no_drift(&service).await;

    // A second edit, and this time the person decides by setting a weight.
    edit_weight_by_hand(&cluster, 7000).await;
    wait_rollout(&service, "reviews-v2", "paused", 1).await;
    service
        .write(
            Method::PUT,
            "/v1/rollouts/reviews-v2/weight",
            Some(json!({"percent": 30})),
        )
        .await;
    let live = wait_in_sync(&cluster, &service).await;
    assert_eq!(canary_weight(&live), 3000);
    wait_no_drift(&service).await;
}

/// Asserts that `follower` refuses writes, naming `leader`.
async fn assert_refuses_writes(follower: &Service, leader: &str) {
    let answer = follower
        .call(Method::POST, "/v1/rollouts/reviews-v2/pause", None)
        .await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.code(), "not_leader", "{answer:?}");
    assert!(names_leader(&answer, leader), "{answer:?}");
}

/// Whether a `not_leader` answer names `leader` (an identity such as "a" also occurs in the
/// message's other words, so the whole phrase is matched).
fn names_leader(answer: &Answer, leader: &str) -> bool {
    answer
        .message()
        .contains(&format!("(the leader is {leader})"))
}

/// Waits until exactly one of `services` takes writes (the other refusing them with
/// `not_leader`); returns its index.
async fn the_one_leader(cluster: &Cluster, services: [&Service; 2]) -> usize {
    eventually("one leader", Duration::from_secs(5), async || {
        let holder = cluster.lease_holder().await.ok_or("no lease holder")?;
        let index = services
            .iter()
            .position(|s| s.name() == holder)
            .ok_or_else(|| format!("unknown holder {holder}"))?;
        let other = services[1 - index];
        let answer = other
            .call(Method::POST, "/v1/rollouts/nothing/pause", None)
            .await;
        match (answer.status, answer.code()) {
            (503, "not_leader") if names_leader(&answer, &holder) => Ok(index),
            _ => Err(format!("{} answered {answer:?}", other.name())),
        }
    })
    .await
}

/// Sends a write to a replica that has just taken over (or is about to): retried while it does
/// not lead yet, and while it answers anything else but success, for which `problems` gets a
/// note. Returns the answer and when it came, counted from `since`.
async fn write_after_takeover(
    service: &Service,
    path: &str,
    since: Instant,
    problems: &mut Vec<String>,
) -> (Value, Duration) {
    let deadline = Instant::now() + LEASE_DURATION + Duration::from_secs(4);
    let mut failed: Vec<(Duration, Answer)> = Vec::new();
    loop {
        let answer = service.call(Method::POST, path, None).await;
        if answer.status == 200 {
            if let (Some((first, answer)), Some((last, _))) = (failed.first(), failed.last()) {
                problems.push(format!(
                    "{} led but failed POST {path} {} times, from {first:?} to {last:?} after \
                     the handover began, before it succeeded after {:?}; first failure: {} {}",
                    service.name(),
                    failed.len(),
                    since.elapsed(),
                    answer.status,
                    answer.body
                ));
            }
            return (answer.body, since.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "{} never took POST {path}: {answer:?}",
            service.name()
        );
        if !["not_leader", "not_ready"].contains(&answer.code()) {
            failed.push((since.elapsed(), answer));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_one_leader_and_hand_over() {
    let started = Instant::now();
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let (a, b) = tokio::join!(cluster.serve("a", "reapply"), cluster.serve("b", "reapply"));
    let mut services = [a, b];
    let first = the_one_leader(&cluster, [&services[0], &services[1]]).await;
    let (leader, follower) = (&services[first], &services[1 - first]);

    // Pause steps without a duration: the test decides when the rollout moves on.
    let steps = json!([
        {"setWeight": {"percent": 10}}, {"pause": {}},
        {"setWeight": {"percent": 20}}, {"pause": {}},
        {"setWeight": {"percent": 30}}, {"pause": {"duration": "1s"}},
        {"setWeight": {"percent": 40}}, {"pause": {}},
        {"setWeight": {"percent": 50}},
    ]);
    let spec = rollout_spec("reviews-v2", steps);
    leader.write(Method::POST, "/v1/rollouts", Some(spec)).await;
    let created = wait_rollout(leader, "reviews-v2", "paused", 1).await;
    let created_at = Instant::now();

    // The follower refuses writes, naming the leader, and serves the leader's rollout.
    assert_refuses_writes(follower, leader.name()).await;
    let seen = eventually(
        "the follower shows the leader's rollout",
        Duration::from_secs(4),
        async || {
            let answer = follower.get("/v1/rollouts/reviews-v2").await;
            if answer.body["version"] == created["version"] {
                Ok(answer.body)
            } else {
                Err(format!("{answer:?}"))
            }
        },
    )
    .await;
    let follower_lag = created_at.elapsed();
    assert!(
        follower_lag < Duration::from_millis(2600),
        "{follower_lag:?}"
    );
    assert_eq!(seen["status"], created["status"]);
    let listed = follower.get("/v1/rollouts").await;
    assert_eq!(
        listed.body["items"].as_array().map(Vec::len),
        Some(1),
        "{listed:?}"
    );
    assert_refuses_writes(follower, leader.name()).await;
    assert_eq!(
        follower.readyz().await.0,
        200,
        "a follower is ready: it serves reads"
    );

    // The leader moves on (20 %, then the pause at step index 3) and is stopped right away, as
    // in a rolling update: the follower has not reloaded since.
    let resumed = leader
        .write(Method::POST, "/v1/rollouts/reviews-v2/resume", None)
        .await;
    // The answer is the resume's own result (20 % entered); the engine goes on to the pause.
    assert_eq!(resumed["status"]["step"], 2, "{resumed}");
    let moved = wait_rollout(leader, "reviews-v2", "paused", 3).await;
    let terminated_at = Instant::now();
    let status = services[first]
        .process
        .terminate(Duration::from_secs(10))
        .unwrap();
    assert!(status.success(), "graceful stop: {status}");
    let (stopped, successor) = (first, 1 - first);
    let successor_id = services[successor].name().to_string();

    // The successor takes over quickly and continues from where the old leader left it.
    let lease_moved = eventually(
        "the successor holds the Lease",
        Duration::from_secs(2),
        async || match cluster.lease_holder().await {
            Some(holder) if holder == successor_id => Ok(terminated_at.elapsed()),
            other => Err(format!("lease holder {other:?}")),
        },
    )
    .await;
    assert!(
        lease_moved < Duration::from_secs(1),
        "graceful handover took {lease_moved:?}"
    );
    let mut problems = Vec::new();
    let (resumed, handover) = write_after_takeover(
        &services[successor],
        "/v1/rollouts/reviews-v2/resume",
        terminated_at,
        &mut problems,
    )
    .await;
    if handover > Duration::from_secs(1) {
        problems.push(format!(
            "after a graceful stop the new leader took its first write only {handover:?} later \
             (it held the Lease after {lease_moved:?})"
        ));
    }
    // Resumed from step index 3 (the old leader's last state), not from 1: the resume entered
    // index 4, 30 % (the engine then holds it for a second at index 5).
    if resumed["status"]["step"] != 4 || resumed["status"]["canaryWeight"] != 3000 {
        problems.push(format!(
            "the resume the new leader took did not continue from the old leader's last state \
             (step index 3, 2000 bp) to step index 4, 3000 bp: {}",
            describe(&resumed)
        ));
        panic!("{problems:#?}\n{resumed:#}");
    }
    assert!(resumed["version"].as_u64() > moved["version"].as_u64());
    assert_eq!(
        canary_weight(&wait_in_sync(&cluster, &services[successor]).await),
        3000
    );

    // The old leader comes back (a new pod with the same name) and follows.
    let name = services[stopped].name().to_string();
    services[stopped] = cluster.serve(&name, "reapply").await;
    eventually(
        "the restarted replica follows",
        Duration::from_secs(4),
        async || {
            let answer = services[stopped]
                .call(Method::POST, "/v1/rollouts/reviews-v2/pause", None)
                .await;
            match (answer.status, names_leader(&answer, &successor_id)) {
                (503, true) => Ok(()),
                _ => Err(format!("{answer:?}")),
            }
        },
    )
    .await;

    // The leader is killed outright: the other one takes over once the Lease runs out.
    wait_rollout(&services[successor], "reviews-v2", "paused", 7).await;
    let killed_at = Instant::now();
    services[successor].process.kill().unwrap();
    let takeover = eventually(
        "the restarted replica takes over",
        LEASE_DURATION + Duration::from_secs(3),
        async || match cluster.lease_holder().await {
            Some(holder) if holder == name => Ok(killed_at.elapsed()),
            other => Err(format!("lease holder {other:?}")),
        },
    )
    .await;
    assert!(
        takeover <= LEASE_DURATION + Duration::from_secs(1),
        "took over {takeover:?} after the kill (lease {LEASE_DURATION:?})"
    );
    assert!(
        takeover >= Duration::from_millis(1500),
        "the Lease was taken before it could have expired: {takeover:?}"
    );
    let last = &services[stopped];
    let (done, _) = write_after_takeover(
        last,
        "/v1/rollouts/reviews-v2/resume",
        killed_at,
        &mut problems,
    )
    .await;
    let done = match phase(&done) {
        "succeeded" => done,
        // A finished rollout stays at its last step's index.
        _ => wait_rollout(last, "reviews-v2", "succeeded", 8).await,
    };
    assert_eq!(done["status"]["canaryWeight"], 10000);
    let live = wait_in_sync(&cluster, last).await;
    assert_eq!(canary_weight(&live), 10000);
    let done = last.rollout("reviews-v2").await;
    // Nobody but the service touched pluginConfig.
    let notes: Vec<&str> = done["status"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.contains("outside meshcanary"))
        .collect();
    if !notes.is_empty() {
        problems.push(format!(
            "the rollout's history reports drift nobody made: {notes:#?}"
        ));
    }

    // No step was applied twice: each was entered once, in order, and the WasmPlugin only ever
    // moved forward.
    assert_eq!(
        entered_steps(&done),
        (1..=9).collect::<Vec<u64>>(),
        "{done:#}"
    );
    let history = cluster.plugin_config_history().await;
    let mut weights: Vec<u64> = history.iter().map(canary_weight).collect();
    if !weights.windows(2).all(|w| w[0] <= w[1]) {
        problems.push(format!(
            "the canary weight went backwards in the WasmPlugin (a step applied twice): {weights:?}"
        ));
    }
    // Promotion and finishing may both write 100 %.
    weights.dedup();
    weights.sort_unstable();
    weights.dedup();
    assert_eq!(weights, [0, 1000, 2000, 3000, 4000, 5000, 10000]);
    eprintln!(
        "leader test: {:?}; follower lag {follower_lag:?}, Lease moved {lease_moved:?} and \
         first write taken {handover:?} after SIGTERM, Lease taken {takeover:?} after SIGKILL",
        started.elapsed()
    );
    assert!(problems.is_empty(), "{problems:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_taken_during_the_takeover_reload_is_not_undone() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let a = cluster.serve("a", "reapply").await;
    cluster.wait_leader(&a).await;
    let steps = json!([
        {"setWeight": {"percent": 10}}, {"pause": {}},
        {"setWeight": {"percent": 30}}, {"pause": {}},
        {"setWeight": {"percent": 50}},
    ]);
    a.write(
        Method::POST,
        "/v1/rollouts",
        Some(rollout_spec("reviews-v2", steps)),
    )
    .await;
    let created = wait_rollout(&a, "reviews-v2", "paused", 1).await;

    // b reaches the API server through a proxy that, once b has written the Lease (a follower
    // never does: that is b taking it over), delivers b's reads of the state ConfigMap 700 ms
    // late: the reload b does when it takes over is still under way when the first write
    // reaches it.
    let proxy = Interposer::start(cluster.installed.envtest).await;
    let state_path = format!("/api/v1/namespaces/{}/configmaps/{STATE}", cluster.system());
    let took_lease = AtomicBool::new(false);
    proxy.hold(move |method, path| {
        if *method == Method::PUT && path.ends_with(&format!("/leases/{LEASE}")) {
            took_lease.store(true, Ordering::SeqCst);
        }
        let reload = method == Method::GET && path == state_path;
        (reload && took_lease.load(Ordering::SeqCst)).then_some(Duration::from_millis(700))
    });
    let b = cluster
        .serve_command("b", &cluster.command("b", "reapply"), Some(&proxy.url))
        .await;
    eventually(
        "b follows with the rollout loaded",
        Duration::from_secs(4),
        async || {
            let answer = b.get("/v1/rollouts/reviews-v2").await;
            if answer.body["version"] == created["version"] {
                Ok(())
            } else {
                Err(format!("{answer:?}"))
            }
        },
    )
    .await;
    assert!(a
        .process
        .terminate(Duration::from_secs(10))
        .unwrap()
        .success());
    let held = tokio::time::timeout(Duration::from_secs(4), proxy.next_held())
        .await
        .expect("b reloads the state when it takes over");
    let resumed = b
        .write(Method::POST, "/v1/rollouts/reviews-v2/resume", None)
        .await;
    // The held reload has been delivered and acted on.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // What the resume must have done, and must still be visible: its answer is step 3/5 (index 2,
    // 30 %) entered; a moment later the engine holds at the pause, step 4/5 (index 3), still 30 %.
    let resumed_ok = |rollout: &Value, step: u64| {
        rollout["status"]["step"] == step && rollout["status"]["canaryWeight"] == 3000
    };
    let mut problems = Vec::new();
    if !resumed_ok(&resumed, 2) {
        problems.push(format!(
            "the resume was answered 200 without having entered step 3/5 (index 2, 3000 bp): {}",
            describe(&resumed)
        ));
    }
    let now = b.rollout("reviews-v2").await;
    if !resumed_ok(&now, 3) {
        problems.push(format!(
            "1.2 s after the resume, b does not hold at step 4/5 (index 3, 3000 bp): {}",
            describe(&now)
        ));
    }
    let weights: Vec<u64> = cluster
        .plugin_config_history()
        .await
        .iter()
        .map(canary_weight)
        .collect();
    if !weights.windows(2).all(|w| w[0] <= w[1]) {
        problems.push(format!(
            "the canary weight went backwards in the WasmPlugin: {weights:?}"
        ));
    }
    // One more write: it must build on the resume, not on the state from before it.
    let next = b
        .call(Method::POST, "/v1/rollouts/reviews-v2/resume", None)
        .await;
    // Step 5/5 (index 4, 50 %), then promotion: the rollout is done.
    if next.status != 200 || next.body["status"]["step"] != 4 {
        problems.push(format!(
            "the next resume should reach step 5/5 (index 4): {} {}",
            next.status,
            describe(&next.body)
        ));
    }
    let saved = cluster.record("reviews-v2").await;
    let saved = &saved;
    let resumes = saved["status"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["message"] == "resumed by request")
        .count();
    if resumes != 2 {
        problems.push(format!(
            "the saved rollout records {resumes} of the 2 resumes it took: {}",
            describe(saved)
        ));
    }
    eprintln!("takeover reload test: held {held}");
    assert!(problems.is_empty(), "{problems:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_report_the_leaders_config_without_false_drift() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let (a, b) = tokio::join!(cluster.serve("a", "reapply"), cluster.serve("b", "reapply"));
    let services = [a, b];
    let first = the_one_leader(&cluster, [&services[0], &services[1]]).await;
    let (leader, follower) = (&services[first], &services[1 - first]);
    let steps = json!([{"setWeight": {"percent": 10}}, {"pause": {}}]);
    leader.create_rollout(steps).await;
    wait_rollout(leader, "reviews-v2", "paused", 1).await;
    let live = wait_in_sync(&cluster, leader).await;
    // Past the follower's reload and the drift watch's settle time.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let routes = follower.routes().await;
    assert_eq!(
        routes["config"], live,
        "the follower reloaded the leader's config"
    );
    assert_eq!(
        routes.get("drift"),
        None,
        "the WasmPlugin holds exactly the leader's config, yet the follower reports drift"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_resumes_from_the_cluster() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let first = cluster.serve("a", "reapply").await;
    cluster.wait_leader(&first).await;
    let steps = json!([
        {"setWeight": {"percent": 10}},
        {"pause": {}},
        {"setWeight": {"percent": 30}},
    ]);
    first.create_rollout(steps).await;
    let before = wait_rollout(&first, "reviews-v2", "paused", 1).await;
    let status = first.process.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "graceful stop: {status}");
    assert_eq!(cluster.lease_holder().await, None, "the Lease was released");
    // The API's rollout is a MeshRollout, whose status holds its record; the ConfigMap says
    // which run its filter config reflects.
    assert_eq!(
        cluster.record("reviews-v2").await["version"],
        before["version"]
    );
    assert!(cluster.saved_state().await["keptElsewhere"]
        .get("reviews-v2")
        .is_some());

    // A new pod: nothing on disk, everything from the cluster.
    let second = cluster.serve("b", "reapply").await;
    cluster.wait_leader(&second).await;
    let after = second.rollout("reviews-v2").await;
    let rollout = |view: &Value| without(view, &["/propagation"]);
    assert_eq!(
        rollout(&after),
        rollout(&before),
        "the same rollout, same version"
    );
    assert_eq!(
        second.routes().await["config"],
        cluster.plugin_config().await
    );

    let resumed = second
        .write(Method::POST, "/v1/rollouts/reviews-v2/resume", None)
        .await;
    assert!(resumed["version"].as_u64() > before["version"].as_u64());
    if phase(&resumed) != "succeeded" {
        // A finished rollout stays at its last step's index.
        wait_rollout(&second, "reviews-v2", "succeeded", 2).await;
    }
    let live = wait_in_sync(&cluster, &second).await;
    assert_eq!(canary_weight(&live), 10000);

    // Each step once, and the WasmPlugin only moved forward: 0, 10 %, 30 %, 100 %.
    let done = second.rollout("reviews-v2").await;
    assert_eq!(entered_steps(&done), [1, 2, 3], "{done:#}");
    let promotions = done["status"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("promoting"))
        })
        .count();
    assert_eq!(promotions, 1, "{done:#}");
    let history = cluster.plugin_config_history().await;
    let mut weights: Vec<u64> = history.iter().map(canary_weight).collect();
    weights.dedup();
    assert_eq!(
        weights,
        [0, 1000, 3000, 10000],
        "the WasmPlugin's canary weight over time (a step applied twice if it goes back)"
    );
}

/// Issue 20, Kubernetes mode: a finished release retires the old stable from the WasmPlugin's
/// pluginConfig (after `retireAfter`); variants no rollout left behind stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_retires_the_old_stable_from_the_wasmplugin() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let service = cluster.serve("a", "reapply").await;
    cluster.wait_leader(&service).await;
    let mut spec = rollout_spec("reviews-v2", json!([{"setWeight": {"percent": 100}}]));
    spec["retireAfter"] = json!("1s");
    service
        .write(Method::POST, "/v1/rollouts", Some(spec))
        .await;
    wait_rollout(&service, "reviews-v2", "succeeded", 0).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let names = |config: &Value| -> Vec<String> {
        config["routes"][0]["variants"]
            .as_array()
            .map(|variants| {
                variants
                    .iter()
                    .filter_map(|v| v["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    loop {
        let live = cluster.plugin_config().await;
        // The shipped config also has v3 at 0 %: no rollout left it behind, so it stays.
        if names(&live) == ["v2", "v3"] {
            assert_eq!(live["routes"][0]["variants"][0]["weight"], 10000);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "v1 never left the WasmPlugin: {live}\n{}",
            service.process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = service.rollout("reviews-v2").await;
    assert_eq!(
        done["status"]["message"], "retired v1 from route reviews",
        "{done:#}"
    );
}

/// A service started with the Deployment's own arguments (no `--routes`) and no saved state
/// adopts the WasmPlugin's live pluginConfig and never overwrites it; started before its
/// WasmPlugin exists, it waits (not ready, refusing writes, saying why) and then takes the
/// config the WasmPlugin carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_saved_state_the_service_adopts_the_live_config_and_never_overwrites_it() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    // A WasmPlugin that already carries a config (installed before meshcanary, or by an older
    // manifest): weights a person set, a generation of their own.
    let mut theirs = shipped_seed(&cluster);
    theirs["generation"] = json!(12);
    theirs["routes"][0]["variants"][1]["weight"] = json!(500);
    theirs["routes"][0]["variants"][0]["weight"] = json!(9500);
    cluster
        .edit_plugin(json!({"spec": {"pluginConfig": theirs}}))
        .await;
    let command = cluster.command("a", "reapply");
    assert_eq!(
        command.flag("--routes"),
        None,
        "the Deployment passes no --routes"
    );
    let service = cluster.serve_command("a", &command, None).await;
    cluster.wait_leader(&service).await;
    let routes = service.routes().await;
    assert_eq!(routes["config"], theirs, "adopted as it is");
    assert_eq!(cluster.plugin_config().await, theirs, "not overwritten");
    // And it is now the service's: a rollout moves on from the adopted weights.
    let steps = json!([{"setWeight": {"percent": 10}}, {"pause": {}}]);
    let created = service.create_rollout(steps).await;
    assert_eq!(created["spec"]["route"], "reviews");
    let live = wait_in_sync(&cluster, &service).await;
    assert_eq!(canary_weight(&live), 1000);
    assert!(live["generation"].as_u64() > Some(12), "{live}");
    drop(service);

    // The walkthrough's order: the service first, its WasmPlugin later.
    let Some(later) = Cluster::start().await else {
        return;
    };
    later
        .plugins()
        .delete(WASMPLUGIN, &DeleteParams::default())
        .await
        .unwrap();
    let service = later.serve("a", "reapply").await;
    let waiting = eventually(
        "the service says what it waits for",
        Duration::from_secs(5),
        async || match service.readyz().await {
            (503, text) if text.contains("does not exist; waiting for it") => Ok(text),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    assert!(
        waiting.contains(&format!("WasmPlugin {}/{WASMPLUGIN}", later.apps())),
        "{waiting}"
    );
    let refused = service
        .call(
            Method::POST,
            "/v1/rollouts",
            Some(rollout_spec(
                "reviews-v2",
                json!([{"setWeight": {"percent": 10}}]),
            )),
        )
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (503, "not_ready"),
        "{refused:?}"
    );
    assert!(refused.message().contains("waiting for it"), "{refused:?}");
    assert!(
        later.configmaps().get_opt(STATE).await.unwrap().is_none(),
        "nothing saved while waiting"
    );
    later.installed.apply_bookinfo();
    later.wait_leader(&service).await;
    let live = wait_in_sync(&later, &service).await;
    assert_eq!(
        live,
        shipped_seed(&later),
        "the WasmPlugin's initial config, written once"
    );
    let answer = service
        .call(
            Method::POST,
            "/v1/rollouts",
            Some(rollout_spec(
                "reviews-v2",
                json!([{"setWeight": {"percent": 10}}]),
            )),
        )
        .await;
    assert_eq!(answer.status, 201, "{answer:?}");
}

/// Labels and annotations added to the state ConfigMap by someone else (a backup tool,
/// `kubectl annotate`) do not matter; a change of the state itself is re-read and the leader's
/// write applied on top; a leader that cannot write says so on /readyz.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_edits_of_the_state_configmap_do_not_wedge_the_leader() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let service = cluster.serve_leader("a", "reapply").await;
    let steps = json!([{"setWeight": {"percent": 10}}, {"pause": {}}, {"setWeight": {"percent": 20}}, {"pause": {}}]);
    service.create_rollout(steps).await;
    wait_rollout(&service, "reviews-v2", "paused", 1).await;
    let admin = cluster.installed.envtest;
    admin.kubectl_ok(&[
        "annotate",
        "configmap",
        STATE,
        "-n",
        cluster.system(),
        "backup.example/taken=2026-12-07",
    ]);
    admin.kubectl_ok(&[
        "label",
        "configmap",
        STATE,
        "-n",
        cluster.system(),
        "team=platform",
    ]);
    let paused = service
        .call(Method::POST, "/v1/rollouts/reviews-v2/pause", None)
        .await;
    assert_eq!(
        paused.status, 200,
        "a write after a metadata edit: {paused:?}"
    );
    assert_eq!(service.readyz().await.0, 200);
    let saved = cluster.configmaps().get(STATE).await.unwrap();
    assert_eq!(
        saved.metadata.annotations.unwrap()["backup.example/taken"],
        "2026-12-07"
    );
    assert_eq!(saved.metadata.labels.unwrap()["team"], "platform");

    // Someone restores the rollout's record from a backup (its status, through the status
    // subresource): a real conflict. The leader's next write re-reads it and applies itself on
    // top.
    cluster
        .mesh_rollouts()
        .patch_status(
            "reviews-v2",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"run": {"status": {"message": "restored from a backup"}}}}),
            ),
        )
        .await
        .unwrap();
    let resumed = service
        .call(Method::POST, "/v1/rollouts/reviews-v2/resume", None)
        .await;
    assert_eq!(resumed.status, 200, "{resumed:?}");
    assert_eq!(resumed.body["status"]["canaryWeight"], 2000, "{resumed:?}");
    let history = cluster.record("reviews-v2").await["status"]["history"].clone();
    assert!(
        history.to_string().contains("resumed by request"),
        "{history}"
    );
    assert!(service
        .process
        .log()
        .contains("re-reading it and applying this change on top"));

    // The service account loses the right to write its state: the leader is not ready, and
    // says why, until the right is back.
    let role = "role/meshcanary-control";
    let original = admin.kubectl_ok(&["get", role, "-n", cluster.system(), "-o", "json"]);
    let mut narrowed: Value = serde_json::from_str(&original).unwrap();
    for rule in narrowed["rules"].as_array_mut().unwrap() {
        if rule["resources"] == json!(["configmaps"]) {
            rule["verbs"] = json!(["get"]);
        }
    }
    let apply = |object: &Value| {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            without(object, &["/metadata/resourceVersion"]).to_string(),
        )
        .unwrap();
        admin.kubectl_ok(&["replace", "-f", &file.path().display().to_string()]);
    };
    apply(&narrowed);
    // Each probe changes the state (a weight one percent off the last), so each must be saved.
    let percent = AtomicUsize::new(21);
    let set_weight = async || {
        let next = percent.fetch_add(1, Ordering::SeqCst);
        service
            .call(
                Method::PUT,
                "/v1/rollouts/reviews-v2/weight",
                Some(json!({"percent": next})),
            )
            .await
    };
    let refused = eventually(
        "a write fails without the right",
        Duration::from_secs(5),
        async || {
            let answer = set_weight().await;
            match answer.status {
                200 => Err("still allowed (RBAC not yet in effect)".into()),
                _ => Ok(answer),
            }
        },
    )
    .await;
    assert_eq!(refused.status, 500, "{refused:?}");
    let (status, text) = service.readyz().await;
    assert_eq!(status, 503, "{text}");
    assert!(
        text.contains("save:") && text.contains("forbidden"),
        "{text}"
    );
    apply(&serde_json::from_str(&original).unwrap());
    eventually(
        "ready again once it can write",
        Duration::from_secs(10),
        async || {
            let answer = set_weight().await;
            match (answer.status, service.readyz().await) {
                (200, (200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

/// A replica that cannot bind its API's port takes no Lease and pushes nothing, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_listen_takes_no_lease_and_pushes_nothing() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut command = cluster.command("a", "reapply");
    command.set_flag("--listen", &taken.local_addr().unwrap().to_string());
    let process = cluster.installed.run_pod(&bin(), &command, "a");
    let status = process.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(!status.success());
    let log = process.log();
    assert!(log.contains("cannot listen on 127.0.0.1:"), "{log}");
    assert!(
        !log.contains("state store"),
        "a bind failure is not a state store error: {log}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cluster.lease_holder().await, None);
    assert!(cluster.plugin_config().await.is_null(), "nothing pushed");
    assert!(
        cluster.configmaps().get_opt(STATE).await.unwrap().is_none(),
        "nothing saved"
    );
}

/// After the API server was away long enough for kube's default watch backoff to grow (tens of
/// seconds), a drift is seen within seconds of its return — also when the watch's
/// resourceVersion is too old by then (410 Gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_seen_within_seconds_after_an_api_server_restart() {
    let Some(envtest) = Envtest::start() else {
        return;
    };
    let envtest: &'static Envtest = Box::leak(Box::new(envtest));
    let cluster = Cluster::start_on(envtest).await;
    let service = cluster.serve_leader("a", "reapply").await;
    let pushed = wait_in_sync(&cluster, &service).await;

    for (round, compact) in [(1, false), (2, true)] {
        envtest.stop_apiserver();
        // Long enough for an exponential backoff from 0.8 s to pass 10 s between attempts.
        tokio::time::sleep(Duration::from_secs(15)).await;
        if compact {
            // The watch's last resourceVersion is history now: it must list again.
            envtest.compact_etcd();
        }
        envtest.start_apiserver();
        let back = Instant::now();
        let admin = envtest.admin_client().await;
        let plugins: Api<DynamicObject> =
            Api::namespaced_with(admin, cluster.apps(), &wasmplugin_resource());
        let mut config = pushed.clone();
        config["routes"][0]["variants"][0]["weight"] = json!(5000);
        config["routes"][0]["variants"][1]["weight"] = json!(5000);
        plugins
            .patch(
                WASMPLUGIN,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"pluginConfig": config}})),
            )
            .await
            .unwrap();
        let seen = eventually(
            &format!("round {round}: the drift is re-applied after the restart"),
            Duration::from_secs(20),
            async || {
                let live = cluster.plugin_config().await;
                match canary_weight(&live) {
                    0 => Ok(back.elapsed()),
                    other => Err(format!("canary weight {other}")),
                }
            },
        )
        .await;
        eprintln!("round {round} (compacted: {compact}): drift re-applied {seen:?} after the API server was back");
        // The backoff itself (at most 2 s between attempts) is pinned by drift.rs's unit test;
        // this bound is a coarse guard on the whole path (watch, list, push), loose enough for a
        // loaded 2-core CI machine, where it measured 7.4 s once (usually 2-4 s).
        assert!(seen < Duration::from_secs(12), "round {round}: {seen:?}");
    }
}

/// GitOps tools re-applying the shipped WasmPlugin never reset the service's pluginConfig and
/// never conflict with it: `kubectl apply` (client-side, Argo CD's default), server-side apply
/// as Argo CD (`ServerSideApply=true`, no force) and as Flux (always forced). A manifest that
/// still carries pluginConfig is refused by server-side apply with a conflict naming meshcanary
/// (the documented sign to remove it) instead of silently resetting a rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitops_appliers_never_reset_or_conflict_with_the_service() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let service = cluster.serve_leader("a", "reapply").await;
    let steps = json!([{"setWeight": {"percent": 25}}, {"pause": {}}]);
    service.create_rollout(steps).await;
    wait_rollout(&service, "reviews-v2", "paused", 1).await;
    let live = wait_in_sync(&cluster, &service).await;
    assert_eq!(canary_weight(&live), 2500);

    let overlay = cluster
        .installed
        .checkout
        .path()
        .join("apps")
        .display()
        .to_string();
    let apps = cluster.apps().to_string();
    let appliers: [(&str, Vec<&str>); 4] = [
        (
            "kubectl apply (client-side), again",
            vec!["apply", "-n", &apps, "-k", &overlay],
        ),
        (
            "kubectl apply (client-side), once more",
            vec!["apply", "-n", &apps, "-k", &overlay],
        ),
        (
            "Argo CD with ServerSideApply=true",
            vec![
                "apply",
                "--server-side",
                "--field-manager=argocd-controller",
                "-n",
                &apps,
                "-k",
                &overlay,
            ],
        ),
        (
            "Flux kustomize-controller (forced)",
            vec![
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=kustomize-controller",
                "-n",
                &apps,
                "-k",
                &overlay,
            ],
        ),
    ];
    for (who, args) in appliers {
        let output = cluster
            .installed
            .envtest
            .kubectl()
            .args(&args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{who}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            cluster.plugin_config().await,
            live,
            "{who} changed pluginConfig"
        );
    }
    // The service goes on writing, without conflicts, and sees no drift.
    let moved = service
        .write(
            Method::PUT,
            "/v1/rollouts/reviews-v2/weight",
            Some(json!({"percent": 40})),
        )
        .await;
    assert_eq!(moved["status"]["canaryWeight"], 4000);
    let live = wait_in_sync(&cluster, &service).await;
    assert_eq!(canary_weight(&live), 4000);
    assert_eq!(service.routes().await.get("pushError"), None);
    let history = service.rollout("reviews-v2").await["status"]["history"].to_string();
    assert!(!history.contains("outside meshcanary"), "{history}");

    // A Git manifest that still carries pluginConfig (an older meshcanary manifest): server-side
    // apply without force is refused, naming the field and its owner.
    let mut with_config = cluster.plugin().await;
    for pointer in [
        "/metadata/managedFields",
        "/metadata/resourceVersion",
        "/metadata/uid",
        "/metadata/creationTimestamp",
        "/metadata/generation",
        "/status",
    ] {
        with_config = without(&with_config, &[pointer]);
    }
    with_config["spec"]["pluginConfig"] = shipped_seed(&cluster);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), with_config.to_string()).unwrap();
    let output = cluster
        .installed
        .envtest
        .kubectl()
        .args([
            "apply",
            "--server-side",
            "--field-manager=argocd-controller",
            "-f",
            &file.path().display().to_string(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "an apply of pluginConfig must conflict"
    );
    assert!(
        stderr.contains("with \"meshcanary\"") && stderr.contains(".spec.pluginConfig"),
        "{stderr}"
    );
    assert_eq!(
        canary_weight(&cluster.plugin_config().await),
        4000,
        "nothing reset"
    );
}

/// The upgrade path the walkthrough documents for WasmPlugins applied from older manifests that
/// carried `pluginConfig`: client-side, `kubectl apply set-last-applied` with the new file first;
/// server-side, nothing (the service co-owns every field it adopted, so the applier letting go of
/// `pluginConfig` removes nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrading_from_a_manifest_with_plugin_config_keeps_the_live_config() {
    for server_side in [false, true] {
        let Some(cluster) = Cluster::start().await else {
            return;
        };
        let envtest = cluster.installed.envtest;
        // The WasmPlugin as the old manifest had it (pluginConfig in Git), and as the new one has it.
        let mut new = cluster.installed_plugin.clone();
        for pointer in [
            "/metadata/managedFields",
            "/metadata/resourceVersion",
            "/metadata/uid",
            "/metadata/creationTimestamp",
            "/metadata/generation",
            "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration",
        ] {
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            if let Some(Value::Object(map)) = new.pointer_mut(parent) {
                map.remove(&key.replace("~1", "/"));
            }
        }
        let mut old = new.clone();
        old["spec"]["pluginConfig"] = shipped_seed(&cluster);
        let dir = tempfile::tempdir().unwrap();
        let (old_file, new_file) = (dir.path().join("old.json"), dir.path().join("new.json"));
        std::fs::write(&old_file, old.to_string()).unwrap();
        std::fs::write(&new_file, new.to_string()).unwrap();
        let (old_file, new_file) = (
            old_file.display().to_string(),
            new_file.display().to_string(),
        );
        cluster
            .plugins()
            .delete(WASMPLUGIN, &DeleteParams::default())
            .await
            .unwrap();
        let apply = |file: &str| -> Vec<String> {
            let mut args: Vec<String> = vec!["apply".into()];
            if server_side {
                args.extend([
                    "--server-side".into(),
                    "--field-manager=argocd-controller".into(),
                ]);
            }
            args.extend(["-f".into(), file.to_string()]);
            args
        };
        let run = |args: &[String]| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            envtest.kubectl_ok(&args)
        };
        run(&apply(&old_file));

        // The service adopts what the old manifest installed and moves it on.
        let service = cluster.serve_leader("a", "reapply").await;
        let steps = json!([{"setWeight": {"percent": 25}}, {"pause": {}}]);
        service.create_rollout(steps).await;
        let live = wait_in_sync(&cluster, &service).await;
        assert_eq!(canary_weight(&live), 2500);

        // The upgrade, as documented.
        if !server_side {
            run(&[
                "apply".into(),
                "set-last-applied".into(),
                "-f".into(),
                new_file.clone(),
            ]);
        }
        run(&apply(&new_file));
        assert_eq!(
            cluster.plugin_config().await,
            live,
            "server-side: {server_side}"
        );
        // And the next re-apply of the new file keeps it too.
        run(&apply(&new_file));
        assert_eq!(
            cluster.plugin_config().await,
            live,
            "server-side: {server_side}"
        );
    }
}
