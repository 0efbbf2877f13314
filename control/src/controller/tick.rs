//! The engine's pass over the running rollouts: record the answers of the IO it asked for, advance
//! each rollout as far as it can go now, and start the next IO (analysis checks, gate hooks) in
//! tasks of their own, so that nothing the engine waits for ever holds a tick or a request.

use super::*;

/// The answer of IO the engine asked for.
#[derive(Debug)]
pub(super) enum Observed {
    /// An analysis check's reading (`None`: it only opened a window).
    Check {
        rollout: String,
        record: Option<CheckRecord>,
    },
    /// Gate hooks answered.
    Gate {
        rollout: String,
        kind: WebhookKind,
        /// When they were called: the answer counts only if the rollout still waits for that call.
        called_at: Timestamp,
        outcome: std::result::Result<(), String>,
    },
}

/// IO to start once the write that asked for it is saved.
pub(super) type Io = Vec<(Rollout, Action)>;

impl Controller {
    /// Runs the engine over every running rollout once: records the answers of checks and gate
    /// hooks that came in, advances each rollout as far as it can go now, retires the variants
    /// finished rollouts left behind once due, and starts the IO the engine asks for next in
    /// tasks of its own. Returns when it next needs to look.
    ///
    /// A tick never waits for a hook, a metrics query or a proxy: those answer later, as
    /// observations, so a hook that hangs holds only its own rollout, and never an API call.
    pub async fn tick(self: &Arc<Self>) -> Result<Option<Timestamp>> {
        let _serial = self.tick_lock.lock().await;
        let observation = self.observation();
        let answers = std::mem::take(&mut *self.observed.locked());
        let mut io = Io::new();
        let mut running = Vec::new();
        let wake_at = self
            .mutate(|state, now| {
                io.clear();
                for answer in &answers {
                    record_answer(state, answer, now);
                }
                let names: Vec<String> = state
                    .rollouts
                    .values()
                    .filter(|r| !r.status.phase.is_terminal())
                    .map(|r| r.spec.name.clone())
                    .collect();
                running.clone_from(&names);
                let mut wake_at: Option<Timestamp> = None;
                for name in names {
                    let at = self.advance(state, &name, &observation, now, &mut io);
                    wake_at = earliest(wake_at, at);
                }
                // After the rollouts: one that ended in this pass schedules its retirement here.
                Ok(earliest(wake_at, state.retire_due(now)))
            })
            .await;
        if wake_at.is_err() && !answers.is_empty() {
            // Not recorded: keep the answers for the next tick.
            self.observed.locked().extend(answers);
        }
        let wake_at = wake_at?;
        // An analysis window belongs to one run of a rollout: once it ends (or is deleted) its
        // window goes, so a new run under the same name starts its own.
        self.windows
            .locked()
            .retain(|name, _| running.contains(name));
        self.start_io(io);
        Ok(wake_at)
    }

    /// Advances rollout `name` in `state` as far as it can go at `now` without IO; the IO the
    /// engine then asks for goes into `io` (a gate is marked as called here, in the same write).
    /// Returns when the rollout next needs a look.
    pub(super) fn advance(
        &self,
        state: &mut ServiceState,
        name: &str,
        observation: &Observation,
        now: Timestamp,
        io: &mut Io,
    ) -> Option<Timestamp> {
        let mut rollout = state.rollouts.get(name)?.clone();
        if rollout.status.phase.is_terminal() {
            return None;
        }
        let original = rollout.clone();
        let mut wake_at = None;
        // Bounded: each step is entered at most once per call.
        for _ in 0..=rollout.plan.len() + 3 {
            let action = engine::next(&rollout, observation, now);
            match action {
                Action::Wait { until } => {
                    wake_at = until;
                    break;
                }
                Action::RunCheck => {
                    let running = self.checks_in_flight.locked().contains(name);
                    // Its answer wakes the engine; nothing to do until then.
                    if !running {
                        io.push((rollout.clone(), action));
                    }
                    break;
                }
                Action::RunGate { kind } => {
                    rollout = engine::gate_called(&rollout, kind, now);
                    io.push((rollout.clone(), action));
                    wake_at = rollout
                        .status
                        .analysis
                        .gate_called_at
                        .map(|at| at.plus(engine::gate_deadline(&rollout, kind)));
                    break;
                }
                Action::ScaleCanary { .. } => io.push((rollout.clone(), action.clone())),
                _ => {}
            }
            let span =
                tracing::info_span!("rollout_step", rollout = %name, step = rollout.status.step);
            let _entered = span.enter();
            let weight_before = rollout.status.canary_weight;
            rollout = engine::apply(&rollout, &action, now);
            tracing::info!(
                phase = rollout.status.phase.as_str(),
                weight = rollout.status.canary_weight,
                "{}",
                rollout.status.message
            );
            if rollout.status.canary_weight != weight_before {
                // A weight is pushed by the write that sets it, and counts as applied only once
                // it is: going on in the same write could skip it unpushed. The next tick goes on.
                wake_at = Some(now);
                break;
            }
        }
        if rollout != original {
            if let Err(error) = state.put_rollout(rollout.clone()) {
                tracing::error!(rollout = %name, %error, "cannot apply the rollout's weight; pausing it");
                let paused = engine::apply(
                    &original,
                    &Action::Pause {
                        hold: crate::rollout::Hold::Request,
                        reason: format!("cannot apply the weight: {error}"),
                    },
                    now,
                );
                state.rollouts.insert(name.to_string(), paused);
                io.retain(|(r, _)| r.spec.name != name);
            }
        }
        wake_at
    }

    /// Starts the checks and gate hooks the engine asked for, each in a task of its own; their
    /// answers come back through [`Controller::observed`] and wake the engine.
    pub(super) fn start_io(self: &Arc<Self>, io: Io) {
        for (rollout, action) in io {
            let this = self.clone();
            let name = rollout.spec.name.clone();
            match action {
                Action::RunCheck => {
                    let fresh = self.checks_in_flight.locked().insert(name.clone());
                    if !fresh {
                        continue;
                    }
                    let span = tracing::info_span!("analysis_check", rollout = %name);
                    tokio::spawn(
                        async move {
                            let record = this.run_check(&rollout, Timestamp::now()).await;
                            this.checks_in_flight.locked().remove(&name);
                            this.observe_answer(Observed::Check {
                                rollout: name,
                                record,
                            });
                        }
                        .instrument(span),
                    );
                }
                Action::RunGate { kind } => {
                    let Some(called_at) = rollout.status.analysis.gate_called_at else {
                        continue;
                    };
                    tokio::spawn(async move {
                        // The engine records the reason as text in the rollout's history.
                        let outcome = webhook::call_all(&this.http, &rollout, kind)
                            .await
                            .map_err(|error| error.to_string());
                        this.observe_answer(Observed::Gate {
                            rollout: name,
                            kind,
                            called_at,
                            outcome,
                        });
                    });
                }
                Action::ScaleCanary {
                    deployment,
                    replicas,
                    ..
                } => self.scale_in_background(vec![(
                    deployment,
                    crate::rollout::DeploymentChange::Scale(replicas),
                )]),
                _ => {}
            }
        }
    }

    /// Queues an answer for the next tick and wakes the engine.
    pub(super) fn observe_answer(&self, answer: Observed) {
        self.observed.locked().push(answer);
        self.wake.notify_one();
    }

    /// Reads every proxy's counters for the rollout's route and judges the window since the last
    /// reading. The first reading after a start (or a restart of the service) only opens a window.
    pub(super) async fn run_check(&self, rollout: &Rollout, now: Timestamp) -> Option<CheckRecord> {
        let analysis = rollout.spec.analysis.as_ref()?;
        let name = &rollout.spec.name;
        let current = match self.observer.snapshots(&rollout.spec.route).await {
            Ok(current) => current,
            Err(error) => {
                tracing::warn!(rollout = %name, %error, "analysis cannot read the stats");
                let since = rollout.status.analysis.last_check_at.unwrap_or(now);
                return Some(CheckRecord {
                    at: now,
                    since,
                    step: rollout.status.step,
                    canary_weight: rollout.status.canary_weight,
                    check: Check {
                        verdict: Verdict::Inconclusive,
                        reasons: vec![format!(
                            "cannot read the stats from {}: {error}",
                            self.observer.describe()
                        )],
                        canary: Measured {
                            requests: 0,
                            success_rate: None,
                            latency_ms: None,
                        },
                        baseline: Measured {
                            requests: 0,
                            success_rate: None,
                            latency_ms: None,
                        },
                        p_value: None,
                    },
                });
            }
        };
        let current: HashMap<String, Snapshot> = current.into_iter().collect();
        let previous = self
            .windows
            .locked()
            .insert(name.clone(), (now, current.clone()));
        // The window of the filter's stats still moves on, so that the step after the mirror is
        // judged from its start.
        if rollout.mirror().is_some() && rollout.status.canary_weight == 0 {
            return self.run_mirror_check(rollout, analysis, now).await;
        }
        let (since, previous) = previous?;
        let empty = Snapshot::default();
        let deltas: Vec<Snapshot> = current
            .iter()
            .map(|(proxy, snapshot)| delta(previous.get(proxy).unwrap_or(&empty), snapshot))
            .collect();
        let window = merge(&deltas);
        let counters = |variant: &str| window.variants.get(variant).cloned().unwrap_or_default();
        let check = judge(
            &analysis.thresholds(),
            &counters(&rollout.spec.canary),
            &counters(&rollout.spec.stable),
        );
        tracing::info!(rollout = %name, verdict = ?check.verdict, canary_requests = check.canary.requests, "{}", check.reasons.join("; "));
        Some(CheckRecord {
            at: now,
            since,
            step: rollout.status.step,
            canary_weight: rollout.status.canary_weight,
            check,
        })
    }
}

impl Controller {
    /// A check in a mirror step that gives the canary no traffic: judges the copies mirrored to
    /// it since the last reading ([`judge_mirror`]). Where the observer cannot count them (over
    /// Prometheus; a proxy that does not answer, which is logged), or on the first reading, there
    /// is no verdict: the reading only opens a window, so a step that cannot be judged holds for
    /// its duration and is not paused as inconclusive (the weights after it are judged as ever).
    async fn run_mirror_check(
        &self,
        rollout: &Rollout,
        analysis: &crate::rollout::AnalysisSpec,
        now: Timestamp,
    ) -> Option<CheckRecord> {
        let spec = &rollout.spec;
        let current = match self.observer.mirrored(&spec.route, &spec.canary).await {
            Ok(current) => current?,
            Err(error) => {
                tracing::warn!(rollout = %spec.name, %error, "analysis cannot count the mirrored copies");
                return None;
            }
        };
        let previous = self.remember_mirror_window(&spec.name, current)?;
        let check = judge_mirror(&analysis.thresholds(), &current.since(&previous));
        tracing::info!(rollout = %spec.name, verdict = ?check.verdict, copies = check.canary.requests, "{}", check.reasons.join("; "));
        Some(CheckRecord {
            at: now,
            since: rollout.status.analysis.last_check_at.unwrap_or(now),
            step: rollout.status.step,
            canary_weight: rollout.status.canary_weight,
            check,
        })
    }
}

/// The earlier of two optional times.
pub(super) fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Records an answer of IO the engine asked for, if it still applies: a check while the rollout
/// still progresses, a gate's answer while the rollout still waits for that call.
pub(super) fn record_answer(state: &mut ServiceState, answer: &Observed, now: Timestamp) {
    match answer {
        Observed::Check { rollout, record } => {
            let Some(current) = state.rollouts.get(rollout) else {
                return;
            };
            // A check still counts if the rollout kept progressing meanwhile.
            if current.status.phase == Phase::Progressing {
                let next = engine::record_check(current, record.clone(), now);
                state.rollouts.insert(rollout.clone(), next);
            }
        }
        Observed::Gate {
            rollout,
            kind,
            called_at,
            outcome,
        } => {
            let Some(current) = state.rollouts.get(rollout) else {
                return;
            };
            if current.status.analysis.gate_called_at == Some(*called_at) {
                let next = engine::record_gate(current, *kind, outcome.clone(), now);
                state.rollouts.insert(rollout.clone(), next);
            }
        }
    }
}
