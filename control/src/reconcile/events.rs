//! Which Kubernetes Events a change of a rollout makes: one per new entry of its history, its
//! reason read from the phase and step the entry reports. Pure; the edge publishes them.

use crate::rollout::{Event, Phase, Rollout};

/// An Event to publish about a MeshRollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Warning rather than Normal.
    pub warning: bool,
    /// `Progressing`, `StepStarted`, `Paused`, `Resumed`, `Promoted`, `Succeeded` (Normal);
    /// `CheckFailed`, `RolledBack`, `Aborted`, `InvalidSpec`, `Refused` (Warning).
    pub reason: &'static str,
    /// What happened, for people.
    pub note: String,
}

impl Note {
    /// A Normal event.
    pub fn normal(reason: &'static str, note: impl Into<String>) -> Note {
        Note {
            warning: false,
            reason,
            note: note.into(),
        }
    }

    /// A Warning event.
    pub fn warning(reason: &'static str, note: impl Into<String>) -> Note {
        Note {
            warning: true,
            reason,
            note: note.into(),
        }
    }
}

/// The Events for the history `rollout` has since `before` (the same run as last reported; `None`
/// for a run not reported yet, whose whole history is new).
pub fn notes(before: Option<&Rollout>, rollout: &Rollout) -> Vec<Note> {
    let history = &rollout.status.history;
    let (mut phase, mut step, new) = match before {
        Some(before) => {
            // History is bounded (oldest dropped), so find where the reported part ends.
            let seen = before.status.history.last();
            let start = seen
                .and_then(|last| history.iter().rposition(|e| e == last))
                .map_or(0, |i| i + 1);
            (
                Some(before.status.phase),
                Some(before.status.step),
                &history[start..],
            )
        }
        None => (None, None, &history[..]),
    };
    let mut notes = Vec::new();
    let failed_before = before.map_or(0, |b| b.status.analysis.failed_checks);
    if rollout.status.analysis.failed_checks > failed_before {
        let reason = rollout
            .status
            .analysis
            .checks
            .last()
            .map(|c| c.check.reasons.join("; "))
            .unwrap_or_default();
        notes.push(Note::warning(
            "CheckFailed",
            format!(
                "analysis check failed ({} so far){}",
                rollout.status.analysis.failed_checks,
                if reason.is_empty() {
                    String::new()
                } else {
                    format!(": {reason}")
                }
            ),
        ));
    }
    for entry in new {
        notes.push(note(phase, step, entry));
        phase = Some(entry.phase);
        step = Some(entry.step);
    }
    notes
}

fn note(phase: Option<Phase>, step: Option<usize>, entry: &Event) -> Note {
    let message = entry.message.clone();
    match entry.phase {
        Phase::Succeeded => Note::normal("Succeeded", message),
        Phase::RolledBack => Note::warning("RolledBack", message),
        Phase::Aborted => Note::warning("Aborted", message),
        Phase::Promoting => Note::normal("Promoted", message),
        Phase::Paused if phase != Some(Phase::Paused) => Note::normal("Paused", message),
        Phase::Progressing if phase == Some(Phase::Paused) => Note::normal("Resumed", message),
        Phase::Progressing | Phase::Paused if step.is_some() && step != Some(entry.step) => {
            Note::normal("StepStarted", message)
        }
        _ => Note::normal("Progressing", message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;

    fn entry(phase: Phase, step: usize, message: &str) -> Event {
        Event {
            at: Timestamp(1_700_000_000_000 + step as u64),
            phase,
            step,
            canary_weight: 0,
            message: message.into(),
        }
    }

    fn with_history(phase: Phase, step: usize, history: Vec<Event>) -> Rollout {
        let spec: crate::rollout::RolloutSpec = serde_json::from_value(serde_json::json!({
            "name": "r", "route": "reviews", "stable": "v1", "canary": "v2",
            "steps": [{"setWeight": {"percent": 50}}, {"pause": {}}, {"setWeight": {"percent": 100}}],
        }))
        .unwrap();
        let mut rollout = Rollout::new(spec, 0, Timestamp(1_700_000_000_000)).unwrap();
        rollout.status.phase = phase;
        rollout.status.step = step;
        rollout.status.history = history;
        rollout
    }

    #[test]
    fn one_event_per_new_history_entry() {
        let created = entry(Phase::Initialized, 0, "created");
        let started = entry(Phase::Progressing, 0, "step 1/3: weight 50%");
        let paused = entry(Phase::Paused, 1, "step 2/3: pause");
        let resumed = entry(Phase::Progressing, 1, "resumed");
        let third = entry(Phase::Progressing, 2, "step 3/3: weight 100%");
        let promoted = entry(Phase::Promoting, 2, "promoted");
        let done = entry(Phase::Succeeded, 2, "succeeded");
        let aborted = entry(Phase::Aborted, 1, "aborted");

        let first = with_history(
            Phase::Progressing,
            0,
            vec![created.clone(), started.clone()],
        );
        let at_pause = with_history(
            Phase::Paused,
            1,
            vec![created.clone(), started.clone(), paused.clone()],
        );
        let finished = with_history(
            Phase::Succeeded,
            2,
            vec![
                created.clone(),
                started.clone(),
                paused.clone(),
                resumed.clone(),
                third.clone(),
                promoted.clone(),
                done.clone(),
            ],
        );
        let stopped = with_history(
            Phase::Aborted,
            1,
            vec![
                created.clone(),
                started.clone(),
                paused.clone(),
                aborted.clone(),
            ],
        );
        let reasons = |before: Option<&Rollout>, after: &Rollout| -> Vec<(&'static str, bool)> {
            notes(before, after)
                .into_iter()
                .map(|n| (n.reason, n.warning))
                .collect()
        };
        type Row<'a> = (
            &'a str,
            Option<&'a Rollout>,
            &'a Rollout,
            Vec<(&'a str, bool)>,
        );
        let rows: Vec<Row> = vec![
            (
                "a new run: its whole history",
                None,
                &first,
                vec![("Progressing", false), ("Progressing", false)],
            ),
            ("nothing new: nothing", Some(&first), &first, vec![]),
            (
                "a pause step",
                Some(&first),
                &at_pause,
                vec![("Paused", false)],
            ),
            (
                "resumed to the end",
                Some(&at_pause),
                &finished,
                vec![
                    ("Resumed", false),
                    ("StepStarted", false),
                    ("Promoted", false),
                    ("Succeeded", false),
                ],
            ),
            (
                "aborted",
                Some(&at_pause),
                &stopped,
                vec![("Aborted", true)],
            ),
        ];
        for (what, before, after, want) in rows {
            assert_eq!(reasons(before, after), want, "{what}");
        }
        // The note is the history's message.
        assert_eq!(notes(Some(&at_pause), &stopped)[0].note, "aborted");
    }

    #[test]
    fn a_failed_check_is_a_warning() {
        let before = with_history(Phase::Progressing, 0, vec![]);
        let mut after = before.clone();
        after.status.analysis.failed_checks = 1;
        let got = notes(Some(&before), &after);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].reason, got[0].warning), ("CheckFailed", true));
    }
}
