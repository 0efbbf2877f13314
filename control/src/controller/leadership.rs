//! Leading and following: a follower serves reads from the state the leader saved; a new leader
//! takes over (reloads, or adopts what its target holds), pushes, and only then takes writes.

use super::*;

impl Controller {
    /// Whether this replica may write: it holds the lease and has taken over the saved state.
    pub fn is_leader(&self) -> bool {
        self.leadership.borrow().is_leader && self.synced.load(Ordering::SeqCst)
    }

    pub(super) fn not_leader(&self) -> Error {
        let state = self.leadership.borrow();
        if state.is_leader {
            // Elected, but not serving writes yet: say what it is waiting for.
            let problems = self.problems.read_locked();
            return Error::Unavailable(problems.get(TAKE_OVER).cloned().unwrap_or_else(|| {
                "this replica is taking over as leader; retry in a moment".into()
            }));
        }
        Error::NotLeader {
            // A replica still taking over names no leader: retrying in a moment reaches it.
            leader: if state.is_leader {
                None
            } else {
                state.leader.clone()
            },
        }
    }

    /// Replaces the in-memory state with the saved one (a follower keeps up with the leader). The
    /// state lock is held across the read so a write cannot slip in between and be overwritten.
    pub(super) async fn reload(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        let loaded = self.load_checked().await;
        self.set_problem(RELOAD, loaded.as_ref().err());
        if let Some(saved) = loaded? {
            *state = saved;
        }
        Ok(())
    }

    /// Becomes the writer: reload what the previous leader saved — or, with nothing saved, adopt
    /// what the target holds ([`adopt::starting_config`]) and save that — push it (pushes are
    /// idempotent), and only then accept writes. An error leaves this replica not ready and
    /// refusing writes; the engine loop tries again.
    pub(super) async fn take_over(&self) -> Result<()> {
        let outcome = self.take_over_once().await;
        self.set_problem(TAKE_OVER, outcome.as_ref().err());
        outcome
    }

    pub(super) async fn take_over_once(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        // Answers to IO started before (as leader earlier, or by nobody) are stale now; gates
        // still in flight are called again once their deadline passes.
        self.observed.locked().clear();
        match self.load_checked().await? {
            Some(saved) => {
                tracing::info!(store = %self.store.describe(), generation = saved.filter.generation, rollouts = saved.rollouts.len(), "resumed saved state");
                *state = saved;
            }
            None => {
                let starting = adopt::starting_config(
                    self.router.live().await?,
                    self.options.initial.as_ref(),
                )?;
                for note in &starting.notes {
                    tracing::warn!("{note}");
                }
                let fresh = ServiceState::new(starting.config)?;
                self.store.save(&fresh).await?;
                tracing::info!(store = %self.store.describe(), generation = fresh.filter.generation, source = %starting.source, "no saved state: started from {}", starting.source);
                *state = fresh;
            }
        }
        self.push(&state.filter).await;
        self.synced.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// The saved state, checked with the API's rules ([`ServiceState::check`]): state that parses
    /// but is wrong is refused, with the field, rather than pushed or acted on.
    pub(super) async fn load_checked(&self) -> Result<Option<ServiceState>> {
        let Some(state) = self.store.load().await? else {
            return Ok(None);
        };
        state.check().map_err(|error| Error::CorruptState {
            path: self.store.describe(),
            reason: format!("{error}; fix or remove it (meshcanary will not push or act on it)"),
        })?;
        Ok(Some(state))
    }
}
