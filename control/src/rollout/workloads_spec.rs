//! The Deployments behind a rollout's variants (Kubernetes mode): the rollout scales the canary's
//! up before each weight and gates the weight on its ready replicas, and scales down the one the
//! rollout leaves behind.

use crate::error::{Error, Result};
use crate::time::{HumanDuration, Timestamp};
use meshcanary_core::config::TOTAL_WEIGHT;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;

/// How long the canary's replicas may take to become ready, by default.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(300);

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
    /// What happens to the old stable's Deployment after success (default `zero`).
    #[serde(default)]
    pub scale_down: ScaleDown,
    /// How long the canary's replicas may take to become ready before the rollout pauses
    /// (default `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_timeout: Option<HumanDuration>,
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
        Ok(())
    }

    /// The ready timeout in force.
    pub fn ready_timeout(&self) -> Duration {
        self.ready_timeout.map_or(DEFAULT_READY_TIMEOUT, |d| d.0)
    }

    /// The canary replicas a weight (basis points) needs out of `full`:
    /// `max(minReplicas, ceil(full * weight / 100 %))`.
    pub fn needed(&self, full: u32, weight: u32) -> u32 {
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
        let typo: std::result::Result<Workloads, _> =
            serde_json::from_value(json!({"stable": "a", "canary": "b", "scaledown": "keep"}));
        assert!(typo.unwrap_err().to_string().contains("unknown field"));
    }
}
