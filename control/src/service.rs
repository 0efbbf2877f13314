//! The running service: owns the state, runs the rollout engine on a timer, pushes configs and
//! watches the proxies. Every change goes through [`Controller::mutate`]: under one lock it computes
//! the new state, saves it, then pushes it — so concurrent API calls cannot lose each other's
//! changes, a crash leaves either the old or the new state on disk, and a config is never pushed
//! before it is saved (after a restart the saved config is simply pushed again).

use crate::adopt;
use crate::analysis::{delta, judge, merge, Check, Measured, Snapshot, Verdict};
use crate::error::{Error, Result};
use crate::leader::LeaderState;
use crate::metrics::Metrics;
use crate::observer::{MetricsObserver, ProxyGeneration};
use crate::options::ControllerOptions;
use crate::retention::Retention;
use crate::rollout::engine::{self, Action, Command, Observation};
use crate::rollout::{CheckRecord, Phase, Rollout, RolloutSpec, WebhookKind};
use crate::router::TrafficRouter;
use crate::state::ServiceState;
use crate::store::StateStore;
use crate::time::Timestamp;
use crate::webhook;
use meshcanary_core::config::{CheckedConfig, FilterConfig, RuleConfig};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{Mutex, Notify};
use tracing::Instrument;

/// How often the proxies are asked which generation they run.
pub const OBSERVE_INTERVAL: Duration = Duration::from_millis(200);
/// The engine looks at every rollout at least this often, even without a timer due.
const ENGINE_INTERVAL: Duration = Duration::from_secs(1);
/// How often a follower reloads the leader's state to serve fresh reads.
const FOLLOWER_RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// How often a failed push is retried.
pub const PUSH_RETRY_INTERVAL: Duration = Duration::from_secs(2);

// The concerns readiness reports on.
const PUSH: &str = "push";
const SAVE: &str = "save";
const TAKE_OVER: &str = "take-over";
const RELOAD: &str = "reload";
const PROXIES: &str = "proxies";

/// The control service's core: state, engine, pushes and observations.
pub struct Controller {
    state: Mutex<ServiceState>,
    store: Box<dyn StateStore>,
    router: Box<dyn TrafficRouter>,
    observer: Box<dyn MetricsObserver>,
    proxies: RwLock<Vec<ProxyGeneration>>,
    pushed_generation: AtomicU64,
    wake: Notify,
    // Ticks run one at a time (the engine loop ticks; a tick of its own must not overlap a
    // wake-up's): two ticks deciding at once would both start a due check or gate.
    tick_lock: Mutex<()>,
    /// Answers of the IO the engine asked for (checks, gate hooks), waiting for the next tick to
    /// record them. The IO runs in tasks of its own, never inside a tick or a request.
    observed: std::sync::Mutex<Vec<Observed>>,
    /// Rollouts whose analysis check is running now.
    checks_in_flight: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Per rollout: when the current analysis window opened and every proxy's counters then.
    windows: std::sync::Mutex<HashMap<String, Window>>,
    http: webhook::Client,
    retention: Retention,
    notify_tx: tokio::sync::mpsc::UnboundedSender<(Rollout, WebhookKind)>,
    notify_rx:
        std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(Rollout, WebhookKind)>>>,
    leadership: tokio::sync::watch::Receiver<LeaderState>,
    // Set once a new leader has reloaded the saved state and pushed it; until then it must not
    // write or push (its in-memory state is a follower's, possibly stale).
    synced: std::sync::atomic::AtomicBool,
    drift: RwLock<Option<String>>,
    /// The live config differs from the service's and the next write must re-apply it, with a
    /// generation above this one (the live config's generation, which a hand edit may have set
    /// anywhere).
    resync: std::sync::Mutex<Option<u64>>,
    /// A drift left in place for a person to decide (policy `pause`): their next command
    /// re-applies the service's config. Holds the live config's generation.
    held_drift: std::sync::Mutex<Option<u64>>,
    /// What keeps this replica from being ready, by concern (`push`, `save`, `take-over`,
    /// `reload`); empty when ready.
    problems: RwLock<std::collections::BTreeMap<&'static str, String>>,
    options: ControllerOptions,
    /// When the last successful push happened.
    pushed_at: std::sync::Mutex<Option<std::time::Instant>>,
    last_retry: std::sync::Mutex<Option<std::time::Instant>>,
    /// The service's own Prometheus metrics.
    pub metrics: Metrics,
}

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

/// The answer of IO the engine asked for.
#[derive(Debug)]
enum Observed {
    /// An analysis check's reading (`None`: it only opened a window).
    Check {
        rollout: String,
        record: Option<CheckRecord>,
    },
    /// Gate hooks answered.
    Gate {
        rollout: String,
        kind: WebhookKind,
        /// When they were called: the answer counts only if the rollout still waits for that call.
        called_at: Timestamp,
        outcome: std::result::Result<(), String>,
    },
}

/// IO to start once the write that asked for it is saved.
type Io = Vec<(Rollout, Action)>;

/// How many times a write re-reads the saved state and re-applies itself after another writer
/// changed it, before giving up.
const STATE_CONFLICT_RETRIES: usize = 3;

/// When an analysis window opened, and every proxy's counters then.
type Window = (Timestamp, HashMap<String, Snapshot>);

/// How far the latest config has reached.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Propagation {
    /// The generation asked about.
    pub generation: u64,
    /// Proxies running it (or a later one).
    pub applied: usize,
    /// Proxies watched.
    pub total: usize,
    /// `applied on N/M proxies`.
    pub summary: String,
    /// Each proxy's answer.
    pub proxies: Vec<ProxyGeneration>,
}

impl Controller {
    /// Loads the saved state (or, without one, adopts what the router's target holds, else starts
    /// from `initial`), pushes it, and returns the controller of the only replica. Call
    /// [`Controller::run`] to start its loops.
    pub async fn start(
        store: Box<dyn StateStore>,
        router: Box<dyn TrafficRouter>,
        observer: Box<dyn MetricsObserver>,
        options: ControllerOptions,
    ) -> Result<Arc<Controller>> {
        let (_, leadership) = tokio::sync::watch::channel(LeaderState {
            is_leader: true,
            leader: None,
        });
        Controller::start_with_leadership(store, router, observer, options, leadership).await
    }

    /// Like [`Controller::start`] for one of several replicas: only while `leadership` says this
    /// replica leads does it save, push and advance rollouts; otherwise it serves reads from the
    /// state the leader saved, reloaded every few seconds, and refuses writes. A replica that
    /// does not lead yet writes nothing here: it takes over (see [`Controller::run`]) once elected.
    pub async fn start_with_leadership(
        store: Box<dyn StateStore>,
        router: Box<dyn TrafficRouter>,
        observer: Box<dyn MetricsObserver>,
        options: ControllerOptions,
        leadership: tokio::sync::watch::Receiver<LeaderState>,
    ) -> Result<Arc<Controller>> {
        if let Some(initial) = &options.initial {
            CheckedConfig::try_from(initial.clone())?;
        }
        let leads = leadership.borrow().is_leader;
        let (notify_tx, notify_rx) = tokio::sync::mpsc::unbounded_channel();
        let controller = Arc::new(Controller {
            state: Mutex::new(ServiceState::default()),
            store,
            router,
            observer,
            proxies: RwLock::new(Vec::new()),
            pushed_generation: AtomicU64::new(0),
            wake: Notify::new(),
            tick_lock: Mutex::new(()),
            observed: std::sync::Mutex::new(Vec::new()),
            checks_in_flight: std::sync::Mutex::new(std::collections::HashSet::new()),
            windows: std::sync::Mutex::new(HashMap::new()),
            http: options.webhooks.clone(),
            retention: options.retention,
            notify_tx,
            notify_rx: std::sync::Mutex::new(Some(notify_rx)),
            synced: std::sync::atomic::AtomicBool::new(false),
            leadership,
            drift: RwLock::new(None),
            resync: std::sync::Mutex::new(None),
            held_drift: std::sync::Mutex::new(None),
            problems: RwLock::new(std::collections::BTreeMap::new()),
            options,
            pushed_at: std::sync::Mutex::new(None),
            last_retry: std::sync::Mutex::new(None),
            metrics: Metrics::default(),
        });
        if leads {
            controller.take_over().await?;
        } else if let Err(error) = controller.reload().await {
            tracing::warn!(%error, "cannot read the leader's state yet");
        }
        controller.observe().await;
        Ok(controller)
    }

    /// Whether this replica may write: it holds the lease and has taken over the saved state.
    pub fn is_leader(&self) -> bool {
        self.leadership.borrow().is_leader && self.synced.load(Ordering::SeqCst)
    }

    fn not_leader(&self) -> Error {
        let state = self.leadership.borrow();
        if state.is_leader {
            // Elected, but not serving writes yet: say what it is waiting for.
            let problems = self.problems.read().unwrap_or_else(|e| e.into_inner());
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
    async fn reload(&self) -> Result<()> {
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
    async fn take_over(&self) -> Result<()> {
        let outcome = self.take_over_once().await;
        self.set_problem(TAKE_OVER, outcome.as_ref().err());
        outcome
    }

    async fn take_over_once(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        // Answers to IO started before (as leader earlier, or by nobody) are stale now; gates
        // still in flight are called again once their deadline passes.
        self.observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
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
    async fn load_checked(&self) -> Result<Option<ServiceState>> {
        let Some(state) = self.store.load().await? else {
            return Ok(None);
        };
        state.check().map_err(|error| Error::CorruptState {
            path: self.store.describe(),
            reason: format!("{error}; fix or remove it (meshcanary will not push or act on it)"),
        })?;
        Ok(Some(state))
    }

    /// Records (or clears, with `None`) what keeps this replica from being ready.
    fn set_problem(&self, concern: &'static str, problem: Option<&Error>) {
        let mut problems = self.problems.write().unwrap_or_else(|e| e.into_inner());
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
            let problems = self.problems.read().unwrap_or_else(|e| e.into_inner());
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
    fn proxies_behind(&self) -> Option<String> {
        let pushed_at = (*self.pushed_at.lock().unwrap_or_else(|e| e.into_inner()))?;
        let waited = pushed_at.elapsed();
        if waited < self.options.proxy_grace {
            return None;
        }
        let pushed = self.pushed_generation.load(Ordering::SeqCst);
        let proxies = self.proxies.read().unwrap_or_else(|e| e.into_inner());
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
            *self.drift.write().unwrap_or_else(|e| e.into_inner()) = None;
            return;
        }
        *self.drift.write().unwrap_or_else(|e| e.into_inner()) =
            drift.as_ref().map(|d| d.description.clone());
        let Some(Drifted {
            description,
            live_generation,
        }) = drift
        else {
            // In sync again (a person reverted their edit, or our push landed): nothing held.
            *self.held_drift.lock().unwrap_or_else(|e| e.into_inner()) = None;
            return;
        };
        let live_generation = live_generation.unwrap_or(0);
        tracing::warn!(%description, ?policy, "the pushed filter config was changed outside meshcanary");
        match policy {
            DriftPolicy::Reapply => {
                *self.resync.lock().unwrap_or_else(|e| e.into_inner()) = Some(live_generation)
            }
            DriftPolicy::Pause => {
                *self.held_drift.lock().unwrap_or_else(|e| e.into_inner()) = Some(live_generation)
            }
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
        self.drift.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs the engine and the observer until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let observer = {
            let this = self.clone();
            async move {
                loop {
                    tokio::time::sleep(OBSERVE_INTERVAL).await;
                    this.observe().await;
                    if this.is_leader() {
                        this.retry_push().await;
                    }
                }
            }
        };
        let notifications = {
            let this = self.clone();
            let receiver = this
                .notify_rx
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            async move {
                let Some(mut receiver) = receiver else { return };
                while let Some((rollout, kind)) = receiver.recv().await {
                    let this = this.clone();
                    // Hooks must not hold up the engine or each other.
                    tokio::spawn(async move { this.notify(rollout, kind).await });
                }
            }
        };
        let engine = async move {
            let mut leadership = self.leadership.clone();
            loop {
                if !leadership.borrow_and_update().is_leader {
                    self.synced.store(false, Ordering::SeqCst);
                    if let Err(error) = self.reload().await {
                        tracing::warn!(%error, "cannot reload the leader's state");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(FOLLOWER_RELOAD_INTERVAL) => {}
                        _ = leadership.changed() => {}
                    }
                    continue;
                }
                if !self.synced.load(Ordering::SeqCst) {
                    tracing::info!("leading now: resuming every rollout from the saved state");
                    if let Err(error) = self.take_over().await {
                        tracing::error!(%error, "cannot take over the saved state; retrying");
                        tokio::time::sleep(FOLLOWER_RELOAD_INTERVAL).await;
                        continue;
                    }
                }
                let wake_at = match self.tick().await {
                    Ok(wake_at) => wake_at,
                    Err(error) => {
                        tracing::error!(%error, "engine tick failed");
                        None
                    }
                };
                let sleep = wake_at.map_or(ENGINE_INTERVAL, |at| {
                    at.since(Timestamp::now()).min(ENGINE_INTERVAL)
                });
                tokio::select! {
                    _ = tokio::time::sleep(sleep) => {}
                    _ = self.wake.notified() => {}
                }
            }
        };
        tokio::join!(observer, engine, notifications);
    }

    /// Calls notification hooks; a failing `rollout` hook counts as a failed check.
    async fn notify(&self, rollout: Rollout, kind: WebhookKind) {
        let Err(error) = webhook::call_all(&self.http, &rollout, kind).await else {
            return;
        };
        if kind != WebhookKind::Rollout {
            return;
        }
        let name = rollout.spec.name.clone();
        let recorded = self
            .mutate(|state, now| {
                if let Some(current) = state
                    .rollouts
                    .get(&name)
                    .filter(|r| !r.status.phase.is_terminal())
                {
                    let failed = engine::record_hook_failure(current, &error, now);
                    state.rollouts.insert(name.clone(), failed);
                }
                Ok(())
            })
            .await;
        if let Err(error) = recorded {
            tracing::error!(rollout = %name, %error, "cannot record the hook failure");
        }
    }

    /// Applies `change` to a copy of the state; if it succeeds and changed anything, saves the
    /// copy, makes it current and pushes its filter config. Changes in the filter config get the
    /// next generation, and rollouts whose weight changed record that generation. A pending
    /// re-apply (drift) makes the write push the config under a new generation even if it did not
    /// change it.
    ///
    /// If another writer changed the saved state since this replica read it, the write re-reads
    /// it and applies `change` again on top (a few times), so no one's change is lost; metadata
    /// edits of the state's object do not count (the store absorbs them).
    async fn mutate<T>(
        &self,
        change: impl FnMut(&mut ServiceState, Timestamp) -> Result<T>,
    ) -> Result<T> {
        self.mutate_then(change, |_, out| out).await
    }

    /// [`Controller::mutate`], then `then` reads the state as this write left it (before any other
    /// write), with what `change` returned: an API write answers with exactly its own result.
    async fn mutate_then<T, R>(
        &self,
        mut change: impl FnMut(&mut ServiceState, Timestamp) -> Result<T>,
        then: impl FnOnce(&ServiceState, T) -> R,
    ) -> Result<R> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let mut current = self.state.lock().await;
        let mut reloaded = false;
        for attempt in 1..=STATE_CONFLICT_RETRIES {
            let mut next = current.clone();
            let now = Timestamp::now();
            let out = change(&mut next, now)?;
            // The hooks this write calls are known before retention deletes anything, so a
            // rollout that finishes in it still gets its notification.
            let notify = notifications(&current, &next);
            crate::retention::apply_logged(&self.retention, &mut next, now);
            let resync = *self.resync.lock().unwrap_or_else(|e| e.into_inner());
            if next == *current && resync.is_none() && !reloaded {
                return Ok(then(&current, out));
            }
            let push_needed = next.filter != current.filter || resync.is_some() || reloaded;
            if push_needed {
                let floor = resync
                    .unwrap_or(0)
                    .max(self.pushed_generation.load(Ordering::SeqCst))
                    .max(current.filter.generation);
                next.filter.generation = floor + 1;
                for (name, rollout) in next.rollouts.iter_mut() {
                    let before = current.rollouts.get(name).map(|r| r.status.canary_weight);
                    let carried = resync.is_some() && !rollout.status.phase.is_terminal();
                    if carried || before != Some(rollout.status.canary_weight) {
                        rollout.status.weight_generation = next.filter.generation;
                    }
                }
            }
            match self.store.save(&next).await {
                Ok(()) => self.set_problem(SAVE, None),
                Err(Error::StateConflict { reason, .. }) if attempt < STATE_CONFLICT_RETRIES => {
                    tracing::warn!(%reason, attempt, "the saved state was changed by another writer; re-reading it and applying this change on top");
                    match self.load_checked().await {
                        Ok(Some(saved)) => *current = saved,
                        Ok(None) => {}
                        Err(error) => {
                            self.set_problem(SAVE, Some(&error));
                            return Err(error);
                        }
                    }
                    reloaded = true;
                    continue;
                }
                Err(error) => {
                    self.set_problem(SAVE, Some(&error));
                    return Err(error);
                }
            }
            for notification in notify {
                let _ = self.notify_tx.send(notification);
            }
            *current = next;
            if push_needed && self.push(&current.filter).await && resync.is_some() {
                *self.resync.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            self.wake.notify_one();
            return Ok(then(&current, out));
        }
        Err(Error::Conflict(
            "the saved state kept changing under this write; retry".into(),
        ))
    }

    /// Pushes `filter`; whether it went through (a failure is recorded and retried).
    async fn push(&self, filter: &FilterConfig) -> bool {
        match self.router.apply(filter).await {
            Ok(()) => {
                self.pushed_generation
                    .store(filter.generation, Ordering::SeqCst);
                *self.pushed_at.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(std::time::Instant::now());
                self.set_problem(PUSH, None);
                self.metrics.pushed(true);
                tracing::info!(generation = filter.generation, target = %self.router.describe(), "pushed filter config");
                true
            }
            Err(error) => {
                self.set_problem(PUSH, Some(&error));
                self.metrics.pushed(false);
                tracing::error!(%error, generation = filter.generation, "push failed; retrying");
                false
            }
        }
    }

    /// Pushes again if the last push of the current config failed, at most every
    /// [`PUSH_RETRY_INTERVAL`] (the target may be missing for a while, e.g. a WasmPlugin not yet
    /// installed).
    async fn retry_push(&self) {
        let state = self.state.lock().await;
        if self.pushed_generation.load(Ordering::SeqCst) == state.filter.generation {
            return;
        }
        let due = {
            let mut last = self.last_retry.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.is_none_or(|at| at.elapsed() >= PUSH_RETRY_INTERVAL);
            if due {
                *last = Some(std::time::Instant::now());
            }
            due
        };
        if due && self.push(&state.filter).await {
            // The generation carrying a pending re-apply went through.
            *self.resync.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    async fn observe(&self) {
        let answers = self.observer.generations().await;
        let changed = {
            let mut proxies = self.proxies.write().unwrap_or_else(|e| e.into_inner());
            let changed = *proxies != answers;
            *proxies = answers;
            changed
        };
        if changed {
            self.wake.notify_one();
        }
    }

    fn observation(&self) -> Observation {
        let proxies = self.proxies.read().unwrap_or_else(|e| e.into_inner());
        Observation {
            min_proxy_generation: match proxies.is_empty() {
                true => None,
                false => Some(
                    proxies
                        .iter()
                        .map(|p| p.generation.unwrap_or(0))
                        .min()
                        .unwrap_or(0),
                ),
            },
        }
    }

    /// How far `generation` has reached.
    pub fn propagation(&self, generation: u64) -> Propagation {
        let proxies = self
            .proxies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let applied = proxies
            .iter()
            .filter(|p| p.generation.is_some_and(|g| g >= generation))
            .count();
        Propagation {
            generation,
            applied,
            total: proxies.len(),
            summary: format!("applied on {applied}/{} proxies", proxies.len()),
            proxies,
        }
    }

    /// The last push error, if the current config has not been pushed.
    pub fn push_error(&self) -> Option<String> {
        self.problems
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(PUSH)
            .cloned()
    }

    /// Runs the engine over every running rollout once: records the answers of checks and gate
    /// hooks that came in, advances each rollout as far as it can go now, and starts the IO the
    /// engine asks for next in tasks of its own. Returns when it next needs to look.
    ///
    /// A tick never waits for a hook, a metrics query or a proxy: those answer later, as
    /// observations, so a hook that hangs holds only its own rollout, and never an API call.
    pub async fn tick(self: &Arc<Self>) -> Result<Option<Timestamp>> {
        let _serial = self.tick_lock.lock().await;
        let observation = self.observation();
        let answers = std::mem::take(&mut *self.observed.lock().unwrap_or_else(|e| e.into_inner()));
        let mut io = Io::new();
        let wake_at = self
            .mutate(|state, now| {
                io.clear();
                for answer in &answers {
                    record_answer(state, answer, now);
                }
                let names: Vec<String> = state
                    .rollouts
                    .values()
                    .filter(|r| !r.status.phase.is_terminal())
                    .map(|r| r.spec.name.clone())
                    .collect();
                let mut wake_at: Option<Timestamp> = None;
                for name in names {
                    let at = self.advance(state, &name, &observation, now, &mut io);
                    wake_at = earliest(wake_at, at);
                }
                Ok(wake_at)
            })
            .await;
        if wake_at.is_err() && !answers.is_empty() {
            // Not recorded: keep the answers for the next tick.
            self.observed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(answers);
        }
        let wake_at = wake_at?;
        self.start_io(io);
        Ok(wake_at)
    }

    /// Advances rollout `name` in `state` as far as it can go at `now` without IO; the IO the
    /// engine then asks for goes into `io` (a gate is marked as called here, in the same write).
    /// Returns when the rollout next needs a look.
    fn advance(
        &self,
        state: &mut ServiceState,
        name: &str,
        observation: &Observation,
        now: Timestamp,
        io: &mut Io,
    ) -> Option<Timestamp> {
        let mut rollout = state.rollouts.get(name)?.clone();
        if rollout.status.phase.is_terminal() {
            return None;
        }
        let original = rollout.clone();
        let mut wake_at = None;
        // Bounded: each step is entered at most once per call.
        for _ in 0..=rollout.plan.len() + 3 {
            let action = engine::next(&rollout, observation, now);
            match action {
                Action::Wait { until } => {
                    wake_at = until;
                    break;
                }
                Action::RunCheck => {
                    let running = self
                        .checks_in_flight
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains(name);
                    // Its answer wakes the engine; nothing to do until then.
                    if !running {
                        io.push((rollout.clone(), action));
                    }
                    break;
                }
                Action::RunGate { kind } => {
                    rollout = engine::gate_called(&rollout, kind, now);
                    io.push((rollout.clone(), action));
                    wake_at = rollout
                        .status
                        .analysis
                        .gate_called_at
                        .map(|at| at.plus(engine::gate_deadline(&rollout, kind)));
                    break;
                }
                _ => {}
            }
            let span =
                tracing::info_span!("rollout_step", rollout = %name, step = rollout.status.step);
            let _entered = span.enter();
            let weight_before = rollout.status.canary_weight;
            rollout = engine::apply(&rollout, &action, now);
            tracing::info!(
                phase = rollout.status.phase.as_str(),
                weight = rollout.status.canary_weight,
                "{}",
                rollout.status.message
            );
            if rollout.status.canary_weight != weight_before {
                // A weight is pushed by the write that sets it, and counts as applied only once
                // it is: going on in the same write could skip it unpushed. The next tick goes on.
                wake_at = Some(now);
                break;
            }
        }
        if rollout != original {
            if let Err(error) = state.put_rollout(rollout.clone()) {
                tracing::error!(rollout = %name, %error, "cannot apply the rollout's weight; pausing it");
                let paused = engine::apply(
                    &original,
                    &Action::Pause {
                        hold: crate::rollout::Hold::Request,
                        reason: format!("cannot apply the weight: {error}"),
                    },
                    now,
                );
                state.rollouts.insert(name.to_string(), paused);
                io.retain(|(r, _)| r.spec.name != name);
            }
        }
        wake_at
    }

    /// Starts the checks and gate hooks the engine asked for, each in a task of its own; their
    /// answers come back through [`Controller::observed`] and wake the engine.
    fn start_io(self: &Arc<Self>, io: Io) {
        for (rollout, action) in io {
            let this = self.clone();
            let name = rollout.spec.name.clone();
            match action {
                Action::RunCheck => {
                    let fresh = self
                        .checks_in_flight
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(name.clone());
                    if !fresh {
                        continue;
                    }
                    let span = tracing::info_span!("analysis_check", rollout = %name);
                    tokio::spawn(
                        async move {
                            let record = this.run_check(&rollout, Timestamp::now()).await;
                            this.checks_in_flight
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .remove(&name);
                            this.observe_answer(Observed::Check {
                                rollout: name,
                                record,
                            });
                        }
                        .instrument(span),
                    );
                }
                Action::RunGate { kind } => {
                    let Some(called_at) = rollout.status.analysis.gate_called_at else {
                        continue;
                    };
                    tokio::spawn(async move {
                        let outcome = webhook::call_all(&this.http, &rollout, kind).await;
                        this.observe_answer(Observed::Gate {
                            rollout: name,
                            kind,
                            called_at,
                            outcome,
                        });
                    });
                }
                _ => {}
            }
        }
    }

    /// Queues an answer for the next tick and wakes the engine.
    fn observe_answer(&self, answer: Observed) {
        self.observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(answer);
        self.wake.notify_one();
    }

    /// Reads every proxy's counters for the rollout's route and judges the window since the last
    /// reading. The first reading after a start (or a restart of the service) only opens a window.
    async fn run_check(&self, rollout: &Rollout, now: Timestamp) -> Option<CheckRecord> {
        let analysis = rollout.spec.analysis.as_ref()?;
        let name = &rollout.spec.name;
        let current = match self.observer.snapshots(&rollout.spec.route).await {
            Ok(current) => current,
            Err(error) => {
                tracing::warn!(rollout = %name, %error, "analysis cannot read the stats");
                let since = rollout.status.analysis.last_check_at.unwrap_or(now);
                return Some(CheckRecord {
                    at: now,
                    since,
                    step: rollout.status.step,
                    canary_weight: rollout.status.canary_weight,
                    check: Check {
                        verdict: Verdict::Inconclusive,
                        reasons: vec![format!(
                            "cannot read the stats from {}: {error}",
                            self.observer.describe()
                        )],
                        canary: Measured {
                            requests: 0,
                            success_rate: None,
                            latency_ms: None,
                        },
                        baseline: Measured {
                            requests: 0,
                            success_rate: None,
                            latency_ms: None,
                        },
                        p_value: None,
                    },
                });
            }
        };
        let current: HashMap<String, Snapshot> = current.into_iter().collect();
        let previous = self
            .windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone(), (now, current.clone()));
        let (since, previous) = previous?;
        let empty = Snapshot::default();
        let deltas: Vec<Snapshot> = current
            .iter()
            .map(|(proxy, snapshot)| delta(previous.get(proxy).unwrap_or(&empty), snapshot))
            .collect();
        let window = merge(&deltas);
        let counters = |variant: &str| window.variants.get(variant).cloned().unwrap_or_default();
        let check = judge(
            &analysis.thresholds(),
            &counters(&rollout.spec.canary),
            &counters(&rollout.spec.stable),
        );
        tracing::info!(rollout = %name, verdict = ?check.verdict, canary_requests = check.canary.requests, "{}", check.reasons.join("; "));
        Some(CheckRecord {
            at: now,
            since,
            step: rollout.status.step,
            canary_weight: rollout.status.canary_weight,
            check,
        })
    }

    /// Creates a rollout; the engine starts it at once.
    pub async fn create(self: &Arc<Self>, spec: RolloutSpec) -> Result<Rollout> {
        let name = spec.name.clone();
        let observation = self.observation();
        let mut io = Io::new();
        let rollout = self
            .mutate_then(
                |state, now| {
                    io.clear();
                    state.create_rollout(spec.clone(), now)?;
                    self.advance(state, &name, &observation, now, &mut io);
                    Ok(())
                },
                |state, ()| state.rollouts.get(&name).cloned(),
            )
            .await?
            .ok_or_else(|| Error::NotFound(format!("rollout {name} not found")))?;
        tracing::info!(rollout = %name, route = %rollout.spec.route, "created rollout");
        self.start_io(io);
        Ok(rollout)
    }

    /// One rollout.
    pub async fn get(&self, name: &str) -> Result<Rollout> {
        self.state
            .lock()
            .await
            .rollouts
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("rollout {name} not found")))
    }

    /// Every rollout.
    pub async fn list(&self) -> Vec<Rollout> {
        self.state.lock().await.rollouts.values().cloned().collect()
    }

    /// The filter config as last saved (and pushed).
    pub async fn filter(&self) -> FilterConfig {
        self.state.lock().await.filter.clone()
    }

    /// Carries out a person's command; `expected_version` is the client's `If-Match`, if any.
    pub async fn command(
        self: &Arc<Self>,
        name: &str,
        command: Command,
        expected_version: Option<String>,
    ) -> Result<Rollout> {
        let span =
            tracing::info_span!("rollout_command", rollout = %name, command = command.as_str());
        // A person acting on a rollout after a drift was left in place (policy `pause`) has
        // looked at it: this write re-applies the service's config.
        let held = self
            .held_drift
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(live_generation) = held {
            let mut resync = self.resync.lock().unwrap_or_else(|e| e.into_inner());
            *resync = Some(resync.unwrap_or(0).max(live_generation));
        }
        let observation = self.observation();
        let mut io = Io::new();
        let rollout = self
            .mutate_then(
                |state, now| {
                    io.clear();
                    let current = state
                        .rollouts
                        .get(name)
                        .ok_or_else(|| Error::NotFound(format!("rollout {name} not found")))?;
                    check_version(name, current.version, expected_version.as_deref())?;
                    let weight_before = current.status.canary_weight;
                    let changed = engine::command(current, command, now)?;
                    let weight_changed = changed.status.canary_weight != weight_before;
                    state.put_rollout(changed)?;
                    // A weight the command set is pushed by this write; the engine goes on from
                    // it in the next tick (see `advance`).
                    if !weight_changed {
                        self.advance(state, name, &observation, now, &mut io);
                    }
                    Ok(())
                },
                |state, ()| state.rollouts.get(name).cloned(),
            )
            .instrument(span)
            .await?
            .ok_or_else(|| Error::NotFound(format!("rollout {name} not found")))?;
        tracing::info!(rollout = %name, command = command.as_str(), phase = rollout.status.phase.as_str(), "{}", rollout.status.message);
        self.start_io(io);
        Ok(rollout)
    }

    /// Deletes a finished rollout.
    pub async fn delete(&self, name: &str, expected_version: Option<String>) -> Result<Rollout> {
        self.mutate(|state, _| {
            let current = state
                .rollouts
                .get(name)
                .ok_or_else(|| Error::NotFound(format!("rollout {name} not found")))?;
            check_version(name, current.version, expected_version.as_deref())?;
            state.delete_rollout(name)
        })
        .await
    }

    /// Adds a QA rule to a live route; returns its index.
    pub async fn add_rule(&self, route: &str, rule: RuleConfig) -> Result<usize> {
        self.mutate(|state, _| state.add_rule(route, rule.clone()))
            .await
    }

    /// Removes QA rule `index` of a live route.
    pub async fn remove_rule(&self, route: &str, index: usize) -> Result<RuleConfig> {
        self.mutate(|state, _| state.remove_rule(route, index))
            .await
    }
}

/// The earlier of two optional times.
fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Records an answer of IO the engine asked for, if it still applies: a check while the rollout
/// still progresses, a gate's answer while the rollout still waits for that call.
fn record_answer(state: &mut ServiceState, answer: &Observed, now: Timestamp) {
    match answer {
        Observed::Check { rollout, record } => {
            let Some(current) = state.rollouts.get(rollout) else {
                return;
            };
            // A check still counts if the rollout kept progressing meanwhile.
            if current.status.phase == Phase::Progressing {
                let next = engine::record_check(current, record.clone(), now);
                state.rollouts.insert(rollout.clone(), next);
            }
        }
        Observed::Gate {
            rollout,
            kind,
            called_at,
            outcome,
        } => {
            let Some(current) = state.rollouts.get(rollout) else {
                return;
            };
            if current.status.analysis.gate_called_at == Some(*called_at) {
                let next = engine::record_gate(current, *kind, outcome.clone(), now);
                state.rollouts.insert(rollout.clone(), next);
            }
        }
    }
}

/// The notification hooks a change calls: `rollout` hooks when a step starts, `postRollout` when
/// a rollout succeeds, `rollback` when it is rolled back or aborted.
fn notifications(before: &ServiceState, after: &ServiceState) -> Vec<(Rollout, WebhookKind)> {
    let mut out = Vec::new();
    for (name, rollout) in &after.rollouts {
        if rollout.spec.webhooks.is_empty() {
            continue;
        }
        let old = before.rollouts.get(name);
        let old_phase = old.map(|r| r.status.phase);
        let phase = rollout.status.phase;
        let kind = match phase {
            Phase::Succeeded if old_phase != Some(phase) => Some(WebhookKind::PostRollout),
            Phase::RolledBack | Phase::Aborted if old_phase != Some(phase) => {
                Some(WebhookKind::Rollback)
            }
            Phase::Progressing | Phase::Paused
                if old.is_none_or(|o| {
                    o.status.step != rollout.status.step || o.status.phase == Phase::Initialized
                }) =>
            {
                Some(WebhookKind::Rollout)
            }
            _ => None,
        };
        if let Some(kind) = kind {
            out.push((rollout.clone(), kind));
        }
    }
    out
}

/// `If-Match` carries the version as `"<n>"` (a strong ETag) or bare; `*` matches anything.
fn check_version(name: &str, current: u64, expected: Option<&str>) -> Result<()> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let wanted = expected.trim().trim_start_matches("W/").trim_matches('"');
    if wanted == "*" || wanted == current.to_string() {
        return Ok(());
    }
    Err(Error::VersionMismatch {
        what: format!("rollout {name}"),
        expected: expected.to_string(),
        current,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_forms() {
        for (expected, ok) in [
            (None, true),
            (Some("\"3\""), true),
            (Some("3"), true),
            (Some("W/\"3\""), true),
            (Some("*"), true),
            (Some("\"2\""), false),
        ] {
            assert_eq!(check_version("r", 3, expected).is_ok(), ok, "{expected:?}");
        }
    }
}
