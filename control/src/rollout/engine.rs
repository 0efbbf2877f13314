//! The rollout state machine: `next(rollout, observation, now)` says what should happen,
//! `apply(rollout, action, now)` makes it happen to the rollout, and `command` does the same for
//! what people ask for through the API. All three are pure: the clock and what the proxies report
//! are passed in, and the caller persists the result and pushes the weights.

use super::action::RolloutAction;
use super::analysis_spec::{CheckRecord, DEFAULT_GATE_INTERVAL, MAX_CHECKS};
use super::{
    BatchReplicas, DeploymentChange, Event, Hold, Phase, PlanStep, Replicas, Rollout, ScaleDown,
    WebhookKind, MAX_HISTORY,
};
use crate::analysis::judge::Verdict;
use crate::error::{Error, Result};
use crate::time::{HumanDuration, Timestamp};
use meshcanary_core::config::TOTAL_WEIGHT;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long after asking for canary replicas a Deployment that still asks for fewer is asked
/// again: long enough for the scale (retried in the background) and the next reading.
pub const ASK_AGAIN_AFTER: Duration = Duration::from_secs(30);

/// Added to the longest time gate hooks can take before their call counts as lost.
const GATE_DEADLINE_MARGIN: Duration = Duration::from_secs(5);

/// What the service knows about the proxies (and the rollouts' Deployments) when it asks the
/// engine.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observation {
    /// The lowest config generation any watched proxy runs; `None` when no proxy is watched (the
    /// push is then taken as applied once written).
    pub min_proxy_generation: Option<u64>,
    /// The replicas of the Deployments running rollouts name in `workloads`, by name; a
    /// Deployment not read yet is missing.
    pub workloads: BTreeMap<String, Replicas>,
}

impl Observation {
    fn carries(&self, generation: u64) -> bool {
        self.min_proxy_generation
            .is_none_or(|min| min >= generation)
    }
}

/// What should happen to a rollout now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing for now; look again at `until` (or when something changes).
    Wait {
        /// When a timer in the rollout runs out, if any.
        until: Option<Timestamp>,
    },
    /// An analysis check is due: read the stats, judge the window since the last check and
    /// record it with [`record_check`].
    RunCheck,
    /// Gate hooks of this kind are due: call them and record the outcome with [`record_gate`].
    RunGate {
        /// `preRollout` or `confirmPromotion`.
        kind: WebhookKind,
    },
    /// Start step `index` (`index == plan.len()` never happens: the last step leads to promotion).
    EnterStep {
        /// Index into the rollout's plan.
        index: usize,
    },
    /// Stop and wait for a person.
    Pause {
        /// Why it holds.
        hold: Hold,
        /// For people.
        reason: String,
    },
    /// Give the canary 100 %.
    Promote {
        /// What made it due ("every step passed", a person), written into the history.
        reason: String,
    },
    /// Make the canary the stable variant: the rollout succeeded.
    Finish,
    /// Put the canary back to 0 %: the rollout failed.
    RollBack {
        /// What failed (a check, a gate, the timeout), written into the history and the hooks.
        reason: String,
    },
    /// Scale the canary's Deployment (`workloads.canary`) to `replicas` (IO: its `scale`
    /// subresource); the weight that needs them waits until they are ready.
    ScaleCanary {
        /// The Deployment.
        deployment: String,
        /// The replicas `weight` needs.
        replicas: u32,
        /// The canary's full size they are a share of.
        full: u32,
        /// The weight (basis points) waiting for them.
        weight: u32,
    },
}

/// What a person asks for through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Stop where it is.
    Pause,
    /// Continue after a pause.
    Resume,
    /// Skip to 100 % canary.
    Promote,
    /// Stop and send all traffic back to stable.
    Abort,
    /// Make a promoted canary the stable variant.
    Finish,
    /// Set the canary weight (basis points) and pause.
    SetWeight(u32),
    /// Set (or, with `None`, remove) `workloads.batchPartition`: a rollout held by it goes on
    /// once the partition no longer holds it.
    SetPartition(Option<u32>),
}

impl Command {
    /// The name used in the API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Pause => RolloutAction::Pause.as_str(),
            Command::Resume => RolloutAction::Resume.as_str(),
            Command::Promote => RolloutAction::Promote.as_str(),
            Command::Abort => RolloutAction::Abort.as_str(),
            Command::Finish => RolloutAction::Finish.as_str(),
            Command::SetWeight(_) => "set-weight",
            Command::SetPartition(_) => "partition",
        }
    }
}

/// What should happen to `rollout` now, given what the proxies report.
pub fn next(rollout: &Rollout, observation: &Observation, now: Timestamp) -> Action {
    let status = &rollout.status;
    match status.phase {
        Phase::Initialized => {
            let gated = rollout.webhooks(WebhookKind::PreRollout).next().is_some();
            if gated && !status.analysis.pre_rollout_passed {
                let limit = rollout
                    .spec
                    .analysis
                    .as_ref()
                    .map_or(2, |a| a.failure_limit);
                if status.analysis.pre_rollout_failures >= limit {
                    return Action::RollBack {
                        reason: format!(
                            "the pre-rollout hooks failed {} times",
                            status.analysis.pre_rollout_failures
                        ),
                    };
                }
                return gate(rollout, WebhookKind::PreRollout, now);
            }
            if rollout.plan.is_empty() {
                promotion(rollout, observation, now)
            } else {
                enter(rollout, observation, 0, now)
            }
        }
        Phase::Progressing => {
            let deadline = rollout.spec.timeout.map(|timeout| {
                let left = timeout.0.saturating_sub(rollout.progressed(now));
                (timeout, now.plus(left))
            });
            if let Some((timeout, at)) = deadline {
                if now >= at {
                    return Action::RollBack {
                        reason: format!("timed out: still progressing after {timeout}"),
                    };
                }
            }
            if status.workloads.promotion_requested {
                // A person promoted: the canary takes 100 % once its full size is ready.
                return match canary_gate(rollout, observation, TOTAL_WEIGHT, now, Late::Pause) {
                    None => Action::Promote {
                        reason: "promoted by request".into(),
                    },
                    Some(Action::Wait { until }) => Action::Wait {
                        until: earliest(until, deadline.map(|(_, at)| at)),
                    },
                    Some(action) => action,
                };
            }
            if let Some(analysis) = &rollout.spec.analysis {
                let checks = &status.analysis;
                if checks.failed_checks >= analysis.failure_limit {
                    let last = checks
                        .checks
                        .iter()
                        .rev()
                        .find(|c| c.check.verdict == Verdict::Fail)
                        .map(|c| c.check.reasons.join("; "))
                        .unwrap_or_default();
                    return Action::RollBack {
                        reason: format!(
                            "{} analysis checks failed (limit {}); last: {last}",
                            checks.failed_checks, analysis.failure_limit
                        ),
                    };
                }
                if checks.inconclusive_streak >= analysis.inconclusive_limit {
                    let last = checks
                        .checks
                        .last()
                        .map(|c| c.check.reasons.join("; "))
                        .unwrap_or_default();
                    return Action::Pause {
                        hold: Hold::Inconclusive,
                        reason: format!(
                            "{} analysis checks in a row were inconclusive, so the rollout holds: {last}",
                            checks.inconclusive_streak
                        ),
                    };
                }
                if next_check_at(rollout).is_some_and(|at| now >= at) {
                    return Action::RunCheck;
                }
            }
            let step_action = progress_step(rollout, observation, now);
            match step_action {
                Action::Wait { until } => {
                    let until = [until, next_check_at(rollout), deadline.map(|(_, at)| at)]
                        .into_iter()
                        .flatten()
                        .min();
                    Action::Wait { until }
                }
                action => action,
            }
        }
        Phase::Promoting if rollout.spec.auto_finish || status.workloads.finish_requested => {
            // The old stable is scaled down on finishing: not before the canary can take it all.
            // Promoting cannot pause; a canary whose full size is not ready within the ready
            // timeout rolls the rollout back, to the stable that still has its replicas.
            canary_gate(rollout, observation, TOTAL_WEIGHT, now, Late::RollBack)
                .unwrap_or(Action::Finish)
        }
        Phase::Paused
        | Phase::Promoting
        | Phase::Succeeded
        | Phase::RolledBack
        | Phase::Aborted => Action::Wait { until: None },
    }
}

/// When the next analysis check is due, if the rollout has analysis and is progressing. The first
/// reading (which only starts the first window) is due as soon as the rollout progresses. (In a
/// mirror step that gives the canary no traffic, a check judges the copies mirrored to it.)
pub fn next_check_at(rollout: &Rollout) -> Option<Timestamp> {
    let analysis = rollout.spec.analysis.as_ref()?;
    if rollout.status.phase != Phase::Progressing {
        return None;
    }
    Some(match rollout.status.analysis.last_check_at {
        None => rollout.status.progressing_since.unwrap_or_default(),
        Some(at) => at.plus(analysis.interval.0),
    })
}

/// Calls gate hooks when due, otherwise waits for the next attempt (or for hooks already called
/// to answer, until they cannot take any longer).
fn gate(rollout: &Rollout, kind: WebhookKind, now: Timestamp) -> Action {
    if let Some(called) = rollout.status.analysis.gate_called_at {
        let deadline = called.plus(gate_deadline(rollout, kind));
        if now < deadline {
            return Action::Wait {
                until: Some(deadline),
            };
        }
    }
    let interval = rollout
        .spec
        .analysis
        .as_ref()
        .map_or(DEFAULT_GATE_INTERVAL, |a| a.interval.0);
    match rollout.status.analysis.last_gate_at {
        Some(at) if now < at.plus(interval) => Action::Wait {
            until: Some(at.plus(interval)),
        },
        _ => Action::RunGate { kind },
    }
}

/// Every step is done: promote once the last check passed, the confirm-promotion hooks agree and
/// the canary's Deployment (with `workloads`) has its full size ready.
fn promotion(rollout: &Rollout, observation: &Observation, now: Timestamp) -> Action {
    let status = &rollout.status;
    if rollout.spec.analysis.is_some() && status.analysis.last_verdict != Some(Verdict::Pass) {
        // Never promote on a failed, inconclusive or missing last check: wait for the next one.
        return Action::Wait {
            until: next_check_at(rollout),
        };
    }
    let gated = rollout
        .webhooks(WebhookKind::ConfirmPromotion)
        .next()
        .is_some();
    if gated && !status.analysis.promotion_confirmed {
        return gate(rollout, WebhookKind::ConfirmPromotion, now);
    }
    if let Some(action) = partition_gate(rollout, TOTAL_WEIGHT) {
        return action;
    }
    if let Some(action) = canary_gate(rollout, observation, TOTAL_WEIGHT, now, Late::Pause) {
        return action;
    }
    Action::Promote {
        reason: "every step passed".into(),
    }
}

/// Enters step `index`; a `setWeight` step first needs its canary replicas ready.
fn enter(rollout: &Rollout, observation: &Observation, index: usize, now: Timestamp) -> Action {
    match rollout.plan.get(index) {
        Some(PlanStep::SetWeight(weight)) => {
            if let Some(action) = partition_gate(rollout, *weight) {
                return action;
            }
            if let Some(action) = canary_gate(rollout, observation, *weight, now, Late::Pause) {
                return action;
            }
        }
        // Copies are requests too: the canary is up (its first batch, or its minimum) and ready
        // before the first one is sent, or they would only measure a canary that is not there.
        Some(PlanStep::Mirror { .. }) => {
            if let Some(action) = canary_gate(rollout, observation, 0, now, Late::Pause) {
                return action;
            }
        }
        _ => {}
    }
    Action::EnterStep { index }
}

/// What waits for the canary's replicas: a weight, or (at 0 %: a mirror step's copies, QA's
/// requests) the canary's first requests.
fn what_waits(weight: u32) -> String {
    match weight {
        0 => "the canary's first requests wait".to_string(),
        weight => format!("weight {} waits", percent(weight)),
    }
}

/// With `workloads.batchPartition`, a pause when the canary would get `weight` beyond the last
/// batch the partition lets through.
fn partition_gate(rollout: &Rollout, weight: u32) -> Option<Action> {
    let workloads = rollout.spec.workloads.as_ref()?;
    let hold = workloads.partition_holds(weight)?;
    let batch = workloads.batches.get(hold.partition)?;
    Some(Action::Pause {
        hold: Hold::Partition,
        reason: format!(
            "holding after batch {} of {} ({} at {}): workloads.batchPartition is {}; raise or remove it to go on",
            hold.partition + 1,
            hold.batches,
            match &batch.replicas {
                BatchReplicas::Count(1) => "1 replica".to_string(),
                BatchReplicas::Count(n) => format!("{n} replicas"),
                BatchReplicas::Percent(share) => format!("{share} of the replicas"),
            },
            percent(batch.weight.checked("").unwrap_or(0)),
            hold.partition
        ),
    })
}

/// The weight the rollout gives the canary next: its next `setWeight` step's, or 100 % (the
/// promotion) when none is left.
fn next_weight(rollout: &Rollout) -> u32 {
    rollout
        .plan
        .iter()
        .skip(rollout.status.step + 1)
        .find_map(|step| match step {
            PlanStep::SetWeight(weight) => Some(*weight),
            PlanStep::Pause(_) | PlanStep::Mirror { .. } => None,
        })
        .unwrap_or(TOTAL_WEIGHT)
}

/// What a canary that is not ready within the ready timeout does to the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Late {
    /// It pauses (a weight waits for the replicas).
    Pause,
    /// It rolls back (a promoted rollout waits for the full size to finish).
    RollBack,
}

fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// With `workloads`, what must happen before the canary gets `weight`: scale its Deployment up,
/// wait for the replicas to be ready, or, when they are not ready within the ready timeout,
/// pause. `None` when the weight may go on (or the rollout names no Deployments).
fn canary_gate(
    rollout: &Rollout,
    observation: &Observation,
    weight: u32,
    now: Timestamp,
    late: Late,
) -> Option<Action> {
    let workloads = rollout.spec.workloads.as_ref()?;
    let status = &rollout.status.workloads;
    let full = match workloads.replicas.or(status.full) {
        Some(full) => full,
        // The stable's size, once read; at least one replica.
        None => match observation.workloads.get(&workloads.stable) {
            Some(stable) => stable.desired.max(1),
            None => return Some(Action::Wait { until: None }),
        },
    };
    let needed = workloads.needed(full, weight);
    if status.requested < needed {
        return Some(Action::ScaleCanary {
            deployment: workloads.canary.clone(),
            replicas: needed,
            full,
            weight,
        });
    }
    let canary = observation.workloads.get(&workloads.canary);
    let ready = canary.map_or(0, |replicas| replicas.ready);
    if ready >= needed {
        return None;
    }
    // The Deployment asks for fewer than the rollout did: the scale was lost (the service
    // stopped before sending it) or undone. Ask again, without restarting the ready timeout.
    let ask_again_at = canary.filter(|c| c.desired < needed).map(|_| {
        let asked = status.asked_again_at.max(status.requested_at);
        asked
            .unwrap_or(rollout.status.step_started_at)
            .plus(ASK_AGAIN_AFTER)
    });
    if ask_again_at.is_some_and(|at| now >= at) {
        return Some(Action::ScaleCanary {
            deployment: workloads.canary.clone(),
            replicas: status.requested,
            full,
            weight,
        });
    }
    let timeout = workloads.ready_timeout();
    // The wait starts with the request, or with the step (or promotion) that needs replicas
    // asked for earlier: a replica that stops being ready later gets the whole timeout too.
    let started = match status.requested_at {
        Some(at) => at.max(rollout.status.step_started_at),
        None => rollout.status.step_started_at,
    };
    let deadline = started.plus(timeout);
    let short = format!(
        "{} has {ready}/{needed} ready replicas after {}",
        workloads.canary,
        humantime::format_duration(timeout)
    );
    Some(if now >= deadline {
        match late {
            Late::Pause => Action::Pause {
                hold: Hold::Workload,
                reason: format!(
                    "{short}; {} for them (resume to scale and wait again)",
                    what_waits(weight)
                ),
            },
            Late::RollBack => Action::RollBack {
                reason: format!(
                    "promotion stuck: {short}, so the old stable {} keeps the traffic and its replicas",
                    workloads.stable
                ),
            },
        }
    } else {
        Action::Wait {
            until: earliest(Some(deadline), ask_again_at),
        }
    })
}

/// The Deployments to scale down (or delete) because a run ended between `before` and `after` (a
/// rollout's state before and after one write): after success the old stable (to 0 with
/// `scaleDown: zero`, deleted with `delete`), after a rollback or an abort the canary, to 0. A running run that is gone
/// or replaced by a new run (a MeshRollout whose spec asked for one) leaves its canary at 0 too,
/// unless the new run scales the same Deployment.
pub fn scale_downs(
    before: Option<&Rollout>,
    after: Option<&Rollout>,
) -> Vec<(String, DeploymentChange)> {
    let mut out = Vec::new();
    let mut before = before;
    if let Some(old) = before {
        if after.is_none_or(|a| a.status.created_at != old.status.created_at) {
            let taken_over = |canary: &str| {
                after
                    .and_then(|a| a.spec.workloads.as_ref())
                    .is_some_and(|w| w.canary == canary)
            };
            if let Some(workloads) = &old.spec.workloads {
                if !old.status.phase.is_terminal() && !taken_over(&workloads.canary) {
                    out.push((workloads.canary.clone(), DeploymentChange::Scale(0)));
                }
            }
            // `after` is another run: what it did in this write counts from nothing.
            before = None;
        }
    }
    let Some(after) = after else {
        return out;
    };
    let Some(workloads) = &after.spec.workloads else {
        return out;
    };
    let phase = after.status.phase;
    if before.is_some_and(|b| b.status.phase == phase) {
        return out;
    }
    match phase {
        Phase::Succeeded => match workloads.scale_down {
            ScaleDown::Zero => out.push((workloads.stable.clone(), DeploymentChange::Scale(0))),
            ScaleDown::Delete => out.push((workloads.stable.clone(), DeploymentChange::Delete)),
            ScaleDown::Keep => {}
        },
        Phase::RolledBack | Phase::Aborted => {
            out.push((workloads.canary.clone(), DeploymentChange::Scale(0)))
        }
        _ => {}
    }
    out
}

fn progress_step(rollout: &Rollout, observation: &Observation, now: Timestamp) -> Action {
    let status = &rollout.status;
    let following = || {
        if status.step + 1 < rollout.plan.len() {
            enter(rollout, observation, status.step + 1, now)
        } else {
            promotion(rollout, observation, now)
        }
    };
    match rollout.plan.get(status.step) {
        None => promotion(rollout, observation, now),
        Some(PlanStep::SetWeight(weight)) => {
            if observation.carries(status.weight_generation) {
                // With analysis, each weight is judged before the next: a check must pass after
                // the step started.
                let judged = rollout.spec.analysis.is_none()
                    || status
                        .analysis
                        .last_pass_at
                        .is_some_and(|at| at > status.step_started_at);
                return if judged {
                    following()
                } else {
                    Action::Wait {
                        until: next_check_at(rollout),
                    }
                };
            }
            let timeout = rollout.spec.propagation_timeout();
            let deadline = status.step_started_at.plus(timeout);
            if now >= deadline {
                Action::Pause {
                    hold: Hold::Propagation,
                    reason: format!(
                        "weight {} not running on every proxy after {} (generation {} wanted, lowest seen {})",
                        percent(*weight),
                        humantime::format_duration(timeout),
                        status.weight_generation,
                        observation.min_proxy_generation.unwrap_or(0)
                    ),
                }
            } else {
                Action::Wait {
                    until: Some(deadline),
                }
            }
        }
        // Pauses and mirrors hold alike.
        Some(step) => match step.holds() {
            Some(Some(duration)) => {
                let until = status.step_started_at.plus(duration.0);
                if now >= until {
                    following()
                } else {
                    Action::Wait { until: Some(until) }
                }
            }
            // A hold without duration pauses the rollout when entered; if it is progressing here
            // it was resumed, so move on.
            _ => following(),
        },
    }
}

/// `rollout` after an analysis reading at `now`: `None` is the first reading, which only starts
/// the first window; a check is counted (failed, inconclusive in a row, passed) and kept.
pub fn record_check(rollout: &Rollout, check: Option<CheckRecord>, now: Timestamp) -> Rollout {
    let mut next = rollout.clone();
    next.status.analysis.last_check_at = Some(now);
    let Some(check) = check else {
        next.version += 1;
        return next;
    };
    let analysis = &mut next.status.analysis;
    let verdict = check.check.verdict;
    match verdict {
        Verdict::Pass => {
            analysis.inconclusive_streak = 0;
            analysis.last_pass_at = Some(now);
        }
        Verdict::Fail => {
            analysis.inconclusive_streak = 0;
            analysis.failed_checks += 1;
        }
        Verdict::Inconclusive => analysis.inconclusive_streak += 1,
    }
    analysis.last_verdict = Some(verdict);
    let summary = check.check.reasons.join("; ");
    analysis.checks.push(check);
    if analysis.checks.len() > MAX_CHECKS {
        let excess = analysis.checks.len() - MAX_CHECKS;
        analysis.checks.drain(..excess);
    }
    let verdict_name = match verdict {
        Verdict::Pass => "passed",
        Verdict::Fail => "failed",
        Verdict::Inconclusive => "inconclusive",
    };
    record(
        &mut next,
        format!("analysis check {verdict_name}: {summary}"),
        now,
    );
    next
}

/// How long the gate hooks of `kind` may take before their call counts as lost (the service
/// stopped meanwhile, say): every hook's every attempt timing out, and a margin.
pub fn gate_deadline(rollout: &Rollout, kind: WebhookKind) -> Duration {
    rollout
        .webhooks(kind)
        .map(|hook| hook.longest())
        .fold(GATE_DEADLINE_MARGIN, Duration::saturating_add)
}

/// `rollout` once its gate hooks of `kind` have been called at `now`: it waits for their answer
/// (which [`record_gate`] records) and says so.
pub fn gate_called(rollout: &Rollout, kind: WebhookKind, now: Timestamp) -> Rollout {
    let mut next = rollout.clone();
    next.status.analysis.gate_called_at = Some(now);
    let names: Vec<&str> = rollout
        .webhooks(kind)
        .map(|hook| hook.name.as_str())
        .collect();
    record(
        &mut next,
        format!(
            "waiting for the {} hooks ({}), at most {}",
            kind.as_str(),
            names.join(", "),
            HumanDuration(gate_deadline(rollout, kind))
        ),
        now,
    );
    next
}

/// `rollout` after its gate hooks of `kind` answered (`Ok`) or not (`Err` with why).
pub fn record_gate(
    rollout: &Rollout,
    kind: WebhookKind,
    outcome: std::result::Result<(), String>,
    now: Timestamp,
) -> Rollout {
    let mut next = rollout.clone();
    let analysis = &mut next.status.analysis;
    analysis.gate_called_at = None;
    // The timer only spaces out retries of a failing gate; a passed gate leaves none running.
    analysis.last_gate_at = match outcome {
        Ok(()) => None,
        Err(_) => Some(now),
    };
    let message = match (kind, outcome) {
        (WebhookKind::PreRollout, Ok(())) => {
            analysis.pre_rollout_passed = true;
            "pre-rollout hooks passed".to_string()
        }
        (WebhookKind::PreRollout, Err(error)) => {
            analysis.pre_rollout_failures += 1;
            format!(
                "pre-rollout hook failed (attempt {}): {error}",
                analysis.pre_rollout_failures
            )
        }
        (WebhookKind::ConfirmPromotion, Ok(())) => {
            analysis.promotion_confirmed = true;
            "confirm-promotion hooks passed".to_string()
        }
        (WebhookKind::ConfirmPromotion, Err(error)) => {
            format!("waiting for the confirm-promotion hooks: {error}")
        }
        (other, Ok(())) => format!("{} hooks passed", other.as_str()),
        (other, Err(error)) => format!("{} hook failed: {error}", other.as_str()),
    };
    record(&mut next, message, now);
    next
}

/// `rollout` with `message` in its history and status, nothing else changed.
pub fn note(rollout: &Rollout, message: String, now: Timestamp) -> Rollout {
    let mut next = rollout.clone();
    record(&mut next, message, now);
    next
}

/// `rollout` after a `rollout` hook failed: it counts as a failed check.
pub fn record_hook_failure(rollout: &Rollout, error: &str, now: Timestamp) -> Rollout {
    let mut next = rollout.clone();
    next.status.analysis.failed_checks += 1;
    record(
        &mut next,
        format!("rollout hook failed (counts as a failed check): {error}"),
        now,
    );
    next
}

/// `rollout` after `action` happened at `now`.
pub fn apply(rollout: &Rollout, action: &Action, now: Timestamp) -> Rollout {
    let mut next = rollout.clone();
    let status = &mut next.status;
    let message = match action {
        Action::Wait { .. } | Action::RunCheck | Action::RunGate { .. } => return next,
        Action::EnterStep { index } => {
            set_phase(&mut next, Phase::Progressing, now);
            let status = &mut next.status;
            status.step = *index;
            status.step_started_at = now;
            status.hold = None;
            let total = next.plan.len();
            match next.plan.get(*index).copied() {
                Some(PlanStep::SetWeight(weight)) => {
                    status.canary_weight = weight;
                    format!(
                        "step {}/{total}: canary weight {}",
                        index + 1,
                        percent(weight)
                    )
                }
                Some(PlanStep::Pause(Some(duration))) => {
                    format!("step {}/{total}: holding for {duration}", index + 1)
                }
                Some(PlanStep::Pause(None)) => {
                    set_phase(&mut next, Phase::Paused, now);
                    next.status.hold = Some(Hold::PauseStep);
                    format!("step {}/{total}: paused until resumed", index + 1)
                }
                Some(PlanStep::Mirror {
                    basis_points,
                    duration: Some(duration),
                }) => format!(
                    "step {}/{total}: mirroring {} of the route's requests to the canary for {duration}",
                    index + 1,
                    percent(basis_points)
                ),
                Some(PlanStep::Mirror {
                    basis_points,
                    duration: None,
                }) => {
                    set_phase(&mut next, Phase::Paused, now);
                    next.status.hold = Some(Hold::PauseStep);
                    format!(
                        "step {}/{total}: mirroring {} of the route's requests to the canary until resumed",
                        index + 1,
                        percent(basis_points)
                    )
                }
                None => format!("step {}/{total}", index + 1),
            }
        }
        Action::Pause { hold, reason } => {
            status.hold = Some(*hold);
            set_phase(&mut next, Phase::Paused, now);
            reason.clone()
        }
        Action::Promote { reason } => {
            status.canary_weight = TOTAL_WEIGHT;
            status.hold = None;
            status.workloads.promotion_requested = false;
            // The ready timeout of a promoted canary counts from here.
            status.step_started_at = now;
            set_phase(&mut next, Phase::Promoting, now);
            format!("promoting: {reason}")
        }
        Action::Finish => {
            status.canary_weight = TOTAL_WEIGHT;
            set_phase(&mut next, Phase::Succeeded, now);
            format!(
                "succeeded: {} is the stable variant of route {}",
                next.spec.canary, next.spec.route
            )
        }
        Action::RollBack { reason } => {
            status.canary_weight = 0;
            status.hold = None;
            set_phase(&mut next, Phase::RolledBack, now);
            format!("rolled back: {reason}")
        }
        Action::ScaleCanary {
            deployment,
            replicas,
            weight,
            ..
        } if *replicas <= status.workloads.requested => {
            status.workloads.asked_again_at = Some(now);
            format!(
                "Deployment {deployment} asks for fewer than the {replicas} replicas the rollout asked for: scaling it again; {}",
                what_waits(*weight)
            )
        }
        Action::ScaleCanary {
            deployment,
            replicas,
            full,
            weight,
        } => {
            status.workloads.requested = *replicas;
            status.workloads.full = Some(*full);
            status.workloads.requested_at = Some(now);
            status.workloads.asked_again_at = None;
            format!(
                "scaling Deployment {deployment} to {replicas} of {full} replicas; {} for them to be ready",
                what_waits(*weight)
            )
        }
    };
    record(&mut next, message, now);
    next
}

/// `rollout` after a person's `command` at `now`, or why the command does not fit.
pub fn command(rollout: &Rollout, command: Command, now: Timestamp) -> Result<Rollout> {
    let phase = rollout.status.phase;
    let name = &rollout.spec.name;
    if phase.is_terminal() {
        return Err(Error::Conflict(format!(
            "rollout {name} is {}; {} needs a rollout that is still running",
            phase.as_str(),
            command.as_str()
        )));
    }
    let mut next = rollout.clone();
    let message = match command {
        Command::Pause => match phase {
            Phase::Paused => return Ok(next),
            Phase::Promoting => {
                return Err(Error::Conflict(format!(
                    "rollout {name} is promoting; finish or abort it"
                )))
            }
            _ => {
                next.status.hold = Some(Hold::Request);
                set_phase(&mut next, Phase::Paused, now);
                "paused by request".to_string()
            }
        },
        Command::Resume => match (phase, next.status.hold) {
            (Phase::Paused, Some(Hold::Partition)) => {
                let weight = next_weight(&next);
                if let Some(hold) = next
                    .spec
                    .workloads
                    .as_ref()
                    .and_then(|w| w.partition_holds(weight))
                {
                    return Err(Error::Conflict(format!(
                        "rollout {name} holds after batch {} of {} (workloads.batchPartition {}); raise or remove the partition to go on",
                        hold.partition + 1,
                        hold.batches,
                        hold.partition
                    )));
                }
                next.status.hold = None;
                set_phase(&mut next, Phase::Progressing, now);
                "resumed by request".to_string()
            }
            (Phase::Paused, Some(Hold::PauseStep)) if next.spec.workloads.is_some() => {
                // The engine enters the next step (a progressing pause step without duration
                // moves on), once its canary replicas are ready.
                next.status.hold = None;
                set_phase(&mut next, Phase::Progressing, now);
                "resumed by request".to_string()
            }
            (Phase::Paused, Some(Hold::PauseStep)) => {
                let index = next.status.step + 1;
                let action = if index < next.plan.len() {
                    Action::EnterStep { index }
                } else {
                    Action::Promote {
                        reason: "every step passed".into(),
                    }
                };
                record(&mut next, "resumed by request".into(), now);
                return Ok(apply(&next, &action, now));
            }
            (Phase::Paused, hold) => {
                // A timed pause or mirror keeps the time it had left; a setWeight step waits
                // afresh.
                let paused_for = next
                    .status
                    .paused_at
                    .map_or(std::time::Duration::ZERO, |at| now.since(at));
                match next.plan.get(next.status.step).and_then(PlanStep::holds) {
                    Some(Some(_)) => {
                        next.status.step_started_at = next.status.step_started_at.plus(paused_for);
                    }
                    _ => next.status.step_started_at = now,
                }
                if hold == Some(Hold::Inconclusive) {
                    next.status.analysis.inconclusive_streak = 0;
                }
                if hold == Some(Hold::Workload) {
                    // Ask for the replicas again, and wait for them afresh.
                    next.status.workloads.requested = 0;
                    next.status.workloads.requested_at = None;
                }
                // A canary that was not ready for the first step held the rollout before it
                // ever progressed: it starts again, entering that step.
                let phase = if hold == Some(Hold::Workload)
                    && next.status.progressed_ms == 0
                    && !next.status.workloads.promotion_requested
                {
                    Phase::Initialized
                } else {
                    Phase::Progressing
                };
                next.status.hold = None;
                set_phase(&mut next, phase, now);
                "resumed by request".to_string()
            }
            (Phase::Promoting, _) => {
                return Err(Error::Conflict(format!(
                    "rollout {name} is promoting, not paused; use finish"
                )))
            }
            _ => return Ok(next),
        },
        Command::Promote => match phase {
            Phase::Promoting => return Ok(next),
            _ if next.spec.workloads.is_some() => {
                // Traffic never moves ahead of ready replicas: the engine promotes once the
                // canary's full size is ready (scaling it first).
                next.status.workloads.promotion_requested = true;
                next.status.hold = None;
                set_phase(&mut next, Phase::Progressing, now);
                "promotion requested: the canary gets 100% once its full size is ready".to_string()
            }
            _ => {
                return Ok(apply(
                    &next,
                    &Action::Promote {
                        reason: "promoted by request".into(),
                    },
                    now,
                ))
            }
        },
        Command::Abort => {
            next.status.canary_weight = 0;
            next.status.hold = None;
            set_phase(&mut next, Phase::Aborted, now);
            "aborted by request: all traffic back on the stable variant".to_string()
        }
        Command::Finish => match phase {
            Phase::Promoting if next.spec.workloads.is_some() => {
                if next.status.workloads.finish_requested {
                    return Ok(next);
                }
                // The old stable is scaled down on finishing: the engine finishes once the
                // canary's full size is ready.
                next.status.workloads.finish_requested = true;
                "finish requested: it happens once the canary's full size is ready".to_string()
            }
            Phase::Promoting => return Ok(apply(&next, &Action::Finish, now)),
            _ => {
                return Err(Error::Conflict(format!(
                    "rollout {name} is {}; finish needs a promoted rollout (promote it first)",
                    phase.as_str()
                )))
            }
        },
        Command::SetWeight(weight) => {
            if phase == Phase::Promoting {
                return Err(Error::Conflict(format!(
                    "rollout {name} is promoting; abort it to change the weight"
                )));
            }
            if next.spec.workloads.is_some() && weight > next.status.canary_weight {
                return Err(Error::Conflict(format!(
                    "rollout {name} scales its canary's Deployment: a weight set by hand may only go down ({} now), since traffic never moves ahead of ready replicas; promote (which scales the canary to its full size first) or resume to go up",
                    percent(next.status.canary_weight)
                )));
            }
            next.status.canary_weight = weight;
            next.status.hold = Some(Hold::HandWeight);
            set_phase(&mut next, Phase::Paused, now);
            format!(
                "canary weight set by hand to {}; resume to continue from step {}",
                percent(weight),
                next.status.step + 1
            )
        }
        Command::SetPartition(partition) => {
            let held = phase == Phase::Paused && next.status.hold == Some(Hold::Partition);
            let weight = next_weight(&next);
            let workloads = next
                .spec
                .workloads
                .as_mut()
                .filter(|w| !w.batches.is_empty())
                .ok_or_else(|| {
                    Error::invalid(
                        "batchPartition",
                        format!("rollout {name} has no workloads.batches to hold after"),
                    )
                })?;
            if workloads.batch_partition == partition {
                return Ok(next);
            }
            workloads.batch_partition = partition;
            workloads.check("workloads")?;
            let released = held && workloads.partition_holds(weight).is_none();
            if released {
                next.status.hold = None;
                set_phase(&mut next, Phase::Progressing, now);
            }
            let set = match partition {
                Some(p) => format!("workloads.batchPartition set to {p}"),
                None => "workloads.batchPartition removed".to_string(),
            };
            if released {
                format!("{set}: going on")
            } else {
                set
            }
        }
    };
    record(&mut next, message, now);
    Ok(next)
}

/// Changes phase, keeping the progressing clock and the pause time right.
fn set_phase(rollout: &mut Rollout, phase: Phase, now: Timestamp) {
    let status = &mut rollout.status;
    if status.phase == Phase::Progressing && phase != Phase::Progressing {
        if let Some(since) = status.progressing_since.take() {
            status.progressed_ms += now.since(since).as_millis() as u64;
        }
    }
    if phase == Phase::Progressing && status.progressing_since.is_none() {
        status.progressing_since = Some(now);
    }
    status.paused_at = match phase {
        Phase::Paused => status.paused_at.or(Some(now)),
        _ => None,
    };
    status.phase = phase;
}

fn record(rollout: &mut Rollout, message: String, now: Timestamp) {
    let status = &mut rollout.status;
    status.message = message.clone();
    status.updated_at = now;
    status.history.push(Event {
        at: now,
        phase: status.phase,
        step: status.step,
        canary_weight: status.canary_weight,
        message,
    });
    if status.history.len() > MAX_HISTORY {
        let excess = status.history.len() - MAX_HISTORY;
        status.history.drain(..excess);
    }
    rollout.version += 1;
}

/// Basis points as a percentage for people: `1000` → `10%`, `1250` → `12.5%`.
pub fn percent(basis_points: u32) -> String {
    let whole = basis_points / 100;
    match basis_points % 100 {
        0 => format!("{whole}%"),
        fraction if fraction % 10 == 0 => format!("{whole}.{}%", fraction / 10),
        fraction => format!("{whole}.{fraction:02}%"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{Batch, RolloutSpec};
    use serde_json::json;
    use std::time::Duration;

    const T0: Timestamp = Timestamp(1_000_000);

    fn at(seconds: u64) -> Timestamp {
        T0.plus(Duration::from_secs(seconds))
    }

    fn rollout(extra: serde_json::Value) -> Rollout {
        let mut value = json!({"name": "r", "route": "reviews", "stable": "v1", "canary": "v2",
            "steps": [{"setWeight": {"percent": 10}}, {"pause": {}}, {"setWeight": {"percent": 50}},
                      {"pause": {"duration": "60s"}}, {"setWeight": {"percent": 100}}]});
        for (k, v) in extra.as_object().unwrap() {
            value[k] = v.clone();
        }
        let spec: RolloutSpec = serde_json::from_value(value).unwrap();
        Rollout::new(spec, 0, T0).unwrap()
    }

    const APPLIED: Observation = Observation {
        min_proxy_generation: None,
        workloads: BTreeMap::new(),
    };

    /// Runs the engine until it waits, like the service does, and returns the rollout.
    fn settle(mut r: Rollout, obs: &Observation, now: Timestamp) -> Rollout {
        for _ in 0..20 {
            match next(&r, obs, now) {
                Action::Wait { .. } => return r,
                action => r = apply(&r, &action, now),
            }
        }
        panic!("engine did not settle: {r:?}");
    }

    #[test]
    fn walks_the_steps_transition_by_transition() {
        let r = rollout(json!({}));
        let cases: Vec<(&str, Timestamp, Action)> = vec![(
            "initialized starts step 0",
            at(0),
            Action::EnterStep { index: 0 },
        )];
        for (name, now, expected) in cases {
            assert_eq!(next(&r, &APPLIED, now), expected, "{name}");
        }
        let r = apply(&r, &Action::EnterStep { index: 0 }, at(0));
        assert_eq!(
            (r.status.phase, r.status.step, r.status.canary_weight),
            (Phase::Progressing, 0, 1000)
        );
        // The weight is applied: on to the pause step, which pauses the rollout.
        assert_eq!(next(&r, &APPLIED, at(1)), Action::EnterStep { index: 1 });
        let r = apply(&r, &Action::EnterStep { index: 1 }, at(1));
        assert_eq!(
            (r.status.phase, r.status.hold),
            (Phase::Paused, Some(Hold::PauseStep))
        );
        assert_eq!(
            next(&r, &APPLIED, at(1000)),
            Action::Wait { until: None },
            "paused waits for a person"
        );
        // Resume enters step 2 (50 %).
        let r = command(&r, Command::Resume, at(10)).unwrap();
        assert_eq!(
            (r.status.phase, r.status.step, r.status.canary_weight),
            (Phase::Progressing, 2, 5000)
        );
        // Then the 60 s hold.
        let r = apply(&r, &next(&r, &APPLIED, at(11)), at(11));
        assert_eq!(r.status.step, 3);
        assert_eq!(
            next(&r, &APPLIED, at(30)),
            Action::Wait {
                until: Some(at(71))
            }
        );
        assert_eq!(next(&r, &APPLIED, at(71)), Action::EnterStep { index: 4 });
        let r = apply(&r, &Action::EnterStep { index: 4 }, at(71));
        assert_eq!(r.status.canary_weight, 10000);
        // Last step done: promote, then finish on its own.
        let action = next(&r, &APPLIED, at(72));
        assert_eq!(
            action,
            Action::Promote {
                reason: "every step passed".into()
            }
        );
        let r = apply(&r, &action, at(72));
        assert_eq!(r.status.phase, Phase::Promoting);
        assert_eq!(next(&r, &APPLIED, at(72)), Action::Finish);
        let r = apply(&r, &Action::Finish, at(72));
        assert_eq!(
            (r.status.phase, r.status.canary_weight),
            (Phase::Succeeded, 10000)
        );
        assert_eq!(next(&r, &APPLIED, at(99)), Action::Wait { until: None });
        assert!(r.status.history.len() >= 7);
        assert!(r.version > 7);
    }

    #[test]
    fn a_mirror_step_holds_like_a_pause_and_mirrors_while_it_runs() {
        let r = rollout(json!({"steps": [
            {"mirror": {"percent": 20, "duration": "60s"}}, {"setWeight": {"percent": 10}},
            {"mirror": {"percent": 5}}, {"setWeight": {"percent": 50}}
        ]}));
        assert_eq!(r.mirror(), None, "initialized");
        let r = apply(&r, &next(&r, &APPLIED, at(0)), at(0));
        assert_eq!(
            (
                r.status.phase,
                r.status.step,
                r.status.canary_weight,
                r.mirror()
            ),
            (Phase::Progressing, 0, 0, Some(2000))
        );
        assert!(
            r.status.message.contains("mirroring 20%"),
            "{}",
            r.status.message
        );
        // (when, expected) for the timed mirror step.
        let cases = [
            (
                at(1),
                Action::Wait {
                    until: Some(at(60)),
                },
            ),
            (
                at(59),
                Action::Wait {
                    until: Some(at(60)),
                },
            ),
            (at(60), Action::EnterStep { index: 1 }),
        ];
        for (now, expected) in cases {
            assert_eq!(next(&r, &APPLIED, now), expected, "{now:?}");
        }
        // Paused for 100 s in the step: it keeps mirroring, and the 30 s it had left.
        let paused = command(&r, Command::Pause, at(30)).unwrap();
        assert_eq!(paused.mirror(), Some(2000));
        let resumed = command(&paused, Command::Resume, at(130)).unwrap();
        assert_eq!(
            next(&resumed, &APPLIED, at(131)),
            Action::Wait {
                until: Some(at(160))
            }
        );
        let r = apply(&r, &Action::EnterStep { index: 1 }, at(60));
        assert_eq!((r.status.canary_weight, r.mirror()), (1000, None));
        // The untimed mirror step pauses the rollout until someone resumes it.
        let r = apply(&r, &next(&r, &APPLIED, at(61)), at(61));
        assert_eq!(
            (r.status.phase, r.status.hold, r.mirror()),
            (Phase::Paused, Some(Hold::PauseStep), Some(500))
        );
        assert_eq!(next(&r, &APPLIED, at(999)), Action::Wait { until: None });
        let r = command(&r, Command::Resume, at(1000)).unwrap();
        assert_eq!(
            (r.status.step, r.status.canary_weight, r.mirror()),
            (3, 5000, None)
        );
    }

    #[test]
    fn a_mirror_step_is_judged_and_failed_checks_roll_it_back() {
        let analysis = json!({"interval": "10s", "failureLimit": 2});
        let r = rollout(json!({"analysis": analysis, "steps": [
            {"mirror": {"percent": 20, "duration": "60s"}}, {"setWeight": {"percent": 10}}
        ]}));
        let r = apply(&r, &next(&r, &APPLIED, at(0)), at(0));
        assert_eq!((r.status.step, r.mirror()), (0, Some(2000)));
        // Checks are due during the step as during any other.
        assert_eq!(next(&r, &APPLIED, at(0)), Action::RunCheck);
        let r = record_check(&r, None, at(0));
        assert_eq!(
            next(&r, &APPLIED, at(5)),
            Action::Wait {
                until: Some(at(10))
            }
        );
        // A step that cannot be judged (no reading's verdict) holds for its duration and moves on.
        let mut unjudged = r.clone();
        for now in [10, 20, 30, 40, 50, 60] {
            assert_eq!(next(&unjudged, &APPLIED, at(now)), Action::RunCheck);
            unjudged = record_check(&unjudged, None, at(now));
        }
        assert_eq!(
            next(&unjudged, &APPLIED, at(60)),
            Action::EnterStep { index: 1 }
        );
        // Copies failing the checks roll the rollout back before the canary serves anyone.
        let failed = CheckRecord {
            at: at(10),
            since: at(0),
            step: 0,
            canary_weight: 0,
            check: crate::analysis::judge_mirror(
                &crate::analysis::Thresholds {
                    min_success_rate: Some(0.99),
                    min_requests: 1,
                    ..Default::default()
                },
                &crate::analysis::MirrorCounters {
                    marked: 50,
                    sent: 50,
                    answered: 50,
                    server_errors: 50,
                },
            ),
        };
        let r = record_check(&r, Some(failed.clone()), at(10));
        let r = record_check(&r, Some(failed), at(20));
        let Action::RollBack { reason } = next(&r, &APPLIED, at(21)) else {
            panic!("{:?}", next(&r, &APPLIED, at(21)))
        };
        assert!(
            reason.contains("success rate on mirrored requests 0 %"),
            "{reason}"
        );
        let r = apply(&r, &Action::RollBack { reason }, at(21));
        assert_eq!((r.status.phase, r.mirror()), (Phase::RolledBack, None));
    }

    #[test]
    fn a_weight_step_waits_for_every_proxy() {
        let mut r = apply(
            &rollout(json!({"propagationTimeout": "10s"})),
            &Action::EnterStep { index: 0 },
            at(0),
        );
        r.status.weight_generation = 5;
        let behind = Observation {
            min_proxy_generation: Some(4),
            ..Observation::default()
        };
        let caught_up = Observation {
            min_proxy_generation: Some(5),
            ..Observation::default()
        };
        assert_eq!(
            next(&r, &behind, at(3)),
            Action::Wait {
                until: Some(at(10))
            }
        );
        assert_eq!(next(&r, &caught_up, at(3)), Action::EnterStep { index: 1 });
        let Action::Pause { hold, reason } = next(&r, &behind, at(10)) else {
            panic!()
        };
        assert_eq!(hold, Hold::Propagation);
        assert!(
            reason.contains("10% not running on every proxy after 10s"),
            "{reason}"
        );
        // Resuming waits afresh.
        let paused = apply(&r, &Action::Pause { hold, reason }, at(10));
        let resumed = command(&paused, Command::Resume, at(20)).unwrap();
        assert_eq!(
            (resumed.status.phase, resumed.status.step_started_at),
            (Phase::Progressing, at(20))
        );
        assert_eq!(
            next(&resumed, &behind, at(21)),
            Action::Wait {
                until: Some(at(30))
            }
        );
    }

    #[test]
    fn a_paused_timed_step_keeps_the_time_it_had_left() {
        let r = settle(rollout(json!({})), &APPLIED, at(0));
        let r = settle(
            command(&r, Command::Resume, at(0)).unwrap(),
            &APPLIED,
            at(0),
        );
        assert_eq!((r.status.step, r.status.step_started_at), (3, at(0)));
        let paused = command(&r, Command::Pause, at(20)).unwrap();
        assert_eq!(paused.status.hold, Some(Hold::Request));
        let resumed = command(&paused, Command::Resume, at(120)).unwrap();
        // 40 s were left of the 60 s hold.
        assert_eq!(
            next(&resumed, &APPLIED, at(121)),
            Action::Wait {
                until: Some(at(160))
            }
        );
    }

    #[test]
    fn the_timeout_counts_only_time_progressing() {
        let r = rollout(
            json!({"timeout": "100s", "steps": [{"setWeight": {"percent": 10}}, {"pause": {"duration": "1h"}}]}),
        );
        let r = settle(r, &APPLIED, at(0));
        assert_eq!(
            next(&r, &APPLIED, at(50)),
            Action::Wait {
                until: Some(at(100))
            }
        );
        let paused = command(&r, Command::Pause, at(50)).unwrap();
        let resumed = command(&paused, Command::Resume, at(500)).unwrap();
        assert_eq!(
            next(&resumed, &APPLIED, at(520)),
            Action::Wait {
                until: Some(at(550))
            }
        );
        let action = next(&resumed, &APPLIED, at(550));
        assert_eq!(
            action,
            Action::RollBack {
                reason: "timed out: still progressing after 1m 40s".into()
            }
        );
        let done = apply(&resumed, &action, at(550));
        assert_eq!(
            (done.status.phase, done.status.canary_weight),
            (Phase::RolledBack, 0)
        );
    }

    #[test]
    fn commands_check_the_phase() {
        let running = settle(rollout(json!({})), &APPLIED, at(0));
        let promoted = command(&running, Command::Promote, at(1)).unwrap();
        let aborted = command(&running, Command::Abort, at(1)).unwrap();
        let manual = rollout(json!({"autoFinish": false}));
        let manual_promoted =
            command(&settle(manual, &APPLIED, at(0)), Command::Promote, at(1)).unwrap();
        type Case<'a> = (
            &'a str,
            &'a Rollout,
            Command,
            std::result::Result<(Phase, u32), &'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                "pause a paused rollout is a no-op",
                &running,
                Command::Pause,
                Ok((Phase::Paused, 1000)),
            ),
            (
                "promote",
                &running,
                Command::Promote,
                Ok((Phase::Promoting, 10000)),
            ),
            ("abort", &running, Command::Abort, Ok((Phase::Aborted, 0))),
            (
                "set weight pauses",
                &running,
                Command::SetWeight(2500),
                Ok((Phase::Paused, 2500)),
            ),
            (
                "finish needs promotion",
                &running,
                Command::Finish,
                Err("finish needs a promoted rollout"),
            ),
            (
                "finish after promotion",
                &manual_promoted,
                Command::Finish,
                Ok((Phase::Succeeded, 10000)),
            ),
            (
                "pause while promoting",
                &promoted,
                Command::Pause,
                Err("is promoting"),
            ),
            (
                "set weight while promoting",
                &promoted,
                Command::SetWeight(1),
                Err("is promoting"),
            ),
            (
                "resume an aborted rollout",
                &aborted,
                Command::Resume,
                Err("is aborted"),
            ),
            (
                "abort an aborted rollout",
                &aborted,
                Command::Abort,
                Err("is aborted"),
            ),
        ];
        for (name, r, cmd, expected) in cases {
            let got = command(r, cmd, at(2)).map(|r| (r.status.phase, r.status.canary_weight));
            match (got, expected) {
                (Ok(got), Ok(expected)) => assert_eq!(got, expected, "{name}"),
                (Err(error), Err(text)) => {
                    assert!(matches!(error, Error::Conflict(_)), "{name}");
                    assert!(error.to_string().contains(text), "{name}: {error}");
                }
                (got, expected) => panic!("{name}: got {got:?}, expected {expected:?}"),
            }
        }
        assert_eq!(
            next(&manual_promoted, &APPLIED, at(5)),
            Action::Wait { until: None },
            "waits for finish"
        );
    }

    #[test]
    fn a_hand_set_weight_holds_until_the_next_weight_step() {
        let r = settle(rollout(json!({})), &APPLIED, at(0));
        let r = command(&r, Command::Resume, at(1)).unwrap();
        let r = settle(r, &APPLIED, at(1));
        assert_eq!(r.status.step, 3);
        let r = command(&r, Command::SetWeight(3300), at(2)).unwrap();
        assert!(r.status.message.contains("33%"), "{}", r.status.message);
        let r = command(&r, Command::Resume, at(3)).unwrap();
        assert_eq!(
            (r.status.phase, r.status.canary_weight),
            (Phase::Progressing, 3300)
        );
        let r = settle(r, &APPLIED, at(100));
        assert_eq!(r.status.phase, Phase::Succeeded);
    }

    #[test]
    fn history_is_bounded() {
        let mut r = settle(rollout(json!({})), &APPLIED, at(0));
        for i in 0..300 {
            r = command(
                &r,
                if i % 2 == 0 {
                    Command::SetWeight(i)
                } else {
                    Command::Resume
                },
                at(1),
            )
            .unwrap();
        }
        assert_eq!(r.status.history.len(), MAX_HISTORY);
    }

    fn check(verdict: Verdict, reason: &str) -> Option<CheckRecord> {
        use crate::analysis::judge::{Check, Measured};
        let measured = Measured {
            requests: 100,
            success_rate: Some(1.0),
            latency_ms: Some(5.0),
        };
        Some(CheckRecord {
            at: T0,
            since: T0,
            step: 0,
            canary_weight: 0,
            check: Check {
                verdict,
                reasons: vec![reason.into()],
                canary: measured.clone(),
                baseline: measured,
                p_value: None,
            },
        })
    }

    fn analysed(extra: serde_json::Value) -> Rollout {
        let mut value = json!({"analysis": {"interval": "10s", "minSuccessRate": 99, "failureLimit": 2, "inconclusiveLimit": 2},
            "steps": [{"setWeight": {"percent": 10}}, {"setWeight": {"percent": 50}}]});
        for (k, v) in extra.as_object().unwrap() {
            value[k] = v.clone();
        }
        rollout(value)
    }

    #[test]
    fn each_weight_waits_for_a_passing_check() {
        let r = apply(&analysed(json!({})), &Action::EnterStep { index: 0 }, at(0));
        // The first reading opens the window at once.
        assert_eq!(next(&r, &APPLIED, at(0)), Action::RunCheck);
        let r = record_check(&r, None, at(0));
        assert_eq!(
            next(&r, &APPLIED, at(1)),
            Action::Wait {
                until: Some(at(10))
            }
        );
        assert_eq!(next(&r, &APPLIED, at(10)), Action::RunCheck);
        let r = record_check(&r, check(Verdict::Pass, "fine"), at(10));
        assert_eq!(next(&r, &APPLIED, at(10)), Action::EnterStep { index: 1 });
        let r = apply(&r, &Action::EnterStep { index: 1 }, at(10));
        // A pass from before this step does not count for it.
        assert_eq!(
            next(&r, &APPLIED, at(11)),
            Action::Wait {
                until: Some(at(20))
            }
        );
        let r = record_check(&r, check(Verdict::Pass, "fine"), at(20));
        assert_eq!(
            next(&r, &APPLIED, at(20)),
            Action::Promote {
                reason: "every step passed".into()
            }
        );
    }

    #[test]
    fn failed_checks_roll_back_at_the_limit() {
        let r = record_check(
            &apply(&analysed(json!({})), &Action::EnterStep { index: 0 }, at(0)),
            None,
            at(0),
        );
        let r = record_check(
            &r,
            check(Verdict::Fail, "success rate 94 % is below 99 %"),
            at(10),
        );
        assert_eq!(r.status.analysis.failed_checks, 1);
        assert_eq!(
            next(&r, &APPLIED, at(11)),
            Action::Wait {
                until: Some(at(20))
            }
        );
        let r = record_check(&r, check(Verdict::Pass, "ok"), at(20));
        let r = apply(&r, &next(&r, &APPLIED, at(20)), at(20));
        let r = record_check(
            &r,
            check(Verdict::Fail, "p99 812 ms is above 500 ms"),
            at(30),
        );
        let Action::RollBack { reason } = next(&r, &APPLIED, at(30)) else {
            panic!("{:?}", next(&r, &APPLIED, at(30)))
        };
        assert!(
            reason.contains("2 analysis checks failed (limit 2); last: p99 812 ms is above 500 ms"),
            "{reason}"
        );
        let done = apply(&r, &Action::RollBack { reason }, at(30));
        assert_eq!(
            (done.status.phase, done.status.canary_weight),
            (Phase::RolledBack, 0)
        );
        assert_eq!(done.status.analysis.checks.len(), 3, "every check is kept");
    }

    #[test]
    fn inconclusive_checks_pause_and_never_promote() {
        let r = rollout(
            json!({"analysis": {"interval": "10s", "inconclusiveLimit": 2}, "steps": [{"setWeight": {"percent": 100}}]}),
        );
        let r = record_check(
            &apply(&r, &Action::EnterStep { index: 0 }, at(0)),
            None,
            at(0),
        );
        let r = record_check(
            &r,
            check(Verdict::Inconclusive, "only 3 canary requests, 20 needed"),
            at(10),
        );
        assert_eq!(
            next(&r, &APPLIED, at(11)),
            Action::Wait {
                until: Some(at(20))
            },
            "not promoted on no traffic"
        );
        let r = record_check(
            &r,
            check(Verdict::Inconclusive, "only 0 canary requests, 20 needed"),
            at(20),
        );
        let Action::Pause { hold, reason } = next(&r, &APPLIED, at(20)) else {
            panic!()
        };
        assert_eq!(hold, Hold::Inconclusive);
        assert!(
            reason.contains("2 analysis checks in a row were inconclusive")
                && reason.contains("only 0 canary requests"),
            "{reason}"
        );
        let paused = apply(&r, &Action::Pause { hold, reason }, at(20));
        let resumed = command(&paused, Command::Resume, at(30)).unwrap();
        assert_eq!(resumed.status.analysis.inconclusive_streak, 0);
        assert_eq!(
            next(&resumed, &APPLIED, at(30)),
            Action::RunCheck,
            "a fresh check after resuming"
        );
    }

    #[test]
    fn gates_hold_the_start_and_the_promotion() {
        let hooks = json!({"webhooks": [
            {"name": "smoke", "type": "preRollout", "url": "http://127.0.0.1:1/pre"},
            {"name": "approve", "type": "confirmPromotion", "url": "http://127.0.0.1:1/ok"}],
            "steps": [{"setWeight": {"percent": 50}}]});
        let r = rollout(hooks);
        assert_eq!(
            next(&r, &APPLIED, at(0)),
            Action::RunGate {
                kind: WebhookKind::PreRollout
            }
        );
        let r = record_gate(&r, WebhookKind::PreRollout, Err("refused".into()), at(0));
        assert_eq!(
            next(&r, &APPLIED, at(1)),
            Action::Wait {
                until: Some(at(10))
            }
        );
        let r = record_gate(&r, WebhookKind::PreRollout, Err("refused".into()), at(10));
        assert!(
            matches!(next(&r, &APPLIED, at(20)), Action::RollBack { reason } if reason.contains("pre-rollout hooks failed 2 times"))
        );
        let r = record_gate(
            &rollout(json!({"webhooks": [
            {"name": "approve", "type": "confirmPromotion", "url": "http://127.0.0.1:1/ok"}],
            "steps": [{"setWeight": {"percent": 50}}]})),
            WebhookKind::PreRollout,
            Ok(()),
            at(0),
        );
        let r = apply(&r, &Action::EnterStep { index: 0 }, at(0));
        assert_eq!(
            next(&r, &APPLIED, at(1)),
            Action::RunGate {
                kind: WebhookKind::ConfirmPromotion
            }
        );
        let r = record_gate(&r, WebhookKind::ConfirmPromotion, Err("503".into()), at(1));
        assert_eq!(
            r.status.message,
            "waiting for the confirm-promotion hooks: 503"
        );
        assert_eq!(
            next(&r, &APPLIED, at(5)),
            Action::Wait {
                until: Some(at(11))
            },
            "promotion waits"
        );
        let r = record_gate(&r, WebhookKind::ConfirmPromotion, Ok(()), at(11));
        assert_eq!(
            next(&r, &APPLIED, at(11)),
            Action::Promote {
                reason: "every step passed".into()
            }
        );
    }

    /// What happens between two looks of the engine, as the service would see it.
    #[derive(Debug, Clone)]
    enum Happening {
        /// Time passes; the proxies run the latest weight (`Some(true)`), lag one behind
        /// (`Some(false)`) or are not watched (`None`); checks due judge `verdict`, gates due
        /// answer `gate_ok`. Then the engine runs until it waits, as the service runs it.
        Time {
            seconds: u64,
            proxies: Option<bool>,
            verdict: Verdict,
            gate_ok: bool,
            /// The canary's Deployment (with `workloads`) has every replica asked for ready, or
            /// none.
            ready: bool,
        },
        /// A person's command (not `SetWeight`: a person may set any weight).
        Person(Command),
    }

    fn happening() -> impl proptest::strategy::Strategy<Value = Happening> {
        use proptest::prelude::*;
        let verdict = prop_oneof![
            3 => Just(Verdict::Pass),
            1 => Just(Verdict::Fail),
            1 => Just(Verdict::Inconclusive)
        ];
        let command = prop_oneof![
            Just(Command::Pause),
            Just(Command::Resume),
            Just(Command::Promote),
            Just(Command::Abort),
            Just(Command::Finish),
        ];
        prop_oneof![
            8 => (0u64..40, proptest::option::of(any::<bool>()), verdict, any::<bool>(), any::<bool>()).prop_map(
                |(seconds, proxies, verdict, gate_ok, ready)| Happening::Time { seconds, proxies, verdict, gate_ok, ready }
            ),
            1 => command.prop_map(Happening::Person),
        ]
    }

    /// A rollout with analysis on: rising weights with pauses between them, maybe gates, a
    /// timeout, manual finish and Deployments to scale.
    fn analysed_rollout() -> impl proptest::strategy::Strategy<Value = Rollout> {
        use proptest::prelude::*;
        let step = (0u32..=100, 0u8..4);
        (
            proptest::collection::vec(step, 1..6),
            1u32..4,
            1u32..4,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(steps, failures, inconclusive, pre, confirm, timeout, auto_finish, workloads)| {
                let mut percents: Vec<u32> = steps.iter().map(|(percent, _)| *percent).collect();
                percents.sort_unstable();
                let mut plan = Vec::new();
                for (percent, (_, pause)) in percents.into_iter().zip(&steps) {
                    plan.push(json!({"setWeight": {"percent": percent}}));
                    match pause {
                        0 => plan.push(json!({"pause": {}})),
                        1 => plan.push(json!({"pause": {"duration": "30s"}})),
                        _ => {}
                    }
                }
                let mut hooks = Vec::new();
                if pre {
                    hooks.push(json!({"name": "pre", "type": "preRollout", "url": "http://127.0.0.1:1/pre"}));
                }
                if confirm {
                    hooks.push(json!({"name": "ok", "type": "confirmPromotion", "url": "http://127.0.0.1:1/ok"}));
                }
                let mut extra = json!({
                    "analysis": {"interval": "10s", "minSuccessRate": 99,
                                 "failureLimit": failures, "inconclusiveLimit": inconclusive},
                    "steps": plan,
                    "webhooks": hooks,
                    "autoFinish": auto_finish,
                });
                if timeout {
                    extra["timeout"] = json!("5m");
                }
                if workloads {
                    extra["workloads"] = json!({"stable": "reviews-v1", "canary": "reviews-v2", "readyTimeout": "1m"});
                }
                rollout(extra)
            })
    }

    /// The weight went down without the rollout being rolled back or aborted.
    fn regressed(before: &Rollout, after: &Rollout) -> bool {
        after.status.canary_weight < before.status.canary_weight
            && !matches!(after.status.phase, Phase::RolledBack | Phase::Aborted)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Driven like the service drives it, through any run of checks, gates, lagging proxies
        /// and people's commands: the engine promotes only on a passing last check, and the
        /// canary's weight goes down only when the rollout is rolled back or aborted.
        #[test]
        fn with_analysis_it_promotes_only_on_a_pass_and_never_lowers_the_weight(
            start in analysed_rollout(),
            happenings in proptest::collection::vec(happening(), 1..60),
        ) {
            let mut r = start;
            let mut now = at(0);
            for happening in happenings {
                match happening {
                    Happening::Person(command) => {
                        if let Ok(after) = super::command(&r, command, now) {
                            proptest::prop_assert!(!regressed(&r, &after), "{command:?}: {r:?} -> {after:?}");
                            // A person never moves traffic ahead of the canary's replicas: with
                            // workloads the engine raises the weight, once they are ready.
                            proptest::prop_assert!(
                                r.spec.workloads.is_none() || after.status.canary_weight <= r.status.canary_weight,
                                "{command:?} raised the weight: {r:?} -> {after:?}"
                            );
                            r = after;
                        }
                    }
                    Happening::Time { seconds, proxies, verdict, gate_ok, ready } => {
                        now = now.plus(Duration::from_secs(seconds));
                        for _ in 0..50 {
                            let generation = r.status.weight_generation;
                            let requested = r.status.workloads.requested;
                            let observation = Observation {
                                min_proxy_generation: proxies.map(|current| if current { generation } else { generation.saturating_sub(1) }),
                                workloads: BTreeMap::from([
                                    ("reviews-v1".to_string(), Replicas { desired: 3, ready: 3 }),
                                    ("reviews-v2".to_string(), Replicas { desired: requested, ready: if ready { requested } else { 0 } }),
                                ]),
                            };
                            let action = next(&r, &observation, now);
                            let after = match &action {
                                Action::Wait { .. } => break,
                                Action::RunCheck => {
                                    // The first reading only opens a window.
                                    let reading = match r.status.analysis.last_check_at {
                                        None => None,
                                        Some(_) => check(verdict, "drawn"),
                                    };
                                    record_check(&r, reading, now)
                                }
                                Action::RunGate { kind } => {
                                    let outcome = if gate_ok { Ok(()) } else { Err("no".into()) };
                                    record_gate(&r, *kind, outcome, now)
                                }
                                Action::Promote { reason } if reason != "promoted by request" => {
                                    proptest::prop_assert_eq!(
                                        r.status.analysis.last_verdict,
                                        Some(Verdict::Pass),
                                        "promoted without a passing last check: {:?}",
                                        r
                                    );
                                    apply(&r, &action, now)
                                }
                                _ => apply(&r, &action, now),
                            };
                            proptest::prop_assert!(!regressed(&r, &after), "{action:?}: {r:?} -> {after:?}");
                            if let Some(workloads) = &after.spec.workloads {
                                // The engine raises the weight only onto enough ready replicas.
                                if after.status.canary_weight > r.status.canary_weight {
                                    let ready = observation.workloads["reviews-v2"].ready;
                                    let needed = workloads.needed(3, after.status.canary_weight);
                                    proptest::prop_assert!(ready >= needed, "{action:?} with {ready}/{needed} ready: {r:?}");
                                }
                            }
                            let mut after = after;
                            // The service pushes every new weight as the next generation.
                            if after.status.canary_weight != r.status.canary_weight {
                                after.status.weight_generation += 1;
                            }
                            r = after;
                        }
                    }
                }
            }
        }
    }

    /// What the service reads: the stable `reviews-v1` at 3 replicas, the canary `reviews-v2`
    /// with `ready` of `desired`.
    fn scaled(desired: u32, ready: u32) -> Observation {
        Observation {
            min_proxy_generation: None,
            workloads: BTreeMap::from([
                (
                    "reviews-v1".to_string(),
                    Replicas {
                        desired: 3,
                        ready: 3,
                    },
                ),
                ("reviews-v2".to_string(), Replicas { desired, ready }),
            ]),
        }
    }

    fn with_workloads(extra: serde_json::Value) -> Rollout {
        let mut workloads = json!({"stable": "reviews-v1", "canary": "reviews-v2"});
        for (k, v) in extra.as_object().unwrap() {
            workloads[k] = v.clone();
        }
        rollout(json!({"workloads": workloads,
            "steps": [{"setWeight": {"percent": 10}}, {"setWeight": {"percent": 50}}, {"pause": {}}]}))
    }

    fn scale(replicas: u32, full: u32, weight: u32) -> Action {
        Action::ScaleCanary {
            deployment: "reviews-v2".into(),
            replicas,
            full,
            weight,
        }
    }

    #[test]
    fn each_weight_waits_for_its_canary_replicas() {
        let fresh = with_workloads(json!({}));
        let asked = apply(&fresh, &scale(1, 3, 1000), at(0));
        assert_eq!(
            (
                asked.status.workloads.requested,
                asked.status.workloads.full
            ),
            (1, Some(3))
        );
        assert_eq!(asked.status.canary_weight, 0, "the weight waits");
        assert!(
            asked
                .status
                .message
                .contains("scaling Deployment reviews-v2 to 1 of 3 replicas; weight 10% waits"),
            "{}",
            asked.status.message
        );
        let at_10 = apply(&asked, &Action::EnterStep { index: 0 }, at(1));
        let sized = with_workloads(json!({"replicas": 10, "minReplicas": 2}));
        let cases: Vec<(&str, &Rollout, Observation, Timestamp, Action)> = vec![
            ("the stable's size is not read yet", &fresh, Observation::default(), at(0), Action::Wait { until: None }),
            ("the first weight scales the canary first, to the stable's size's share", &fresh, scaled(0, 0), at(0), scale(1, 3, 1000)),
            ("replicas and minReplicas from the spec", &sized, scaled(0, 0), at(0), scale(2, 10, 1000)),
            ("then waits for them to be ready", &asked, scaled(1, 0), at(10), Action::Wait { until: Some(at(300)) }),
            ("ready: the weight goes on", &asked, scaled(1, 1), at(10), Action::EnterStep { index: 0 }),
            ("not ready in time: pause", &asked, scaled(1, 0), at(300), Action::Pause {
                hold: Hold::Workload,
                reason: "reviews-v2 has 0/1 ready replicas after 5m; weight 10% waits for them (resume to scale and wait again)".into(),
            }),
            ("the next weight scales up again", &at_10, scaled(1, 1), at(2), scale(2, 3, 5000)),
        ];
        for (name, r, observation, now, expected) in cases {
            assert_eq!(next(r, &observation, now), expected, "{name}");
        }
    }

    #[test]
    fn a_mirror_step_waits_for_the_canary_to_be_up() {
        let mirrored = rollout(json!({
            "workloads": {"stable": "reviews-v1", "canary": "reviews-v2", "minReplicas": 2},
            "steps": [{"mirror": {"percent": 20, "duration": "1m"}}, {"setWeight": {"percent": 50}}],
        }));
        let asked = apply(&mirrored, &scale(2, 3, 0), at(0));
        assert!(
            asked.status.message.contains(
                "to 2 of 3 replicas; the canary's first requests wait for them to be ready"
            ),
            "{}",
            asked.status.message
        );
        let cases: Vec<(&str, &Rollout, Observation, Timestamp, Action)> = vec![
            ("the copies wait: the canary is scaled to its minimum first", &mirrored, scaled(0, 0), at(0), scale(2, 3, 0)),
            ("then for its replicas to be ready", &asked, scaled(2, 1), at(10), Action::Wait { until: Some(at(300)) }),
            ("ready: the mirror starts", &asked, scaled(2, 2), at(10), Action::EnterStep { index: 0 }),
            ("not ready in time: pause", &asked, scaled(2, 1), at(300), Action::Pause {
                hold: Hold::Workload,
                reason: "reviews-v2 has 1/2 ready replicas after 5m; the canary's first requests wait for them (resume to scale and wait again)".into(),
            }),
        ];
        for (name, r, observation, now, expected) in cases {
            assert_eq!(next(r, &observation, now), expected, "{name}");
        }
    }

    #[test]
    fn promotion_and_finish_wait_for_the_full_size_and_the_ends_scale_down() {
        let r = with_workloads(json!({"readyTimeout": "1m"}));
        let r = settle(r, &scaled(3, 3), at(0));
        assert_eq!((r.status.step, r.status.phase), (2, Phase::Paused));
        // Resuming the last pause step promotes, once the canary has all 3 replicas.
        let resumed = command(&r, Command::Resume, at(1)).unwrap();
        assert_eq!(
            next(&resumed, &scaled(2, 2), at(1)),
            scale(3, 3, TOTAL_WEIGHT)
        );
        let asked = apply(&resumed, &scale(3, 3, TOTAL_WEIGHT), at(1));
        assert_eq!(
            next(&asked, &scaled(3, 2), at(2)),
            Action::Wait {
                until: Some(at(61))
            }
        );
        assert!(matches!(
            next(&asked, &scaled(3, 3), at(2)),
            Action::Promote { .. }
        ));
        // A person's promotion waits for the full size too: the canary keeps its weight until
        // its 3 replicas are ready.
        let requested = command(&r, Command::Promote, at(1)).unwrap();
        assert_eq!(
            (requested.status.phase, requested.status.canary_weight),
            (Phase::Progressing, 5000)
        );
        assert_eq!(
            next(&requested, &scaled(2, 2), at(1)),
            scale(3, 3, TOTAL_WEIGHT)
        );
        let requested = apply(&requested, &scale(3, 3, TOTAL_WEIGHT), at(1));
        assert_eq!(
            next(&requested, &scaled(3, 2), at(2)),
            Action::Wait {
                until: Some(at(61))
            }
        );
        let Action::Promote { reason } = next(&requested, &scaled(3, 3), at(2)) else {
            panic!("promotes once ready")
        };
        assert_eq!(reason, "promoted by request");
        let promoted = apply(
            &requested,
            &Action::Promote {
                reason: reason.clone(),
            },
            at(40),
        );
        assert!(!promoted.status.workloads.promotion_requested);
        // Promoted, finishing (which scales the old stable down) waits for the full size again
        // if a replica stopped being ready, for a whole ready timeout from the promotion ...
        assert_eq!(
            next(&promoted, &scaled(3, 1), at(41)),
            Action::Wait {
                until: Some(at(100))
            }
        );
        assert_eq!(next(&promoted, &scaled(3, 3), at(41)), Action::Finish);
        // ... and a promotion whose canary stays short rolls back, to the stable that still has
        // its replicas.
        let Action::RollBack { reason } = next(&promoted, &scaled(3, 1), at(100)) else {
            panic!("a stuck promotion rolls back")
        };
        assert_eq!(reason, "promotion stuck: reviews-v2 has 1/3 ready replicas after 1m, so the old stable reviews-v1 keeps the traffic and its replicas");
        let done = apply(&promoted, &Action::Finish, at(100));
        let aborted = command(&r, Command::Abort, at(1)).unwrap();
        let rolled_back = apply(
            &r,
            &Action::RollBack {
                reason: "failed".into(),
            },
            at(1),
        );
        let mut kept = done.clone();
        kept.spec.workloads.as_mut().unwrap().scale_down = ScaleDown::Keep;
        let plain = settle(rollout(json!({})), &APPLIED, at(0));
        let plain_aborted = command(&plain, Command::Abort, at(1)).unwrap();
        type Case<'a> = (
            &'a str,
            Option<&'a Rollout>,
            &'a Rollout,
            Vec<(String, DeploymentChange)>,
        );
        let zero = |name: &str| vec![(name.to_string(), DeploymentChange::Scale(0))];
        let mut deleted = done.clone();
        deleted.spec.workloads.as_mut().unwrap().scale_down = ScaleDown::Delete;
        let cases: Vec<Case> = vec![
            (
                "success scales the old stable to 0",
                Some(&promoted),
                &done,
                zero("reviews-v1"),
            ),
            ("scaleDown keep leaves it", Some(&promoted), &kept, vec![]),
            (
                "scaleDown delete deletes it",
                Some(&promoted),
                &deleted,
                vec![("reviews-v1".into(), DeploymentChange::Delete)],
            ),
            (
                "an abort scales the canary to 0",
                Some(&r),
                &aborted,
                zero("reviews-v2"),
            ),
            (
                "so does a rollback",
                Some(&r),
                &rolled_back,
                zero("reviews-v2"),
            ),
            ("only once", Some(&aborted), &aborted, vec![]),
            ("a running rollout scales nothing down", None, &r, vec![]),
            (
                "nor one without workloads",
                Some(&plain),
                &plain_aborted,
                vec![],
            ),
        ];
        for (name, before, after, expected) in cases {
            assert_eq!(scale_downs(before, Some(after)), expected, "{name}");
        }
        // A run that goes away or is replaced while it runs leaves its canary at 0, unless the
        // new run scales the same Deployment; a finished one has scaled down already.
        let mut new_run = with_workloads(json!({"canary": "reviews-v3"}));
        new_run.status.created_at = at(50);
        let mut same_canary = with_workloads(json!({}));
        same_canary.status.created_at = at(50);
        type Ended<'a> = (
            &'a str,
            &'a Rollout,
            Option<&'a Rollout>,
            Vec<(String, DeploymentChange)>,
        );
        let ended: Vec<Ended> = vec![
            ("gone while running", &r, None, zero("reviews-v2")),
            (
                "replaced while running",
                &r,
                Some(&new_run),
                zero("reviews-v2"),
            ),
            (
                "replaced by a run of the same canary",
                &r,
                Some(&same_canary),
                vec![],
            ),
            ("gone after it ended", &aborted, None, vec![]),
            ("replaced after it ended", &done, Some(&new_run), vec![]),
            ("without workloads", &plain, None, vec![]),
        ];
        for (name, before, after, expected) in ended {
            assert_eq!(scale_downs(Some(before), after), expected, "{name}");
        }
    }

    #[test]
    fn resuming_a_canary_that_was_not_ready_asks_again() {
        let r = with_workloads(json!({"readyTimeout": "10s"}));
        let r = apply(&r, &scale(1, 3, 1000), at(0));
        let Action::Pause { hold, reason } = next(&r, &scaled(1, 0), at(10)) else {
            panic!()
        };
        assert!(
            reason.starts_with("reviews-v2 has 0/1 ready replicas after 10s"),
            "{reason}"
        );
        let paused = apply(&r, &Action::Pause { hold, reason }, at(10));
        assert_eq!(paused.status.phase, Phase::Paused);
        let resumed = command(&paused, Command::Resume, at(20)).unwrap();
        assert_eq!(next(&resumed, &scaled(1, 0), at(20)), scale(1, 3, 1000));
        let resumed = apply(&resumed, &scale(1, 3, 1000), at(20));
        assert_eq!(
            next(&resumed, &scaled(1, 1), at(21)),
            Action::EnterStep { index: 0 },
            "the first weight is not skipped"
        );
        // Later in the rollout, resuming waits at the step it held at, then enters the next.
        let at_10 = settle(resumed, &scaled(1, 1), at(21));
        assert_eq!((at_10.status.step, at_10.status.canary_weight), (0, 1000));
        let at_10 = apply(&at_10, &scale(2, 3, 5000), at(22));
        let held = settle(at_10, &scaled(2, 1), at(40));
        assert_eq!(
            (held.status.phase, held.status.hold),
            (Phase::Paused, Some(Hold::Workload))
        );
        let resumed = command(&held, Command::Resume, at(50)).unwrap();
        assert_eq!(next(&resumed, &scaled(2, 1), at(50)), scale(2, 3, 5000));
        let resumed = apply(&resumed, &scale(2, 3, 5000), at(50));
        assert_eq!(
            next(&resumed, &scaled(2, 2), at(51)),
            Action::EnterStep { index: 1 }
        );
    }

    /// Batches of a canary of 4 replicas: 1 at 10 %, 2 (50 %) at 30 %; promotion needs all 4.
    fn batched(partition: Option<u32>) -> Rollout {
        let mut workloads = json!({"stable": "reviews-v1", "canary": "reviews-v2", "replicas": 4,
            "batches": [{"replicas": 1, "weight": {"percent": 10}},
                        {"replicas": "50%", "weight": {"percent": 30}}]});
        if let Some(partition) = partition {
            workloads["batchPartition"] = json!(partition);
        }
        rollout(json!({"workloads": workloads,
            "steps": [{"setWeight": {"percent": 10}}, {"pause": {"duration": "10s"}},
                      {"setWeight": {"percent": 30}}]}))
    }

    #[test]
    fn batches_scale_the_canary_to_their_replicas_before_their_weight() {
        let r = batched(None);
        assert_eq!(next(&r, &scaled(0, 0), at(0)), scale(1, 4, 1000));
        let r = apply(&r, &scale(1, 4, 1000), at(0));
        let r = settle(r, &scaled(1, 1), at(1));
        assert_eq!((r.status.step, r.status.canary_weight), (1, 1000));
        // The second batch is 50 % of 4 at 30 %.
        assert_eq!(next(&r, &scaled(1, 1), at(11)), scale(2, 4, 3000));
        let r = apply(&r, &scale(2, 4, 3000), at(11));
        assert_eq!(
            next(&r, &scaled(2, 1), at(12)),
            Action::Wait {
                until: Some(at(311))
            }
        );
        let r = settle(r, &scaled(2, 2), at(12));
        assert_eq!((r.status.step, r.status.canary_weight), (2, 3000));
        // Promotion: the full size, asked for once 30 % is on.
        assert_eq!(r.status.workloads.requested, 4);
        assert!(matches!(
            next(&r, &scaled(4, 4), at(13)),
            Action::Promote { .. }
        ));
    }

    #[test]
    fn a_partition_holds_until_a_person_raises_or_removes_it() {
        let r = settle(batched(Some(0)), &scaled(1, 1), at(0));
        let r = apply(&r, &scale(1, 4, 1000), at(0));
        let r = settle(r, &scaled(1, 1), at(0));
        assert_eq!((r.status.step, r.status.canary_weight), (1, 1000));
        // After the 10 s pause the second batch would start: the partition holds the rollout.
        let held = settle(r, &scaled(1, 1), at(10));
        assert_eq!(
            (
                held.status.phase,
                held.status.hold,
                held.status.canary_weight
            ),
            (Phase::Paused, Some(Hold::Partition), 1000)
        );
        assert_eq!(
            held.status.message,
            "holding after batch 1 of 2 (1 replica at 10%): workloads.batchPartition is 0; raise or remove it to go on"
        );
        assert_eq!(
            next(&held, &scaled(1, 1), at(1000)),
            Action::Wait { until: None }
        );
        let refused = command(&held, Command::Resume, at(20)).unwrap_err();
        assert!(
            refused.to_string().contains("holds after batch 1 of 2 (workloads.batchPartition 0); raise or remove the partition"),
            "{refused}"
        );
        // Setting it to the same index changes nothing; an index past the batches is refused.
        assert_eq!(
            command(&held, Command::SetPartition(Some(0)), at(20)).unwrap(),
            held
        );
        let Err(Error::Invalid { field, .. }) =
            command(&held, Command::SetPartition(Some(2)), at(20))
        else {
            panic!("a partition past the batches")
        };
        assert_eq!(field, "workloads.batchPartition");
        for partition in [Some(1), None] {
            let raised = command(&held, Command::SetPartition(partition), at(20)).unwrap();
            assert_eq!(
                (raised.status.phase, raised.status.hold),
                (Phase::Progressing, None),
                "{partition:?}"
            );
            assert!(
                raised.status.message.ends_with(": going on"),
                "{}",
                raised.status.message
            );
            assert_eq!(
                raised.spec.workloads.as_ref().unwrap().batch_partition,
                partition
            );
            assert_eq!(next(&raised, &scaled(1, 1), at(20)), scale(2, 4, 3000));
        }
        // Raised ahead of time, it holds later: before promotion with partition 1 of 2 batches,
        // never with the last batch's.
        let early = command(
            &settle(batched(Some(0)), &scaled(1, 1), at(0)),
            Command::SetPartition(Some(1)),
            at(1),
        )
        .unwrap();
        assert_eq!(early.status.phase, Phase::Progressing);
        let mut ahead = batched(None);
        ahead.spec.workloads.as_mut().unwrap().batches.push(Batch {
            replicas: BatchReplicas::Count(3),
            weight: crate::rollout::Weight::basis_points(6000),
        });
        ahead.plan.push(PlanStep::SetWeight(6000));
        ahead.spec.workloads.as_mut().unwrap().batch_partition = Some(1);
        let mut done = ahead.clone();
        done.status.phase = Phase::Progressing;
        done.status.step = 2;
        done.status.canary_weight = 3000;
        done.status.workloads.requested = 2;
        let Action::Pause { hold, .. } = next(&done, &scaled(2, 2), at(1)) else {
            panic!("batch 2 waits")
        };
        assert_eq!(hold, Hold::Partition);
        // Without batches there is no partition to set.
        let plain = with_workloads(json!({}));
        let Err(Error::Invalid { field, .. }) =
            command(&plain, Command::SetPartition(Some(0)), at(1))
        else {
            panic!("no batches")
        };
        assert_eq!(field, "batchPartition");
    }

    #[test]
    fn people_do_not_move_traffic_ahead_of_ready_replicas() {
        let r = with_workloads(json!({}));
        let r = apply(&r, &scale(1, 3, 1000), at(0));
        let at_10 = settle(r, &scaled(1, 1), at(0));
        assert_eq!((at_10.status.step, at_10.status.canary_weight), (0, 1000));
        // Raising the weight by hand is refused; lowering it is not.
        let refused = command(&at_10, Command::SetWeight(5000), at(1)).unwrap_err();
        assert!(matches!(refused, Error::Conflict(_)), "{refused:?}");
        assert!(
            refused.to_string().contains("may only go down (10% now)"),
            "{refused}"
        );
        let lowered = command(&at_10, Command::SetWeight(500), at(1)).unwrap();
        assert_eq!(
            (lowered.status.canary_weight, lowered.status.hold),
            (500, Some(Hold::HandWeight))
        );
        // Finish (which scales the old stable down) waits for the full size, with autoFinish off.
        let mut manual = at_10.clone();
        manual.spec.auto_finish = false;
        let promoted = apply(&manual, &Action::Promote { reason: "x".into() }, at(2));
        let promoted = apply(&promoted, &scale(3, 3, TOTAL_WEIGHT), at(2));
        assert_eq!(
            next(&promoted, &scaled(3, 3), at(3)),
            Action::Wait { until: None },
            "waits for finish"
        );
        let finishing = command(&promoted, Command::Finish, at(3)).unwrap();
        assert_eq!(finishing.status.phase, Phase::Promoting);
        assert_eq!(
            finishing.status.message,
            "finish requested: it happens once the canary's full size is ready"
        );
        assert_eq!(
            command(&finishing, Command::Finish, at(4)).unwrap(),
            finishing,
            "asked once"
        );
        assert_eq!(
            next(&finishing, &scaled(3, 2), at(4)),
            Action::Wait {
                until: Some(at(302))
            }
        );
        assert_eq!(next(&finishing, &scaled(3, 3), at(4)), Action::Finish);
        // Without workloads a person's promote and finish act at once, as before.
        let plain = settle(rollout(json!({"autoFinish": false})), &APPLIED, at(0));
        let promoted = command(&plain, Command::Promote, at(1)).unwrap();
        assert_eq!(
            (promoted.status.phase, promoted.status.canary_weight),
            (Phase::Promoting, TOTAL_WEIGHT)
        );
        assert_eq!(
            command(&promoted, Command::Finish, at(2))
                .unwrap()
                .status
                .phase,
            Phase::Succeeded
        );
    }

    #[test]
    fn a_deployment_that_asks_for_fewer_replicas_than_requested_is_asked_again() {
        let r = with_workloads(json!({}));
        let asked = apply(&r, &scale(1, 3, 1000), at(0));
        let cases: Vec<(&str, Observation, Timestamp, Action)> = vec![
            (
                "scaled, not ready yet: wait",
                scaled(1, 0),
                at(40),
                Action::Wait {
                    until: Some(at(300)),
                },
            ),
            (
                "the scale was lost: wait a while for it",
                scaled(0, 0),
                at(10),
                Action::Wait {
                    until: Some(at(30)),
                },
            ),
            ("then ask again", scaled(0, 0), at(30), scale(1, 3, 1000)),
            (
                "not read yet: wait for the reading",
                scaled_without_canary(),
                at(40),
                Action::Wait {
                    until: Some(at(300)),
                },
            ),
        ];
        for (name, observation, now, expected) in cases {
            assert_eq!(next(&asked, &observation, now), expected, "{name}");
        }
        let again = apply(&asked, &scale(1, 3, 1000), at(30));
        assert_eq!(
            again.status.workloads.requested_at,
            Some(at(0)),
            "the ready timeout keeps running"
        );
        assert_eq!(again.status.workloads.asked_again_at, Some(at(30)));
        assert_eq!(
            again.status.message,
            "Deployment reviews-v2 asks for fewer than the 1 replicas the rollout asked for: scaling it again; weight 10% waits"
        );
        assert_eq!(
            next(&again, &scaled(0, 0), at(40)),
            Action::Wait {
                until: Some(at(60))
            }
        );
        assert_eq!(next(&again, &scaled(0, 0), at(60)), scale(1, 3, 1000));
        let Action::Pause { hold, .. } = next(&again, &scaled(1, 0), at(300)) else {
            panic!("the ready timeout still pauses")
        };
        assert_eq!(hold, Hold::Workload);
    }

    fn scaled_without_canary() -> Observation {
        let mut observation = scaled(0, 0);
        observation.workloads.remove("reviews-v2");
        observation
    }

    #[test]
    fn percentages_read_well() {
        for (bp, text) in [
            (0, "0%"),
            (1000, "10%"),
            (1250, "12.5%"),
            (1, "0.01%"),
            (10000, "100%"),
            (3333, "33.33%"),
        ] {
            assert_eq!(percent(bp), text);
        }
    }
}
