//! The host-call cost ladder: what each kind of proxy-wasm host call the meshcanary filter makes
//! costs Envoy per request, in instructions counted by callgrind (see [`crate::instructions`], whose
//! machinery this reuses).
//!
//! The probe module (`bench/probe-filter`) runs on the routes of configuration (c)
//! (`bench/envoy/filter.yaml`), its plugin configuration naming ONE [`Operation`] it performs on every
//! request and nothing else; [`Operation::None`] is the baseline, so each operation's difference to it
//! is that call's cost (with its callback's, for the callbacks only an operation uses: Envoy calls
//! `on_log` and `on_http_response_headers` into the VM either way).

use crate::instructions::{self, Callgrind, Job};
use crate::scenario::{path_text, render, Scenario};
use anyhow::Context;
use std::path::Path;

pub use meshcanary_probe_filter::Operation;

/// The bootstrap of (c) with the probe at `probe` doing `operation`, upstream on `upstream_port`.
pub fn bootstrap(operation: Operation, upstream_port: u16, probe: &Path) -> anyhow::Result<String> {
    let values = [
        ("LISTEN_PORT", "0".to_string()),
        ("ADMIN_PORT", "0".to_string()),
        ("UPSTREAM_PORT", upstream_port.to_string()),
        ("WASM_PATH", path_text(probe)?),
        // A JSON string literal is a valid YAML double-quoted scalar.
        ("PLUGIN_CONFIG", serde_json::to_string(operation.name())?),
    ];
    render(Scenario::Filter.template(), &values)
}
/// The ladder's counts; serialised as `hostCalls` in `bench/results.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostCalls {
    /// `valgrind --version`.
    pub valgrind: String,
    /// Requests counted per operation (`BENCH_CALLGRIND_REQUESTS`).
    pub requests: u64,
    /// Requests before the counters were zeroed.
    pub warmup_requests: u64,
    /// Wall-clock seconds the ladder took.
    pub seconds: f64,
    /// One per operation, in [`Operation::ALL`]'s order.
    pub operations: Vec<HostCall>,
}

/// One operation's count.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostCall {
    /// The probe's configuration (`none`, `read-header`, …).
    pub operation: String,
    /// What it is.
    pub description: String,
    /// Instructions Envoy ran over the counted requests.
    pub instructions: u64,
    /// `instructions / requests`.
    pub per_request: f64,
    /// `per_request` minus that of `none`.
    pub over_none: Option<f64>,
}

impl HostCalls {
    /// The ladder from the counts of [`Operation::ALL`] (keys: the operations' names).
    pub fn from_counts(counts: Callgrind) -> HostCalls {
        let none = counts.per_request(Operation::None.name());
        let operations = counts
            .configs
            .into_iter()
            .map(|count| HostCall {
                over_none: none.map(|none| count.per_request - none),
                operation: count.key,
                description: count.title,
                instructions: count.instructions,
                per_request: count.per_request,
            })
            .collect();
        HostCalls {
            valgrind: counts.valgrind,
            requests: counts.requests,
            warmup_requests: counts.warmup_requests,
            seconds: counts.seconds,
            operations,
        }
    }
}

/// Counts Envoy's instructions per request with the probe at `probe` doing each operation,
/// [`instructions::PARALLEL`] at a time, `requests` counted requests each.
pub fn measure(envoy_bin: &Path, probe: &Path, requests: u64) -> anyhow::Result<HostCalls> {
    let jobs: Vec<Job> = Operation::ALL
        .iter()
        .map(|operation| Job {
            key: operation.name().into(),
            title: operation.description().into(),
        })
        .collect();
    let counts = instructions::count(
        envoy_bin,
        &jobs,
        |index, upstream_port| {
            let operation = Operation::ALL.get(index).context("no such operation")?;
            bootstrap(*operation, upstream_port, probe)
        },
        requests,
        None,
    )?;
    Ok(HostCalls::from_counts(counts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instructions::InstructionCount;

    #[test]
    fn the_probe_runs_on_the_routes_of_c_with_the_operation_as_its_configuration() {
        let modules = crate::scenario::Modules {
            meshcanary: "/m/meshcanary.wasm".into(),
            noop: "/m/noop.wasm".into(),
            header: "/m/header.wasm".into(),
            bare_noop: "/m/bare-noop.wasm".into(),
        };
        let filter = Scenario::Filter.bootstrap(4242, &modules).unwrap();
        for operation in Operation::ALL {
            let bootstrap = bootstrap(operation, 4242, Path::new("/m/probe.wasm")).unwrap();
            assert_eq!(bootstrap.lines().count(), filter.lines().count());
            let differ: Vec<&str> = bootstrap
                .lines()
                .zip(filter.lines())
                .filter(|(p, c)| p != c)
                .map(|(p, _)| p.trim())
                .collect();
            assert_eq!(
                differ,
                [
                    "code: { local: { filename: \"/m/probe.wasm\" } }".to_string(),
                    format!("value: \"{}\"", operation.name()),
                ],
                "{}",
                operation.name()
            );
        }
        assert!(bootstrap(Operation::None, 1, Path::new("/m/a\"b.wasm")).is_err());
    }

    #[test]
    fn differences_to_none() {
        let count = |key: &str, per_request: f64| InstructionCount {
            key: key.into(),
            title: format!("does {key}"),
            instructions: (per_request * 1000.0) as u64,
            per_request,
        };
        let counts = |configs| Callgrind {
            valgrind: "valgrind-3.19.0".into(),
            requests: 1000,
            warmup_requests: 200,
            seconds: 300.0,
            configs,
        };
        let ladder = HostCalls::from_counts(counts(vec![
            count("none", 190_000.0),
            count("read-header", 200_500.0),
            count("clock", 189_900.0),
        ]));
        let got: Vec<(&str, Option<f64>)> = ladder
            .operations
            .iter()
            .map(|call| (call.operation.as_str(), call.over_none))
            .collect();
        assert_eq!(
            got,
            [
                ("none", Some(0.0)),
                ("read-header", Some(10_500.0)),
                ("clock", Some(-100.0))
            ]
        );
        assert_eq!(ladder.operations[1].description, "does read-header");
        assert_eq!((ladder.requests, ladder.seconds), (1000, 300.0));
        let without_baseline = HostCalls::from_counts(counts(vec![count("clock", 1.0)]));
        assert_eq!(without_baseline.operations[0].over_none, None);
    }
}
