//! The kube edge of the reconciliation: while this replica leads, a watch on the MeshRollouts of
//! the service's namespace; each event reconciles that resource ([`decide`](super::decide)), and
//! every half second the status of every resource the service acts on is written again if its
//! rollout changed (the engine's ticks as much as the resource's edits), with an Event per step.

use super::decide::{decide, Decision, Observed, Refusal, ServiceTarget};
use super::events::{notes, Note};
use super::FINALIZER;
use crate::controller::Controller;
use crate::crd::status::PropagationStatus;
use crate::crd::{CheckedMeshRollout, MeshRollout, MeshRolloutStatus, FIELD_MANAGER};
use crate::error::{Error, Result};
use crate::rollout::engine::Command;
use crate::rollout::Rollout;
use crate::store::resources::Claims;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How often the status of every resource the service acts on is compared with its rollout.
const REPORT_INTERVAL: Duration = Duration::from_millis(500);
/// How often a replica that does not lead checks whether it leads now.
const LEADERSHIP_POLL: Duration = Duration::from_millis(250);
/// How long after a failed reconciliation (the API server or the controller could not do it
/// now: a 503, a lost permission) it is tried again, without waiting for the resource to change.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Reconciles MeshRollouts into the controller's rollouts while the replica leads.
pub struct Reconciler {
    controller: Arc<Controller>,
    api: Api<MeshRollout>,
    namespace: String,
    target: ServiceTarget,
    recorder: Recorder,
    /// The rollouts whose record lives in their resource (shared with the state store).
    claims: Arc<Claims>,
}

/// What the leader knows of a resource it acts on.
struct Tracked {
    /// The generation last reconciled (`status.observedGeneration`).
    generation: Option<i64>,
    /// The resource, for Events.
    reference: ObjectReference,
    /// The rollout as last reported (the same run), for the Events of what changed since.
    reported: Option<Rollout>,
    /// The status as last written.
    status: Option<MeshRolloutStatus>,
}

impl Reconciler {
    /// A reconciler of the MeshRollouts in `namespace` for `controller`, which drives `target`;
    /// Events name `identity` (the pod) as the reporting instance. The rollouts it starts are
    /// claimed in `claims`, so the state store keeps them in their resources.
    pub fn new(
        controller: Arc<Controller>,
        client: kube::Client,
        namespace: &str,
        target: ServiceTarget,
        identity: &str,
        claims: Arc<Claims>,
    ) -> Reconciler {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(identity.to_string()),
        };
        Reconciler {
            controller,
            api: Api::namespaced(client.clone(), namespace),
            namespace: namespace.to_string(),
            target,
            recorder: Recorder::new(client, reporter),
            claims,
        }
    }

    /// Runs until the task is dropped: waits to lead, then watches and reports until it no
    /// longer leads, and again.
    pub async fn run(self) {
        loop {
            while !self.controller.is_leader() {
                tokio::time::sleep(LEADERSHIP_POLL).await;
            }
            tracing::info!(namespace = %self.namespace, "leading: reconciling MeshRollouts");
            self.lead().await;
            tracing::info!("no longer leading: MeshRollouts left to the new leader");
        }
    }

    /// One term as leader: every resource is reconciled as the watch lists it, then on each
    /// change; statuses are written as rollouts change. Returns when leadership is lost.
    async fn lead(&self) {
        let mut tracked: HashMap<String, Tracked> = HashMap::new();
        // Resources whose last reconciliation failed, and when to try again.
        let mut failed: HashMap<String, tokio::time::Instant> = HashMap::new();
        let events = watcher(self.api.clone(), watcher::Config::default())
            .default_backoff()
            .applied_objects();
        futures::pin_mut!(events);
        let mut report = tokio::time::interval(REPORT_INTERVAL);
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(resource)) => self.reconcile(&resource, &mut tracked, &mut failed).await,
                    Some(Err(error)) => tracing::warn!(%error, namespace = %self.namespace, "watching MeshRollouts failed; retrying"),
                    None => return,
                },
                _ = report.tick() => {
                    if !self.controller.is_leader() {
                        return;
                    }
                    self.report_all(&mut tracked).await;
                    let now = tokio::time::Instant::now();
                    let due: Vec<String> = failed
                        .iter()
                        .filter(|(_, at)| **at <= now)
                        .map(|(name, _)| name.clone())
                        .collect();
                    for name in due {
                        // As it is now: it may have changed or gone since.
                        match self.api.get_opt(&name).await {
                            Ok(Some(resource)) => self.reconcile(&resource, &mut tracked, &mut failed).await,
                            Ok(None) => {
                                failed.remove(&name);
                            }
                            Err(error) => {
                                tracing::warn!(mrollout = %name, %error, "cannot read the MeshRollout to reconcile it again");
                                failed.insert(name, now + RETRY_AFTER);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Decides what `resource` needs and does it; a failure is tried again after
    /// [`RETRY_AFTER`] (`failed`), unless the resource changes first.
    async fn reconcile(
        &self,
        resource: &MeshRollout,
        tracked: &mut HashMap<String, Tracked>,
        failed: &mut HashMap<String, tokio::time::Instant>,
    ) {
        let name = resource.name_any();
        let checked = CheckedMeshRollout::try_from(resource);
        let rollout = self.controller.get(&name).await.ok();
        let has_finalizer = resource.finalizers().iter().any(|f| f == FINALIZER);
        let observed = Observed {
            checked: &checked,
            generation: resource.metadata.generation,
            deleting: resource.metadata.deletion_timestamp.is_some(),
            has_finalizer,
            status: resource.status.as_ref(),
            run: tracked
                .get(&name)
                .and_then(|t| t.reported.as_ref())
                .map(|r| r.status.created_at),
        };
        let decision = decide(&observed, rollout.as_ref(), &self.target);
        tracing::debug!(mrollout = %name, ?decision, "reconciling MeshRollout");
        let reference = resource.object_ref(&());
        let outcome = self
            .act(
                resource,
                &checked,
                decision,
                has_finalizer,
                &reference,
                tracked,
            )
            .await;
        match outcome {
            Ok(()) => {
                failed.remove(&name);
            }
            Err(error) => {
                tracing::warn!(mrollout = %name, error = %crate::error::with_causes(&error), "cannot reconcile MeshRollout; trying again in {}s", RETRY_AFTER.as_secs());
                failed.insert(name, tokio::time::Instant::now() + RETRY_AFTER);
            }
        }
    }

    async fn act(
        &self,
        resource: &MeshRollout,
        checked: &Result<CheckedMeshRollout>,
        decision: Decision,
        has_finalizer: bool,
        reference: &ObjectReference,
        tracked: &mut HashMap<String, Tracked>,
    ) -> Result<()> {
        let name = resource.name_any();
        let generation = resource.metadata.generation;
        let spec = checked.as_ref().ok().map(|c| c.spec.clone());
        if !matches!(decision, Decision::Nothing | Decision::Finalize { .. }) && !has_finalizer {
            self.set_finalizer(&name, true).await?;
        }
        if !matches!(
            decision,
            Decision::Nothing | Decision::Finalize { .. } | Decision::Refuse(_)
        ) {
            // From the next save on, this run's record lives in the resource.
            self.claims.claim(&name);
        }
        match decision {
            Decision::Nothing => return Ok(()),
            Decision::Refuse(refusal) => {
                tracked.remove(&name);
                return self.refuse(resource, &refusal).await;
            }
            Decision::Finalize { abort } => {
                tracked.remove(&name);
                if abort {
                    self.controller.command(&name, Command::Abort, None).await?;
                    self.publish(
                        reference,
                        &Note::warning("Aborted", "resource deleted: the canary is back to 0 %"),
                    )
                    .await;
                }
                self.set_finalizer(&name, false).await?;
                // The resource goes: the finished rollout stays in the service's state, kept
                // in the ConfigMap from the next save on.
                self.claims.release(&name);
                return Ok(());
            }
            Decision::Create { pause } => {
                let Some(spec) = spec else { return Ok(()) };
                match self.controller.create(spec).await {
                    Ok(_) => {}
                    Err(error) if refusable(&error) => {
                        tracked.remove(&name);
                        self.claims.release(&name);
                        let refusal = Refusal {
                            reason: "Refused",
                            message: in_spec(&error),
                        };
                        return self.refuse(resource, &refusal).await;
                    }
                    Err(error) => return Err(error),
                }
                if pause {
                    self.controller.command(&name, Command::Pause, None).await?;
                }
                tracked.remove(&name);
            }
            Decision::Replace { abort, pause } => {
                let Some(spec) = spec else { return Ok(()) };
                let why = format!(
                    "MeshRollout {name} generation {} asks for a new run",
                    generation.unwrap_or(0)
                );
                let old = self.controller.get(&name).await.ok();
                match self.controller.replace(spec, &why).await {
                    Ok(_) => {}
                    Err(error) if refusable(&error) => {
                        let refusal = Refusal {
                            reason: "Refused",
                            message: in_spec(&error),
                        };
                        return self.refuse(resource, &refusal).await;
                    }
                    Err(error) => return Err(error),
                }
                if abort {
                    let weight = old.map_or(0, |o| o.status.canary_weight);
                    let note = format!(
                        "the spec changed: the running rollout is aborted at {} and a new run starts",
                        crate::view::percent(weight)
                    );
                    self.publish(reference, &Note::warning("Aborted", note))
                        .await;
                }
                self.publish(reference, &Note::normal("Progressing", why))
                    .await;
                if pause {
                    self.controller.command(&name, Command::Pause, None).await?;
                }
                // A new run: its whole history is news.
                tracked.remove(&name);
            }
            Decision::Pause => {
                self.controller.command(&name, Command::Pause, None).await?;
            }
            Decision::Resume => {
                self.controller
                    .command(&name, Command::Resume, None)
                    .await?;
            }
            Decision::Partition(partition) => {
                self.controller
                    .command(&name, Command::SetPartition(partition), None)
                    .await?;
            }
            Decision::WriteStatus => {}
        }
        let rollout = self.controller.get(&name).await.ok();
        let entry = tracked.entry(name.clone()).or_insert_with(|| Tracked {
            generation,
            reference: reference.clone(),
            reported: rollout
                .as_ref()
                .and_then(|r| already_reported(r, resource.status.as_ref())),
            status: resource.status.as_ref().map(MeshRolloutStatus::view),
        });
        entry.generation = generation;
        entry.reference = reference.clone();
        self.report(&name, entry).await
    }

    /// Writes the status of every tracked resource whose rollout changed.
    async fn report_all(&self, tracked: &mut HashMap<String, Tracked>) {
        let mut gone = Vec::new();
        for (name, entry) in tracked.iter_mut() {
            match self.report(name, entry).await {
                Ok(()) => {}
                Err(Error::Remote { source, .. }) if matches!(source.downcast_ref::<kube::Error>(), Some(kube::Error::Api(status)) if status.code == 404) =>
                {
                    gone.push(name.clone());
                }
                Err(error) => {
                    tracing::warn!(mrollout = %name, error = %crate::error::with_causes(&error), "cannot write the MeshRollout's status; retrying")
                }
            }
        }
        for name in gone {
            tracked.remove(&name);
        }
    }

    /// Writes `name`'s status if its rollout changed since the last write, and the Events of
    /// what happened since.
    async fn report(&self, name: &str, entry: &mut Tracked) -> Result<()> {
        let Ok(rollout) = self.controller.get(name).await else {
            return Ok(());
        };
        let propagation = self
            .controller
            .propagation(rollout.status.weight_generation);
        let propagation = PropagationStatus {
            weight_generation: rollout.status.weight_generation,
            applied: (propagation.total > 0).then_some(propagation.applied == propagation.total),
            summary: (propagation.total > 0).then_some(propagation.summary),
        };
        let status = MeshRolloutStatus::from_rollout(
            &rollout,
            entry.generation,
            Some(propagation),
            entry.status.as_ref(),
        );
        if entry.status.as_ref() == Some(&status)
            && entry.reported.as_ref().map(|r| r.version) == Some(rollout.version)
        {
            return Ok(());
        }
        if entry.status.as_ref() != Some(&status) {
            self.write_status(name, &status).await?;
            entry.status = Some(status);
        }
        let same_run = entry
            .reported
            .as_ref()
            .filter(|r| r.status.created_at == rollout.status.created_at);
        for note in notes(same_run, &rollout) {
            self.publish(&entry.reference, &note).await;
        }
        entry.reported = Some(rollout);
        Ok(())
    }

    /// Server-side applies `status` on the status subresource under the service's field manager.
    async fn write_status(&self, name: &str, status: &MeshRolloutStatus) -> Result<()> {
        // The view only: `run` is the state store's (another field manager).
        let body = json!({
            "apiVersion": MeshRollout::api_version(&()),
            "kind": MeshRollout::kind(&()),
            "status": status.view(),
        });
        self.api
            .patch_status(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await
            .map_err(|source| {
                Error::remote(
                    format!("status of MeshRollout {}/{name}", self.namespace),
                    source,
                )
            })?;
        Ok(())
    }

    /// Says in `resource`'s status why the service does not act on it (condition
    /// `Progressing=False`, the refusal's reason and message), with a Warning Event; both only
    /// when the refusal is news for this generation.
    async fn refuse(&self, resource: &MeshRollout, refusal: &Refusal) -> Result<()> {
        let name = resource.name_any();
        let generation = resource.metadata.generation;
        let previous = resource.status.clone().unwrap_or_default();
        let already = previous.observed_generation == generation
            && previous.message.as_deref() == Some(refusal.message.as_str())
            && previous
                .condition("Progressing")
                .is_some_and(|c| c.reason == refusal.reason);
        if already {
            return Ok(());
        }
        tracing::warn!(mrollout = %name, reason = refusal.reason, "{}", refusal.message);
        let mut status = previous;
        status.observed_generation = generation;
        status.message = Some(refusal.message.clone());
        let condition = Condition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: refusal.reason.into(),
            message: refusal.message.clone(),
            observed_generation: generation,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        };
        status.conditions.retain(|c| c.type_ != "Progressing");
        status.conditions.insert(0, condition);
        self.write_status(&name, &status).await?;
        self.publish(
            &resource.object_ref(&()),
            &Note::warning(refusal.reason, refusal.message.clone()),
        )
        .await;
        Ok(())
    }

    /// Adds (`true`) or removes the service's finalizer: a server-side apply of
    /// `metadata.finalizers` under the service's field manager, which owns that one entry, so
    /// other finalizers and whoever applies the spec are not touched.
    async fn set_finalizer(&self, name: &str, present: bool) -> Result<()> {
        let finalizers: Vec<&str> = if present { vec![FINALIZER] } else { vec![] };
        let body = json!({
            "apiVersion": MeshRollout::api_version(&()),
            "kind": MeshRollout::kind(&()),
            "metadata": {"name": name, "finalizers": finalizers},
        });
        self.api
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Apply(body),
            )
            .await
            .map_err(|source| {
                Error::remote(
                    format!("finalizer of MeshRollout {}/{name}", self.namespace),
                    source,
                )
            })?;
        Ok(())
    }

    /// Publishes an Event about the resource; a failure is logged (Events are best effort).
    async fn publish(&self, reference: &ObjectReference, note: &Note) {
        let event = Event {
            type_: if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.into(),
            note: Some(truncate(&note.note, 1000)),
            action: note.reason.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, reference).await {
            tracing::warn!(%error, reason = note.reason, "cannot publish an Event");
        }
    }
}

/// What a status written by an earlier leader already reported of `rollout` (its Events were
/// published with it), so a new leader publishes only what happened since: `rollout` cut back
/// to the status's history, phase and step. `None` when the status is of another run, or none.
fn already_reported(rollout: &Rollout, status: Option<&MeshRolloutStatus>) -> Option<Rollout> {
    let status = status?;
    if status.run_created_at() != Some(rollout.status.created_at) {
        return None;
    }
    let mut reported = rollout.clone();
    reported.status.phase = status.phase?;
    reported.status.step = usize::try_from(status.step?).ok()?;
    reported.status.history = status.history.clone();
    Some(reported)
}

/// Whether the controller refused the request itself (the resource must change), rather than
/// failing to carry it out now (retried).
fn refusable(error: &Error) -> bool {
    matches!(
        error,
        Error::Invalid { .. } | Error::Conflict(_) | Error::NotFound(_)
    )
}

/// An error of the API's rollout body with its field as the resource names it (`spec.route`).
fn in_spec(error: &Error) -> String {
    match error {
        Error::Invalid { field, reason } if !field.is_empty() => {
            format!("spec.{field}: {reason}")
        }
        other => other.to_string(),
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}
