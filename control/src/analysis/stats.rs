//! The two estimates a check rests on: a percentile from histogram buckets ([`quantile`]) and
//! the one-sided Fisher exact test of "the canary fails more often than stable"
//! ([`canary_worse_p_value`]).

/// The `q`-quantile (0 ≤ q ≤ 1) of the observations in cumulative `buckets` — `(le, count of
/// observations ≤ le)` — with the semantics of Prometheus' `histogram_quantile`:
///
/// - the rank `q × observations` is found in the first bucket whose count reaches it, and the
///   value interpolated linearly inside that bucket, the first bucket starting at 0 (or, if its
///   bound is ≤ 0, that bound is the answer);
/// - if the rank falls into the `+Inf` bucket, the highest finite bound is the answer;
/// - `None` if `q` is outside [0, 1] (or NaN), there are no observations, the highest bucket is
///   not `+Inf`, or there is no finite bucket.
///
/// As in Prometheus, buckets are sorted first, equal bounds are added together, and a count that
/// is lower than a count below it is raised to it (the histogram must be monotonic). One
/// deliberate difference: for q = 0 Prometheus divides 0 by 0 when the first bucket is empty and
/// answers NaN; this answers the lower edge of the first bucket that has observations.
pub fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    if !(0.0..=1.0).contains(&q) {
        return None;
    }
    let mut sorted: Vec<(f64, f64)> = buckets
        .iter()
        .filter(|(le, _)| !le.is_nan())
        .map(|&(le, count)| (le, count as f64))
        .collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    sorted.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 += later.1;
        }
        same
    });
    let mut highest = 0.0f64;
    for bucket in &mut sorted {
        highest = highest.max(bucket.1);
        bucket.1 = highest;
    }
    let (&(last_bound, observations), finite) = sorted.split_last()?;
    if last_bound != f64::INFINITY || finite.is_empty() || observations == 0.0 {
        return None;
    }
    let rank = q * observations;
    // The first bucket reaching the rank; for q = 0, the first with observations.
    let Some(b) = finite
        .iter()
        .position(|&(_, count)| count >= rank && count > 0.0)
    else {
        return finite.last().map(|&(le, _)| le);
    };
    let (end, count) = finite[b];
    if b == 0 && end <= 0.0 {
        return Some(end);
    }
    let (start, below) = match b.checked_sub(1) {
        Some(previous) => finite[previous],
        None => (0.0, 0.0),
    };
    Some(start + (end - start) * ((rank - below) / (count - below)))
}

/// The one-sided p-value of Fisher's exact test that the canary's failure rate is higher than the
/// baseline's: given the totals of the 2×2 table (canary/baseline × failed/not), the probability
/// that at least `canary_failures` of all failures land on the canary if both fail alike.
///
/// Small means "the canary is worse, and it is not luck". Equal rates, or a canary that fails
/// less, give large values; no failures at all give 1. `None` if either total is 0, failures
/// exceed their total, or the totals add up to more than a `u64` holds.
///
/// Exact at every count: the hypergeometric tail is summed term by term, starting from a
/// probability computed with Loader's saddle-point method (what R's `dhyper` does), which keeps
/// its relative error near 1e-12 however large the counts. The sum needs about ten standard
/// deviations of terms; past a million terms (more than ~10¹⁰ responses in one window) it stops
/// and returns an upper bound, so the answer can only err towards "not significant". A p-value
/// below about 1e-308 is returned as 0.
pub fn canary_worse_p_value(
    canary_failures: u64,
    canary_total: u64,
    baseline_failures: u64,
    baseline_total: u64,
) -> Option<f64> {
    if canary_total == 0
        || baseline_total == 0
        || canary_failures > canary_total
        || baseline_failures > baseline_total
    {
        return None;
    }
    let population = canary_total.checked_add(baseline_total)?;
    let failures = canary_failures.checked_add(baseline_failures)?;
    Some(hypergeometric_upper_tail(
        canary_failures,
        population,
        failures,
        canary_total,
    ))
}

/// Terms summed at most; see [`canary_worse_p_value`].
const MAX_TERMS: u64 = 1 << 20;

/// P(X ≥ at_least) for X ~ Hypergeometric: `draws` drawn without replacement from `population`,
/// `marked` of them marked. Requires marked, draws ≤ population.
fn hypergeometric_upper_tail(at_least: u64, population: u64, marked: u64, draws: u64) -> f64 {
    let unmarked = population - marked;
    let lowest = draws.saturating_sub(unmarked);
    let highest = marked.min(draws);
    if at_least <= lowest {
        return 1.0;
    }
    if at_least > highest {
        return 0.0;
    }
    // floor((draws + 1)(marked + 1) / (population + 2)), in u128 against overflow.
    let mode =
        ((u128::from(draws) + 1) * (u128::from(marked) + 1) / (u128::from(population) + 2)) as u64;
    // unmarked − draws + x, which is ≥ 0 for x ≥ lowest though unmarked − draws may not be.
    let above_lowest = |x: u64| (u128::from(unmarked) + u128::from(x) - u128::from(draws)) as f64;
    // Sum on the tail side of the mode, where the terms only shrink: the sum is accurate, and
    // it can stop once they no longer matter.
    let tail = if at_least > mode {
        // Upward from at_least; pmf(x+1)/pmf(x) = (marked−x)(draws−x) / ((x+1)(unmarked−draws+x+1)).
        let mut x = at_least;
        let mut term = ln_hypergeometric_pmf(x, marked, unmarked, draws).exp();
        let mut sum = term;
        let mut terms = 1;
        while x < highest && term > sum * 1e-17 {
            if terms == MAX_TERMS {
                // Every term left is smaller than this one.
                sum += term * (highest - x) as f64;
                break;
            }
            term *=
                ((marked - x) as f64 * (draws - x) as f64) / ((x + 1) as f64 * above_lowest(x + 1));
            sum += term;
            x += 1;
            terms += 1;
        }
        sum
    } else {
        // 1 − P(X ≤ at_least − 1), downward; pmf(x−1)/pmf(x) = x(unmarked−draws+x) / ((marked−x+1)(draws−x+1)).
        // Stopping early leaves the lower sum short, so the p-value errs upwards.
        let mut x = at_least - 1;
        let mut term = ln_hypergeometric_pmf(x, marked, unmarked, draws).exp();
        let mut sum = term;
        let mut terms = 1;
        while x > lowest && term > sum * 1e-17 && terms < MAX_TERMS {
            term *=
                (x as f64 * above_lowest(x)) / ((marked - x + 1) as f64 * (draws - x + 1) as f64);
            sum += term;
            x -= 1;
            terms += 1;
        }
        1.0 - sum
    };
    if tail.is_nan() {
        // Not reachable with the guards above; if it were, "no evidence" is the safe answer.
        return 1.0;
    }
    tail.clamp(0.0, 1.0)
}

/// ln P(X = x) for the hypergeometric distribution, as the ratio of three binomial
/// probabilities with p = draws / population (Loader 2000; R's `dhyper`).
fn ln_hypergeometric_pmf(x: u64, marked: u64, unmarked: u64, draws: u64) -> f64 {
    let population = marked as f64 + unmarked as f64;
    let p = draws as f64 / population;
    let q = (population - draws as f64) / population;
    ln_binomial_pmf(x as f64, marked as f64, p, q)
        + ln_binomial_pmf((draws - x) as f64, unmarked as f64, p, q)
        - ln_binomial_pmf(draws as f64, population, p, q)
}

/// ln of C(n, x) pˣ qⁿ⁻ˣ with q = 1 − p, accurate for every n: the Stirling remainders and the
/// deviance terms are computed directly instead of as differences of huge log-factorials.
fn ln_binomial_pmf(x: f64, n: f64, p: f64, q: f64) -> f64 {
    if p == 0.0 {
        return if x == 0.0 { 0.0 } else { f64::NEG_INFINITY };
    }
    if q == 0.0 {
        return if x == n { 0.0 } else { f64::NEG_INFINITY };
    }
    if x == 0.0 {
        if n == 0.0 {
            return 0.0;
        }
        return if p < 0.1 {
            -deviance(n, n * q) - n * p
        } else {
            n * q.ln()
        };
    }
    if x == n {
        return if q < 0.1 {
            -deviance(n, n * p) - n * q
        } else {
            n * p.ln()
        };
    }
    let stirling = stirling_error(n) - stirling_error(x) - stirling_error(n - x);
    let spread = std::f64::consts::TAU.ln() + x.ln() + (-x / n).ln_1p();
    stirling - deviance(x, n * p) - deviance(n - x, n * q) - 0.5 * spread
}

/// ln n! − ln(√(2πn) (n/e)ⁿ), the error of Stirling's formula, for whole n ≥ 1.
fn stirling_error(n: f64) -> f64 {
    if n <= 15.0 {
        let factorial = (1..=n as u64).product::<u64>() as f64;
        return factorial.ln() - (n + 0.5) * n.ln() + n - 0.5 * std::f64::consts::TAU.ln();
    }
    // 1/(12n) − 1/(360n³) + 1/(1260n⁵) − 1/(1680n⁷) + 1/(1188n⁹); the next term is below 1e-16.
    let nn = n * n;
    (1.0 / 12.0
        - (1.0 / 360.0 - (1.0 / 1260.0 - (1.0 / 1680.0 - 1.0 / 1188.0 / nn) / nn) / nn) / nn)
        / n
}

/// x ln(x/m) + m − x, the binomial deviance term, without cancellation when x ≈ m.
fn deviance(x: f64, m: f64) -> f64 {
    if (x - m).abs() < 0.1 * (x + m) {
        let v = (x - m) / (x + m);
        let mut sum = (x - m) * v;
        let mut power = 2.0 * x * v;
        let v2 = v * v;
        for j in 1..1000 {
            power *= v2;
            let next = sum + power / f64::from(2 * j + 1);
            if next == sum {
                return next;
            }
            sum = next;
        }
        return sum;
    }
    x * (x / m).ln() + m - x
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(got: f64, want: f64, relative: f64) -> bool {
        got == want || (got - want).abs() <= relative * want.abs()
    }

    const ENVOY: [(f64, u64); 8] = [
        (0.5, 1),
        (1.0, 104),
        (5.0, 106),
        (10.0, 107),
        (25.0, 107),
        (50.0, 107),
        (100.0, 107),
        (f64::INFINITY, 107),
    ];

    /// Buckets, q, the expected quantile.
    type Case<'a> = (&'a [(f64, u64)], f64, Option<f64>);

    #[test]
    fn quantiles_follow_histogram_quantile() {
        let inf = f64::INFINITY;
        let cases: &[Case] = &[
            // Interpolation inside a bucket: rank 50 of 100 is halfway through (10, 20].
            (&[(10.0, 25), (20.0, 75), (inf, 100)], 0.5, Some(15.0)),
            // The first bucket starts at 0: rank 10 of 100 is 40 % into (0, 10].
            (&[(10.0, 25), (20.0, 75), (inf, 100)], 0.1, Some(4.0)),
            // Exactly on a bucket's count: its upper bound.
            (&[(10.0, 25), (20.0, 75), (inf, 100)], 0.25, Some(10.0)),
            (&[(10.0, 25), (20.0, 75), (inf, 100)], 0.75, Some(20.0)),
            // In the +Inf bucket: the highest finite bound.
            (&[(10.0, 25), (20.0, 75), (inf, 100)], 0.99, Some(20.0)),
            (&[(10.0, 25), (20.0, 75), (inf, 100)], 1.0, Some(20.0)),
            // q = 1 inside a finite bucket: its upper bound.
            (&[(10.0, 25), (20.0, 100), (inf, 100)], 1.0, Some(20.0)),
            // q = 0: the lower edge of the first bucket with observations.
            (&[(10.0, 0), (20.0, 4), (inf, 4)], 0.0, Some(10.0)),
            (&[(10.0, 3), (20.0, 4), (inf, 4)], 0.0, Some(0.0)),
            // A first bound ≤ 0 is returned as is.
            (&[(-1.0, 5), (20.0, 10), (inf, 10)], 0.2, Some(-1.0)),
            // The real Envoy histogram: p99 of 107 → rank 105.93 in (1, 5], 104 below, 2 inside.
            (&ENVOY, 0.99, Some(1.0 + 4.0 * (105.93 - 104.0) / 2.0)),
            (&ENVOY, 0.5, Some(0.5 + 0.5 * (53.5 - 1.0) / 103.0)),
            // Unsorted input, duplicate bounds added, non-monotonic counts raised.
            (&[(inf, 100), (20.0, 75), (10.0, 25)], 0.5, Some(15.0)),
            (
                &[(10.0, 10), (10.0, 15), (20.0, 75), (inf, 100)],
                0.5,
                Some(15.0),
            ),
            (
                &[(10.0, 25), (15.0, 20), (20.0, 75), (inf, 100)],
                0.5,
                Some(17.5),
            ),
            // None: no observations, q outside [0, 1], no +Inf bucket, only +Inf, nothing.
            (&[(10.0, 0), (inf, 0)], 0.5, None),
            (&[(10.0, 25), (inf, 100)], 1.01, None),
            (&[(10.0, 25), (inf, 100)], -0.1, None),
            (&[(10.0, 25), (inf, 100)], f64::NAN, None),
            (&[(10.0, 25), (20.0, 100)], 0.5, None),
            (&[(inf, 100)], 0.5, None),
            (&[], 0.5, None),
        ];
        for (buckets, q, want) in cases {
            let got = quantile(buckets, *q);
            let ok = match (got, want) {
                (Some(got), Some(want)) => close(got, *want, 1e-12),
                (None, None) => true,
                _ => false,
            };
            assert!(ok, "quantile({buckets:?}, {q}) = {got:?}, want {want:?}");
        }
    }

    /// Reference values from an independent computation: exact rational arithmetic over the
    /// hypergeometric terms in Python (`fractions`, checked against `math.comb`), and mpmath at 60
    /// digits for the largest tables.
    const FISHER: [(u64, u64, u64, u64, f64); 22] = [
        // Fisher's tea-tasting table: (16 + 1) / 70.
        (3, 4, 1, 4, 0.24285714285714285),
        (0, 100, 0, 100, 1.0),
        (1, 10, 0, 10, 0.5),
        (0, 10, 5, 10, 1.0),
        (10, 10, 10, 10, 1.0),
        (31, 1000, 2, 1000, 5.3179729017835834e-08),
        (10, 100, 3, 900, 1.4508847667116573e-08),
        (2, 50, 0, 50, 0.2474747474747475),
        (5, 200, 1, 2000, 3.2951853562561584e-05),
        (1200, 1_000_000, 1000, 1_000_000, 1.0795513964348431e-05),
        (60, 2_000_000, 30, 3_000_000, 2.910884891163773e-07),
        (5, 5, 0, 1_000_000, 1.1999820001679987e-28),
        (1, 1000, 100, 1000, 1.0),
        (0, 1, 0, 1, 1.0),
        (1, 1, 0, 1, 0.5),
        (100, 100, 0, 100, 1.1043803465997514e-59),
        (1000, 1_000_000, 1200, 1_000_000, 0.9999910871995602),
        (40, 3_000_000, 0, 3_000_000, 9.093764743683143e-13),
        (2, 1_000_000, 0, 9_000_000, 0.0099999909999991),
        (1100, 1_000_000, 4000, 4_000_000, 0.0028744767683265343),
        // 5.6e-833: below the smallest double.
        (3000, 1_000_000, 2000, 4_000_000, 0.0),
        (0, 1_000_000, 3000, 1_000_000, 1.0),
    ];

    #[test]
    fn fisher_matches_independent_values() {
        for (cf, ct, bf, bt, want) in FISHER {
            let got = canary_worse_p_value(cf, ct, bf, bt).unwrap();
            assert!(
                close(got, want, 1e-12),
                "p({cf}/{ct} vs {bf}/{bt}) = {got:e}, want {want:e}"
            );
        }
    }

    #[test]
    fn fisher_edge_cases() {
        assert_eq!(canary_worse_p_value(0, 0, 0, 10), None);
        assert_eq!(canary_worse_p_value(0, 10, 0, 0), None);
        assert_eq!(canary_worse_p_value(11, 10, 0, 10), None);
        assert_eq!(canary_worse_p_value(0, 10, 11, 10), None);
        assert_eq!(canary_worse_p_value(0, 10, 0, 10), Some(1.0));
        // Totals whose sum overflows a u64.
        assert_eq!(canary_worse_p_value(0, u64::MAX, 0, 1), None);
        assert_eq!(
            canary_worse_p_value(0, u64::MAX / 2, 0, u64::MAX / 2),
            Some(1.0)
        );
        // Canary better than baseline: nowhere near significant.
        assert!(canary_worse_p_value(0, 1000, 50, 1000).unwrap() == 1.0);
        // Near the middle of a huge table: about 350 000 terms, still exact. P(X ≥ mode) is a
        // half plus half the mode's probability, 1 / (2 √(2π) σ) with σ ≈ 35 355.
        let p = canary_worse_p_value(5_000_000_000, 10_000_000_000, 5_000_000_000, 10_000_000_000)
            .unwrap();
        assert!((p - 0.5000056).abs() < 1e-6, "{p}");
        // Beyond a million terms the sum stops early, on the safe side: never below the truth.
        let p = canary_worse_p_value(5 << 40, 10 << 40, 5 << 40, 10 << 40).unwrap();
        assert!((0.5..=1.0).contains(&p), "{p}");
        let p = canary_worse_p_value((5 << 40) + 100_000, 10 << 40, (5 << 40) - 100_000, 10 << 40)
            .unwrap();
        assert!((0.45..=1.0).contains(&p), "{p}");
        // Huge counts stay finite.
        let p = canary_worse_p_value(1 << 40, 1 << 50, 1 << 39, 1 << 50).unwrap();
        assert!(p.is_finite() && (0.0..=1.0).contains(&p), "{p}");
    }

    #[test]
    fn the_canary_being_better_is_the_mirror_image() {
        // With X the canary's failures, P(X ≥ a) + P(X ≤ a) = 1 + P(X = a), and P(X ≤ a) is the
        // p-value with the roles swapped.
        for (cf, ct, bf, bt, _) in FISHER {
            let canary_worse = canary_worse_p_value(cf, ct, bf, bt).unwrap();
            let baseline_worse = canary_worse_p_value(bf, bt, cf, ct).unwrap();
            let point = ln_hypergeometric_pmf(cf, cf + bf, ct + bt - cf - bf, ct).exp();
            assert!(
                (canary_worse + baseline_worse - 1.0 - point).abs() < 1e-9,
                "{cf}/{ct} vs {bf}/{bt}: {canary_worse} + {baseline_worse} vs 1 + {point}"
            );
        }
    }

    #[test]
    fn hypergeometric_probabilities_match_mpmath() {
        // (x, marked, unmarked, draws, ln P(X = x)) from mpmath log-gamma at 60 digits.
        let cases = [
            (3, 4, 4, 4, -1.4759065198095778),
            (1200, 2200, 1997800, 1000000, -13.182796457661881),
            (0, 10, 90, 50, -7.4296086983385266),
            (10, 10, 90, 50, -7.4296086983385266),
            (50, 1000, 50, 50, -2.499791562332397),
            (
                2000,
                2_000_000,
                1_000_000_000_000_000,
                1_000_000_000_000,
                -4.718931178516954,
            ),
            (1, 1, 1, 1, -std::f64::consts::LN_2),
            (
                1,
                1,
                1_000_000_000_000_000_000,
                100_000_000_000_000_000,
                -std::f64::consts::LN_10,
            ),
            (31, 33, 1967, 1000, -16.810120365539184),
        ];
        for (x, marked, unmarked, draws, want) in cases {
            let got = ln_hypergeometric_pmf(x, marked, unmarked, draws);
            assert!(
                (got - want).abs() < 1e-12 * want.abs().max(1.0),
                "ln P(X = {x}) for {marked}/{unmarked}, {draws} draws: {got}, want {want}"
            );
        }
    }

    fn arb_buckets() -> impl Strategy<Value = Vec<(f64, u64)>> {
        proptest::collection::vec((0.1f64..1e6, 0u64..1000), 1..12).prop_map(|mut raw| {
            raw.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut total = 0;
            let mut buckets: Vec<(f64, u64)> = raw
                .into_iter()
                .map(|(le, increment)| {
                    total += increment;
                    (le, total)
                })
                .collect();
            buckets.push((f64::INFINITY, total + total % 3));
            buckets
        })
    }

    proptest! {
        #[test]
        fn quantile_is_monotonic_in_q(buckets in arb_buckets(), a in 0.0f64..=1.0, b in 0.0f64..=1.0) {
            let (low, high) = if a <= b { (a, b) } else { (b, a) };
            match (quantile(&buckets, low), quantile(&buckets, high)) {
                (Some(x), Some(y)) => {
                    prop_assert!(x <= y * (1.0 + 1e-12), "q {low} → {x}, q {high} → {y}");
                    let highest = buckets[buckets.len() - 2].0;
                    prop_assert!((0.0..=highest).contains(&x) && y <= highest);
                }
                (None, None) => prop_assert_eq!(buckets.last().map(|b| b.1), Some(0)),
                other => prop_assert!(false, "{:?}", other),
            }
        }

        #[test]
        fn p_value_is_a_probability_that_falls_as_canary_failures_rise(
            canary_total in 1u64..5000,
            baseline_total in 1u64..5000,
            baseline_failures in 0u64..5000,
            canary_failures in 0u64..5000,
        ) {
            let baseline_failures = baseline_failures % (baseline_total + 1);
            let canary_failures = canary_failures % canary_total;
            let p = canary_worse_p_value(canary_failures, canary_total, baseline_failures, baseline_total).unwrap();
            let worse = canary_worse_p_value(canary_failures + 1, canary_total, baseline_failures, baseline_total).unwrap();
            prop_assert!((0.0..=1.0).contains(&p) && (0.0..=1.0).contains(&worse));
            prop_assert!(worse <= p * (1.0 + 1e-9) + 1e-15, "{} then {}", p, worse);
        }

    }

    proptest! {
        // Slow tables (up to a million terms each in a debug build): fewer cases.
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn p_value_never_fails_on_big_counts(
            canary_total in 1u64..u64::MAX / 4,
            baseline_total in 1u64..u64::MAX / 4,
            cf in any::<u64>(),
            bf in any::<u64>(),
        ) {
            let p = canary_worse_p_value(cf % (canary_total + 1), canary_total, bf % (baseline_total + 1), baseline_total).unwrap();
            prop_assert!((0.0..=1.0).contains(&p), "{}", p);
        }
    }
}
