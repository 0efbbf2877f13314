//! The controller's background loops: the engine, the proxies' observation with push retries, and
//! the notification hooks; and the push itself.

use super::*;
use crate::analysis::MirrorCounters;
use crate::view::Propagation;

/// The last counts of the copies mirrored to each rollout's canary, and when they were read.
#[derive(Debug, Default)]
pub(super) struct MirrorReads {
    read_at: Option<std::time::Instant>,
    by_rollout: std::collections::BTreeMap<String, MirrorCounters>,
    /// Each rollout's counts at its last analysis reading in a mirror step.
    windows: std::collections::BTreeMap<String, MirrorCounters>,
}

impl Controller {
    /// Runs the engine and the observer until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let observer = {
            let this = self.clone();
            async move {
                loop {
                    tokio::time::sleep(OBSERVE_INTERVAL).await;
                    this.observe().await;
                    if this.is_leader() {
                        this.retry_push().await;
                    }
                }
            }
        };
        let notifications = {
            let this = self.clone();
            let receiver = this.notify_rx.locked().take();
            async move {
                let Some(mut receiver) = receiver else { return };
                while let Some((rollout, kind)) = receiver.recv().await {
                    let this = this.clone();
                    // Hooks must not hold up the engine or each other.
                    tokio::spawn(async move { this.notify(rollout, kind).await });
                }
            }
        };
        let engine = async move {
            let mut leadership = self.leadership.clone();
            loop {
                if !leadership.borrow_and_update().is_leader {
                    self.synced.store(false, Ordering::SeqCst);
                    if let Err(error) = self.reload().await {
                        tracing::warn!(%error, "cannot reload the leader's state");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(FOLLOWER_RELOAD_INTERVAL) => {}
                        _ = leadership.changed() => {}
                    }
                    continue;
                }
                if !self.synced.load(Ordering::SeqCst) {
                    tracing::info!("leading now: resuming every rollout from the saved state");
                    if let Err(error) = self.take_over().await {
                        tracing::error!(%error, "cannot take over the saved state; retrying");
                        tokio::time::sleep(FOLLOWER_RELOAD_INTERVAL).await;
                        continue;
                    }
                }
                let wake_at = match self.tick().await {
                    Ok(wake_at) => wake_at,
                    Err(error) => {
                        tracing::error!(%error, "engine tick failed");
                        None
                    }
                };
                let sleep = wake_at.map_or(ENGINE_INTERVAL, |at| {
                    at.since(Timestamp::now()).min(ENGINE_INTERVAL)
                });
                tokio::select! {
                    _ = tokio::time::sleep(sleep) => {}
                    _ = self.wake.notified() => {}
                }
            }
        };
        tokio::join!(observer, engine, notifications);
    }

    /// Calls notification hooks; a failing `rollout` hook counts as a failed check.
    pub(super) async fn notify(&self, rollout: Rollout, kind: WebhookKind) {
        let Err(error) = webhook::call_all(&self.http, &rollout, kind).await else {
            return;
        };
        let error = error.to_string();
        if kind != WebhookKind::Rollout {
            return;
        }
        let name = rollout.spec.name.clone();
        let recorded = self
            .mutate(|state, now| {
                if let Some(current) = state
                    .rollouts
                    .get(&name)
                    .filter(|r| !r.status.phase.is_terminal())
                {
                    let failed = engine::record_hook_failure(current, &error, now);
                    state.rollouts.insert(name.clone(), failed);
                }
                Ok(())
            })
            .await;
        if let Err(error) = recorded {
            tracing::error!(rollout = %name, %error, "cannot record the hook failure");
        }
    }

    /// Pushes `filter`; whether it went through (a failure is recorded and retried).
    pub(super) async fn push(&self, filter: &FilterConfig) -> bool {
        match self.router.apply(filter).await {
            Ok(()) => {
                self.pushed_generation
                    .store(filter.generation, Ordering::SeqCst);
                *self.pushed_at.locked() = Some(std::time::Instant::now());
                self.set_problem(PUSH, None);
                self.metrics.pushed(Ok(()));
                tracing::info!(generation = filter.generation, target = %self.router.describe(), "pushed filter config");
                true
            }
            Err(error) => {
                self.set_problem(PUSH, Some(&error));
                self.metrics.pushed(Err(&error));
                tracing::error!(%error, generation = filter.generation, "push failed; retrying");
                false
            }
        }
    }

    /// Pushes again if the last push of the current config failed, at most every
    /// [`PUSH_RETRY_INTERVAL`] (the target may be missing for a while, e.g. a WasmPlugin not yet
    /// installed).
    pub(super) async fn retry_push(&self) {
        let state = self.state.lock().await;
        if self.pushed_generation.load(Ordering::SeqCst) == state.filter.generation {
            return;
        }
        let due = {
            let mut last = self.last_retry.locked();
            let due = last.is_none_or(|at| at.elapsed() >= PUSH_RETRY_INTERVAL);
            if due {
                *last = Some(std::time::Instant::now());
            }
            due
        };
        if due && self.push(&state.filter).await {
            // The generation carrying a pending re-apply went through.
            *self.resync.locked() = None;
        }
    }

    pub(super) async fn observe(&self) {
        let answers = self.observer.generations().await;
        let changed = {
            let mut proxies = self.proxies.write_locked();
            let changed = *proxies != answers;
            *proxies = answers;
            changed
        };
        let workloads_changed = self.observe_workloads().await;
        self.observe_mirrors().await;
        if changed || workloads_changed {
            self.wake.notify_one();
        }
    }

    /// Reads the replicas of the Deployments the running rollouts name in `workloads`; whether
    /// anything changed. A Deployment that cannot be read is left out (the engine then waits for
    /// it, and pauses the rollout when its ready timeout runs out).
    async fn observe_workloads(&self) -> bool {
        let Some(scaler) = self.scaling.as_ref().map(|s| s.scaler().clone()) else {
            return false;
        };
        {
            // One read per Deployment a second is plenty for replicas that take seconds to start.
            let mut last = self.workloads_read_at.locked();
            if last.is_some_and(|at| at.elapsed() < WORKLOADS_INTERVAL) {
                return false;
            }
            *last = Some(std::time::Instant::now());
        }
        // A write holding the state (it may be pushing) is not waited for: the next round reads.
        let Ok(state) = self.state.try_lock() else {
            return false;
        };
        let names: std::collections::BTreeSet<String> = {
            state
                .rollouts
                .values()
                .filter(|r| !r.status.phase.is_terminal())
                .filter_map(|r| r.spec.workloads.as_ref())
                .flat_map(|w| [w.stable.clone(), w.canary.clone()])
                .collect()
        };
        drop(state);
        let mut read = std::collections::BTreeMap::new();
        for name in names {
            match scaler.ready(&name).await {
                Ok(replicas) => {
                    read.insert(name, replicas);
                }
                Err(error) => {
                    tracing::warn!(deployment = %name, %error, "cannot read the Deployment")
                }
            }
        }
        let mut workloads = self.workloads.write_locked();
        let changed = *workloads != read;
        *workloads = read;
        changed
    }

    /// Scales (or deletes) each Deployment in a task of its own, retrying failures (see
    /// [`scaling`]).
    pub(super) fn scale_in_background(
        &self,
        changes: Vec<(String, crate::rollout::DeploymentChange)>,
    ) {
        let Some(scaling) = &self.scaling else {
            return;
        };
        for (name, change) in changes {
            scaling.change(name, change);
        }
    }

    pub(super) fn observation(&self) -> Observation {
        let proxies = self.proxies.read_locked();
        Observation {
            min_proxy_generation: if proxies.is_empty() {
                None
            } else {
                Some(
                    proxies
                        .iter()
                        .map(|p| p.generation.unwrap_or(0))
                        .min()
                        .unwrap_or(0),
                )
            },
            workloads: self.workloads.read_locked().clone(),
        }
    }

    /// Counts the copies mirrored to the canaries of the rollouts in a mirror step, at most every
    /// [`MIRRORS_INTERVAL`]. A rollout keeps its last count after the step (its view shows what
    /// its mirror steps got); the counts are the proxies' since they started.
    async fn observe_mirrors(&self) {
        {
            let mut mirrors = self.mirrors.locked();
            if mirrors
                .read_at
                .is_some_and(|at| at.elapsed() < MIRRORS_INTERVAL)
            {
                return;
            }
            mirrors.read_at = Some(std::time::Instant::now());
        }
        let Ok(state) = self.state.try_lock() else {
            return;
        };
        let kept: std::collections::BTreeSet<String> = state.rollouts.keys().cloned().collect();
        let mirroring: Vec<(String, String, String)> = state
            .rollouts
            .values()
            .filter(|r| r.mirror().is_some())
            .map(|r| {
                let spec = &r.spec;
                (spec.name.clone(), spec.route.clone(), spec.canary.clone())
            })
            .collect();
        drop(state);
        let mut read = Vec::with_capacity(mirroring.len());
        for (name, route, canary) in mirroring {
            match self.observer.mirrored(&route, &canary).await {
                Ok(Some(counters)) => read.push((name, counters)),
                Ok(None) => {}
                Err(error) => {
                    tracing::debug!(rollout = %name, %error, "cannot count the mirrored copies")
                }
            }
        }
        let mut mirrors = self.mirrors.locked();
        mirrors.by_rollout.retain(|name, _| kept.contains(name));
        mirrors.windows.retain(|name, _| kept.contains(name));
        mirrors.by_rollout.extend(read);
    }

    /// Keeps `current` as `rollout`'s mirror counts at this analysis reading; the counts at the
    /// reading before, if there was one.
    pub(super) fn remember_mirror_window(
        &self,
        rollout: &str,
        current: MirrorCounters,
    ) -> Option<MirrorCounters> {
        self.mirrors
            .locked()
            .windows
            .insert(rollout.to_string(), current)
    }

    /// What the proxies counted of the copies mirrored to `rollout`'s canary, if it has mirrored
    /// and the observer can tell.
    pub fn mirrored(&self, rollout: &str) -> Option<MirrorCounters> {
        self.mirrors.locked().by_rollout.get(rollout).copied()
    }

    /// The replicas of the Deployments running rollouts name, as last read, by name.
    pub fn workload_readings(&self) -> std::collections::BTreeMap<String, Replicas> {
        self.workloads.read_locked().clone()
    }

    /// Why the latest scale (or delete) of each Deployment that has not gone through failed, by
    /// name.
    pub fn workload_failures(&self) -> std::collections::BTreeMap<String, String> {
        self.scaling
            .as_ref()
            .map(|scaling| scaling.failing())
            .unwrap_or_default()
    }

    /// How far `generation` has reached.
    pub fn propagation(&self, generation: u64) -> Propagation {
        let proxies = self.proxies.read_locked().clone();
        let applied = proxies
            .iter()
            .filter(|p| p.generation.is_some_and(|g| g >= generation))
            .count();
        Propagation {
            generation,
            applied,
            total: proxies.len(),
            summary: format!("applied on {applied}/{} proxies", proxies.len()),
            proxies,
        }
    }
}

/// The notification hooks a change calls: `rollout` hooks when a step starts, `postRollout` when
/// a rollout succeeds, `rollback` when it is rolled back or aborted — also a running run that a
/// new run of the same name replaced (a MeshRollout's new spec aborts it in the same write).
pub(super) fn notifications(
    before: &ServiceState,
    after: &ServiceState,
) -> Vec<(Rollout, WebhookKind)> {
    let mut out = Vec::new();
    for (name, rollout) in &after.rollouts {
        let old = before.rollouts.get(name);
        let replaced = old.filter(|o| {
            o.status.created_at != rollout.status.created_at && !o.status.phase.is_terminal()
        });
        if let Some(replaced) = replaced.filter(|o| !o.spec.webhooks.is_empty()) {
            let at = rollout.status.created_at;
            if let Ok(aborted) = engine::command(replaced, Command::Abort, at) {
                out.push((aborted, WebhookKind::Rollback));
            }
        }
        let old = old.filter(|o| o.status.created_at == rollout.status.created_at);
        if rollout.spec.webhooks.is_empty() {
            continue;
        }
        let old_phase = old.map(|r| r.status.phase);
        let phase = rollout.status.phase;
        let kind = match phase {
            Phase::Succeeded if old_phase != Some(phase) => Some(WebhookKind::PostRollout),
            Phase::RolledBack | Phase::Aborted if old_phase != Some(phase) => {
                Some(WebhookKind::Rollback)
            }
            Phase::Progressing | Phase::Paused
                if old.is_none_or(|o| {
                    o.status.step != rollout.status.step || o.status.phase == Phase::Initialized
                }) =>
            {
                Some(WebhookKind::Rollout)
            }
            _ => None,
        };
        if let Some(kind) = kind {
            out.push((rollout.clone(), kind));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;
    use serde_json::json;

    fn state(rollouts: &[&Rollout]) -> ServiceState {
        ServiceState {
            rollouts: rollouts
                .iter()
                .map(|r| (r.spec.name.clone(), (*r).clone()))
                .collect(),
            ..ServiceState::default()
        }
    }

    fn run(canary: &str, created: u64, hooks: bool) -> Rollout {
        let webhooks = if hooks {
            json!([{"name": "chat", "type": "rollback", "url": "http://hooks.test/rollback"}])
        } else {
            json!([])
        };
        let spec: RolloutSpec = serde_json::from_value(json!({
            "name": "r", "route": "reviews", "stable": "v1", "canary": canary,
            "steps": [{"setWeight": {"percent": 10}}, {"pause": {}}], "webhooks": webhooks,
        }))
        .unwrap();
        Rollout::new(spec, 0, Timestamp(created)).unwrap()
    }

    #[test]
    fn rollback_hooks_of_runs_ended_by_a_replace() {
        let at_ten = |r: &Rollout| {
            engine::apply(
                r,
                &engine::Action::EnterStep { index: 0 },
                Timestamp(r.status.created_at.0 + 1),
            )
        };
        let running = at_ten(&run("v2", 1_000, true));
        let finished = engine::command(&running, Command::Abort, Timestamp(2_000)).unwrap();
        let quiet = at_ten(&run("v2", 1_000, false));
        let next = run("v3", 5_000, false);
        // (case, before, after, the hooks called: kind and the canary of the run they are about)
        type Called<'a> = Vec<(WebhookKind, &'a str, Phase)>;
        let cases: Vec<(&str, &Rollout, &Rollout, Called)> = vec![
            (
                "a running run replaced: its rollback hook",
                &running,
                &next,
                vec![(WebhookKind::Rollback, "v2", Phase::Aborted)],
            ),
            (
                "a finished run replaced: nothing more",
                &finished,
                &next,
                vec![],
            ),
            ("a run without hooks replaced", &quiet, &next, vec![]),
            (
                "the same run aborted: its rollback hook, once",
                &running,
                &finished,
                vec![(WebhookKind::Rollback, "v2", Phase::Aborted)],
            ),
        ];
        for (case, before, after, expected) in cases {
            let called: Vec<(WebhookKind, &str, Phase)> =
                notifications(&state(&[before]), &state(&[after]))
                    .iter()
                    .map(|(r, kind)| {
                        (
                            *kind,
                            if r.spec.canary == "v2" { "v2" } else { "v3" },
                            r.status.phase,
                        )
                    })
                    .collect();
            assert_eq!(called, expected, "{case}");
        }
    }
}
