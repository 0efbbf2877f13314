//! Background traffic for tests that need the filter's stats to move while something else
//! happens: requests at a steady rate from many sticky users, each carrying a random
//! `x-user-id` out of a fixed pool, until stopped. The rate is kept open-loop (requests are sent
//! on a clock, not when the previous one returns), so a slow or failing variant does not slow
//! the traffic down and change what the test measures.

use crate::load::Client;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::{JoinHandle, JoinSet};

/// At most this many requests in flight; beyond it the clock skips requests rather than pile
/// them up (a stopped Envoy or a hung upstream must not grow the test's memory without bound).
const MAX_IN_FLIGHT: usize = 512;
/// How often the clock sends what is due.
const TICK: Duration = Duration::from_millis(10);

/// What the traffic got back so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadCounts {
    /// Requests finished: answered, or failed without an answer.
    pub finished: u64,
    /// Replies by the upstream that answered (`"none"` when no upstream header came back, e.g.
    /// Envoy's own 503).
    pub by_upstream: BTreeMap<String, u64>,
    /// Replies by HTTP status.
    pub by_status: BTreeMap<u16, u64>,
    /// Requests that got no HTTP answer (connection refused, timeout).
    pub errors: u64,
}

/// Steady traffic through one Envoy listener; stops when dropped.
pub struct SteadyLoad {
    counts: Arc<Mutex<LoadCounts>>,
    stop: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl SteadyLoad {
    /// Sends `per_second` requests a second through `client`, each from one of `users` users
    /// picked at random (a user keeps its variant while the weights stay put).
    pub fn start(client: Client, per_second: u32, users: u64) -> SteadyLoad {
        let counts = Arc::new(Mutex::new(LoadCounts::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run(
            client,
            f64::from(per_second),
            users.max(1),
            counts.clone(),
            stop.clone(),
        ));
        SteadyLoad {
            counts,
            stop,
            task: Some(task),
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> LoadCounts {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops sending, waits (up to 10 s) for the requests in flight and returns the final counts.
    pub async fn stop(mut self) -> LoadCounts {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        self.counts()
    }
}

impl Drop for SteadyLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(task) = self.task.take() {
            // Aborting the clock drops its JoinSet, which aborts the requests in flight.
            task.abort();
        }
    }
}

async fn run(
    client: Client,
    per_second: f64,
    users: u64,
    counts: Arc<Mutex<LoadCounts>>,
    stop: Arc<AtomicBool>,
) {
    let seed = splitmix(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()),
    );
    let started = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight = JoinSet::new();
    let mut sent: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        ticker.tick().await;
        while in_flight.try_join_next().is_some() {}
        let due = (started.elapsed().as_secs_f64() * per_second) as u64;
        // After a stall (a busy machine), send at most one second's worth at once.
        let backlog_limit = per_second.max(1.0) as u64;
        if due > sent + backlog_limit {
            sent = due - backlog_limit;
        }
        while sent < due && in_flight.len() < MAX_IN_FLIGHT {
            sent += 1;
            let user = splitmix(seed.wrapping_add(sent)) % users;
            let (client, counts) = (client.clone(), counts.clone());
            in_flight.spawn(async move {
                let user = format!("user-{user}");
                let reply = client.get("/", &[("x-user-id", user.as_str())]).await;
                let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
                counts.finished += 1;
                match reply {
                    Ok(reply) => {
                        let upstream = reply.upstream.unwrap_or_else(|| "none".into());
                        *counts.by_upstream.entry(upstream).or_default() += 1;
                        *counts.by_status.entry(reply.status).or_default() += 1;
                    }
                    Err(_) => counts.errors += 1,
                }
            });
        }
        // Requests skipped because too many are in flight are not owed later.
        sent = sent.max(due);
    }
    while in_flight.join_next().await.is_some() {}
}

/// SplitMix64's finaliser: turns consecutive numbers into unrelated ones.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}
