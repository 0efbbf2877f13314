//! The running service: owns the state, runs the rollout engine on a timer, pushes configs and
//! watches the proxies. Every change goes through `Controller::mutate` ([`facade`]): under one lock
//! it computes the new state, saves it, then pushes it — so concurrent API calls cannot lose each
//! other's changes, a crash leaves either the old or the new state on disk, and a config is never
//! pushed before it is saved (after a restart the saved config is simply pushed again).
//!
//! One concern a module: [`facade`] (reads and writes, `mutate`), [`tick`] (the engine's pass and
//! the IO it starts), [`loops`] (the background loops and pushes), [`leadership`] (taking over and
//! following), [`drift`] (edits made behind the service's back), [`health`] (readiness) and
//! [`adopt`] (the config a service without state starts from).

pub mod adopt;
pub mod drift;
pub mod facade;
pub mod health;
pub mod leadership;
pub mod locks;
pub mod loops;
pub mod scaling;
pub mod tick;

pub use drift::{DriftPolicy, Drifted};

// What the concerns share with each other (each submodule sees these through `super::*`).
use health::{PUSH, RELOAD, SAVE, TAKE_OVER};
use locks::{Locked, ReadWritten};
use loops::notifications;
use tick::{Io, Observed};

use crate::analysis::{delta, judge, judge_mirror, merge, Check, Measured, Snapshot, Verdict};
use crate::error::{Error, Result};
use crate::leader::LeaderState;
use crate::metrics::Metrics;
use crate::observer::{MetricsObserver, ProxyGeneration};
use crate::options::ControllerOptions;
use crate::retention::Retention;
use crate::rollout::engine::{self, Action, Command, Observation};
use crate::rollout::{CheckRecord, Phase, Replicas, Rollout, RolloutSpec, WebhookKind};
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
/// How often the Deployments of rollouts with `workloads` are read.
const WORKLOADS_INTERVAL: Duration = Duration::from_secs(1);
/// How often the copies mirrored to canaries in a mirror step are counted.
const MIRRORS_INTERVAL: Duration = Duration::from_secs(1);
/// How often a failed push is retried.
pub const PUSH_RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// The control service's core: state, engine, pushes and observations.
pub struct Controller {
    state: Mutex<ServiceState>,
    store: Box<dyn StateStore>,
    router: Box<dyn TrafficRouter>,
    observer: Box<dyn MetricsObserver>,
    proxies: RwLock<Vec<ProxyGeneration>>,
    /// The replicas of the Deployments running rollouts name in `workloads`, as last read.
    workloads: RwLock<std::collections::BTreeMap<String, Replicas>>,
    workloads_read_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// What the proxies counted of the copies mirrored to rollouts' canaries.
    mirrors: std::sync::Mutex<loops::MirrorReads>,
    /// Scales Deployments (Kubernetes mode, with a scaler in the options).
    scaling: Option<scaling::Scaling>,
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

/// When an analysis window opened, and every proxy's counters then.
type Window = (Timestamp, HashMap<String, Snapshot>);

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
            workloads: RwLock::new(std::collections::BTreeMap::new()),
            workloads_read_at: std::sync::Mutex::new(None),
            mirrors: std::sync::Mutex::new(loops::MirrorReads::default()),
            scaling: options.scaler.clone().map(scaling::Scaling::new),
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
}
