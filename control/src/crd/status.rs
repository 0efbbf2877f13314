//! The MeshRollout's status subresource: what `kubectl get mro` and GitOps tools show, and what
//! a reconciler needs to pick a rollout up where another replica left it.
//!
//! The control service writes it by server-side apply with its own field manager
//! ([`FIELD_MANAGER`](super::FIELD_MANAGER)), so a GitOps tool that applies the spec under its own
//! manager never conflicts with it. Three layers:
//!
//! - for people and tools: `phase`, `message`, `step`, `canaryWeight` (and `canaryPercent` for the
//!   printer column), `propagation`, `lastCheck`, and the standard `conditions` (`Progressing`,
//!   `Paused`, `Succeeded`, `Failed`, each a `metav1.Condition`) with `observedGeneration`;
//! - a short history: the last [`MAX_STATUS_HISTORY`] entries;
//! - `run`: the service's durable record of the rollout this resource started — the spec it
//!   started from, its plan and the engine's whole state — written by the state store
//!   ([`crate::store::resources`]) in the same save that changes it, conditional on the record
//!   it last wrote. A new leader resumes from it; everything above is a view of it.

use crate::analysis::judge::Verdict;
use crate::rollout::{Event, Hold, Phase, Rollout, RolloutStatus, MAX_HISTORY};
use crate::time::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// History entries a MeshRollout's status keeps (oldest dropped first). The status is rewritten
/// on every change of the rollout and sent whole to every watcher (kubectl, GitOps caches), so it
/// stays small; the service's own state keeps [`MAX_HISTORY`] entries.
pub const MAX_STATUS_HISTORY: usize = 20;

/// Reasons of the last check kept in the status (a check gives one per threshold, so a handful).
pub const MAX_CHECK_REASONS: usize = 10;

/// The condition types, in the order the status lists them.
pub const CONDITION_TYPES: [&str; 4] = ["Progressing", "Paused", "Succeeded", "Failed"];

/// Where a MeshRollout stands, as the control service reports it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct MeshRolloutStatus {
    /// The `metadata.generation` of the spec this status reflects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Why it is in this phase, for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Index of the current step of the plan (a finished rollout keeps its last step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    /// The canary's weight in basis points, as pushed to the filter.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 10_000))]
    pub canary_weight: Option<u32>,
    /// The same in percent, for people (`12.5%`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary_percent: Option<String>,
    /// Whether the proxies run the weight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propagation: Option<PropagationStatus>,
    /// The latest analysis check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_check: Option<LastCheck>,
    /// `Progressing`, `Paused`, `Succeeded` and `Failed`, each `True` or `False` with a reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// What happened, oldest first: the last 20 entries.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub history: Vec<Event>,
    /// The service's durable record of this resource's rollout (the run's spec, plan and
    /// engine state, as the HTTP API shows a rollout). Written only by the service, by its
    /// state store, never by the status writes of the view above; do not edit it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "run_schema")]
    pub run: Option<serde_json::Value>,
}

/// Whether the proxies run the rollout's weight.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct PropagationStatus {
    /// The filter config generation that carries `canaryWeight`.
    pub weight_generation: u64,
    /// Whether every watched proxy runs that generation (or a later one); unset until known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<bool>,
    /// How far it got, for people (`applied on 3/4 proxies`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

/// The latest analysis check, in short.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastCheck {
    /// When its window ended.
    pub at: Timestamp,
    /// The step the rollout was in.
    pub step: u32,
    /// The canary weight then (basis points).
    pub canary_weight: u32,
    /// The verdict.
    pub verdict: Verdict,
    /// One sentence per threshold, with the measured numbers (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub reasons: Vec<String>,
}

/// The schema of `status.run`: an object the API server keeps as it is (its shape is the HTTP
/// API's rollout, documented there); only the service writes it.
fn run_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "The service's durable record of this resource's rollout: the spec the run started from, its plan and the engine's state, as the HTTP API shows a rollout. Written only by the service.",
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

impl MeshRolloutStatus {
    /// The status of `rollout`: `generation` is the spec's `metadata.generation` it reflects,
    /// `propagation` what the service knows of the proxies (without it: the weight generation,
    /// applied unknown), `previous` the status as stored (its conditions keep their
    /// `lastTransitionTime` while their status does not change).
    pub fn from_rollout(
        rollout: &Rollout,
        generation: Option<i64>,
        propagation: Option<PropagationStatus>,
        previous: Option<&MeshRolloutStatus>,
    ) -> MeshRolloutStatus {
        let status = &rollout.status;
        let last_check = status.analysis.checks.last().map(|record| LastCheck {
            at: record.at,
            step: saturating_u32(record.step),
            canary_weight: record.canary_weight,
            verdict: record.check.verdict,
            reasons: record
                .check
                .reasons
                .iter()
                .take(MAX_CHECK_REASONS)
                .cloned()
                .collect(),
        });
        let skip = status.history.len().saturating_sub(MAX_STATUS_HISTORY);
        MeshRolloutStatus {
            observed_generation: generation,
            phase: Some(status.phase),
            message: Some(status.message.clone()),
            step: Some(saturating_u32(status.step)),
            canary_weight: Some(status.canary_weight),
            canary_percent: Some(crate::view::percent(status.canary_weight)),
            propagation: Some(propagation.unwrap_or(PropagationStatus {
                weight_generation: status.weight_generation,
                applied: None,
                summary: None,
            })),
            last_check,
            conditions: conditions(
                status,
                generation,
                previous.map_or(&[][..], |p| &p.conditions[..]),
            ),
            history: status.history[skip..].to_vec(),
            run: None,
        }
    }

    /// The rollout recorded in `run`, if any; an error says which field of it is wrong.
    pub fn run(&self) -> Result<Option<Rollout>, serde_path_to_error::Error<serde_json::Error>> {
        self.run
            .as_ref()
            .map(serde_path_to_error::deserialize)
            .transpose()
    }

    /// When the run recorded in `run` was created (what names a run), if the status has one.
    pub fn run_created_at(&self) -> Option<Timestamp> {
        let at = self.run.as_ref()?.get("status")?.get("createdAt")?;
        serde_json::from_value(at.clone()).ok()
    }

    /// This status without `run`: what the view's writes apply (the record is the store's).
    pub fn view(&self) -> MeshRolloutStatus {
        MeshRolloutStatus {
            run: None,
            ..self.clone()
        }
    }

    /// The condition of `type_`, if the status has it.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

fn saturating_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// A phase as a condition reason (CamelCase, as `metav1.Condition` wants).
fn reason(phase: Phase) -> &'static str {
    match phase {
        Phase::Initialized => "Initialized",
        Phase::Progressing => "Progressing",
        Phase::Paused => "Paused",
        Phase::Promoting => "Promoting",
        Phase::Succeeded => "Succeeded",
        Phase::RolledBack => "RolledBack",
        Phase::Aborted => "Aborted",
    }
}

/// Why a paused rollout holds, as a condition reason.
fn hold_reason(hold: Option<Hold>) -> &'static str {
    match hold {
        Some(Hold::PauseStep) => "PauseStep",
        Some(Hold::Request) => "PauseRequested",
        Some(Hold::HandWeight) => "WeightSetByHand",
        Some(Hold::Propagation) => "PropagationTimedOut",
        Some(Hold::Inconclusive) => "AnalysisInconclusive",
        Some(Hold::Workload) => "CanaryNotReady",
        Some(Hold::Partition) => "BatchPartition",
        None => "Paused",
    }
}

/// The four conditions for `status`; a condition whose status is unchanged from `previous`
/// keeps its `lastTransitionTime`, a changed one gets the rollout's last change time.
fn conditions(
    status: &RolloutStatus,
    generation: Option<i64>,
    previous: &[Condition],
) -> Vec<Condition> {
    let phase = status.phase;
    let phase_reason = reason(phase);
    let states: [(&str, bool, &str); 4] = [
        (
            "Progressing",
            matches!(
                phase,
                Phase::Initialized | Phase::Progressing | Phase::Promoting
            ),
            phase_reason,
        ),
        (
            "Paused",
            phase == Phase::Paused,
            match phase {
                Phase::Paused => hold_reason(status.hold),
                _ => phase_reason,
            },
        ),
        ("Succeeded", phase == Phase::Succeeded, phase_reason),
        (
            "Failed",
            matches!(phase, Phase::RolledBack | Phase::Aborted),
            phase_reason,
        ),
    ];
    let changed_at = condition_time(status.updated_at);
    states
        .into_iter()
        .map(|(type_, holds, reason)| {
            let value = if holds { "True" } else { "False" };
            let since = previous
                .iter()
                .find(|c| c.type_ == type_ && c.status == value)
                .map_or_else(|| changed_at.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: type_.to_string(),
                status: value.to_string(),
                reason: reason.to_string(),
                message: status.message.clone(),
                last_transition_time: since,
                observed_generation: generation,
            }
        })
        .collect()
}

/// A time as `metav1.Time`, which has whole seconds (the API server drops the rest).
fn condition_time(at: Timestamp) -> Time {
    let seconds = i64::try_from(at.0 / 1000).unwrap_or(i64::MAX);
    Time(jiff::Timestamp::from_second(seconds).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
}

// The schema's literal bounds are these constants.
const _: () = assert!(MAX_STATUS_HISTORY == 20 && MAX_CHECK_REASONS == 10);
const _: () = assert!(MAX_STATUS_HISTORY <= MAX_HISTORY);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::judge::{Check, Measured};
    use crate::rollout::{CheckRecord, RolloutSpec};
    use serde_json::json;

    fn rollout() -> Rollout {
        let spec: RolloutSpec = serde_json::from_value(json!({
            "name": "reviews-v2", "route": "reviews", "stable": "v1", "canary": "v2",
            "steps": [{"setWeight": {"percent": 12.5}}, {"pause": {}}],
        }))
        .unwrap();
        Rollout::new(spec, 0, Timestamp(1_795_000_000_123)).unwrap()
    }

    fn measured() -> Measured {
        serde_json::from_value(json!({"requests": 100, "successRate": 1.0})).unwrap()
    }

    #[test]
    fn the_view_carries_the_check_and_the_run_record_round_trips() {
        let mut r = rollout();
        let s = &mut r.status;
        s.phase = Phase::Paused;
        s.hold = Some(Hold::PauseStep);
        s.step = 1;
        s.canary_weight = 1250;
        s.weight_generation = 7;
        s.analysis.checks.push(CheckRecord {
            at: Timestamp(1_795_000_090_000),
            since: Timestamp(1_795_000_060_000),
            step: 0,
            canary_weight: 1250,
            check: Check {
                verdict: Verdict::Pass,
                reasons: vec!["success rate 100% ≥ 99%".into()],
                canary: measured(),
                baseline: measured(),
                p_value: None,
            },
        });
        let mut status = MeshRolloutStatus::from_rollout(&r, Some(2), None, None);
        assert_eq!(status.canary_percent.as_deref(), Some("12.5%"));
        assert_eq!(status.last_check.as_ref().unwrap().verdict, Verdict::Pass);
        assert_eq!(status.run, None, "the view never writes the record");
        status.run = Some(serde_json::to_value(&r).unwrap());
        // Through JSON, as the API server stores it.
        let stored: MeshRolloutStatus =
            serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap();
        assert_eq!(stored, status);
        assert_eq!(stored.run().unwrap(), Some(r.clone()), "the whole rollout");
        assert_eq!(stored.run_created_at(), Some(r.status.created_at));
        assert_eq!(stored.view().run, None);
        assert_eq!(MeshRolloutStatus::default().run().unwrap(), None);
        let mut broken = stored;
        broken.run.as_mut().unwrap()["status"]["step"] = json!("two");
        let error = broken.run().unwrap_err();
        assert_eq!(error.path().to_string(), "status.step");
    }

    #[test]
    fn the_history_is_bounded() {
        let mut r = rollout();
        for i in 0..(MAX_STATUS_HISTORY as u64 + 5) {
            r.status.history.push(Event {
                at: Timestamp(1_795_000_000_000 + i),
                phase: Phase::Progressing,
                step: 0,
                canary_weight: 0,
                message: format!("event {i}"),
            });
        }
        let status = MeshRolloutStatus::from_rollout(&r, None, None, None);
        assert_eq!(status.history.len(), MAX_STATUS_HISTORY);
        assert_eq!(
            status.history.last().unwrap().message,
            format!("event {}", MAX_STATUS_HISTORY + 4),
            "the newest kept"
        );
    }

    #[test]
    fn conditions_follow_the_phase_and_keep_their_transition_time() {
        // (phase, hold, the condition that is True, its reason)
        let cases = [
            (Phase::Initialized, None, Some("Progressing"), "Initialized"),
            (Phase::Progressing, None, Some("Progressing"), "Progressing"),
            (Phase::Promoting, None, Some("Progressing"), "Promoting"),
            (
                Phase::Paused,
                Some(Hold::PauseStep),
                Some("Paused"),
                "PauseStep",
            ),
            (
                Phase::Paused,
                Some(Hold::Request),
                Some("Paused"),
                "PauseRequested",
            ),
            (
                Phase::Paused,
                Some(Hold::Propagation),
                Some("Paused"),
                "PropagationTimedOut",
            ),
            (Phase::Succeeded, None, Some("Succeeded"), "Succeeded"),
            (Phase::RolledBack, None, Some("Failed"), "RolledBack"),
            (Phase::Aborted, None, Some("Failed"), "Aborted"),
        ];
        for (phase, hold, true_type, reason) in cases {
            let mut r = rollout();
            r.status.phase = phase;
            r.status.hold = hold;
            let status = MeshRolloutStatus::from_rollout(&r, Some(4), None, None);
            let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
            assert_eq!(types, CONDITION_TYPES);
            for c in &status.conditions {
                let expected = if Some(c.type_.as_str()) == true_type {
                    "True"
                } else {
                    "False"
                };
                assert_eq!(c.status, expected, "{phase:?} {}", c.type_);
                assert_eq!(c.observed_generation, Some(4));
                assert!(!c.reason.is_empty());
            }
            let held = status.condition(true_type.unwrap()).unwrap();
            assert_eq!(held.reason, reason, "{phase:?}");
        }

        // Progressing → Paused later: Paused changes, Succeeded and Failed keep their time.
        let mut r = rollout();
        let first = MeshRolloutStatus::from_rollout(&r, Some(1), None, None);
        r.status.phase = Phase::Paused;
        r.status.hold = Some(Hold::Request);
        r.status.updated_at = Timestamp(r.status.updated_at.0 + 60_000);
        let second = MeshRolloutStatus::from_rollout(&r, Some(1), None, Some(&first));
        let time =
            |s: &MeshRolloutStatus, t: &str| s.condition(t).unwrap().last_transition_time.clone();
        assert_eq!(time(&second, "Succeeded"), time(&first, "Succeeded"));
        assert_ne!(time(&second, "Paused"), time(&first, "Paused"));
        assert_ne!(time(&second, "Progressing"), time(&first, "Progressing"));
        assert_eq!(
            serde_json::to_value(time(&second, "Paused")).unwrap(),
            json!("2026-11-18T11:07:40Z"),
            "whole seconds"
        );
    }
}
