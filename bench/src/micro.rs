//! The decision's micro-benchmark: runs criterion on `filter/core/benches/choose.rs` and reads its
//! estimates back from `<criterion home>/choose/<case>/new/estimates.json`.

use anyhow::{bail, Context};
use std::path::Path;
use std::process::Command;

/// The cases of `filter/core/benches/choose.rs`, in report order, with what each one measures.
pub const CASES: [(&str, &str); 9] = [
    ("weighted", "plain weighted decision (hashes x-request-id)"),
    ("sticky_header", "sticky header decision"),
    (
        "ten_rules_miss_then_sticky",
        "10 non-matching QA rules, then the sticky header",
    ),
    (
        "cookie_rule_4kb_cookie",
        "cookie rule on a 4 KB cookie header (match at the end)",
    ),
    ("routes_1", "1 route (3 host patterns), the request's"),
    ("routes_100", "100 routes, the request for the last"),
    ("routes_1000", "1 000 routes, the request for the last"),
    (
        "signed_rule_no_token",
        "a signed QA rule, the request without its header, then the sticky header",
    ),
    (
        "signed_rule_valid_token",
        "a signed QA rule, the request with a valid token (HMAC-SHA256 checked)",
    ),
];

/// Criterion's estimate of one case.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Estimate {
    /// The case's benchmark id.
    pub case: String,
    /// What it measures.
    pub description: String,
    /// Mean ns per decision.
    pub mean_ns: f64,
    /// Lower bound of the mean's 95 % confidence interval.
    pub mean_low_ns: f64,
    /// Upper bound of the mean's 95 % confidence interval.
    pub mean_high_ns: f64,
    /// Median ns per decision.
    pub median_ns: f64,
}

/// Runs the criterion benchmark with results under `criterion_home`, measuring each case for
/// `seconds`.
pub fn run(workspace: &Path, criterion_home: &Path, seconds: u64) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace)
        .env("CRITERION_HOME", criterion_home)
        .args([
            "bench",
            "--locked",
            "-p",
            "meshcanary-core",
            "--bench",
            "choose",
        ])
        .args([
            "--",
            "--noplot",
            "--warm-up-time",
            "1",
            "--measurement-time",
        ])
        .arg(seconds.max(1).to_string())
        .status()
        .context("run cargo bench")?;
    if !status.success() {
        bail!("cargo bench -p meshcanary-core --bench choose: {status}");
    }
    Ok(())
}

/// Reads every case's estimates.
pub fn read(criterion_home: &Path) -> anyhow::Result<Vec<Estimate>> {
    CASES
        .iter()
        .map(|(case, description)| {
            let path = criterion_home
                .join("choose")
                .join(case)
                .join("new")
                .join("estimates.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("read {}", path.display()))?;
            parse_estimates(case, description, &text)
                .with_context(|| format!("parse {}", path.display()))
        })
        .collect()
}

/// One case's `estimates.json`.
pub fn parse_estimates(case: &str, description: &str, json: &str) -> anyhow::Result<Estimate> {
    let value: serde_json::Value = serde_json::from_str(json)?;
    let number = |pointer: &str| {
        value
            .pointer(pointer)
            .and_then(serde_json::Value::as_f64)
            .with_context(|| format!("no {pointer}"))
    };
    Ok(Estimate {
        case: case.to_string(),
        description: description.to_string(),
        mean_ns: number("/mean/point_estimate")?,
        mean_low_ns: number("/mean/confidence_interval/lower_bound")?,
        mean_high_ns: number("/mean/confidence_interval/upper_bound")?,
        median_ns: number("/median/point_estimate")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_criterion_estimates() {
        let json = r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":157.9,"upper_bound":196.4},"point_estimate":175.6,"standard_error":9.8},"median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":151.4,"upper_bound":174.0},"point_estimate":161.0,"standard_error":5.7},"slope":null}"#;
        let estimate = parse_estimates("weighted", "w", json).unwrap();
        assert_eq!(
            estimate,
            Estimate {
                case: "weighted".into(),
                description: "w".into(),
                mean_ns: 175.6,
                mean_low_ns: 157.9,
                mean_high_ns: 196.4,
                median_ns: 161.0,
            }
        );
        let cases = [r#"{"mean":{}}"#, "[]", "not json"];
        for json in cases {
            assert!(parse_estimates("x", "x", json).is_err(), "{json}");
        }
    }

    #[test]
    fn the_cases_are_the_benchmark_file_s() {
        let source = include_str!("../../filter/core/benches/choose.rs");
        for (case, _) in CASES {
            assert!(source.contains(&format!("\"{case}\"")), "{case}");
        }
    }
}
