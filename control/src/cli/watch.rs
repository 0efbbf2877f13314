//! `rollout status --watch`: follows a rollout until it ends.
//!
//! On a terminal the screen is redrawn on every poll, so ages and time left stay current. Anywhere
//! else (a pipe, a CI log) a new block is printed only when the rollout changes — its version, or
//! the replicas of its Deployments, which change without a new version — so the log holds each
//! state once. The exit code tells a script how it ended.

use super::client::{decode, Purpose, Subject, EXIT_FAILED};
use super::render;
use super::{pretty_json, print, CliError, Context, Output};
use crate::api::rollouts::RolloutView;
use crate::rollout::Phase;
use crate::time::Timestamp;
use std::io::IsTerminal;
use std::time::Duration;

/// ANSI: cursor home, then clear the screen.
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// What to print after a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redraw {
    /// Clear the screen and draw the rollout.
    Screen,
    /// Append the rollout below what was printed before.
    Block,
    /// Nothing changed worth printing.
    Nothing,
}

/// Decides what a poll prints. `redraws` is whether the output is a terminal showing tables;
/// `seen` is what the last poll showed (the rollout's version and Deployments), `current` this one's.
pub fn redraw<T: PartialEq>(redraws: bool, seen: Option<&T>, current: &T) -> Redraw {
    match (redraws, seen) {
        (true, _) => Redraw::Screen,
        (false, Some(last)) if last == current => Redraw::Nothing,
        (false, _) => Redraw::Block,
    }
}

/// The exit code once a watched rollout ends: 0 if it succeeded, 1 if it was rolled back or
/// aborted. `None` while it is still running.
pub fn exit_code(phase: Phase) -> Option<u8> {
    match phase {
        Phase::Succeeded => Some(0),
        phase if phase.is_terminal() => Some(EXIT_FAILED),
        _ => None,
    }
}

/// Polls the rollout every `interval` and prints it until it reaches a terminal phase.
pub async fn watch(context: &Context, name: &str, interval: Duration) -> Result<u8, CliError> {
    let purpose = Purpose::new(
        format!("watch rollout {name}"),
        Subject::Rollout(name.into()),
    );
    let redraws = context.output == Output::Table && std::io::stdout().is_terminal();
    let mut last_version = None;
    loop {
        let value = context
            .client
            .get(&["v1", "rollouts", name], &purpose)
            .await?;
        let view: RolloutView = decode(value.clone(), &purpose)?;
        let version = (view.rollout.version, view.workloads.clone());
        let body = || match context.output {
            Output::Json => pretty_json(&value),
            Output::Table => Ok(render::status(&view, Timestamp::now())),
        };
        let ended = exit_code(view.rollout.status.phase);
        match redraw(redraws, last_version.as_ref(), &version) {
            Redraw::Screen => {
                let footer = match ended {
                    Some(_) => "the rollout has ended".to_string(),
                    None => format!(
                        "watching every {}; Ctrl-C stops watching (the rollout goes on)",
                        crate::time::HumanDuration(interval)
                    ),
                };
                print(&format!("{CLEAR_SCREEN}{}\n\n{footer}", body()?))?;
            }
            Redraw::Block => {
                let separator = if last_version.is_some() { "\n" } else { "" };
                print(&format!("{separator}{}", body()?))?;
            }
            Redraw::Nothing => {}
        }
        last_version = Some(version);
        if let Some(code) = ended {
            return Ok(code);
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redraws_on_a_terminal_and_appends_on_change_elsewhere() {
        let cases = [
            (true, None, (1, None), Redraw::Screen),
            (true, Some((1, None)), (1, None), Redraw::Screen),
            (false, None, (1, None), Redraw::Block),
            (false, Some((1, None)), (1, None), Redraw::Nothing),
            (false, Some((1, None)), (2, None), Redraw::Block),
            // A canary replica became ready: same version, new block.
            (false, Some((1, Some(0))), (1, Some(1)), Redraw::Block),
        ];
        for (redraws, last, version, expected) in cases {
            assert_eq!(
                redraw(redraws, last.as_ref(), &version),
                expected,
                "{redraws} {last:?} {version:?}"
            );
        }
    }

    #[test]
    fn only_success_exits_zero() {
        let cases = [
            (Phase::Initialized, None),
            (Phase::Progressing, None),
            (Phase::Paused, None),
            (Phase::Promoting, None),
            (Phase::Succeeded, Some(0)),
            (Phase::RolledBack, Some(1)),
            (Phase::Aborted, Some(1)),
        ];
        for (phase, expected) in cases {
            assert_eq!(exit_code(phase), expected, "{phase:?}");
        }
    }
}
