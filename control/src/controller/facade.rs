//! The controller's face to the API: reading rollouts and the filter config, and every write —
//! create, a person's command, delete, QA rules — through [`Controller::mutate`], which computes the
//! new state under one lock, saves it, then pushes it, and answers with exactly what the write left.

use super::*;
use crate::rollout::DeploymentChange;

/// How many times a write re-reads the saved state and re-applies itself after another writer
/// changed it, before giving up.
const STATE_CONFLICT_RETRIES: usize = 3;

impl Controller {
    /// Creates a rollout; the engine starts it at once.
    pub async fn create(self: &Arc<Self>, spec: RolloutSpec) -> Result<Rollout> {
        let rollout = self
            .start_run(&spec, |state, now| {
                state.create_rollout(spec.clone(), now).map(|_| ())
            })
            .await?;
        tracing::info!(rollout = %rollout.spec.name, route = %rollout.spec.route, "created rollout");
        Ok(rollout)
    }

    /// Ends rollout `spec.name`'s current run — aborting it first if it still runs (traffic back
    /// to stable) — takes it out of the state and starts `spec` under the same name, all in one
    /// write: a MeshRollout whose spec asks for a new run. `why` goes into the new run's history.
    pub async fn replace(self: &Arc<Self>, spec: RolloutSpec, why: &str) -> Result<Rollout> {
        let name = spec.name.clone();
        let rollout = self
            .start_run(&spec, |state, now| {
                let old = state
                    .rollouts
                    .get(&name)
                    .cloned()
                    .ok_or_else(|| Error::NotFound(format!("rollout {name} not found")))?;
                let ended = if old.status.phase.is_terminal() {
                    format!("{} {}", old.spec.canary, old.status.phase.as_str())
                } else {
                    let aborted = engine::command(&old, Command::Abort, now)?;
                    state.put_rollout(aborted)?;
                    format!(
                        "{} aborted at {}",
                        old.spec.canary,
                        engine::percent(old.status.canary_weight)
                    )
                };
                state.delete_rollout(&name)?;
                state.create_rollout(spec.clone(), now)?;
                if let Some(created) = state.rollouts.get(&name) {
                    let noted = engine::note(
                        created,
                        format!("{why}: replaces the previous run ({ended})"),
                        now,
                    );
                    state.rollouts.insert(name.clone(), noted);
                }
                Ok(())
            })
            .await?;
        tracing::info!(rollout = %name, canary = %rollout.spec.canary, "replaced rollout: {why}");
        Ok(rollout)
    }

    /// Whether [`Controller::create`] would take `spec` now, changing nothing: the same checks,
    /// with the same errors, on a copy of the state. The API runs it before it creates a
    /// MeshRollout for a rollout (Kubernetes mode), so bad input is answered at once and leaves
    /// no resource behind.
    pub async fn check_create(&self, spec: &RolloutSpec) -> Result<()> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        self.check_workloads(spec)?;
        let mut copy = self.state.lock().await.clone();
        copy.create_rollout(spec.clone(), Timestamp::now())
            .map(|_| ())
    }

    /// A rollout that scales workloads needs Kubernetes mode.
    fn check_workloads(&self, spec: &RolloutSpec) -> Result<()> {
        if spec.workloads.is_some() && self.options.scaler.is_none() {
            return Err(Error::invalid(
                "workloads",
                "scaling Deployments needs Kubernetes mode (--wasmplugin); this service runs standalone, with no Deployments to scale",
            ));
        }
        Ok(())
    }

    /// Starts a run of rollout `spec`: `put` brings it into the state (a create, a replace), the
    /// engine advances it in the same write, and the IO it asks for starts once that write is
    /// saved. Answers with the rollout as the write left it.
    async fn start_run(
        self: &Arc<Self>,
        spec: &RolloutSpec,
        mut put: impl FnMut(&mut ServiceState, Timestamp) -> Result<()>,
    ) -> Result<Rollout> {
        self.check_workloads(spec)?;
        let name = &spec.name;
        let observation = self.observation();
        let mut io = Io::new();
        let rollout = self
            .mutate_then(
                |state, now| {
                    io.clear();
                    put(state, now)?;
                    self.advance(state, name, &observation, now, &mut io);
                    Ok(())
                },
                |state, ()| state.rollouts.get(name).cloned(),
            )
            .await?
            .ok_or_else(|| Error::NotFound(format!("rollout {name} not found")))?;
        self.start_io(io);
        Ok(rollout)
    }

    /// One rollout.
    pub async fn get(&self, name: &str) -> Result<Rollout> {
        self.state
            .lock()
            .await
            .rollouts
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("rollout {name} not found")))
    }

    /// Every rollout.
    pub async fn list(&self) -> Vec<Rollout> {
        self.state.lock().await.rollouts.values().cloned().collect()
    }

    /// The filter config as last saved (and pushed).
    pub async fn filter(&self) -> FilterConfig {
        self.state.lock().await.filter.clone()
    }

    /// Carries out a person's command; `expected_version` is the client's `If-Match`, if any.
    pub async fn command(
        self: &Arc<Self>,
        name: &str,
        command: Command,
        expected_version: Option<String>,
    ) -> Result<Rollout> {
        let span =
            tracing::info_span!("rollout_command", rollout = %name, command = command.as_str());
        // A person acting on a rollout after a drift was left in place (policy `pause`) has
        // looked at it: this write re-applies the service's config.
        let held = self.held_drift.locked().take();
        if let Some(live_generation) = held {
            let mut resync = self.resync.locked();
            *resync = Some(resync.unwrap_or(0).max(live_generation));
        }
        let observation = self.observation();
        let mut io = Io::new();
        let rollout = self
            .mutate_then(
                |state, now| {
                    io.clear();
                    let current = state
                        .rollouts
                        .get(name)
                        .ok_or_else(|| Error::NotFound(format!("rollout {name} not found")))?;
                    check_version(name, current.version, expected_version.as_deref())?;
                    let weight_before = current.status.canary_weight;
                    let changed = engine::command(current, command, now)?;
                    let weight_changed = changed.status.canary_weight != weight_before;
                    state.put_rollout(changed)?;
                    // A weight the command set is pushed by this write; the engine goes on from
                    // it in the next tick (see `advance`).
                    if !weight_changed {
                        self.advance(state, name, &observation, now, &mut io);
                    }
                    Ok(())
                },
                |state, ()| state.rollouts.get(name).cloned(),
            )
            .instrument(span)
            .await?
            .ok_or_else(|| Error::NotFound(format!("rollout {name} not found")))?;
        tracing::info!(rollout = %name, command = command.as_str(), phase = rollout.status.phase.as_str(), "{}", rollout.status.message);
        self.start_io(io);
        Ok(rollout)
    }

    /// Deletes a finished rollout.
    pub async fn delete(&self, name: &str, expected_version: Option<String>) -> Result<Rollout> {
        self.mutate(|state, _| {
            let current = state
                .rollouts
                .get(name)
                .ok_or_else(|| Error::NotFound(format!("rollout {name} not found")))?;
            check_version(name, current.version, expected_version.as_deref())?;
            state.delete_rollout(name)
        })
        .await
    }

    /// Adds a QA rule to a live route; returns its index.
    pub async fn add_rule(&self, route: &str, rule: RuleConfig) -> Result<usize> {
        self.mutate(|state, _| state.add_rule(route, rule.clone()))
            .await
    }

    /// Removes QA rule `index` of a live route.
    pub async fn remove_rule(&self, route: &str, index: usize) -> Result<RuleConfig> {
        self.mutate(|state, _| state.remove_rule(route, index))
            .await
    }

    /// Applies `change` to a copy of the state; if it succeeds and changed anything, saves the
    /// copy, makes it current and pushes its filter config. Changes in the filter config get the
    /// next generation, and rollouts whose weight changed record that generation. A pending
    /// re-apply (drift) makes the write push the config under a new generation even if it did not
    /// change it.
    ///
    /// If another writer changed the saved state since this replica read it, the write re-reads
    /// it and applies `change` again on top (a few times), so no one's change is lost; metadata
    /// edits of the state's object do not count (the store absorbs them).
    pub(super) async fn mutate<T>(
        &self,
        change: impl FnMut(&mut ServiceState, Timestamp) -> Result<T>,
    ) -> Result<T> {
        self.mutate_then(change, |_, out| out).await
    }

    /// [`Controller::mutate`], then `then` reads the state as this write left it (before any other
    /// write), with what `change` returned: an API write answers with exactly its own result.
    pub(super) async fn mutate_then<T, R>(
        &self,
        mut change: impl FnMut(&mut ServiceState, Timestamp) -> Result<T>,
        then: impl FnOnce(&ServiceState, T) -> R,
    ) -> Result<R> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let mut current = self.state.lock().await;
        let mut reloaded = false;
        for attempt in 1..=STATE_CONFLICT_RETRIES {
            let mut next = current.clone();
            let now = Timestamp::now();
            let out = change(&mut next, now)?;
            // The hooks this write calls are known before retention deletes anything, so a
            // rollout that finishes in it still gets its notification.
            let notify = notifications(&current, &next);
            let names: std::collections::BTreeSet<&String> = current
                .rollouts
                .keys()
                .chain(next.rollouts.keys())
                .collect();
            let scale_downs: Vec<(String, DeploymentChange)> = names
                .into_iter()
                .flat_map(|name| {
                    engine::scale_downs(current.rollouts.get(name), next.rollouts.get(name))
                })
                .collect();
            crate::retention::apply_logged(&self.retention, &mut next, now);
            let resync = *self.resync.locked();
            if next == *current && resync.is_none() && !reloaded {
                return Ok(then(&current, out));
            }
            let push_needed = next.filter != current.filter || resync.is_some() || reloaded;
            if push_needed {
                let floor = resync
                    .unwrap_or(0)
                    .max(self.pushed_generation.load(Ordering::SeqCst))
                    .max(current.filter.generation);
                next.filter.generation = floor + 1;
                for (name, rollout) in next.rollouts.iter_mut() {
                    let before = current.rollouts.get(name).map(|r| r.status.canary_weight);
                    let carried = resync.is_some() && !rollout.status.phase.is_terminal();
                    if carried || before != Some(rollout.status.canary_weight) {
                        rollout.status.weight_generation = next.filter.generation;
                    }
                }
            }
            match self.store.save(&next).await {
                Ok(()) => self.set_problem(SAVE, None),
                Err(Error::StateConflict { reason, .. }) if attempt < STATE_CONFLICT_RETRIES => {
                    tracing::warn!(%reason, attempt, "the saved state was changed by another writer; re-reading it and applying this change on top");
                    match self.load_checked().await {
                        Ok(Some(saved)) => *current = saved,
                        Ok(None) => {}
                        Err(error) => {
                            self.set_problem(SAVE, Some(&error));
                            return Err(error);
                        }
                    }
                    reloaded = true;
                    continue;
                }
                Err(error) => {
                    self.set_problem(SAVE, Some(&error));
                    return Err(error);
                }
            }
            for notification in notify {
                let _ = self.notify_tx.send(notification);
            }
            self.scale_in_background(scale_downs);
            *current = next;
            if push_needed && self.push(&current.filter).await && resync.is_some() {
                *self.resync.locked() = None;
            }
            self.wake.notify_one();
            return Ok(then(&current, out));
        }
        Err(Error::Conflict(
            "the saved state kept changing under this write; retry".into(),
        ))
    }
}

/// `If-Match` carries the version as `"<n>"` (a strong ETag) or bare; `*` matches anything.
pub(super) fn check_version(name: &str, current: u64, expected: Option<&str>) -> Result<()> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let wanted = expected.trim().trim_start_matches("W/").trim_matches('"');
    if wanted == "*" || wanted == current.to_string() {
        return Ok(());
    }
    Err(Error::VersionMismatch {
        what: format!("rollout {name}"),
        expected: expected.to_string(),
        current,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_forms() {
        for (expected, ok) in [
            (None, true),
            (Some("\"3\""), true),
            (Some("3"), true),
            (Some("W/\"3\""), true),
            (Some("*"), true),
            (Some("\"2\""), false),
        ] {
            assert_eq!(check_version("r", 3, expected).is_ok(), ok, "{expected:?}");
        }
    }
}
