//! Readiness: what keeps this replica from being ready, by concern.

use super::*;

// The concerns readiness reports on.
pub(super) const PUSH: &str = "push";
pub(super) const SAVE: &str = "save";
pub(super) const TAKE_OVER: &str = "take-over";
pub(super) const RELOAD: &str = "reload";
pub(super) const PROXIES: &str = "proxies";

impl Controller {
    /// Records (or clears, with `None`) what keeps this replica from being ready.
    pub(super) fn set_problem(&self, concern: &'static str, problem: Option<&Error>) {
        let mut problems = self.problems.write_locked();
        match problem {
            Some(error) => problems.insert(concern, error.to_string()),
            None => problems.remove(concern),
        };
    }

    /// Why this replica is not ready (`None`: ready), leaving out the checks named in `exclude`:
    /// `push`, `save`, `take-over` (adoption), `reload` (a follower reading the leader's state)
    /// failed and have not succeeded since; `proxies`: on the leader, watched proxies still run
    /// an older generation than the one pushed, [`ControllerOptions::proxy_grace`] after the push (they
    /// rejected it, or do not receive it).
    pub fn not_ready(&self, exclude: &[&str]) -> Option<String> {
        let mut reasons: Vec<String> = {
            let problems = self.problems.read_locked();
            problems
                .iter()
                .filter(|(concern, _)| !exclude.contains(concern))
                .map(|(concern, problem)| format!("{concern}: {problem}"))
                .collect()
        };
        let leading = self.leadership.borrow().is_leader;
        let taking_over = leading && !self.synced.load(Ordering::SeqCst);
        if taking_over
            && !exclude.contains(&TAKE_OVER)
            && !reasons.iter().any(|r| r.starts_with(TAKE_OVER))
        {
            reasons.push(format!("{TAKE_OVER}: in progress"));
        }
        if leading && !exclude.contains(&PROXIES) {
            if let Some(problem) = self.proxies_behind() {
                reasons.push(format!("{PROXIES}: {problem}"));
            }
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// The watched proxies that still answer with an older generation than the one pushed, once
    /// they have had the grace period to catch up. A proxy that cannot be read says nothing
    /// either way (before the first scrape, say); no proxies watched, nothing to say.
    pub(super) fn proxies_behind(&self) -> Option<String> {
        let pushed_at = (*self.pushed_at.locked())?;
        let waited = pushed_at.elapsed();
        if waited < self.options.proxy_grace {
            return None;
        }
        let pushed = self.pushed_generation.load(Ordering::SeqCst);
        let proxies = self.proxies.read_locked();
        let behind: Vec<String> = proxies
            .iter()
            .filter_map(|p| {
                let generation = p.generation?;
                (generation < pushed).then(|| format!("{} runs {generation}", p.proxy))
            })
            .collect();
        if behind.is_empty() {
            return None;
        }
        Some(format!(
            "{} of {} proxies do not run generation {pushed}, pushed {}s ago ({}): they rejected \
             it (see meshcanary_config_rejected_total and Envoy's log) or do not receive it \
             (for a standalone Envoy, a broken watch of the ECDS file's directory)",
            behind.len(),
            proxies.len(),
            waited.as_secs(),
            behind.join(", ")
        ))
    }

    /// The last push error, if the current config has not been pushed.
    pub fn push_error(&self) -> Option<String> {
        self.problems.read_locked().get(PUSH).cloned()
    }
}
