//! Propagation latency: from a `PUT /v1/rollouts/{name}/weight` being sent until (1) Envoy's filter
//! reports the new generation in force and (2) the service itself reports it applied on every
//! proxy it watches.
//!
//! Envoy's `meshcanary_config_generation` gauge is polled over one keep-alive admin connection,
//! starting when the request is sent (a fast Envoy can apply the config before the API has
//! answered), every [`ENVOY_POLL`]. The service learns what Envoy runs only by scraping its admin
//! endpoint every [`OBSERVE_INTERVAL`], so (2) trails (1) by up to one interval; the pause between
//! updates ([`spacing`]) spreads the updates evenly over that interval's phase, so (2) is not
//! locked to the same point of the service's tick every time.

use crate::client::Connection;
use crate::control::{self, Api, Rig};
use crate::summary::LatencySummary;
use anyhow::{bail, Context};
use std::time::{Duration, Instant};

/// How often Envoy's gauge is read while waiting.
pub const ENVOY_POLL: Duration = Duration::from_millis(1);
/// How often the service's `GET /v1/rollouts/{name}` is read while waiting; its answer changes only
/// once per [`OBSERVE_INTERVAL`], so finer would only load it.
pub const SERVICE_POLL: Duration = Duration::from_millis(5);
/// The control service's observer interval (`meshcanary_control::controller::OBSERVE_INTERVAL`): how
/// often it asks each proxy which generation it runs.
pub const OBSERVE_INTERVAL: Duration = Duration::from_millis(200);
/// An update that has not reached Envoy and the service by then fails the run.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(10);

/// One timed update.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Update {
    /// The canary weight set, basis points.
    pub basis_points: u32,
    /// The generation that carries it (`status.weightGeneration` in the API's answer).
    pub generation: u64,
    /// Until the API answered (state saved, ECDS file written), ms.
    pub api_ms: f64,
    /// Until Envoy's gauge showed the generation, ms.
    pub envoy_ms: f64,
    /// Until the service reported it applied on every proxy, ms.
    pub service_ms: f64,
}

/// Every update and their percentiles.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Propagation {
    /// The rollout whose weight was set.
    pub rollout: String,
    /// Request sent → API answered.
    pub api: LatencySummary,
    /// Request sent → Envoy's `meshcanary_config_generation` shows the new generation.
    pub to_envoy: LatencySummary,
    /// Request sent → `GET /v1/rollouts/{name}` reports it applied on every proxy.
    pub to_service: LatencySummary,
    /// Envoy's gauge poll period, ms.
    pub envoy_poll_ms: f64,
    /// The service's poll period, ms.
    pub service_poll_ms: f64,
    /// The service's observer interval, ms.
    pub observe_interval_ms: f64,
    /// Every update, in order.
    pub updates: Vec<Update>,
}

impl Propagation {
    /// The summary of `updates` of `rollout`; `None` if there are none.
    pub fn from_updates(rollout: &str, updates: Vec<Update>) -> Option<Propagation> {
        let column = |field: fn(&Update) -> f64| updates.iter().map(field).collect::<Vec<_>>();
        Some(Propagation {
            rollout: rollout.to_string(),
            api: LatencySummary::of(&column(|u| u.api_ms))?,
            to_envoy: LatencySummary::of(&column(|u| u.envoy_ms))?,
            to_service: LatencySummary::of(&column(|u| u.service_ms))?,
            envoy_poll_ms: millis(ENVOY_POLL),
            service_poll_ms: millis(SERVICE_POLL),
            observe_interval_ms: millis(OBSERVE_INTERVAL),
            updates,
        })
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The weight of update `index`: 20 % and 30 % in turn, so every update changes it.
pub fn basis_points(index: u32) -> u32 {
    if index.is_multiple_of(2) {
        2000
    } else {
        3000
    }
}

/// The pause after update `index`: the fractional part of `(index + 1) · φ⁻¹` times `interval`.
/// Successive values fill `[0, interval)` evenly (the golden-ratio sequence), so the updates land
/// at every phase of the service's observer tick instead of always just after it.
pub fn spacing(index: u32, interval: Duration) -> Duration {
    const INVERSE_GOLDEN_RATIO: f64 = 0.618_033_988_749_894_9;
    let phase = (f64::from(index + 1) * INVERSE_GOLDEN_RATIO).fract();
    interval.mul_f64(phase)
}

/// Sets the weight of `rollout` (paused) `updates` times and times each.
pub async fn measure(rig: &Rig, rollout: &str, updates: u32) -> anyhow::Result<Propagation> {
    let mut api = rig.service.connect().await?;
    let mut admin = Connection::open(rig.envoy.admin).await?;
    let mut previous = Rig::envoy_generation(&mut admin)
        .await?
        .context("Envoy reports no meshcanary_config_generation")?;
    let mut timed = Vec::new();
    for index in 0..updates {
        let update = update(&mut api, &mut admin, rollout, basis_points(index), previous)
            .await
            .with_context(|| {
                format!(
                    "weight update {}/{updates} of {rollout}\nservice log:\n{}\nEnvoy log:\n{}",
                    index + 1,
                    rig.service.log(),
                    rig.envoy.log()
                )
            })?;
        previous = update.generation;
        timed.push(update);
        tokio::time::sleep(spacing(index, OBSERVE_INTERVAL)).await;
    }
    Propagation::from_updates(rollout, timed).context("no updates timed")
}

/// One update, Envoy at `previous` before it.
async fn update(
    api: &mut Api,
    admin: &mut Connection,
    rollout: &str,
    basis_points: u32,
    previous: u64,
) -> anyhow::Result<Update> {
    let sent = Instant::now();
    let put = async {
        let view = api.put_weight(rollout, basis_points).await?;
        anyhow::Ok((view, sent.elapsed()))
    };
    // Watching from the moment the request leaves: any generation after `previous` is ours (nothing
    // else writes the config while every rollout is paused); which one is checked below.
    let ((view, api_time), (first_seen, first_generation)) =
        tokio::try_join!(put, wait_for_envoy(admin, previous + 1, sent))?;
    let generation = control::weight_generation(&view)
        .with_context(|| format!("no status.weightGeneration in {view}"))?;
    if generation <= previous {
        bail!("the weight update left the generation at {generation} (was {previous})");
    }
    let envoy = async {
        if first_generation >= generation {
            anyhow::Ok(first_seen)
        } else {
            Ok(wait_for_envoy(admin, generation, sent).await?.0)
        }
    };
    let (envoy_time, service_time) =
        tokio::try_join!(envoy, wait_for_service(api, rollout, generation, sent))?;
    Ok(Update {
        basis_points,
        generation,
        api_ms: millis(api_time),
        envoy_ms: millis(envoy_time),
        service_ms: millis(service_time),
    })
}

/// Polls Envoy's gauge until it reaches `at_least`; the time since `sent` and the value seen.
async fn wait_for_envoy(
    admin: &mut Connection,
    at_least: u64,
    sent: Instant,
) -> anyhow::Result<(Duration, u64)> {
    loop {
        let running = Rig::envoy_generation(admin).await?;
        let elapsed = sent.elapsed();
        if let Some(generation) = running.filter(|generation| *generation >= at_least) {
            return Ok((elapsed, generation));
        }
        if elapsed > UPDATE_TIMEOUT {
            bail!("Envoy runs generation {running:?} after {elapsed:?}, want {at_least}");
        }
        tokio::time::sleep(ENVOY_POLL).await;
    }
}

/// Polls the rollout until the service reports `generation` applied on every proxy; the time since
/// `sent`.
async fn wait_for_service(
    api: &mut Api,
    rollout: &str,
    generation: u64,
    sent: Instant,
) -> anyhow::Result<Duration> {
    loop {
        let view = api.rollout(rollout).await?;
        let elapsed = sent.elapsed();
        if control::applied_everywhere(&view, generation) {
            return Ok(elapsed);
        }
        if elapsed > UPDATE_TIMEOUT {
            bail!(
                "the service does not report generation {generation} applied after {elapsed:?}: {}",
                view["propagation"]
            );
        }
        tokio::time::sleep(SERVICE_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_alternate() {
        let weights: Vec<u32> = (0..4).map(basis_points).collect();
        assert_eq!(weights, [2000, 3000, 2000, 3000]);
    }

    #[test]
    fn spacing_covers_the_interval_evenly() {
        let interval = Duration::from_millis(200);
        let pauses: Vec<Duration> = (0..100).map(|i| spacing(i, interval)).collect();
        assert!(pauses.iter().all(|pause| *pause < interval), "{pauses:?}");
        // Every fifth of the interval gets between 15 and 25 of the 100 pauses.
        for fifth in 0..5u32 {
            let (low, high) = (interval * fifth / 5, interval * (fifth + 1) / 5);
            let count = pauses.iter().filter(|p| **p >= low && **p < high).count();
            assert!((15..=25).contains(&count), "{low:?}..{high:?}: {count}");
        }
        // The mean pause is half the interval.
        let mean = pauses.iter().sum::<Duration>() / 100;
        let ms = millis(mean);
        assert!((90.0..110.0).contains(&ms), "{ms}");
    }

    #[test]
    fn a_propagation_summary_per_column() {
        let updates: Vec<Update> = (0..100u32)
            .map(|i| Update {
                basis_points: basis_points(i),
                generation: 10 + u64::from(i),
                api_ms: 2.0,
                envoy_ms: f64::from(i + 1),
                service_ms: 100.0 + f64::from(i + 1),
            })
            .collect();
        let summary = Propagation::from_updates("r", updates).unwrap();
        assert_eq!((summary.api.p50_ms, summary.api.max_ms), (2.0, 2.0));
        assert_eq!(
            (
                summary.to_envoy.p50_ms,
                summary.to_envoy.p99_ms,
                summary.to_envoy.max_ms
            ),
            (50.0, 99.0, 100.0)
        );
        assert_eq!(summary.to_service.p99_ms, 199.0);
        assert_eq!(summary.to_service.count, 100);
        assert_eq!(summary.observe_interval_ms, 200.0);
        assert_eq!(Propagation::from_updates("r", vec![]), None);
    }
}
