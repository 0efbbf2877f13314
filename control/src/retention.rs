//! Which finished rollouts the service keeps.
//!
//! Every rollout stays in the saved state until deleted, and each write saves the whole state: at
//! ~400 finished rollouts the state was 742 KB and every write took 91 ms, and in Kubernetes mode
//! the ConfigMap (at most 1 MiB) would soon refuse the save altogether. The policy keeps the
//! newest finished rollouts — by when they finished — while they are at most `max_finished`, none
//! finished more than `max_age` ago, and together they take at most `max_bytes` of the state;
//! the rest are deleted. Running rollouts are never touched.
//!
//! It is a pure function of the state and the time, applied by the controller to every write
//! (the engine writes at least every second, so an age limit takes effect within a second of
//! running out, and a state loaded at startup is trimmed by the first write).

use crate::error::{Error, Result};
use crate::state::ServiceState;
use crate::time::{HumanDuration, Timestamp};
use std::time::Duration;

/// The default number of finished rollouts kept.
pub const DEFAULT_MAX_FINISHED: usize = 100;
/// The default age after which a finished rollout is deleted: 30 days.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// The default room finished rollouts may take in the saved state: 512 KiB, half of what a
/// ConfigMap holds, leaving the rest for running rollouts and the filter config.
pub const DEFAULT_MAX_BYTES: usize = 512 * 1024;
/// The shortest `max_age` accepted: a person (or `rollout status --watch`) should see how a
/// rollout ended before it goes.
pub const MIN_AGE: Duration = Duration::from_secs(60);
/// The least `max_bytes` accepted: room for one large finished rollout (200 history entries and
/// 100 analysis checks take about 70 KB).
pub const MIN_BYTES: usize = 64 * 1024;

/// How many finished rollouts, how old and how large, the service keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// At most this many finished rollouts (the newest).
    pub max_finished: usize,
    /// None that finished longer ago than this.
    pub max_age: Duration,
    /// Together at most this many bytes of the saved state (compact JSON).
    pub max_bytes: usize,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            max_finished: DEFAULT_MAX_FINISHED,
            max_age: DEFAULT_MAX_AGE,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

impl Retention {
    /// A policy, checked against the minimums; errors name the `serve` flag.
    pub fn new(max_finished: usize, max_age: Duration, max_bytes: usize) -> Result<Retention> {
        if max_finished == 0 {
            return Err(Error::invalid(
                "retain-finished",
                "must be at least 1 (how a rollout ended stays readable until the next one ends)",
            ));
        }
        if max_age < MIN_AGE {
            return Err(Error::invalid(
                "retain-finished-for",
                format!("must be at least {}", HumanDuration(MIN_AGE)),
            ));
        }
        if max_bytes < MIN_BYTES {
            return Err(Error::invalid(
                "retain-finished-bytes",
                format!("must be at least {MIN_BYTES} bytes (64KiB)"),
            ));
        }
        Ok(Retention {
            max_finished,
            max_age,
            max_bytes,
        })
    }

    /// The finished rollouts of `state` this policy deletes at `now`, by name.
    ///
    /// Finished rollouts are taken newest first (by when they last changed, which for a finished
    /// rollout is when it finished; ties by name) and kept while all three limits hold; from the
    /// first that breaks one, it and every older one go. Keeping a prefix means an older rollout
    /// never outlives a newer one.
    pub fn expired(&self, state: &ServiceState, now: Timestamp) -> Vec<String> {
        let mut finished: Vec<_> = state
            .rollouts
            .values()
            .filter(|rollout| rollout.status.phase.is_terminal())
            .collect();
        finished.sort_by(|a, b| {
            b.status
                .updated_at
                .cmp(&a.status.updated_at)
                .then_with(|| a.spec.name.cmp(&b.spec.name))
        });
        let mut bytes = 0usize;
        let kept = finished
            .iter()
            .enumerate()
            .take_while(|(index, rollout)| {
                bytes = bytes.saturating_add(
                    serde_json::to_vec(rollout).map_or(usize::MAX, |json| json.len()),
                );
                *index < self.max_finished
                    && now.since(rollout.status.updated_at) <= self.max_age
                    && bytes <= self.max_bytes
            })
            .count();
        finished
            .iter()
            .skip(kept)
            .map(|rollout| rollout.spec.name.clone())
            .collect()
    }

    /// Deletes what [`Retention::expired`] names; returns their names.
    pub fn apply(&self, state: &mut ServiceState, now: Timestamp) -> Vec<String> {
        let expired = self.expired(state, now);
        for name in &expired {
            state.rollouts.remove(name);
        }
        expired
    }
}

/// [`Retention::apply`], saying in the log what goes (the controller calls it on every write).
pub fn apply_logged(policy: &Retention, state: &mut ServiceState, now: Timestamp) {
    let expired = policy.apply(state, now);
    if !expired.is_empty() {
        tracing::info!(
            rollouts = %expired.join(", "),
            max_finished = policy.max_finished,
            max_age = %HumanDuration(policy.max_age),
            max_bytes = policy.max_bytes,
            "deleting finished rollouts past the retention policy"
        );
    }
}

/// Parses a size as people write it: `524288`, `512KiB`, `1MiB`, `300kB`, `1MB` (binary and
/// decimal units, `B` optional, case-insensitive).
pub fn parse_bytes(text: &str) -> std::result::Result<usize, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let factor: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "ki" | "kib" => 1024,
        "m" | "mb" => 1000 * 1000,
        "mi" | "mib" => 1024 * 1024,
        _ => {
            return Err(format!(
                "{text:?} is not a size like 524288, 512KiB or 1MiB (unit {unit:?})"
            ))
        }
    };
    number
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("{text:?} is not a size like 524288, 512KiB or 1MiB"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::engine::{apply, command, Action, Command};
    use crate::rollout::{Phase, Rollout, RolloutSpec};
    use serde_json::json;

    const MINUTE: u64 = 60_000;

    /// A rollout called `name`, created at `created` minutes and, unless `finished` is `None`,
    /// aborted at that minute; `padding` history entries make it larger.
    fn rollout(name: &str, created: u64, finished: Option<u64>, padding: usize) -> Rollout {
        let spec: RolloutSpec = serde_json::from_value(json!({
            "name": name, "route": "reviews", "stable": "v1", "canary": "v2",
            "steps": [{"setWeight": {"percent": 10}}]
        }))
        .unwrap();
        let at = Timestamp(created * MINUTE);
        let mut rollout = Rollout::new(spec, 0, at).unwrap();
        rollout = apply(&rollout, &Action::EnterStep { index: 0 }, at);
        for i in 0..padding {
            rollout = crate::rollout::engine::note(&rollout, format!("note {i}"), at);
        }
        if let Some(finished) = finished {
            rollout = command(&rollout, Command::Abort, Timestamp(finished * MINUTE)).unwrap();
            assert_eq!(rollout.status.phase, Phase::Aborted);
        }
        rollout
    }

    fn state(rollouts: Vec<Rollout>) -> ServiceState {
        let mut state = ServiceState::default();
        for rollout in rollouts {
            state.rollouts.insert(rollout.spec.name.clone(), rollout);
        }
        state
    }

    #[test]
    fn keeps_the_newest_finished_within_every_limit() {
        let size = |r: &Rollout| serde_json::to_vec(r).unwrap().len();
        let small = size(&rollout("x", 0, Some(1), 0));
        let day = 24 * 60;
        // name, created, finished (minutes); "run" is still running.
        let rollouts = || {
            vec![
                rollout("a", 0, Some(10), 0),
                rollout("b", 5, Some(20), 0),
                rollout("c", 6, Some(30), 0),
                rollout("d", 7, Some(30), 0),
                rollout("run", 1, None, 0),
            ]
        };
        let now = 40;
        let cases: Vec<(&str, Retention, Vec<&str>)> = vec![
            ("defaults keep all", Retention::default(), vec![]),
            (
                "count: the newest two (c and d finished together: by name)",
                Retention {
                    max_finished: 2,
                    ..Retention::default()
                },
                vec!["b", "a"],
            ),
            (
                "count: ties broken by name",
                Retention {
                    max_finished: 1,
                    ..Retention::default()
                },
                vec!["d", "b", "a"],
            ),
            (
                "age: finished at most 20 minutes ago",
                Retention {
                    max_age: Duration::from_secs(20 * 60),
                    ..Retention::default()
                },
                vec!["a"],
            ),
            (
                "age: exactly the limit is kept",
                Retention {
                    max_age: Duration::from_secs(30 * 60),
                    ..Retention::default()
                },
                vec![],
            ),
            (
                "bytes: room for three",
                Retention {
                    max_bytes: 3 * small + small / 2,
                    ..Retention::default()
                },
                vec!["a"],
            ),
            (
                "a day old, nothing kept past an hour",
                Retention {
                    max_age: Duration::from_secs(3600),
                    ..Retention::default()
                },
                vec!["c", "d", "b", "a"],
            ),
        ];
        for (what, policy, expected) in cases {
            let at = Timestamp(
                if what.starts_with("a day") {
                    day + now
                } else {
                    now
                } * MINUTE,
            );
            let mut state = state(rollouts());
            let expired = policy.apply(&mut state, at);
            assert_eq!(expired, expected, "{what}");
            assert!(state.rollouts.contains_key("run"), "{what}: running kept");
            assert_eq!(state.rollouts.len(), 5 - expected.len(), "{what}");
        }
    }

    #[test]
    fn a_large_rollout_takes_the_older_ones_with_it() {
        let big = rollout("big", 5, Some(20), 150);
        let policy = Retention {
            max_bytes: serde_json::to_vec(&big).unwrap().len() + 10,
            ..Retention::default()
        };
        let mut state = state(vec![rollout("old", 0, Some(10), 0), big]);
        // "big" fills the room; "old" is older, so it goes even though it alone would fit.
        assert_eq!(policy.apply(&mut state, Timestamp(30 * MINUTE)), ["old"]);
    }

    #[test]
    fn running_rollouts_are_never_deleted() {
        let policy = Retention::new(1, MIN_AGE, MIN_BYTES).unwrap();
        let mut state = state(vec![
            rollout("r1", 0, None, 150),
            rollout("r2", 0, None, 0),
            rollout("f1", 0, Some(1), 0),
        ]);
        let later = Timestamp(365 * 24 * 60 * MINUTE);
        assert_eq!(policy.apply(&mut state, later), ["f1"]);
        assert_eq!(state.rollouts.len(), 2);
    }

    #[test]
    fn limits_below_the_minimums_are_refused_naming_the_flag() {
        let cases = [
            (0, DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES, "retain-finished"),
            (
                1,
                Duration::from_secs(59),
                DEFAULT_MAX_BYTES,
                "retain-finished-for",
            ),
            (1, DEFAULT_MAX_AGE, MIN_BYTES - 1, "retain-finished-bytes"),
        ];
        for (count, age, bytes, flag) in cases {
            let error = Retention::new(count, age, bytes).unwrap_err();
            assert!(
                matches!(&error, Error::Invalid { field, .. } if field == flag),
                "{error:?}"
            );
        }
        assert_eq!(
            Retention::new(100, DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES).unwrap(),
            Retention::default()
        );
    }

    #[test]
    fn sizes() {
        let cases: [(&str, Option<usize>); 10] = [
            ("524288", Some(524_288)),
            ("512KiB", Some(524_288)),
            ("512 kib", Some(524_288)),
            ("1MiB", Some(1_048_576)),
            ("300kB", Some(300_000)),
            ("1MB", Some(1_000_000)),
            ("64B", Some(64)),
            ("", None),
            ("12GiB", None),
            ("-1", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_bytes(text).ok(), expected, "{text:?}");
        }
    }
}
