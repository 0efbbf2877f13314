//! Envoy instructions per request, counted by valgrind's callgrind: a measure of what each
//! configuration costs that, unlike CPU time from /proc, does not move with the machine's load (on a
//! shared 2-core machine CPU time per request varies by ±10 % from round to round; re-runs of this
//! with 1000 requests agree within 0.3 %: only the timer work of Envoy's threads that falls into the
//! counted window varies).
//!
//! For each configuration: Envoy (one worker) runs under `valgrind --tool=callgrind`, gets
//! [`WARMUP_REQUESTS`] requests over one keep-alive connection, then its counters are zeroed
//! (`callgrind_control -z`), it gets the measured requests over one keep-alive connection, one after
//! another, every one of which must be answered 200, and the counters are dumped
//! (`callgrind_control -d`). The dump's total, divided by the requests, is the figure: every
//! instruction any of Envoy's threads ran in that window, the main thread's timers included. The
//! requests are wrk's ([`crate::wrk::HEADERS`], [`crate::wrk::PATH`]).
//!
//! [`PARALLEL`] configurations run at a time: counts do not depend on how fast the machine runs them.

use crate::client;
use crate::envoy::{self, Envoy};
use crate::scenario::{Modules, Scenario};
use crate::summary::ratio;
use anyhow::{bail, Context};
use meshcanary_testkit::envoy::Options;
use meshcanary_testkit::process::{self, Process};
use meshcanary_testkit::upstream::Upstream;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Requests before the counters are zeroed (V8 tiers the module up, the upstream connection opens).
pub const WARMUP_REQUESTS: u64 = 200;

/// Configurations measured at the same time (the machine has 2 cores).
pub const PARALLEL: usize = 2;

/// How long Envoy may take to come up under valgrind: 20–40 s is usual, but a config of 1 000
/// routes ((j), (k)) defines ~34 000 stats at startup, each through Envoy's tag extraction, which
/// takes minutes under valgrind (about 1.4 s natively).
const READY_WITHIN: Duration = Duration::from_secs(900);

/// How long `callgrind_control` may take, and the dump to appear.
const CONTROL_WITHIN: Duration = Duration::from_secs(60);

/// How long Envoy may take to exit after `/quitquitquit` under valgrind.
const QUIT_WITHIN: Duration = Duration::from_secs(60);

/// The instruction counts of a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Callgrind {
    /// `valgrind --version`.
    pub valgrind: String,
    /// Requests counted per configuration (`BENCH_CALLGRIND_REQUESTS`).
    pub requests: u64,
    /// Requests before the counters were zeroed.
    pub warmup_requests: u64,
    /// Wall-clock seconds the whole measurement took.
    pub seconds: f64,
    /// One per configuration (or probe operation), in report order.
    pub configs: Vec<InstructionCount>,
}

/// One configuration's count.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstructionCount {
    /// `a` … `g`.
    pub key: String,
    /// What it is.
    pub title: String,
    /// Instructions Envoy ran over the counted requests (callgrind's `Ir` total).
    pub instructions: u64,
    /// `instructions / requests`.
    pub per_request: f64,
}

impl Callgrind {
    /// Instructions per request of configuration `key`.
    pub fn per_request(&self, key: &str) -> Option<f64> {
        self.configs
            .iter()
            .find(|config| config.key == key)
            .map(|config| config.per_request)
    }

    /// Instructions per request of `key` over those of `base`.
    pub fn ratio(&self, key: &str, base: &str) -> Option<f64> {
        ratio(self.per_request(key)?, self.per_request(base)?)
    }
}

/// The total of a callgrind dump: the number after `summary:` (or, in a dump without one, after
/// `totals:`), the first event's (`Ir`, instructions, unless other events were asked for).
pub fn parse_total(dump: &str) -> anyhow::Result<u64> {
    let value = |key: &str| {
        dump.lines()
            .find_map(|line| line.strip_prefix(key))
            .map(|rest| {
                let first = rest.split_whitespace().next().unwrap_or_default();
                first
                    .parse::<u64>()
                    .with_context(|| format!("`{key}` is followed by {first:?}, not a count"))
            })
    };
    match value("summary:").or_else(|| value("totals:")) {
        Some(total) => total,
        None => bail!("no `summary:` or `totals:` line: not a complete callgrind dump"),
    }
}

/// `valgrind --version`; an error naming the fix when valgrind is missing.
pub fn valgrind_version() -> anyhow::Result<String> {
    crate::machine::first_line_of("valgrind", &["--version"])
        .context("valgrind is not installed (apt-get install valgrind, or `make bench`)")
}

/// One Envoy to count: its name in the logs and results, and what it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// `a` … `g`, or a probe operation's name; also the name of its directory.
    pub key: String,
    /// What it is.
    pub title: String,
}

/// Counts Envoy's instructions per request for each of `scenarios`, [`PARALLEL`] at a time, with
/// `requests` counted requests each (see [`count`]).
pub fn measure(
    envoy_bin: &Path,
    modules: &Modules,
    scenarios: &[Scenario],
    requests: u64,
    keep_dumps: Option<&Path>,
) -> anyhow::Result<Callgrind> {
    let jobs: Vec<Job> = scenarios
        .iter()
        .map(|scenario| Job {
            key: scenario.key().into(),
            title: scenario.title().into(),
        })
        .collect();
    count(
        envoy_bin,
        &jobs,
        |index, upstream_port| {
            let scenario = scenarios.get(index).context("no such configuration")?;
            scenario.bootstrap(upstream_port, modules)
        },
        requests,
        keep_dumps,
    )
}

/// Counts Envoy's instructions per request for each of `jobs`, [`PARALLEL`] at a time, with
/// `requests` counted requests each; `bootstrap(index, upstream_port)` is the bootstrap of
/// `jobs[index]`. With `keep_dumps`, each job's callgrind dump is copied there as
/// `<key>.callgrind` (for `callgrind_annotate`). Everything started here (the upstream, the Envoys
/// under valgrind) is stopped when this returns, successfully or not.
pub fn count(
    envoy_bin: &Path,
    jobs: &[Job],
    bootstrap: impl Fn(usize, u16) -> anyhow::Result<String> + Sync,
    requests: u64,
    keep_dumps: Option<&Path>,
) -> anyhow::Result<Callgrind> {
    let valgrind = valgrind_version()?;
    let started = Instant::now();
    let upstream = Upstream::plain()?;
    let dir = tempfile::Builder::new()
        .prefix("meshcanary-bench-callgrind")
        .tempdir()?;
    process::remove_on_signal(dir.path().to_path_buf());

    // Each worker takes the next job until none is left or one has failed.
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let outcomes: Mutex<Vec<(usize, anyhow::Result<InstructionCount>)>> = Mutex::new(Vec::new());
    let (upstream_port, dir_path) = (upstream.port, dir.path());
    let worker = || -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        while !failed.load(Ordering::Relaxed) {
            let index = next.fetch_add(1, Ordering::Relaxed);
            let Some(job) = jobs.get(index) else {
                break;
            };
            let outcome = bootstrap(index, upstream_port)
                .and_then(|bootstrap| {
                    measure_one(&runtime, envoy_bin, job, &bootstrap, requests, dir_path)
                })
                .and_then(|(count, dump)| {
                    if let Some(keep) = keep_dumps {
                        let kept = keep.join(format!("{}.callgrind", job.key));
                        std::fs::create_dir_all(keep)?;
                        std::fs::copy(&dump, &kept)
                            .with_context(|| format!("copy the dump to {}", kept.display()))?;
                    }
                    Ok(count)
                })
                .with_context(|| format!("callgrind, ({}) {}", job.key, job.title));
            if outcome.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            lock(&outcomes).push((index, outcome));
        }
        Ok(())
    };
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL.min(jobs.len()) {
            scope.spawn(|| {
                if let Err(error) = worker() {
                    failed.store(true, Ordering::Relaxed);
                    lock(&outcomes).push((usize::MAX, Err(error)));
                }
            });
        }
    });
    drop(upstream);

    let mut outcomes = outcomes
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    outcomes.sort_by_key(|(index, _)| *index);
    let mut configs = Vec::new();
    for (_, outcome) in outcomes {
        configs.push(outcome?);
    }
    if configs.len() != jobs.len() {
        bail!(
            "callgrind: {} of {} configurations measured",
            configs.len(),
            jobs.len()
        );
    }
    Ok(Callgrind {
        valgrind,
        requests,
        warmup_requests: WARMUP_REQUESTS,
        seconds: started.elapsed().as_secs_f64(),
        configs,
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One job: Envoy under callgrind, warm-up, zero, the counted requests, dump, quit. The count and
/// the dump's path.
fn measure_one(
    runtime: &tokio::runtime::Runtime,
    envoy_bin: &Path,
    job: &Job,
    bootstrap: &str,
    requests: u64,
    dir: &Path,
) -> anyhow::Result<(InstructionCount, PathBuf)> {
    let envoy_dir = dir.join(&job.key);
    eprintln!(
        "bench: callgrind ({}) {}: starting Envoy under valgrind",
        job.key, job.title
    );
    let options = Options {
        wrapper: valgrind_command(&envoy_dir),
        ready_within: READY_WITHIN,
        ..envoy::options(envoy_bin)
    };
    let envoy = runtime.block_on(Envoy::start_bootstrap(bootstrap, &envoy_dir, &options))?;
    let headers = crate::wrk::header_pairs();
    let send = |count: u64, what: &str| -> anyhow::Result<()> {
        let ok = runtime.block_on(client::send_exactly(
            envoy.listener,
            &headers,
            crate::wrk::PATH,
            count,
            1,
        ))?;
        if ok != count {
            bail!(
                "{what}: {ok} of {count} requests answered 200\n{}",
                envoy.log_tail()
            );
        }
        Ok(())
    };
    send(WARMUP_REQUESTS, "warm-up")?;
    callgrind_control("-z", envoy.pid(), &envoy_dir)?;
    let started = Instant::now();
    send(requests, "counted requests")?;
    let seconds = started.elapsed().as_secs_f64();
    callgrind_control("-d", envoy.pid(), &envoy_dir)?;
    let dump_path = envoy_dir.join(format!("cg.out.{}.1", envoy.pid()));
    let dump = wait_for_dump(&dump_path)?;
    let instructions = parse_total(&dump).with_context(|| format!("{}", dump_path.display()))?;
    // The dump is written; a clean exit only spares valgrind a kill (the drop kills it anyway).
    let _ = runtime.block_on(envoy.quit(QUIT_WITHIN));
    let per_request = instructions as f64 / requests as f64;
    eprintln!(
        "bench: callgrind ({}) {}: {:.0} instructions per request ({requests} requests in {seconds:.0} s)",
        job.key, job.title, per_request
    );
    let count = InstructionCount {
        key: job.key.clone(),
        title: job.title.clone(),
        instructions,
        per_request,
    };
    Ok((count, dump_path))
}

/// valgrind's command line, dumps in `dir` as `cg.out.<pid>[.<n>]`.
fn valgrind_command(dir: &Path) -> Vec<OsString> {
    let mut out_file = OsString::from("--callgrind-out-file=");
    out_file.push(dir.join("cg.out.%p"));
    vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        // V8 writes and rewrites the code it runs (the wasm module's compiled code).
        "--smc-check=all-non-file".into(),
        out_file,
        vgdb_prefix(dir),
    ]
}

/// Where valgrind and `callgrind_control` meet (FIFOs): in `dir`, so that a valgrind killed on
/// Ctrl-C leaves none in /tmp (the directory is removed).
fn vgdb_prefix(dir: &Path) -> OsString {
    let mut prefix = OsString::from("--vgdb-prefix=");
    prefix.push(dir.join("vgdb"));
    prefix
}

/// Runs `callgrind_control <command> <pid>`; an error unless it says OK (it exits 0 either way).
fn callgrind_control(command: &str, pid: u32, dir: &Path) -> anyhow::Result<()> {
    let out_path: PathBuf = dir.join(format!("callgrind_control{command}.out"));
    let out = std::fs::File::create(&out_path).context("create callgrind_control output file")?;
    let child = Process::spawn(
        Command::new("callgrind_control")
            .arg(vgdb_prefix(dir))
            .arg(command)
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out),
        "callgrind_control (apt-get install valgrind)",
    )?;
    let status = child.wait(CONTROL_WITHIN)?;
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    if !status.success() || !output.contains("OK") {
        bail!("callgrind_control {command} {pid} failed ({status}):\n{output}");
    }
    Ok(())
}

/// The dump at `path` once it is complete (its `totals:` line is written last).
fn wait_for_dump(path: &Path) -> anyhow::Result<String> {
    let deadline = Instant::now() + CONTROL_WITHIN;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.lines().any(|line| line.starts_with("totals:")) {
                return Ok(text);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "no complete callgrind dump at {} after {} s",
                path.display(),
                CONTROL_WITHIN.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head and tail of a real dump (`callgrind_control -d` of Envoy 1.40, valgrind 3.19).
    const DUMP: &str = "\
# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 10028
cmd:  /work/main/.venv/bin/envoy-1.40.0 -c a.yaml --concurrency 1 -l error --disable-hot-restart
part: 1


desc: I1 cache: 
desc: D1 cache: 
desc: LL cache: 

desc: Timerange: Basic block 0 - 95689861
desc: Trigger: dump

positions: line
events: Ir
summary: 167322929


ob=(1) /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
fl=(1) ???
fn=(0) 0x000000000001ab70
cob=(9) /work/main/.venv/lib/python3.11/site-packages/envoy/_bin/envoy
cfi=(163) ???
cfn=(630) 0x000000000207e000
calls=0 0 
0 330934

0 66

totals: 167623964
";

    #[test]
    fn the_total_of_a_dump() {
        let without_summary: String = DUMP
            .lines()
            .filter(|line| !line.starts_with("summary:"))
            .map(|line| format!("{line}\n"))
            .collect();
        let head_only: String = DUMP
            .lines()
            .take_while(|line| !line.starts_with("summary:"))
            .map(|line| format!("{line}\n"))
            .collect();
        let cases: [(&str, Result<u64, &str>); 6] = [
            (DUMP, Ok(167_322_929)),
            (&without_summary, Ok(167_623_964)),
            ("events: Ir Dr\nsummary: 12 7\n", Ok(12)),
            (&head_only, Err("no `summary:` or `totals:` line")),
            ("", Err("no `summary:` or `totals:` line")),
            ("summary: lots\n", Err("not a count")),
        ];
        for (dump, expected) in cases {
            match (parse_total(dump), expected) {
                (Ok(got), Ok(expected)) => assert_eq!(got, expected),
                (Err(error), Err(text)) => {
                    assert!(format!("{error:#}").contains(text), "{error:#}")
                }
                (got, expected) => panic!("{got:?} vs {expected:?} for\n{dump}"),
            }
        }
    }

    #[test]
    fn ratios_between_configurations() {
        let count = |key: &str, per_request: f64| InstructionCount {
            key: key.into(),
            title: format!("config {key}"),
            instructions: (per_request * 1000.0) as u64,
            per_request,
        };
        let callgrind = Callgrind {
            valgrind: "valgrind-3.19.0".into(),
            requests: 1000,
            warmup_requests: WARMUP_REQUESTS,
            seconds: 200.0,
            configs: vec![
                count("b", 168_000.0),
                count("c", 230_000.0),
                count("e", 188_000.0),
                count("z", 0.0),
            ],
        };
        let cases = [
            ("c", "e", Some(230.0 / 188.0)),
            ("e", "b", Some(188.0 / 168.0)),
            ("b", "b", Some(1.0)),
            ("c", "x", None),
            ("x", "c", None),
            ("c", "z", None),
        ];
        for (key, base, expected) in cases {
            let got = callgrind.ratio(key, base);
            match (got, expected) {
                (Some(got), Some(expected)) => {
                    assert!((got - expected).abs() < 1e-12, "{key}/{base}: {got}")
                }
                _ => assert_eq!(got, expected, "{key}/{base}"),
            }
        }
        assert_eq!(callgrind.per_request("e"), Some(188_000.0));
    }

    #[test]
    fn valgrind_writes_its_dumps_into_the_directory() {
        let command = valgrind_command(Path::new("/tmp/x/c"));
        let command: Vec<String> = command
            .iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            command,
            [
                "valgrind",
                "--tool=callgrind",
                "--smc-check=all-non-file",
                "--callgrind-out-file=/tmp/x/c/cg.out.%p",
                "--vgdb-prefix=/tmp/x/c/vgdb"
            ]
        );
    }
}
