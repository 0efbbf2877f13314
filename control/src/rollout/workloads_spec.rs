//! The Deployments behind a rollout's variants (Kubernetes mode): the rollout scales the canary's
//! up before each weight and gates the weight on its ready replicas, and scales down the one the
//! rollout leaves behind.
//!
//! How many replicas a weight needs comes in two modes, as in KubeVela's rollout trait: by default
//! the replicas follow the weight (a share of the full size, with a minimum); with `batches`, each
//! batch names its replicas and the weight that goes with them, and `batchPartition` holds the
//! rollout after a batch until a person raises or removes it.

use super::{PlanStep, Weight};
use crate::error::{Error, Result};
use crate::time::{HumanDuration, Timestamp};
use meshcanary_core::config::TOTAL_WEIGHT;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;

/// How long the canary's replicas may take to become ready, by default.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(300);
/// At most this many batches (as many as steps).
pub const MAX_BATCHES: usize = super::MAX_STEPS;

/// The Deployments behind the stable and canary variants (Istio's bookinfo convention:
/// `reviews-v1`, `reviews-v2`), in the WasmPlugin's namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Workloads {
    /// The stable variant's Deployment.
    #[schemars(length(min = 1, max = 253))]
    pub stable: String,
    /// The canary variant's Deployment.
    #[schemars(length(min = 1, max = 253))]
    pub canary: String,
    /// The canary's full size, at 100 %; by default the stable's `spec.replicas` when the
    /// rollout first scales.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// The fewest canary replicas at any weight (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_replicas: Option<u32>,
    /// What happens to the old stable's Deployment after success: `zero` (the default) scales it
    /// to 0, `keep` leaves it, `delete` deletes it.
    #[serde(default)]
    pub scale_down: ScaleDown,
    /// How long the canary's replicas may take to become ready before the rollout pauses
    /// (default `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_timeout: Option<HumanDuration>,
    /// Explicit batches, in rising weight: each names the canary replicas a weight of the
    /// rollout's steps needs. Every `setWeight` step's weight (between 0 and 100 %) must be one batch's weight
    /// and every batch's weight one step's; promotion (100 %) always needs the full size. Without
    /// batches the replicas follow the weight (`minReplicas`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub batches: Vec<Batch>,
    /// Hold the rollout after this batch (0-based): it takes no weight beyond the batch's, nor
    /// promotes, until a person raises or removes the partition (`rollout partition`, or a change
    /// of this field in a MeshRollout). Needs `batches`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_partition: Option<u32>,
}

/// One batch: the canary replicas and the weight that goes with them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Batch {
    /// The canary's replicas in this batch: a count (`2`) or a share of the full size
    /// (`"40%"`, rounded up).
    pub replicas: BatchReplicas,
    /// The canary's weight once this batch is ready; a `setWeight` step of this weight enters it.
    pub weight: Weight,
}

/// Replicas as a count or a percentage of the canary's full size (Kubernetes' int-or-string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum BatchReplicas {
    /// So many replicas.
    Count(u32),
    /// `"N%"` of the full size, N a whole number from 1 to 100, rounded up.
    Percent(String),
}

impl JsonSchema for BatchReplicas {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "BatchReplicas".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "The canary's replicas: a count (2) or a share of its full size (\"40%\", rounded up).",
            "x-kubernetes-int-or-string": true,
            // Bounds the CEL rule's cost ("100%" is the longest valid string).
            "maxLength": 4,
            // One CEL rule rather than typed `anyOf` branches: the API server applies a branch's
            // `pattern` only to strings and its `minimum` only to numbers, so "half" would pass.
            "x-kubernetes-validations": [{
                "rule": "type(self) == int ? self >= 0 : self.matches('^[0-9]+%$')",
                "message": "must be a count (2) or a percentage (\"40%\")",
            }],
        })
    }
}

impl BatchReplicas {
    /// The percentage of a `"N%"` share, if it is one from 1 to 100.
    fn percent(text: &str) -> Option<u32> {
        let digits = text.strip_suffix('%')?;
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().filter(|p| (1..=100).contains(p))
    }

    /// The replicas out of the canary's `full` size.
    pub fn resolve(&self, full: u32) -> u32 {
        match self {
            BatchReplicas::Count(count) => *count,
            BatchReplicas::Percent(text) => {
                let share = Self::percent(text).unwrap_or(100);
                let replicas = (u64::from(full) * u64::from(share)).div_ceil(100);
                u32::try_from(replicas).unwrap_or(u32::MAX)
            }
        }
    }
}

impl std::fmt::Display for BatchReplicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchReplicas::Count(count) => write!(f, "{count}"),
            BatchReplicas::Percent(text) => f.write_str(text),
        }
    }
}

/// Where the rollout holds because of `batchPartition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionHold {
    /// The partition: the last batch (0-based) the rollout may enter.
    pub partition: usize,
    /// How many batches there are.
    pub batches: usize,
}

/// What happens to the old stable's Deployment after a successful rollout.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum ScaleDown {
    /// Scale it to 0 replicas.
    #[default]
    Zero,
    /// Leave it as it is.
    Keep,
    /// Delete it (the ServiceAccount then needs `delete` on it).
    Delete,
}

/// What the service does to a Deployment for a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentChange {
    /// Set its `spec.replicas` (through the `scale` subresource).
    Scale(u32),
    /// Delete it (after a success with `scaleDown: delete`).
    Delete,
}

/// Where the rollout's scaling of the canary stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    /// The canary replicas last asked for (0: none yet).
    pub requested: u32,
    /// The canary's full size the rollout works with, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<u32>,
    /// When the replicas were last asked for (the ready timeout counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<Timestamp>,
    /// When the replicas were last asked for again, because the Deployment had fewer than
    /// requested (a scale lost with the service that sent it, a person scaling it down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked_again_at: Option<Timestamp>,
    /// A person promoted: the canary gets 100 % once its full size is ready.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promotion_requested: bool,
    /// A person finished a promoted rollout: it succeeds once the canary's full size is ready.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub finish_requested: bool,
}

/// A Deployment's replicas: what its spec asks for and how many are ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Replicas {
    /// `spec.replicas`.
    pub desired: u32,
    /// `status.readyReplicas`.
    pub ready: u32,
}

impl Workloads {
    /// Validates the names; `field` is the path of this object (`workloads`).
    pub fn check(&self, field: &str) -> Result<()> {
        for (name, value) in [("stable", &self.stable), ("canary", &self.canary)] {
            if !is_object_name(value) {
                return Err(Error::invalid(
                    format!("{field}.{name}"),
                    format!("{value:?} is not a Deployment name (1-63 lowercase letters, digits or '-')"),
                ));
            }
        }
        if self.stable == self.canary {
            return Err(Error::invalid(
                format!("{field}.canary"),
                "must differ from workloads.stable",
            ));
        }
        if self.replicas == Some(0) {
            return Err(Error::invalid(
                format!("{field}.replicas"),
                "must be at least 1",
            ));
        }
        if let (Some(full), Some(min)) = (self.replicas, self.min_replicas) {
            if min > full {
                return Err(Error::invalid(
                    format!("{field}.minReplicas"),
                    format!("{min} exceeds replicas {full}"),
                ));
            }
        }
        if self.ready_timeout.is_some_and(|t| t.0.is_zero()) {
            return Err(Error::invalid(
                format!("{field}.readyTimeout"),
                "must be longer than 0s",
            ));
        }
        self.check_batches(field)
    }

    fn check_batches(&self, field: &str) -> Result<()> {
        if self.batches.is_empty() {
            if let Some(partition) = self.batch_partition {
                return Err(Error::invalid(
                    format!("{field}.batchPartition"),
                    format!("{partition} needs workloads.batches: a partition holds after a batch"),
                ));
            }
            return Ok(());
        }
        if self.min_replicas.is_some() {
            return Err(Error::invalid(
                format!("{field}.minReplicas"),
                "give either minReplicas (the replicas follow the weight) or batches (each names its replicas), not both",
            ));
        }
        if self.batches.len() > MAX_BATCHES {
            return Err(Error::invalid(
                format!("{field}.batches"),
                format!(
                    "{} batches exceed the limit of {MAX_BATCHES}",
                    self.batches.len()
                ),
            ));
        }
        let mut previous: Option<(u32, &BatchReplicas)> = None;
        for (i, batch) in self.batches.iter().enumerate() {
            let at = format!("{field}.batches[{i}]");
            let weight = batch.weight.checked(&format!("{at}.weight"))?;
            if weight == 0 || weight >= TOTAL_WEIGHT {
                return Err(Error::invalid(
                    format!("{at}.weight"),
                    format!(
                        "{} is not between 0% and 100% (promotion always scales the canary to its full size)",
                        super::engine::percent(weight)
                    ),
                ));
            }
            match &batch.replicas {
                BatchReplicas::Count(0) => {
                    return Err(Error::invalid(
                        format!("{at}.replicas"),
                        "must be at least 1: a batch carries traffic",
                    ))
                }
                BatchReplicas::Count(count) => {
                    if let Some(full) = self.replicas.filter(|full| count > full) {
                        return Err(Error::invalid(
                            format!("{at}.replicas"),
                            format!("{count} exceeds workloads.replicas {full}"),
                        ));
                    }
                }
                BatchReplicas::Percent(text) => {
                    if BatchReplicas::percent(text).is_none() {
                        return Err(Error::invalid(
                            format!("{at}.replicas"),
                            format!("{text:?} is neither a count nor a percentage from 1% to 100% (\"40%\")"),
                        ));
                    }
                }
            }
            if let Some((before, replicas)) = previous {
                if weight <= before {
                    return Err(Error::invalid(
                        format!("{at}.weight"),
                        format!(
                            "{} is not above batches[{}]'s {}: batches go in rising weight",
                            super::engine::percent(weight),
                            i - 1,
                            super::engine::percent(before)
                        ),
                    ));
                }
                if let Some((less, more)) = self.comparable(replicas, &batch.replicas) {
                    if more < less {
                        return Err(Error::invalid(
                            format!("{at}.replicas"),
                            format!(
                                "{} is fewer than batches[{}]'s {replicas}: batches never scale the canary down",
                                batch.replicas,
                                i - 1
                            ),
                        ));
                    }
                }
            }
            previous = Some((weight, &batch.replicas));
        }
        if let Some(partition) = self.batch_partition {
            if partition as usize >= self.batches.len() {
                return Err(Error::invalid(
                    format!("{field}.batchPartition"),
                    format!(
                        "{partition} is past the last batch (index {})",
                        self.batches.len() - 1
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Two batches' replicas as numbers that compare, when they do without knowing the full size.
    fn comparable(&self, a: &BatchReplicas, b: &BatchReplicas) -> Option<(u32, u32)> {
        match (a, b, self.replicas) {
            (BatchReplicas::Count(a), BatchReplicas::Count(b), _) => Some((*a, *b)),
            (BatchReplicas::Percent(a), BatchReplicas::Percent(b), _) => {
                Some((BatchReplicas::percent(a)?, BatchReplicas::percent(b)?))
            }
            (a, b, Some(full)) => Some((a.resolve(full), b.resolve(full))),
            _ => None,
        }
    }

    /// Checks the batches against the plan: every `setWeight` step's weight between 0 and 100 % is a batch's
    /// weight and every batch's weight a step's. `steps` is the field the plan comes from one
    /// step to one entry (`steps`), or `None` when it is expanded from `progressive`.
    pub fn check_plan(&self, field: &str, plan: &[PlanStep], steps: Option<&str>) -> Result<()> {
        if self.batches.is_empty() {
            return Ok(());
        }
        let weights = self.batch_weights();
        let names: Vec<String> = weights.iter().map(|w| super::engine::percent(*w)).collect();
        for (i, step) in plan.iter().enumerate() {
            if let PlanStep::SetWeight(weight) = step {
                // 0 % needs no batch, and 100 % is the full size.
                if *weight > 0 && *weight < TOTAL_WEIGHT && !weights.contains(weight) {
                    let at = steps.map_or("progressive".to_string(), |steps| {
                        format!("{steps}[{i}].setWeight")
                    });
                    return Err(Error::invalid(
                        at,
                        format!(
                            "{} is no batch's weight (workloads.batches have {})",
                            super::engine::percent(*weight),
                            names.join(", ")
                        ),
                    ));
                }
            }
        }
        for (i, weight) in weights.iter().enumerate() {
            if !plan.contains(&PlanStep::SetWeight(*weight)) {
                return Err(Error::invalid(
                    format!("{field}.batches[{i}].weight"),
                    format!(
                        "no setWeight step sets {}: each batch goes with a step of its weight",
                        super::engine::percent(*weight)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The batches' weights (basis points), as checked.
    pub fn batch_weights(&self) -> Vec<u32> {
        self.batches
            .iter()
            .map(|batch| batch.weight.checked("").unwrap_or(TOTAL_WEIGHT))
            .collect()
    }

    /// The batch (0-based) that carries `weight`: the first whose weight reaches it; `None`
    /// without batches, at 0 or at 100 % (the full size).
    pub fn batch_of(&self, weight: u32) -> Option<usize> {
        if weight == 0 || weight >= TOTAL_WEIGHT {
            return None;
        }
        self.batch_weights().iter().position(|w| *w >= weight)
    }

    /// Whether `batchPartition` keeps the canary from getting `weight`, and where it holds.
    pub fn partition_holds(&self, weight: u32) -> Option<PartitionHold> {
        let partition = self.batch_partition? as usize;
        let weights = self.batch_weights();
        let last = *weights.get(partition)?;
        (partition + 1 < weights.len() && weight > last).then_some(PartitionHold {
            partition,
            batches: weights.len(),
        })
    }

    /// The ready timeout in force.
    pub fn ready_timeout(&self) -> Duration {
        self.ready_timeout.map_or(DEFAULT_READY_TIMEOUT, |d| d.0)
    }

    /// The canary replicas a weight (basis points) needs out of `full`. With batches: the
    /// replicas of the batch that carries the weight, and `full` at 100 %; otherwise
    /// `max(minReplicas, ceil(full * weight / 100 %))`.
    pub fn needed(&self, full: u32, weight: u32) -> u32 {
        if !self.batches.is_empty() {
            let batch = if weight == 0 {
                self.batches.first()
            } else {
                self.batch_of(weight).and_then(|i| self.batches.get(i))
            };
            return batch.map_or(full, |batch| batch.replicas.resolve(full));
        }
        let share = (u64::from(full) * u64::from(weight)).div_ceil(u64::from(TOTAL_WEIGHT));
        let share = u32::try_from(share).unwrap_or(u32::MAX);
        share.max(self.min_replicas.unwrap_or(1))
    }
}

fn is_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn workloads(extra: serde_json::Value) -> Workloads {
        let mut value = json!({"stable": "reviews-v1", "canary": "reviews-v2"});
        for (k, v) in extra.as_object().unwrap() {
            value[k] = v.clone();
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn needed_replicas_round_up_and_keep_the_minimum() {
        let cases = [
            (json!({}), 3, 0, 1),
            (json!({}), 3, 1000, 1),
            (json!({}), 3, 3400, 2),
            (json!({}), 3, 10000, 3),
            (json!({"minReplicas": 2}), 10, 1000, 2),
            (json!({"minReplicas": 0}), 10, 0, 0),
            (json!({}), 10, 2500, 3),
        ];
        for (extra, full, weight, expected) in cases {
            assert_eq!(
                workloads(extra.clone()).needed(full, weight),
                expected,
                "{extra} {full} {weight}"
            );
        }
    }

    #[test]
    fn batches_name_the_replicas_of_their_weights() {
        let w = workloads(json!({"batches": [
            {"replicas": 1, "weight": {"percent": 10}},
            {"replicas": "40%", "weight": {"percent": 30}},
            {"replicas": "75%", "weight": {"percent": 60}},
        ]}));
        let cases = [
            // (full, weight, replicas needed, batch)
            (10, 0, 1, None),
            (10, 500, 1, Some(0)),
            (10, 1000, 1, Some(0)),
            (10, 1001, 4, Some(1)),
            (10, 3000, 4, Some(1)),
            (10, 6000, 8, Some(2)),
            (3, 3000, 2, Some(1)),
            (10, 8000, 10, None),
            (10, 10000, 10, None),
        ];
        for (full, weight, needed, batch) in cases {
            assert_eq!(w.needed(full, weight), needed, "{full} {weight}");
            let expected_batch = batch.filter(|_| weight > 0);
            assert_eq!(w.batch_of(weight), expected_batch, "{weight}");
        }
        assert_eq!(
            serde_json::to_value(&w.batches[1]).unwrap(),
            json!({"replicas": "40%", "weight": {"percent": 30.0}}),
            "int-or-string round trips"
        );
    }

    #[test]
    fn a_partition_holds_weights_beyond_its_batch() {
        let w = |partition: Option<u32>| {
            let mut w = workloads(json!({"batches": [
                {"replicas": 1, "weight": {"percent": 10}},
                {"replicas": 2, "weight": {"percent": 30}},
                {"replicas": 3, "weight": {"percent": 60}},
            ]}));
            w.batch_partition = partition;
            w
        };
        let held = |partition| {
            Some(PartitionHold {
                partition,
                batches: 3,
            })
        };
        let cases = [
            (None, 10000, None),
            (Some(0), 1000, None),
            (Some(0), 3000, held(0)),
            (Some(1), 3000, None),
            (Some(1), 6000, held(1)),
            (Some(1), 10000, held(1)),
            // The last batch's partition holds nothing, promotion included.
            (Some(2), 10000, None),
        ];
        for (partition, weight, expected) in cases {
            assert_eq!(
                w(partition).partition_holds(weight),
                expected,
                "{partition:?} {weight}"
            );
        }
    }

    #[test]
    fn invalid_workloads_name_the_field() {
        let cases = [
            (
                json!({"canary": "Reviews"}),
                "workloads.canary",
                "not a Deployment name",
            ),
            (
                json!({"stable": ""}),
                "workloads.stable",
                "not a Deployment name",
            ),
            (
                json!({"canary": "reviews-v1"}),
                "workloads.canary",
                "must differ",
            ),
            (json!({"replicas": 0}), "workloads.replicas", "at least 1"),
            (
                json!({"replicas": 2, "minReplicas": 3}),
                "workloads.minReplicas",
                "exceeds",
            ),
            (
                json!({"readyTimeout": "0s"}),
                "workloads.readyTimeout",
                "longer than 0s",
            ),
        ];
        for (extra, field, reason) in cases {
            let error = workloads(extra.clone()).check("workloads").unwrap_err();
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
        assert!(workloads(json!({})).check("workloads").is_ok());
        let batches = |list: serde_json::Value| json!({"replicas": 10, "batches": list});
        let cases = [
            (batches(json!([])), "", ""),
            (
                batches(json!([{"replicas": 0, "weight": {"percent": 10}}])),
                "workloads.batches[0].replicas",
                "at least 1",
            ),
            (
                batches(json!([{"replicas": 11, "weight": {"percent": 10}}])),
                "workloads.batches[0].replicas",
                "11 exceeds workloads.replicas 10",
            ),
            (
                batches(
                    json!([{"replicas": 1, "weight": {"percent": 10}}, {"replicas": "150%", "weight": {"percent": 50}}]),
                ),
                "workloads.batches[1].replicas",
                "\"150%\" is neither a count nor a percentage",
            ),
            (
                batches(
                    json!([{"replicas": 1, "weight": {"percent": 10}}, {"replicas": "x%", "weight": {"percent": 50}}]),
                ),
                "workloads.batches[1].replicas",
                "neither",
            ),
            (
                batches(
                    json!([{"replicas": 2, "weight": {"percent": 50}}, {"replicas": 3, "weight": {"percent": 20}}]),
                ),
                "workloads.batches[1].weight",
                "20% is not above batches[0]'s 50%",
            ),
            (
                batches(
                    json!([{"replicas": "50%", "weight": {"percent": 10}}, {"replicas": 3, "weight": {"percent": 20}}]),
                ),
                "workloads.batches[1].replicas",
                "3 is fewer than batches[0]'s 50%",
            ),
            (
                batches(json!([{"replicas": 2, "weight": {"percent": 100}}])),
                "workloads.batches[0].weight",
                "100% is not between 0% and 100%",
            ),
            (
                batches(json!([{"replicas": 2, "weight": {"basisPoints": 0}}])),
                "workloads.batches[0].weight",
                "0% is not between",
            ),
            (
                batches(json!([{"replicas": 2, "weight": {"percent": 1.234}}])),
                "workloads.batches[0].weight.percent",
                "two decimals",
            ),
            (
                json!({"minReplicas": 2, "batches": [{"replicas": 2, "weight": {"percent": 10}}]}),
                "workloads.minReplicas",
                "not both",
            ),
            (
                json!({"batchPartition": 0}),
                "workloads.batchPartition",
                "needs workloads.batches",
            ),
            (
                json!({"batchPartition": 1, "batches": [{"replicas": 2, "weight": {"percent": 10}}]}),
                "workloads.batchPartition",
                "1 is past the last batch (index 0)",
            ),
        ];
        for (extra, field, reason) in cases {
            let checked = workloads(extra.clone()).check("workloads");
            if field.is_empty() {
                assert!(checked.is_ok(), "{extra}: {checked:?}");
                continue;
            }
            let error = checked.unwrap_err();
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
        let typo: std::result::Result<Workloads, _> =
            serde_json::from_value(json!({"stable": "a", "canary": "b", "scaledown": "keep"}));
        assert!(typo.unwrap_err().to_string().contains("unknown field"));
    }
}
