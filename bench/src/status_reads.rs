//! The control API's rate for status reads: wrk at the bench's fixed concurrency against
//! `GET /v1/rollouts/{name}` and `GET /v1/rollouts` while the service runs its loops (it scrapes
//! Envoy every 200 ms) with a handful of paused rollouts, in alternating rounds like the Envoy
//! comparison; and the service's CPU time per read from /proc.

use crate::control::Rig;
use crate::procfs;
use crate::report::{cpu_us_per_request, Settings};
use crate::summary::median;
use crate::wrk::{self, WrkReport};
use anyhow::bail;
use std::path::Path;

/// One endpoint in one round.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadSample {
    /// The round, from 0.
    pub round: usize,
    /// What wrk saw.
    pub wrk: WrkReport,
    /// The service's utime + stime over the round, clock ticks.
    pub service_cpu_ticks: u64,
    /// The service's CPU time per completed request, µs.
    pub service_cpu_us_per_request: Option<f64>,
}

/// One endpoint over the run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReads {
    /// `GET /v1/rollouts/{name}` or `GET /v1/rollouts`.
    pub endpoint: String,
    /// The path loaded.
    pub path: String,
    /// The answer's size, bytes.
    pub body_bytes: usize,
    /// Rollouts the service holds.
    pub rollouts: usize,
    /// wrk connections.
    pub connections: u32,
    /// Every round.
    pub samples: Vec<ReadSample>,
}

/// Medians over the rounds of one endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReadMedians {
    /// Requests per second.
    pub requests_per_second: Option<f64>,
    /// p50 latency, µs.
    pub p50_us: Option<f64>,
    /// p99 latency, µs.
    pub p99_us: Option<f64>,
    /// The service's CPU per request, µs.
    pub cpu_us_per_request: Option<f64>,
}

impl StatusReads {
    /// Medians over the rounds.
    pub fn medians(&self) -> ReadMedians {
        let m = |metric: fn(&ReadSample) -> Option<f64>| {
            let values: Vec<f64> = self.samples.iter().filter_map(metric).collect();
            median(&values)
        };
        ReadMedians {
            requests_per_second: m(|s| Some(s.wrk.requests_per_second)),
            p50_us: m(|s| Some(s.wrk.p50_us)),
            p99_us: m(|s| Some(s.wrk.p99_us)),
            cpu_us_per_request: m(|s| s.service_cpu_us_per_request),
        }
    }

    /// Non-2xx answers and socket errors over all rounds.
    pub fn failures(&self) -> u64 {
        self.samples
            .iter()
            .map(|s| s.wrk.non_2xx + s.wrk.socket_errors)
            .sum()
    }
}

/// Loads both read endpoints for the run's rounds (alternating, `settings.seconds` each) after
/// `settings.warmup_seconds` of unrecorded load on each; `name` is the rollout read one by one,
/// `rollouts` how many the service holds. Uses `runtime` only to fetch each answer once.
pub fn measure(
    runtime: &tokio::runtime::Runtime,
    rig: &Rig,
    name: &str,
    rollouts: usize,
    settings: &Settings,
    dir: &Path,
) -> anyhow::Result<Vec<StatusReads>> {
    let (rounds, seconds, warmup) = (
        settings.rounds,
        settings.seconds,
        settings.warmup_seconds.max(1),
    );
    let endpoints = [
        (
            "GET /v1/rollouts/{name}".to_string(),
            format!("/v1/rollouts/{name}"),
        ),
        ("GET /v1/rollouts".to_string(), "/v1/rollouts".to_string()),
    ];
    let mut results = Vec::new();
    for (endpoint, path) in endpoints {
        let body = runtime.block_on(crate::client::get_text(rig.service.addr, &path))?;
        let url = format!("http://{}{path}", rig.service.addr);
        let warm = wrk::run_args(&wrk::api_args(&url, warmup), warmup, dir)?;
        if warm.non_2xx + warm.socket_errors > 0 {
            bail!(
                "{endpoint}: {} failed requests in the warm-up\nservice log:\n{}",
                warm.non_2xx + warm.socket_errors,
                rig.service.log()
            );
        }
        results.push(StatusReads {
            endpoint,
            path,
            body_bytes: body.len(),
            rollouts,
            connections: wrk::CONNECTIONS,
            samples: Vec::new(),
        });
    }
    let ticks_per_second = procfs::clock_ticks_per_second();
    let pid = rig.service.pid();
    for round in 0..rounds {
        for position in 0..results.len() {
            let index = (round + position) % results.len();
            let reads = &mut results[index];
            let url = format!("http://{}{}", rig.service.addr, reads.path);
            let before = procfs::cpu_ticks(pid)?;
            let load = wrk::run_args(&wrk::api_args(&url, seconds), seconds, dir)?;
            let ticks = procfs::cpu_ticks(pid)? - before;
            eprintln!(
                "bench: round {}/{rounds} {:<28} {:>7.0} req/s  p50 {:>8}  p99 {:>8}  service CPU {:>6} µs/req{}",
                round + 1,
                reads.endpoint,
                load.requests_per_second,
                crate::report::latency(Some(load.p50_us)),
                crate::report::latency(Some(load.p99_us)),
                cpu_us_per_request(ticks, ticks_per_second, load.requests)
                    .map_or("–".into(), |cpu| format!("{cpu:.1}")),
                match load.non_2xx + load.socket_errors {
                    0 => String::new(),
                    failed => format!("  {failed} FAILED"),
                }
            );
            reads.samples.push(ReadSample {
                round,
                service_cpu_us_per_request: cpu_us_per_request(
                    ticks,
                    ticks_per_second,
                    load.requests,
                ),
                service_cpu_ticks: ticks,
                wrk: load,
            });
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(round: usize, rps: f64, p99_us: f64, cpu: Option<f64>) -> ReadSample {
        ReadSample {
            round,
            wrk: WrkReport {
                requests: (rps * 3.0) as u64,
                seconds: 3.0,
                requests_per_second: rps,
                p50_us: 400.0,
                p99_us,
                non_2xx: round as u64,
                socket_errors: 0,
            },
            service_cpu_ticks: 0,
            service_cpu_us_per_request: cpu,
        }
    }

    #[test]
    fn medians_over_rounds_skip_missing_cpu() {
        let reads = StatusReads {
            endpoint: "GET /v1/rollouts".into(),
            path: "/v1/rollouts".into(),
            body_bytes: 100,
            rollouts: 5,
            connections: 16,
            samples: vec![
                sample(0, 9000.0, 3000.0, Some(80.0)),
                sample(1, 11000.0, 1000.0, None),
                sample(2, 10000.0, 2000.0, Some(90.0)),
            ],
        };
        let medians = reads.medians();
        assert_eq!(medians.requests_per_second, Some(10000.0));
        assert_eq!(medians.p50_us, Some(400.0));
        assert_eq!(medians.p99_us, Some(2000.0));
        assert_eq!(medians.cpu_us_per_request, Some(85.0));
        assert_eq!(reads.failures(), 3);
    }
}
