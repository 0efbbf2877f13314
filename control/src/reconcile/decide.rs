//! The reconciler's decision: given a MeshRollout (its checked spec, generation, deletion, the
//! status the service last wrote) and the service's rollout of the same name, what to do. Pure:
//! no client, no clock, so every case is a row of a table.

use crate::crd::{CheckedMeshRollout, MeshRolloutStatus};
use crate::error::Error;
use crate::rollout::{Hold, Phase, Rollout};
use crate::time::Timestamp;

/// The WasmPlugin this service drives (`--wasmplugin` in `--kube-namespace`): a MeshRollout
/// targeting another one is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTarget {
    /// The WasmPlugin's name.
    pub wasm_plugin: String,
    /// Its namespace (also what a target without a namespace means).
    pub namespace: String,
}

/// What the reconciler sees of one MeshRollout.
#[derive(Debug)]
pub struct Observed<'a> {
    /// The spec checked by the API's rules, or why it fails them.
    pub checked: &'a Result<CheckedMeshRollout, Error>,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// `metadata.finalizers` holds [`FINALIZER`](super::FINALIZER).
    pub has_finalizer: bool,
    /// The status as stored (the service's last write, or nothing). A watch event may carry an
    /// older one than the service last wrote.
    pub status: Option<&'a MeshRolloutStatus>,
    /// The run this leader started or reported for the resource (its creation time), if any:
    /// what the status says once the write shows up in the watch.
    pub run: Option<Timestamp>,
}

/// Why a resource is refused: a condition reason and the message naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `InvalidSpec` (the spec fails the API's rules, or names another WasmPlugin) or `Refused`
    /// (the service would not take it now: an unknown route, another rollout on the route, a
    /// rollout of that name it did not start).
    pub reason: &'static str,
    /// `<field>: <why>`.
    pub message: String,
}

/// What to do with one MeshRollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing (the resource is gone for the service, or is not the service's yet).
    Nothing,
    /// Start its rollout; pause it at once if the spec says so.
    Create {
        /// `spec.paused`.
        pause: bool,
    },
    /// The spec asks for another run than the one in the service's state (a new canary, other
    /// steps): end the old run — abort it if it still runs — take it out of the state, and start
    /// the new one under the same name.
    Replace {
        /// The old run still runs: abort it first (traffic back to stable).
        abort: bool,
        /// `spec.paused`.
        pause: bool,
    },
    /// `spec.paused` turned true.
    Pause,
    /// `spec.paused` turned false after a pause it asked for.
    Resume,
    /// Only `spec.workloads.batchPartition` changed: raise, lower or remove the running
    /// rollout's partition (a new run would start its batches over).
    Partition(Option<u32>),
    /// Only report where the rollout stands.
    WriteStatus,
    /// The resource is being deleted: abort its rollout if it still runs (`abort`), then remove
    /// the finalizer.
    Finalize {
        /// Its rollout still runs.
        abort: bool,
    },
    /// Do not act on it; say why in its status and a Warning Event.
    Refuse(Refusal),
}

/// Whether `rollout` is `resource`'s run: the run is named by its creation time, which the
/// status carries in `run.status.createdAt` and the leader remembers for the runs it started (a
/// watch event may predate the status write). A rollout of the same name created through the
/// API, or an earlier run, is not the resource's.
pub fn owns(resource: &Observed<'_>, rollout: &Rollout) -> bool {
    let created = rollout.status.created_at;
    resource.run == Some(created)
        || resource
            .status
            .and_then(MeshRolloutStatus::run_created_at)
            .is_some_and(|at| at == created)
}

/// What to do with `resource`, given the service's rollout of the same name (`None`: the state
/// has none) and the WasmPlugin the service drives.
pub fn decide(
    resource: &Observed<'_>,
    rollout: Option<&Rollout>,
    service: &ServiceTarget,
) -> Decision {
    let owned = rollout.filter(|r| owns(resource, r));
    if resource.deleting {
        if !resource.has_finalizer {
            return Decision::Nothing;
        }
        let running = owned.is_some_and(|r| !r.status.phase.is_terminal());
        return Decision::Finalize { abort: running };
    }
    let checked = match resource.checked {
        Ok(checked) => checked,
        Err(error) => {
            return Decision::Refuse(Refusal {
                reason: "InvalidSpec",
                message: error.to_string(),
            })
        }
    };
    if let Some(refusal) = wrong_target(checked, service) {
        return Decision::Refuse(refusal);
    }
    let pause = checked.paused;
    let Some(rollout) = rollout else {
        // A run this generation already finished, since dropped from the state by retention:
        // it must not run again.
        let finished = resource.status.is_some_and(|s| {
            s.observed_generation == resource.generation
                && s.run.is_some()
                && s.phase.is_some_and(Phase::is_terminal)
        });
        return if finished {
            Decision::Nothing
        } else {
            Decision::Create { pause }
        };
    };
    let running = !rollout.status.phase.is_terminal();
    if owned.is_none() {
        if !running {
            // A finished run of the same name (an earlier resource, or the API's): a new resource
            // is a new run.
            return Decision::Replace {
                abort: false,
                pause,
            };
        }
        if rollout.spec != checked.spec {
            return Decision::Refuse(Refusal {
                reason: "Refused",
                message: format!(
                    "metadata.name: rollout {} is already running with another spec (created through the API); abort it or name this resource differently",
                    rollout.spec.name
                ),
            });
        }
        // The same rollout, started through the API: the resource takes it over as it is.
        return Decision::WriteStatus;
    }
    if rollout.spec != checked.spec {
        if let Some(partition) = partition_change(rollout, &checked.spec) {
            return if running {
                Decision::Partition(partition)
            } else {
                Decision::WriteStatus
            };
        }
        return Decision::Replace {
            abort: running,
            pause,
        };
    }
    let observed = resource.status.and_then(|s| s.observed_generation);
    // Only a new generation acts on `paused`: re-applying an unchanged spec must not undo a
    // person's pause or resume.
    let new_generation = resource.generation.is_some() && resource.generation != observed;
    if new_generation && running {
        let paused = rollout.status.phase == Phase::Paused;
        if pause && !paused && rollout.status.phase != Phase::Promoting {
            return Decision::Pause;
        }
        if !pause && paused && rollout.status.hold == Some(Hold::Request) {
            return Decision::Resume;
        }
    }
    Decision::WriteStatus
}

/// The partition `spec` asks for, when it differs from `rollout`'s spec in nothing else.
fn partition_change(rollout: &Rollout, spec: &crate::rollout::RolloutSpec) -> Option<Option<u32>> {
    let partition = spec.workloads.as_ref()?.batch_partition;
    let mut same = rollout.spec.clone();
    same.workloads.as_mut()?.batch_partition = partition;
    (same == *spec).then_some(partition)
}

/// A refusal if `checked` targets another WasmPlugin than the service's.
fn wrong_target(checked: &CheckedMeshRollout, service: &ServiceTarget) -> Option<Refusal> {
    let namespace = checked
        .target
        .namespace
        .as_deref()
        .unwrap_or(&service.namespace);
    if checked.target.wasm_plugin != service.wasm_plugin {
        return Some(Refusal {
            reason: "InvalidSpec",
            message: format!(
                "spec.target.wasmPlugin: {:?} is not the WasmPlugin this service drives ({}/{})",
                checked.target.wasm_plugin, service.namespace, service.wasm_plugin
            ),
        });
    }
    if namespace != service.namespace {
        return Some(Refusal {
            reason: "InvalidSpec",
            message: format!(
                "spec.target.namespace: {namespace:?} is not the namespace of the WasmPlugin this service drives ({}/{})",
                service.namespace, service.wasm_plugin
            ),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MeshRollout;
    use crate::rollout::engine::{self, Command};
    use crate::time::Timestamp;
    use serde_json::{json, Value};

    fn service() -> ServiceTarget {
        ServiceTarget {
            wasm_plugin: "reviews-canary".into(),
            namespace: "shop".into(),
        }
    }

    fn resource(extra: Value, generation: i64) -> MeshRollout {
        let mut spec = json!({
            "target": {"wasmPlugin": "reviews-canary"},
            "route": "reviews", "stable": "v1", "canary": "v2",
            "steps": [{"setWeight": {"percent": 50}}, {"setWeight": {"percent": 100}}],
        });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        serde_json::from_value(json!({
            "apiVersion": "meshcanary.io/v1alpha1", "kind": "MeshRollout",
            "metadata": {"name": "reviews-v2", "namespace": "meshcanary-system", "generation": generation},
            "spec": spec,
        }))
        .unwrap()
    }

    fn at(seconds: u64) -> Timestamp {
        Timestamp(1_700_000_000_000 + seconds * 1000)
    }

    /// The rollout `resource` asks for, created at `created`, in `phase`.
    fn rollout(resource: &MeshRollout, created: u64, phase: Phase) -> Rollout {
        let checked = CheckedMeshRollout::try_from(resource).unwrap();
        let mut rollout = Rollout::new(checked.spec, 0, at(created)).unwrap();
        match phase {
            Phase::Paused => {
                rollout.status.phase = Phase::Progressing;
                rollout = engine::command(&rollout, Command::Pause, at(created + 1)).unwrap();
            }
            other => rollout.status.phase = other,
        }
        rollout
    }

    /// The status the service would have written for `rollout` at `generation`: the view, and
    /// the run's record.
    fn status(rollout: &Rollout, generation: i64) -> MeshRolloutStatus {
        MeshRolloutStatus {
            run: Some(serde_json::to_value(rollout).unwrap()),
            ..MeshRolloutStatus::from_rollout(rollout, Some(generation), None, None)
        }
    }

    #[test]
    fn decisions() {
        let base = resource(json!({}), 1);
        let paused_spec = resource(json!({"paused": true}), 2);
        let unpaused_again = resource(json!({"paused": false}), 3);
        let new_canary = resource(json!({"canary": "v3"}), 2);
        let other_plugin = resource(json!({"target": {"wasmPlugin": "ratings"}}), 1);
        let other_ns = resource(
            json!({"target": {"wasmPlugin": "reviews-canary", "namespace": "x"}}),
            1,
        );
        let same_ns = resource(
            json!({"target": {"wasmPlugin": "reviews-canary", "namespace": "shop"}}),
            1,
        );
        let invalid = resource(json!({"steps": [{"pause": {"duration": "366d"}}]}), 1);

        let running = rollout(&base, 0, Phase::Progressing);
        let paused_by_request = rollout(&base, 0, Phase::Paused);
        let mut paused_by_step = rollout(&base, 0, Phase::Paused);
        paused_by_step.status.hold = Some(Hold::PauseStep);
        let succeeded = rollout(&base, 0, Phase::Succeeded);
        let other_run = rollout(&base, 5, Phase::Progressing);
        let other_spec_running = rollout(&new_canary, 5, Phase::Progressing);

        let running_at_1 = status(&running, 1);
        let paused_at_2 = status(&paused_by_request, 2);
        let succeeded_at_1 = status(&succeeded, 1);
        let refused_at_1 = MeshRolloutStatus {
            observed_generation: Some(1),
            ..MeshRolloutStatus::default()
        };

        type Row<'a> = (
            &'a str,
            &'a MeshRollout,
            Option<&'a MeshRolloutStatus>,
            bool, // deleting
            bool, // has the finalizer
            Option<&'a Rollout>,
            Option<Timestamp>, // the run the leader knows
            Decision,
        );
        let rows: Vec<Row> = vec![
            ("new resource: create", &base, None, false, false, None, None, Decision::Create { pause: false }),
            ("new resource asking to hold: create paused", &paused_spec, None, false, false, None, None, Decision::Create { pause: true }),
            ("a namespace equal to the service's is fine", &same_ns, None, false, false, None, None, Decision::Create { pause: false }),
            ("refused before: retried", &base, Some(&refused_at_1), false, true, None, None, Decision::Create { pause: false }),
            ("finished and retired from the state: not run again", &base, Some(&succeeded_at_1), false, true, None, None, Decision::Nothing),
            ("finished, retired, then a new spec: runs", &new_canary, Some(&succeeded_at_1), false, true, None, None, Decision::Create { pause: false }),
            ("running, unchanged: report", &base, Some(&running_at_1), false, true, Some(&running), None, Decision::WriteStatus),
            ("paused set: pause", &paused_spec, Some(&running_at_1), false, true, Some(&running), None, Decision::Pause),
            ("paused set, already paused by a step: report", &paused_spec, Some(&running_at_1), false, true, Some(&paused_by_step), None, Decision::WriteStatus),
            ("paused cleared: resume", &unpaused_again, Some(&paused_at_2), false, true, Some(&paused_by_request), None, Decision::Resume),
            ("paused cleared, but held by a pause step: report", &unpaused_again, Some(&paused_at_2), false, true, Some(&paused_by_step), None, Decision::WriteStatus),
            ("same generation, paused by a person: not undone", &base, Some(&running_at_1), false, true, Some(&paused_by_request), None, Decision::WriteStatus),
            ("paused set on a finished run: report", &paused_spec, Some(&succeeded_at_1), false, true, Some(&succeeded), None, Decision::WriteStatus),
            ("new canary while running: abort and replace", &new_canary, Some(&running_at_1), false, true, Some(&running), None, Decision::Replace { abort: true, pause: false }),
            ("new canary after success: replace", &new_canary, Some(&succeeded_at_1), false, true, Some(&succeeded), None, Decision::Replace { abort: false, pause: false }),
            ("a finished run of the same name it did not start: replace", &base, None, false, false, Some(&succeeded), None, Decision::Replace { abort: false, pause: false }),
            ("the same rollout started through the API: taken over", &base, None, false, false, Some(&other_run), None, Decision::WriteStatus),
            ("another running rollout of that name: refused", &base, None, false, false, Some(&other_spec_running), None, Decision::Refuse(Refusal { reason: "Refused", message: "metadata.name: rollout reviews-v2 is already running with another spec (created through the API); abort it or name this resource differently".into() })),
            ("invalid spec: refused naming the field", &invalid, None, false, false, None, None, Decision::Refuse(Refusal { reason: "InvalidSpec", message: "spec.steps[0].pause.duration: 1year 18h is longer than the limit of 365 days".into() })),
            ("another WasmPlugin: refused", &other_plugin, None, false, false, None, None, Decision::Refuse(Refusal { reason: "InvalidSpec", message: "spec.target.wasmPlugin: \"ratings\" is not the WasmPlugin this service drives (shop/reviews-canary)".into() })),
            ("another namespace: refused", &other_ns, None, false, false, None, None, Decision::Refuse(Refusal { reason: "InvalidSpec", message: "spec.target.namespace: \"x\" is not the namespace of the WasmPlugin this service drives (shop/reviews-canary)".into() })),
            ("deleted while running: abort, then release", &base, Some(&running_at_1), true, true, Some(&running), None, Decision::Finalize { abort: true }),
            ("deleted after success: release", &base, Some(&succeeded_at_1), true, true, Some(&succeeded), None, Decision::Finalize { abort: false }),
            ("deleted, the running rollout is another run: release only", &base, Some(&running_at_1), true, true, Some(&other_run), None, Decision::Finalize { abort: false }),
            ("deleted, refused before: release", &invalid, Some(&refused_at_1), true, true, None, None, Decision::Finalize { abort: false }),
            ("deleted without our finalizer: nothing", &base, Some(&running_at_1), true, false, Some(&running), None, Decision::Nothing),
        ];
        let (run, early) = (
            Some(running.status.created_at),
            rollout(&base, 0, Phase::Succeeded),
        );
        let more: Vec<Row> = vec![
            (
                "a watch event older than the status write, the run this leader started: report",
                &base,
                None,
                false,
                true,
                Some(&early),
                run,
                Decision::WriteStatus,
            ),
            (
                "the same, a new spec: replace",
                &new_canary,
                None,
                false,
                true,
                Some(&running),
                run,
                Decision::Replace {
                    abort: true,
                    pause: false,
                },
            ),
        ];
        let batched = |partition: Value, canary: &str| {
            let mut workloads = json!({"stable": "reviews-v1", "canary": canary,
                "batches": [{"replicas": 1, "weight": {"percent": 20}}, {"replicas": 2, "weight": {"percent": 50}}]});
            if !partition.is_null() {
                workloads["batchPartition"] = partition;
            }
            let steps = json!([{"setWeight": {"percent": 20}}, {"setWeight": {"percent": 50}}]);
            resource(json!({"workloads": workloads, "steps": steps}), 2)
        };
        let held = batched(json!(0), "reviews-v2");
        let raised = batched(json!(1), "reviews-v2");
        let removed = batched(Value::Null, "reviews-v2");
        let raised_and_more = batched(json!(1), "reviews-v3");
        let held_run = rollout(&held, 0, Phase::Progressing);
        let held_done = rollout(&held, 0, Phase::Succeeded);
        let held_at_1 = status(&held_run, 1);
        let partitions: Vec<Row> = vec![
            (
                "only the partition changed: set it",
                &raised,
                Some(&held_at_1),
                false,
                true,
                Some(&held_run),
                None,
                Decision::Partition(Some(1)),
            ),
            (
                "the partition removed: remove it",
                &removed,
                Some(&held_at_1),
                false,
                true,
                Some(&held_run),
                None,
                Decision::Partition(None),
            ),
            (
                "the partition changed on a finished run: report",
                &raised,
                Some(&held_at_1),
                false,
                true,
                Some(&held_done),
                None,
                Decision::WriteStatus,
            ),
            (
                "the partition and more changed: replace",
                &raised_and_more,
                Some(&held_at_1),
                false,
                true,
                Some(&held_run),
                None,
                Decision::Replace {
                    abort: true,
                    pause: false,
                },
            ),
        ];
        for (what, resource, status, deleting, has_finalizer, rollout, run, want) in
            rows.into_iter().chain(more).chain(partitions)
        {
            let checked = CheckedMeshRollout::try_from(resource);
            let observed = Observed {
                checked: &checked,
                generation: resource.metadata.generation,
                deleting,
                has_finalizer,
                status,
                run,
            };
            assert_eq!(decide(&observed, rollout, &service()), want, "{what}");
        }
    }
}
