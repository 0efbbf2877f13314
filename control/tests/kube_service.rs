//! The whole service in Kubernetes mode: real `meshcanary serve` processes reach an in-test API
//! server (`support/fake_apiserver.rs`) through a generated kubeconfig, keep their state in its
//! ConfigMap, elect a leader on its Lease and push weights into its WasmPlugin, while the test
//! acts as the other clients of a cluster (a person with `kubectl edit`, a second replica).
//!
//! No Envoy runs: without `--envoy-admin` there are no proxies to wait for, so a weight counts as
//! applied once it is written. Every process is killed when its guard drops, pass or fail.
//!
//! "No step applied twice" is checked on what the proxies would have seen: a watch replays every
//! version of the WasmPlugin, and the canary weight in them must only ever go up. Where a race
//! needs a late answer to show, `support/delay_proxy.rs` sits between one replica and the fake.

#[path = "support/delay_proxy.rs"]
mod delay_proxy;
#[path = "support/fake_apiserver.rs"]
mod fake_apiserver;

use axum::http::Method;
use delay_proxy::DelayProxy;
use fake_apiserver::{FakeApiServer, Kind};
use futures::StreamExt;
use kube::api::{Api, DynamicObject, WatchEvent, WatchParams};
use meshcanary_control::kube::wasmplugin::wasmplugin_resource;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_meshcanary");
const TOKEN: &str = "kube-service-test-token-0123456789";
/// Where the WasmPlugin lives.
const NS: &str = "default";
const PLUGIN: &str = "reviews-canary";
/// The service's own namespace: its state ConfigMap and its Lease.
const SYSTEM_NS: &str = "meshcanary-system";
const STATE: &str = "meshcanary-state";
const LEASE: &str = "meshcanary-control";
const LEASE_DURATION: Duration = Duration::from_secs(3);

/// The filter config the service starts from (`--routes`), and the WasmPlugin's pluginConfig as
/// installed: the same, with one QA rule.
fn initial_config() -> Value {
    json!({
        "generation": 1,
        "routes": [{
            "name": "reviews",
            "hosts": ["reviews"],
            "variants": [{"name": "v1", "weight": 10000}, {"name": "v2", "weight": 0}],
            "rules": [{"variant": "v2", "header": "x-canary", "exact": "always"}],
        }],
    })
}

fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {server}
users:
- name: tester
  user:
    token: not-a-real-token
contexts:
- name: fake
  context:
    cluster: fake
    user: tester
    namespace: {NS}
current-context: fake
"
    )
}

/// Who holds the service's Lease (`None` when nobody does or it does not exist yet).
fn lease_holder(fake: &FakeApiServer) -> Option<String> {
    let lease = fake.get(Kind::Lease, SYSTEM_NS, LEASE)?;
    lease
        .pointer("/spec/holderIdentity")
        .and_then(Value::as_str)
        .filter(|holder| !holder.is_empty())
        .map(str::to_string)
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The fake API server with the WasmPlugin installed, and the files a service needs.
struct Cluster {
    fake: Arc<FakeApiServer>,
    dir: tempfile::TempDir,
    /// The WasmPlugin as installed.
    installed: Value,
    started: AtomicUsize,
}

impl Cluster {
    async fn start() -> Cluster {
        let fake = FakeApiServer::start().await;
        let installed = fake.create(
            Kind::WasmPlugin,
            NS,
            json!({
                "apiVersion": "extensions.istio.io/v1alpha1",
                "kind": "WasmPlugin",
                "metadata": {"name": PLUGIN, "labels": {"app": "reviews"}},
                "spec": {
                    "url": "http://meshcanary.meshcanary-system/v1/filter/meshcanary.wasm",
                    "sha256": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
                    "selector": {"matchLabels": {"app": "productpage"}},
                    "match": [{"mode": "CLIENT"}],
                    "phase": "STATS",
                    "priority": 10,
                    "failStrategy": "FAIL_OPEN",
                    "pluginConfig": initial_config(),
                },
            }),
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("routes.json"), initial_config().to_string()).unwrap();
        Cluster {
            fake: Arc::new(fake),
            dir,
            installed,
            started: AtomicUsize::new(0),
        }
    }

    /// The WasmPlugin as stored now.
    fn plugin(&self) -> Value {
        self.fake.get(Kind::WasmPlugin, NS, PLUGIN).unwrap()
    }

    fn plugin_config(&self) -> Value {
        self.plugin()["spec"]["pluginConfig"].clone()
    }

    /// Who holds the Lease (`None` when nobody does or it does not exist yet).
    fn lease_holder(&self) -> Option<String> {
        lease_holder(&self.fake)
    }

    /// Starts `meshcanary serve` in Kubernetes mode as `identity` and waits until it answers.
    async fn serve(&self, identity: &str, on_drift: &str) -> Service {
        self.serve_via(identity, on_drift, &self.fake.url).await
    }

    /// [`Cluster::serve`] with the API server at `server` (a proxy in front of the fake).
    async fn serve_via(&self, identity: &str, on_drift: &str, server: &str) -> Service {
        let n = self.started.fetch_add(1, Ordering::SeqCst);
        let port = free_port();
        let log = self.dir.path().join(format!("{identity}-{n}.log"));
        let kubeconfig_path = self.dir.path().join(format!("kubeconfig-{n}"));
        std::fs::write(&kubeconfig_path, kubeconfig(server)).unwrap();
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            // Nothing from the machine: no proxy, no in-cluster config, no other settings.
            .env_clear()
            .env("KUBECONFIG", &kubeconfig_path)
            .env("MESHCANARY_TOKEN", TOKEN)
            .env("RUST_LOG", "info")
            .current_dir(self.dir.path())
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--routes")
            .arg(self.dir.path().join("routes.json"))
            .arg("--wasm")
            .arg(self.dir.path().join("no-such-module.wasm"))
            .args(["--wasmplugin", PLUGIN, "--kube-namespace", NS])
            .args(["--state-configmap", STATE])
            .args(["--state-configmap-namespace", SYSTEM_NS])
            .args(["--leader-lease", LEASE, "--lease-duration", "3s"])
            .args(["--identity", identity, "--on-drift", on_drift])
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let mut service = Service {
            child,
            identity: identity.to_string(),
            url: format!("http://127.0.0.1:{port}"),
            log,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        };
        service.wait_healthy().await;
        service
    }

    /// Waits until `service` holds the Lease and takes writes.
    async fn wait_leader(&self, service: &Service) {
        eventually(
            &format!("{} leads", service.identity),
            Duration::from_secs(5),
            async || match self.lease_holder() {
                Some(holder) if holder == service.identity => Ok(()),
                other => Err(format!("lease holder {other:?}")),
            },
        )
        .await;
    }

    /// Every pluginConfig the WasmPlugin had since it was installed, in order, replayed by a
    /// watch from the installed resourceVersion: what istiod would have sent to the proxies.
    async fn plugin_config_history(&self) -> Vec<Value> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.fake.client(), NS, &wasmplugin_resource());
        let since = self.installed["metadata"]["resourceVersion"]
            .as_str()
            .unwrap();
        let params = WatchParams::default()
            .fields(&format!("metadata.name={PLUGIN}"))
            .timeout(5);
        let mut events = api.watch(&params, since).await.unwrap().boxed();
        let mut configs = vec![self.installed["spec"]["pluginConfig"].clone()];
        // The replay comes at once; the live tail is of no interest.
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(500), events.next()).await
        {
            if let WatchEvent::Modified(object) = event.unwrap() {
                let config = object.data["spec"]["pluginConfig"].clone();
                if configs.last() != Some(&config) {
                    configs.push(config);
                }
            }
        }
        configs
    }
}

/// A running `meshcanary serve`; dropping it kills the process (and shows its log if the test
/// failed).
struct Service {
    child: Child,
    identity: String,
    url: String,
    log: PathBuf,
    http: reqwest::Client,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- log of {} ({}) -----\n{}",
                self.identity,
                self.log.display(),
                self.log()
            );
        }
    }
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
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited with {status}:\n{}", self.identity, self.log());
            }
            let healthy = self
                .http
                .get(format!("{}/healthz", self.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if healthy {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{} did not become healthy:\n{}", self.identity, self.log());
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", self.identity));
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

    /// A write that must succeed: retried only while this replica does not know yet that it
    /// leads (503 `not_leader` right after winning the Lease).
    async fn write(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let answer = self.call(method.clone(), path, body.clone()).await;
            if (200..300).contains(&answer.status) {
                return answer.body;
            }
            if answer.code() != "not_leader" || Instant::now() > deadline {
                panic!(
                    "{method} {path} on {}: {} {}",
                    self.identity, answer.status, answer.body
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn rollout(&self, name: &str) -> Value {
        let answer = self.get(&format!("/v1/rollouts/{name}")).await;
        assert_eq!(answer.status, 200, "{}: {answer:?}", self.identity);
        answer.body
    }

    /// `GET /v1/routes`: `{config, propagation, drift?, pushError?}`.
    async fn routes(&self) -> Value {
        let answer = self.get("/v1/routes").await;
        assert_eq!(answer.status, 200, "{}: {answer:?}", self.identity);
        answer.body
    }

    /// SIGTERM, as Kubernetes stops a pod; waits for the process to exit.
    async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        self.wait_exit(Duration::from_secs(10)).await
    }

    /// SIGKILL: the process dies without a word to anyone (a node lost, an OOM kill).
    async fn kill(&mut self) -> ExitStatus {
        self.child.kill().unwrap();
        self.wait_exit(Duration::from_secs(5)).await
    }

    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {limit:?}",
                self.identity
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Polls `probe` until it answers `Ok`, for at most `limit`; panics with the last `Err`.
async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if Instant::now() > deadline => {
                panic!("{what}: not within {limit:?}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
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

/// What the service may change in its WasmPlugin; everything else belongs to whoever installed it.
const OURS: [&str; 3] = [
    "/spec/pluginConfig",
    "/metadata/resourceVersion",
    "/metadata/generation",
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
        &format!(
            "rollout {name} {want} at step {step} on {}",
            service.identity
        ),
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
            let live = cluster.plugin_config();
            match live == routes["config"] {
                true => Ok(live),
                false => Err(format!("service {} / live {live}", routes["config"])),
            }
        },
    )
    .await
}

fn rollout_spec(name: &str, steps: Value) -> Value {
    json!({"name": name, "route": "reviews", "stable": "v1", "canary": "v2", "steps": steps})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_writes_exactly_the_plugin_config_and_nothing_else() {
    let started = Instant::now();
    let cluster = Cluster::start().await;
    let service = cluster.serve("a", "reapply").await;
    cluster.wait_leader(&service).await;

    let steps = json!([{"setWeight": {"percent": 10}}, {"pause": {}}]);
    service
        .write(
            Method::POST,
            "/v1/rollouts",
            Some(rollout_spec("reviews-v2", steps)),
        )
        .await;
    let rollout = wait_rollout(&service, "reviews-v2", "paused", 1).await;
    assert_eq!(rollout["status"]["canaryWeight"], 1000);

    let live = wait_in_sync(&cluster, &service).await;
    assert_eq!(canary_weight(&live), 1000, "{live}");
    assert_eq!(live["routes"][0]["variants"][0]["weight"], 9000, "{live}");
    assert_eq!(
        live["routes"][0]["rules"],
        initial_config()["routes"][0]["rules"],
        "the QA rule is still there"
    );
    assert!(live["generation"].as_u64().unwrap() > 1, "{live}");
    let plugin = cluster.plugin();
    assert_eq!(without(&plugin, &OURS), without(&cluster.installed, &OURS));
    assert!(plugin["metadata"]["generation"].as_i64().unwrap() > 1);

    // Removing the QA rule through the API removes it from the WasmPlugin too.
    let removed = service
        .write(Method::DELETE, "/v1/routes/reviews/rules/0", None)
        .await;
    assert_eq!(
        removed,
        json!({"variant": "v2", "header": "x-canary", "exact": "always"})
    );
    let after = wait_in_sync(&cluster, &service).await;
    assert!(
        after["routes"][0]["rules"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{after}"
    );
    assert_eq!(canary_weight(&after), 1000, "the weight stays");
    assert!(after["generation"].as_u64() > live["generation"].as_u64());
    assert_eq!(
        without(&cluster.plugin(), &OURS),
        without(&cluster.installed, &OURS)
    );

    // Only merge patches, under meshcanary's field manager: never a PUT or a re-create.
    let writes: Vec<_> = cluster
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("wasmplugins") && r.method != "GET")
        .collect();
    assert!(!writes.is_empty());
    for write in &writes {
        assert_eq!(write.method, "PATCH", "{writes:?}");
        assert!(
            write.query.contains("fieldManager=meshcanary"),
            "{writes:?}"
        );
    }
    // Each config reached the WasmPlugin once, in order: installed, 10 %, rule removed.
    let history = cluster.plugin_config_history().await;
    let weights: Vec<u64> = history.iter().map(canary_weight).collect();
    assert_eq!(weights, [0, 1000, 1000], "{history:#?}");
    assert_eq!(history.last(), Some(&after));
    eprintln!("plugin config test: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_foreign_edit_is_not_lost() {
    let started = Instant::now();
    let cluster = Cluster::start().await;
    let service = cluster.serve("a", "reapply").await;
    cluster.wait_leader(&service).await;
    let steps = json!([{"setWeight": {"percent": 5}}, {"pause": {}}]);
    service
        .write(
            Method::POST,
            "/v1/rollouts",
            Some(rollout_spec("reviews-v2", steps)),
        )
        .await;
    wait_rollout(&service, "reviews-v2", "paused", 1).await;
    wait_in_sync(&cluster, &service).await;

    // Someone raises the priority: between the service's read and its patch for the next two
    // pushes (so those patches are stale and must be re-done), and all along in a loop.
    let edits = Arc::new(AtomicUsize::new(0));
    let raise = |plugin: &mut Value| {
        let priority = plugin["spec"]["priority"].as_i64().unwrap();
        plugin["spec"]["priority"] = json!(priority + 1);
    };
    for _ in 0..2 {
        let edits = edits.clone();
        cluster
            .fake
            .before_next(Method::PATCH, Kind::WasmPlugin, move |cluster| {
                cluster.edit(Kind::WasmPlugin, NS, PLUGIN, raise);
                edits.fetch_add(1, Ordering::SeqCst);
            });
    }
    let done = std::sync::atomic::AtomicBool::new(false);
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
            cluster.fake.edit(Kind::WasmPlugin, NS, PLUGIN, raise);
            edits.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    };
    tokio::join!(set_weights, edit_loop);

    let live = wait_in_sync(&cluster, &service).await;
    assert_eq!(canary_weight(&live), 5000, "the last weight: {live}");
    let plugin = cluster.plugin();
    let edits = edits.load(Ordering::SeqCst);
    assert!(edits >= 2, "{edits}");
    assert_eq!(
        plugin["spec"]["priority"],
        10 + edits as i64,
        "every one of the {edits} priority edits survived"
    );
    let stale = |p: &Value| without(p, &[&OURS[..], &["/spec/priority"]].concat());
    assert_eq!(stale(&plugin), stale(&cluster.installed));
    let patches: Vec<u16> = cluster
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("wasmplugins") && r.method == "PATCH")
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
    assert_eq!(routes["config"], cluster.plugin_config());
    eprintln!(
        "foreign edit test: {:?}, {edits} edits, patches {patches:?}",
        started.elapsed()
    );
}

/// Sets the canary's weight in the live WasmPlugin by hand (`kubectl edit`).
fn edit_weight_by_hand(cluster: &Cluster, canary: u64) {
    cluster.fake.edit(Kind::WasmPlugin, NS, PLUGIN, |plugin| {
        let variants = &mut plugin["spec"]["pluginConfig"]["routes"][0]["variants"];
        variants[0]["weight"] = json!(10000 - canary);
        variants[1]["weight"] = json!(canary);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_re_applied_and_recorded() {
    let started = Instant::now();
    let cluster = Cluster::start().await;
    let service = cluster.serve("a", "reapply").await;
    cluster.wait_leader(&service).await;
    let steps = json!([{"setWeight": {"percent": 20}}, {"pause": {}}]);
    service
        .write(
            Method::POST,
            "/v1/rollouts",
            Some(rollout_spec("reviews-v2", steps)),
        )
        .await;
    wait_rollout(&service, "reviews-v2", "paused", 1).await;
    let pushed = wait_in_sync(&cluster, &service).await;

    edit_weight_by_hand(&cluster, 5000);
    let edited = Instant::now();
    let mut drift_seen = None;
    let note = eventually(
        "the drift is re-applied and recorded",
        Duration::from_secs(8),
        async || {
            let routes = service.routes().await;
            if let Some(drift) = routes.get("drift") {
                drift_seen.get_or_insert(drift.clone());
            }
            let rollout = service.rollout("reviews-v2").await;
            let note = rollout["status"]["history"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["message"].as_str())
                .find(|m| m.contains("changed outside meshcanary"))
                .map(str::to_string);
            match (note, cluster.plugin_config() == pushed) {
                (Some(note), true) => Ok(note),
                (note, _) => Err(format!("note {note:?}, live {}", cluster.plugin_config())),
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
    // The re-applied config is the service's, unchanged: same generation, 20 %.
    assert_eq!(service.routes().await["config"], pushed);
    assert_eq!(canary_weight(&cluster.plugin_config()), 2000);
    let rollout = service.rollout("reviews-v2").await;
    assert_eq!(phase(&rollout), "paused", "re-applying does not pause");
    // Once the config is back, the drift is over.
    eventually(
        "the drift clears",
        Duration::from_secs(3),
        async || match service.routes().await.get("drift") {
            None => Ok(()),
            Some(drift) => Err(drift.to_string()),
        },
    )
    .await;
    eprintln!(
        "drift re-apply test: {:?}; re-applied {reapplied_after:?} after the edit; \
         GET /v1/routes showed the drift meanwhile: {drift_seen:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_pauses_the_running_rollout() {
    let started = Instant::now();
    let cluster = Cluster::start().await;
    let service = cluster.serve("a", "pause").await;
    cluster.wait_leader(&service).await;
    let steps = json!([
        {"setWeight": {"percent": 20}},
        {"pause": {"duration": "60s"}},
        {"setWeight": {"percent": 50}},
    ]);
    service
        .write(
            Method::POST,
            "/v1/rollouts",
            Some(rollout_spec("reviews-v2", steps)),
        )
        .await;
    wait_rollout(&service, "reviews-v2", "progressing", 1).await;
    wait_in_sync(&cluster, &service).await;

    edit_weight_by_hand(&cluster, 5000);
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
    assert_eq!(canary_weight(&cluster.plugin_config()), 5000);
    assert_eq!(canary_weight(&service.routes().await["config"]), 2000);

    // Deciding: the next weight the service sets replaces the edit, and the drift is over.
    service
        .write(
            Method::PUT,
            "/v1/rollouts/reviews-v2/weight",
            Some(json!({"percent": 30})),
        )
        .await;
    let live = wait_in_sync(&cluster, &service).await;
    assert_eq!(canary_weight(&live), 3000);
    eventually(
        "the drift clears",
        Duration::from_secs(3),
        async || match service.routes().await.get("drift") {
            None => Ok(()),
            Some(drift) => Err(drift.to_string()),
        },
    )
    .await;
    eprintln!(
        "drift pause test: {:?}; detected {detected_after:?} after the edit",
        started.elapsed()
    );
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
        let holder = cluster.lease_holder().ok_or("no lease holder")?;
        let index = services
            .iter()
            .position(|s| s.identity == holder)
            .ok_or_else(|| format!("unknown holder {holder}"))?;
        let other = services[1 - index];
        let answer = other
            .call(Method::POST, "/v1/rollouts/nothing/pause", None)
            .await;
        match (answer.status, answer.code()) {
            (503, "not_leader") if names_leader(&answer, &holder) => Ok(index),
            _ => Err(format!("{} answered {answer:?}", other.identity)),
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
                    service.identity,
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
            service.identity
        );
        if answer.code() != "not_leader" {
            failed.push((since.elapsed(), answer));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_one_leader_and_hand_over() {
    let started = Instant::now();
    let cluster = Cluster::start().await;
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
    assert_refuses_writes(follower, &leader.identity).await;
    let seen = eventually(
        "the follower shows the leader's rollout",
        Duration::from_secs(4),
        async || {
            let answer = follower.get("/v1/rollouts/reviews-v2").await;
            match answer.body["version"] == created["version"] {
                true => Ok(answer.body),
                false => Err(format!("{answer:?}")),
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
    assert_eq!(listed.body.as_array().map(Vec::len), Some(1), "{listed:?}");
    assert_refuses_writes(follower, &leader.identity).await;

    // The leader moves on (20 %, then the pause at step index 3) and is stopped right away, as
    // in a rolling update: the follower has not reloaded since.
    let moved = leader
        .write(Method::POST, "/v1/rollouts/reviews-v2/resume", None)
        .await;
    assert_eq!(moved["status"]["step"], 3, "{moved}");
    let terminated_at = Instant::now();
    let status = services[first].terminate().await;
    assert!(status.success(), "graceful stop: {status}");
    let (stopped, successor) = (first, 1 - first);
    let successor_id = services[successor].identity.clone();

    // The successor takes over quickly and continues from where the old leader left it.
    let lease_moved = eventually(
        "the successor holds the Lease",
        Duration::from_secs(2),
        async || match cluster.lease_holder() {
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
    // Resumed from step index 3 (the old leader's last state), not from 1: now at index 5,
    // holding 30 % for a second.
    if resumed["status"]["step"] != 5 || resumed["status"]["canaryWeight"] != 3000 {
        problems.push(format!(
            "the resume the new leader took did not continue from the old leader's last state \
             (step index 3, 2000 bp) to step index 5, 3000 bp: {}",
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
    services[stopped] = cluster
        .serve(&services[stopped].identity.clone(), "reapply")
        .await;
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
    services[successor].kill().await;
    let takeover = eventually(
        "the restarted replica takes over",
        LEASE_DURATION + Duration::from_secs(3),
        async || match cluster.lease_holder() {
            Some(holder) if holder == services[stopped].identity => Ok(killed_at.elapsed()),
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
    let started = Instant::now();
    let cluster = Cluster::start().await;
    let mut a = cluster.serve("a", "reapply").await;
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

    // b reaches the API server through a proxy that, once b holds the Lease, delivers b's reads
    // of the state ConfigMap 700 ms late: the reload b does when it takes over is still under
    // way when the first write reaches it.
    let fake = cluster.fake.clone();
    let state_path = format!("/api/v1/namespaces/{SYSTEM_NS}/configmaps/{STATE}");
    let proxy = DelayProxy::start(&cluster.fake.url, move |method, path| {
        let reload = method == Method::GET && path == state_path;
        (reload && lease_holder(&fake).as_deref() == Some("b"))
            .then_some(Duration::from_millis(700))
    })
    .await;
    let b = cluster.serve_via("b", "reapply", &proxy.url).await;
    eventually(
        "b follows with the rollout loaded",
        Duration::from_secs(4),
        async || {
            let answer = b.get("/v1/rollouts/reviews-v2").await;
            match answer.body["version"] == created["version"] {
                true => Ok(()),
                false => Err(format!("{answer:?}")),
            }
        },
    )
    .await;
    assert!(a.terminate().await.success());
    let held = tokio::time::timeout(Duration::from_secs(4), proxy.next_held())
        .await
        .expect("b reloads the state when it takes over");
    let resumed = b
        .write(Method::POST, "/v1/rollouts/reviews-v2/resume", None)
        .await;
    // The held reload has been delivered and acted on.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // What the resume must have done, and must still be visible: step 4/5 (index 3), 30 %.
    let resumed_ok = |rollout: &Value| {
        rollout["status"]["step"] == 3 && rollout["status"]["canaryWeight"] == 3000
    };
    let mut problems = Vec::new();
    if !resumed_ok(&resumed) {
        problems.push(format!(
            "the resume was answered 200 with the rollout as it was before it: {}",
            describe(&resumed)
        ));
    }
    let now = b.rollout("reviews-v2").await;
    if !resumed_ok(&now) {
        problems.push(format!(
            "1.2 s after the resume, b shows the rollout without it: {}",
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
    let saved = cluster.fake.get(Kind::ConfigMap, SYSTEM_NS, STATE).unwrap();
    let saved: Value = serde_json::from_str(saved["data"]["state.json"].as_str().unwrap()).unwrap();
    let saved = &saved["rollouts"]["reviews-v2"];
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
    eprintln!("takeover reload test: {:?}; held {held}", started.elapsed());
    assert!(problems.is_empty(), "{problems:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_report_the_leaders_config_without_false_drift() {
    let started = Instant::now();
    let cluster = Cluster::start().await;
    let (a, b) = tokio::join!(cluster.serve("a", "reapply"), cluster.serve("b", "reapply"));
    let services = [a, b];
    let first = the_one_leader(&cluster, [&services[0], &services[1]]).await;
    let (leader, follower) = (&services[first], &services[1 - first]);
    let steps = json!([{"setWeight": {"percent": 10}}, {"pause": {}}]);
    leader
        .write(
            Method::POST,
            "/v1/rollouts",
            Some(rollout_spec("reviews-v2", steps)),
        )
        .await;
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
    eprintln!("follower drift test: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_resumes_from_the_cluster() {
    let started = Instant::now();
    let cluster = Cluster::start().await;
    let mut first = cluster.serve("a", "reapply").await;
    cluster.wait_leader(&first).await;
    let steps = json!([
        {"setWeight": {"percent": 10}},
        {"pause": {}},
        {"setWeight": {"percent": 30}},
    ]);
    first
        .write(
            Method::POST,
            "/v1/rollouts",
            Some(rollout_spec("reviews-v2", steps)),
        )
        .await;
    let before = wait_rollout(&first, "reviews-v2", "paused", 1).await;
    let status = first.terminate().await;
    assert!(status.success(), "graceful stop: {status}");
    assert_eq!(cluster.lease_holder(), None, "the Lease was released");
    let saved = cluster.fake.get(Kind::ConfigMap, SYSTEM_NS, STATE).unwrap();
    assert!(
        saved["data"]["state.json"]
            .as_str()
            .unwrap()
            .contains("reviews-v2"),
        "{saved}"
    );

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
    assert_eq!(second.routes().await["config"], cluster.plugin_config());

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
    eprintln!("restart test: {:?}", started.elapsed());

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
