//! The statistics of the report: medians over rounds, ratios between configurations, and the
//! percentiles of timed events (propagation latencies).
//!
//! Ratios are taken per round (both configurations measured minutes apart, under the same background
//! load) and then the median of those is reported. On a shared 2-core machine the load drifts over
//! a run; a per-round ratio cancels most of that drift, a ratio of two overall medians does not.

/// The median of `values`; the mean of the middle two for an even count; `None` when empty or when
/// a value is NaN.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

/// `value / base`, or `None` when the base is zero or either is not finite.
pub fn ratio(value: f64, base: f64) -> Option<f64> {
    (value.is_finite() && base.is_finite() && base != 0.0).then(|| value / base)
}

/// The median of the per-round ratios `values[i] / bases[i]`; rounds where either side is missing
/// or the ratio is undefined are skipped.
pub fn median_ratio(values: &[Option<f64>], bases: &[Option<f64>]) -> Option<f64> {
    let ratios: Vec<f64> = values
        .iter()
        .zip(bases)
        .filter_map(|(value, base)| ratio((*value)?, (*base)?))
        .collect();
    median(&ratios)
}

/// The `q`-quantile of `values` (`0 < q ≤ 1`) by the nearest-rank method: the smallest value with
/// at least a fraction `q` of the values at or below it. Always one of the values, never an
/// interpolation, so with 100 values p99 is the second largest and p50 the 50th. `None` when
/// empty, when a value is NaN, or when `q` is out of range.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) || !(q > 0.0 && q <= 1.0) {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    // The 1-based rank ⌈q·n⌉; the small slack keeps 0.99 × 100 at 99 despite binary fractions.
    let rank = (q * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// p50, p99 and the maximum of a set of timed events, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencySummary {
    /// Events timed.
    pub count: usize,
    /// Median (nearest rank), ms.
    pub p50_ms: f64,
    /// 99th percentile (nearest rank), ms.
    pub p99_ms: f64,
    /// The slowest, ms.
    pub max_ms: f64,
}

impl LatencySummary {
    /// The summary of `values_ms`; `None` when there are none (or one is NaN).
    pub fn of(values_ms: &[f64]) -> Option<LatencySummary> {
        Some(LatencySummary {
            count: values_ms.len(),
            p50_ms: percentile(values_ms, 0.5)?,
            p99_ms: percentile(values_ms, 0.99)?,
            max_ms: percentile(values_ms, 1.0)?,
        })
    }
}

/// Where a measured value stands against a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Verdict {
    /// The target is met.
    Met,
    /// The target is missed.
    Missed,
    /// Nothing was measured (a failed round, or not implemented yet).
    Unknown,
    /// Shown for comparison, with no target of its own.
    Informational,
}

impl Verdict {
    /// `measured <= limit`.
    pub fn at_most(measured: Option<f64>, limit: f64) -> Verdict {
        match measured {
            Some(value) if value <= limit => Verdict::Met,
            Some(_) => Verdict::Missed,
            None => Verdict::Unknown,
        }
    }

    /// `measured >= limit`.
    pub fn at_least(measured: Option<f64>, limit: f64) -> Verdict {
        match measured {
            Some(value) if value >= limit => Verdict::Met,
            Some(_) => Verdict::Missed,
            None => Verdict::Unknown,
        }
    }

    /// The mark shown in the report.
    pub fn mark(self) -> &'static str {
        match self {
            Verdict::Met => "✔",
            Verdict::Missed => "✘",
            Verdict::Unknown => "?",
            Verdict::Informational => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_degenerate_inputs() {
        let cases: [(&[f64], Option<f64>); 7] = [
            (&[], None),
            (&[3.0], Some(3.0)),
            (&[3.0, 1.0, 2.0], Some(2.0)),
            (&[4.0, 1.0, 3.0, 2.0], Some(2.5)),
            (&[1.0, 1.0, 100.0], Some(1.0)),
            (&[-1.0, 5.0], Some(2.0)),
            (&[1.0, f64::NAN], None),
        ];
        for (values, expected) in cases {
            assert_eq!(median(values), expected, "{values:?}");
        }
    }

    #[test]
    fn ratio_refuses_undefined_divisions() {
        let cases = [
            (2.0, 4.0, Some(0.5)),
            (0.0, 4.0, Some(0.0)),
            (2.0, 0.0, None),
            (f64::INFINITY, 1.0, None),
            (1.0, f64::NAN, None),
        ];
        for (value, base, expected) in cases {
            assert_eq!(ratio(value, base), expected, "{value}/{base}");
        }
    }

    #[test]
    fn median_ratio_is_taken_per_round() {
        // Round 2 ran on a busier machine: both sides are slower, the ratio is the same.
        let values = [Some(110.0), Some(220.0), Some(121.0)];
        let bases = [Some(100.0), Some(200.0), Some(100.0)];
        let got = median_ratio(&values, &bases).unwrap();
        assert!((got - 1.1).abs() < 1e-12, "{got}");
        // A missing round on either side is skipped, not counted as zero.
        let got = median_ratio(&[Some(2.0), None, Some(4.0)], &[Some(1.0), Some(1.0), None]);
        assert_eq!(got, Some(2.0));
        assert_eq!(median_ratio(&[None], &[Some(1.0)]), None);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let hundred: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        let cases: [(&[f64], f64, Option<f64>); 11] = [
            (&hundred, 0.5, Some(50.0)),
            (&hundred, 0.99, Some(99.0)),
            (&hundred, 1.0, Some(100.0)),
            (&hundred, 0.01, Some(1.0)),
            (&ten, 0.5, Some(5.0)),
            (&ten, 0.99, Some(10.0)),
            (&[7.0], 0.5, Some(7.0)),
            (&[], 0.5, None),
            (&[1.0, f64::NAN], 0.5, None),
            (&ten, 0.0, None),
            (&ten, 1.5, None),
        ];
        for (values, q, expected) in cases {
            assert_eq!(percentile(values, q), expected, "q {q} of {values:?}");
        }
    }

    #[test]
    fn latency_summaries() {
        // 98 fast events and two slow ones: p99 is the second slowest, max the slowest.
        let mut values = vec![10.0; 98];
        values.extend([400.0, 900.0]);
        let summary = LatencySummary::of(&values).unwrap();
        assert_eq!(
            summary,
            LatencySummary {
                count: 100,
                p50_ms: 10.0,
                p99_ms: 400.0,
                max_ms: 900.0,
            }
        );
        assert_eq!(LatencySummary::of(&[]), None);
    }

    #[test]
    fn verdicts() {
        let cases = [
            (Verdict::at_most(Some(1.03), 1.03), Verdict::Met),
            (Verdict::at_most(Some(1.031), 1.03), Verdict::Missed),
            (Verdict::at_most(None, 1.03), Verdict::Unknown),
            (Verdict::at_least(Some(0.97), 0.97), Verdict::Met),
            (Verdict::at_least(Some(0.96), 0.97), Verdict::Missed),
            (Verdict::at_least(None, 0.97), Verdict::Unknown),
        ];
        for (i, (got, expected)) in cases.into_iter().enumerate() {
            assert_eq!(got, expected, "case {i}");
        }
        assert_eq!(Verdict::Met.mark(), "✔");
        assert_eq!(Verdict::Missed.mark(), "✘");
        assert_eq!(Verdict::Informational.mark(), "");
    }
}
