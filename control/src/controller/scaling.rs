//! Scaling (or deleting) the Deployments the engine (or the end of a run) asks for, in tasks of
//! their own: a failed scale (an API error, a Deployment or permission that is not there yet) is retried with
//! backoff until it goes through, a later scale of the same Deployment takes its place, or
//! [`RETRY_FOR`] runs out. The engine waits for the replicas it asked for; a scale that never
//! goes through shows as replicas that never become ready, and the rollout pauses saying so.

use crate::rollout::DeploymentChange;
use crate::workloads::WorkloadScaler;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The first retry of a failed scale comes after this; each next one after twice as long.
pub const FIRST_RETRY: Duration = Duration::from_millis(250);
/// The longest wait between two attempts.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// A scale that has not gone through for this long is given up (and logged as an error).
pub const RETRY_FOR: Duration = Duration::from_secs(600);

/// Scales Deployments through a [`WorkloadScaler`], retrying failures.
#[derive(Debug, Clone)]
pub struct Scaling {
    scaler: Arc<dyn WorkloadScaler>,
    /// Per Deployment, the number of the latest scale asked for: an older attempt still retrying
    /// stops once a newer one exists.
    latest: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Per Deployment, why its latest change has not gone through (yet), for the rollout's view:
    /// an old stable that cannot be scaled down after a success shows there, not only in the log.
    failing: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Scaling {
    /// Scaling through `scaler`.
    pub fn new(scaler: Arc<dyn WorkloadScaler>) -> Scaling {
        Scaling {
            scaler,
            latest: Arc::default(),
            failing: Arc::default(),
        }
    }

    /// The scaler it goes through (the controller reads the Deployments with it too).
    pub fn scaler(&self) -> &Arc<dyn WorkloadScaler> {
        &self.scaler
    }

    /// Why the latest change of each Deployment that has not gone through failed, by name.
    pub fn failing(&self) -> BTreeMap<String, String> {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_failing(&self, name: &str, why: Option<String>) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        match why {
            Some(why) => failing.insert(name.to_string(), why),
            None => failing.remove(name),
        };
    }

    /// Makes `change` to Deployment `name` in a task of its own, retrying until it goes through
    /// or a later change of `name` replaces it.
    pub fn change(&self, name: String, change: DeploymentChange) {
        let ticket = {
            let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
            let ticket = latest.entry(name.clone()).or_default();
            *ticket += 1;
            *ticket
        };
        let this = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut delay = FIRST_RETRY;
            for attempt in 1u32.. {
                let current = this
                    .latest
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&name)
                    .copied();
                if current != Some(ticket) {
                    tracing::info!(deployment = %name, ?change, "a later change replaces this one");
                    return;
                }
                let done = match change {
                    DeploymentChange::Scale(replicas) => this.scaler.scale(&name, replicas).await,
                    DeploymentChange::Delete => this.scaler.delete(&name).await,
                };
                match done {
                    Ok(()) => {
                        tracing::info!(deployment = %name, ?change, attempt, "changed Deployment");
                        this.set_failing(&name, None);
                        return;
                    }
                    Err(error) if started.elapsed() < RETRY_FOR => {
                        this.set_failing(
                            &name,
                            Some(format!(
                                "{}: {error} (attempt {attempt}, retrying)",
                                describe(change)
                            )),
                        );
                        tracing::warn!(deployment = %name, ?change, attempt, %error, "cannot change the Deployment; retrying in {}", humantime::format_duration(delay));
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(MAX_RETRY);
                    }
                    Err(error) => {
                        this.set_failing(
                            &name,
                            Some(format!(
                                "{}: {error} (gave up after {attempt} attempts in {})",
                                describe(change),
                                humantime::format_duration(RETRY_FOR)
                            )),
                        );
                        tracing::error!(deployment = %name, ?change, attempt, %error, "cannot change the Deployment; giving up after {}", humantime::format_duration(RETRY_FOR));
                        return;
                    }
                }
            }
        });
    }
}

/// A change for people: "scale to 0", "delete".
fn describe(change: DeploymentChange) -> String {
    match change {
        DeploymentChange::Scale(replicas) => format!("scale to {replicas}"),
        DeploymentChange::Delete => "delete".to_string(),
    }
}
