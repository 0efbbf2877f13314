//! The MeshRollout CRD (`envoy-config/istio/meshrollout-crd.yaml`, generated from
//! `control/src/crd`) against a real kube-apiserver (`meshcanary_testkit::envtest`, one per test
//! binary, namespaces of its own per test), installed as a user installs it (`kubectl apply -k
//! envoy-config/istio`): valid resources round-trip through the typed client, invalid ones are
//! refused with a message naming the field, the status subresource is the control service's
//! (its ServiceAccount, its field manager) while a GitOps tool owns the spec, and `kubectl get
//! mro` shows the printer columns.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::Resource;
use meshcanary_control::crd::{
    CheckedMeshRollout, MeshRollout, MeshRolloutSpec, MeshRolloutStatus, FIELD_MANAGER,
};
use meshcanary_control::rollout::{Hold, Phase, Rollout};
use meshcanary_control::time::Timestamp;
use meshcanary_core::config::{CheckedConfig, FilterConfig};
use meshcanary_testkit::envtest::{Envtest, MESHROLLOUT_CRD};
use meshcanary_testkit::install::{Installed, Namespaces, Options};
use serde_json::{json, Value};

/// One test's share of the server: the manifests installed into a namespace of its own, the
/// administrator (people, GitOps) and the control service's ServiceAccount.
struct Setup {
    installed: Installed<'static>,
    admin: kube::Client,
    service_account: kube::Client,
}

impl Setup {
    async fn start() -> Option<Setup> {
        let envtest = Envtest::shared()?;
        let installed = Installed::install(
            envtest,
            Options {
                namespaces: Namespaces::Fresh,
                bookinfo: false,
            },
        );
        let admin = envtest.admin_client().await;
        let service_account = installed.service_account_client().await;
        Some(Setup {
            installed,
            admin,
            service_account,
        })
    }

    /// The control service's namespace, where MeshRollouts live.
    fn ns(&self) -> &str {
        &self.installed.system
    }

    fn rollouts(&self, client: &kube::Client) -> Api<MeshRollout> {
        Api::namespaced(client.clone(), self.ns())
    }

    /// Untyped, for what the Rust types cannot even express.
    fn raw(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.admin.clone(),
            self.ns(),
            &ApiResource::erase::<MeshRollout>(&()),
        )
    }

    fn kubectl(&self, args: &[&str]) -> String {
        self.installed.kubectl_ok(args)
    }
}

/// A MeshRollout as JSON: `reviews-v2`'s spec with `extra` merged over its top-level fields.
fn manifest(name: &str, extra: Value) -> Value {
    let mut spec = json!({
        "target": {"wasmPlugin": "reviews-canary", "namespace": "shop"},
        "route": "reviews", "stable": "v1", "canary": "v2",
        "steps": [{"setWeight": {"percent": 12.5}}, {"pause": {}}, {"setWeight": {"basisPoints": 5000}}],
    });
    for (key, value) in extra.as_object().unwrap() {
        match value {
            Value::Null => {
                spec.as_object_mut().unwrap().remove(key);
            }
            _ => spec[key] = value.clone(),
        }
    }
    json!({
        "apiVersion": "meshcanary.io/v1alpha1",
        "kind": "MeshRollout",
        "metadata": {"name": name},
        "spec": spec,
    })
}

#[tokio::test]
async fn valid_meshrollouts_round_trip_through_the_typed_client() {
    let Some(setup) = Setup::start().await else {
        return;
    };
    let rollouts = setup.rollouts(&setup.admin);
    let cases = [
        manifest("reviews-v2", json!({})),
        manifest(
            "mirrored-v3",
            json!({"steps": [
                {"mirror": {"percent": 12.5, "duration": "1m"}}, {"mirror": {"basisPoints": 1}},
                {"setWeight": {"percent": 10}}
            ]}),
        ),
        manifest(
            "ratings-v3",
            json!({
                "steps": null,
                "progressive": {"stepWeight": 10, "maxWeight": 50, "interval": "1m 30s"},
                "timeout": "2h", "autoFinish": false, "propagationTimeout": "45s",
                "analysis": {"interval": "1m", "minSuccessRate": 99.5, "maxLatencyMs": 500},
                "webhooks": [{"name": "load", "type": "rollout", "url": "https://load.test:8443/start?x=1", "timeout": "500ms", "metadata": {"team": "shop"}}],
                "paused": true,
            }),
        ),
        // Batches whose replicas are counts and percentages (int-or-string) and a partition.
        manifest(
            "reviews-v3",
            json!({
                "steps": [{"setWeight": {"percent": 12.5}}, {"pause": {}}, {"setWeight": {"basisPoints": 5000}}],
                "workloads": {"stable": "reviews-v1", "canary": "reviews-v3", "replicas": 4,
                    "batches": [{"replicas": 1, "weight": {"percent": 12.5}},
                                {"replicas": "50%", "weight": {"basisPoints": 5000}}],
                    "batchPartition": 0},
            }),
        ),
    ];
    for value in cases {
        let wanted: MeshRollout = serde_json::from_value(value.clone()).unwrap();
        let created = rollouts
            .create(&PostParams::default(), &wanted)
            .await
            .unwrap_or_else(|e| panic!("{value}: {e}"));
        let read = rollouts
            .get(&wanted.metadata.name.clone().unwrap())
            .await
            .unwrap();
        assert_eq!(
            read.spec, wanted.spec,
            "the spec as stored is the spec sent"
        );
        assert_eq!(created.spec, read.spec);
        assert_eq!(read.status, None, "nobody wrote a status yet");
        assert_eq!(read.meta().generation, Some(1));
        // The checked rollout is what the HTTP API would have made of the same body.
        let checked = CheckedMeshRollout::try_from(&read).unwrap();
        assert_eq!(checked.spec.name, read.metadata.name.clone().unwrap());
        assert_eq!(checked.generation, Some(1));
        assert!(!checked.plan.is_empty());
    }
    // The defaults the schema carries are the API's: a spec that leaves them out reads back
    // with them, exactly as serde would fill them in.
    let sparse = manifest("defaults", json!({"analysis": {}}));
    setup
        .raw()
        .create(
            &PostParams::default(),
            &serde_json::from_value(sparse.clone()).unwrap(),
        )
        .await
        .unwrap();
    let stored = serde_json::to_value(setup.raw().get("defaults").await.unwrap()).unwrap();
    let spec = &stored["spec"];
    assert_eq!(spec["autoFinish"], true);
    assert_eq!(spec["paused"], false);
    assert_eq!(spec["analysis"]["interval"], "30s");
    assert_eq!(spec["analysis"]["failureLimit"], 2);
    let through_serde: MeshRollout = serde_json::from_value(sparse).unwrap();
    assert_eq!(
        rollouts.get("defaults").await.unwrap().spec,
        through_serde.spec
    );
}

/// Each rule the schema carries, on the real server: the message names the field, and the same
/// resource is refused by the conversion the reconciler will use (the CRD is never stricter than
/// the API on these).
#[tokio::test]
async fn invalid_meshrollouts_are_refused_with_the_field_named() {
    let Some(setup) = Setup::start().await else {
        return;
    };
    // (what, name, spec changes, the field in the error, what the error says)
    let cases: Vec<(&str, &str, Value, &str, &str)> = vec![
        (
            "stable is canary",
            "a",
            json!({"canary": "v1"}),
            "spec.canary",
            "must differ from spec.stable",
        ),
        (
            "no steps",
            "a",
            json!({"steps": null}),
            "spec.steps",
            "give spec.steps or spec.progressive",
        ),
        (
            "empty steps",
            "a",
            json!({"steps": []}),
            "spec.steps",
            "give spec.steps or spec.progressive",
        ),
        (
            "steps and progressive",
            "a",
            json!({"progressive": {"stepWeight": 10, "maxWeight": 50, "interval": "1m"}}),
            "spec.progressive",
            "not both",
        ),
        (
            "percent over 100",
            "a",
            json!({"steps": [{"setWeight": {"percent": 101}}]}),
            "spec.steps[0].setWeight.percent",
            "less than or equal to 100",
        ),
        (
            "negative percent",
            "a",
            json!({"steps": [{"setWeight": {"percent": -1}}]}),
            "spec.steps[0].setWeight.percent",
            "greater than or equal to 0",
        ),
        (
            "basis points over 10000",
            "a",
            json!({"steps": [{"pause": {}}, {"setWeight": {"basisPoints": 10001}}]}),
            "spec.steps[1].setWeight.basisPoints",
            "less than or equal to 10000",
        ),
        (
            "percent and basis points",
            "a",
            json!({"steps": [{"setWeight": {"percent": 1, "basisPoints": 100}}]}),
            "spec.steps[0].setWeight",
            "give exactly one of \"percent\" and \"basisPoints\"",
        ),
        (
            "a weight of nothing",
            "a",
            json!({"steps": [{"setWeight": {}}]}),
            "spec.steps[0].setWeight",
            "give exactly one of \"percent\" and \"basisPoints\"",
        ),
        (
            "three decimals",
            "a",
            json!({"steps": [{"setWeight": {"percent": 1.234}}]}),
            "spec.steps[0].setWeight.percent",
            "more than two decimals",
        ),
        (
            "a step that is neither",
            "a",
            json!({"steps": [{}]}),
            "spec.steps[0]",
            "give exactly one of \"setWeight\", \"pause\" and \"mirror\"",
        ),
        (
            "a step that is both",
            "a",
            json!({"steps": [{"pause": {}}, {"pause": {}, "setWeight": {"percent": 1}}]}),
            "spec.steps[1]",
            "give exactly one of \"setWeight\", \"pause\" and \"mirror\"",
        ),
        (
            "a step that pauses and mirrors",
            "a",
            json!({"steps": [{"pause": {}, "mirror": {"percent": 5}}]}),
            "spec.steps[0]",
            "give exactly one of \"setWeight\", \"pause\" and \"mirror\"",
        ),
        (
            "a mirror of nothing",
            "a",
            json!({"steps": [{"mirror": {"percent": 0, "duration": "1m"}}]}),
            "spec.steps[0].mirror.percent",
            "greater than 0",
        ),
        (
            "a mirror of percent and basis points",
            "a",
            json!({"steps": [{"mirror": {"percent": 5, "basisPoints": 500}}]}),
            "spec.steps[0].mirror",
            "give exactly one of \"percent\" and \"basisPoints\"",
        ),
        (
            "a duration in words",
            "a",
            json!({"steps": [{"pause": {"duration": "soon"}}]}),
            "spec.steps[0].pause.duration",
            "should match",
        ),
        (
            "timeout in words",
            "a",
            json!({"timeout": "an hour"}),
            "spec.timeout",
            "should match",
        ),
        (
            "max below step",
            "a",
            json!({"steps": null, "progressive": {"stepWeight": 60, "maxWeight": 50, "interval": "1m"}}),
            "spec.progressive.maxWeight",
            "must not be below stepWeight",
        ),
        (
            "a step weight of 0",
            "a",
            json!({"steps": null, "progressive": {"stepWeight": 0, "maxWeight": 50, "interval": "1m"}}),
            "spec.progressive.stepWeight",
            "greater than 0",
        ),
        (
            "an empty route",
            "a",
            json!({"route": ""}),
            "spec.route",
            "at least 1 chars long",
        ),
        (
            "a route that no filter route can be",
            "a",
            json!({"route": "reviews.v2"}),
            "spec.route",
            "should match",
        ),
        (
            "an empty canary",
            "a",
            json!({"canary": ""}),
            "spec.canary",
            "at least 1 chars long",
        ),
        (
            "no target",
            "a",
            json!({"target": null}),
            "spec.target",
            "Required value",
        ),
        (
            "an empty wasmPlugin",
            "a",
            json!({"target": {"wasmPlugin": ""}}),
            "spec.target.wasmPlugin",
            "at least 1 chars long",
        ),
        (
            "analysis judging nothing",
            "a",
            json!({"analysis": {"compareWithStable": false}}),
            "spec.analysis",
            "judges nothing: set minSuccessRate, maxLatencyMs or compareWithStable",
        ),
        (
            "a p-value of 1",
            "a",
            json!({"analysis": {"maxPValue": 1}}),
            "spec.analysis.maxPValue",
            "less than 1",
        ),
        (
            "a failure limit of 0",
            "a",
            json!({"analysis": {"failureLimit": 0}}),
            "spec.analysis.failureLimit",
            "greater than or equal to 1",
        ),
        (
            "a hook on ftp",
            "a",
            json!({"webhooks": [{"name": "h", "type": "rollout", "url": "ftp://h/"}]}),
            "spec.webhooks[0].url",
            "should match",
        ),
        (
            "a hook with credentials",
            "a",
            json!({"webhooks": [{"name": "h", "type": "rollout", "url": "https://user:pw@h/"}]}),
            "spec.webhooks[0].url",
            "should match",
        ),
        (
            "eleven retries",
            "a",
            json!({"webhooks": [{"name": "h", "type": "rollout", "url": "http://h/", "retries": 11}]}),
            "spec.webhooks[0].retries",
            "less than or equal to 10",
        ),
        (
            "an unknown hook type",
            "a",
            json!({"webhooks": [{"name": "h", "type": "sometimes", "url": "http://h/"}]}),
            "spec.webhooks[0].type",
            "Unsupported value",
        ),
        // A rule on the whole object has no field to point at; its message names it.
        (
            "a name with a dot",
            "reviews.v2",
            json!({}),
            "",
            "metadata.name must be 1-63 lowercase letters",
        ),
        (
            "batch replicas that are neither a count nor a percentage",
            "a",
            json!({"workloads": {"stable": "reviews-v1", "canary": "reviews-v2",
                "batches": [{"replicas": "half", "weight": {"percent": 12.5}}]}}),
            "spec.workloads.batches[0].replicas",
            "must be a count (2) or a percentage",
        ),
        (
            "101 steps",
            "a",
            json!({"steps": vec![json!({"pause": {}}); 101]}),
            "spec.steps",
            "must have at most 100 items",
        ),
    ];
    let raw = setup.raw();
    let mut wrong = Vec::new();
    for (what, name, extra, field, says) in &cases {
        let value = manifest(name, extra.clone());
        let object: DynamicObject = serde_json::from_value(value.clone()).unwrap();
        match raw.create(&PostParams::default(), &object).await {
            Ok(_) => wrong.push(format!("{what}: accepted")),
            Err(kube::Error::Api(status)) => {
                let message = &status.message;
                let named = field.is_empty() || message.contains(&format!("{field}: "));
                if !(named && message.contains(says)) {
                    wrong.push(format!("{what}: wanted {field}: …{says}…, got: {message}"));
                }
                if status.code != 422 {
                    wrong.push(format!("{what}: HTTP {} instead of 422", status.code));
                }
            }
            Err(other) => wrong.push(format!("{what}: {other}")),
        }
        // The conversion refuses it too (or serde already does, for what Rust cannot hold) —
        // except names the API only meets in the filter config, where no route or variant can
        // have them.
        if let Ok(resource) = serde_json::from_value::<MeshRollout>(value.clone()) {
            if let Ok(checked) = CheckedMeshRollout::try_from(&resource) {
                if !filter_refuses_route(&checked.spec.route) {
                    wrong.push(format!("{what}: the conversion accepted it: {checked:?}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // Unknown fields: kubectl asks for strict field validation, and the server names the field.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        manifest("typo", json!({"stepz": []})).to_string(),
    )
    .unwrap();
    let output = setup
        .installed
        .envtest
        .kubectl()
        .args(["apply", "-n", setup.ns(), "-f"])
        .arg(file.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("unknown field \"spec.stepz\""), "{stderr}");

    // What the schema cannot say — a pause longer than the API's year — the server accepts and
    // the conversion refuses, naming the field the same way; the reconciler reports it in status.
    let long = manifest(
        "long-pause",
        json!({"steps": [{"pause": {"duration": "400d"}}]}),
    );
    let stored = setup
        .rollouts(&setup.admin)
        .create(
            &PostParams::default(),
            &serde_json::from_value(long).unwrap(),
        )
        .await
        .unwrap();
    let error = CheckedMeshRollout::try_from(&stored)
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("spec.steps[0].pause.duration: ") && error.contains("365 days"),
        "{error}"
    );
}

/// Whether the filter refuses a config with a route of this name (the API then refuses a
/// rollout of that route: it must be one of the filter config's routes).
fn filter_refuses_route(route: &str) -> bool {
    let config: FilterConfig = serde_json::from_value(json!({"routes": [{
        "name": route, "hosts": ["reviews"],
        "variants": [{"name": "v1", "weight": 10000}, {"name": "v2", "weight": 0}],
    }]}))
    .unwrap();
    CheckedConfig::try_from(config).is_err()
}

/// A rollout in the middle of its steps, as the engine would have it.
fn paused_rollout(spec: &MeshRolloutSpec, name: &str) -> Rollout {
    let started = Timestamp(1_795_000_000_000);
    let mut rollout = Rollout::new(spec.rollout_spec(name), 0, started).unwrap();
    let status = &mut rollout.status;
    status.phase = Phase::Paused;
    status.hold = Some(Hold::PauseStep);
    status.message = "waiting at a pause step: resume to go on".into();
    status.step = 1;
    status.canary_weight = 1250;
    status.weight_generation = 4;
    status.updated_at = started.plus(std::time::Duration::from_secs(90));
    rollout
}

/// The fields a manager owns, by manager: `{"argocd": ["f:spec"], "meshcanary": ["f:status"]}`.
fn owners(object: &Value) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut owners: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for entry in object["metadata"]["managedFields"].as_array().unwrap() {
        let fields = entry["fieldsV1"].as_object().unwrap();
        let top = owners
            .entry(entry["manager"].as_str().unwrap().to_string())
            .or_default();
        top.extend(fields.keys().filter(|key| *key != "f:metadata").cloned());
        top.sort();
        top.dedup();
    }
    owners
}

/// GitOps applies the spec under its field manager, the service applies the status under its
/// own as its ServiceAccount: neither conflicts with the other, each keeps its fields, and
/// `kubectl get mro` shows what the status says.
#[tokio::test]
async fn the_service_owns_the_status_and_gitops_the_spec() {
    let Some(setup) = Setup::start().await else {
        return;
    };
    let name = "reviews-v2";
    let gitops = setup.rollouts(&setup.admin);
    let service = setup.rollouts(&setup.service_account);
    let desired: MeshRollout = serde_json::from_value(manifest(name, json!({}))).unwrap();
    let argocd = PatchParams::apply("argocd");
    gitops
        .patch(name, &argocd, &Patch::Apply(&desired))
        .await
        .unwrap();

    // The service reads it as its ServiceAccount, checks it, and reports.
    let read = service.get(name).await.unwrap();
    let checked = CheckedMeshRollout::try_from(&read).unwrap();
    let rollout = paused_rollout(&read.spec, name);
    let status = MeshRolloutStatus::from_rollout(&rollout, checked.generation, None, None);
    let apply_status = |status: &MeshRolloutStatus| {
        json!({
            "apiVersion": "meshcanary.io/v1alpha1",
            "kind": "MeshRollout",
            "metadata": {"name": name},
            "status": status,
        })
    };
    let ours = PatchParams::apply(FIELD_MANAGER);
    service
        .patch_status(name, &ours, &Patch::Apply(apply_status(&status)))
        .await
        .unwrap();

    // GitOps pauses it in Git and applies again: no conflict, the status stays the service's.
    let mut paused = desired.clone();
    paused.spec.paused = true;
    gitops
        .patch(name, &argocd, &Patch::Apply(&paused))
        .await
        .unwrap();
    let after = gitops.get(name).await.unwrap();
    assert!(after.spec.paused);
    assert_eq!(
        after.meta().generation,
        Some(2),
        "a spec change is a new generation"
    );
    assert_eq!(
        after.status.as_ref(),
        Some(&status),
        "the status as the service wrote it"
    );
    // The service's record of the run (its state store writes it under a field manager of its
    // own) sits beside the view and survives GitOps' apply.
    let record = json!([{"op": "add", "path": "/status/run", "value": serde_json::to_value(&rollout).unwrap()}]);
    service
        .patch_status(
            name,
            &PatchParams {
                field_manager: Some("meshcanary-state".into()),
                ..PatchParams::default()
            },
            &Patch::Json::<()>(serde_json::from_value(record).unwrap()),
        )
        .await
        .unwrap();
    gitops
        .patch(name, &argocd, &Patch::Apply(&paused))
        .await
        .unwrap();
    let kept = gitops.get(name).await.unwrap().status.unwrap();
    assert_eq!(
        kept.run().unwrap().as_ref(),
        Some(&rollout),
        "the engine can resume from it"
    );

    // The service catches up with generation 2; the conditions that did not change keep their
    // transition time.
    let newer =
        MeshRolloutStatus::from_rollout(&rollout, after.meta().generation, None, Some(&status));
    service
        .patch_status(name, &ours, &Patch::Apply(apply_status(&newer)))
        .await
        .unwrap();
    let stored = serde_json::to_value(gitops.get(name).await.unwrap()).unwrap();
    assert_eq!(stored["status"]["observedGeneration"], 2);
    assert_eq!(
        stored["status"]["run"]["spec"]["name"], name,
        "the view's apply leaves the record, which another field manager owns"
    );
    assert_eq!(
        stored["metadata"]["generation"], 2,
        "a status write is no new generation"
    );
    let paused_condition = stored["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Paused")
        .unwrap();
    assert_eq!(paused_condition["status"], "True");
    assert_eq!(paused_condition["reason"], "PauseStep");
    assert_eq!(paused_condition["observedGeneration"], 2);
    let owners = owners(&stored);
    assert_eq!(owners["argocd"], ["f:spec"], "{owners:?}");
    assert_eq!(owners[FIELD_MANAGER], ["f:status"], "{owners:?}");

    // Status writes go through the subresource only: a status in a spec apply is ignored.
    let mut sneaky = serde_json::to_value(&paused).unwrap();
    sneaky["status"] = json!({"phase": "succeeded"});
    gitops
        .patch(name, &argocd, &Patch::Apply(&sneaky))
        .await
        .unwrap();
    assert_eq!(
        gitops.get(name).await.unwrap().status.unwrap().phase,
        Some(Phase::Paused)
    );

    // What people see.
    let table = setup.kubectl(&["get", "mro", "-n", setup.ns()]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "PHASE", "CANARY", "WEIGHT", "STEP", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..5], [name, "paused", "v2", "12.5%", "1"], "{table}");
    let wide = setup.kubectl(&[
        "get",
        "meshrollouts.meshcanary.io",
        name,
        "-n",
        setup.ns(),
        "-o",
        "wide",
    ]);
    assert!(
        wide.lines().next().unwrap().ends_with("PAUSED   MESSAGE"),
        "{wide}"
    );
    assert!(wide.contains("true     waiting at a pause step"), "{wide}");
    // The category lists it too.
    let category = setup.kubectl(&["get", "meshcanary", "-n", setup.ns(), "-o", "name"]);
    assert_eq!(category.trim(), format!("meshrollout.meshcanary.io/{name}"));

    // And the columns as the server has them.
    let crds: Api<CustomResourceDefinition> = Api::all(setup.admin.clone());
    let crd = serde_json::to_value(crds.get(MESHROLLOUT_CRD).await.unwrap()).unwrap();
    let columns: Vec<(&str, &str)> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["jsonPath"].as_str().unwrap()))
        .collect();
    assert_eq!(
        columns,
        [
            ("Phase", ".status.phase"),
            ("Canary", ".spec.canary"),
            ("Weight", ".status.canaryPercent"),
            ("Step", ".status.step"),
            ("Age", ".metadata.creationTimestamp"),
            ("Paused", ".spec.paused"),
            ("Message", ".status.message"),
        ]
    );
    gitops.delete(name, &DeleteParams::default()).await.unwrap();
}
