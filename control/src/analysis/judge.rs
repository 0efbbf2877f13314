//! The verdict on one analysis window: [`judge`] measures the canary and the stable baseline and
//! checks them against [`Thresholds`], saying why in sentences with the numbers.

use super::snapshot::{MirrorCounters, VariantCounters};
use super::stats::{canary_worse_p_value, quantile};
use super::AnalysisError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a canary must show in one analysis window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Thresholds {
    /// Lowest acceptable share of canary responses that are not failures (5xx, reset or gRPC
    /// server error), 0 to 1, e.g. `0.99`. Unset: no absolute success-rate check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_success_rate: Option<f64>,
    /// Highest acceptable canary latency at `latencyQuantile`, in milliseconds. Unset: no latency
    /// check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_latency_ms: Option<f64>,
    /// Which latency percentile `maxLatencyMs` limits, 0 to 1 (default `0.99`: p99).
    pub latency_quantile: f64,
    /// Fewest canary responses in a window for a verdict (default 100). Fewer make the check
    /// inconclusive, so a rollout never advances on too little traffic.
    pub min_requests: u64,
    /// Significance level α of the comparison with stable (default `0.01`): the check fails when
    /// Fisher's exact test gives a p-value below it. Also the chance that one check fails a canary
    /// that is really as good as stable.
    pub max_p_value: f64,
    /// Fewest stable responses in a window for the comparison (default 100); with fewer it is
    /// skipped, which does not fail the check.
    pub min_baseline_requests: u64,
    /// Whether to compare the canary's error rate with stable's at all (default true).
    #[serde(default = "default_true")]
    pub compare_with_stable: bool,
}

fn default_true() -> bool {
    true
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_success_rate: None,
            max_latency_ms: None,
            latency_quantile: 0.99,
            min_requests: 100,
            max_p_value: 0.01,
            min_baseline_requests: 100,
            compare_with_stable: true,
        }
    }
}

impl Thresholds {
    /// Checks that every threshold is in range; the error names the field.
    pub fn validate(&self) -> Result<(), AnalysisError> {
        let invalid = |field: &str, reason: String| {
            Err(AnalysisError::InvalidThreshold {
                field: field.to_string(),
                reason,
            })
        };
        if let Some(rate) = self.min_success_rate {
            if !(0.0..=1.0).contains(&rate) {
                return invalid("minSuccessRate", format!("{rate} is not between 0 and 1"));
            }
        }
        if let Some(ms) = self.max_latency_ms {
            if !(ms.is_finite() && ms > 0.0) {
                return invalid("maxLatencyMs", format!("{ms} is not a positive number"));
            }
        }
        if !(0.0..=1.0).contains(&self.latency_quantile) {
            return invalid(
                "latencyQuantile",
                format!("{} is not between 0 and 1", self.latency_quantile),
            );
        }
        if !(self.max_p_value > 0.0 && self.max_p_value < 1.0) {
            return invalid(
                "maxPValue",
                format!(
                    "{} is not strictly between 0 and 1 (0.01 and 0.05 are usual)",
                    self.max_p_value
                ),
            );
        }
        Ok(())
    }
}

/// What was measured for one variant in the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Measured {
    /// Completed requests: responses of every class, resets included.
    pub requests: u64,
    /// Share of those that did not fail (5xx and resets fail); unset without requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
    /// Latency at the thresholds' `latencyQuantile`, in milliseconds, estimated from the
    /// histogram (as Prometheus' `histogram_quantile` does: a percentile beyond the highest finite
    /// bucket bound is reported as that bound); unset without observations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
}

/// The outcome of a check.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Verdict {
    /// Every check ran and passed.
    Pass,
    /// At least one check failed.
    Fail,
    /// Nothing failed, but something could not be checked (too little traffic, no latency data).
    Inconclusive,
}

/// One analysis window's verdict, with the reasons and the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Check {
    /// Pass, fail or inconclusive: the worst of the individual checks.
    pub verdict: Verdict,
    /// One sentence per check, for people, with the measured numbers.
    pub reasons: Vec<String>,
    /// The canary's measurements.
    pub canary: Measured,
    /// The stable variant's measurements over the same window.
    pub baseline: Measured,
    /// The p-value of the comparison with stable, if it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
}

/// Judges one window of a mirror step, in which the canary serves nobody and answers copies of
/// the other variants' requests: `copies` is what the proxies counted of them over the window.
/// Only the success rate can be judged (the copies' latency is not measured, and no client
/// request of the canary's compares with stable's):
///
/// - fewer than `minRequests` copies answered: inconclusive;
/// - the answered copies' success rate (those not answered 5xx) below `minSuccessRate`: fail;
/// - otherwise pass (without `minSuccessRate`, the reasons say nothing was judged).
pub fn judge_mirror(thresholds: &Thresholds, copies: &MirrorCounters) -> Check {
    let answered = copies.answered;
    let success_rate = (answered > 0)
        .then(|| answered.saturating_sub(copies.server_errors) as f64 / answered as f64);
    let canary = Measured {
        requests: answered,
        success_rate,
        latency_ms: None,
    };
    let baseline = Measured {
        requests: 0,
        success_rate: None,
        latency_ms: None,
    };
    let (verdict, reason) = match (success_rate, thresholds.min_success_rate) {
        _ if answered < thresholds.min_requests.max(1) => (
            Verdict::Inconclusive,
            format!(
                "the canary answered {answered} mirrored requests in this window; at least {} are \
                 needed to judge it",
                thresholds.min_requests.max(1)
            ),
        ),
        (Some(rate), Some(min)) if rate < min => (
            Verdict::Fail,
            format!(
                "the canary's success rate on mirrored requests {} ({} 5xx in {answered}) is \
                 below the minimum {}",
                rate_percent(rate),
                copies.server_errors,
                rate_percent(min)
            ),
        ),
        (Some(rate), Some(min)) => (
            Verdict::Pass,
            format!(
                "the canary's success rate on mirrored requests {} of {answered} is at least {}",
                rate_percent(rate),
                rate_percent(min)
            ),
        ),
        _ => (
            Verdict::Pass,
            format!(
                "the canary answered {answered} mirrored requests; no minSuccessRate to judge them by"
            ),
        ),
    };
    Check {
        verdict,
        reasons: vec![reason],
        canary,
        baseline,
        p_value: None,
    }
}

/// `0.9912` → `99.12 %`.
fn rate_percent(rate: f64) -> String {
    format!("{} %", (rate * 10_000.0).round() / 100.0)
}

/// Judges one window: `canary` and `baseline` are the two variants' counts over the window (the
/// [`delta`](super::snapshot::delta) of two scrapes, merged over the proxies).
///
/// - No canary responses, or fewer than `minRequests`: inconclusive, and the success-rate and
///   latency thresholds are not applied (they are too noisy on a handful of requests).
/// - Success rate below `minSuccessRate`: fail.
/// - Latency at `latencyQuantile` above `maxLatencyMs`: fail; no latency observations while a
///   latency limit is set: inconclusive.
/// - With at least `minBaselineRequests` stable responses, Fisher's exact test of "the canary
///   fails more often than stable": a p-value below `maxPValue` fails. The test is exact at any
///   count, so it also runs below `minRequests`: ten failures out of ten canary requests against
///   a clean stable fail the check. With less stable traffic the comparison is skipped, and the
///   reasons say so.
///
/// A failed check wins over an inconclusive one; pass only when nothing failed or was
/// inconclusive. Invalid thresholds (see [`Thresholds::validate`]) never pass.
pub fn judge(
    thresholds: &Thresholds,
    canary: &VariantCounters,
    baseline: &VariantCounters,
) -> Check {
    let q = thresholds.latency_quantile;
    let canary_measured = measure(canary, q);
    let baseline_measured = measure(baseline, q);
    if let Err(error) = thresholds.validate() {
        return Check {
            verdict: Verdict::Inconclusive,
            reasons: vec![format!("the analysis thresholds are invalid: {error}")],
            canary: canary_measured,
            baseline: baseline_measured,
            p_value: None,
        };
    }

    let responses = canary.total_responses();
    let mut findings: Vec<Finding> = volume(responses, thresholds.min_requests)
        .into_iter()
        .collect();
    // Too few requests make the absolute thresholds noise: they are applied only above
    // `minRequests`.
    if responses > 0 && responses >= thresholds.min_requests {
        findings.extend(success_rate(thresholds, canary, &canary_measured));
        findings.extend(latency(thresholds, canary, &canary_measured));
    }
    let mut p_value = None;
    if responses > 0 && thresholds.compare_with_stable {
        let (finding, p) = comparison(thresholds, canary, baseline);
        findings.extend(finding);
        p_value = p;
    }
    Check {
        verdict: fold(&findings),
        reasons: findings.into_iter().map(|finding| finding.reason).collect(),
        canary: canary_measured,
        baseline: baseline_measured,
        p_value,
    }
}

/// What one check found: how it bears on the verdict, and the sentence that says so.
#[derive(Debug, Clone, PartialEq)]
struct Finding {
    /// `Pass`: the check ran and passed (or was skipped, which fails nothing).
    verdict: Verdict,
    reason: String,
}

impl Finding {
    fn new(verdict: Verdict, reason: String) -> Finding {
        Finding { verdict, reason }
    }
}

/// The verdict of a window from its findings: a failed check wins over an inconclusive one; pass
/// only when nothing failed or was inconclusive.
fn fold(findings: &[Finding]) -> Verdict {
    let any = |verdict| findings.iter().any(|finding| finding.verdict == verdict);
    if any(Verdict::Fail) {
        Verdict::Fail
    } else if any(Verdict::Inconclusive) {
        Verdict::Inconclusive
    } else {
        Verdict::Pass
    }
}

/// Whether the canary served enough requests to be judged: inconclusive with none, or with fewer
/// than `min_requests`; nothing to say otherwise.
fn volume(responses: u64, min_requests: u64) -> Option<Finding> {
    if responses == 0 {
        Some(Finding::new(
            Verdict::Inconclusive,
            "the canary served no requests in this window, so there is nothing to judge".into(),
        ))
    } else if responses < min_requests {
        Some(Finding::new(
            Verdict::Inconclusive,
            format!(
                "the canary served {responses} {} in this window; at least {min_requests} are \
                 needed to judge its success rate and latency",
                plural(responses, "request", "requests"),
            ),
        ))
    } else {
        None
    }
}

/// The canary's success rate against `minSuccessRate`, if that is set.
fn success_rate(
    thresholds: &Thresholds,
    canary: &VariantCounters,
    measured: &Measured,
) -> Option<Finding> {
    let (min, rate) = (thresholds.min_success_rate?, measured.success_rate?);
    let (failures, responses) = (canary.failures(), canary.total_responses());
    let counted = format!(
        "{failures} {} (5xx, reset or gRPC server error) in {responses} responses",
        plural(failures, "failure", "failures")
    );
    let (verdict, verb) = if rate < min {
        (Verdict::Fail, "is below")
    } else {
        (Verdict::Pass, "meets")
    };
    Some(Finding::new(
        verdict,
        format!(
            "canary success rate {} ({counted}) {verb} the minimum {}",
            percent(rate, Some(min)),
            percent_limit(min)
        ),
    ))
}

/// The canary's latency at `latencyQuantile` against `maxLatencyMs`, if that is set:
/// inconclusive without observations, or when the quantile lies beyond the histogram's highest
/// finite bound and that bound is below the limit (the latency could be on either side).
fn latency(
    thresholds: &Thresholds,
    canary: &VariantCounters,
    measured: &Measured,
) -> Option<Finding> {
    let max = thresholds.max_latency_ms?;
    let q = thresholds.latency_quantile;
    let name = quantile_name(q);
    let Some(latency) = measured.latency_ms else {
        return Some(Finding::new(
            Verdict::Inconclusive,
            format!(
                "no latency observations for the canary in this window yet (Envoy adds them to \
                 its histograms at each stats flush), so its {name} latency cannot be checked \
                 against {} ms",
                number(max)
            ),
        ));
    };
    if quantile_beyond_highest_bound(&canary.duration_buckets, q) {
        let highest = highest_finite_bound(&canary.duration_buckets);
        let (verdict, outcome) = if highest >= max {
            (
                Verdict::Fail,
                format!("so above the maximum {} ms", number(max)),
            )
        } else {
            (
                Verdict::Inconclusive,
                format!(
                    "so it cannot be checked against the maximum {} ms (give Envoy's histogram \
                     higher bucket bounds)",
                    number(max)
                ),
            )
        };
        return Some(Finding::new(
            verdict,
            format!(
                "canary {name} latency is beyond {} ms, the histogram's highest bucket bound, \
                 {outcome}",
                number(highest)
            ),
        ));
    }
    let (verdict, verb) = if latency > max {
        (Verdict::Fail, "is above the maximum")
    } else {
        (Verdict::Pass, "is within the maximum")
    };
    Some(Finding::new(
        verdict,
        format!(
            "canary {name} latency {} ms (interpolated in the histogram bucket {}) {verb} {} ms",
            shown(latency, max),
            bucket_around(&canary.duration_buckets, latency),
            number(max)
        ),
    ))
}

/// Fisher's exact test of "the canary fails more often than stable", with at least
/// `minBaselineRequests` stable responses (otherwise skipped, which fails nothing); the finding
/// and the p-value, if the test ran.
fn comparison(
    thresholds: &Thresholds,
    canary: &VariantCounters,
    baseline: &VariantCounters,
) -> (Option<Finding>, Option<f64>) {
    let (failures, responses) = (canary.failures(), canary.total_responses());
    let (baseline_failures, baseline_responses) = (baseline.failures(), baseline.total_responses());
    if baseline_responses == 0 {
        let reason = "stable served no requests in this window, so the comparison of error rates \
                      was skipped";
        return (Some(Finding::new(Verdict::Pass, reason.into())), None);
    }
    if baseline_responses < thresholds.min_baseline_requests {
        let reason = format!(
            "stable served {baseline_responses} {} in this window, fewer than the {} needed to \
             compare error rates, so the comparison was skipped",
            plural(baseline_responses, "request", "requests"),
            thresholds.min_baseline_requests
        );
        return (Some(Finding::new(Verdict::Pass, reason)), None);
    }
    let Some(p) = canary_worse_p_value(failures, responses, baseline_failures, baseline_responses)
    else {
        return (None, None);
    };
    let canary_rate = failures as f64 / responses as f64;
    let baseline_rate = baseline_failures as f64 / baseline_responses as f64;
    let rates = format!(
        "canary error rate {} ({failures} of {responses})",
        percent(canary_rate, Some(baseline_rate))
    );
    let stable = format!(
        "stable's {} ({baseline_failures} of {baseline_responses})",
        percent(baseline_rate, Some(canary_rate)),
    );
    let alpha = number(thresholds.max_p_value);
    let (verdict, comparison) = if p < thresholds.max_p_value {
        (
            Verdict::Fail,
            format!(
                "is significantly above {stable}: Fisher exact one-sided p = {} < {alpha}",
                p_text(p)
            ),
        )
    } else {
        (
            Verdict::Pass,
            format!(
                "is not significantly above {stable}: Fisher exact one-sided p = {} ≥ {alpha}",
                p_text(p)
            ),
        )
    };
    (
        Some(Finding::new(verdict, format!("{rates} {comparison}"))),
        Some(p),
    )
}

fn measure(counters: &VariantCounters, q: f64) -> Measured {
    let requests = counters.total_responses();
    Measured {
        requests,
        success_rate: (requests > 0).then(|| counters.successes() as f64 / requests as f64),
        latency_ms: quantile(&counters.duration_buckets, q),
    }
}

fn plural<'a>(count: u64, one: &'a str, many: &'a str) -> &'a str {
    if count == 1 {
        one
    } else {
        many
    }
}

/// `p99` for 0.99, `p99.9` for 0.999, `p50` for 0.5.
fn quantile_name(q: f64) -> String {
    format!("p{}", number(q * 100.0))
}

/// A number with at most four decimals and no trailing zeros: `0.01`, `200`, `99.5`.
fn number(x: f64) -> String {
    let text = format!("{x:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_string()
    } else {
        text.to_string()
    }
}

/// A limit in percent: `99 %`, `99.95 %`.
fn percent_limit(rate: f64) -> String {
    format!("{} %", number(rate * 100.0))
}

/// A measured rate in percent with one decimal, or more where one would mislead: when it would
/// round to 0 or 100 without being that, or read the same as `other` without being equal.
fn percent(rate: f64, other: Option<f64>) -> String {
    let value = rate * 100.0;
    if value == 0.0 || value == 100.0 {
        return format!("{value} %");
    }
    let other = other.map(|o| o * 100.0);
    let mut decimals = 1;
    loop {
        let text = format!("{value:.decimals$}");
        let rounded: f64 = text.parse().unwrap_or(value);
        let misleading = rounded == 100.0
            || rounded == 0.0
            || other.is_some_and(|o| o != value && format!("{o:.decimals$}") == text);
        if !misleading || decimals >= 6 {
            return format!("{text} %");
        }
        decimals += 1;
    }
}

/// A measured latency in ms: three significant digits, more if it would read like `limit`.
fn shown(value: f64, limit: f64) -> String {
    let mut decimals: usize = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    loop {
        let text = format!("{value:.decimals$}");
        if value == limit || decimals >= 6 || format!("{limit:.decimals$}") != text {
            return text;
        }
        decimals += 1;
    }
}

/// The bucket around a latency estimate: `100–250 ms`.
fn bucket_around(buckets: &[(f64, u64)], value: f64) -> String {
    let finite: Vec<f64> = buckets
        .iter()
        .map(|(le, _)| *le)
        .filter(|le| le.is_finite())
        .collect();
    let upper = finite
        .iter()
        .copied()
        .find(|le| *le >= value)
        .unwrap_or(highest_finite_bound(buckets));
    let lower = finite
        .iter()
        .copied()
        .take_while(|le| *le < upper)
        .last()
        .unwrap_or(0.0);
    format!("{}–{} ms", number(lower), number(upper))
}

fn highest_finite_bound(buckets: &[(f64, u64)]) -> f64 {
    buckets
        .iter()
        .map(|(le, _)| *le)
        .filter(|le| le.is_finite())
        .fold(f64::NEG_INFINITY, f64::max)
}

/// Whether the `q`-quantile lies in the `+Inf` bucket, where [`quantile`] can only answer the
/// highest finite bound: more than a `1 − q` share of the observations are above it.
fn quantile_beyond_highest_bound(buckets: &[(f64, u64)], q: f64) -> bool {
    let highest = highest_finite_bound(buckets);
    let count_up_to = |limit: f64| {
        buckets
            .iter()
            .filter(|(le, _)| *le <= limit)
            .map(|(_, count)| *count)
            .max()
            .unwrap_or(0)
    };
    let within = count_up_to(highest);
    let total = count_up_to(f64::INFINITY);
    let rank = q * total as f64;
    total > 0 && !(within as f64 >= rank && within > 0)
}

/// A p-value with two significant digits: `0.41`, `0.0043`, `5.3e-8`.
fn p_text(p: f64) -> String {
    if p == 0.0 {
        "0 (below 1e-308)".to_string()
    } else if p >= 1e-4 {
        let decimals = (1 - p.log10().floor() as i32).max(2) as usize;
        let text = format!("{p:.decimals$}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{p:.1e}")
    }
}

#[cfg(test)]
mod mirror_tests {
    use super::*;

    #[test]
    fn mirrored_copies_are_judged_by_their_success_rate() {
        let thresholds = Thresholds {
            min_success_rate: Some(0.99),
            min_requests: 20,
            ..Thresholds::default()
        };
        let copies = |answered, server_errors| MirrorCounters {
            marked: answered,
            sent: answered,
            answered,
            server_errors,
        };
        // (copies answered, of which 5xx, thresholds, verdict, reason)
        let none = Thresholds {
            min_requests: 20,
            ..Thresholds::default()
        };
        let cases: Vec<(u64, u64, &Thresholds, Verdict, &str)> = vec![
            (
                200,
                0,
                &thresholds,
                Verdict::Pass,
                "mirrored requests 100 % of 200 is at least 99 %",
            ),
            (200, 2, &thresholds, Verdict::Pass, "99 % of 200"),
            (
                200,
                3,
                &thresholds,
                Verdict::Fail,
                "98.5 % (3 5xx in 200) is below the minimum 99 %",
            ),
            (
                19,
                19,
                &thresholds,
                Verdict::Inconclusive,
                "answered 19 mirrored requests",
            ),
            (
                0,
                0,
                &thresholds,
                Verdict::Inconclusive,
                "answered 0 mirrored requests",
            ),
            (200, 100, &none, Verdict::Pass, "no minSuccessRate"),
        ];
        for (answered, errors, thresholds, verdict, reason) in cases {
            let check = judge_mirror(thresholds, &copies(answered, errors));
            assert_eq!(check.verdict, verdict, "{answered}/{errors}: {check:?}");
            assert!(check.reasons[0].contains(reason), "{:?}", check.reasons);
            assert_eq!(check.canary.requests, answered);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const INF: f64 = f64::INFINITY;

    /// `ok` 2xx responses, `errors` 5xx, `resets` resets, latency buckets as given.
    fn variant(ok: u64, errors: u64, resets: u64, buckets: &[(f64, u64)]) -> VariantCounters {
        let mut responses = BTreeMap::new();
        for (class, count) in [("2xx", ok), ("4xx", 0), ("5xx", errors), ("reset", resets)] {
            responses.insert(class.to_string(), count);
        }
        VariantCounters {
            requests: ok + errors + resets,
            responses,
            duration_buckets: buckets.to_vec(),
            duration_count: buckets.last().map_or(0, |(_, count)| *count),
            duration_sum: 0.0,
        }
    }

    /// All `n` observations between 10 and 25 ms.
    fn fast(n: u64) -> Vec<(f64, u64)> {
        vec![
            (10.0, 0),
            (25.0, n),
            (50.0, n),
            (100.0, n),
            (250.0, n),
            (INF, n),
        ]
    }

    /// 98 % of `n` observations at most 25 ms, the rest between 100 and 250 ms.
    fn slow_tail(n: u64) -> Vec<(f64, u64)> {
        let quick = n * 98 / 100;
        vec![
            (10.0, 0),
            (25.0, quick),
            (50.0, quick),
            (100.0, quick),
            (250.0, n),
            (INF, n),
        ]
    }

    fn thresholds() -> Thresholds {
        Thresholds {
            min_success_rate: Some(0.99),
            max_latency_ms: Some(200.0),
            latency_quantile: 0.99,
            min_requests: 100,
            max_p_value: 0.01,
            min_baseline_requests: 100,
            compare_with_stable: true,
        }
    }

    /// Name, thresholds, canary, baseline, the expected verdict and reasons.
    type Case<'a> = (
        &'a str,
        Thresholds,
        VariantCounters,
        VariantCounters,
        Verdict,
        &'a [&'a str],
    );

    #[test]
    fn verdicts() {
        let stable = variant(9990, 10, 0, &fast(10000));
        let cases: &[Case] = &[
            (
                "healthy canary",
                thresholds(),
                variant(999, 1, 0, &fast(1000)),
                stable.clone(),
                Verdict::Pass,
                &[
                    "canary success rate 99.9 % (1 failure (5xx, reset or gRPC server error) in 1000 responses) meets the minimum 99 %",
                    "canary p99 latency 24.9 ms (interpolated in the histogram bucket 10–25 ms) is within the maximum 200 ms",
                    "canary error rate 0.1 % (1 of 1000) is not significantly above stable's 0.1 % (10 of 10000): Fisher exact one-sided p = 0.65 ≥ 0.01",
                ],
            ),
            (
                "no traffic is never a pass",
                Thresholds { min_requests: 0, ..thresholds() },
                VariantCounters::default(),
                stable.clone(),
                Verdict::Inconclusive,
                &["the canary served no requests in this window, so there is nothing to judge"],
            ),
            (
                "too little traffic",
                thresholds(),
                variant(40, 0, 0, &fast(40)),
                stable.clone(),
                Verdict::Inconclusive,
                &[
                    "the canary served 40 requests in this window; at least 100 are needed to judge its success rate and latency",
                    "canary error rate 0 % (0 of 40) is not significantly above stable's 0.1 % (10 of 10000): Fisher exact one-sided p = 1 ≥ 0.01",
                ],
            ),
            (
                "too little traffic, but failing all of it is significant",
                thresholds(),
                variant(0, 8, 2, &fast(10)),
                stable.clone(),
                Verdict::Fail,
                &[
                    "the canary served 10 requests in this window; at least 100 are needed to judge its success rate and latency",
                    "canary error rate 100 % (10 of 10) is significantly above stable's 0.1 % (10 of 10000): Fisher exact one-sided p = 6.7e-29 < 0.01",
                ],
            ),
            (
                "success rate below the minimum, resets count",
                Thresholds { max_latency_ms: None, ..thresholds() },
                variant(970, 20, 10, &fast(1000)),
                stable.clone(),
                Verdict::Fail,
                &[
                    "canary success rate 97.0 % (30 failures (5xx, reset or gRPC server error) in 1000 responses) is below the minimum 99 %",
                    "canary error rate 3.0 % (30 of 1000) is significantly above stable's 0.1 % (10 of 10000): Fisher exact one-sided p = 1.3e-23 < 0.01",
                ],
            ),
            (
                "latency above the maximum",
                Thresholds { min_success_rate: None, max_latency_ms: Some(150.0), ..thresholds() },
                variant(1000, 0, 0, &slow_tail(1000)),
                stable.clone(),
                Verdict::Fail,
                &[
                    "canary p99 latency 175 ms (interpolated in the histogram bucket 100–250 ms) is above the maximum 150 ms",
                    "canary error rate 0 % (0 of 1000) is not significantly above stable's 0.1 % (10 of 10000): Fisher exact one-sided p = 1 ≥ 0.01",
                ],
            ),
            (
                "no latency observations yet",
                Thresholds { min_success_rate: None, ..thresholds() },
                variant(1000, 0, 0, &[]),
                stable.clone(),
                Verdict::Inconclusive,
                &[
                    "no latency observations for the canary in this window yet (Envoy adds them to its histograms at each stats flush), so its p99 latency cannot be checked against 200 ms",
                    "canary error rate 0 % (0 of 1000) is not significantly above stable's 0.1 % (10 of 10000): Fisher exact one-sided p = 1 ≥ 0.01",
                ],
            ),
            (
                "worse than stable, though above the absolute minimum",
                Thresholds { min_success_rate: Some(0.95), max_latency_ms: None, ..thresholds() },
                variant(969, 31, 0, &fast(1000)),
                variant(998, 2, 0, &fast(1000)),
                Verdict::Fail,
                &[
                    "canary success rate 96.9 % (31 failures (5xx, reset or gRPC server error) in 1000 responses) meets the minimum 95 %",
                    "canary error rate 3.1 % (31 of 1000) is significantly above stable's 0.2 % (2 of 1000): Fisher exact one-sided p = 5.3e-8 < 0.01",
                ],
            ),
            (
                "stable too quiet to compare: skipped, not failed",
                Thresholds { max_latency_ms: None, ..thresholds() },
                variant(5000, 3, 0, &fast(5003)),
                variant(10, 0, 0, &fast(10)),
                Verdict::Pass,
                &[
                    "canary success rate 99.9 % (3 failures (5xx, reset or gRPC server error) in 5003 responses) meets the minimum 99 %",
                    "stable served 10 requests in this window, fewer than the 100 needed to compare error rates, so the comparison was skipped",
                ],
            ),
            (
                "no stable traffic at all (the canary has 100 %)",
                Thresholds { min_baseline_requests: 0, max_latency_ms: None, ..thresholds() },
                variant(1000, 0, 0, &fast(1000)),
                VariantCounters::default(),
                Verdict::Pass,
                &[
                    "canary success rate 100 % (0 failures (5xx, reset or gRPC server error) in 1000 responses) meets the minimum 99 %",
                    "stable served no requests in this window, so the comparison of error rates was skipped",
                ],
            ),
            (
                "a failure and an inconclusive: fail",
                thresholds(),
                variant(900, 100, 0, &[]),
                stable.clone(),
                Verdict::Fail,
                &[
                    "canary success rate 90.0 % (100 failures (5xx, reset or gRPC server error) in 1000 responses) is below the minimum 99 %",
                    "no latency observations for the canary in this window yet (Envoy adds them to its histograms at each stats flush), so its p99 latency cannot be checked against 200 ms",
                    "canary error rate 10.0 % (100 of 1000) is significantly above stable's 0.1 % (10 of 10000): Fisher exact one-sided p = 1.4e-93 < 0.01",
                ],
            ),
            (
                "just below the minimum reads as below it",
                Thresholds { max_latency_ms: None, min_baseline_requests: u64::MAX, ..thresholds() },
                variant(98_996, 1004, 0, &[]),
                stable.clone(),
                Verdict::Fail,
                &[
                    "canary success rate 98.996 % (1004 failures (5xx, reset or gRPC server error) in 100000 responses) is below the minimum 99 %",
                    "stable served 10000 requests in this window, fewer than the 18446744073709551615 needed to compare error rates, so the comparison was skipped",
                ],
            ),
            (
                "invalid thresholds never pass",
                Thresholds { max_p_value: 0.0, ..thresholds() },
                variant(1000, 0, 0, &fast(1000)),
                stable.clone(),
                Verdict::Inconclusive,
                &["the analysis thresholds are invalid: maxPValue: 0 is not strictly between 0 and 1 (0.01 and 0.05 are usual)"],
            ),
        ];
        for (name, thresholds, canary, baseline, verdict, reasons) in cases {
            let check = judge(thresholds, canary, baseline);
            assert_eq!(check.verdict, *verdict, "{name}: {:#?}", check.reasons);
            assert_eq!(check.reasons, *reasons, "{name}");
        }
    }

    #[test]
    fn reports_the_measurements() {
        let check = judge(
            &thresholds(),
            &variant(969, 31, 0, &slow_tail(1000)),
            &variant(998, 2, 0, &fast(1000)),
        );
        assert_eq!(
            check.canary,
            Measured {
                requests: 1000,
                success_rate: Some(0.969),
                latency_ms: Some(175.0),
            }
        );
        assert_eq!(check.baseline.requests, 1000);
        assert_eq!(check.baseline.success_rate, Some(0.998));
        let p = check.p_value.unwrap();
        assert!((p - 5.3179729017835834e-08).abs() < 1e-18, "{p}");
    }

    #[test]
    fn a_latency_beyond_the_last_bound_is_not_taken_for_that_bound() {
        // 99 % of requests beyond 100 ms, the highest bound: the p99 is unknown above 100 ms.
        let buckets = [(10.0, 0), (100.0, 10), (INF, 1000)];
        let cases = [
            (
                200.0,
                Verdict::Inconclusive,
                "canary p99 latency is beyond 100 ms, the histogram's highest bucket bound, so it cannot be checked against the maximum 200 ms (give Envoy's histogram higher bucket bounds)",
            ),
            (
                100.0,
                Verdict::Fail,
                "canary p99 latency is beyond 100 ms, the histogram's highest bucket bound, so above the maximum 100 ms",
            ),
        ];
        for (max, verdict, reason) in cases {
            let check = judge(
                &Thresholds {
                    min_success_rate: None,
                    max_latency_ms: Some(max),
                    ..thresholds()
                },
                &variant(1000, 0, 0, &buckets),
                &variant(1000, 0, 0, &buckets),
            );
            assert_eq!(check.verdict, verdict, "{:?}", check.reasons);
            assert_eq!(check.reasons[0], reason);
            assert_eq!(check.canary.latency_ms, Some(100.0));
        }
    }

    #[test]
    fn serializes_in_camel_case() {
        let check = judge(
            &thresholds(),
            &variant(999, 1, 0, &fast(1000)),
            &variant(999, 1, 0, &fast(1000)),
        );
        let json = serde_json::to_value(&check).unwrap();
        assert_eq!(json["verdict"], "pass");
        assert_eq!(json["canary"]["successRate"], 0.999);
        assert!(json["pValue"].is_number());
        let back: Check = serde_json::from_value(json).unwrap();
        assert_eq!(back, check);

        let parsed: Thresholds =
            serde_json::from_str(r#"{"minSuccessRate": 0.99, "maxLatencyMs": 500}"#).unwrap();
        assert_eq!(
            parsed,
            Thresholds {
                min_success_rate: Some(0.99),
                max_latency_ms: Some(500.0),
                ..Thresholds::default()
            }
        );
        assert!(serde_json::from_str::<Thresholds>(r#"{"minSucessRate": 0.99}"#).is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let cases = [
            (
                Thresholds {
                    min_success_rate: Some(1.5),
                    ..thresholds()
                },
                "minSuccessRate: 1.5 is not between 0 and 1",
            ),
            (
                Thresholds {
                    max_latency_ms: Some(0.0),
                    ..thresholds()
                },
                "maxLatencyMs: 0 is not a positive number",
            ),
            (
                Thresholds {
                    latency_quantile: 99.0,
                    ..thresholds()
                },
                "latencyQuantile: 99 is not between 0 and 1",
            ),
            (
                Thresholds {
                    max_p_value: 1.0,
                    ..thresholds()
                },
                "maxPValue: 1 is not strictly between 0 and 1 (0.01 and 0.05 are usual)",
            ),
        ];
        for (thresholds, message) in cases {
            assert_eq!(thresholds.validate().unwrap_err().to_string(), message);
        }
        assert_eq!(thresholds().validate(), Ok(()));
        assert_eq!(Thresholds::default().validate(), Ok(()));
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(percent(0.031, Some(0.002)), "3.1 %");
        assert_eq!(percent(0.99996, None), "99.996 %");
        assert_eq!(percent(0.00004, None), "0.004 %");
        assert_eq!(percent(1.0, None), "100 %");
        assert_eq!(percent(0.0, None), "0 %");
        assert_eq!(percent(0.98996, Some(0.99)), "98.996 %");
        assert_eq!(percent_limit(0.9995), "99.95 %");
        assert_eq!(quantile_name(0.999), "p99.9");
        assert_eq!(quantile_name(0.5), "p50");
        assert_eq!(shown(200.4, 200.0), "200.4");
        assert_eq!(shown(0.987, 5.0), "0.99");
        assert_eq!(p_text(0.41), "0.41");
        assert_eq!(p_text(0.0043), "0.0043");
        assert_eq!(p_text(0.00043), "0.00043");
        assert_eq!(p_text(1.0), "1");
        assert_eq!(p_text(5.3e-8), "5.3e-8");
        assert_eq!(p_text(0.0), "0 (below 1e-308)");
    }

    #[test]
    fn the_comparison_can_be_switched_off() {
        // 3 % errors against a clean stable fails the comparison, and passes without it.
        let canary = variant(970, 30, 0, &fast(1000));
        let stable = variant(10_000, 0, 0, &fast(10_000));
        let on = Thresholds {
            min_success_rate: Some(0.95),
            max_latency_ms: None,
            ..thresholds()
        };
        assert_eq!(judge(&on, &canary, &stable).verdict, Verdict::Fail);
        let off = Thresholds {
            compare_with_stable: false,
            ..on
        };
        let check = judge(&off, &canary, &stable);
        assert_eq!(check.verdict, Verdict::Pass, "{:?}", check.reasons);
        assert_eq!(check.p_value, None);
    }
}
