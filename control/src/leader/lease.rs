//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several replicas exactly one
//! runs rollouts and writes; the others wait and take over when it goes away.
//!
//! The protocol is client-go's: the leader writes its identity and `renewTime` into the Lease
//! every `renew_interval`; anyone may take the Lease once it is free (no holder, after a graceful
//! [`LeaderElector::release`]) or expired (`renewTime + leaseDurationSeconds < now`). Every write
//! is a PUT carrying the `resourceVersion` just read, so of two replicas racing for a free Lease
//! the API server lets exactly one through and answers the other 409 Conflict.
//!
//! A leader steps down the moment a renewal fails — an error, a timeout or a 409 — rather than
//! retrying until the Lease runs out as client-go does: a leader that may have lost the Lease
//! must stop writing before a successor can start. Since a round of requests times out after
//! `renew_interval`, a leader cut off from the API server stops believing it leads at most
//! `2 × renew_interval` after its last successful renewal, well before the Lease expires for
//! the others (`renew_interval` should be at most a third of `lease_duration`).
//!
//! Expiry compares the leader's `renewTime` with the follower's clock, so clocks must agree to
//! well within `lease_duration` (NTP on cluster nodes does that). The clock is injectable and
//! the decision is the pure [`decide`].

use crate::error::{Error, Result};
use crate::kube::{describe_error, is_conflict, FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

/// Why a round of the election or the release of the Lease failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// A call to the API server failed: shown by the API server's message, or the transport
    /// error.
    #[error("{}", describe_error(.0))]
    Api(#[source] kube::Error),
    /// The round's calls did not finish within `renew_interval`.
    #[error("the API server did not answer in time")]
    Timeout,
    /// Someone else wrote the Lease during every attempt to release it.
    #[error("the lease kept changing while releasing it")]
    Contended,
}

/// Timing of the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long a Lease stays valid after its last renewal (`leaseDurationSeconds`, rounded up
    /// to whole seconds). A successor takes over at most this long after the leader died.
    pub lease_duration: Duration,
    /// How often the leader renews; also the timeout of each round of API calls. At most a
    /// third of `lease_duration`, so that a leader survives one slow round.
    pub renew_interval: Duration,
    /// How often a follower looks whether the Lease is free.
    pub retry_interval: Duration,
}

impl Default for LeaseConfig {
    /// client-go's defaults: 15 s lease, renewal every 5 s, followers look every 2 s.
    fn default() -> LeaseConfig {
        LeaseConfig {
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
            retry_interval: Duration::from_secs(2),
        }
    }
}

/// Who leads, as this replica knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaderState {
    /// This replica holds the Lease: it may write.
    pub is_leader: bool,
    /// The holder's identity, when known.
    pub leader: Option<String>,
}

/// Where the election reads the time.
pub trait Clock: Send + Sync + 'static {
    /// The current time (a test's clock can stand still or jump).
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// What to do with a Lease as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: renew it.
    Renew,
    /// It is free or expired: take it.
    Acquire,
    /// Someone else holds it and it has not expired.
    Follow {
        /// Their identity.
        holder: String,
    },
}

/// Whether the Lease has run out: `renewTime + leaseDurationSeconds < now`. A Lease without a
/// renewal time or duration never was valid.
pub fn is_expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let (Some(renewed), Some(seconds)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return true;
    };
    match renewed
        .0
        .checked_add(SignedDuration::from_secs(i64::from(seconds)))
    {
        Ok(until) => until < now,
        Err(_) => false,
    }
}

/// What `identity` should do with the Lease `spec` at `now`.
pub fn decide(spec: &LeaseSpec, identity: &str, now: Timestamp) -> Decision {
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == identity => Decision::Renew,
        None | Some("") => Decision::Acquire,
        Some(_) if is_expired(spec, now) => Decision::Acquire,
        Some(holder) => Decision::Follow {
            holder: holder.to_string(),
        },
    }
}

/// The Lease spec after `identity` renews or takes `previous` (`None`: creates it) at `now`.
/// A change of holder is a transition; fields this election does not use are kept.
pub fn claim(
    previous: Option<&LeaseSpec>,
    identity: &str,
    now: Timestamp,
    lease_duration: Duration,
) -> LeaseSpec {
    let renewing = previous.and_then(|p| p.holder_identity.as_deref()) == Some(identity);
    let previous = previous.cloned().unwrap_or_default();
    let transitions = previous.lease_transitions.unwrap_or(0);
    let created = previous.holder_identity.is_none() && previous.renew_time.is_none();
    LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(whole_seconds(lease_duration)),
        acquire_time: if renewing {
            previous.acquire_time.clone().or(Some(MicroTime(now)))
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if renewing || created {
            transitions
        } else {
            transitions.saturating_add(1)
        }),
        ..previous
    }
}

/// The Lease spec after its holder lets go at `now`: no holder, so the next replica to look
/// takes it without waiting for it to expire.
pub fn released(previous: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        acquire_time: None,
        renew_time: Some(MicroTime(now)),
        ..previous.clone()
    }
}

/// `leaseDurationSeconds`: whole seconds, rounded up, at least 1 (the API server rejects 0).
fn whole_seconds(duration: Duration) -> i32 {
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    i32::try_from(seconds.max(1)).unwrap_or(i32::MAX)
}

/// Takes part in the election for one Lease. Cheap to clone; clones share the election.
#[derive(Clone)]
pub struct LeaderElector {
    inner: Arc<Inner>,
}

struct Inner {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    config: LeaseConfig,
    clock: Arc<dyn Clock>,
    state: watch::Sender<LeaderState>,
    stop: watch::Sender<bool>,
    /// Held for each round of API calls, so that `release` waits for one in flight.
    round: Mutex<()>,
    spawned: AtomicBool,
}

impl LeaderElector {
    /// An elector for the Lease `namespace/name` (created if absent), as `identity` — the pod
    /// name (from the downward API), which `kubectl get lease` then shows as the holder.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        config: LeaseConfig,
    ) -> Result<LeaderElector> {
        LeaderElector::with_clock(
            client,
            namespace,
            name,
            identity,
            config,
            Arc::new(SystemClock),
        )
    }

    /// [`LeaderElector::new`] reading the time from `clock`.
    pub fn with_clock(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        config: LeaseConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<LeaderElector> {
        if identity.is_empty() {
            return Err(Error::invalid("identity", "must not be empty"));
        }
        if config.renew_interval.is_zero()
            || config.retry_interval.is_zero()
            || config.renew_interval >= config.lease_duration
        {
            return Err(Error::invalid(
                "lease",
                format!(
                    "renew and retry intervals must be non-zero and the renew interval shorter than the lease duration ({config:?})"
                ),
            ));
        }
        Ok(LeaderElector {
            inner: Arc::new(Inner {
                api: Api::namespaced(client, namespace),
                namespace: namespace.to_string(),
                name: name.to_string(),
                identity: identity.to_string(),
                config,
                clock,
                state: watch::Sender::new(LeaderState::default()),
                stop: watch::Sender::new(false),
                round: Mutex::new(()),
                spawned: AtomicBool::new(false),
            }),
        })
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.inner.identity
    }

    /// The election state, updated as it changes.
    pub fn subscribe(&self) -> watch::Receiver<LeaderState> {
        self.inner.state.subscribe()
    }

    /// Starts taking part: acquires the Lease when it can and renews it while leading. Call
    /// once; a second call returns a task that does nothing. Aborting the task stops renewing
    /// without releasing (the Lease then expires); [`LeaderElector::release`] hands it over.
    pub fn spawn(&self) -> (watch::Receiver<LeaderState>, JoinHandle<()>) {
        let receiver = self.subscribe();
        if self.inner.spawned.swap(true, Ordering::SeqCst) {
            tracing::warn!(lease = %self.inner.describe(), "leader election already running");
            return (receiver, tokio::spawn(async {}));
        }
        let inner = self.inner.clone();
        (receiver, tokio::spawn(inner.run()))
    }

    /// Stops taking part and, if this replica holds the Lease, clears its holder so a follower
    /// takes over at its next look instead of waiting for the Lease to expire. The state says
    /// "not leading" before the Lease is let go, so this replica has stopped acting as leader
    /// by the time anyone else can start.
    pub async fn release(&self) -> Result<()> {
        let inner = &self.inner;
        inner.stop.send_replace(true);
        let _round = inner.round.lock().await;
        inner.publish(LeaderState::default());
        let result = inner.release_lease().await;
        result.map_err(|source| Error::remote(inner.describe(), source))
    }
}

impl Inner {
    fn describe(&self) -> String {
        format!("Lease {}/{}", self.namespace, self.name)
    }

    fn publish(&self, next: LeaderState) {
        self.state.send_if_modified(|state| {
            if *state == next {
                return false;
            }
            if next.is_leader != state.is_leader {
                if next.is_leader {
                        tracing::info!(lease = %self.describe(), identity = %self.identity, "became leader")
                    } else {
                        tracing::warn!(lease = %self.describe(), identity = %self.identity, leader = ?next.leader, "not leader")
                    }
            }
            *state = next;
            true
        });
    }

    async fn run(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        loop {
            let leading = {
                let _round = self.round.lock().await;
                if *stop.borrow_and_update() {
                    return;
                }
                let was_leading = self.state.borrow().is_leader;
                let outcome =
                    tokio::time::timeout(self.config.renew_interval, self.try_acquire_or_renew())
                        .await
                        .unwrap_or(Err(LeaseError::Timeout));
                let next = match outcome {
                    Ok(next) => next,
                    Err(error) => {
                        if was_leading {
                            tracing::warn!(lease = %self.describe(), reason = %error, "renewal failed; stepping down");
                        } else {
                            tracing::debug!(lease = %self.describe(), reason = %error, "cannot read the lease");
                        }
                        LeaderState::default()
                    }
                };
                let leading = next.is_leader;
                self.publish(next);
                leading
            };
            let pause = if leading {
                self.config.renew_interval
            } else {
                self.config.retry_interval
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// One round: read the Lease, then renew, take or leave it.
    async fn try_acquire_or_renew(&self) -> Result<LeaderState, LeaseError> {
        let leader = |is_leader: bool, holder: Option<&str>| LeaderState {
            is_leader,
            leader: holder.map(str::to_string),
        };
        let now = self.clock.now();
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PostParams::default()
        };
        let Some(lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(LeaseError::Api)?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    labels: Some(BTreeMap::from([(
                        MANAGED_BY_LABEL.to_string(),
                        MANAGED_BY.to_string(),
                    )])),
                    ..ObjectMeta::default()
                },
                spec: Some(claim(None, &self.identity, now, self.config.lease_duration)),
            };
            return match self.api.create(&params, &lease).await {
                Ok(_) => Ok(leader(true, Some(&self.identity))),
                // Another replica created it first: it leads.
                Err(e) if is_conflict(&e) => Ok(leader(false, self.winner().await.as_deref())),
                Err(e) => Err(LeaseError::Api(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        match decide(&spec, &self.identity, now) {
            Decision::Follow { holder } => Ok(leader(false, Some(&holder))),
            decision @ (Decision::Renew | Decision::Acquire) => {
                let mut next = lease;
                next.metadata.managed_fields = None;
                next.spec = Some(claim(
                    Some(&spec),
                    &self.identity,
                    now,
                    self.config.lease_duration,
                ));
                match self.api.replace(&self.name, &params, &next).await {
                    Ok(_) => {
                        if decision == Decision::Acquire {
                            tracing::info!(lease = %self.describe(), previous = ?spec.holder_identity, "acquired the lease");
                        }
                        Ok(leader(true, Some(&self.identity)))
                    }
                    // Someone wrote the Lease since we read it: whoever it is, we do not hold it.
                    Err(e) if is_conflict(&e) => Ok(leader(false, self.winner().await.as_deref())),
                    Err(e) => Err(LeaseError::Api(e)),
                }
            }
        }
    }

    /// Who holds the Lease after we lost a race for it, read back at once so that this replica
    /// names its leader (in `not_leader` answers) now rather than a round later. `None` when the
    /// read fails or shows no other holder; the next round looks again.
    async fn winner(&self) -> Option<String> {
        let lease = self.api.get_opt(&self.name).await.ok()??;
        lease
            .spec?
            .holder_identity
            .filter(|holder| *holder != self.identity)
    }

    /// Clears the holder if it is us; a few tries, since a 409 here may be a follower's read
    /// racing with ours.
    async fn release_lease(&self) -> Result<(), LeaseError> {
        for _ in 0..3 {
            let Some(lease) = self
                .api
                .get_opt(&self.name)
                .await
                .map_err(LeaseError::Api)?
            else {
                return Ok(());
            };
            let spec = lease.spec.clone().unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            let mut next = lease;
            next.metadata.managed_fields = None;
            next.spec = Some(released(&spec, self.clock.now()));
            match self
                .api
                .replace(&self.name, &PostParams::default(), &next)
                .await
            {
                Ok(_) => {
                    tracing::info!(lease = %self.describe(), identity = %self.identity, "released the lease");
                    return Ok(());
                }
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(LeaseError::Api(e)),
            }
        }
        Err(LeaseError::Contended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    fn spec(holder: Option<&str>, renewed: Option<i64>, duration: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            renew_time: renewed.map(|s| MicroTime(at(s))),
            lease_duration_seconds: duration,
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn expiry_and_decisions() {
        let follow = |holder: &str| Decision::Follow {
            holder: holder.into(),
        };
        let cases = [
            // (lease, now, expired, decision for "me")
            (
                spec(Some("other"), Some(0), Some(10)),
                5,
                false,
                follow("other"),
            ),
            (
                spec(Some("other"), Some(0), Some(10)),
                10,
                false,
                follow("other"),
            ),
            (
                spec(Some("other"), Some(0), Some(10)),
                11,
                true,
                Decision::Acquire,
            ),
            (
                spec(Some("me"), Some(0), Some(10)),
                5,
                false,
                Decision::Renew,
            ),
            (
                spec(Some("me"), Some(0), Some(10)),
                60,
                true,
                Decision::Renew,
            ),
            (spec(None, Some(0), Some(10)), 5, false, Decision::Acquire),
            (
                spec(Some(""), Some(0), Some(10)),
                5,
                false,
                Decision::Acquire,
            ),
            (
                spec(Some("other"), None, Some(10)),
                5,
                true,
                Decision::Acquire,
            ),
            (
                spec(Some("other"), Some(0), None),
                5,
                true,
                Decision::Acquire,
            ),
            // A renewal from a clock ahead of ours is not expired.
            (
                spec(Some("other"), Some(30), Some(10)),
                5,
                false,
                follow("other"),
            ),
        ];
        for (lease, now, expired, decision) in cases {
            assert_eq!(is_expired(&lease, at(now)), expired, "{lease:?} at {now}");
            assert_eq!(
                decide(&lease, "me", at(now)),
                decision,
                "{lease:?} at {now}"
            );
        }
    }

    #[test]
    fn claims_count_transitions_and_keep_acquire_time() {
        let fifteen = Duration::from_secs(15);
        let created = claim(None, "me", at(0), fifteen);
        assert_eq!(created.holder_identity.as_deref(), Some("me"));
        assert_eq!(created.lease_transitions, Some(0));
        assert_eq!(created.lease_duration_seconds, Some(15));
        assert_eq!(created.acquire_time, Some(MicroTime(at(0))));

        let mut mine = spec(Some("me"), Some(0), Some(15));
        mine.acquire_time = Some(MicroTime(at(-100)));
        let renewed = claim(Some(&mine), "me", at(5), fifteen);
        assert_eq!(
            renewed.lease_transitions,
            Some(3),
            "renewal is no transition"
        );
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(-100))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(5))));

        let mut theirs = spec(Some("other"), Some(0), Some(15));
        theirs.preferred_holder = Some("other".into());
        let taken = claim(Some(&theirs), "me", at(20), fifteen);
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(20))));
        assert_eq!(taken.preferred_holder.as_deref(), Some("other"), "kept");

        let free = released(&renewed, at(6));
        assert_eq!(free.holder_identity, None);
        assert_eq!(free.lease_transitions, Some(3));
        assert_eq!(decide(&free, "other", at(6)), Decision::Acquire);
        assert_eq!(
            claim(Some(&free), "other", at(7), fifteen).lease_transitions,
            Some(4)
        );
    }

    #[test]
    fn durations_become_whole_seconds() {
        for (duration, seconds) in [
            (Duration::from_millis(1), 1),
            (Duration::ZERO, 1),
            (Duration::from_secs(2), 2),
            (Duration::from_millis(2500), 3),
        ] {
            assert_eq!(whole_seconds(duration), seconds, "{duration:?}");
        }
    }
}
