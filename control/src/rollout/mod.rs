//! Rollouts: what a user asks for ([`RolloutSpec`]), its validated plan, and where it stands
//! ([`RolloutStatus`]). The transitions between phases live in [`engine`].
//!
//! A rollout belongs to one route of the filter config, names its stable and canary variant, and
//! moves the canary's weight through a list of steps — or the Flagger-style shorthand
//! `progressive: {stepWeight, maxWeight, interval}` — then promotes: the canary gets 100 % and, on
//! finishing, becomes the route's new stable variant. A `mirror` step copies a share of the
//! route's other requests to the canary for a while (its responses are discarded), before the
//! canary serves anyone.

pub mod action;
pub mod analysis_spec;
pub mod engine;
pub mod workloads_spec;

pub use analysis_spec::{AnalysisSpec, AnalysisStatus, CheckRecord, Webhook, WebhookKind};
pub use workloads_spec::{
    Batch, BatchReplicas, DeploymentChange, PartitionHold, Replicas, ScaleDown, WorkloadStatus,
    Workloads,
};

use crate::error::{Error, Result};
use crate::time::{HumanDuration, Timestamp};
use kube::KubeSchema;
use meshcanary_core::config::TOTAL_WEIGHT;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;

/// Longest rollout name; rollout names are Kubernetes-style DNS labels.
pub const MAX_NAME_LEN: usize = 63;
/// At most this many steps in one rollout.
pub const MAX_STEPS: usize = 100;
/// How long a setWeight step waits, by default, for every proxy to run the new weight.
pub const DEFAULT_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a variant that a finished rollout leaves behind at 0 % stays on its route before it
/// is retired, when the spec sets no `retireAfter`.
pub const DEFAULT_RETIRE_AFTER: Duration = Duration::from_secs(60);
/// History entries kept per rollout (oldest dropped first).
pub const MAX_HISTORY: usize = 200;
/// The longest duration a rollout takes anywhere (timeout, pauses, intervals, hook timeouts):
/// a year. Anything longer is a typo or a probe (`300000000y` parses), and would only saturate
/// the clock arithmetic the engine does with it.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// A rollout as a user submits it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Unique name: lowercase letters, digits and `-`, at most 63 characters.
    pub name: String,
    /// The filter route this rollout changes (`routes[].name` in the filter config).
    pub route: String,
    /// The variant that has the traffic now. Must be a variant of the route.
    pub stable: String,
    /// The variant being rolled out. Added to the route at 0 % if it is not there yet.
    pub canary: String,
    /// The steps, in order. Give either `steps` or `progressive`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
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
    /// success, the canary after a rollback or abort) stays on the route before it is retired:
    /// removed from the route's variants with the QA rules that name it (default `60s`; `0s`
    /// retires at once). The grace lets in-flight requests and dashboards settle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_after: Option<HumanDuration>,
    /// Kubernetes mode: the Deployments behind the stable and canary variants. The rollout then
    /// scales the canary up before each weight, applies the weight only once enough of its
    /// replicas are ready, and scales down what it leaves behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workloads: Option<Workloads>,
}

fn default_true() -> bool {
    true
}

/// One step of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum Step {
    /// Set the canary's share of the route: `{"setWeight": {"percent": 10}}` or
    /// `{"setWeight": {"basisPoints": 1000}}`.
    SetWeight(Weight),
    /// Wait: `{"pause": {}}` until someone resumes, `{"pause": {"duration": "5m"}}` for a while.
    Pause(PauseStep),
    /// Copy a share of the requests the route's other variants serve to the canary, and discard
    /// the copies' responses, while the step lasts: `{"mirror": {"percent": 20, "duration":
    /// "5m"}}`. It holds like a pause (without `duration`, until resumed); the next step ends the
    /// mirror.
    Mirror(MirrorStep),
}

/// The MeshRollout CRD's schema of a step: an object with optional `setWeight`, `pause` and
/// `mirror` and a CEL rule that exactly one is given. The derived schema would say the same with `oneOf`, which
/// the API server reports without the step's path (`<nil>: "spec.steps[0]" must validate one and
/// only one schema`) and which stops it from running the CEL rules of the rest of the object.
impl JsonSchema for Step {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Step".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "One step of a rollout: exactly one of `setWeight` (set the canary's share of the route), `pause` (wait, for a while or until resumed) and `mirror` (copy a share of the route's requests to the canary, for a while or until resumed).",
            "type": "object",
            "properties": {
                "setWeight": generator.subschema_for::<Weight>(),
                "pause": generator.subschema_for::<PauseStep>(),
                "mirror": generator.subschema_for::<MirrorStep>(),
            },
            "x-kubernetes-validations": [{
                "rule": "[has(self.setWeight), has(self.pause), has(self.mirror)].filter(given, given).size() == 1",
                "message": "give exactly one of \"setWeight\", \"pause\" and \"mirror\"",
            }],
        })
    }
}

/// A weight, in percent (up to two decimals) or basis points. Exactly one is given.
///
/// In the MeshRollout CRD the API server checks the same: the ranges in the schema, the rest in
/// CEL (the rules below); [`Weight::checked`] stays the reference.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, ToSchema, KubeSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.percent) != has(self.basisPoints)")
        .message("give exactly one of \"percent\" and \"basisPoints\""),
    validation = Rule::new(WEIGHT_TWO_DECIMALS)
        .message("has more than two decimals (the resolution is 0.01 %)")
        .field_path(".percent"),
)]
pub struct Weight {
    /// Percent of the route's traffic, 0 to 100, at most two decimals (`12.5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: Option<f64>,
    /// Basis points of the route's traffic, 0 to 10000 (1 = 0.01 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 10_000))]
    pub basis_points: Option<u32>,
}

/// CEL: `percent`, when given and in range, has at most two decimals — within the same 1e-6 of
/// a whole number of basis points that [`Weight::checked`] allows (squared: CEL has no `abs`
/// without the math library).
const WEIGHT_TWO_DECIMALS: &str =
    "!has(self.percent) || self.percent < 0.0 || self.percent > 100.0 || \
    (self.percent * 100.0 - double(int(self.percent * 100.0 + 0.5))) * \
    (self.percent * 100.0 - double(int(self.percent * 100.0 + 0.5))) <= 0.000000000001";

impl Weight {
    /// A weight in basis points.
    pub fn basis_points(bp: u32) -> Weight {
        Weight {
            percent: None,
            basis_points: Some(bp),
        }
    }

    /// Validates and converts to basis points; `field` names it in errors (empty for a body that
    /// is just the weight).
    pub fn checked(&self, field: &str) -> Result<u32> {
        let at = |child: &str| match field {
            "" => child.to_string(),
            parent => format!("{parent}.{child}"),
        };
        match (self.percent, self.basis_points) {
            (Some(percent), None) => {
                let bp = percent * 100.0;
                if !(0.0..=100.0).contains(&percent) || !percent.is_finite() {
                    return Err(Error::invalid(
                        at("percent"),
                        format!("{percent} is not between 0 and 100"),
                    ));
                }
                if (bp - bp.round()).abs() > 1e-6 {
                    return Err(Error::invalid(
                        at("percent"),
                        format!("{percent} has more than two decimals (the resolution is 0.01 %)"),
                    ));
                }
                Ok(bp.round() as u32)
            }
            (None, Some(bp)) if bp <= TOTAL_WEIGHT => Ok(bp),
            (None, Some(bp)) => Err(Error::invalid(
                at("basisPoints"),
                format!("{bp} exceeds {TOTAL_WEIGHT}"),
            )),
            (Some(_), Some(_)) => Err(Error::invalid(
                at("basisPoints"),
                "give exactly one of \"percent\" and \"basisPoints\", not both",
            )),
            (None, None) => Err(Error::invalid(
                at("percent"),
                "missing: give exactly one of \"percent\" and \"basisPoints\"",
            )),
        }
    }
}

/// A pause step.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema, JsonSchema,
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PauseStep {
    /// How long to wait; without it the rollout waits for `resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<HumanDuration>,
}

/// A mirror step: the share of requests copied (in percent or basis points, exactly one, more
/// than 0) and how long the step holds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, ToSchema, KubeSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.percent) != has(self.basisPoints)")
        .message("give exactly one of \"percent\" and \"basisPoints\""),
    validation = Rule::new(WEIGHT_TWO_DECIMALS)
        .message("has more than two decimals (the resolution is 0.01 %)")
        .field_path(".percent"),
)]
pub struct MirrorStep {
    /// Percent of the requests on the route's other variants copied to the canary, more than 0
    /// and at most 100, at most two decimals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100), extend("exclusiveMinimum" = true, "minimum" = 0))]
    pub percent: Option<f64>,
    /// The same share in basis points, 1 to 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000))]
    pub basis_points: Option<u32>,
    /// How long the step mirrors; without it, until someone resumes the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<HumanDuration>,
}

impl MirrorStep {
    /// Validates the share and converts it to basis points; `field` names the step in errors.
    fn checked(&self, field: &str) -> Result<u32> {
        let share = Weight {
            percent: self.percent,
            basis_points: self.basis_points,
        }
        .checked(field)?;
        if share == 0 {
            let key = if self.percent.is_some() {
                "percent"
            } else {
                "basisPoints"
            };
            return Err(Error::invalid(
                format!("{field}.{key}"),
                "must be more than 0 (a step that mirrors nothing is a pause)",
            ));
        }
        Ok(share)
    }
}

/// The Flagger-style shorthand (percentages).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema, KubeSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxWeight >= self.stepWeight")
    .message("must not be below stepWeight")
    .field_path(".maxWeight"))]
pub struct Progressive {
    /// Percent added at each step.
    #[schemars(range(max = 100), extend("exclusiveMinimum" = true, "minimum" = 0))]
    pub step_weight: f64,
    /// The last weight before promotion, in percent.
    #[schemars(range(min = 0, max = 100))]
    pub max_weight: f64,
    /// How long each weight holds before the next.
    pub interval: HumanDuration,
}

/// A validated step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum PlanStep {
    /// Set the canary weight (basis points).
    SetWeight(u32),
    /// Wait this long, or (without a duration) until resumed.
    Pause(Option<HumanDuration>),
    /// Copy this share (basis points) of the route's other requests to the canary, for this
    /// long or (without a duration) until resumed.
    Mirror {
        /// Share of the requests copied, in basis points.
        #[serde(rename = "basisPoints")]
        basis_points: u32,
        /// How long the step holds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration: Option<HumanDuration>,
    },
}

impl PlanStep {
    /// For a step that holds (a pause, a mirror): for how long, `None` inside meaning until
    /// resumed. `None` for a `setWeight` step.
    pub fn holds(&self) -> Option<Option<HumanDuration>> {
        match *self {
            PlanStep::SetWeight(_) => None,
            PlanStep::Pause(duration) | PlanStep::Mirror { duration, .. } => Some(duration),
        }
    }
}

impl RolloutSpec {
    /// Validates everything that does not depend on the filter config and returns the plan.
    pub fn plan(&self) -> Result<Vec<PlanStep>> {
        check_name(&self.name)?;
        for (field, value) in [
            ("route", &self.route),
            ("stable", &self.stable),
            ("canary", &self.canary),
        ] {
            if value.is_empty() {
                return Err(Error::invalid(field, "must not be empty"));
            }
        }
        if self.stable == self.canary {
            return Err(Error::invalid("canary", "must differ from stable"));
        }
        let plan = match (&self.steps[..], &self.progressive) {
            ([], None) => {
                return Err(Error::invalid(
                    "steps",
                    "give \"steps\" or \"progressive\" (for example {\"stepWeight\": 10, \"maxWeight\": 50, \"interval\": \"1m\"})",
                ))
            }
            ([_, ..], Some(_)) => {
                return Err(Error::invalid(
                    "progressive",
                    "give either \"steps\" or \"progressive\", not both",
                ))
            }
            (steps, None) => steps
                .iter()
                .enumerate()
                .map(|(i, step)| match step {
                    Step::SetWeight(weight) => {
                        weight.checked(&format!("steps[{i}].setWeight")).map(PlanStep::SetWeight)
                    }
                    Step::Pause(pause) => Ok(PlanStep::Pause(pause.duration)),
                    Step::Mirror(mirror) => Ok(PlanStep::Mirror {
                        basis_points: mirror.checked(&format!("steps[{i}].mirror"))?,
                        duration: mirror.duration,
                    }),
                })
                .collect::<Result<Vec<_>>>()?,
            ([], Some(progressive)) => progressive.expand()?,
        };
        if let Some(analysis) = &self.analysis {
            analysis.check("analysis")?;
        }
        for (i, webhook) in self.webhooks.iter().enumerate() {
            webhook.check(&format!("webhooks[{i}]"))?;
        }
        if let Some(workloads) = &self.workloads {
            workloads.check("workloads")?;
            let steps = self.progressive.is_none().then_some("steps");
            workloads.check_plan("workloads", &plan, steps)?;
        }
        for (field, duration) in self.durations() {
            if duration.0 > MAX_DURATION {
                return Err(Error::invalid(
                    field,
                    format!(
                        "{duration} is longer than the limit of {} days",
                        MAX_DURATION.as_secs() / 86_400
                    ),
                ));
            }
        }
        if plan.len() > MAX_STEPS {
            return Err(Error::invalid(
                "steps",
                format!("{} steps exceed the limit of {MAX_STEPS}", plan.len()),
            ));
        }
        Ok(plan)
    }

    /// Every duration the spec gives, with its field path.
    fn durations(&self) -> Vec<(String, HumanDuration)> {
        let mut out = Vec::new();
        let mut add = |field: String, duration: Option<HumanDuration>| {
            if let Some(duration) = duration {
                out.push((field, duration));
            }
        };
        add("timeout".into(), self.timeout);
        add("propagationTimeout".into(), self.propagation_timeout);
        add("retireAfter".into(), self.retire_after);
        if let Some(workloads) = &self.workloads {
            add("workloads.readyTimeout".into(), workloads.ready_timeout);
        }
        for (i, step) in self.steps.iter().enumerate() {
            match step {
                Step::Pause(pause) => add(format!("steps[{i}].pause.duration"), pause.duration),
                Step::Mirror(mirror) => add(format!("steps[{i}].mirror.duration"), mirror.duration),
                Step::SetWeight(_) => {}
            }
        }
        if let Some(progressive) = &self.progressive {
            add("progressive.interval".into(), Some(progressive.interval));
        }
        if let Some(analysis) = &self.analysis {
            add("analysis.interval".into(), Some(analysis.interval));
        }
        for (i, hook) in self.webhooks.iter().enumerate() {
            add(format!("webhooks[{i}].timeout"), hook.timeout);
        }
        out
    }

    /// The retirement grace in force.
    pub fn retire_after(&self) -> Duration {
        self.retire_after.map_or(DEFAULT_RETIRE_AFTER, |d| d.0)
    }

    /// The propagation timeout in force.
    pub fn propagation_timeout(&self) -> Duration {
        self.propagation_timeout
            .map_or(DEFAULT_PROPAGATION_TIMEOUT, |d| d.0)
    }
}

impl Progressive {
    fn expand(&self) -> Result<Vec<PlanStep>> {
        let step = Weight {
            percent: Some(self.step_weight),
            basis_points: None,
        }
        .checked("progressive.stepWeight")?;
        let max = Weight {
            percent: Some(self.max_weight),
            basis_points: None,
        }
        .checked("progressive.maxWeight")?;
        if step == 0 {
            return Err(Error::invalid(
                "progressive.stepWeight",
                "must be greater than 0",
            ));
        }
        if max < step {
            return Err(Error::invalid(
                "progressive.maxWeight",
                format!(
                    "{} is below stepWeight {}",
                    self.max_weight, self.step_weight
                ),
            ));
        }
        if self.interval.0.is_zero() {
            return Err(Error::invalid(
                "progressive.interval",
                "must be longer than 0s",
            ));
        }
        let mut plan = Vec::new();
        let mut weight = step;
        while weight <= max {
            plan.push(PlanStep::SetWeight(weight));
            plan.push(PlanStep::Pause(Some(self.interval)));
            weight += step;
        }
        Ok(plan)
    }
}

fn check_name(name: &str) -> Result<()> {
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !valid_chars
        || name.starts_with('-')
        || name.ends_with('-')
    {
        return Err(Error::invalid(
            "name",
            format!("{name:?} must be 1-{MAX_NAME_LEN} lowercase letters, digits or '-', starting and ending with a letter or digit"),
        ));
    }
    Ok(())
}

/// Where a rollout is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// Created, not started yet.
    Initialized,
    /// Working through its steps.
    Progressing,
    /// Waiting for a person (`resume`, `promote` or `abort`); `status.message` says why.
    Paused,
    /// The canary has 100 %; finishing makes it the stable variant.
    Promoting,
    /// Done: the canary is the route's stable variant.
    Succeeded,
    /// Failed (timeout, or analysis): the canary is back to 0 %.
    RolledBack,
    /// Stopped by a person: the canary is back to 0 %.
    Aborted,
}

impl Phase {
    /// Every phase, for metrics.
    pub const ALL: [Phase; 7] = [
        Phase::Initialized,
        Phase::Progressing,
        Phase::Paused,
        Phase::Promoting,
        Phase::Succeeded,
        Phase::RolledBack,
        Phase::Aborted,
    ];

    /// Whether the rollout is over.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::RolledBack | Phase::Aborted)
    }

    /// The name used in the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Initialized => "initialized",
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::Promoting => "promoting",
            Phase::Succeeded => "succeeded",
            Phase::RolledBack => "rolledBack",
            Phase::Aborted => "aborted",
        }
    }
}

/// Why a paused rollout is paused; decides what `resume` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Hold {
    /// A `pause` step without duration: resume moves to the next step.
    PauseStep,
    /// Someone paused it: resume continues the current step where it was.
    Request,
    /// Someone set the weight by hand: resume continues the current step; the weight holds until
    /// the next `setWeight` step.
    HandWeight,
    /// The weight did not reach every proxy in time: resume waits for it again.
    Propagation,
    /// Too many analysis checks in a row were inconclusive (no traffic, stats unreadable): resume
    /// starts counting afresh.
    Inconclusive,
    /// The canary's Deployment did not have the replicas a weight needs ready in time: resume
    /// asks for them again and waits afresh.
    Workload,
    /// `workloads.batchPartition` holds the rollout after a batch: raising or removing it (not
    /// `resume`) lets it go on.
    Partition,
}

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Where the rollout is in its life: initialized, progressing, paused, promoting, or an end.
    pub phase: Phase,
    /// Why it is in this phase, for people.
    pub message: String,
    /// Index of the current step in `plan` (a finished rollout keeps its last step).
    pub step: usize,
    /// When the current step started (shifted forward by time spent paused in it).
    pub step_started_at: Timestamp,
    /// The canary's weight in basis points, as pushed to the filter.
    pub canary_weight: u32,
    /// The filter config generation that carries `canaryWeight`.
    pub weight_generation: u64,
    /// Why it is paused, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    /// When it was paused, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<Timestamp>,
    /// Milliseconds spent progressing before `progressingSince` (for the timeout).
    pub progressed_ms: u64,
    /// Since when it has been progressing, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progressing_since: Option<Timestamp>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// What happened, oldest first (the last 200 entries).
    pub history: Vec<Event>,
    /// Analysis checks and gates.
    #[serde(default)]
    pub analysis: AnalysisStatus,
    /// The scaling of the canary's Deployment (with `workloads`).
    #[serde(default)]
    pub workloads: WorkloadStatus,
}

/// One entry of a rollout's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// When the service recorded it.
    pub at: Timestamp,
    /// Phase afterwards.
    pub phase: Phase,
    /// Step afterwards.
    pub step: usize,
    /// Canary weight afterwards (basis points).
    pub canary_weight: u32,
    /// What happened.
    pub message: String,
}

/// A rollout with its validated plan and status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// What was asked for.
    pub spec: RolloutSpec,
    /// The steps the spec expands to (weights in basis points).
    pub plan: Vec<PlanStep>,
    /// Where it stands.
    pub status: RolloutStatus,
    /// Increases with every change; the `ETag` of the rollout, for `If-Match`.
    pub version: u64,
}

impl Rollout {
    /// A new rollout in phase `initialized` at the canary weight it starts from.
    pub fn new(spec: RolloutSpec, canary_weight: u32, now: Timestamp) -> Result<Rollout> {
        let plan = spec.plan()?;
        Ok(Rollout {
            spec,
            plan,
            status: RolloutStatus {
                phase: Phase::Initialized,
                message: "created".into(),
                step: 0,
                step_started_at: now,
                canary_weight,
                weight_generation: 0,
                hold: None,
                paused_at: None,
                progressed_ms: 0,
                progressing_since: None,
                created_at: now,
                updated_at: now,
                history: vec![Event {
                    at: now,
                    phase: Phase::Initialized,
                    step: 0,
                    canary_weight,
                    message: "created".into(),
                }],
                analysis: AnalysisStatus::default(),
                workloads: WorkloadStatus::default(),
            },
            version: 1,
        })
    }

    /// The hooks of one kind.
    pub fn webhooks(&self, kind: WebhookKind) -> impl Iterator<Item = &Webhook> {
        self.spec.webhooks.iter().filter(move |w| w.kind == kind)
    }

    /// The share of requests (basis points) copied to the canary now: while the rollout runs a
    /// `mirror` step (progressing, or paused in it). Leaving the step, or the rollout ending,
    /// ends the mirror.
    pub fn mirror(&self) -> Option<u32> {
        if !matches!(self.status.phase, Phase::Progressing | Phase::Paused) {
            return None;
        }
        match self.plan.get(self.status.step) {
            Some(PlanStep::Mirror { basis_points, .. }) => Some(*basis_points),
            _ => None,
        }
    }

    /// Time spent progressing so far.
    pub fn progressed(&self, now: Timestamp) -> Duration {
        let running = self
            .status
            .progressing_since
            .map_or(Duration::ZERO, |since| now.since(since));
        Duration::from_millis(self.status.progressed_ms) + running
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(extra: serde_json::Value) -> std::result::Result<RolloutSpec, serde_json::Error> {
        let mut value =
            json!({"name": "reviews-v2", "route": "reviews", "stable": "v1", "canary": "v2"});
        for (k, v) in extra.as_object().unwrap() {
            value[k] = v.clone();
        }
        serde_json::from_value(value)
    }

    #[test]
    fn plans_from_steps_and_shorthand() {
        let steps = spec(json!({"steps": [
            {"mirror": {"percent": 20, "duration": "1m"}}, {"mirror": {"basisPoints": 5}},
            {"setWeight": {"percent": 10}}, {"pause": {}}, {"setWeight": {"basisPoints": 5000}},
            {"pause": {"duration": "30s"}}, {"setWeight": {"percent": 12.5}}
        ]}))
        .unwrap();
        assert_eq!(
            steps.plan().unwrap(),
            vec![
                PlanStep::Mirror {
                    basis_points: 2000,
                    duration: Some(HumanDuration(Duration::from_secs(60)))
                },
                PlanStep::Mirror {
                    basis_points: 5,
                    duration: None
                },
                PlanStep::SetWeight(1000),
                PlanStep::Pause(None),
                PlanStep::SetWeight(5000),
                PlanStep::Pause(Some(HumanDuration(Duration::from_secs(30)))),
                PlanStep::SetWeight(1250),
            ]
        );
        let short =
            spec(json!({"progressive": {"stepWeight": 10, "maxWeight": 30, "interval": "90s"}}))
                .unwrap();
        let interval = Some(HumanDuration(Duration::from_secs(90)));
        assert_eq!(
            short.plan().unwrap(),
            vec![
                PlanStep::SetWeight(1000),
                PlanStep::Pause(interval),
                PlanStep::SetWeight(2000),
                PlanStep::Pause(interval),
                PlanStep::SetWeight(3000),
                PlanStep::Pause(interval),
            ]
        );
        assert!(short.auto_finish, "autoFinish defaults to true");
    }

    #[test]
    fn invalid_specs_name_the_field() {
        let cases: Vec<(serde_json::Value, &str, &str)> = vec![
            (json!({}), "steps", "give \"steps\" or \"progressive\""),
            (json!({"name": "Reviews"}), "name", "lowercase"),
            (
                json!({"name": "-x", "steps": [{"pause": {}}]}),
                "name",
                "lowercase",
            ),
            (
                json!({"canary": "v1", "steps": [{"pause": {}}]}),
                "canary",
                "must differ",
            ),
            (
                json!({"route": "", "steps": [{"pause": {}}]}),
                "route",
                "must not be empty",
            ),
            (
                json!({"steps": [{"setWeight": {"percent": 101}}]}),
                "steps[0].setWeight.percent",
                "not between 0 and 100",
            ),
            (
                json!({"steps": [{"pause": {}}, {"setWeight": {"percent": 1.234}}]}),
                "steps[1].setWeight.percent",
                "two decimals",
            ),
            (
                json!({"steps": [{"setWeight": {"basisPoints": 10001}}]}),
                "steps[0].setWeight.basisPoints",
                "exceeds 10000",
            ),
            (
                json!({"steps": [{"setWeight": {}}]}),
                "steps[0].setWeight.percent",
                "missing: give exactly one",
            ),
            (
                json!({"steps": [{"setWeight": {"percent": 1, "basisPoints": 100}}]}),
                "steps[0].setWeight.basisPoints",
                "not both",
            ),
            (
                json!({"steps": [{"mirror": {"percent": 120, "duration": "1m"}}]}),
                "steps[0].mirror.percent",
                "not between 0 and 100",
            ),
            (
                json!({"steps": [{"pause": {}}, {"mirror": {"percent": 0}}]}),
                "steps[1].mirror.percent",
                "must be more than 0",
            ),
            (
                json!({"steps": [{"mirror": {"basisPoints": 0}}]}),
                "steps[0].mirror.basisPoints",
                "must be more than 0",
            ),
            (
                json!({"steps": [{"mirror": {"basisPoints": 10001}}]}),
                "steps[0].mirror.basisPoints",
                "exceeds 10000",
            ),
            (
                json!({"steps": [{"mirror": {"duration": "1m"}}]}),
                "steps[0].mirror.percent",
                "missing: give exactly one",
            ),
            (
                json!({"steps": [{"mirror": {"percent": 2.345}}]}),
                "steps[0].mirror.percent",
                "two decimals",
            ),
            (
                json!({"steps": [{"mirror": {"percent": 20, "duration": "2y"}}]}),
                "steps[0].mirror.duration",
                "longer than the limit",
            ),
            (
                json!({"steps": [{"pause": {"duration": "300000000y"}}]}),
                "steps[0].pause.duration",
                "300000000years is longer than the limit of 365 days",
            ),
            (
                json!({"steps": [{"pause": {}}], "timeout": "366d"}),
                "timeout",
                "longer than the limit",
            ),
            (
                json!({"steps": [{"pause": {}}], "propagationTimeout": "99999999999999999999s"}),
                "propagationTimeout",
                "longer than the limit",
            ),
            (
                json!({"progressive": {"stepWeight": 10, "maxWeight": 50, "interval": "400d"}}),
                "progressive.interval",
                "longer than the limit",
            ),
            (
                json!({"steps": [{"pause": {}}], "analysis": {"interval": "1000y"}}),
                "analysis.interval",
                "longer than the limit",
            ),
            (
                json!({"steps": [{"pause": {}}], "webhooks": [{"name": "h", "type": "rollout", "url": "http://h/", "timeout": "2y"}]}),
                "webhooks[0].timeout",
                "not between 100ms and 1m",
            ),
            (
                json!({"steps": [{"pause": {}}], "progressive": {"stepWeight": 10, "maxWeight": 50, "interval": "1m"}}),
                "progressive",
                "not both",
            ),
            (
                json!({"progressive": {"stepWeight": 0, "maxWeight": 50, "interval": "1m"}}),
                "progressive.stepWeight",
                "greater than 0",
            ),
            (
                json!({"progressive": {"stepWeight": 60, "maxWeight": 50, "interval": "1m"}}),
                "progressive.maxWeight",
                "below stepWeight",
            ),
            (
                json!({"progressive": {"stepWeight": 10, "maxWeight": 50, "interval": "0s"}}),
                "progressive.interval",
                "longer than 0s",
            ),
            (
                json!({"steps": vec![json!({"pause": {}}); 101]}),
                "steps",
                "101 steps exceed",
            ),
            (
                json!({"steps": [{"setWeight": {"percent": 10}}, {"pause": {}}, {"setWeight": {"percent": 30}}],
                       "workloads": {"stable": "a", "canary": "b", "batches": [
                           {"replicas": 1, "weight": {"percent": 10}}, {"replicas": 2, "weight": {"percent": 50}}]}}),
                "steps[2].setWeight",
                "30% is no batch's weight (workloads.batches have 10%, 50%)",
            ),
            (
                json!({"steps": [{"setWeight": {"percent": 10}}],
                       "workloads": {"stable": "a", "canary": "b", "batches": [
                           {"replicas": 1, "weight": {"percent": 10}}, {"replicas": 2, "weight": {"percent": 50}}]}}),
                "workloads.batches[1].weight",
                "no setWeight step sets 50%",
            ),
            (
                json!({"progressive": {"stepWeight": 10, "maxWeight": 20, "interval": "1m"},
                       "workloads": {"stable": "a", "canary": "b", "batches": [
                           {"replicas": 1, "weight": {"percent": 10}}]}}),
                "progressive",
                "20% is no batch's weight",
            ),
            (
                json!({"steps": [{"setWeight": {"percent": 10}}],
                       "workloads": {"stable": "a", "canary": "b", "batches": [
                           {"replicas": 1, "weight": {"percent": 10}}], "batchPartition": 3}}),
                "workloads.batchPartition",
                "past the last batch",
            ),
        ];
        for (extra, field, reason) in cases {
            let error = spec(extra.clone()).unwrap().plan().unwrap_err();
            let Error::Invalid {
                field: got,
                reason: why,
            } = &error
            else {
                panic!("{error:?}")
            };
            assert_eq!(got, field, "{extra}");
            assert!(why.contains(reason), "{extra}: {why}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_durations_are_rejected_by_serde() {
        assert!(spec(json!({"stepz": []}))
            .unwrap_err()
            .to_string()
            .contains("unknown field `stepz`"));
        assert!(spec(json!({"steps": [{"pause": {"duration": "soon"}}]}))
            .unwrap_err()
            .to_string()
            .contains("not a duration"));
        assert!(
            spec(json!({"steps": [{"mirror": {"percent": 5, "to": "v3"}}]}))
                .unwrap_err()
                .to_string()
                .contains("unknown field `to`")
        );
        assert!(spec(json!({"steps": [{"wait": {}}]}))
            .unwrap_err()
            .to_string()
            .contains("unknown variant `wait`"));
    }
}
