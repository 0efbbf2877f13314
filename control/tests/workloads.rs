//! Rollouts that scale the Deployments behind their variants (`workloads`), against a real
//! kube-apiserver (`meshcanary_testkit::envtest`, namespaces per test): the controller runs in
//! process with the Kubernetes seams the service uses (WasmPlugin router, ConfigMap store,
//! Deployment scaler), all as the control service's ServiceAccount with exactly the shipped RBAC.
//!
//! No kubelet or Deployment controller runs here, so the test plays them as an administrator: it
//! creates bookinfo's reviews Deployments and writes `status.readyReplicas` through the status
//! subresource when it decides the replicas are ready. No proxies are watched either: a weight
//! counts as applied once written to the WasmPlugin.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use meshcanary_control::controller::Controller;
use meshcanary_control::crd::MeshRollout;
use meshcanary_control::observer::envoy_admin::EnvoyAdminObserver;
use meshcanary_control::options::ControllerOptions;
use meshcanary_control::rollout::engine::Command;
use meshcanary_control::rollout::{Rollout, RolloutSpec};
use meshcanary_control::router::wasmplugin::WasmPluginRouter;
use meshcanary_control::store::configmap::ConfigMapStore;
use meshcanary_control::workloads::deployments::DeploymentScaler;
use meshcanary_control::workloads::WorkloadScaler;
use meshcanary_testkit::install::WASMPLUGIN;
use meshcanary_testkit::wait::eventually;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

#[path = "support/cluster.rs"]
mod cluster;

use cluster::Cluster;

/// How long the engine may take to react to what the test did.
const REACT: Duration = Duration::from_secs(10);

impl Cluster {
    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.admin.clone(), self.apps())
    }

    /// Creates Deployment `name` (app `app`, version `version`) with `replicas`, none ready.
    async fn create_deployment(&self, name: &str, app: &str, version: &str, replicas: i32) {
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": app, "version": version}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": app, "version": version}},
                "template": {
                    "metadata": {"labels": {"app": app, "version": version}},
                    "spec": {"containers": [{"name": app, "image": format!("docker.io/istio/examples-bookinfo-{app}-{version}:1.20.2")}]},
                },
            },
        }))
        .unwrap();
        self.deployments()
            .create(&PostParams::default(), &deployment)
            .await
            .unwrap();
    }

    /// Plays the Deployment controller and kubelet: `ready` of Deployment `name`'s replicas are
    /// ready.
    async fn mark_ready(&self, name: &str, ready: i32) {
        let status = json!({"status": {"replicas": ready, "readyReplicas": ready, "availableReplicas": ready}});
        self.deployments()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }

    /// Deployment `name`'s `spec.replicas`.
    async fn replicas(&self, name: &str) -> i32 {
        let deployment = self.deployments().get(name).await.unwrap();
        deployment.spec.replicas.unwrap_or(1)
    }

    /// Waits until Deployment `name` is scaled to `replicas`.
    async fn wait_replicas(&self, name: &str, replicas: i32) {
        eventually(
            &format!("{name} is scaled to {replicas}"),
            REACT,
            async || match self.replicas(name).await {
                got if got == replicas => Ok(()),
                got => Err(format!("spec.replicas {got}")),
            },
        )
        .await;
    }

    /// bookinfo's reviews Deployments: v1 (the stable) at 3 replicas, all ready; v2 (the
    /// canary) at 0.
    async fn reviews(&self) {
        self.create_deployment("reviews-v1", "reviews", "v1", 3)
            .await;
        self.mark_ready("reviews-v1", 3).await;
        self.create_deployment("reviews-v2", "reviews", "v2", 0)
            .await;
    }

    /// The controller of Kubernetes mode, as the ServiceAccount, with its loops running.
    async fn controller(&self) -> Service {
        let client = self.service_account.clone();
        let options = ControllerOptions {
            scaler: Some(Arc::new(DeploymentScaler::new(client.clone(), self.apps()))),
            ..ControllerOptions::default()
        };
        let controller = Controller::start(
            Box::new(ConfigMapStore::new(
                client.clone(),
                self.system(),
                "meshcanary-state",
            )),
            Box::new(WasmPluginRouter::new(client, self.apps(), WASMPLUGIN)),
            Box::new(EnvoyAdminObserver::new(Vec::new())),
            options,
        )
        .await
        .unwrap();
        let loops = tokio::spawn(controller.clone().run());
        Service { controller, loops }
    }

    /// The canary's (v2's) weight on route reviews in the WasmPlugin, in basis points.
    async fn canary_weight(&self) -> u64 {
        let config = self.plugin_config().await;
        config["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|route| route["name"] == "reviews")
            .and_then(|route| {
                route["variants"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|variant| variant["name"] == "v2")
            })
            .map_or(0, |variant| variant["weight"].as_u64().unwrap())
    }
}

/// The controller and its loops, stopped when dropped.
struct Service {
    controller: Arc<Controller>,
    loops: tokio::task::JoinHandle<()>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.loops.abort();
    }
}

impl Service {
    async fn create(&self, steps: Value, workloads: Value) -> Rollout {
        let spec: RolloutSpec = serde_json::from_value(json!({
            "name": "reviews-v2", "route": "reviews", "stable": "v1", "canary": "v2",
            "steps": steps, "workloads": workloads,
        }))
        .unwrap();
        self.controller.create(spec).await.unwrap()
    }

    async fn rollout(&self) -> Rollout {
        self.controller.get("reviews-v2").await.unwrap()
    }

    /// Waits until the rollout is in `phase` and returns it.
    async fn wait_phase(&self, phase: &str) -> Rollout {
        eventually(&format!("rollout is {phase}"), REACT, async || {
            let rollout = self.rollout().await;
            match rollout.status.phase.as_str() {
                now if now == phase => Ok(rollout),
                now => Err(format!("{now}: {}", rollout.status.message)),
            }
        })
        .await
    }
}

#[tokio::test]
async fn each_weight_waits_for_ready_canary_replicas_and_success_scales_the_old_stable_down() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    cluster.reviews().await;
    let service = cluster.controller().await;
    service
        .create(
            json!([{"setWeight": {"percent": 10}}, {"pause": {}}, {"setWeight": {"percent": 50}}]),
            json!({"stable": "reviews-v1", "canary": "reviews-v2"}),
        )
        .await;

    // 10 % of the stable's 3 replicas, rounded up: the canary is scaled to 1 ...
    cluster.wait_replicas("reviews-v2", 1).await;
    // ... and the weight does not move while that replica is not ready.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cluster.canary_weight().await, 0);
    let waiting = service.rollout().await;
    assert_eq!(waiting.status.canary_weight, 0);
    assert!(
        waiting
            .status
            .message
            .contains("scaling Deployment reviews-v2 to 1 of 3 replicas; weight 10% waits"),
        "{}",
        waiting.status.message
    );

    cluster.mark_ready("reviews-v2", 1).await;
    let paused = service.wait_phase("paused").await;
    assert_eq!(paused.status.canary_weight, 1000);
    assert_eq!(cluster.canary_weight().await, 1000);
    assert_eq!(
        cluster.replicas("reviews-v1").await,
        3,
        "the stable is untouched"
    );

    // Resumed: 50 % needs 2 replicas, then promotion needs all 3.
    service
        .controller
        .command("reviews-v2", Command::Resume, None)
        .await
        .unwrap();
    cluster.wait_replicas("reviews-v2", 2).await;
    assert_eq!(cluster.canary_weight().await, 1000);
    cluster.mark_ready("reviews-v2", 2).await;
    cluster.wait_replicas("reviews-v2", 3).await;
    assert_eq!(
        cluster.canary_weight().await,
        5000,
        "50 % on 2 ready replicas"
    );
    assert_eq!(service.rollout().await.status.phase.as_str(), "progressing");
    cluster.mark_ready("reviews-v2", 3).await;
    let done = service.wait_phase("succeeded").await;
    assert_eq!(done.status.canary_weight, 10000);

    // scaleDown zero (the default): the old stable goes to 0; the canary keeps its 3.
    cluster.wait_replicas("reviews-v1", 0).await;
    assert_eq!(cluster.replicas("reviews-v2").await, 3);
}

#[tokio::test]
async fn a_canary_that_never_gets_ready_pauses_the_rollout_and_an_abort_scales_it_to_zero() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    cluster.reviews().await;
    let service = cluster.controller().await;
    service
        .create(
            json!([{"setWeight": {"percent": 50}}, {"setWeight": {"percent": 100}}]),
            json!({"stable": "reviews-v1", "canary": "reviews-v2", "readyTimeout": "2s"}),
        )
        .await;
    cluster.wait_replicas("reviews-v2", 2).await;
    cluster.mark_ready("reviews-v2", 1).await;

    let paused = service.wait_phase("paused").await;
    assert_eq!(
        paused.status.message,
        "reviews-v2 has 1/2 ready replicas after 2s; weight 50% waits for them (resume to scale and wait again)"
    );
    assert_eq!(paused.status.canary_weight, 0);
    assert_eq!(cluster.canary_weight().await, 0);

    let aborted = service
        .controller
        .command("reviews-v2", Command::Abort, None)
        .await
        .unwrap();
    assert_eq!(aborted.status.phase.as_str(), "aborted");
    cluster.wait_replicas("reviews-v2", 0).await;
    assert_eq!(
        cluster.replicas("reviews-v1").await,
        3,
        "the stable is untouched"
    );
}

#[tokio::test]
async fn a_rollback_scales_the_canary_to_zero() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    cluster.reviews().await;
    let service = cluster.controller().await;
    // The rollout's timeout runs out during its hour-long pause: it rolls back.
    let spec: RolloutSpec = serde_json::from_value(json!({
        "name": "reviews-v2", "route": "reviews", "stable": "v1", "canary": "v2",
        "steps": [{"setWeight": {"percent": 10}}, {"pause": {"duration": "1h"}}],
        "timeout": "3s",
        "workloads": {"stable": "reviews-v1", "canary": "reviews-v2", "minReplicas": 2},
    }))
    .unwrap();
    service.controller.create(spec).await.unwrap();
    cluster.wait_replicas("reviews-v2", 2).await;
    cluster.mark_ready("reviews-v2", 2).await;
    eventually("10 % is applied", REACT, async || {
        match cluster.canary_weight().await {
            1000 => Ok(()),
            other => Err(format!("{other}")),
        }
    })
    .await;
    let rolled_back = service.wait_phase("rolledBack").await;
    assert!(
        rolled_back.status.message.contains("timed out"),
        "{}",
        rolled_back.status.message
    );
    cluster.wait_replicas("reviews-v2", 0).await;
    assert_eq!(cluster.canary_weight().await, 0);
    assert_eq!(
        cluster.replicas("reviews-v1").await,
        3,
        "the stable is untouched"
    );
}

#[tokio::test]
async fn batches_scale_the_canary_in_steps_and_a_partition_holds_until_raised() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    cluster.reviews().await;
    let service = cluster.controller().await;
    // A canary of 4: 1 replica at 10 %, half of them at 50 %, all 4 to promote; hold after the
    // first batch.
    service
        .create(
            json!([{"setWeight": {"percent": 10}}, {"setWeight": {"percent": 50}}]),
            json!({"stable": "reviews-v1", "canary": "reviews-v2", "replicas": 4,
                   "batches": [{"replicas": 1, "weight": {"percent": 10}},
                               {"replicas": "50%", "weight": {"percent": 50}}],
                   "batchPartition": 0}),
        )
        .await;
    cluster.wait_replicas("reviews-v2", 1).await;
    cluster.mark_ready("reviews-v2", 1).await;
    let held = service.wait_phase("paused").await;
    assert_eq!(
        held.status.message,
        "holding after batch 1 of 2 (1 replica at 10%): workloads.batchPartition is 0; raise or remove it to go on"
    );
    assert_eq!(cluster.canary_weight().await, 1000);
    // Held: nothing more is scaled, and resume does not get past the partition.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cluster.replicas("reviews-v2").await, 1);
    let refused = service
        .controller
        .command("reviews-v2", Command::Resume, None)
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("raise or remove the partition"),
        "{refused}"
    );

    // Removing the partition lets the second batch go: 2 replicas, then 50 % once they are ready.
    service
        .controller
        .command("reviews-v2", Command::SetPartition(None), None)
        .await
        .unwrap();
    cluster.wait_replicas("reviews-v2", 2).await;
    assert_eq!(cluster.canary_weight().await, 1000);
    cluster.mark_ready("reviews-v2", 2).await;
    cluster.wait_replicas("reviews-v2", 4).await;
    assert_eq!(cluster.canary_weight().await, 5000);
    cluster.mark_ready("reviews-v2", 4).await;
    service.wait_phase("succeeded").await;
    cluster.wait_replicas("reviews-v1", 0).await;
    assert_eq!(cluster.replicas("reviews-v2").await, 4);
}

#[tokio::test]
async fn a_promotion_whose_canary_loses_replicas_rolls_back_and_scales_the_canary_down() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    cluster.reviews().await;
    let service = cluster.controller().await;
    let spec: RolloutSpec = serde_json::from_value(json!({
        "name": "reviews-v2", "route": "reviews", "stable": "v1", "canary": "v2",
        "steps": [{"setWeight": {"percent": 50}}],
        "autoFinish": false,
        "workloads": {"stable": "reviews-v1", "canary": "reviews-v2", "readyTimeout": "3s"},
    }))
    .unwrap();
    service.controller.create(spec).await.unwrap();
    cluster.wait_replicas("reviews-v2", 2).await;
    cluster.mark_ready("reviews-v2", 2).await;
    cluster.wait_replicas("reviews-v2", 3).await;
    cluster.mark_ready("reviews-v2", 3).await;
    let promoted = service.wait_phase("promoting").await;
    assert_eq!(promoted.status.canary_weight, 10000);

    // A canary replica stops being ready; finishing (which would scale the old stable to 0)
    // waits for it, and after the ready timeout the promotion rolls back.
    cluster.mark_ready("reviews-v2", 2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let finishing = service
        .controller
        .command("reviews-v2", Command::Finish, None)
        .await
        .unwrap();
    assert_eq!(
        finishing.status.phase.as_str(),
        "promoting",
        "{}",
        finishing.status.message
    );
    let rolled_back = service.wait_phase("rolledBack").await;
    assert_eq!(
        rolled_back.status.message,
        "rolled back: promotion stuck: reviews-v2 has 2/3 ready replicas after 3s, so the old stable reviews-v1 keeps the traffic and its replicas"
    );
    assert_eq!(cluster.canary_weight().await, 0);
    cluster.wait_replicas("reviews-v2", 0).await;
    assert_eq!(
        cluster.replicas("reviews-v1").await,
        3,
        "the stable is untouched"
    );
}

#[tokio::test]
async fn scale_down_delete_deletes_the_old_stable_after_success() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    cluster.reviews().await;
    let service = cluster.controller().await;
    service
        .create(
            json!([{"setWeight": {"percent": 50}}]),
            json!({"stable": "reviews-v1", "canary": "reviews-v2", "scaleDown": "delete"}),
        )
        .await;
    cluster.wait_replicas("reviews-v2", 2).await;
    cluster.mark_ready("reviews-v2", 2).await;
    cluster.wait_replicas("reviews-v2", 3).await;
    cluster.mark_ready("reviews-v2", 3).await;
    service.wait_phase("succeeded").await;
    eventually("reviews-v1 is deleted", REACT, async || {
        match cluster.deployments().get_opt("reviews-v1").await.unwrap() {
            None => Ok(()),
            Some(_) => Err("still there".to_string()),
        }
    })
    .await;
    assert_eq!(cluster.replicas("reviews-v2").await, 3);
}

/// A MeshRollout's partition is raised by editing only `spec.workloads.batchPartition`: the
/// running rollout goes on from where it held (no new run, so no abort), as the service binary
/// runs it in Kubernetes mode.
#[tokio::test]
async fn a_meshrollout_partition_edit_lets_the_running_rollout_go_on() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    cluster.reviews().await;
    let mut command = cluster.installed.pod_command("a");
    command
        .set_flag("--kube-namespace", cluster.apps())
        .remove_flag("--prometheus-url");
    let process = cluster.installed.run_pod_via(
        std::path::Path::new(env!("CARGO_BIN_EXE_meshcanary")),
        &command,
        "a",
        None,
    );
    process.wait_ready(Duration::from_secs(20)).await.unwrap();
    let rollouts: Api<MeshRollout> = Api::namespaced(cluster.admin.clone(), cluster.system());
    let apply = |partition: Value| {
        let mut workloads = json!({"stable": "reviews-v1", "canary": "reviews-v2", "replicas": 4,
            "batches": [{"replicas": 1, "weight": {"percent": 10}},
                        {"replicas": "50%", "weight": {"percent": 50}}]});
        if !partition.is_null() {
            workloads["batchPartition"] = partition;
        }
        let body = json!({
            "apiVersion": "meshcanary.io/v1alpha1", "kind": "MeshRollout",
            "metadata": {"name": "reviews-v2"},
            "spec": {"target": {"wasmPlugin": WASMPLUGIN, "namespace": cluster.apps()},
                     "route": "reviews", "stable": "v1", "canary": "v2",
                     "steps": [{"setWeight": {"percent": 10}}, {"setWeight": {"percent": 50}}],
                     "workloads": workloads},
        });
        let rollouts = rollouts.clone();
        async move {
            rollouts
                .patch(
                    "reviews-v2",
                    &PatchParams::apply("argocd"),
                    &Patch::Apply(body),
                )
                .await
                .unwrap();
        }
    };
    let phase = async |phase: &str| {
        eventually(&format!("MeshRollout {phase}"), REACT, async || {
            let object = serde_json::to_value(rollouts.get("reviews-v2").await.unwrap()).unwrap();
            match object["status"]["phase"].as_str() {
                Some(now) if now == phase => Ok(object),
                _ => Err(object["status"].to_string()),
            }
        })
        .await
    };

    apply(json!(0)).await;
    cluster.wait_replicas("reviews-v2", 1).await;
    cluster.mark_ready("reviews-v2", 1).await;
    let held = phase("paused").await;
    assert!(
        held["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("workloads.batchPartition is 0")),
        "{held}"
    );
    assert_eq!(cluster.replicas("reviews-v2").await, 1);

    apply(Value::Null).await;
    cluster.wait_replicas("reviews-v2", 2).await;
    cluster.mark_ready("reviews-v2", 2).await;
    cluster.wait_replicas("reviews-v2", 4).await;
    cluster.mark_ready("reviews-v2", 4).await;
    phase("succeeded").await;
    cluster.wait_replicas("reviews-v1", 0).await;
    // One run: the rollout said it went on, and nothing was aborted (a new run would have
    // aborted this one first, and said so in a Warning Event).
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(cluster.admin.clone(), cluster.system());
    let notes = eventually("the partition's Event", REACT, async || {
        let notes: Vec<(String, String)> = events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("reviews-v2"))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect();
        if notes
            .iter()
            .any(|(_, note)| note.contains("workloads.batchPartition removed: going on"))
            && notes.iter().any(|(reason, _)| reason == "Succeeded")
        {
            Ok(notes)
        } else {
            Err(format!("{notes:?}"))
        }
    })
    .await;
    assert!(
        notes.iter().all(|(reason, _)| reason != "Aborted"),
        "{notes:?}"
    );
}

#[tokio::test]
async fn the_service_account_may_scale_only_reviews_deployments() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    cluster.reviews().await;
    cluster
        .create_deployment("ratings-v1", "ratings", "v1", 1)
        .await;
    let scaler = DeploymentScaler::new(cluster.service_account.clone(), cluster.apps());

    let error = scaler.scale("ratings-v1", 0).await.unwrap_err().to_string();
    assert!(
        error.contains(&format!(
            "not allowed to scale Deployment {}/ratings-v1",
            cluster.apps()
        )) && error.contains("deployments/scale"),
        "{error}"
    );
    let error = scaler.ready("ratings-v1").await.unwrap_err().to_string();
    assert!(error.contains("not allowed to get Deployment"), "{error}");
    let error = scaler.delete("ratings-v1").await.unwrap_err().to_string();
    assert!(
        error.contains("not allowed to delete Deployment"),
        "{error}"
    );
    assert_eq!(cluster.replicas("ratings-v1").await, 1);

    // reviews' own Deployments it may read and scale, through the scale subresource alone.
    scaler.scale("reviews-v2", 2).await.unwrap();
    assert_eq!(cluster.replicas("reviews-v2").await, 2);
    let replicas = scaler.ready("reviews-v1").await.unwrap();
    assert_eq!((replicas.desired, replicas.ready), (3, 3));
    let patch = json!({"spec": {"replicas": 5}});
    let whole = Api::<Deployment>::namespaced(cluster.service_account.clone(), cluster.apps())
        .patch("reviews-v2", &PatchParams::default(), &Patch::Merge(&patch))
        .await;
    assert!(
        matches!(&whole, Err(kube::Error::Api(status)) if status.code == 403),
        "{whole:?}"
    );
}
