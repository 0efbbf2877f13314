//! `make bench`: what the meshcanary filter costs per request next to Envoy's native routing, how
//! exact its split is, how fast its decision is, and how fast the control service's changes land
//! (issue 8).
//!
//! One run, on one machine: eight Envoy configurations (see [`scenario`]) under the same wrk load in
//! alternating rounds, Envoy CPU per request from /proc, Envoy instructions per request counted by
//! valgrind's callgrind (see [`instructions`]) and what each kind of host call costs in them (see
//! [`ladder`]), the split of 100 000 requests, the module's size and memory, criterion's numbers
//! for the decision, and the control service (see [`control`]):
//! propagation latency of weight updates and the rate of status reads. Writes `BENCHMARKS.md` at the
//! root of the workspace and `bench/results.json`.
//!
//! Environment: `BENCH_ROUNDS` (5), `BENCH_SECONDS` (10), `BENCH_WARMUP_SECONDS` (2),
//! `BENCH_SPLIT_REQUESTS` (100000), `BENCH_PROPAGATION_UPDATES` (100), `BENCH_CALLGRIND` (1; 0
//! skips the instruction counts), `BENCH_CALLGRIND_REQUESTS` (1000), `ENVOY_BIN` and
//! `MESHCANARY_WASM` (both set by the Makefile), `MESHCANARY_BIN` (the control service; the
//! Makefile's bench target points it at the release build it makes, else
//! `target/release/meshcanary`). `BENCH_LAB=c,e` (configuration letters) is the profiling loop:
//! it only counts those configurations' instructions per request, prints them and writes no
//! report. Everything it starts (Envoys, valgrind, the control service, wrk)
//! is stopped when it ends, fails, or gets Ctrl-C.

mod client;
mod control;
mod envoy;
mod instructions;
mod ladder;
mod machine;
mod micro;
mod procfs;
mod propagation;
mod report;
mod scenario;
mod split;
mod status_reads;
mod summary;
mod wrk;

use anyhow::{bail, Context};
use meshcanary_testkit::process;
use meshcanary_testkit::upstream::Upstream;
use report::{ConfigResult, Memory, Results, Sample, Settings, Sizes, Versions};
use scenario::{ExpectedSplit, Modules, Scenario};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The env vars that change a run, in the order the report's command line shows them.
const KNOBS: [&str; 7] = [
    "BENCH_ROUNDS",
    "BENCH_SECONDS",
    "BENCH_WARMUP_SECONDS",
    "BENCH_SPLIT_REQUESTS",
    "BENCH_PROPAGATION_UPDATES",
    "BENCH_CALLGRIND",
    "BENCH_CALLGRIND_REQUESTS",
];

fn main() -> anyhow::Result<()> {
    process::stop_children_on_signal("bench")?;
    let settings = settings_from(|name| std::env::var(name).ok())?;
    // Parsed before the modules are built, so a typo fails at once rather than minutes later.
    let lab_scenarios = match std::env::var("BENCH_LAB") {
        Ok(keys) if !keys.is_empty() => Some(Scenario::parse_keys(&keys).context("BENCH_LAB")?),
        _ => None,
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_path_buf();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let envoy_bin = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join(".venv/bin/envoy-1.40.0"));
    if !envoy_bin.exists() {
        bail!("no Envoy at {} (run `make envoy`)", envoy_bin.display());
    }
    let meshcanary = std::env::var_os("MESHCANARY_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir.join("wasm32-wasip1/wasm-release/meshcanary.wasm"));
    if !meshcanary.exists() {
        bail!(
            "no filter module at {} (run `make build`)",
            meshcanary.display()
        );
    }
    let control_bin = std::env::var_os("MESHCANARY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir.join("release/meshcanary"));
    if !control_bin.exists() {
        bail!(
            "no control service at {} (run `cargo build --release -p meshcanary-control`, or `make bench`)",
            control_bin.display()
        );
    }
    let mut machine = machine::Machine::read();
    let versions = Versions {
        envoy: envoy::version(&envoy_bin).map_or_else(|| "?".into(), |v| v.to_string()),
        rustc: machine::first_line_of("rustc", &["--version"]).unwrap_or_else(|| "?".into()),
        wrk: wrk::version()
            .context("wrk is not installed (apt-get install wrk, or `make bench`)")?,
    };
    if settings.callgrind {
        // Before anything long runs: a missing valgrind fails the run at once.
        instructions::valgrind_version()?;
    }

    eprintln!("bench: building the no-op, the bare no-op and the header-only filters");
    let modules = Modules {
        meshcanary,
        noop: build_module(&workspace, &target_dir, "meshcanary-noop-filter")?,
        header: build_module(&workspace, &target_dir, "meshcanary-header-filter")?,
        bare_noop: build_module(&workspace, &target_dir, "meshcanary-bare-noop-filter")?,
    };
    if let Some(scenarios) = lab_scenarios {
        let dumps = target_dir.join("bench-lab");
        return lab(
            &envoy_bin,
            &modules,
            &scenarios,
            settings.callgrind_requests,
            &dumps,
        );
    }
    eprintln!("bench: building the probe filter");
    let probe = build_module(&workspace, &target_dir, "meshcanary-probe-filter")?;

    eprintln!("bench: criterion on the decision (filter/core/benches/choose.rs)");
    let criterion_home = target_dir.join("criterion");
    micro::run(&workspace, &criterion_home, settings.seconds)?;
    let micro = micro::read(&criterion_home)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Before the Envoy comparison: it is the shorter part, and a broken service then fails the run
    // in seconds, not after many minutes of load.
    let control = control_service(
        &runtime,
        &envoy_bin,
        &control_bin,
        &modules.meshcanary,
        &settings,
    )?;
    // Before the wrk rounds: a configuration failing under valgrind then fails the run before
    // the longest part. The counts do not depend on what else ran before.
    let instructions = if settings.callgrind {
        eprintln!(
            "bench: Envoy instructions per request under callgrind, {} configurations, {} at a time",
            Scenario::ALL.len(),
            instructions::PARALLEL
        );
        Some(instructions::measure(
            &envoy_bin,
            &modules,
            &Scenario::ALL,
            settings.callgrind_requests,
            None,
        )?)
    } else {
        None
    };
    let host_calls = if settings.callgrind {
        eprintln!(
            "bench: the host-call cost ladder under callgrind, {} probe operations, {} at a time",
            ladder::Operation::ALL.len(),
            instructions::PARALLEL
        );
        Some(ladder::measure(
            &envoy_bin,
            &probe,
            settings.callgrind_requests,
        )?)
    } else {
        None
    };
    let comparison = compare(&runtime, &envoy_bin, &modules, &settings)?;

    machine.load_after = machine::load_average();
    let file_size = |path: &Path| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut results = Results {
        date: machine::now_utc(),
        machine,
        versions,
        command: command_line(),
        wrk_command: wrk::command_line(&wrk::args(
            &format!("http://127.0.0.1:<port>{}", wrk::PATH),
            settings.seconds,
        )),
        settings,
        clock_ticks_per_second: procfs::clock_ticks_per_second(),
        configs: comparison.configs,
        instructions,
        host_calls,
        sizes: Sizes {
            meshcanary_wasm_bytes: file_size(&modules.meshcanary),
            noop_wasm_bytes: file_size(&modules.noop),
            bare_noop_wasm_bytes: file_size(&modules.bare_noop),
            header_wasm_bytes: file_size(&modules.header),
        },
        memory: comparison.memory,
        split: comparison.split,
        micro,
        control_binary: control_bin
            .strip_prefix(&workspace)
            .unwrap_or(&control_bin)
            .display()
            .to_string(),
        propagation: Some(control.propagation),
        status_reads: control.status_reads,
        targets: Vec::new(),
    };
    results.targets = results.evaluate_targets();

    let markdown_path = workspace.join("BENCHMARKS.md");
    let json_path = workspace.join("bench/results.json");
    // Findings are written by people (profiles, experiments); the report carries them along.
    let findings = std::fs::read_to_string(workspace.join("bench/findings.md")).unwrap_or_default();
    let markdown = match findings.trim() {
        "" => report::markdown(&results),
        text => format!("{}\n\n{text}\n", report::markdown(&results).trim_end()),
    };
    std::fs::write(&markdown_path, markdown)
        .with_context(|| format!("write {}", markdown_path.display()))?;
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("write {}", json_path.display()))?;
    for row in &results.targets {
        eprintln!(
            "bench: {} {}: {} (target {})",
            match row.verdict.mark() {
                "" => "·",
                mark => mark,
            },
            row.what,
            row.measured,
            row.target
        );
    }
    println!(
        "bench: report in {} (raw numbers in {})",
        markdown_path.display(),
        json_path.display()
    );
    Ok(())
}

/// `BENCH_LAB`: Envoy's instructions per request for the configurations named by letter, printed,
/// their callgrind dumps kept in `dumps` for `callgrind_annotate`. A change is judged by these
/// counts in minutes instead of a full run's twenty.
fn lab(
    envoy_bin: &Path,
    modules: &Modules,
    scenarios: &[Scenario],
    requests: u64,
    dumps: &Path,
) -> anyhow::Result<()> {
    let counts = instructions::measure(envoy_bin, modules, scenarios, requests, Some(dumps))?;
    for config in &counts.configs {
        println!(
            "({}) {}: {:.0} instructions per request (dump: {})",
            config.key,
            config.title,
            config.per_request,
            dumps.join(format!("{}.callgrind", config.key)).display()
        );
    }
    Ok(())
}

/// Reads the run's knobs through `lookup` (the environment).
fn settings_from(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Settings> {
    let number = |name: &str, default: u64, min: u64| -> anyhow::Result<u64> {
        match lookup(name) {
            None => Ok(default),
            Some(text) => {
                let value: u64 = text
                    .trim()
                    .parse()
                    .with_context(|| format!("{name}={text:?} is not a whole number"))?;
                if value < min {
                    bail!("{name}={value}: at least {min}");
                }
                Ok(value)
            }
        }
    };
    Ok(Settings {
        rounds: usize::try_from(number("BENCH_ROUNDS", 5, 1)?)?,
        seconds: number("BENCH_SECONDS", 10, 1)?,
        warmup_seconds: number("BENCH_WARMUP_SECONDS", 2, 0)?,
        split_requests: number("BENCH_SPLIT_REQUESTS", 100_000, 1_000)?,
        propagation_updates: u32::try_from(number("BENCH_PROPAGATION_UPDATES", 100, 10)?)?,
        callgrind: match number("BENCH_CALLGRIND", 1, 0)? {
            0 => false,
            1 => true,
            other => bail!("BENCH_CALLGRIND={other}: 1 (count instructions) or 0 (skip)"),
        },
        callgrind_requests: number("BENCH_CALLGRIND_REQUESTS", 1000, 100)?,
        connections: wrk::CONNECTIONS,
        threads: wrk::THREADS,
    })
}

/// How this run was started, as a person would type it again.
fn command_line() -> String {
    let knobs: Vec<String> = KNOBS
        .iter()
        .filter_map(|name| Some(format!("{name}={}", std::env::var(name).ok()?)))
        .collect();
    // The Makefile's recipe runs us under make; otherwise it was cargo directly.
    let verb = if std::env::var_os("MAKELEVEL").is_some() {
        "make bench"
    } else {
        "cargo run --release -p meshcanary-bench"
    };
    knobs
        .into_iter()
        .chain(std::iter::once(verb.to_string()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Builds the workspace's cdylib `package` (`bench/noop-filter`, `bench/bare-noop-filter`,
/// `bench/header-filter`, `bench/probe-filter`) for wasm32-wasip1 with the filter's `wasm-release` profile; the module's
/// path.
fn build_module(workspace: &Path, target_dir: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace)
        .args(["build", "--locked", "-q", "-p", package])
        .args(["--target", "wasm32-wasip1", "--profile", "wasm-release"])
        .status()
        .with_context(|| format!("run cargo build for {package}"))?;
    if !status.success() {
        bail!("building {package} failed: {status}");
    }
    let path = target_dir.join(module_file(package));
    if !path.exists() {
        bail!("{package}: no module at {}", path.display());
    }
    Ok(path)
}

/// Where cargo puts the module of `package` under the target directory.
fn module_file(package: &str) -> String {
    format!(
        "wasm32-wasip1/wasm-release/{}.wasm",
        package.replace('-', "_")
    )
}

/// What the control service part of the run produced.
struct ControlResults {
    propagation: propagation::Propagation,
    status_reads: Vec<status_reads::StatusReads>,
}

/// Starts Envoy on the standalone bootstrap and the control service pushing to it, creates a
/// handful of paused rollouts, loads the status reads, then times the weight updates. Everything
/// started here is stopped when this returns, successfully or not.
fn control_service(
    runtime: &tokio::runtime::Runtime,
    envoy_bin: &Path,
    control_bin: &Path,
    wasm: &Path,
    settings: &Settings,
) -> anyhow::Result<ControlResults> {
    let dir = tempfile::Builder::new()
        .prefix("meshcanary-bench-control")
        .tempdir()?;
    process::remove_on_signal(dir.path().to_path_buf());
    eprintln!(
        "bench: starting Envoy (envoy-config/standalone.yaml, filter through ECDS) and {} serve",
        control_bin.display()
    );
    let rig = runtime.block_on(control::Rig::start(
        envoy_bin,
        control_bin,
        wasm,
        dir.path(),
    ))?;
    let rollouts = runtime.block_on(rig.create_paused_rollouts())?;
    let read = rollouts.first().context("no rollout created")?;
    eprintln!(
        "bench: status reads, {} rollouts paused at 10 %",
        rollouts.len()
    );
    let status_reads =
        status_reads::measure(runtime, &rig, read, rollouts.len(), settings, dir.path())?;
    eprintln!(
        "bench: propagation, {} weight updates of {read}",
        settings.propagation_updates
    );
    let propagation = runtime.block_on(propagation::measure(
        &rig,
        read,
        settings.propagation_updates,
    ))?;
    eprintln!(
        "bench: propagation to Envoy p50 {} p99 {} max {}; to the service's report p50 {} p99 {} max {}",
        report::millis(propagation.to_envoy.p50_ms),
        report::millis(propagation.to_envoy.p99_ms),
        report::millis(propagation.to_envoy.max_ms),
        report::millis(propagation.to_service.p50_ms),
        report::millis(propagation.to_service.p99_ms),
        report::millis(propagation.to_service.max_ms),
    );
    drop(rig);
    Ok(ControlResults {
        propagation,
        status_reads,
    })
}

/// What the Envoy part of the run produced.
struct Comparison {
    configs: Vec<ConfigResult>,
    memory: Memory,
    split: Option<split::SplitReport>,
}

/// Starts the upstream and the eight Envoys, checks each splits as it should, warms them up, runs the
/// rounds, then reads memory and measures split accuracy through (c). Everything started here is
/// stopped when this returns, successfully or not.
fn compare(
    runtime: &tokio::runtime::Runtime,
    envoy_bin: &Path,
    modules: &Modules,
    settings: &Settings,
) -> anyhow::Result<Comparison> {
    let upstream = Upstream::plain()?;
    let dir = tempfile::Builder::new()
        .prefix("meshcanary-bench")
        .tempdir()?;
    process::remove_on_signal(dir.path().to_path_buf());

    let mut envoys = Vec::new();
    for scenario in Scenario::ALL {
        eprintln!(
            "bench: starting Envoy ({}) {}",
            scenario.key(),
            scenario.title()
        );
        let bootstrap = scenario.bootstrap(upstream.port, modules)?;
        let envoy_dir = dir.path().join(scenario.key());
        let envoy = runtime
            .block_on(envoy::start(envoy_bin, &bootstrap, &envoy_dir))
            .with_context(|| format!("Envoy ({}) {}", scenario.key(), scenario.title()))?;
        envoys.push((scenario, envoy));
    }

    // Warm-up (V8 tiers the module up, connection pools fill), then check every configuration routes
    // as it claims before any number is kept: a broken filter must not pass for a fast one.
    for (scenario, envoy) in &envoys {
        let url = format!("http://{}{}", envoy.listener, wrk::PATH);
        let before = runtime.block_on(envoy::completed_by_cluster(envoy))?;
        let warm = wrk::run(&url, settings.warmup_seconds.max(1), dir.path())?;
        let after = runtime.block_on(envoy::completed_by_cluster(envoy))?;
        let share = canary_share(before, after);
        if warm.non_2xx + warm.socket_errors > 0 {
            bail!(
                "({}) {}: {} failed requests in the warm-up:\n{}",
                scenario.key(),
                scenario.title(),
                warm.non_2xx + warm.socket_errors,
                envoy.log_tail()
            );
        }
        if !split_as_expected(scenario.expected_split(), share) {
            bail!(
                "({}) {}: {:?} of its requests went to v2, expected {:?}",
                scenario.key(),
                scenario.title(),
                share,
                scenario.expected_split()
            );
        }
    }

    let ticks_per_second = procfs::clock_ticks_per_second();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); envoys.len()];
    for round in 0..settings.rounds {
        for position in 0..envoys.len() {
            let index = (round + position) % envoys.len();
            let (scenario, envoy) = &envoys[index];
            let url = format!("http://{}{}", envoy.listener, wrk::PATH);
            let before = runtime.block_on(envoy::completed_by_cluster(envoy))?;
            let ticks_before = procfs::cpu_ticks(envoy.pid())?;
            let load = wrk::run(&url, settings.seconds, dir.path())?;
            let ticks_after = procfs::cpu_ticks(envoy.pid())?;
            let after = runtime.block_on(envoy::completed_by_cluster(envoy))?;
            let cpu_ticks = ticks_after - ticks_before;
            let sample = Sample {
                round,
                position,
                cpu_us_per_request: report::cpu_us_per_request(
                    cpu_ticks,
                    ticks_per_second,
                    load.requests,
                ),
                canary_share: canary_share(before, after),
                cpu_ticks,
                wrk: load,
            };
            eprintln!(
                "bench: round {}/{} ({}) {:<44} {:>7.0} req/s  p50 {:>8}  p99 {:>8}  CPU {:>6} µs/req{}",
                round + 1,
                settings.rounds,
                scenario.key(),
                scenario.title(),
                sample.wrk.requests_per_second,
                report::latency(Some(sample.wrk.p50_us)),
                report::latency(Some(sample.wrk.p99_us)),
                sample
                    .cpu_us_per_request
                    .map_or("–".into(), |cpu| format!("{cpu:.2}")),
                match sample.wrk.non_2xx + sample.wrk.socket_errors {
                    0 => String::new(),
                    failed => format!("  {failed} FAILED"),
                }
            );
            samples[index].push(sample);
        }
    }

    let mut configs = Vec::new();
    for ((scenario, envoy), samples) in envoys.iter().zip(samples) {
        configs.push(ConfigResult {
            key: scenario.key().into(),
            title: scenario.title().into(),
            template: scenario.template_name().into(),
            samples,
            rss_bytes: procfs::rss_bytes(envoy.pid()).ok(),
        });
    }

    let filter = envoys
        .iter()
        .find(|(scenario, _)| *scenario == Scenario::Filter)
        .map(|(_, envoy)| envoy)
        .context("no (c) Envoy")?;
    let wasm_stats = runtime.block_on(envoy::stats(filter, "wasm"))?;
    let memory = Memory {
        wasm_stats: wasm_stats
            .lines()
            .map(str::trim)
            // The VM's own stats; the filter's `wasmcustom.` stats are not about memory.
            .filter(|line| line.starts_with("wasm."))
            .map(String::from)
            .collect(),
    };
    eprintln!(
        "bench: split accuracy, {} requests through (c)",
        settings.split_requests
    );
    let split = runtime.block_on(split::measure(filter, settings.split_requests))?;

    drop(envoys);
    drop(upstream);
    Ok(Comparison {
        configs,
        memory,
        split: Some(split),
    })
}

/// The share of requests `reviews-v2` completed between two (v1, v2) readings.
fn canary_share(before: (u64, u64), after: (u64, u64)) -> Option<f64> {
    let v1 = after.0.checked_sub(before.0)?;
    let v2 = after.1.checked_sub(before.1)?;
    (v1 + v2 > 0).then(|| v2 as f64 / (v1 + v2) as f64)
}

/// Whether an observed canary share fits what the configuration should do (loosely: this catches a
/// configuration that does not split at all, not a biased split).
fn split_as_expected(expected: ExpectedSplit, share: Option<f64>) -> bool {
    match (expected, share) {
        (_, None) => false,
        (ExpectedSplit::None, Some(share)) => share == 0.0,
        (ExpectedSplit::OneVariant, Some(share)) => share == 0.0 || share == 1.0,
        (ExpectedSplit::Share(target), Some(share)) => (share - target).abs() < target / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| value.to_string())
            }
        };
        let defaults = settings_from(env(&[])).unwrap();
        assert_eq!(
            (defaults.rounds, defaults.seconds, defaults.warmup_seconds),
            (5, 10, 2)
        );
        assert_eq!(defaults.split_requests, 100_000);
        assert_eq!(defaults.propagation_updates, 100);
        assert_eq!(
            (defaults.callgrind, defaults.callgrind_requests),
            (true, 1000)
        );
        let off = settings_from(env(&[
            ("BENCH_CALLGRIND", "0"),
            ("BENCH_CALLGRIND_REQUESTS", "300"),
        ]))
        .unwrap();
        assert_eq!((off.callgrind, off.callgrind_requests), (false, 300));
        assert_eq!((defaults.connections, defaults.threads), (16, 2));
        let quick = settings_from(env(&[("BENCH_ROUNDS", "2"), ("BENCH_SECONDS", " 3 ")])).unwrap();
        assert_eq!((quick.rounds, quick.seconds), (2, 3));
        assert!(quick.is_quick() && !defaults.is_quick());
        for bad in [
            &[("BENCH_ROUNDS", "0")][..],
            &[("BENCH_SECONDS", "ten")][..],
            &[("BENCH_SECONDS", "-1")][..],
            &[("BENCH_SPLIT_REQUESTS", "10")][..],
            &[("BENCH_PROPAGATION_UPDATES", "5")][..],
            &[("BENCH_CALLGRIND", "2")][..],
            &[("BENCH_CALLGRIND", "yes")][..],
            &[("BENCH_CALLGRIND_REQUESTS", "10")][..],
        ] {
            let bad: &'static [(&'static str, &'static str)] = bad;
            assert!(settings_from(env(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn module_files() {
        let cases = [
            (
                "meshcanary-noop-filter",
                "wasm32-wasip1/wasm-release/meshcanary_noop_filter.wasm",
            ),
            (
                "meshcanary-header-filter",
                "wasm32-wasip1/wasm-release/meshcanary_header_filter.wasm",
            ),
            (
                "meshcanary-probe-filter",
                "wasm32-wasip1/wasm-release/meshcanary_probe_filter.wasm",
            ),
        ];
        for (package, expected) in cases {
            assert_eq!(module_file(package), expected);
        }
    }

    #[test]
    fn canary_shares() {
        let cases = [
            ((0, 0), (900, 100), Some(0.1)),
            ((100, 0), (200, 0), Some(0.0)),
            ((5, 5), (5, 5), None),
            ((10, 0), (5, 0), None),
        ];
        for (before, after, expected) in cases {
            assert_eq!(
                canary_share(before, after),
                expected,
                "{before:?} {after:?}"
            );
        }
    }

    #[test]
    fn expected_splits() {
        let cases = [
            (ExpectedSplit::None, Some(0.0), true),
            (ExpectedSplit::None, Some(0.1), false),
            (ExpectedSplit::OneVariant, Some(1.0), true),
            (ExpectedSplit::OneVariant, Some(0.0), true),
            (ExpectedSplit::OneVariant, Some(0.5), false),
            (ExpectedSplit::Share(0.1), Some(0.098), true),
            (ExpectedSplit::Share(0.1), Some(0.0), false),
            (ExpectedSplit::Share(0.1), Some(0.2), false),
            (ExpectedSplit::Share(0.1), None, false),
        ];
        for (expected, share, ok) in cases {
            assert_eq!(
                split_as_expected(expected, share),
                ok,
                "{expected:?} {share:?}"
            );
        }
    }
}
