//! Automated analysis as `rollout create` takes it: `--min-success-rate 99.5 --max-latency 500ms
//! --analysis-interval 1m …` become the API's [`AnalysisSpec`], the rest keeping its defaults.
//!
//! Each value is checked on its own as it is parsed, by the service's own rule
//! ([`AnalysisSpec::check`]), so a bad value fails before any request, with clap naming the flag,
//! and the CLI cannot disagree with the service about what is valid. Rules about combinations
//! (`--no-compare-with-stable` with neither threshold judges nothing) are left to the service,
//! which answers 422 naming the field.

use super::steps;
use crate::error::Error;
use crate::rollout::AnalysisSpec;
use crate::time::HumanDuration;
use clap::Args;

/// The analysis flags of `rollout create`. None given: no analysis.
#[derive(Debug, Clone, Default, PartialEq, Args)]
#[command(next_help_heading = "Analysis (any of these turns it on; the rest keep their defaults)")]
pub struct AnalysisArgs {
    /// Fail a check when the canary's success rate (responses that are neither 5xx, resets nor
    /// gRPC server errors) is below PERCENT, e.g. 99 or 99.5.
    #[arg(long, value_name = "PERCENT", value_parser = parse_min_success_rate, conflicts_with = "file")]
    pub min_success_rate: Option<f64>,
    /// Fail a check when the canary's latency at --latency-percentile is above this, e.g. 500ms,
    /// 1s or 250us.
    #[arg(long, value_name = "DURATION", value_parser = parse_max_latency, conflicts_with = "file")]
    pub max_latency: Option<HumanDuration>,
    /// The latency percentile --max-latency judges, e.g. 99, 99.9 or p95 (default 99).
    #[arg(long, value_name = "PERCENTILE", value_parser = parse_latency_percentile, conflicts_with = "file")]
    pub latency_percentile: Option<f64>,
    /// How often a check runs while the rollout progresses: the window it judges (default 30s).
    #[arg(long, value_name = "DURATION", value_parser = parse_interval, conflicts_with = "file")]
    pub analysis_interval: Option<HumanDuration>,
    /// Canary responses a window needs; with fewer the check is inconclusive (default 20).
    #[arg(long, value_name = "N", conflicts_with = "file")]
    pub min_requests: Option<u64>,
    /// Failed checks that roll the rollout back (default 2).
    #[arg(long, value_name = "N", value_parser = parse_failure_limit, conflicts_with = "file")]
    pub failure_limit: Option<u32>,
    /// Do not fail checks because the canary's error rate is significantly above the stable
    /// variant's; then --min-success-rate or --max-latency is needed.
    #[arg(long, conflicts_with = "file")]
    pub no_compare_with_stable: bool,
}

impl AnalysisArgs {
    /// The analysis to ask for, or `None` when no analysis flag was given.
    pub fn spec(&self) -> Option<AnalysisSpec> {
        if *self == AnalysisArgs::default() {
            return None;
        }
        let defaults = AnalysisSpec::default();
        Some(AnalysisSpec {
            interval: self.analysis_interval.unwrap_or(defaults.interval),
            min_success_rate: self.min_success_rate,
            max_latency_ms: self.max_latency.map(milliseconds),
            latency_percentile: self
                .latency_percentile
                .unwrap_or(defaults.latency_percentile),
            min_requests: self.min_requests.unwrap_or(defaults.min_requests),
            compare_with_stable: !self.no_compare_with_stable,
            failure_limit: self.failure_limit.unwrap_or(defaults.failure_limit),
            ..defaults
        })
    }
}

/// A duration in (fractional) milliseconds, as `maxLatencyMs` takes it: `250us` is 0.25.
fn milliseconds(duration: HumanDuration) -> f64 {
    // One division of an exact integer, so 300us is 0.3 and not 0.30000000000000004.
    duration.0.as_nanos() as f64 / 1_000_000.0
}

/// Checks a value by the service's rule: `set` puts it into the default analysis, whose other
/// values are valid, so an error is about this value. The field path is left out of the message
/// because clap already names the flag.
fn check_alone<T: Copy>(value: T, set: fn(&mut AnalysisSpec, T)) -> Result<T, String> {
    let mut spec = AnalysisSpec::default();
    set(&mut spec, value);
    match spec.check("analysis") {
        Ok(()) => Ok(value),
        Err(Error::Invalid { reason, .. }) => Err(reason),
        Err(other) => Err(other.to_string()),
    }
}

/// `number`, the part of `text` that should be a number, allowing the `%` people tend to type
/// after a percentage; errors quote all of `text`.
fn parse_number(text: &str, number: &str, example: &str) -> Result<f64, String> {
    let number = number.trim();
    number
        .strip_suffix('%')
        .unwrap_or(number)
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number (e.g. {example})"))
}

/// `--min-success-rate`: a percentage from 0 to 100, e.g. `99`, `99.5` or `99.5%`.
pub fn parse_min_success_rate(text: &str) -> Result<f64, String> {
    let percent = parse_number(text, text, "99 or 99.5")?;
    check_alone(percent, |spec, percent| {
        spec.min_success_rate = Some(percent)
    })
}

/// `--max-latency`: a duration such as `500ms`, `1s` or `250us`. A bare number is refused rather
/// than guessed at, like a weight without its unit.
pub fn parse_max_latency(text: &str) -> Result<HumanDuration, String> {
    if text.trim().parse::<f64>().is_ok() {
        let number = text.trim();
        return Err(format!(
            "a latency needs a unit: write {number}ms (milliseconds) or {number}s (seconds)"
        ));
    }
    let latency = steps::parse_duration(text)?;
    check_alone(latency, |spec, latency| {
        spec.max_latency_ms = Some(milliseconds(latency))
    })
}

/// `--latency-percentile`: in (0, 100], e.g. `99`, `99.9` or `p95`.
pub fn parse_latency_percentile(text: &str) -> Result<f64, String> {
    let trimmed = text.trim();
    let number = trimmed.strip_prefix(['p', 'P']).unwrap_or(trimmed);
    let percentile = parse_number(text, number, "99, 99.9 or p95")?;
    check_alone(percentile, |spec, percentile| {
        spec.latency_percentile = percentile
    })
}

/// `--analysis-interval`: a duration such as `30s` or `1m`, at least the service's minimum.
pub fn parse_interval(text: &str) -> Result<HumanDuration, String> {
    let interval = steps::parse_duration(text)?;
    check_alone(interval, |spec, interval| spec.interval = interval)
}

/// `--failure-limit`: a whole number, at least 1.
pub fn parse_failure_limit(text: &str) -> Result<u32, String> {
    let limit = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number of checks (e.g. 2)"))?;
    check_alone(limit, |spec, limit| spec.failure_limit = limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A value parser whose result compares as a number.
    type ParseNumber = fn(&str) -> Result<f64, String>;

    #[test]
    fn values_parse() {
        let cases: [(&str, ParseNumber, &str, f64); 10] = [
            ("--min-success-rate", parse_min_success_rate, "99", 99.0),
            (
                "--min-success-rate",
                parse_min_success_rate,
                " 99.5% ",
                99.5,
            ),
            ("--min-success-rate", parse_min_success_rate, "0", 0.0),
            ("--min-success-rate", parse_min_success_rate, "100", 100.0),
            (
                "--latency-percentile",
                parse_latency_percentile,
                "99.9",
                99.9,
            ),
            (
                "--latency-percentile",
                parse_latency_percentile,
                "p95",
                95.0,
            ),
            (
                "--latency-percentile",
                parse_latency_percentile,
                "100",
                100.0,
            ),
            (
                "--max-latency",
                |t| parse_max_latency(t).map(milliseconds),
                "500ms",
                500.0,
            ),
            (
                "--max-latency",
                |t| parse_max_latency(t).map(milliseconds),
                "1s 500ms",
                1500.0,
            ),
            (
                "--max-latency",
                |t| parse_max_latency(t).map(milliseconds),
                "300us",
                0.3,
            ),
        ];
        for (flag, parse, text, expected) in cases {
            assert_eq!(parse(text), Ok(expected), "{flag} {text}");
        }
        assert_eq!(
            parse_interval("1m"),
            Ok(HumanDuration(Duration::from_secs(60)))
        );
        assert_eq!(parse_failure_limit("3"), Ok(3));
    }

    #[test]
    fn bad_values_say_why() {
        let cases: [(&str, Result<(), String>, &str); 14] = [
            (
                "--min-success-rate 120",
                parse_min_success_rate("120").map(drop),
                "120 is not a percentage between 0 and 100",
            ),
            (
                "--min-success-rate -1",
                parse_min_success_rate("-1").map(drop),
                "-1 is not a percentage between 0 and 100",
            ),
            (
                "--min-success-rate NaN",
                parse_min_success_rate("NaN").map(drop),
                "NaN is not a percentage",
            ),
            (
                "--min-success-rate most",
                parse_min_success_rate("most").map(drop),
                "\"most\" is not a number (e.g. 99 or 99.5)",
            ),
            (
                "--max-latency 500",
                parse_max_latency("500").map(drop),
                "a latency needs a unit: write 500ms (milliseconds) or 500s",
            ),
            (
                "--max-latency 0ms",
                parse_max_latency("0ms").map(drop),
                "\"0ms\" is zero",
            ),
            (
                "--max-latency fast",
                parse_max_latency("fast").map(drop),
                "\"fast\" is not a duration",
            ),
            (
                "--latency-percentile 0",
                parse_latency_percentile("0").map(drop),
                "0 is not a percentile in (0, 100]",
            ),
            (
                "--latency-percentile p101",
                parse_latency_percentile("p101").map(drop),
                "101 is not a percentile in (0, 100]",
            ),
            (
                "--latency-percentile high",
                parse_latency_percentile("high").map(drop),
                "\"high\" is not a number (e.g. 99, 99.9 or p95)",
            ),
            (
                "--analysis-interval 50ms",
                parse_interval("50ms").map(drop),
                "must be at least 100ms",
            ),
            (
                "--analysis-interval 0s",
                parse_interval("0s").map(drop),
                "\"0s\" is zero",
            ),
            (
                "--failure-limit 0",
                parse_failure_limit("0").map(drop),
                "must be at least 1",
            ),
            (
                "--failure-limit -1",
                parse_failure_limit("-1").map(drop),
                "\"-1\" is not a whole number of checks",
            ),
        ];
        for (flags, got, expected) in cases {
            let error = got.unwrap_err();
            assert!(error.starts_with(expected), "{flags}: {error}");
        }
    }

    #[test]
    fn only_given_flags_change_the_defaults() {
        let defaults = AnalysisSpec::default();
        let cases = [
            (AnalysisArgs::default(), None),
            (
                AnalysisArgs {
                    min_success_rate: Some(99.5),
                    ..AnalysisArgs::default()
                },
                Some(AnalysisSpec {
                    min_success_rate: Some(99.5),
                    ..defaults.clone()
                }),
            ),
            (
                // A flag given at its default value still asks for analysis.
                AnalysisArgs {
                    latency_percentile: Some(99.0),
                    ..AnalysisArgs::default()
                },
                Some(defaults.clone()),
            ),
            (
                AnalysisArgs {
                    min_success_rate: None,
                    max_latency: Some(HumanDuration(Duration::from_millis(250))),
                    latency_percentile: Some(99.9),
                    analysis_interval: Some(HumanDuration(Duration::from_secs(60))),
                    min_requests: Some(50),
                    failure_limit: Some(3),
                    no_compare_with_stable: true,
                },
                Some(AnalysisSpec {
                    interval: HumanDuration(Duration::from_secs(60)),
                    max_latency_ms: Some(250.0),
                    latency_percentile: 99.9,
                    min_requests: 50,
                    compare_with_stable: false,
                    failure_limit: 3,
                    ..defaults.clone()
                }),
            ),
            (
                // Judges nothing: built as asked, for the service to refuse naming the field.
                AnalysisArgs {
                    no_compare_with_stable: true,
                    ..AnalysisArgs::default()
                },
                Some(AnalysisSpec {
                    compare_with_stable: false,
                    ..defaults.clone()
                }),
            ),
        ];
        for (args, expected) in cases {
            assert_eq!(args.spec(), expected, "{args:?}");
        }
    }
}
