//! The results of a run, their summary against the targets, and `BENCHMARKS.md`.
//!
//! Everything here is a pure function of the measurements, so the report's arithmetic and wording
//! are tested without running Envoy.

use crate::instructions::Callgrind;
use crate::ladder::HostCalls;
use crate::machine::Machine;
use crate::micro::Estimate;
use crate::propagation::Propagation;
use crate::split::SplitReport;
use crate::status_reads::StatusReads;
use crate::summary::{median, median_ratio, Verdict};
use crate::wrk::WrkReport;
use std::fmt::Write as _;

/// The run's knobs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    /// Alternating rounds (`BENCH_ROUNDS`).
    pub rounds: usize,
    /// Seconds of load per configuration and round (`BENCH_SECONDS`).
    pub seconds: u64,
    /// Seconds of unrecorded load per configuration before the first round.
    pub warmup_seconds: u64,
    /// Requests of the split-accuracy run.
    pub split_requests: u64,
    /// Weight updates timed for propagation (`BENCH_PROPAGATION_UPDATES`).
    pub propagation_updates: u32,
    /// Whether Envoy's instructions are counted under callgrind (`BENCH_CALLGRIND`).
    pub callgrind: bool,
    /// Requests counted per configuration under callgrind (`BENCH_CALLGRIND_REQUESTS`).
    pub callgrind_requests: u64,
    /// wrk connections.
    pub connections: u32,
    /// wrk threads.
    pub threads: u32,
}

impl Settings {
    /// Shorter than the 5 rounds × 10 s: good for checking the pipeline, not for quoting.
    pub fn is_quick(&self) -> bool {
        self.rounds < 5 || self.seconds < 10
    }
}

/// Tool versions.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Versions {
    /// `envoy --version`.
    pub envoy: String,
    /// `rustc --version`.
    pub rustc: String,
    /// `wrk --version`.
    pub wrk: String,
}

/// One configuration in one round.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// The round, from 0.
    pub round: usize,
    /// Its place in the round's order (the order rotates every round).
    pub position: usize,
    /// What wrk saw.
    pub wrk: WrkReport,
    /// Envoy's utime + stime over the round, clock ticks.
    pub cpu_ticks: u64,
    /// Envoy CPU time per completed request, microseconds.
    pub cpu_us_per_request: Option<f64>,
    /// The share of the round's requests that `reviews-v2` completed.
    pub canary_share: Option<f64>,
}

/// The medians (or median ratios) of the four per-round metrics.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    /// Requests per second.
    pub requests_per_second: Option<f64>,
    /// Median latency (µs for values).
    pub p50: Option<f64>,
    /// 99th percentile latency (µs for values).
    pub p99: Option<f64>,
    /// Envoy CPU per request (µs for values).
    pub cpu_per_request: Option<f64>,
}

/// One configuration over the run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigResult {
    /// `a` … `g`.
    pub key: String,
    /// What it is.
    pub title: String,
    /// Its bootstrap template under `bench/envoy/`.
    pub template: String,
    /// Every round, by round index.
    pub samples: Vec<Sample>,
    /// Envoy's resident memory after the rounds, bytes.
    pub rss_bytes: Option<u64>,
}

impl ConfigResult {
    /// The per-round values of one metric, by round.
    pub fn per_round(&self, metric: fn(&Sample) -> Option<f64>) -> Vec<Option<f64>> {
        self.samples.iter().map(metric).collect()
    }

    /// Medians over rounds.
    pub fn medians(&self) -> Metrics {
        let m = |metric: fn(&Sample) -> Option<f64>| {
            let values: Vec<f64> = self.per_round(metric).into_iter().flatten().collect();
            median(&values)
        };
        Metrics {
            requests_per_second: m(rps),
            p50: m(p50),
            p99: m(p99),
            cpu_per_request: m(cpu),
        }
    }

    /// Medians of the per-round ratios to `base`.
    pub fn ratios_to(&self, base: &ConfigResult) -> Metrics {
        let r = |metric: fn(&Sample) -> Option<f64>| {
            median_ratio(&self.per_round(metric), &base.per_round(metric))
        };
        Metrics {
            requests_per_second: r(rps),
            p50: r(p50),
            p99: r(p99),
            cpu_per_request: r(cpu),
        }
    }

    /// Non-2xx responses and socket errors over all rounds.
    pub fn failures(&self) -> u64 {
        self.samples
            .iter()
            .map(|s| s.wrk.non_2xx + s.wrk.socket_errors)
            .sum()
    }

    /// The canary's share over all rounds (median of the rounds).
    pub fn canary_share(&self) -> Option<f64> {
        let shares: Vec<f64> = self.samples.iter().filter_map(|s| s.canary_share).collect();
        median(&shares)
    }
}

/// Requests per second of a sample.
pub fn rps(sample: &Sample) -> Option<f64> {
    Some(sample.wrk.requests_per_second)
}

/// p50 latency of a sample, µs.
pub fn p50(sample: &Sample) -> Option<f64> {
    Some(sample.wrk.p50_us)
}

/// p99 latency of a sample, µs.
pub fn p99(sample: &Sample) -> Option<f64> {
    Some(sample.wrk.p99_us)
}

/// Envoy CPU per request of a sample, µs.
pub fn cpu(sample: &Sample) -> Option<f64> {
    sample.cpu_us_per_request
}

/// Envoy CPU µs per request: `ticks` of CPU time over `requests`.
pub fn cpu_us_per_request(ticks: u64, ticks_per_second: u64, requests: u64) -> Option<f64> {
    (requests > 0 && ticks_per_second > 0)
        .then(|| ticks as f64 * 1e6 / ticks_per_second as f64 / requests as f64)
}

/// Wasm module sizes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sizes {
    /// The release meshcanary module Envoy loads.
    pub meshcanary_wasm_bytes: u64,
    /// The no-op module.
    pub noop_wasm_bytes: u64,
    /// The module that only writes the variant header.
    pub header_wasm_bytes: u64,
    /// The no-op module without the SDK (h).
    pub bare_noop_wasm_bytes: u64,
}

/// What the wasm VMs cost in memory.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    /// Envoy's stats with `wasm` in their name, from (c)'s Envoy (`name: value` lines).
    pub wasm_stats: Vec<String>,
}

/// A target of the issue next to what was measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetRow {
    /// What is compared.
    pub what: String,
    /// The target.
    pub target: String,
    /// The measured value, or `not measured`.
    pub measured: String,
    /// Met or not.
    pub verdict: Verdict,
}

/// Everything a run produced; serialised as `bench/results.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Results {
    /// When.
    pub date: String,
    /// Where.
    pub machine: Machine,
    /// With what.
    pub versions: Versions,
    /// The command a person typed.
    pub command: String,
    /// The load command, one per round and configuration (the port varies).
    pub wrk_command: String,
    /// Knobs.
    pub settings: Settings,
    /// `getconf CLK_TCK`: the resolution of the CPU times.
    pub clock_ticks_per_second: u64,
    /// (a) … (g).
    pub configs: Vec<ConfigResult>,
    /// Envoy's instructions per request of (a) … (g), counted by callgrind; `None` when skipped.
    pub instructions: Option<Callgrind>,
    /// What each kind of host call costs Envoy per request (the probe's ladder, callgrind); `None`
    /// when skipped.
    pub host_calls: Option<HostCalls>,
    /// Module sizes.
    pub sizes: Sizes,
    /// VM memory.
    pub memory: Memory,
    /// Split accuracy through (c).
    pub split: Option<SplitReport>,
    /// The decision's micro-benchmark.
    pub micro: Vec<Estimate>,
    /// The control service binary measured, as given (`MESHCANARY_BIN`, or the release build).
    pub control_binary: String,
    /// Propagation latency of weight updates through the control service.
    pub propagation: Option<Propagation>,
    /// The control API's status reads, one entry per endpoint; empty if not measured.
    pub status_reads: Vec<StatusReads>,
    /// The targets against the measurements.
    pub targets: Vec<TargetRow>,
}

/// The .wasm size target, bytes (150 KB, counted in 1000s: the stricter reading).
pub const WASM_LIMIT_BYTES: u64 = 150_000;

/// The propagation target: p99 from the API call to the generation running in Envoy, ms.
pub const PROPAGATION_LIMIT_MS: f64 = 1000.0;

/// The per-request cost targets of the issue: (c) against (e), (d) against (c).
pub const COST_LIMIT: f64 = 1.03;

impl Results {
    /// The configuration with key `key`.
    pub fn config(&self, key: &str) -> Option<&ConfigResult> {
        self.configs.iter().find(|c| c.key == key)
    }

    /// The median per-round ratio of `metric` between configurations `key` and `base`.
    pub fn ratio(&self, key: &str, base: &str, metric: fn(&Sample) -> Option<f64>) -> Option<f64> {
        let (config, base) = (self.config(key)?, self.config(base)?);
        median_ratio(&config.per_round(metric), &base.per_round(metric))
    }

    /// The targets, each with its verdict; a target not measured shows as unknown.
    pub fn evaluate_targets(&self) -> Vec<TargetRow> {
        let ratio_row = |what: &str, key, base, metric, at_most: bool, limit: f64| {
            let measured = self.ratio(key, base, metric);
            TargetRow {
                what: what.to_string(),
                target: format!("{} {limit:.2}×", if at_most { "≤" } else { "≥" }),
                measured: measured.map_or("not measured".into(), |r| format!("{r:.3}×")),
                verdict: if at_most {
                    Verdict::at_most(measured, limit)
                } else {
                    Verdict::at_least(measured, limit)
                },
            }
        };
        let instructions = |key, base| self.instructions.as_ref()?.ratio(key, base);
        let measured_text =
            |measured: Option<f64>| measured.map_or("not measured".into(), |r| format!("{r:.3}×"));
        let instruction_row = |what: &str, key, base| {
            let measured = instructions(key, base);
            TargetRow {
                what: what.to_string(),
                target: format!("≤ {COST_LIMIT:.2}×"),
                measured: measured_text(measured),
                verdict: Verdict::at_most(measured, COST_LIMIT),
            }
        };
        let informational = |what: &str, target: &str, measured: Option<f64>| TargetRow {
            what: what.to_string(),
            target: target.to_string(),
            measured: measured_text(measured),
            verdict: match measured {
                Some(_) => Verdict::Informational,
                None => Verdict::Unknown,
            },
        };
        let floor = instructions("g", "e");
        let own_work = instructions("c", "h");
        let size = self.sizes.meshcanary_wasm_bytes;
        let mut rows = vec![
            ratio_row(
                "(c) Envoy CPU per request vs (e) no-op",
                "c",
                "e",
                cpu,
                true,
                COST_LIMIT,
            ),
            instruction_row(
                "(c) Envoy instructions per request vs (e) no-op (callgrind)",
                "c",
                "e",
            ),
            TargetRow {
                what: "(g) a filter that only writes the header vs (e) no-op, Envoy instructions \
                       per request (callgrind)"
                    .into(),
                target: "none: the floor of any header-writing wasm filter".into(),
                measured: measured_text(floor),
                verdict: match floor {
                    Some(_) => Verdict::Informational,
                    None => Verdict::Unknown,
                },
            },
            TargetRow {
                what: "(c) vs (h), a no-op module with meshcanary's callbacks only, Envoy \
                       instructions per request (callgrind)"
                    .into(),
                target: "none: what meshcanary's own work costs".into(),
                measured: measured_text(own_work),
                verdict: match own_work {
                    Some(_) => Verdict::Informational,
                    None => Verdict::Unknown,
                },
            },
            ratio_row("(c) throughput vs (e) no-op", "c", "e", rps, false, 0.97),
            ratio_row(
                "(d) Envoy CPU per request vs (c)",
                "d",
                "c",
                cpu,
                true,
                COST_LIMIT,
            ),
            instruction_row(
                "(d) Envoy instructions per request vs (c) (callgrind)",
                "d",
                "c",
            ),
            ratio_row("(d) throughput vs (c)", "d", "c", rps, false, 0.97),
            informational(
                "(i) 100 routes vs (c) 1 route, Envoy instructions per request (callgrind)",
                "none: a route per service costs what one route costs",
                instructions("i", "c"),
            ),
            informational(
                "(j) 1 000 routes vs (c) 1 route, Envoy instructions per request (callgrind)",
                "none: a route per service costs what one route costs",
                instructions("j", "c"),
            ),
            informational(
                "(k) every feature on, at its dearest, vs (c), Envoy instructions per request (callgrind)",
                "none: the worst case next to (c)",
                instructions("k", "c"),
            ),
            informational(
                "(k) every feature on vs (c), Envoy CPU per request",
                "none: the worst case next to (c)",
                self.ratio("k", "c", cpu),
            ),
            TargetRow {
                what: "release .wasm size".into(),
                target: format!("≤ {}", kb(WASM_LIMIT_BYTES)),
                measured: format!("{} ({size} B)", kb(size)),
                verdict: Verdict::at_most(Some(size as f64), WASM_LIMIT_BYTES as f64),
            },
        ];
        rows.push(match &self.propagation {
            Some(p) => TargetRow {
                what: format!(
                    "propagation p99, API call → Envoy runs the generation ({} updates)",
                    p.to_envoy.count
                ),
                target: format!("≤ {}", millis(PROPAGATION_LIMIT_MS)),
                measured: format!(
                    "{} (p50 {}, max {})",
                    millis(p.to_envoy.p99_ms),
                    millis(p.to_envoy.p50_ms),
                    millis(p.to_envoy.max_ms)
                ),
                verdict: Verdict::at_most(Some(p.to_envoy.p99_ms), PROPAGATION_LIMIT_MS),
            },
            None => TargetRow {
                what: format!(
                    "propagation p99, API call → Envoy runs the generation ({} updates)",
                    self.settings.propagation_updates
                ),
                target: format!("≤ {}", millis(PROPAGATION_LIMIT_MS)),
                measured: "not measured".into(),
                verdict: Verdict::Unknown,
            },
        });
        rows
    }
}

/// Bytes as `12.3 KB` (1 KB = 1000 B).
pub fn kb(bytes: u64) -> String {
    format!("{:.1} KB", bytes as f64 / 1000.0)
}

/// Bytes as `12.3 MiB`, signed.
fn mib(bytes: i64) -> String {
    format!("{:+.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Milliseconds as `3.4 ms`, `123 ms` or `1.23 s`.
pub fn millis(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

/// A latency in µs as `653 µs` or `1.40 ms`.
pub fn latency(us: Option<f64>) -> String {
    match us {
        None => "–".into(),
        Some(us) if us < 1000.0 => format!("{us:.0} µs"),
        Some(us) => format!("{:.2} ms", us / 1000.0),
    }
}

fn ratio_text(ratio: Option<f64>) -> String {
    ratio.map_or("–".into(), |r| format!("{r:.3}×"))
}

fn number(value: Option<f64>, decimals: usize) -> String {
    value.map_or("–".into(), |v| format!("{v:.decimals$}"))
}

fn share_text(share: Option<f64>) -> String {
    share.map_or("–".into(), |s| format!("{:.1} %", s * 100.0))
}

/// `BENCHMARKS.md`: its sections in order.
pub fn markdown(results: &Results) -> String {
    let mut md = String::new();
    for section in [
        intro,
        machine_section,
        targets_section,
        envoy_section,
        instructions_section,
        host_calls_section,
        size_and_memory_section,
        split_section,
        decision_section,
        control_section,
        method_section,
    ] {
        section(&mut md, results);
    }
    md
}

/// The title, what the file is, and the warning on a quick run.
fn intro(md: &mut String, results: &Results) {
    let s = &results.settings;
    let _ = writeln!(md, "# meshcanary benchmarks\n");
    let _ = writeln!(
        md,
        "What the filter costs per request next to Envoy's native routing, how exact its split is, \
         how fast it decides, and how fast the control service's changes land. Written by `make bench` (`bench/`, issue 8); the raw numbers, every \
         round included, are in `bench/results.json`.\n"
    );
    if s.is_quick() {
        let _ = writeln!(
            md,
            "> **Quick run** ({} rounds × {} s per configuration): this checks the pipeline and gives \
             a first look, nothing more. Quote the numbers of a full run (the defaults, 5 rounds × 10 s) \
             on a quiet machine.\n",
            s.rounds, s.seconds
        );
    }
}

/// `## Machine and versions`, and how the run was made.
fn machine_section(md: &mut String, results: &Results) {
    let s = &results.settings;
    let m = &results.machine;
    let _ = writeln!(md, "## Machine and versions\n");
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| date | {} |", results.date);
    let _ = writeln!(
        md,
        "| CPU | {} × {} (`nproc` {}) |",
        m.nproc, m.cpu_model, m.nproc
    );
    let _ = writeln!(
        md,
        "| memory | {:.1} GiB |",
        m.memory_bytes as f64 / (1024.0 * 1024.0 * 1024.0)
    );
    let _ = writeln!(md, "| kernel | {} |", m.kernel);
    let _ = writeln!(
        md,
        "| load average (1, 5, 15 min) | before {} · after {} |",
        m.load_before, m.load_after
    );
    let v = &results.versions;
    let _ = writeln!(md, "| Envoy | {} |", v.envoy);
    let _ = writeln!(md, "| Rust | {} |", v.rustc);
    let _ = writeln!(md, "| wrk | {} |", v.wrk);
    let _ = writeln!(md, "| command | `{}` |", results.command);
    let _ = writeln!(
        md,
        "| load, per round and configuration | `{}` |",
        results.wrk_command
    );
    let _ = writeln!(
        md,
        "| rounds | {} alternating rounds × {} s per configuration (the order rotates each round), after {} s of unrecorded warm-up each |",
        s.rounds, s.seconds, s.warmup_seconds
    );
    let _ = writeln!(md);
}

/// `## Targets (issue 8)`, and the aim of beating the Lua filter.
fn targets_section(md: &mut String, results: &Results) {
    let _ = writeln!(md, "## Targets (issue 8)\n");
    let _ = writeln!(md, "| | target | measured | |\n|---|---|---|---|");
    for row in &results.targets {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            row.what,
            row.target,
            row.measured,
            row.verdict.mark()
        );
    }
    let aim = results.ratio("c", "f", cpu);
    let _ = writeln!(
        md,
        "\nAim, not a target: beat the one-line Lua filter (f). (c) Envoy CPU per request vs (f): {} {}.\n",
        ratio_text(aim),
        match aim {
            Some(r) if r < 1.0 => "✔ cheaper",
            Some(_) => "✘ not cheaper",
            None => "?",
        }
    );
}

/// `## Envoy, one worker`: the medians, the same as ratios, and every round's CPU per request.
fn envoy_section(md: &mut String, results: &Results) {
    let s = &results.settings;
    let _ = writeln!(
        md,
        "## Envoy, one worker: medians over {} rounds\n",
        s.rounds
    );
    let _ = writeln!(
        md,
        "| | configuration | req/s | p50 | p99 | Envoy CPU µs/req | to v2 | failed |\n|---|---|--:|--:|--:|--:|--:|--:|"
    );
    for config in &results.configs {
        let medians = config.medians();
        let _ = writeln!(
            md,
            "| ({}) | {} | {} | {} | {} | {} | {} | {} |",
            config.key,
            config.title,
            number(medians.requests_per_second, 0),
            latency(medians.p50),
            latency(medians.p99),
            number(medians.cpu_per_request, 2),
            share_text(config.canary_share()),
            config.failures()
        );
    }
    let _ = writeln!(
        md,
        "\nThe same as ratios: the median over rounds of each round's ratio.\n"
    );
    let _ = writeln!(
        md,
        "| | req/s vs (b) | p50 vs (b) | p99 vs (b) | CPU/req vs (b) | req/s vs (e) | CPU/req vs (e) |\n|---|--:|--:|--:|--:|--:|--:|"
    );
    let base_b = results.config("b");
    let base_e = results.config("e");
    for config in &results.configs {
        let vs_b = base_b.map(|b| config.ratios_to(b)).unwrap_or_default();
        let vs_e = match (config.key.as_str(), base_e) {
            ("c" | "d" | "g" | "h" | "i" | "j" | "k", Some(e)) => config.ratios_to(e),
            _ => Metrics::default(),
        };
        let _ = writeln!(
            md,
            "| ({}) | {} | {} | {} | {} | {} | {} |",
            config.key,
            ratio_text(vs_b.requests_per_second),
            ratio_text(vs_b.p50),
            ratio_text(vs_b.p99),
            ratio_text(vs_b.cpu_per_request),
            ratio_text(vs_e.requests_per_second),
            ratio_text(vs_e.cpu_per_request),
        );
    }
    let _ = writeln!(
        md,
        "\nEnvoy CPU µs per request, every round (the noise to judge the medians by):\n"
    );
    let mut header = "| |".to_string();
    let mut rule = "|---|".to_string();
    for round in 0..s.rounds {
        let _ = write!(header, " round {} |", round + 1);
        rule.push_str("--:|");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    for config in &results.configs {
        let cells: Vec<String> = config
            .samples
            .iter()
            .map(|sample| number(sample.cpu_us_per_request, 2))
            .collect();
        let _ = writeln!(md, "| ({}) | {} |", config.key, cells.join(" | "));
    }
    let _ = writeln!(md);
}

/// `## Size and memory`: the modules' sizes, the wasm memory stats, and Envoy's RSS against (b).
fn size_and_memory_section(md: &mut String, results: &Results) {
    let base_b = results.config("b");
    let _ = writeln!(md, "## Size and memory\n");
    let sizes = &results.sizes;
    let _ = writeln!(
        md,
        "- release module (`target/wasm32-wasip1/wasm-release/meshcanary.wasm`, after wasm-metadce and wasm-opt): {} ({} B); the no-op module: {} ({} B); the header-only module: {} ({} B); the bare no-op module: {} ({} B).",
        kb(sizes.meshcanary_wasm_bytes),
        sizes.meshcanary_wasm_bytes,
        kb(sizes.noop_wasm_bytes),
        sizes.noop_wasm_bytes,
        kb(sizes.header_wasm_bytes),
        sizes.header_wasm_bytes,
        kb(sizes.bare_noop_wasm_bytes),
        sizes.bare_noop_wasm_bytes
    );
    let memory_stats: Vec<&String> = results
        .memory
        .wasm_stats
        .iter()
        .filter(|line| line.contains("memory"))
        .collect();
    if memory_stats.is_empty() {
        let vm_count = results
            .memory
            .wasm_stats
            .iter()
            .find_map(|line| line.strip_prefix("wasm.wasm_vm_count: "))
            .unwrap_or("?");
        let _ = writeln!(
            md,
            "- Envoy {} exports no wasm memory gauge (its VM stats include {}), so VM memory is the \
             difference in Envoy's resident memory (VmRSS, after the load rounds) against (b), which \
             differs from (c), (d) and (e) only by the wasm filter. (c)'s Envoy runs {vm_count} wasm \
             VMs (`wasm.wasm_vm_count`) with its one worker: the delta covers all of them and V8 itself.",
            results.versions.envoy,
            if results.memory.wasm_stats.is_empty() {
                "none".to_string()
            } else {
                // The VM counts; the rest (reload and remote-load counters) is in results.json.
                results
                    .memory
                    .wasm_stats
                    .iter()
                    .filter(|line| line.contains("vm_count") || line.contains(".runtime."))
                    .map(|line| format!("`{line}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
    } else {
        for line in memory_stats {
            let _ = writeln!(md, "- `{line}`");
        }
    }
    let _ = writeln!(md, "\n| | Envoy RSS | vs (b) |\n|---|--:|--:|");
    let base_rss = base_b.and_then(|b| b.rss_bytes);
    for config in &results.configs {
        let rss = config.rss_bytes;
        let delta = match (rss, base_rss) {
            (Some(rss), Some(base)) => mib(rss as i64 - base as i64),
            _ => "–".into(),
        };
        let _ = writeln!(
            md,
            "| ({}) {} | {} | {} |",
            config.key,
            config.title,
            rss.map_or("–".into(), |rss| format!(
                "{:.1} MiB",
                rss as f64 / (1024.0 * 1024.0)
            )),
            delta
        );
    }
    let _ = writeln!(md);
}

/// `## Split accuracy` through (c).
fn split_section(md: &mut String, results: &Results) {
    let _ = writeln!(md, "## Split accuracy\n");
    match &results.split {
        Some(split) => {
            let _ = writeln!(
                md,
                "{} requests through (c) at 90/10 without a sticky key (each placed by the hash of \
                 Envoy's fresh `x-request-id`), over 16 keep-alive connections; counted by Envoy's \
                 `cluster.<name>.upstream_rq_completed`.\n",
                split.requests
            );
            let _ = writeln!(
                md,
                "| v1 | v2 | answered 200 | v2 share | vs 10 % | z (binomial) |\n|--:|--:|--:|--:|--:|--:|"
            );
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.3} % | {:+.3} points | {:+.2} |\n",
                split.v1,
                split.v2,
                split.ok,
                split.share * 100.0,
                split.deviation_points,
                split.z
            );
            let _ = writeln!(
                md,
                "A fair 90/10 coin lands within z = ±3 (±{:.2} points here) 99.7 % of the time.\n",
                3.0 * (0.09 / split.requests as f64).sqrt() * 100.0
            );
        }
        None => {
            let _ = writeln!(md, "Not measured in this run.\n");
        }
    }
}

/// `## The decision alone`: criterion's estimates.
fn decision_section(md: &mut String, results: &Results) {
    let s = &results.settings;
    let _ = writeln!(
        md,
        "## The decision alone (criterion, `filter/core/benches/choose.rs`)\n"
    );
    let _ = writeln!(
        md,
        "`choose()` on the host, release build, over the request's headers in the proxy-wasm wire format \
         that the filter gets from Envoy in one host call, looked up in place as the filter does. \
         Measured for {} s per case.\n",
        s.seconds.max(1)
    );
    let _ = writeln!(
        md,
        "| case | mean ns (95 % CI) | median ns |\n|---|--:|--:|"
    );
    for estimate in &results.micro {
        let _ = writeln!(
            md,
            "| {} | {:.0} ({:.0}–{:.0}) | {:.0} |",
            estimate.description,
            estimate.mean_ns,
            estimate.mean_low_ns,
            estimate.mean_high_ns,
            estimate.median_ns
        );
    }
    let _ = writeln!(md);
}

/// `## Method`: how the Envoy comparison is made.
fn method_section(md: &mut String, results: &Results) {
    let _ = writeln!(md, "## Method\n");
    let _ = writeln!(
        md,
        "- Eight Envoys, each started from its own bootstrap (`bench/envoy/*.yaml`), `--concurrency 1`, \
         loopback and ephemeral ports, all kept running through the run; each round loads each \
         configuration in turn, the order rotated every round, so slow drifts of the machine hit every \
         configuration alike.\n\
         - (a) one route to one cluster; (b) `weighted_clusters` 90/10 (what an Istio VirtualService \
         with weights compiles to); (c) the meshcanary filter (`envoy.filters.http.wasm`, V8, \
         pluginConfig inline as a StringValue, `FAIL_CLOSED` so a broken VM shows as failed requests) \
         at 90/10 with routes matching `x-meshcanary-variant`; (d) the same with a sticky header and \
         10 QA rules (6 header, 2 cookie, 2 query) that do not match; (e) a proxy-wasm filter that does \
         nothing (`bench/noop-filter`, proxy-wasm 0.2.5, the same `wasm-release` profile) in front of \
         (b)'s routes, so (c) − (e) is the price of splitting in the filter instead of natively once a \
         wasm filter is there anyway; (f) a Lua filter \
         `headers():replace(\"x-meshcanary-variant\", math.random() < 0.1 and \"v2\" or \"v1\")` with \
         (c)'s routes; (g) a proxy-wasm filter that only writes `x-meshcanary-variant: v1` \
         (`bench/header-filter`, built like (e)'s) with (c)'s routes: the issue's calibration filter, \
         the floor of any wasm filter that routes by writing the header, so (c) − (g) is the price of \
         meshcanary's decision itself; (h) a module that does nothing, written against the ABI without \
         the SDK (`bench/bare-noop-filter`) and exporting exactly the meshcanary module's entry points \
         (`filter/wasm/exports.txt`), in front of (b)'s routes: the least a wasm filter with \
         meshcanary's per-request callbacks (context create, request headers, response headers, log, \
         delete) pays. (e) and (g), built with the SDK, export every callback of the ABI, and Envoy \
         calls each one a module exports (the response body's too); the meshcanary module exports only \
         the callbacks it implements, so (c) − (h) is meshcanary's own work.\n\
         - Every configuration gets the same requests: `Host: reviews`, a sticky key \
         `x-user-id: user-0042` and a small cookie. The key is the same in every request, so (d) sends \
         all of them to one variant; the cost of hashing does not depend on the key.\n\
         - Envoy CPU per request: utime + stime of the Envoy process (all threads) from \
         `/proc/<pid>/stat`, over the round, divided by the requests wrk completed. Resolution: one \
         clock tick ({} per second). It does not move with what else runs on the machine the way \
         requests per second do.\n\
         - Ratios are the median over rounds of each round's ratio.\n\
         - The upstream is a one-thread hyper server in the bench process that answers `200 ok`. Not \
         Envoy's `direct_response` on a second listener: with one worker that listener would run on \
         the thread being measured and add the same cost to every configuration, pulling every ratio \
         towards 1; a second Envoy would spend more CPU per request than this, on a machine where wrk, \
         the Envoy under test and the upstream already share 2 cores.\n\
         - The \"to v2\" column is the share of each configuration's requests that `reviews-v2` \
         completed (Envoy cluster stats): a check that every configuration really splits.",
        results.clock_ticks_per_second
    );
}

/// `## Envoy instructions per request (callgrind)`.
fn instructions_section(md: &mut String, results: &Results) {
    let _ = writeln!(md, "## Envoy instructions per request (callgrind)\n");
    let Some(callgrind) = &results.instructions else {
        let _ = writeln!(md, "Not measured in this run (`BENCH_CALLGRIND=0`).\n");
        return;
    };
    let _ = writeln!(
        md,
        "Counted by {}'s callgrind: each configuration's Envoy (one worker, the bootstrap of the \
         rounds above) runs under `valgrind --tool=callgrind`, gets {} requests of warm-up, then its \
         counters are zeroed and it gets {} requests — wrk's, the same headers and path — over one \
         keep-alive connection, one after another, every one answered 200. The figure is every \
         instruction any of Envoy's threads ran in user space meanwhile, divided by the requests. \
         Unlike CPU time it does not move with the machine's load: it is nearly deterministic, \
         re-runs of 1000 requests agree within 0.3 % (what varies is the timer work of Envoy's \
         threads that falls into the window), so ratios within 0.3 % of a target are a tie. It counts instructions, not their cost in time (cache misses, stalls) \
         nor the kernel's work for Envoy's system calls, so it compares configurations rather than \
         timing them. {} configurations, {} at a time, took {}.\n",
        callgrind.valgrind,
        callgrind.warmup_requests,
        callgrind.requests,
        callgrind.configs.len(),
        crate::instructions::PARALLEL,
        duration(callgrind.seconds)
    );
    let _ = writeln!(
        md,
        "| | configuration | instructions/request | vs (b) | vs (e) | vs (h) |\n|---|---|--:|--:|--:|--:|"
    );
    for config in &callgrind.configs {
        let _ = writeln!(
            md,
            "| ({}) | {} | {} | {} | {} | {} |",
            config.key,
            config.title,
            grouped(config.per_request.round() as u64),
            ratio_text(callgrind.ratio(&config.key, "b")),
            ratio_text(callgrind.ratio(&config.key, "e")),
            ratio_text(callgrind.ratio(&config.key, "h")),
        );
    }
    let _ = writeln!(md);
}

/// `## What each host call costs`: the probe's ladder, right after the instruction counts.
fn host_calls_section(md: &mut String, results: &Results) {
    let _ = writeln!(md, "## What each host call costs\n");
    let Some(ladder) = &results.host_calls else {
        let _ = writeln!(md, "Not measured in this run (`BENCH_CALLGRIND=0`).\n");
        return;
    };
    let _ = writeln!(
        md,
        "Envoy instructions per request, counted as above ({} requests of warm-up, {} counted, {} \
         operations, {} at a time, took {}), with the probe module (`bench/probe-filter`) instead of \
         the filter. The probe does exactly one operation per request on (c)'s routes, nothing else; \
         `none` does nothing, so the difference to it is what that one host call costs Envoy (a call \
         that returns data makes Envoy call back into the VM to allocate the buffer).\n",
        ladder.warmup_requests,
        ladder.requests,
        ladder.operations.len(),
        crate::instructions::PARALLEL,
        duration(ladder.seconds)
    );
    let _ = writeln!(
        md,
        "| operation | | instructions/request | vs `none` |\n|---|---|--:|--:|"
    );
    for call in &ladder.operations {
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {} |",
            call.operation,
            call.description,
            grouped(call.per_request.round() as u64),
            call.over_none.map_or("–".to_string(), signed),
        );
    }
    let _ = writeln!(md);
}

/// A difference of instructions, signed and grouped: `+10 512`, `−87`, `0`.
pub fn signed(value: f64) -> String {
    let rounded = value.round();
    let magnitude = grouped(rounded.abs() as u64);
    if rounded > 0.0 {
        format!("+{magnitude}")
    } else if rounded < 0.0 {
        format!("−{magnitude}")
    } else {
        magnitude
    }
}

/// A whole number with its digits in groups of three: `230 412`.
pub fn grouped(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(digit);
    }
    out
}

/// Seconds as `45 s` or `4 min 10 s`.
pub fn duration(seconds: f64) -> String {
    let whole = seconds.round() as u64;
    match (whole / 60, whole % 60) {
        (0, s) => format!("{s} s"),
        (m, s) => format!("{m} min {s} s"),
    }
}

/// `## Control service`: propagation and status reads.
fn control_section(md: &mut String, results: &Results) {
    let _ = writeln!(md, "## Control service\n");
    let rollouts = results
        .status_reads
        .first()
        .map_or("its".to_string(), |reads| reads.rollouts.to_string());
    let _ = writeln!(
        md,
        "`meshcanary serve` (`{}`) in standalone mode: it writes the ECDS file of an Envoy running \
         `envoy-config/standalone.yaml` (the filter delivered through that file, `--concurrency 1`) \
         and reads which generation that Envoy runs from its admin endpoint every {:.0} ms. It holds \
         {rollouts} rollouts, each on a route of its own and paused at 10 %. Loopback, ephemeral \
         ports.\n",
        results.control_binary,
        results
            .propagation
            .as_ref()
            .map_or(200.0, |p| p.observe_interval_ms)
    );
    propagation_section(md, results);
    status_reads_section(md, results);
}

/// `### Propagation`: how long a weight update takes to reach Envoy and the service's report.
fn propagation_section(md: &mut String, results: &Results) {
    let s = &results.settings;
    let _ = writeln!(
        md,
        "### Propagation: {} weight updates\n",
        s.propagation_updates
    );
    match &results.propagation {
        Some(p) => {
            let _ = writeln!(
                md,
                "`PUT /v1/rollouts/{}/weight`, 20 % and 30 % in turn, one at a time; each timed from \
                 sending the request until:\n",
                p.rollout
            );
            let _ = writeln!(md, "| | p50 | p99 | max | |\n|---|--:|--:|--:|---|");
            let row = |what: String, summary: &crate::summary::LatencySummary, mark: &str| {
                format!(
                    "| {what} | {} | {} | {} | {mark} |",
                    millis(summary.p50_ms),
                    millis(summary.p99_ms),
                    millis(summary.max_ms)
                )
            };
            let verdict = Verdict::at_most(Some(p.to_envoy.p99_ms), PROPAGATION_LIMIT_MS);
            let _ = writeln!(
                md,
                "{}",
                row(
                    "the API answered (state saved, ECDS file written)".into(),
                    &p.api,
                    ""
                )
            );
            let _ = writeln!(
                md,
                "{}",
                row(
                    format!(
                        "**Envoy runs it**: its `meshcanary_config_generation` shows the new \
                         generation (read from the moment the request is sent, {:.0} ms between \
                         reads)",
                        p.envoy_poll_ms
                    ),
                    &p.to_envoy,
                    &format!("{} p99 ≤ {}", verdict.mark(), millis(PROPAGATION_LIMIT_MS))
                )
            );
            let _ = writeln!(
                md,
                "{}",
                row(
                    format!(
                        "the service reports it applied on every proxy (`propagation` in \
                         `GET /v1/rollouts/{{name}}`, {:.0} ms between reads)",
                        p.service_poll_ms
                    ),
                    &p.to_service,
                    ""
                )
            );
            let lag: Vec<f64> = p
                .updates
                .iter()
                .map(|u| u.service_ms - u.envoy_ms)
                .collect();
            let _ = writeln!(
                md,
                "\nThe service reports a weight applied {} after Envoy runs it (median over the \
                 updates) because it does not watch Envoy: it learns what Envoy runs only from its \
                 own scrape of Envoy's admin endpoint every {:.0} ms, so its report waits for the \
                 next scrape — up to one interval, half of one on average, as the updates are spaced \
                 to land at every phase of that tick. Envoy reads the ECDS file on a filesystem \
                 event; the gauge is one stat that each of the filter's VMs (the main thread's and \
                 the worker's) sets in `on_configure`, so it shows the first VM to apply the \
                 generation — the same signal the service's own check reads.\n",
                median(&lag).map_or("–".into(), millis),
                p.observe_interval_ms
            );
        }
        None => {
            let _ = writeln!(md, "Not measured in this run.\n");
        }
    }
}

/// `### Status reads`: the rate of the API's reads and what each costs the service.
fn status_reads_section(md: &mut String, results: &Results) {
    let s = &results.settings;
    let _ = writeln!(md, "### Status reads\n");
    if results.status_reads.is_empty() {
        let _ = writeln!(md, "Not measured in this run.\n");
        return;
    }
    let _ = writeln!(
        md,
        "`{}`, {} × {} s per endpoint after {} s of unrecorded warm-up each; medians over the \
         rounds. Reads need no token (the service's default). Service CPU: utime + stime of \
         `meshcanary serve` from `/proc/<pid>/stat` over the round, per request; its loops (the \
         200 ms scrape of Envoy) run meanwhile and are included.\n",
        crate::wrk::command_line(&crate::wrk::api_args(
            "http://127.0.0.1:<port><path>",
            s.seconds
        )),
        match s.rounds {
            1 => "1 round".to_string(),
            rounds => format!("{rounds} alternating rounds"),
        },
        s.seconds,
        s.warmup_seconds.max(1)
    );
    let _ = writeln!(
        md,
        "| endpoint | answer | req/s | p50 | p99 | service CPU µs/req | failed |\n|---|--:|--:|--:|--:|--:|--:|"
    );
    for reads in &results.status_reads {
        let medians = reads.medians();
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {} | {} | {} | {} |",
            reads.endpoint,
            kb(reads.body_bytes as u64),
            number(medians.requests_per_second, 0),
            latency(medians.p50_us),
            latency(medians.p99_us),
            number(medians.cpu_us_per_request, 1),
            reads.failures()
        );
    }
    let _ = writeln!(md);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(round: usize, rps: f64, cpu: f64) -> Sample {
        Sample {
            round,
            position: 0,
            wrk: WrkReport {
                requests: (rps * 10.0) as u64,
                seconds: 10.0,
                requests_per_second: rps,
                p50_us: 500.0,
                p99_us: 1500.0,
                non_2xx: 0,
                socket_errors: 0,
            },
            cpu_ticks: 0,
            cpu_us_per_request: Some(cpu),
            canary_share: Some(0.1),
        }
    }

    fn config(key: &str, rounds: &[(f64, f64)]) -> ConfigResult {
        ConfigResult {
            key: key.into(),
            title: format!("config {key}"),
            template: "x.yaml".into(),
            samples: rounds
                .iter()
                .enumerate()
                .map(|(round, (rps, cpu))| sample(round, *rps, *cpu))
                .collect(),
            rss_bytes: Some(50 << 20),
        }
    }

    fn results(c_cpu: f64, wasm_bytes: u64) -> Results {
        Results {
            date: "2026-01-01 00:00 UTC".into(),
            machine: Machine {
                nproc: 2,
                cpu_model: "AMD EPYC".into(),
                memory_bytes: 24 << 30,
                kernel: "6.1".into(),
                load_before: "0.1 0.2 0.3".into(),
                load_after: "1.0 0.5 0.4".into(),
            },
            versions: Versions {
                envoy: "1.40.0".into(),
                rustc: "rustc 1.95.0".into(),
                wrk: "wrk 4.1.0".into(),
            },
            command: "make bench".into(),
            wrk_command: "wrk -t2 -c16 -d10s --latency URL".into(),
            settings: Settings {
                rounds: 2,
                seconds: 3,
                warmup_seconds: 1,
                split_requests: 100_000,
                propagation_updates: 100,
                callgrind: false,
                callgrind_requests: 1000,
                connections: 16,
                threads: 2,
            },
            clock_ticks_per_second: 100,
            configs: vec![
                config("a", &[(12_000.0, 40.0), (11_000.0, 44.0)]),
                config("b", &[(10_000.0, 50.0), (9_000.0, 55.0)]),
                config("c", &[(8_000.0, c_cpu), (7_200.0, c_cpu * 1.1)]),
                config("d", &[(7_900.0, c_cpu * 1.01), (7_100.0, c_cpu * 1.111)]),
                config("e", &[(8_200.0, 60.0), (7_400.0, 66.0)]),
                config("f", &[(8_300.0, 59.0), (7_500.0, 65.0)]),
                config("g", &[(8_100.0, 61.0), (7_300.0, 67.0)]),
            ],
            instructions: None,
            host_calls: None,
            sizes: Sizes {
                meshcanary_wasm_bytes: wasm_bytes,
                noop_wasm_bytes: 20_000,
                header_wasm_bytes: 20_100,
                bare_noop_wasm_bytes: 900,
            },
            memory: Memory { wasm_stats: vec![] },
            split: SplitReport::from_counts(100_000, 100_000, 90_050, 9_950, 0.1),
            micro: vec![],
            control_binary: "target/release/meshcanary".into(),
            propagation: None,
            status_reads: vec![],
            targets: vec![],
        }
    }

    /// Callgrind counts: (a) 167k, (b) 168k, (c) `c`, (d) `d`, (e) 188k, (f) 170k, (g) 198k.
    fn callgrind(c: f64, d: f64) -> Callgrind {
        let per_request = [
            ("a", 167_000.0),
            ("b", 168_000.0),
            ("c", c),
            ("d", d),
            ("e", 188_000.0),
            ("f", 170_000.0),
            ("g", 198_000.0),
            ("h", 180_000.0),
        ];
        Callgrind {
            valgrind: "valgrind-3.19.0".into(),
            requests: 1000,
            warmup_requests: 200,
            seconds: 250.0,
            configs: per_request
                .iter()
                .map(|(key, per_request)| crate::instructions::InstructionCount {
                    key: key.to_string(),
                    title: format!("config {key}"),
                    instructions: (per_request * 1000.0) as u64,
                    per_request: *per_request,
                })
                .collect(),
        }
    }

    /// A ladder of the probe's `operations` (per request), counted over 1000 requests in 130 s.
    fn host_calls(operations: &[(crate::ladder::Operation, f64)]) -> HostCalls {
        HostCalls::from_counts(Callgrind {
            valgrind: "valgrind-3.19.0".into(),
            requests: 1000,
            warmup_requests: 200,
            seconds: 130.0,
            configs: operations
                .iter()
                .map(
                    |(operation, per_request)| crate::instructions::InstructionCount {
                        key: operation.name().into(),
                        title: operation.description().into(),
                        instructions: (per_request * 1000.0) as u64,
                        per_request: *per_request,
                    },
                )
                .collect(),
        })
    }

    /// The target row whose description starts with `prefix`.
    fn row<'a>(rows: &'a [TargetRow], prefix: &str) -> &'a TargetRow {
        rows.iter()
            .find(|row| row.what.starts_with(prefix))
            .unwrap_or_else(|| panic!("no row {prefix:?} in {rows:?}"))
    }

    #[test]
    fn cpu_per_request() {
        let cases = [
            (250, 100, 50_000, Some(50.0)),
            (1, 100, 1, Some(10_000.0)),
            (250, 100, 0, None),
            (250, 0, 10, None),
        ];
        for (ticks, hz, requests, expected) in cases {
            assert_eq!(cpu_us_per_request(ticks, hz, requests), expected);
        }
    }

    #[test]
    fn ratios_are_medians_of_per_round_ratios() {
        let r = results(61.2, 100_000);
        let c = r.config("c").unwrap();
        let e = r.config("e").unwrap();
        // Round ratios: 61.2/60 = 1.02 and 67.32/66 = 1.02.
        let ratio = c.ratios_to(e).cpu_per_request.unwrap();
        assert!((ratio - 1.02).abs() < 1e-9, "{ratio}");
        let median = c.medians().cpu_per_request.unwrap();
        assert!(
            (median - (61.2 + 61.2 * 1.1) / 2.0).abs() < 1e-9,
            "{median}"
        );
    }

    #[test]
    fn targets_say_met_and_missed() {
        let met = results(61.2, 100_000).evaluate_targets();
        let verdicts: Vec<(String, Verdict)> = met
            .iter()
            .map(|row| (row.what.clone(), row.verdict))
            .collect();
        assert_eq!(
            verdicts.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
            vec![
                Verdict::Met,     // c CPU 1.02 ≤ 1.03
                Verdict::Unknown, // c instructions: callgrind skipped
                Verdict::Unknown, // g instructions: callgrind skipped
                Verdict::Unknown, // c vs h instructions: callgrind skipped
                Verdict::Met,     // c rps 8000/8200 = 0.976 ≥ 0.97
                Verdict::Met,     // d CPU 1.01 / 1.01 ≤ 1.03
                Verdict::Unknown, // d instructions: callgrind skipped
                Verdict::Met,     // d rps 0.9875 ≥ 0.97
                Verdict::Unknown, // i instructions: callgrind skipped
                Verdict::Unknown, // j instructions: callgrind skipped
                Verdict::Unknown, // k instructions: callgrind skipped
                Verdict::Unknown, // k CPU: (k) not in these results
                Verdict::Met,     // 100 KB ≤ 150 KB
                Verdict::Unknown, // propagation: not measured
            ],
            "{verdicts:?}"
        );
        let missed = results(66.0, 150_001).evaluate_targets();
        let cases = [
            ("(c) Envoy CPU", Verdict::Missed, "1.100×"),
            ("release .wasm size", Verdict::Missed, "150.0 KB (150001 B)"),
            ("propagation p99", Verdict::Unknown, "not measured"),
            ("(c) Envoy instructions", Verdict::Unknown, "not measured"),
            ("(g) a filter", Verdict::Unknown, "not measured"),
        ];
        for (prefix, verdict, measured) in cases {
            let row = row(&missed, prefix);
            assert_eq!(
                (row.verdict, row.measured.as_str()),
                (verdict, measured),
                "{row:?}"
            );
        }
    }

    #[test]
    fn instruction_targets() {
        // (c, d) instructions per request; the verdicts of (c) vs (e), (d) vs (c) and the (g) row.
        type Case = ((f64, f64), [(Verdict, &'static str); 3]);
        let cases: [Case; 3] = [
            (
                (230_000.0, 238_000.0),
                [
                    (Verdict::Missed, "1.223×"),
                    (Verdict::Missed, "1.035×"),
                    (Verdict::Informational, "1.053×"),
                ],
            ),
            (
                (193_000.0, 198_000.0),
                [
                    (Verdict::Met, "1.027×"),
                    (Verdict::Met, "1.026×"),
                    (Verdict::Informational, "1.053×"),
                ],
            ),
            (
                (193_000.0, 200_000.0),
                [
                    (Verdict::Met, "1.027×"),
                    (Verdict::Missed, "1.036×"),
                    (Verdict::Informational, "1.053×"),
                ],
            ),
        ];
        for ((c, d), expected) in cases {
            let mut r = results(61.2, 100_000);
            r.instructions = Some(callgrind(c, d));
            let rows = r.evaluate_targets();
            let got: Vec<(Verdict, &str)> = [
                "(c) Envoy instructions",
                "(d) Envoy instructions",
                "(g) a filter",
            ]
            .iter()
            .map(|prefix| {
                let row = row(&rows, prefix);
                (row.verdict, row.measured.as_str())
            })
            .collect();
            assert_eq!(got, expected, "c {c} d {d}");
            let floor = row(&rows, "(g)");
            assert_eq!(floor.verdict.mark(), "");
            assert!(floor
                .target
                .contains("floor of any header-writing wasm filter"));
        }
    }

    #[test]
    fn the_report_shows_the_instruction_counts() {
        let mut r = results(61.2, 100_000);
        r.instructions = Some(callgrind(230_400.0, 238_000.0));
        r.targets = r.evaluate_targets();
        let md = markdown(&r);
        for expected in [
            "## Envoy instructions per request (callgrind)\n",
            "Counted by valgrind-3.19.0's callgrind",
            "gets 200 requests of warm-up",
            "it gets 1000 requests",
            "re-runs of 1000 requests agree within 0.3 %",
            "8 configurations, 2 at a time, took 4 min 10 s.",
            "| | configuration | instructions/request | vs (b) | vs (e) | vs (h) |\n|---|---|--:|--:|--:|--:|\n\
             | (a) | config a | 167 000 | 0.994× | 0.888× | 0.928× |\n\
             | (b) | config b | 168 000 | 1.000× | 0.894× | 0.933× |\n\
             | (c) | config c | 230 400 | 1.371× | 1.226× | 1.280× |\n",
            "| (h) | config h | 180 000 | 1.071× | 0.957× | 1.000× |\n\n## What each host call costs\n\n\
             Not measured in this run (`BENCH_CALLGRIND=0`).\n\n## Size and memory",
            "| (c) vs (h), a no-op module with meshcanary's callbacks only, Envoy instructions per \
             request (callgrind) | none: what meshcanary's own work costs | 1.280× |  |",
            "| (c) Envoy instructions per request vs (e) no-op (callgrind) | ≤ 1.03× | 1.226× | ✘ |",
            "| (d) Envoy instructions per request vs (c) (callgrind) | ≤ 1.03× | 1.033× | ✘ |",
            "| (g) a filter that only writes the header vs (e) no-op, Envoy instructions per request \
             (callgrind) | none: the floor of any header-writing wasm filter | 1.053× |  |",
            "the header-only module: 20.1 KB (20100 B)",
        ] {
            assert!(md.contains(expected), "missing {expected:?} in\n{md}");
        }
        r.instructions = None;
        assert!(markdown(&r).contains(
            "## Envoy instructions per request (callgrind)\n\nNot measured in this run (`BENCH_CALLGRIND=0`)."
        ));
    }

    #[test]
    fn the_report_shows_what_each_host_call_costs() {
        use crate::ladder::Operation;
        let mut r = results(61.2, 100_000);
        r.instructions = Some(callgrind(230_400.0, 238_000.0));
        r.host_calls = Some(host_calls(&[
            (Operation::None, 190_000.4),
            (Operation::ReadHeader, 200_512.0),
            (Operation::Clock, 189_900.0),
        ]));
        let md = markdown(&r);
        for expected in [
            "| (h) | config h | 180 000 | 1.071× | 0.957× | 1.000× |\n\n## What each host call costs\n\n",
            "(200 requests of warm-up, 1000 counted, 3 operations, 2 at a time, took 2 min 10 s)",
            "The probe does exactly one operation per request on (c)'s routes, nothing else",
            "a call that returns data makes Envoy call back into the VM to allocate the buffer",
            "| operation | | instructions/request | vs `none` |\n|---|---|--:|--:|\n\
             | `none` | nothing (the baseline) | 190 000 | 0 |\n\
             | `read-header` | read one request header (`:authority`) | 200 512 | +10 512 |\n\
             | `clock` | read the clock in `on_log` | 189 900 | −100 |\n\n## Size and memory",
        ] {
            assert!(md.contains(expected), "missing {expected:?} in\n{md}");
        }
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["hostCalls"]["operations"][1]["operation"],
            "read-header"
        );
        let over_none = json["hostCalls"]["operations"][1]["overNone"].as_f64();
        assert!(
            over_none.is_some_and(|over| (over - 10_511.6).abs() < 1e-6),
            "{over_none:?}"
        );
        assert_eq!(json["hostCalls"]["requests"], 1000);
    }

    #[test]
    fn signed_differences() {
        let cases = [
            (0.0, "0"),
            (0.4, "0"),
            (-0.4, "0"),
            (10_511.6, "+10 512"),
            (-100.0, "−100"),
            (1_234_567.0, "+1 234 567"),
        ];
        for (value, expected) in cases {
            assert_eq!(signed(value), expected, "{value}");
        }
    }

    #[test]
    fn grouped_numbers_and_durations() {
        let cases = [
            (0, "0"),
            (999, "999"),
            (1000, "1 000"),
            (230_412, "230 412"),
            (1_234_567, "1 234 567"),
        ];
        for (value, expected) in cases {
            assert_eq!(grouped(value), expected);
        }
        let cases = [
            (0.4, "0 s"),
            (45.2, "45 s"),
            (59.6, "1 min 0 s"),
            (250.0, "4 min 10 s"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(duration(seconds), expected);
        }
    }

    #[test]
    fn the_report_shows_misses_todos_and_the_quick_run_warning() {
        let mut r = results(66.0, 150_001);
        r.targets = r.evaluate_targets();
        let md = markdown(&r);
        for expected in [
            "**Quick run**",
            "| (c) Envoy CPU per request vs (e) no-op | ≤ 1.03× | 1.100× | ✘ |",
            "| release .wasm size | ≤ 150.0 KB | 150.0 KB (150001 B) | ✘ |",
            "| propagation p99, API call → Envoy runs the generation (100 updates) | ≤ 1.00 s | not measured | ? |",
            "### Status reads\n\nNot measured in this run.",
            "| (b) | 1.000× |",
            "| 90050 | 9950 | 100000 | 9.950 % | -0.050 points | -0.53 |",
            "`make bench`",
            "AMD EPYC",
        ] {
            assert!(md.contains(expected), "missing {expected:?} in\n{md}");
        }
        r.settings.rounds = 5;
        r.settings.seconds = 10;
        assert!(!markdown(&r).contains("Quick run"));
    }

    #[test]
    fn memory_names_the_vm_count_and_the_rss_deltas() {
        let mut r = results(61.2, 100_000);
        r.memory.wasm_stats = vec![
            "wasm.wasm_vm_count: 3".into(),
            "wasm.meshcanary.vm_reload: 0".into(),
        ];
        r.configs[2].rss_bytes = Some(85 << 20);
        let md = markdown(&r);
        assert!(md.contains("`wasm.wasm_vm_count: 3`"), "{md}");
        assert!(md.contains("runs 3 wasm VMs"), "{md}");
        assert!(!md.contains("vm_reload"), "{md}");
        assert!(
            md.contains("| (c) config c | 85.0 MiB | +35.0 MiB |"),
            "{md}"
        );
    }

    #[test]
    fn measured_control_numbers_are_reported() {
        use crate::propagation::Update;
        use crate::status_reads::ReadSample;
        let mut r = results(61.2, 100_000);
        // Envoy at 10 + i ms, the service 100 ms after it; the slowest reaches Envoy in 1.2 s.
        let updates: Vec<Update> = (0..100u32)
            .map(|i| Update {
                basis_points: 2000,
                generation: u64::from(i) + 7,
                api_ms: 3.0,
                envoy_ms: if i == 99 { 1200.0 } else { 10.0 + f64::from(i) },
                service_ms: if i == 99 {
                    1300.0
                } else {
                    110.0 + f64::from(i)
                },
            })
            .collect();
        r.propagation = Propagation::from_updates("reviews-canary", updates);
        r.instructions = Some(callgrind(230_000.0, 238_000.0));
        r.host_calls = Some(host_calls(&[(crate::ladder::Operation::None, 190_000.0)]));
        let wrk = WrkReport {
            requests: 27_000,
            seconds: 3.0,
            requests_per_second: 9000.0,
            p50_us: 1500.0,
            p99_us: 4000.0,
            non_2xx: 0,
            socket_errors: 0,
        };
        r.status_reads = vec![StatusReads {
            endpoint: "GET /v1/rollouts/{name}".into(),
            path: "/v1/rollouts/reviews-canary".into(),
            body_bytes: 2100,
            rollouts: 5,
            connections: 16,
            samples: vec![ReadSample {
                round: 0,
                wrk,
                service_cpu_ticks: 300,
                service_cpu_us_per_request: Some(111.1),
            }],
        }];
        r.targets = r.evaluate_targets();
        // p99 of 100 updates is the second slowest (108 ms): met, though the slowest took 1.2 s.
        let propagation = row(&r.targets, "propagation p99");
        assert_eq!(propagation.verdict, Verdict::Met, "{propagation:?}");
        assert_eq!(propagation.measured, "108 ms (p50 59 ms, max 1.20 s)");
        let md = markdown(&r);
        for expected in [
            "| propagation p99, API call → Envoy runs the generation (100 updates) | ≤ 1.00 s | 108 ms (p50 59 ms, max 1.20 s) | ✔ |",
            "It holds 5 rollouts",
            "### Propagation: 100 weight updates",
            "`PUT /v1/rollouts/reviews-canary/weight`",
            "| the API answered (state saved, ECDS file written) | 3.0 ms | 3.0 ms | 3.0 ms |  |",
            "1 ms between reads) | 59 ms | 108 ms | 1.20 s | ✔ p99 ≤ 1.00 s |",
            "5 ms between reads) | 159 ms | 208 ms | 1.30 s |  |",
            "applied 100 ms after Envoy runs it",
            "`wrk -t2 -c16 -d3s --latency http://127.0.0.1:<port><path>`, 2 alternating rounds × 3 s",
            "| `GET /v1/rollouts/{name}` | 2.1 KB | 9000 | 1.50 ms | 4.00 ms | 111.1 | 0 |",
        ] {
            assert!(md.contains(expected), "missing {expected:?} in\n{md}");
        }
        assert!(!md.contains("Not measured"), "{md}");
        assert!(!md.contains("TODO"), "{md}");
    }

    #[test]
    fn latencies_and_sizes() {
        let cases = [
            (Some(653.0), "653 µs"),
            (Some(1400.0), "1.40 ms"),
            (None, "–"),
        ];
        for (us, expected) in cases {
            assert_eq!(latency(us), expected);
        }
        assert_eq!(kb(150_000), "150.0 KB");
        let cases = [
            (3.04, "3.0 ms"),
            (9.96, "10.0 ms"),
            (123.4, "123 ms"),
            (999.4, "999 ms"),
            (1000.0, "1.00 s"),
            (1234.0, "1.23 s"),
        ];
        for (ms, expected) in cases {
            assert_eq!(millis(ms), expected, "{ms}");
        }
        assert_eq!(mib(-(3 << 20)), "-3.0 MiB");
    }
}
