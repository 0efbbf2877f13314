//! Everything the service persists: the filter config it pushes (with its generation) and every
//! rollout. Changes go through these methods, which keep the two consistent: a rollout's canary
//! weight is written into its route, a finished rollout makes its canary the route's stable
//! variant, and nothing that the filter would reject is ever accepted.

use crate::error::{Error, Result};
use crate::retirement::{self, Retirement};
use crate::rollout::{engine, Phase, Rollout, RolloutSpec};
use crate::time::Timestamp;
use meshcanary_core::config::{
    CheckedConfig, FilterConfig, RouteConfig, RuleConfig, VariantConfig, TOTAL_WEIGHT,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The persisted state of the control service.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceState {
    /// The filter config as last pushed; `filter.generation` increases with every change.
    pub filter: FilterConfig,
    /// Every rollout by name, finished ones included until deleted.
    pub rollouts: BTreeMap<String, Rollout>,
    /// Variants that finished rollouts left at 0 %, to take off their routes when due. Kept apart
    /// from the rollouts, so deleting a finished rollout does not keep its variant forever.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retirements: Vec<Retirement>,
    /// Rollouts a save kept elsewhere (Kubernetes mode: in their MeshRollout's `status.run`),
    /// each as the run the rest of this saved state — the filter config above all — reflects.
    /// Written and read by the store only; empty in memory.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kept_elsewhere: BTreeMap<String, RunRef>,
}

/// Which run of a rollout, and whether it had finished: what the filter config reflects of it
/// (a running run's weight is in its route for all to see).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRef {
    /// When the run was created (what tells runs of the same name apart).
    pub created_at: Timestamp,
    /// Whether the run had finished (its outcome is in the filter config).
    pub finished: bool,
}

impl RunRef {
    /// The run and version of `rollout`.
    pub fn of(rollout: &Rollout) -> RunRef {
        RunRef {
            created_at: rollout.status.created_at,
            finished: rollout.status.phase.is_terminal(),
        }
    }
}

impl ServiceState {
    /// A fresh state around an initial filter config, which must be valid.
    pub fn new(filter: FilterConfig) -> Result<ServiceState> {
        CheckedConfig::try_from(filter.clone())?;
        Ok(ServiceState {
            filter,
            rollouts: BTreeMap::new(),
            retirements: Vec::new(),
            kept_elsewhere: BTreeMap::new(),
        })
    }

    /// Brings rollouts kept elsewhere (`runs`, each the durable record of its run) back into a
    /// state loaded without them, and makes the filter config agree with them: a save writes
    /// the runs and the rest one after the other, so a crash between the two leaves a run ahead
    /// of (or behind) the filter config the rest holds. The run is the record: a running one's
    /// weight goes back into its route, a finished one the rest saw running is finished there
    /// (promoted, or its weight back to stable), and the filter generation rises so the
    /// corrected config is pushed. A record older than a copy this state still holds (the
    /// ConfigMap of a version that kept every rollout there) loses to the copy. Returns what was
    /// corrected, for logs.
    pub fn restore_runs(&mut self, runs: Vec<Rollout>) -> Vec<String> {
        let reflected = std::mem::take(&mut self.kept_elsewhere);
        let mut corrected = Vec::new();
        let mut generation = None;
        let age = |r: &Rollout| (r.status.created_at, r.version);
        for run in runs {
            let name = run.spec.name.clone();
            let copy = self.rollouts.get(&name);
            if copy.is_some_and(|copy| age(copy) > age(&run)) {
                continue;
            }
            // A finished run is finished in the filter config only when the rest saw it
            // running: its outcome is then missing. One the rest never saw running is an old
            // record (retention dropped it from the state; the resource keeps it).
            let finish_unseen = reflected
                .get(&name)
                .copied()
                .or(copy.map(RunRef::of))
                .is_some_and(|r| r.created_at == run.status.created_at && !r.finished);
            if run.status.phase.is_terminal() && !finish_unseen {
                self.rollouts.insert(name, run);
                continue;
            }
            let before = self.filter.clone();
            let weight_generation = run.status.weight_generation;
            match self.align_with(run.clone()) {
                Ok(()) if self.filter == before => {}
                Ok(()) => {
                    generation = generation.max(Some(weight_generation));
                    corrected.push(format!(
                        "rollout {name}: the saved filter config did not have what its record says ({} at {}); corrected",
                        run.status.phase.as_str(),
                        engine::percent(run.status.canary_weight)
                    ));
                }
                Err(error) => {
                    // Kept as it is: `check` names what is wrong.
                    corrected.push(format!(
                        "rollout {name}: cannot bring the filter config in line with its record: {error}"
                    ));
                    self.rollouts.insert(name, run);
                }
            }
        }
        if let Some(generation) = generation {
            self.filter.generation = generation.max(self.filter.generation + 1);
        }
        corrected
    }

    /// Puts `run` back with its weight in its route, adding its canary to the route first if the
    /// route lost it (the create that added it was not saved with the rest).
    fn align_with(&mut self, run: Rollout) -> Result<()> {
        let before = self.filter.clone();
        let route = self.route_mut(&run.spec.route)?;
        if !route.variants.iter().any(|v| v.name == run.spec.canary) {
            route.variants.push(VariantConfig {
                name: run.spec.canary.clone(),
                weight: 0,
            });
        }
        self.put_rollout(run).inspect_err(|_| self.filter = before)
    }

    /// Checks loaded state with the rules the API applies to what it accepts, so that state that
    /// parses but is wrong (a hand-edited file, a ConfigMap restored from elsewhere, a bug) is
    /// refused instead of pushed or acted on. The error names the field.
    pub fn check(&self) -> Result<()> {
        CheckedConfig::try_from(self.filter.clone())
            .map_err(|error| Error::invalid(join_field("filter", &error.field), error.reason))?;
        for (key, rollout) in &self.rollouts {
            let at = format!("rollouts.{key}");
            check_rollout(self, key, rollout)
                .map_err(|(field, reason)| Error::invalid(join_field(&at, &field), reason))?;
        }
        Ok(())
    }

    /// The route called `name`.
    pub fn route(&self, name: &str) -> Result<&RouteConfig> {
        self.filter
            .routes
            .iter()
            .find(|route| route.name == name)
            .ok_or_else(|| Error::NotFound(format!("route {name:?} is not in the filter config")))
    }

    fn route_mut(&mut self, name: &str) -> Result<&mut RouteConfig> {
        self.filter
            .routes
            .iter_mut()
            .find(|route| route.name == name)
            .ok_or_else(|| Error::NotFound(format!("route {name:?} is not in the filter config")))
    }

    /// Adds a rollout after checking it against the filter config. A canary that is not yet a
    /// variant of the route is added to it at 0 %.
    pub fn create_rollout(&mut self, spec: RolloutSpec, now: Timestamp) -> Result<&Rollout> {
        spec.plan()?;
        if self.rollouts.contains_key(&spec.name) {
            return Err(Error::Conflict(format!(
                "rollout {} already exists",
                spec.name
            )));
        }
        if let Some(active) = self
            .rollouts
            .values()
            .find(|r| r.spec.route == spec.route && !r.status.phase.is_terminal())
        {
            return Err(Error::Conflict(format!(
                "route {} already has a running rollout ({}, {}); finish or abort it first",
                spec.route,
                active.spec.name,
                active.status.phase.as_str()
            )));
        }
        let route = self.route(&spec.route).map_err(|_| {
            Error::invalid(
                "route",
                format!("{:?} is not a route of the filter config", spec.route),
            )
        })?;
        if !route.variants.iter().any(|v| v.name == spec.stable) {
            return Err(Error::invalid(
                "stable",
                format!("{:?} is not a variant of route {}", spec.stable, spec.route),
            ));
        }
        let canary_weight = route
            .variants
            .iter()
            .find(|v| v.name == spec.canary)
            .map_or(0, |v| v.weight);
        let mut candidate = self.filter.clone();
        if canary_weight == 0 && !route.variants.iter().any(|v| v.name == spec.canary) {
            let route = candidate
                .routes
                .iter_mut()
                .find(|r| r.name == spec.route)
                .ok_or_else(|| Error::NotFound(spec.route.clone()))?;
            route.variants.push(VariantConfig {
                name: spec.canary.clone(),
                weight: 0,
            });
            CheckedConfig::try_from(candidate.clone()).map_err(|e| {
                Error::invalid(
                    "canary",
                    format!("cannot add it to route {}: {e}", spec.route),
                )
            })?;
        }
        let rollout = Rollout::new(spec, canary_weight, now)?;
        self.filter = candidate;
        let name = rollout.spec.name.clone();
        self.rollouts.insert(name.clone(), rollout);
        let missing = Error::NotFound(format!("rollout {name} not found"));
        self.rollouts.get(&name).ok_or(missing)
    }

    /// Writes `rollout` back and its weight into its route: running rollouts move weight between
    /// stable and canary, a succeeded one makes its canary the stable (first) variant, a failed
    /// one gives stable everything back. Returns an error, changing nothing, if the filter would
    /// reject the result.
    pub fn put_rollout(&mut self, rollout: Rollout) -> Result<()> {
        let mut filter = self.filter.clone();
        {
            let route = filter
                .routes
                .iter_mut()
                .find(|r| r.name == rollout.spec.route)
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "route {:?} is not in the filter config",
                        rollout.spec.route
                    ))
                })?;
            set_canary_weight(
                route,
                &rollout.spec.stable,
                &rollout.spec.canary,
                rollout.status.canary_weight,
            )?;
            if rollout.status.phase == Phase::Succeeded {
                make_stable(route, &rollout.spec.canary);
            }
            set_mirror(route, &rollout.spec.canary, rollout.mirror());
        }
        CheckedConfig::try_from(filter.clone())?;
        self.filter = filter;
        let before = self
            .rollouts
            .get(&rollout.spec.name)
            .map(|r| r.status.phase);
        if rollout.status.phase.is_terminal() && !before.is_some_and(Phase::is_terminal) {
            if let Some(due) = Retirement::after(&rollout, rollout.status.phase) {
                self.retirements
                    .retain(|r| (&r.route, &r.variant) != (&due.route, &due.variant));
                self.retirements.push(due);
            }
        }
        self.rollouts.insert(rollout.spec.name.clone(), rollout);
        Ok(())
    }

    /// Carries out the retirements due at `now` (see [`crate::retirement`]): each variant leaves
    /// its route with its QA rules, or stays for a reason; either way the rollout that left it
    /// behind records it, if it is still kept. Returns when the next one is due.
    pub fn retire_due(&mut self, now: Timestamp) -> Option<Timestamp> {
        let (due, later): (Vec<Retirement>, Vec<Retirement>) =
            std::mem::take(&mut self.retirements)
                .into_iter()
                .partition(|r| r.due_at <= now);
        self.retirements = later;
        for retirement in due {
            let outcome = retirement::retire(&mut self.filter, &retirement, self.rollouts.values());
            let Some(message) = outcome.describe(&retirement) else {
                continue;
            };
            tracing::info!(rollout = %retirement.rollout, route = %retirement.route, variant = %retirement.variant, "{message}");
            let same_run = |r: &&Rollout| r.status.created_at == retirement.run;
            if let Some(rollout) = self.rollouts.get(&retirement.rollout).filter(same_run) {
                let noted = engine::note(rollout, message, now);
                self.rollouts.insert(retirement.rollout.clone(), noted);
            }
        }
        self.retirements.iter().map(|r| r.due_at).min()
    }

    /// Adds a QA rule to a route's live config.
    pub fn add_rule(&mut self, route_name: &str, rule: RuleConfig) -> Result<usize> {
        let mut filter = self.filter.clone();
        let index = filter
            .routes
            .iter()
            .position(|r| r.name == route_name)
            .ok_or_else(|| {
                Error::NotFound(format!("route {route_name:?} is not in the filter config"))
            })?;
        let route = filter
            .routes
            .get_mut(index)
            .ok_or_else(|| Error::NotFound(route_name.to_string()))?;
        route.rules.push(rule);
        let rule_index = route.rules.len() - 1;
        CheckedConfig::try_from(filter.clone()).map_err(|error| {
            // Report the field relative to the submitted rule, not the whole config.
            let prefix = format!("routes[{index}].rules[{rule_index}]");
            match error.field.strip_prefix(&prefix) {
                Some(rest) => Error::invalid(rest.trim_start_matches('.'), error.reason),
                None => Error::from(error),
            }
        })?;
        self.filter = filter;
        Ok(rule_index)
    }

    /// Removes QA rule `index` of a route.
    pub fn remove_rule(&mut self, route_name: &str, index: usize) -> Result<RuleConfig> {
        let route = self.route_mut(route_name)?;
        if index >= route.rules.len() {
            return Err(Error::NotFound(format!(
                "route {route_name} has {} rules; there is no rule {index}",
                route.rules.len()
            )));
        }
        Ok(route.rules.remove(index))
    }

    /// Removes a finished rollout.
    pub fn delete_rollout(&mut self, name: &str) -> Result<Rollout> {
        let rollout = self
            .rollouts
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("rollout {name} not found")))?;
        if !rollout.status.phase.is_terminal() {
            return Err(Error::Conflict(format!(
                "rollout {name} is {}; abort it before deleting it",
                rollout.status.phase.as_str()
            )));
        }
        self.rollouts
            .remove(name)
            .ok_or_else(|| Error::NotFound(format!("rollout {name} not found")))
    }
}

/// Gives `canary` `weight` basis points, taking them from (or giving them to) `stable`; other
/// variants keep theirs.
fn set_canary_weight(
    route: &mut RouteConfig,
    stable: &str,
    canary: &str,
    weight: u32,
) -> Result<()> {
    let others: u32 = route
        .variants
        .iter()
        .filter(|v| v.name != stable && v.name != canary)
        .map(|v| v.weight)
        .sum();
    let pair = TOTAL_WEIGHT.saturating_sub(others);
    if weight > pair {
        return Err(Error::invalid(
            "weight",
            format!(
                "route {} gives {others} basis points to other variants, so the canary can have at most {pair}",
                route.name
            ),
        ));
    }
    for variant in &mut route.variants {
        if variant.name == canary {
            variant.weight = weight;
        } else if variant.name == stable {
            variant.weight = pair - weight;
        }
    }
    Ok(())
}

/// Mirrors `share` basis points of the route's other requests to `canary` (a route mirrors to
/// one variant, so this replaces a mirror set by hand), or, without a share, ends a mirror to
/// `canary` (a mirror to another variant is not the rollout's to end).
fn set_mirror(route: &mut RouteConfig, canary: &str, share: Option<u32>) {
    match share {
        Some(weight) => {
            route.mirrors = vec![VariantConfig {
                name: canary.to_string(),
                weight,
            }];
        }
        None => route.mirrors.retain(|mirror| mirror.name != canary),
    }
}

/// Moves `canary` to the front of the route: the first variant is the stable one, which gets the
/// traffic when anything goes wrong.
fn make_stable(route: &mut RouteConfig, canary: &str) {
    if let Some(index) = route.variants.iter().position(|v| v.name == canary) {
        let variant = route.variants.remove(index);
        route.variants.insert(0, variant);
    }
}

/// `prefix.field`, or `prefix` alone.
fn join_field(prefix: &str, field: &str) -> String {
    if field.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

/// One loaded rollout against the rules: its spec as the API checks it, a status that fits its
/// plan, and, while it runs, a route that exists and carries its weight.
fn check_rollout(
    state: &ServiceState,
    key: &str,
    rollout: &Rollout,
) -> std::result::Result<(), (String, String)> {
    let invalid = |field: &str, reason: String| Err((field.to_string(), reason));
    if rollout.spec.name != key {
        return invalid(
            "spec.name",
            format!("{:?} is not its key {key:?}", rollout.spec.name),
        );
    }
    let plan = rollout.spec.plan().map_err(|error| match error {
        Error::Invalid { field, reason } => (join_field("spec", &field), reason),
        other => ("spec".to_string(), other.to_string()),
    })?;
    if plan != rollout.plan {
        return invalid("plan", "is not what spec.steps expands to".to_string());
    }
    let status = &rollout.status;
    let last = rollout.plan.len().saturating_sub(1);
    if status.step > last {
        return invalid(
            "status.step",
            format!(
                "{} is past the plan's last step (index {last})",
                status.step
            ),
        );
    }
    if status.canary_weight > TOTAL_WEIGHT {
        return invalid(
            "status.canaryWeight",
            format!("{} exceeds {TOTAL_WEIGHT}", status.canary_weight),
        );
    }
    if status.phase.is_terminal() {
        return Ok(());
    }
    let Some(route) = state
        .filter
        .routes
        .iter()
        .find(|r| r.name == rollout.spec.route)
    else {
        return invalid(
            "spec.route",
            format!(
                "{:?} is not a route of the filter config",
                rollout.spec.route
            ),
        );
    };
    for (field, variant) in [
        ("spec.stable", &rollout.spec.stable),
        ("spec.canary", &rollout.spec.canary),
    ] {
        if !route.variants.iter().any(|v| &v.name == variant) {
            return invalid(
                field,
                format!("{variant:?} is not a variant of route {}", route.name),
            );
        }
    }
    let live = route
        .variants
        .iter()
        .find(|v| v.name == rollout.spec.canary)
        .map_or(0, |v| v.weight);
    if live != status.canary_weight {
        return invalid(
            "status.canaryWeight",
            format!(
                "{} is not the canary's weight in route {} ({live})",
                status.canary_weight, route.name
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::engine::{apply, command, Action, Command};
    use serde_json::json;

    fn state() -> ServiceState {
        let filter = FilterConfig::from_json(
            json!({"generation": 1, "routes": [
                {"name": "reviews", "hosts": ["reviews"], "variants": [{"name": "v1", "weight": 10000}, {"name": "v2", "weight": 0}]},
                {"name": "abn", "hosts": ["abn"], "variants": [{"name": "a", "weight": 6000}, {"name": "b", "weight": 4000}]}
            ]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        ServiceState::new(filter).unwrap()
    }

    fn spec(value: serde_json::Value) -> RolloutSpec {
        let mut base = json!({"name": "r1", "route": "reviews", "stable": "v1", "canary": "v2", "steps": [{"setWeight": {"percent": 10}}]});
        for (k, v) in value.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    fn weights(state: &ServiceState, route: &str) -> Vec<(String, u32)> {
        state
            .route(route)
            .unwrap()
            .variants
            .iter()
            .map(|v| (v.name.clone(), v.weight))
            .collect()
    }

    #[test]
    fn weights_follow_the_rollout_and_finish_swaps_stable() {
        let mut s = state();
        let now = Timestamp(1);
        let r = s.create_rollout(spec(json!({})), now).unwrap().clone();
        let r = apply(&r, &Action::EnterStep { index: 0 }, now);
        s.put_rollout(r.clone()).unwrap();
        assert_eq!(
            weights(&s, "reviews"),
            vec![("v1".into(), 9000), ("v2".into(), 1000)]
        );
        let r = apply(&r, &Action::Promote { reason: "x".into() }, now);
        let r = apply(&r, &Action::Finish, now);
        s.put_rollout(r).unwrap();
        assert_eq!(
            weights(&s, "reviews"),
            vec![("v2".into(), 10000), ("v1".into(), 0)]
        );
    }

    #[test]
    fn the_route_mirrors_during_a_mirror_step_only() {
        let mirror = |s: &ServiceState| {
            s.route("reviews")
                .unwrap()
                .mirrors
                .first()
                .map(|m| (m.name.clone(), m.weight))
        };
        let steps = json!({"steps": [
            {"mirror": {"percent": 20, "duration": "1m"}}, {"setWeight": {"percent": 10}},
            {"mirror": {"basisPoints": 50}}
        ]});
        let mut s = state();
        let r = s
            .create_rollout(spec(steps.clone()), Timestamp(1))
            .unwrap()
            .clone();
        assert_eq!(mirror(&s), None, "not before it starts");
        let r = apply(&r, &Action::EnterStep { index: 0 }, Timestamp(2));
        s.put_rollout(r.clone()).unwrap();
        assert_eq!(mirror(&s), Some(("v2".into(), 2000)));
        assert_eq!(
            weights(&s, "reviews")[1],
            ("v2".into(), 0),
            "copies, no weight"
        );
        // Paused in the step, it keeps mirroring.
        let paused = command(&r, Command::Pause, Timestamp(3)).unwrap();
        s.put_rollout(paused.clone()).unwrap();
        assert_eq!(mirror(&s), Some(("v2".into(), 2000)));
        let resumed = command(&paused, Command::Resume, Timestamp(4)).unwrap();
        let r = apply(&resumed, &Action::EnterStep { index: 1 }, Timestamp(5));
        s.put_rollout(r.clone()).unwrap();
        assert_eq!(mirror(&s), None, "the next step ends it");
        // A mirror step without duration pauses the rollout and mirrors until resumed.
        let r = apply(&r, &Action::EnterStep { index: 2 }, Timestamp(6));
        assert_eq!(r.status.phase, Phase::Paused);
        s.put_rollout(r.clone()).unwrap();
        assert_eq!(mirror(&s), Some(("v2".into(), 50)));
        // Every end of the rollout ends the mirror.
        let ends: Vec<Rollout> = vec![
            command(&r, Command::Abort, Timestamp(7)).unwrap(),
            apply(&r, &Action::RollBack { reason: "x".into() }, Timestamp(7)),
            command(&r, Command::Promote, Timestamp(7)).unwrap(),
        ];
        for end in ends {
            let mut s = s.clone();
            s.put_rollout(end.clone()).unwrap();
            assert_eq!(mirror(&s), None, "{:?}", end.status.phase);
        }
        // A mirror the rollout did not set is left alone.
        let mut other = state();
        other.filter.routes[0].variants.push(VariantConfig {
            name: "v3".into(),
            weight: 0,
        });
        other.filter.routes[0].mirrors = vec![VariantConfig {
            name: "v3".into(),
            weight: 100,
        }];
        let r = other
            .create_rollout(spec(steps), Timestamp(1))
            .unwrap()
            .clone();
        let r = apply(&r, &Action::EnterStep { index: 1 }, Timestamp(2));
        other.put_rollout(r).unwrap();
        assert_eq!(mirror(&other), Some(("v3".into(), 100)));
    }

    #[test]
    fn restored_runs_bring_the_filter_config_in_line() {
        // The run at each point of its life, as a store would hold its record.
        let created = |canary: &str| {
            let mut s = state();
            s.create_rollout(spec(json!({"canary": canary})), Timestamp(1))
                .unwrap()
                .clone()
        };
        let mut at_ten = apply(
            &created("v2"),
            &Action::EnterStep { index: 0 },
            Timestamp(2),
        );
        at_ten.status.weight_generation = 7;
        let succeeded = apply(
            &apply(
                &at_ten,
                &Action::Promote { reason: "x".into() },
                Timestamp(3),
            ),
            &Action::Finish,
            Timestamp(4),
        );
        let mut v3_at_ten = apply(
            &created("v3"),
            &Action::EnterStep { index: 0 },
            Timestamp(2),
        );
        v3_at_ten.status.weight_generation = 3;
        let fresh = created("v2");
        let mut elsewhere_route = at_ten.clone();
        elsewhere_route.spec.route = "gone".into();
        let v2 = |w: u32| vec![("v1".to_string(), 10000 - w), ("v2".to_string(), w)];
        // (case, the rest's weights of v2, the run the rest reflects, a copy the rest still
        // holds, the record, v2's weight after, the generation after, corrected)
        type Case<'a> = (
            &'a str,
            u32,
            Option<&'a Rollout>,
            Option<&'a Rollout>,
            &'a Rollout,
            Vec<(String, u32)>,
            u64,
            usize,
        );
        let cases: Vec<Case> = vec![
            (
                "in step: nothing to do",
                1000,
                Some(&at_ten),
                None,
                &at_ten,
                v2(1000),
                1,
                0,
            ),
            (
                "the record is ahead: its weight goes in",
                0,
                Some(&fresh),
                None,
                &at_ten,
                v2(1000),
                7,
                1,
            ),
            (
                "the rest is ahead: the record wins",
                2000,
                Some(&at_ten),
                None,
                &at_ten,
                v2(1000),
                7,
                1,
            ),
            (
                "a run the rest never saw",
                0,
                None,
                None,
                &at_ten,
                v2(1000),
                7,
                1,
            ),
            (
                "a finish the rest did not see: promoted",
                1000,
                Some(&at_ten),
                None,
                &succeeded,
                vec![("v2".into(), 10000), ("v1".into(), 0)],
                7,
                1,
            ),
            (
                "an old finished record: left alone",
                0,
                None,
                None,
                &succeeded,
                v2(0),
                1,
                0,
            ),
            (
                "an older record than the rest's own copy: the copy stays",
                1000,
                None,
                Some(&at_ten),
                &fresh,
                v2(1000),
                1,
                0,
            ),
            (
                "a finish the rest's own copy did not see: promoted",
                1000,
                None,
                Some(&at_ten),
                &succeeded,
                vec![("v2".into(), 10000), ("v1".into(), 0)],
                7,
                1,
            ),
            (
                "its canary is missing from the route: added",
                0,
                None,
                None,
                &v3_at_ten,
                vec![("v1".into(), 9000), ("v2".into(), 0), ("v3".into(), 1000)],
                3,
                1,
            ),
            (
                "its route is gone: kept for check to name",
                0,
                None,
                None,
                &elsewhere_route,
                v2(0),
                1,
                1,
            ),
        ];
        for (case, weight, reflected, copy, record, after, generation, corrected) in cases {
            let mut rest = state();
            set_canary_weight(rest.route_mut("reviews").unwrap(), "v1", "v2", weight).unwrap();
            if let Some(reflected) = reflected {
                rest.kept_elsewhere
                    .insert("r1".into(), RunRef::of(reflected));
            }
            if let Some(copy) = copy {
                rest.rollouts.insert("r1".into(), copy.clone());
            }
            let notes = rest.restore_runs(vec![record.clone()]);
            assert_eq!(weights(&rest, "reviews"), after, "{case}");
            assert_eq!(rest.filter.generation, generation, "{case}");
            assert_eq!(notes.len(), corrected, "{case}: {notes:?}");
            assert!(rest.kept_elsewhere.is_empty(), "{case}");
            let kept = rest.rollouts.get("r1").expect(case);
            let age = |r: &Rollout| (r.status.created_at, r.version);
            let expected = copy.filter(|c| age(c) > age(record)).unwrap_or(record);
            assert_eq!(kept, expected, "{case}");
        }
    }

    #[test]
    fn a_new_canary_is_added_and_abort_restores_stable() {
        let mut s = state();
        let r = s
            .create_rollout(spec(json!({"canary": "v3"})), Timestamp(1))
            .unwrap()
            .clone();
        assert_eq!(weights(&s, "reviews").len(), 3);
        let r = apply(&r, &Action::EnterStep { index: 0 }, Timestamp(2));
        s.put_rollout(r.clone()).unwrap();
        assert_eq!(weights(&s, "reviews")[2], ("v3".into(), 1000));
        s.put_rollout(command(&r, Command::Abort, Timestamp(3)).unwrap())
            .unwrap();
        assert_eq!(
            weights(&s, "reviews"),
            vec![("v1".into(), 10000), ("v2".into(), 0), ("v3".into(), 0)]
        );
    }

    #[test]
    fn rejections() {
        let mut s = state();
        s.create_rollout(spec(json!({})), Timestamp(1)).unwrap();
        let cases: Vec<(RolloutSpec, &str)> = vec![
            (spec(json!({})), "already exists"),
            (
                spec(json!({"name": "r2"})),
                "already has a running rollout (r1",
            ),
            (
                spec(json!({"name": "r3", "route": "nope"})),
                "route: \"nope\" is not a route",
            ),
            (
                spec(json!({"name": "r4", "route": "abn", "stable": "x", "canary": "b"})),
                "stable: \"x\" is not a variant",
            ),
            (
                spec(json!({"name": "r5", "route": "abn", "stable": "a", "canary": "bad.name"})),
                "canary: cannot add it",
            ),
        ];
        for (spec, text) in cases {
            let error = s.create_rollout(spec, Timestamp(2)).unwrap_err();
            assert!(error.to_string().contains(text), "{error}");
        }
        assert!(s
            .delete_rollout("r1")
            .unwrap_err()
            .to_string()
            .contains("abort it before deleting"));
    }

    #[test]
    fn other_variants_keep_their_weight() {
        let mut s = state();
        s.filter.routes[1].variants.push(VariantConfig {
            name: "c".into(),
            weight: 0,
        });
        s.filter.routes[1].variants[0].weight = 5000;
        s.filter.routes[1].variants[2].weight = 1000;
        let r = s
            .create_rollout(
                spec(json!({"route": "abn", "stable": "a", "canary": "c"})),
                Timestamp(1),
            )
            .unwrap()
            .clone();
        let mut r = apply(&r, &Action::EnterStep { index: 0 }, Timestamp(1));
        s.put_rollout(r.clone()).unwrap();
        assert_eq!(
            weights(&s, "abn"),
            vec![("a".into(), 5000), ("b".into(), 4000), ("c".into(), 1000)]
        );
        r.status.canary_weight = 6001;
        assert!(s
            .put_rollout(r)
            .unwrap_err()
            .to_string()
            .contains("at most 6000"));
    }

    #[test]
    fn rules_are_validated_relative_to_the_rule() {
        let mut s = state();
        let rule: RuleConfig = serde_json::from_value(
            json!({"header": "x-canary", "exact": "always", "variant": "v2"}),
        )
        .unwrap();
        assert_eq!(s.add_rule("reviews", rule.clone()).unwrap(), 0);
        let bad: RuleConfig = serde_json::from_value(
            json!({"header": "x-canary", "exact": "always", "variant": "v9"}),
        )
        .unwrap();
        let error = s.add_rule("reviews", bad).unwrap_err();
        assert!(
            matches!(&error, Error::Invalid { field, .. } if field == "variant"),
            "{error:?}"
        );
        assert!(s.add_rule("nope", rule).is_err());
        assert_eq!(s.remove_rule("reviews", 0).unwrap().variant, "v2");
        assert!(s
            .remove_rule("reviews", 0)
            .unwrap_err()
            .to_string()
            .contains("has 0 rules"));
    }
}

#[cfg(test)]
mod check_tests {
    use super::*;
    use serde_json::{json, Value};

    /// A state with a running rollout at 10 %, as JSON (what a store holds).
    fn saved() -> Value {
        let filter = FilterConfig::from_json(
            json!({"generation": 3, "routes": [{"name": "reviews", "hosts": ["reviews"],
                "variants": [{"name": "v1", "weight": 10000}, {"name": "v2", "weight": 0}]}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let mut state = ServiceState::new(filter).unwrap();
        let spec: RolloutSpec = serde_json::from_value(json!({"name": "r", "route": "reviews",
            "stable": "v1", "canary": "v2", "steps": [{"setWeight": {"percent": 10}}, {"pause": {}}]}))
        .unwrap();
        state
            .create_rollout(spec, Timestamp(1_700_000_000_000))
            .unwrap();
        let mut rollout = state.rollouts["r"].clone();
        rollout.status.phase = Phase::Paused;
        rollout.status.step = 1;
        rollout.status.canary_weight = 1000;
        state.put_rollout(rollout).unwrap();
        serde_json::to_value(&state).unwrap()
    }

    #[test]
    fn loaded_state_is_checked_with_the_api_rules() {
        let ok: ServiceState = serde_json::from_value(saved()).unwrap();
        assert_eq!(ok.check().ok(), Some(()));
        // (what is changed, to what, the field named, words of the reason)
        let cases = [
            (
                "/filter/routes/0/variants/0/weight",
                json!(99999),
                "filter.routes[0].variants[0].weight",
                "exceeds 10000",
            ),
            (
                "/rollouts/r/status/step",
                json!(999),
                "rollouts.r.status.step",
                "past the plan's last step (index 1)",
            ),
            (
                "/rollouts/r/status/canaryWeight",
                json!(20000),
                "rollouts.r.status.canaryWeight",
                "exceeds 10000",
            ),
            (
                "/rollouts/r/status/canaryWeight",
                json!(500),
                "rollouts.r.status.canaryWeight",
                "not the canary's weight in route reviews (1000)",
            ),
            (
                "/rollouts/r/spec/name",
                json!("other"),
                "rollouts.r.spec.name",
                "is not its key",
            ),
            (
                "/rollouts/r/spec/route",
                json!("ratings"),
                "rollouts.r.spec.route",
                "not a route of the filter config",
            ),
            (
                "/rollouts/r/spec/canary",
                json!("v9"),
                "rollouts.r.spec.canary",
                "not a variant of route reviews",
            ),
            (
                "/rollouts/r/spec/steps/0/setWeight/percent",
                json!(150),
                "rollouts.r.spec.steps[0].setWeight.percent",
                "",
            ),
            (
                "/rollouts/r/plan/0/setWeight",
                json!(5000),
                "rollouts.r.plan",
                "not what spec.steps expands to",
            ),
        ];
        for (pointer, value, field, reason) in cases {
            let mut broken = saved();
            *broken
                .pointer_mut(pointer)
                .unwrap_or_else(|| panic!("{pointer}")) = value;
            let state: ServiceState = serde_json::from_value(broken).unwrap();
            match state.check() {
                Err(Error::Invalid {
                    field: got,
                    reason: why,
                }) => {
                    assert_eq!(got, field, "{pointer}");
                    assert!(why.contains(reason), "{pointer}: {why}");
                }
                other => panic!("{pointer}: {other:?}"),
            }
        }
        // A finished rollout keeps no claim on the route.
        let mut done = saved();
        done["rollouts"]["r"]["status"]["phase"] = json!("aborted");
        done["rollouts"]["r"]["spec"]["route"] = json!("gone");
        let state: ServiceState = serde_json::from_value(done).unwrap();
        assert_eq!(state.check().ok(), Some(()));
    }
}
