//! What the API shows and the CLI prints that is neither domain nor wire-only: how far a config
//! has reached, and weights as people read them.

use crate::observer::ProxyGeneration;

pub use crate::rollout::engine::percent;

/// How far the latest config has reached.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Propagation {
    /// The generation asked about.
    pub generation: u64,
    /// Proxies running it (or a later one).
    pub applied: usize,
    /// Proxies watched.
    pub total: usize,
    /// `applied on N/M proxies`.
    pub summary: String,
    /// Each proxy's answer.
    pub proxies: Vec<ProxyGeneration>,
}

/// One variant's Deployment: what its spec asks for and how many replicas are ready, as the
/// service last read them (absent when it does not read them: the rollout has ended, or the
/// Deployment could not be read).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VariantReplicas {
    /// The Deployment's name.
    pub deployment: String,
    /// Its `spec.replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<u32>,
    /// Its `status.readyReplicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<u32>,
    /// Why the service's latest scale (or delete) of it has not gone through, while it retries
    /// and after it gave up: an old stable that stays up after a success says so here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The Deployments behind a rollout's variants (with `workloads`) and where its batches stand.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadsView {
    /// The stable variant's Deployment.
    pub stable: VariantReplicas,
    /// The canary variant's Deployment.
    pub canary: VariantReplicas,
    /// The canary replicas the rollout last asked for.
    pub requested: u32,
    /// The canary's full size, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<u32>,
    /// With batches: the batch (0-based) the canary's weight is in; absent before the first
    /// batch and once promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// How many batches there are (0: the replicas follow the weight).
    pub batches: usize,
    /// `workloads.batchPartition`, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
}

impl WorkloadsView {
    /// `rollout`'s Deployments with the replicas last read (`readings`) and the changes of them
    /// that fail (`failures`), both by Deployment name; `None` when the rollout names no
    /// Deployments.
    pub fn of(
        rollout: &crate::rollout::Rollout,
        readings: &std::collections::BTreeMap<String, crate::rollout::Replicas>,
        failures: &std::collections::BTreeMap<String, String>,
    ) -> Option<WorkloadsView> {
        let workloads = rollout.spec.workloads.as_ref()?;
        let variant = |deployment: &String| {
            let read = readings.get(deployment);
            VariantReplicas {
                deployment: deployment.clone(),
                desired: read.map(|r| r.desired),
                ready: read.map(|r| r.ready),
                error: failures.get(deployment).cloned(),
            }
        };
        let status = &rollout.status;
        Some(WorkloadsView {
            stable: variant(&workloads.stable),
            canary: variant(&workloads.canary),
            requested: status.workloads.requested,
            full: workloads.replicas.or(status.workloads.full),
            batch: workloads.batch_of(status.canary_weight),
            batches: workloads.batches.len(),
            partition: workloads.batch_partition,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{Replicas, Rollout, RolloutSpec};
    use crate::time::Timestamp;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[test]
    fn workloads_show_each_variants_replicas_and_the_batch() {
        let spec: RolloutSpec = serde_json::from_value(json!({
            "name": "r", "route": "reviews", "stable": "v1", "canary": "v2",
            "steps": [{"setWeight": {"percent": 10}}, {"setWeight": {"percent": 50}}],
            "workloads": {"stable": "reviews-v1", "canary": "reviews-v2", "replicas": 4,
                "batches": [{"replicas": 1, "weight": {"percent": 10}}, {"replicas": 2, "weight": {"percent": 50}}],
                "batchPartition": 0},
        }))
        .unwrap();
        let mut rollout = Rollout::new(spec, 0, Timestamp(1)).unwrap();
        rollout.status.canary_weight = 5000;
        rollout.status.workloads.requested = 2;
        let readings = BTreeMap::from([(
            "reviews-v2".to_string(),
            Replicas {
                desired: 2,
                ready: 1,
            },
        )]);
        let failures = BTreeMap::from([(
            "reviews-v1".to_string(),
            "scale to 0: forbidden (gave up)".to_string(),
        )]);
        let view = WorkloadsView::of(&rollout, &readings, &failures).unwrap();
        assert_eq!(
            serde_json::to_value(&view).unwrap(),
            json!({
                "stable": {"deployment": "reviews-v1", "error": "scale to 0: forbidden (gave up)"},
                "canary": {"deployment": "reviews-v2", "desired": 2, "ready": 1},
                "requested": 2, "full": 4, "batch": 1, "batches": 2, "partition": 0,
            })
        );
        rollout.spec.workloads = None;
        assert_eq!(WorkloadsView::of(&rollout, &readings, &failures), None);
    }
}
