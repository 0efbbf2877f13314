//! The load generator: `wrk` over keep-alive connections at a fixed concurrency, and the parsing of
//! its `--latency` report.

use anyhow::{bail, Context};
use meshcanary_testkit::process::Process;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Connections kept open (and so requests in flight) during a round.
pub const CONNECTIONS: u32 = 16;
/// wrk's threads.
pub const THREADS: u32 = 2;

/// The headers every benchmark request carries, for every configuration alike: the host the filter's
/// route matches, the sticky key of configuration (d), an ordinary cookie header (read by (d)'s
/// cookie rules) and a signed-rule token whose MAC does not check out (configuration (k) computes
/// the whole HMAC before refusing it: the dearest way a token can go). The same bytes go to every
/// Envoy so they all parse the same request.
pub const HEADERS: [&str; 4] = [
    "Host: reviews",
    "x-user-id: user-0042",
    "cookie: session=3f2a9c; theme=dark",
    "x-meshcanary-qa: qa.v2.4102444800.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
];

/// The request path.
pub const PATH: &str = "/reviews/1";

/// [`HEADERS`] as (name, value) pairs, for clients other than wrk that must send the same requests.
pub fn header_pairs() -> Vec<(&'static str, &'static str)> {
    HEADERS
        .iter()
        .filter_map(|header| header.split_once(": "))
        .collect()
}

/// What one wrk run measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WrkReport {
    /// Requests completed.
    pub requests: u64,
    /// The run's length as wrk measured it, in seconds.
    pub seconds: f64,
    /// wrk's `Requests/sec`.
    pub requests_per_second: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// Responses that were not 2xx or 3xx.
    pub non_2xx: u64,
    /// Connect, read, write errors and timeouts, summed.
    pub socket_errors: u64,
}

/// The arguments of a wrk run of `seconds` against `url`.
pub fn args(url: &str, seconds: u64) -> Vec<String> {
    let mut args = vec![
        format!("-t{THREADS}"),
        format!("-c{CONNECTIONS}"),
        format!("-d{seconds}s"),
        "--latency".to_string(),
    ];
    for header in HEADERS {
        args.push("-H".into());
        args.push(header.into());
    }
    args.push(url.to_string());
    args
}

/// The arguments of a wrk run of `seconds` of plain `GET url` requests (the control API's reads:
/// no headers beyond the `Host` wrk derives from the URL).
pub fn api_args(url: &str, seconds: u64) -> Vec<String> {
    vec![
        format!("-t{THREADS}"),
        format!("-c{CONNECTIONS}"),
        format!("-d{seconds}s"),
        "--latency".to_string(),
        url.to_string(),
    ]
}

/// The command line as a person would type it, for the report.
pub fn command_line(args: &[String]) -> String {
    let quoted: Vec<String> = args
        .iter()
        .map(|arg| {
            if arg.contains(' ') {
                format!("'{arg}'")
            } else {
                arg.clone()
            }
        })
        .collect();
    format!("wrk {}", quoted.join(" "))
}

/// Runs wrk for `seconds` against `url` with the benchmark's requests ([`args`]) and parses its
/// report.
pub fn run(url: &str, seconds: u64, dir: &Path) -> anyhow::Result<WrkReport> {
    run_args(&args(url, seconds), seconds, dir)
}

/// Runs wrk with `args` (a run of `seconds`) and parses its report. Its output goes to a file in
/// `dir` so the child can stay under a [`Process`] handle (stopped on Ctrl-C) while it runs.
pub fn run_args(args: &[String], seconds: u64, dir: &Path) -> anyhow::Result<WrkReport> {
    let out_path = dir.join("wrk.out");
    let out = std::fs::File::create(&out_path).context("create wrk output file")?;
    let mut command = Command::new("wrk");
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let wrk = Process::spawn(
        &mut command,
        "wrk (apt-get install wrk, or run `make bench`)",
    )?;
    let status = wrk.wait(Duration::from_secs(seconds + 30))?;
    let output = std::fs::read_to_string(&out_path).context("read wrk output")?;
    if !status.success() {
        bail!("wrk exited with {status}:\n{output}");
    }
    parse(&output).with_context(|| format!("parse wrk output:\n{output}"))
}

/// wrk's version line (`wrk debian/4.1.0-3+b2 [epoll]`).
pub fn version() -> Option<String> {
    // `wrk --version` prints the version and the usage, and exits 1.
    let output = Command::new("wrk").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    parse_version(&text)
}

/// The version part of wrk's first output line, without the copyright.
pub fn parse_version(text: &str) -> Option<String> {
    let line = text.lines().next()?.trim();
    let line = line.split(" Copyright").next()?.trim();
    line.starts_with("wrk").then(|| line.to_string())
}

/// Parses a wrk report produced with `--latency`.
pub fn parse(output: &str) -> anyhow::Result<WrkReport> {
    let mut requests = None;
    let mut seconds = None;
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut non_2xx = 0;
    let mut socket_errors = 0;
    for line in output.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            // `69688 requests in 3.00s, 8.44MB read`
            [count, "requests", "in", duration, ..] => {
                requests = count.parse().ok();
                seconds = parse_duration_us(duration.trim_end_matches(',')).map(|us| us / 1e6);
            }
            ["Requests/sec:", value] => rps = value.parse().ok(),
            ["50%", value] => p50 = parse_duration_us(value),
            ["99%", value] => p99 = parse_duration_us(value),
            ["Non-2xx", "or", "3xx", "responses:", count] => non_2xx = count.parse()?,
            // `Socket errors: connect 0, read 0, write 0, timeout 0`
            ["Socket", "errors:", rest @ ..] => {
                socket_errors = rest
                    .iter()
                    .filter_map(|word| word.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    Ok(WrkReport {
        requests: requests.context("no `N requests in` line")?,
        seconds: seconds.context("no run duration")?,
        requests_per_second: rps.context("no Requests/sec line")?,
        p50_us: p50.context("no 50% latency (was --latency given?)")?,
        p99_us: p99.context("no 99% latency (was --latency given?)")?,
        non_2xx,
        socket_errors,
    })
}

/// A wrk duration (`653.00us`, `1.40ms`, `3.00s`, `1.00m`) in microseconds.
pub fn parse_duration_us(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    Some(number * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
Running 3s test @ http://127.0.0.1:10000/reviews/1
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   690.21us  202.38us   6.02ms   86.49%
    Req/Sec    11.67k   705.37    12.93k    70.00%
  Latency Distribution
     50%  653.00us
     75%  759.00us
     90%    0.89ms
     99%    1.40ms
  69688 requests in 3.00s, 8.44MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 3
Requests/sec:  23226.69
Transfer/sec:      2.81MB
";

    #[test]
    fn parses_a_latency_report() {
        let report = parse(REPORT).unwrap();
        assert_eq!(
            report,
            WrkReport {
                requests: 69688,
                seconds: 3.0,
                requests_per_second: 23226.69,
                p50_us: 653.0,
                p99_us: 1400.0,
                non_2xx: 3,
                socket_errors: 3,
            }
        );
    }

    #[test]
    fn a_report_without_latency_distribution_is_an_error() {
        let without: String = REPORT
            .lines()
            .filter(|line| !line.contains('%') || line.contains("Stdev"))
            .map(|line| format!("{line}\n"))
            .collect();
        let error = parse(&without).unwrap_err().to_string();
        assert!(error.contains("--latency"), "{error}");
        assert!(parse("").is_err());
    }

    #[test]
    fn a_clean_run_has_no_errors() {
        let clean: String = REPORT
            .lines()
            .filter(|line| !line.contains("errors") && !line.contains("Non-2xx"))
            .map(|line| format!("{line}\n"))
            .collect();
        let report = parse(&clean).unwrap();
        assert_eq!((report.non_2xx, report.socket_errors), (0, 0));
    }

    #[test]
    fn durations() {
        let cases = [
            ("653.00us", Some(653.0)),
            ("0.89ms", Some(890.0)),
            ("1.40ms", Some(1400.0)),
            ("3.00s", Some(3_000_000.0)),
            ("1.50m", Some(90_000_000.0)),
            ("12", None),
            ("1.0xs", None),
            ("ms", None),
        ];
        for (text, expected) in cases {
            let got = parse_duration_us(text);
            match (got, expected) {
                (Some(got), Some(expected)) => {
                    assert!((got - expected).abs() < 1e-6, "{text}: {got}")
                }
                _ => assert_eq!(got, expected, "{text}"),
            }
        }
    }

    #[test]
    fn header_pairs_are_the_headers_split() {
        let pairs = header_pairs();
        assert_eq!(pairs.len(), HEADERS.len());
        let cases = [
            ("Host", "reviews"),
            ("x-user-id", "user-0042"),
            ("cookie", "session=3f2a9c; theme=dark"),
        ];
        for (pair, expected) in pairs.into_iter().zip(cases) {
            assert_eq!(pair, expected);
        }
    }

    #[test]
    fn versions() {
        let cases = [
            (
                "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer\nUsage: wrk",
                Some("wrk debian/4.1.0-3+b2 [epoll]"),
            ),
            ("wrk 4.2.0 [epoll]", Some("wrk 4.2.0 [epoll]")),
            ("bash: wrk: command not found", None),
            ("", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_version(text).as_deref(), expected, "{text}");
        }
    }

    #[test]
    fn the_command_line_quotes_headers() {
        let args = args("http://127.0.0.1:1/reviews/1", 10);
        let line = command_line(&args);
        assert!(
            line.starts_with("wrk -t2 -c16 -d10s --latency -H 'Host: reviews'"),
            "{line}"
        );
        assert!(line.ends_with(" http://127.0.0.1:1/reviews/1"), "{line}");
        let api = command_line(&api_args("http://127.0.0.1:1/v1/rollouts", 3));
        assert_eq!(
            api,
            "wrk -t2 -c16 -d3s --latency http://127.0.0.1:1/v1/rollouts"
        );
    }
}
