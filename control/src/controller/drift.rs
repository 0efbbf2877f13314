//! What the controller does when someone else changed the config it pushed (Kubernetes mode).

use super::*;

/// What the service does when someone else changed the pushed config (Kubernetes mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DriftPolicy {
    /// Push the service's config again at once (and say so in every running rollout).
    Reapply,
    /// Pause every running rollout with the reason, and leave the edit in place until a person
    /// decides (resume re-applies the service's config with the next change).
    Pause,
}

/// A drift as the controller acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drifted {
    /// What differs, for people.
    pub description: String,
    /// The `generation` in the live config, if it has a readable one.
    pub live_generation: Option<u64>,
}

impl Controller {
    /// Reacts to a change of the pushed config made outside the service (`None`: the live config
    /// is the service's again).
    ///
    /// `reapply` pushes the service's config at once, under a new generation above both its own
    /// and the live one, so that "applied on N/M" is about the re-applied config and not the hand
    /// edit. `pause` pauses every running rollout and leaves the edit in place until a person
    /// acts: their next command (resume, say) re-applies the service's config the same way.
    pub async fn drift(&self, drift: Option<Drifted>, policy: DriftPolicy) {
        // A follower compares the live config with an expectation it never pushed: only the
        // leader can tell a drift.
        if !self.is_leader() {
            *self.drift.write_locked() = None;
            return;
        }
        *self.drift.write_locked() = drift.as_ref().map(|d| d.description.clone());
        let Some(Drifted {
            description,
            live_generation,
        }) = drift
        else {
            // In sync again (a person reverted their edit, or our push landed): nothing held.
            *self.held_drift.locked() = None;
            return;
        };
        let live_generation = live_generation.unwrap_or(0);
        tracing::warn!(%description, ?policy, "the pushed filter config was changed outside meshcanary");
        match policy {
            DriftPolicy::Reapply => *self.resync.locked() = Some(live_generation),
            DriftPolicy::Pause => *self.held_drift.locked() = Some(live_generation),
        }
        let result = self
            .mutate(|state, now| {
                let running: Vec<String> = state
                    .rollouts
                    .values()
                    .filter(|r| !r.status.phase.is_terminal())
                    .map(|r| r.spec.name.clone())
                    .collect();
                for name in running {
                    let Some(rollout) = state.rollouts.get(&name) else { continue };
                    let changed = match policy {
                        DriftPolicy::Pause => engine::apply(
                            rollout,
                            &Action::Pause {
                                hold: crate::rollout::Hold::Request,
                                reason: format!("the filter config was changed outside meshcanary ({description}); check it, then resume (which re-applies meshcanary's config)"),
                            },
                            now,
                        ),
                        DriftPolicy::Reapply => engine::note(
                            rollout,
                            format!("the filter config was changed outside meshcanary ({description}); re-applied it"),
                            now,
                        ),
                    };
                    state.rollouts.insert(name, changed);
                }
                Ok(())
            })
            .await;
        if let Err(error) = result {
            tracing::error!(%error, "cannot record the drift");
        }
    }

    /// The last drift seen, while it lasts.
    pub fn drift_seen(&self) -> Option<String> {
        self.drift.read_locked().clone()
    }
}
