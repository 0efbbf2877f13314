//! MeshRollouts reconciled by the whole service in Kubernetes mode, against a real
//! kube-apiserver: `meshcanary serve` runs with the shipped Deployment's arguments as the shipped
//! ServiceAccount (exactly its RBAC), in namespaces of the test's own; the test applies
//! MeshRollouts as a GitOps tool would (server-side apply under the field manager `argocd`) and
//! reads what the service made of them: the status, the Events, the WasmPlugin's pluginConfig.
//!
//! No proxies run here (no `--prometheus-url`), so a weight counts as applied once written.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use meshcanary_testkit::install::WASMPLUGIN;
use meshcanary_testkit::service::ServiceProcess;
use meshcanary_testkit::wait::eventually;
use serde_json::{json, Value};
use std::time::Duration;

#[path = "support/cluster.rs"]
mod cluster;

use cluster::Cluster;

/// The GitOps tool's field manager.
const GITOPS: &str = "argocd";

impl Cluster {
    /// Starts `meshcanary serve` as pod `a`, managing this test's namespace, and waits until it
    /// answers (a single replica leads at once).
    async fn serve(&self) -> ServiceProcess {
        let mut command = self.installed.pod_command("a");
        command
            .set_flag("--kube-namespace", self.apps())
            .remove_flag("--prometheus-url");
        let process = self.installed.run_pod_via(
            std::path::Path::new(env!("CARGO_BIN_EXE_meshcanary")),
            &command,
            "a",
            None,
        );
        process.wait_ready(Duration::from_secs(20)).await.unwrap();
        process
    }

    /// Starts pod `name` as one of two replicas (a 3 s Lease, so a killed leader is replaced
    /// quickly), without waiting for it to lead.
    async fn serve_replica(&self, name: &str) -> ServiceProcess {
        let mut command = self.installed.pod_command(name);
        command
            .set_flag("--kube-namespace", self.apps())
            .remove_flag("--prometheus-url")
            .add_flag("--lease-duration", "3s");
        let process = self.installed.run_pod_via(
            std::path::Path::new(env!("CARGO_BIN_EXE_meshcanary")),
            &command,
            name,
            None,
        );
        process.wait_ready(Duration::from_secs(20)).await.unwrap();
        process
    }

    /// Who holds the service's Lease, once someone does.
    async fn lease_holder(&self) -> String {
        let leases: Api<Lease> = Api::namespaced(self.admin.clone(), self.system());
        eventually("a leader", Duration::from_secs(10), async || {
            leases
                .get_opt("meshcanary-control")
                .await
                .unwrap()
                .and_then(|l| l.spec?.holder_identity)
                .filter(|h| !h.is_empty())
                .ok_or_else(|| "nobody holds the Lease".to_string())
        })
        .await
    }

    /// The state the service saved in its ConfigMap, as JSON.
    async fn saved_state(&self) -> Value {
        let saved = self.configmaps().get("meshcanary-state").await.unwrap();
        serde_json::from_str(&saved.data.unwrap()["state.json"]).unwrap()
    }

    /// The notes of `reason` Events about MeshRollout `name`.
    async fn event_notes(&self, name: &str, reason: &str) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.admin.clone(), self.system());
        events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter_map(|e| e.note)
            .collect()
    }

    /// Server-side applies MeshRollout `name` with `spec` (merged over a v1 → v2 rollout of route
    /// `reviews` on the test's WasmPlugin) as the GitOps tool, never forcing: a conflict with
    /// the service's writes fails the test.
    async fn apply(&self, name: &str, spec: Value) {
        let mut full = json!({
            "target": {"wasmPlugin": WASMPLUGIN, "namespace": self.apps()},
            "route": "reviews", "stable": "v1", "canary": "v2",
        });
        for (key, value) in spec.as_object().unwrap() {
            full[key] = value.clone();
        }
        let body = json!({
            "apiVersion": "meshcanary.io/v1alpha1", "kind": "MeshRollout",
            "metadata": {"name": name}, "spec": full,
        });
        self.mesh_rollouts()
            .patch(name, &PatchParams::apply(GITOPS), &Patch::Apply(body))
            .await
            .unwrap_or_else(|e| panic!("apply MeshRollout {name} as {GITOPS}: {e}"));
    }

    /// The MeshRollout as stored, as JSON (`Null` once gone).
    async fn mesh_rollout(&self, name: &str) -> Value {
        match self.mesh_rollouts().get_opt(name).await.unwrap() {
            Some(object) => serde_json::to_value(object).unwrap(),
            None => Value::Null,
        }
    }

    /// Waits until `name`'s status says `phase`; returns the resource.
    async fn wait_phase(&self, name: &str, phase: &str) -> Value {
        eventually(
            &format!("MeshRollout {name} {phase}"),
            Duration::from_secs(15),
            async || {
                let object = self.mesh_rollout(name).await;
                if object["status"]["phase"] == phase {
                    Ok(object)
                } else {
                    Err(object["status"].to_string())
                }
            },
        )
        .await
    }

    /// The reasons of the Events about MeshRollout `name`, in the order they were first seen.
    async fn event_reasons(&self, name: &str) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.admin.clone(), self.system());
        let mut list: Vec<Event> = events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect();
        list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        list.into_iter().filter_map(|e| e.reason).collect()
    }

    /// Waits until Events with each of `reasons` exist about MeshRollout `name` (they are
    /// published after the status that causes them is written).
    async fn wait_events(&self, name: &str, reasons: &[&str]) {
        eventually(
            &format!("{name}'s Events {reasons:?}"),
            Duration::from_secs(10),
            async || {
                let seen = self.event_reasons(name).await;
                if reasons.iter().all(|r| seen.iter().any(|s| s == r)) {
                    Ok(())
                } else {
                    Err(format!("{seen:?}"))
                }
            },
        )
        .await;
    }

    /// Every v2 weight the WasmPlugin's pluginConfig had since it was installed, in order: what
    /// istiod would have sent to the proxies.
    async fn canary_weights(&self) -> Vec<u64> {
        let mut weights: Vec<u64> = self
            .plugin_config_history()
            .await
            .iter()
            .filter_map(v2_weight)
            .collect();
        weights.dedup();
        weights
    }
}

/// Variant v2's weight on route `reviews` (`None` without a config or a v2).
fn v2_weight(config: &Value) -> Option<u64> {
    config["routes"][0]["variants"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == "v2")?["weight"]
        .as_u64()
}

/// The condition of `type_` in a MeshRollout's status.
fn condition<'a>(object: &'a Value, type_: &str) -> &'a Value {
    object["status"]["conditions"]
        .as_array()
        .and_then(|conditions| conditions.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

/// The top-level fields `manager` owns in `object` (`f:spec`, `f:status`, `f:metadata`).
fn owners(object: &Value, manager: &str) -> Vec<String> {
    object["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["manager"] == manager)
        .flat_map(|entry| entry["fieldsV1"].as_object().unwrap().keys().cloned())
        .collect()
}

/// The walkthrough's example (`examples/istio-bookinfo/reviews-v2-rollout.yaml`), applied as
/// shipped but for its namespaces: the API server's schema and the service both take it, and it
/// starts — its first step's 10 % is on the WasmPlugin, and its analysis holds it there while no
/// proxy reports (none runs here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthroughs_example_rollout_starts() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let _service = cluster.serve().await;
    let path = meshcanary_testkit::workspace_root()
        .join("examples/istio-bookinfo/reviews-v2-rollout.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut object: Value = serde_saphyr::from_str(&text).unwrap();
    object["metadata"]["namespace"] = json!(cluster.system());
    object["spec"]["target"]["namespace"] = json!(cluster.apps());
    let name = object["metadata"]["name"].as_str().unwrap().to_string();
    cluster
        .mesh_rollouts()
        .patch(&name, &PatchParams::apply(GITOPS), &Patch::Apply(object))
        .await
        .unwrap_or_else(|e| panic!("apply {}: {e}", path.display()));
    let started = eventually("the example at 10 %", Duration::from_secs(15), async || {
        let object = cluster.mesh_rollout(&name).await;
        if object["status"]["canaryWeight"] == 1000 {
            Ok(object)
        } else {
            Err(object["status"].to_string())
        }
    })
    .await;
    assert_eq!(started["status"]["phase"], "progressing", "{started:#}");
    assert!(
        cluster.canary_weights().await.contains(&1000),
        "the WasmPlugin carried 10 %"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applied_mesh_rollout_runs_to_success_with_its_status_and_events() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let _service = cluster.serve().await;
    cluster
        .apply(
            "reviews-v2",
            json!({"steps": [{"setWeight": {"percent": 50}}, {"setWeight": {"percent": 100}}]}),
        )
        .await;
    let done = cluster.wait_phase("reviews-v2", "succeeded").await;
    let status = &done["status"];
    assert_eq!(status["observedGeneration"], 1, "{status}");
    assert_eq!(status["canaryWeight"], 10000, "{status}");
    assert_eq!(status["canaryPercent"], "100%", "{status}");
    assert_eq!(condition(&done, "Succeeded")["status"], "True", "{status}");
    assert_eq!(
        condition(&done, "Progressing")["status"],
        "False",
        "{status}"
    );
    assert_eq!(condition(&done, "Succeeded")["observedGeneration"], 1);
    assert_eq!(
        done["metadata"]["finalizers"],
        json!(["meshcanary.io/rollout"]),
        "the service's finalizer"
    );
    // The proxies were sent 50 %, then 100 %.
    let weights = cluster.canary_weights().await;
    assert_eq!(weights, [0, 5000, 10000], "{weights:?}");
    // GitOps owns the spec, the service the status and its finalizer; nobody conflicted.
    assert_eq!(owners(&done, GITOPS), ["f:spec"]);
    let ours = owners(&done, "meshcanary");
    assert!(
        ours.contains(&"f:status".to_string()) && ours.contains(&"f:metadata".to_string()),
        "{ours:?}"
    );
    let reasons = eventually(
        "the Events of the rollout",
        Duration::from_secs(5),
        async || {
            let reasons = cluster.event_reasons("reviews-v2").await;
            if reasons.contains(&"Succeeded".to_string()) {
                Ok(reasons)
            } else {
                Err(format!("{reasons:?}"))
            }
        },
    )
    .await;
    for reason in ["Progressing", "StepStarted", "Succeeded"] {
        assert!(
            reasons.contains(&reason.to_string()),
            "{reason} in {reasons:?}"
        );
    }
    // Applying the same spec again (GitOps' periodic sync) starts nothing new.
    cluster
        .apply(
            "reviews-v2",
            json!({"steps": [{"setWeight": {"percent": 50}}, {"setWeight": {"percent": 100}}]}),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = cluster.mesh_rollout("reviews-v2").await;
    assert_eq!(again["status"]["phase"], "succeeded");
    assert_eq!(
        again["status"]["run"]["status"]["createdAt"], done["status"]["run"]["status"]["createdAt"],
        "the same run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_paused_holds_the_rollout_and_clearing_it_continues() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let _service = cluster.serve().await;
    let steps = json!([{"setWeight": {"percent": 50}}, {"pause": {"duration": "3s"}}, {"setWeight": {"percent": 100}}]);
    cluster.apply("reviews-v2", json!({"steps": steps})).await;
    eventually("at the timed pause", Duration::from_secs(10), async || {
        let object = cluster.mesh_rollout("reviews-v2").await;
        match (&object["status"]["phase"], &object["status"]["step"]) {
            (phase, step) if phase == "progressing" && step == 1 => Ok(()),
            _ => Err(object["status"].to_string()),
        }
    })
    .await;
    // The GitOps tool pauses it in Git, while the service writes the status: no conflict.
    cluster
        .apply("reviews-v2", json!({"steps": steps, "paused": true}))
        .await;
    let paused = cluster.wait_phase("reviews-v2", "paused").await;
    assert_eq!(
        paused["status"]["observedGeneration"], 2,
        "{}",
        paused["status"]
    );
    assert_eq!(condition(&paused, "Paused")["reason"], "PauseRequested");
    // It holds past the end of the 3 s pause step.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let held = cluster.mesh_rollout("reviews-v2").await;
    assert_eq!(held["status"]["phase"], "paused", "{}", held["status"]);
    assert_eq!(held["status"]["canaryWeight"], 5000);
    cluster
        .apply("reviews-v2", json!({"steps": steps, "paused": false}))
        .await;
    let done = cluster.wait_phase("reviews-v2", "succeeded").await;
    assert_eq!(done["status"]["observedGeneration"], 3);
    cluster
        .wait_events("reviews-v2", &["Paused", "Resumed"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_running_mesh_rollout_aborts_it_and_releases_the_finalizer() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let _service = cluster.serve().await;
    let steps = json!([{"setWeight": {"percent": 50}}, {"pause": {"duration": "1h"}}]);
    cluster.apply("reviews-v2", json!({"steps": steps})).await;
    eventually(
        "50 % on the WasmPlugin",
        Duration::from_secs(10),
        async || {
            let config = cluster.plugin_config().await;
            match v2_weight(&config) {
                Some(5000) => Ok(()),
                _ => Err(config.to_string()),
            }
        },
    )
    .await;
    cluster
        .mesh_rollouts()
        .delete("reviews-v2", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the resource is gone",
        Duration::from_secs(10),
        async || match cluster.mesh_rollout("reviews-v2").await {
            Value::Null => Ok(()),
            object => Err(object["metadata"].to_string()),
        },
    )
    .await;
    let config = cluster.plugin_config().await;
    assert_eq!(
        v2_weight(&config),
        Some(0),
        "traffic back to stable: {config}"
    );
    cluster.wait_events("reviews-v2", &["Aborted"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_the_service_refuses_is_reported_naming_the_field() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let _service = cluster.serve().await;
    let steps = json!([{"setWeight": {"percent": 50}}]);
    // Accepted by the schema, but the filter config has no route "ratings".
    cluster
        .apply("ratings-v2", json!({"route": "ratings", "steps": steps}))
        .await;
    // And another WasmPlugin than the service's.
    cluster
        .apply(
            "elsewhere",
            json!({"target": {"wasmPlugin": "other-plugin"}, "steps": steps}),
        )
        .await;
    for (name, reason, field) in [
        ("ratings-v2", "Refused", "spec.route: "),
        ("elsewhere", "InvalidSpec", "spec.target.wasmPlugin: "),
    ] {
        let object = eventually(
            &format!("{name} refused"),
            Duration::from_secs(10),
            async || {
                let object = cluster.mesh_rollout(name).await;
                if condition(&object, "Progressing")["reason"] == reason {
                    Ok(object)
                } else {
                    Err(object["status"].to_string())
                }
            },
        )
        .await;
        let progressing = condition(&object, "Progressing");
        assert_eq!(progressing["status"], "False");
        let message = progressing["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{message}");
        assert_eq!(object["status"]["observedGeneration"], 1);
        cluster.wait_events(name, &[reason]).await;
    }
    // Fixed in Git: the next apply runs it (to the end: one step, no analysis).
    cluster.apply("ratings-v2", json!({"steps": steps})).await;
    let ran = cluster.wait_phase("ratings-v2", "succeeded").await;
    assert_eq!(ran["status"]["observedGeneration"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_canary_in_the_spec_aborts_the_running_run_and_starts_a_new_one() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let _service = cluster.serve().await;
    let steps = json!([{"setWeight": {"percent": 50}}, {"pause": {"duration": "1h"}}]);
    cluster.apply("reviews", json!({"steps": steps})).await;
    eventually("v2 at 50 %", Duration::from_secs(10), async || {
        let object = cluster.mesh_rollout("reviews").await;
        match (&object["status"]["step"], &object["status"]["canaryWeight"]) {
            (step, weight) if step == 1 && weight == 5000 => Ok(()),
            _ => Err(object["status"].to_string()),
        }
    })
    .await;
    let first = cluster.mesh_rollout("reviews").await;
    // A new release in Git: v3.
    cluster
        .apply("reviews", json!({"canary": "v3", "steps": steps}))
        .await;
    let second = eventually("v3's run at 50 %", Duration::from_secs(10), async || {
        let object = cluster.mesh_rollout("reviews").await;
        let status = &object["status"];
        if status["observedGeneration"] == 2
            && status["step"] == 1
            && status["canaryWeight"] == 5000
        {
            Ok(object)
        } else {
            Err(status.to_string())
        }
    })
    .await;
    assert_ne!(
        second["status"]["run"]["status"]["createdAt"],
        first["status"]["run"]["status"]["createdAt"],
        "a new run"
    );
    let config = cluster.plugin_config().await;
    let variants = &config["routes"][0]["variants"];
    let weight = |name: &str| {
        variants
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .map(|v| v["weight"].clone())
    };
    assert_eq!(
        weight("v2"),
        Some(json!(0)),
        "the old canary is back to 0: {config}"
    );
    assert_eq!(weight("v3"), Some(json!(5000)), "{config}");
    let history = second["status"]["history"].to_string();
    assert!(
        history.contains("replaces the previous run (v2 aborted at 50%)"),
        "{history}"
    );
    cluster.wait_events("reviews", &["Aborted"]).await;
}

/// Two replicas; the leader is killed (SIGKILL: no Lease hand-over, nothing flushed) in the
/// middle of a timed pause. The other one takes over from the resource's status — the
/// ConfigMap holds no copy of the rollout — and finishes it: every weight was sent once, in
/// order, and every step started once (one Event each, none from the new leader for steps the
/// old one had reported).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follower_continues_from_the_status_when_the_leader_dies_mid_step() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let (a, b) = tokio::join!(cluster.serve_replica("a"), cluster.serve_replica("b"));
    let leader = cluster.lease_holder().await;
    let (dead, survivor) = if leader == a.name { (&a, &b) } else { (&b, &a) };
    let steps = json!([
        {"setWeight": {"percent": 10}}, {"pause": {"duration": "1s"}},
        {"setWeight": {"percent": 20}}, {"pause": {"duration": "6s"}},
        {"setWeight": {"percent": 30}}, {"pause": {"duration": "1s"}},
        {"setWeight": {"percent": 40}},
    ]);
    cluster.apply("reviews-v2", json!({"steps": steps})).await;
    let mid = eventually("in the 6 s pause", Duration::from_secs(15), async || {
        let object = cluster.mesh_rollout("reviews-v2").await;
        if object["status"]["step"] == 3 && object["status"]["run"]["status"]["step"] == 3 {
            Ok(object)
        } else {
            Err(object["status"].to_string())
        }
    })
    .await;
    // The durable state is the resource's: the ConfigMap only says which run its filter
    // config reflects.
    let saved = cluster.saved_state().await;
    assert_eq!(saved["rollouts"].get("reviews-v2"), None, "{saved}");
    assert_eq!(
        saved["keptElsewhere"]["reviews-v2"]["createdAt"],
        mid["status"]["run"]["status"]["createdAt"],
        "{saved}"
    );
    cluster.wait_events("reviews-v2", &["StepStarted"]).await;
    dead.kill().unwrap();

    let done = eventually(
        "finished by the survivor",
        Duration::from_secs(30),
        async || {
            let object = cluster.mesh_rollout("reviews-v2").await;
            if object["status"]["phase"] == "succeeded" {
                Ok(object)
            } else {
                Err(object["status"].to_string())
            }
        },
    )
    .await;
    assert_eq!(cluster.lease_holder().await, survivor.name);
    assert_eq!(
        done["status"]["run"]["status"]["createdAt"], mid["status"]["run"]["status"]["createdAt"],
        "the same run, continued"
    );
    // The record's own history: each step entered once.
    let entered: Vec<u64> = done["status"]["run"]["status"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("step "))
        })
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    let mut once = entered.clone();
    once.dedup();
    assert_eq!(
        entered, once,
        "{}",
        done["status"]["run"]["status"]["history"]
    );
    // What the proxies were sent: each weight once, in order.
    let weights = cluster.canary_weights().await;
    assert_eq!(weights, [0, 1000, 2000, 3000, 4000, 10000], "{weights:?}");
    cluster.wait_events("reviews-v2", &["Succeeded"]).await;
    let started = cluster.event_notes("reviews-v2", "StepStarted").await;
    let mut unique = started.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        started.len(),
        unique.len(),
        "a step reported twice: {started:?}"
    );
}

/// `POST /v1/rollouts` as the service's API is called (the CLI, a pipeline).
async fn post_rollout(service: &ServiceProcess, token: &str, body: Value) -> (u16, Value) {
    call(
        service,
        token,
        reqwest::Method::POST,
        "/v1/rollouts",
        Some(body),
    )
    .await
}

async fn call(
    service: &ServiceProcess,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut request = client
        .request(method, format!("{}{path}", service.url))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// In Kubernetes mode a rollout created through the HTTP API is a MeshRollout: `kubectl get
/// mro` lists it, the reconciler runs it and its status says where it stands. A body the service
/// refuses is answered at once, naming the field, and leaves no resource; deleting the finished
/// rollout through the API deletes the resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_created_through_the_api_is_a_mesh_rollout() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let service = cluster.serve().await;
    let token = cluster.installed.api_token.clone();
    let body = json!({
        "name": "reviews-v2", "route": "reviews", "stable": "v1", "canary": "v2",
        "steps": [{"setWeight": {"percent": 50}}, {"pause": {"duration": "2s"}}, {"setWeight": {"percent": 100}}],
    });
    // A replica answers (and is ready, for reads) before it has taken the Lease; writes wait
    // for it to lead.
    let (status, created) = eventually(
        "the leader takes the write",
        Duration::from_secs(15),
        async || match post_rollout(&service, &token, body.clone()).await {
            (503, answer) => Err(answer.to_string()),
            answered => Ok(answered),
        },
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["spec"]["canary"], "v2");

    let object = cluster.mesh_rollout("reviews-v2").await;
    assert_eq!(object["spec"]["canary"], "v2", "{object}");
    assert_eq!(object["spec"]["target"]["wasmPlugin"], WASMPLUGIN);
    assert_eq!(
        object["metadata"]["annotations"]["meshcanary.io/created-by"],
        "api"
    );
    assert_eq!(owners(&object, "meshcanary-api"), ["f:metadata", "f:spec"]);
    // kubectl sees it, with where it stands.
    let listed = cluster.installed.kubectl_ok(&[
        "get",
        "mro",
        "-n",
        cluster.system(),
        "-o",
        "custom-columns=NAME:.metadata.name,CANARY:.spec.canary",
    ]);
    assert!(
        listed.contains("reviews-v2") && listed.contains("v2"),
        "{listed}"
    );
    let done = cluster.wait_phase("reviews-v2", "succeeded").await;
    assert_eq!(
        done["status"]["run"]["status"]["createdAt"],
        serde_json::to_value(created["status"]["createdAt"].clone()).unwrap(),
        "the run the API answered with"
    );
    assert_eq!(cluster.canary_weights().await, [0, 5000, 10000]);

    // Refused at once, naming the body's field: no resource is left.
    let (status, refused) = post_rollout(
        &service,
        &token,
        json!({"name": "ratings-v2", "route": "nowhere", "stable": "v1", "canary": "v2", "steps": [{"setWeight": {"percent": 10}}]}),
    )
    .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["field"], "route", "{refused}");
    assert_eq!(cluster.mesh_rollout("ratings-v2").await, Value::Null);
    // The name is taken while the resource exists.
    let (status, taken) = post_rollout(&service, &token, body).await;
    assert_eq!(status, 409, "{taken}");

    // Deleting the finished rollout deletes its resource.
    let (status, _) = call(
        &service,
        &token,
        reqwest::Method::DELETE,
        "/v1/rollouts/reviews-v2",
        None,
    )
    .await;
    assert_eq!(status, 204);
    eventually(
        "the resource is gone",
        Duration::from_secs(10),
        async || match cluster.mesh_rollout("reviews-v2").await {
            Value::Null => Ok(()),
            object => Err(object["metadata"].to_string()),
        },
    )
    .await;
    let (status, _) = call(
        &service,
        &token,
        reqwest::Method::GET,
        "/v1/rollouts/reviews-v2",
        None,
    )
    .await;
    assert_eq!(status, 404);
}

/// A reconciliation that fails for a reason of the moment (here: the service lost the right to
/// edit MeshRollouts, so it cannot put its finalizer on) is tried again by itself: once the right
/// is back, the rollout starts without anyone touching the resource again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reconciliation_is_retried_without_a_new_change() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let roles: Api<Role> = Api::namespaced(cluster.admin.clone(), cluster.system());
    let granted = roles.get("meshcanary-control").await.unwrap();
    let mut narrowed = granted.clone();
    for rule in narrowed.rules.iter_mut().flatten() {
        if rule.resources.as_deref() == Some(&["meshrollouts".to_string()][..]) {
            rule.verbs.retain(|verb| verb != "patch");
        }
    }
    narrowed.metadata.resource_version = None;
    roles
        .replace("meshcanary-control", &Default::default(), &narrowed)
        .await
        .unwrap();
    let _service = cluster.serve().await;
    cluster
        .apply(
            "reviews-v2",
            json!({"steps": [{"setWeight": {"percent": 50}}, {"pause": {}}]}),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused = cluster.mesh_rollout("reviews-v2").await;
    assert_eq!(refused["metadata"]["finalizers"], Value::Null, "{refused}");
    assert_eq!(
        refused["status"]["phase"],
        Value::Null,
        "not started: {refused}"
    );
    assert_eq!(cluster.canary_weights().await, [0]);

    let mut restored = roles.get("meshcanary-control").await.unwrap();
    restored.rules = granted.rules.clone();
    roles
        .replace("meshcanary-control", &Default::default(), &restored)
        .await
        .unwrap();
    let started = cluster.wait_phase("reviews-v2", "paused").await;
    assert_eq!(
        started["metadata"]["generation"], 1,
        "nobody changed the resource"
    );
    assert_eq!(cluster.canary_weights().await, [0, 5000]);
}
