//! The MeshRollout resource: its spec, the derive that makes the Kubernetes type, and the spec
//! checked by the same rules as the HTTP API.
//!
//! The spec's rollout fields are [`RolloutSpec`]'s, with the same types and the same serde
//! shape, so a rollout body sent to `POST /v1/rollouts` and a MeshRollout's `spec` are the same
//! JSON (less `name`, which is `metadata.name`; plus `target` and `paused`). The schema the API
//! server enforces is derived from those types; it catches what it can express, and
//! [`CheckedMeshRollout`] catches the rest exactly as the API does.

use super::status::MeshRolloutStatus;
use crate::error::{Error, Result};
use crate::rollout::{
    AnalysisSpec, PlanStep, Progressive, RolloutSpec, Step, Webhook, Workloads, MAX_NAME_LEN,
    MAX_STEPS,
};
use crate::time::HumanDuration;
use kube::{CustomResource, KubeSchema, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// CEL: the resource's name is a rollout name (the API server alone allows DNS subdomains:
/// dots, 253 characters).
const NAME_RULE: &str =
    "size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')";

/// CEL: steps given (a non-empty list).
const HAS_STEPS: &str = "(has(self.steps) && size(self.steps) > 0)";

/// What a MeshRollout asks for: the API's rollout body, the WasmPlugin it acts on, and whether
/// it should hold.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "meshcanary.io",
    version = "v1alpha1",
    kind = "MeshRollout",
    plural = "meshrollouts",
    namespaced,
    status = "MeshRolloutStatus",
    shortname = "mro",
    category = "meshcanary",
    derive = "PartialEq",
    doc = "A progressive rollout of a canary variant through meshcanary's filter: the steps it takes, the analysis that judges it, and where it stands.",
    label("app.kubernetes.io/part-of", "meshcanary"),
    validation = Rule::new(NAME_RULE).message(
        "metadata.name must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Where the rollout is in its life"),
    printcolumn(name = "Canary", type_ = "string", json_path = ".spec.canary", description = "The variant being rolled out"),
    printcolumn(name = "Weight", type_ = "string", json_path = ".status.canaryPercent", description = "The canary's share of the route, as pushed to the proxies"),
    printcolumn(name = "Step", type_ = "integer", json_path = ".status.step", description = "Index of the current step of the plan"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Paused", type_ = "boolean", json_path = ".spec.paused", priority = 1, description = "Whether the spec asks the rollout to hold"),
    printcolumn(name = "Message", type_ = "string", json_path = ".status.message", priority = 1, description = "Why it is in this phase"),
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.stable != self.canary")
        .message("must differ from spec.stable")
        .field_path(".canary"),
    validation = Rule::new(format!("{HAS_STEPS} || has(self.progressive)"))
        .message("give spec.steps or spec.progressive (for example {stepWeight: 10, maxWeight: 50, interval: 1m})")
        .field_path(".steps"),
    validation = Rule::new(format!("!({HAS_STEPS} && has(self.progressive))"))
        .message("give either spec.steps or spec.progressive, not both")
        .field_path(".progressive"),
)]
pub struct MeshRolloutSpec {
    /// Where the rollout acts: the WasmPlugin whose filter config holds `route`.
    pub target: Target,
    /// The filter route this rollout changes (`routes[].name` in the filter config).
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub route: String,
    /// The variant that has the traffic now. Must be a variant of the route.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub stable: String,
    /// The variant being rolled out. Added to the route at 0 % if it is not there yet.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub canary: String,
    /// The steps, in order. Give either `steps` or `progressive`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub steps: Vec<Step>,
    /// Flagger-style shorthand: raise the canary by `stepWeight` every `interval` up to
    /// `maxWeight`, then promote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progressive: Option<Progressive>,
    /// Roll back if the rollout has been progressing (not counting time paused) longer than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// After promotion, make the canary the route's stable variant at once (default `true`).
    /// With `false` the rollout waits in phase `promoting` for the `finish` action.
    #[serde(default = "default_true")]
    pub auto_finish: bool,
    /// How long a `setWeight` step waits for every proxy to run the new weight before the rollout
    /// pauses and says so (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation_timeout: Option<HumanDuration>,
    /// Automated analysis of the canary while the rollout progresses: each `setWeight` step moves
    /// on only after a check passes at that weight, failed checks roll back, and promotion needs a
    /// passing last check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
    /// HTTP hooks: gates before the start and before promotion, notifications at each step and
    /// at the end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<Webhook>,
    /// How long after the rollout ends the variant it leaves at 0 % (the old stable after
    /// success, the canary after a rollback or abort) stays on the route before it is retired,
    /// with the QA rules that name it (default `60s`; `0s` retires at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_after: Option<HumanDuration>,
    /// The Deployments behind the stable and canary (Kubernetes mode): the rollout scales the
    /// canary up before each weight, moves the weight only onto ready replicas, and scales down
    /// what it leaves behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workloads: Option<Workloads>,
    /// Hold the rollout where it is (a GitOps pause: set it in Git, the rollout pauses; clear it,
    /// it resumes). Default `false`.
    #[serde(default)]
    pub paused: bool,
}

fn default_true() -> bool {
    true
}

/// The WasmPlugin a MeshRollout acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Target {
    /// The WasmPlugin's name (`metadata.name`); the control service drives one WasmPlugin
    /// (its `--wasmplugin`) and refuses rollouts for another.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub wasm_plugin: String,
    /// The WasmPlugin's namespace; without it, the namespace the control service manages (its
    /// `--kube-namespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub namespace: Option<String>,
}

impl MeshRolloutSpec {
    /// The API's rollout spec this resource asks for, named `name` (`metadata.name`), unchecked.
    pub fn rollout_spec(&self, name: &str) -> RolloutSpec {
        RolloutSpec {
            name: name.to_string(),
            route: self.route.clone(),
            stable: self.stable.clone(),
            canary: self.canary.clone(),
            steps: self.steps.clone(),
            progressive: self.progressive,
            timeout: self.timeout,
            auto_finish: self.auto_finish,
            propagation_timeout: self.propagation_timeout,
            analysis: self.analysis.clone(),
            webhooks: self.webhooks.clone(),
            retire_after: self.retire_after,
            workloads: self.workloads.clone(),
        }
    }

    /// The resource spec for an API rollout spec (its `name` becomes `metadata.name`).
    pub fn from_rollout_spec(spec: &RolloutSpec, target: Target, paused: bool) -> MeshRolloutSpec {
        MeshRolloutSpec {
            target,
            route: spec.route.clone(),
            stable: spec.stable.clone(),
            canary: spec.canary.clone(),
            steps: spec.steps.clone(),
            progressive: spec.progressive,
            timeout: spec.timeout,
            auto_finish: spec.auto_finish,
            propagation_timeout: spec.propagation_timeout,
            analysis: spec.analysis.clone(),
            webhooks: spec.webhooks.clone(),
            retire_after: spec.retire_after,
            workloads: spec.workloads.clone(),
            paused,
        }
    }
}

/// A MeshRollout whose spec passed every rule the HTTP API applies to a rollout body: what a
/// reconciler acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedMeshRollout {
    /// The rollout as the API would have received it (`name` from `metadata.name`).
    pub spec: RolloutSpec,
    /// The steps the spec expands to (weights in basis points).
    pub plan: Vec<PlanStep>,
    /// The WasmPlugin it acts on.
    pub target: Target,
    /// Whether the spec asks the rollout to hold.
    pub paused: bool,
    /// `metadata.generation` of the checked spec (for `status.observedGeneration`), if known.
    pub generation: Option<i64>,
}

impl TryFrom<&MeshRollout> for CheckedMeshRollout {
    type Error = Error;

    /// Checks the resource as the API checks a rollout body; an error names the field as the
    /// resource has it: `metadata.name`, `spec.steps[1].setWeight.percent`, `spec.target.wasmPlugin`.
    fn try_from(resource: &MeshRollout) -> Result<CheckedMeshRollout> {
        let name = resource.name_any();
        if name.is_empty() {
            return Err(Error::invalid("metadata.name", "must not be empty"));
        }
        let spec = &resource.spec;
        if spec.target.wasm_plugin.is_empty() {
            return Err(Error::invalid(
                "spec.target.wasmPlugin",
                "must not be empty",
            ));
        }
        if spec.target.namespace.as_deref() == Some("") {
            return Err(Error::invalid(
                "spec.target.namespace",
                "must not be empty (leave it out for the service's namespace)",
            ));
        }
        let rollout = spec.rollout_spec(&name);
        let plan = rollout.plan().map_err(in_resource)?;
        Ok(CheckedMeshRollout {
            spec: rollout,
            plan,
            target: spec.target.clone(),
            paused: spec.paused,
            generation: resource.metadata.generation,
        })
    }
}

/// An API error's field as the resource names it: the rollout's name is `metadata.name`, every
/// other field sits under `spec`.
fn in_resource(error: Error) -> Error {
    match error {
        Error::Invalid { field, reason } => {
            let field = match field.as_str() {
                "name" => "metadata.name".to_string(),
                "" => "spec".to_string(),
                _ => format!("spec.{field}"),
            };
            Error::Invalid { field, reason }
        }
        other => other,
    }
}

// The schema's literal bounds are the API's limits.
const _: () = assert!(MAX_STEPS == 100 && MAX_NAME_LEN == 63);
const _: () = assert!(meshcanary_core::config::MAX_NAME_LEN == 64);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn resource(spec: Value) -> MeshRollout {
        resource_named("reviews-v2", spec)
    }

    fn resource_named(name: &str, extra: Value) -> MeshRollout {
        let mut spec = json!({
            "target": {"wasmPlugin": "reviews-canary"},
            "route": "reviews", "stable": "v1", "canary": "v2",
        });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        serde_json::from_value(json!({
            "apiVersion": "meshcanary.io/v1alpha1",
            "kind": "MeshRollout",
            "metadata": {"name": name, "namespace": "meshcanary-system", "generation": 3},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn a_valid_resource_is_the_api_rollout_it_names() {
        let checked = CheckedMeshRollout::try_from(&resource(json!({
            "steps": [{"setWeight": {"percent": 10}}, {"pause": {"duration": "1m"}}],
            "paused": true,
        })))
        .unwrap();
        assert_eq!(checked.spec.name, "reviews-v2");
        assert_eq!(
            checked.plan,
            vec![
                PlanStep::SetWeight(1000),
                PlanStep::Pause(Some("1m".parse().unwrap()))
            ]
        );
        assert!(checked.paused);
        assert!(checked.spec.auto_finish, "the API's default");
        assert_eq!(checked.generation, Some(3));
        assert_eq!(checked.target.wasm_plugin, "reviews-canary");
    }

    /// The spec is the API's rollout body: the same JSON, less `name`, plus `target` and `paused`.
    #[test]
    fn the_spec_is_the_api_body_as_json() {
        let body = json!({
            "name": "reviews-v2", "route": "reviews", "stable": "v1", "canary": "v2",
            "steps": [{"setWeight": {"basisPoints": 500}}, {"pause": {}}],
            "timeout": "1h", "autoFinish": false, "propagationTimeout": "45s",
            "analysis": {"interval": "1m", "minSuccessRate": 99.5},
            "webhooks": [{"name": "load", "type": "rollout", "url": "http://load/", "metadata": {"k": "v"}}],
        });
        let api: RolloutSpec = serde_json::from_value(body.clone()).unwrap();
        let target = Target {
            wasm_plugin: "reviews-canary".into(),
            namespace: Some("shop".into()),
        };
        let spec = MeshRolloutSpec::from_rollout_spec(&api, target, false);
        let mut as_json = serde_json::to_value(&spec).unwrap();
        let extra = as_json.as_object_mut().unwrap();
        assert_eq!(
            extra.remove("target"),
            Some(json!({"wasmPlugin": "reviews-canary", "namespace": "shop"}))
        );
        assert_eq!(extra.remove("paused"), Some(json!(false)));
        let mut expected = serde_json::to_value(&api).unwrap();
        expected.as_object_mut().unwrap().remove("name");
        assert_eq!(as_json, expected);
        assert_eq!(spec.rollout_spec("reviews-v2"), api);
    }

    /// The conversion refuses what `POST /v1/rollouts` refuses, naming the field as the resource
    /// has it.
    #[test]
    fn the_conversion_rejects_what_the_api_rejects_naming_spec_fields() {
        let cases: Vec<(&str, Value, &str, &str)> = vec![
            (
                "reviews-v2",
                json!({}),
                "spec.steps",
                "give \"steps\" or \"progressive\"",
            ),
            (
                "Reviews",
                json!({"steps": [{"pause": {}}]}),
                "metadata.name",
                "lowercase",
            ),
            (
                "-x",
                json!({"steps": [{"pause": {}}]}),
                "metadata.name",
                "lowercase",
            ),
            (
                "reviews-v2",
                json!({"canary": "v1", "steps": [{"pause": {}}]}),
                "spec.canary",
                "must differ",
            ),
            (
                "reviews-v2",
                json!({"route": "", "steps": [{"pause": {}}]}),
                "spec.route",
                "must not be empty",
            ),
            (
                "reviews-v2",
                json!({"steps": [{"setWeight": {"percent": 101}}]}),
                "spec.steps[0].setWeight.percent",
                "not between 0 and 100",
            ),
            (
                "reviews-v2",
                json!({"steps": [{"pause": {}}, {"setWeight": {"percent": 1.234}}]}),
                "spec.steps[1].setWeight.percent",
                "two decimals",
            ),
            (
                "reviews-v2",
                json!({"steps": [{"setWeight": {"basisPoints": 10001}}]}),
                "spec.steps[0].setWeight.basisPoints",
                "exceeds 10000",
            ),
            (
                "reviews-v2",
                json!({"steps": [{"setWeight": {}}]}),
                "spec.steps[0].setWeight.percent",
                "missing: give exactly one",
            ),
            (
                "reviews-v2",
                json!({"steps": [{"pause": {"duration": "366d"}}]}),
                "spec.steps[0].pause.duration",
                "longer than the limit of 365 days",
            ),
            (
                "reviews-v2",
                json!({"steps": [{"pause": {}}], "progressive": {"stepWeight": 10, "maxWeight": 50, "interval": "1m"}}),
                "spec.progressive",
                "not both",
            ),
            (
                "reviews-v2",
                json!({"progressive": {"stepWeight": 60, "maxWeight": 50, "interval": "1m"}}),
                "spec.progressive.maxWeight",
                "below stepWeight",
            ),
            (
                "reviews-v2",
                json!({"progressive": {"stepWeight": 10, "maxWeight": 50, "interval": "0s"}}),
                "spec.progressive.interval",
                "longer than 0s",
            ),
            (
                "reviews-v2",
                json!({"steps": [{"pause": {}}], "analysis": {"compareWithStable": false}}),
                "spec.analysis",
                "judges nothing",
            ),
            (
                "reviews-v2",
                json!({"steps": [{"pause": {}}], "webhooks": [{"name": "h", "type": "rollout", "url": "ftp://h/"}]}),
                "spec.webhooks[0].url",
                "not an http:// or https:// URL",
            ),
            (
                "reviews-v2",
                json!({"steps": vec![json!({"pause": {}}); 101]}),
                "spec.steps",
                "101 steps exceed",
            ),
            (
                "reviews-v2",
                json!({"target": {"wasmPlugin": ""}, "steps": [{"pause": {}}]}),
                "spec.target.wasmPlugin",
                "must not be empty",
            ),
            (
                "reviews-v2",
                json!({"target": {"wasmPlugin": "p", "namespace": ""}, "steps": [{"pause": {}}]}),
                "spec.target.namespace",
                "must not be empty",
            ),
        ];
        for (name, extra, field, reason) in cases {
            let error =
                CheckedMeshRollout::try_from(&resource_named(name, extra.clone())).unwrap_err();
            let Error::Invalid {
                field: got,
                reason: why,
            } = &error
            else {
                panic!("{error:?}")
            };
            assert_eq!(got, field, "{name} {extra}");
            assert!(why.contains(reason), "{name} {extra}: {why}");
            // The API refuses the same body for the same reason.
            let mut body = extra.clone();
            let body = body.as_object_mut().unwrap();
            body.remove("target");
            let api = resource_named(name, Value::Object(body.clone()))
                .spec
                .rollout_spec(name);
            if !field.starts_with("spec.target") {
                let api_error = api.plan().unwrap_err().to_string();
                assert!(api_error.contains(reason), "{api_error}");
            }
        }
    }

    #[test]
    fn unknown_spec_fields_are_refused() {
        let error = serde_json::from_value::<MeshRollout>(json!({
            "apiVersion": "meshcanary.io/v1alpha1", "kind": "MeshRollout",
            "metadata": {"name": "x"},
            "spec": {"target": {"wasmPlugin": "p"}, "route": "r", "stable": "a", "canary": "b", "stepz": []},
        }))
        .unwrap_err();
        assert!(
            error.to_string().contains("unknown field `stepz`"),
            "{error}"
        );
    }
}
