//! The actions a person takes on a running rollout, by name: the last segment of
//! `POST /v1/rollouts/{name}/{action}`, the CLI's subcommands, and (converted) the engine's
//! [`Command`]. One list, so the API, the CLI and the OpenAPI document cannot drift apart.

use super::engine::Command;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An action on a rollout, named as in the API path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum RolloutAction {
    /// Stop where it is.
    Pause,
    /// Continue after a pause (a `pause` step moves on to the next step).
    Resume,
    /// Skip to 100 % canary (the take-over).
    Promote,
    /// Send all traffic back to stable at once; the rollout ends as `aborted`.
    Abort,
    /// Make a promoted canary the route's stable variant.
    Finish,
}

impl RolloutAction {
    /// Every action, in the order the help texts list them.
    pub const ALL: [RolloutAction; 5] = [
        RolloutAction::Pause,
        RolloutAction::Resume,
        RolloutAction::Promote,
        RolloutAction::Abort,
        RolloutAction::Finish,
    ];

    /// Its name in the API path (what serde reads and writes).
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Promote => "promote",
            RolloutAction::Abort => "abort",
            RolloutAction::Finish => "finish",
        }
    }

    /// What the rollout is once it is done, for confirmations: "paused", "promoted"…
    pub fn done(self) -> &'static str {
        match self {
            RolloutAction::Pause => "paused",
            RolloutAction::Resume => "resumed",
            RolloutAction::Promote => "promoted",
            RolloutAction::Abort => "aborted",
            RolloutAction::Finish => "finished",
        }
    }

    /// "pause, resume, promote, abort or finish".
    pub fn names() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|action| action.as_str()).collect();
        match names.split_last() {
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }
}

/// A path segment that names no action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no action {given:?}; use {}", RolloutAction::names())]
pub struct UnknownAction {
    /// What was given.
    pub given: String,
}

impl std::str::FromStr for RolloutAction {
    type Err = UnknownAction;

    /// Reads a name exactly as serde does, so a name the OpenAPI document lists is one the path
    /// takes.
    fn from_str(text: &str) -> Result<RolloutAction, UnknownAction> {
        let deserializer = serde::de::value::StrDeserializer::<serde::de::value::Error>::new(text);
        RolloutAction::deserialize(deserializer).map_err(|_| UnknownAction {
            given: text.to_string(),
        })
    }
}

impl From<RolloutAction> for Command {
    fn from(action: RolloutAction) -> Command {
        match action {
            RolloutAction::Pause => Command::Pause,
            RolloutAction::Resume => Command::Resume,
            RolloutAction::Promote => Command::Promote,
            RolloutAction::Abort => Command::Abort,
            RolloutAction::Finish => Command::Finish,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_reads_back_from_its_name_and_serde_agrees() {
        for action in RolloutAction::ALL {
            assert_eq!(action.as_str().parse::<RolloutAction>(), Ok(action));
            assert_eq!(
                serde_json::to_value(action).ok(),
                Some(serde_json::json!(action.as_str()))
            );
            assert_eq!(Command::from(action).as_str(), action.as_str());
        }
    }

    #[test]
    fn unknown_names_are_refused_with_the_list() {
        for given in ["explode", "Pause", "", "set-weight", "pause "] {
            let error = given.parse::<RolloutAction>().err().map(|e| e.to_string());
            assert_eq!(
                error,
                Some(format!(
                    "no action {given:?}; use pause, resume, promote, abort or finish"
                )),
                "{given:?}"
            );
        }
    }
}
