//! Retiring the variant a finished rollout leaves behind ("job offline"): after success the old
//! stable, after a rollback or abort the canary, sits at 0 % on its route. Left there, every
//! release would add one, and a route would stop taking canaries at the filter's limit of
//! variants. After the rollout's grace (`retireAfter`) the variant leaves the route, with the QA
//! rules that send requests to it — unless something still needs it, which is then said.
//!
//! Pure: [`retire`] decides on a route and the rollouts; the state applies it and records it.

use crate::rollout::{Phase, Rollout};
use crate::time::Timestamp;
use crate::view::percent;
use meshcanary_core::config::{CheckedConfig, FilterConfig, RouteConfig, RuleConfig};
use serde::{Deserialize, Serialize};

/// A variant to take off a route once `due_at` has passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retirement {
    /// The route it is on.
    pub route: String,
    /// The variant to retire.
    pub variant: String,
    /// The rollout that left it behind; its history records what became of it.
    pub rollout: String,
    /// When that run of the rollout was created: a later run under the same name (a
    /// MeshRollout's new release) is another run, and its history is not this one's to write.
    pub run: Timestamp,
    /// When the grace is over.
    pub due_at: Timestamp,
}

impl Retirement {
    /// The retirement a rollout that just reached `phase` asks for: after success the old
    /// stable, after a rollback or abort the canary; none while it runs.
    pub fn after(rollout: &Rollout, phase: Phase) -> Option<Retirement> {
        let variant = match phase {
            Phase::Succeeded => &rollout.spec.stable,
            Phase::RolledBack | Phase::Aborted => &rollout.spec.canary,
            _ => return None,
        };
        Some(Retirement {
            route: rollout.spec.route.clone(),
            variant: variant.clone(),
            rollout: rollout.spec.name.clone(),
            run: rollout.status.created_at,
            due_at: rollout.status.updated_at.plus(rollout.spec.retire_after()),
        })
    }
}

/// What became of a retirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The variant left the route, and these rules with it.
    Retired {
        /// The QA rules that sent requests to the variant, as they were.
        rules: Vec<RuleConfig>,
    },
    /// The variant stays; why.
    Kept(String),
    /// The variant or its route is gone already: nothing to do.
    Gone,
}

impl Outcome {
    /// The sentence for the rollout's history and the log, `None` when there is nothing to say.
    pub fn describe(&self, retirement: &Retirement) -> Option<String> {
        let Retirement { route, variant, .. } = retirement;
        match self {
            Outcome::Retired { rules } if rules.is_empty() => {
                Some(format!("retired {variant} from route {route}"))
            }
            Outcome::Retired { rules } => {
                let described: Vec<String> = rules.iter().map(describe_rule).collect();
                Some(format!(
                    "retired {variant} from route {route}, with the QA {} that sent requests to it: {}",
                    if rules.len() == 1 { "rule" } else { "rules" },
                    described.join("; ")
                ))
            }
            Outcome::Kept(reason) => Some(format!("{variant} stays on route {route}: {reason}")),
            Outcome::Gone => None,
        }
    }
}

/// Takes `retirement.variant` off its route in `filter` with the rules that name it, unless the
/// route's stable variant is it, it has traffic, the route mirrors to it, or a running rollout
/// among `rollouts` uses it.
/// `filter` is changed only when the variant is retired, and the result is one the filter accepts.
pub fn retire<'a>(
    filter: &mut FilterConfig,
    retirement: &Retirement,
    rollouts: impl IntoIterator<Item = &'a Rollout>,
) -> Outcome {
    let Retirement { route, variant, .. } = retirement;
    let Some(index) = filter.routes.iter().position(|r| &r.name == route) else {
        return Outcome::Gone;
    };
    let Some(config) = filter.routes.get(index) else {
        return Outcome::Gone;
    };
    let Some(position) = config.variants.iter().position(|v| &v.name == variant) else {
        return Outcome::Gone;
    };
    if let Some(reason) = why_it_stays(config, position, variant, rollouts) {
        return Outcome::Kept(reason);
    }
    let mut candidate = filter.clone();
    let Some(changed) = candidate.routes.get_mut(index) else {
        return Outcome::Gone;
    };
    changed.variants.remove(position);
    let (rules, kept): (Vec<RuleConfig>, Vec<RuleConfig>) = std::mem::take(&mut changed.rules)
        .into_iter()
        .partition(|rule| &rule.variant == variant);
    changed.rules = kept;
    if let Err(error) = CheckedConfig::try_from(candidate.clone()) {
        return Outcome::Kept(format!("the route would not be valid without it ({error})"));
    }
    *filter = candidate;
    Outcome::Retired { rules }
}

fn why_it_stays<'a>(
    route: &RouteConfig,
    position: usize,
    variant: &str,
    rollouts: impl IntoIterator<Item = &'a Rollout>,
) -> Option<String> {
    if position == 0 {
        return Some("it is the route's stable variant".into());
    }
    let user = rollouts.into_iter().find(|r| {
        !r.status.phase.is_terminal()
            && r.spec.route == route.name
            && (r.spec.stable == variant || r.spec.canary == variant)
    });
    if let Some(r) = user {
        let phase = r.status.phase.as_str();
        return Some(format!("rollout {} ({phase}) uses it", r.spec.name));
    }
    if route.mirrors.iter().any(|mirror| mirror.name == variant) {
        return Some("the route mirrors requests to it".into());
    }
    let weight = route.variants.get(position).map_or(0, |v| v.weight);
    if weight > 0 {
        return Some(format!(
            "it has {} of the traffic; set its weight to 0 to retire it",
            percent(weight)
        ));
    }
    None
}

/// `header x-canary = "v2"`, `cookie qa prefix "v"`, `query variant present`, `signed header t`.
fn describe_rule(rule: &RuleConfig) -> String {
    let source = match (&rule.header, &rule.cookie, &rule.query) {
        (Some(name), _, _) => format!("header {name}"),
        (_, Some(name), _) => format!("cookie {name}"),
        (_, _, Some(name)) => format!("query {name}"),
        _ => "a rule".to_string(),
    };
    match (&rule.exact, &rule.prefix, rule.present) {
        (Some(value), _, _) => format!("{source} = {value:?}"),
        (_, Some(value), _) => format!("{source} prefix {value:?}"),
        (_, _, Some(true)) => format!("{source} present"),
        (_, _, Some(false)) => format!("{source} absent"),
        _ => format!("signed {source}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::RolloutSpec;
    use meshcanary_core::config::VariantConfig;
    use serde_json::json;

    const T0: Timestamp = Timestamp(1_000_000);

    fn filter(variants: serde_json::Value, rules: serde_json::Value) -> FilterConfig {
        serde_json::from_value(json!({"generation": 3, "routes": [
            {"name": "reviews", "hosts": ["reviews"], "variants": variants, "rules": rules},
            {"name": "ratings", "hosts": ["ratings"],
             "variants": [{"name": "v1", "weight": 10000}, {"name": "v2", "weight": 0}]}
        ]}))
        .unwrap()
    }

    fn rollout(name: &str, stable: &str, canary: &str, phase: Phase) -> Rollout {
        let spec: RolloutSpec = serde_json::from_value(json!({
            "name": name, "route": "reviews", "stable": stable, "canary": canary,
            "steps": [{"setWeight": {"percent": 100}}], "retireAfter": "30s"
        }))
        .unwrap();
        let mut rollout = Rollout::new(spec, 0, T0).unwrap();
        rollout.status.phase = phase;
        rollout
    }

    fn retirement(variant: &str) -> Retirement {
        Retirement {
            route: "reviews".into(),
            variant: variant.into(),
            rollout: "r1".into(),
            run: T0,
            due_at: T0,
        }
    }

    #[test]
    fn the_variant_left_behind_is_the_old_stable_or_the_canary() {
        let cases = [
            (Phase::Succeeded, Some("v1")),
            (Phase::RolledBack, Some("v2")),
            (Phase::Aborted, Some("v2")),
            (Phase::Progressing, None),
            (Phase::Promoting, None),
            (Phase::Paused, None),
        ];
        for (phase, expected) in cases {
            let r = rollout("r1", "v1", "v2", phase);
            let due = Retirement::after(&r, phase);
            assert_eq!(
                due.as_ref().map(|d| d.variant.as_str()),
                expected,
                "{phase:?}"
            );
            if let Some(due) = due {
                assert_eq!(due.due_at, T0.plus(std::time::Duration::from_secs(30)));
                assert_eq!(
                    (due.route.as_str(), due.rollout.as_str()),
                    ("reviews", "r1")
                );
            }
        }
    }

    #[test]
    fn retiring_removes_the_variant_and_its_rules_or_says_why_not() {
        let rule = |variant: &str| json!({"header": "x-qa", "exact": variant, "variant": variant});
        let two = json!([{"name": "v2", "weight": 10000}, {"name": "v1", "weight": 0}]);
        let running = rollout("r2", "v2", "v1", Phase::Paused);
        let other_route = {
            let mut r = rollout("r3", "v2", "v1", Phase::Progressing);
            r.spec.route = "ratings".into();
            r
        };
        let finished = rollout("r0", "v2", "v1", Phase::RolledBack);
        type Case<'a> = (
            &'a str,
            serde_json::Value,
            serde_json::Value,
            Vec<&'a Rollout>,
            &'a str,
            Result<Vec<&'a str>, &'a str>,
        );
        let cases: [Case; 8] = [
            (
                "retired",
                two.clone(),
                json!([]),
                vec![],
                "v1",
                Ok(vec!["v2"]),
            ),
            (
                "retired with its rule, others kept",
                two.clone(),
                json!([rule("v1"), rule("v2")]),
                vec![&finished, &other_route],
                "v1",
                Ok(vec!["v2"]),
            ),
            (
                "the stable variant stays",
                two.clone(),
                json!([]),
                vec![],
                "v2",
                Err("it is the route's stable variant"),
            ),
            (
                "a variant with traffic stays",
                json!([{"name": "v2", "weight": 9000}, {"name": "v1", "weight": 1000}]),
                json!([]),
                vec![],
                "v1",
                Err("it has 10% of the traffic"),
            ),
            (
                "a variant a running rollout uses stays",
                two.clone(),
                json!([]),
                vec![&running],
                "v1",
                Err("rollout r2 (paused) uses it"),
            ),
            (
                "one of three",
                json!([{"name": "v2", "weight": 10000}, {"name": "v1", "weight": 0}, {"name": "v3", "weight": 0}]),
                json!([]),
                vec![],
                "v1",
                Ok(vec!["v2", "v3"]),
            ),
            (
                "already gone",
                two.clone(),
                json!([]),
                vec![],
                "v9",
                Err(""),
            ),
            ("route gone", two.clone(), json!([]), vec![], "v1", Err("")),
        ];
        for (name, variants, rules, rollouts, variant, expected) in cases {
            let mut config = filter(variants, rules);
            let before = config.clone();
            let mut target = retirement(variant);
            if name == "route gone" {
                target.route = "nope".into();
            }
            let outcome = retire(&mut config, &target, rollouts.iter().copied());
            let route = &config.routes[0];
            let names: Vec<&str> = route.variants.iter().map(|v| v.name.as_str()).collect();
            match (&outcome, expected) {
                (Outcome::Retired { rules }, Ok(expected)) => {
                    assert_eq!(names, expected, "{name}");
                    assert!(rules.iter().all(|r| r.variant == variant), "{name}");
                    assert!(route.rules.iter().all(|r| r.variant != variant), "{name}");
                    assert_eq!(config.routes[1], before.routes[1], "{name}: other routes");
                }
                (Outcome::Kept(reason), Err(expected)) => {
                    assert!(reason.contains(expected), "{name}: {reason}");
                    assert_eq!(config, before, "{name}: a kept variant changes nothing");
                }
                (Outcome::Gone, _) if name == "already gone" || name == "route gone" => {
                    assert_eq!(config, before, "{name}");
                }
                (outcome, expected) => panic!("{name}: {outcome:?}, expected {expected:?}"),
            }
        }
        // A variant the route mirrors to stays (a person's mirror: a rollout's ends with it).
        let mut config = filter(
            json!([{"name": "v2", "weight": 10000}, {"name": "v1", "weight": 0}]),
            json!([]),
        );
        config.routes[0].mirrors = vec![VariantConfig {
            name: "v1".into(),
            weight: 100,
        }];
        let before = config.clone();
        let outcome = retire(&mut config, &retirement("v1"), []);
        assert_eq!(
            outcome,
            Outcome::Kept("the route mirrors requests to it".into())
        );
        assert_eq!(config, before);
    }

    #[test]
    fn outcomes_read_well() {
        let rule =
            |json: serde_json::Value| -> RuleConfig { serde_json::from_value(json).unwrap() };
        let cases = [
            (Outcome::Retired { rules: vec![] }, Some("retired v1 from route reviews")),
            (
                Outcome::Retired {
                    rules: vec![
                        rule(json!({"header": "x-qa", "exact": "v1", "variant": "v1"})),
                        rule(json!({"cookie": "qa", "prefix": "v", "variant": "v1"})),
                    ],
                },
                Some("retired v1 from route reviews, with the QA rules that sent requests to it: header x-qa = \"v1\"; cookie qa prefix \"v\""),
            ),
            (
                Outcome::Kept("rollout r2 (paused) uses it".into()),
                Some("v1 stays on route reviews: rollout r2 (paused) uses it"),
            ),
            (Outcome::Gone, None),
        ];
        for (outcome, expected) in cases {
            assert_eq!(
                outcome.describe(&retirement("v1")).as_deref(),
                expected,
                "{outcome:?}"
            );
        }
    }
}
