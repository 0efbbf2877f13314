//! Automated canary analysis: is the canary as healthy as the stable variant it replaces?
//!
//! This module is the arithmetic and the judgement only. It reads no network and keeps no clock:
//! the observer scrapes the proxies, the rollout engine acts on the [`judge::Check`] it is handed.
//!
//! # How a check works
//!
//! **A window.** The filter's counters are cumulative: each proxy counts from the moment it
//! started. A check looks at one *window*, the traffic between two scrapes of every proxy's
//! `/stats/prometheus` (typically one rollout interval apart). For each proxy the window is the
//! difference between its two scrapes ([`snapshot::delta`]); the windows of all proxies are then
//! added up ([`snapshot::merge`]). A counter never goes down, so a proxy whose counter did go down
//! has restarted, and its current counts are its traffic since the restart. (A proxy that
//! restarted and then served more requests than it had before is indistinguishable from one that
//! did not restart; like Prometheus' `increase()`, the window then undercounts. Restarts are rare
//! within a window, and an undercount can only delay a verdict, not fabricate traffic.)
//! Envoy adds latency observations to its histograms at each stats flush (every 1 s in the
//! standalone bootstrap, every 5 s by Envoy's default), so the latency of a window trails its counters
//! by up to one flush interval.
//!
//! **Success rate.** Of all responses the canary completed in the window, the share that did not
//! fail: `1 − (5xx + reset + grpc_server_error) / responses`. Resets (the stream ended before a
//! response was sent) and Envoy's own 5xx (no healthy upstream, upstream reset, timeout) are
//! failures; 4xx are the client's business and count as successes, as do 1xx and 3xx. A gRPC call
//! answers HTTP 200 and fails in its `grpc-status`, which the filter classes as `grpc_ok`,
//! `grpc_client_error` (a success, like a 4xx) or `grpc_server_error` (a failure, like a 5xx); see
//! `meshcanary_core::stats::grpc_server_failure` for which codes are which.
//!
//! **Latency.** A percentile (p99 by default) of the request duration, estimated from the
//! histogram buckets exactly like Prometheus' `histogram_quantile`: find the bucket holding the
//! requested rank and interpolate linearly inside it, taking 0 as the lower bound of the first
//! bucket; a percentile that falls into the `+Inf` bucket is reported as the highest finite bound.
//! Envoy's histograms are themselves approximate (values are kept in log-linear bins with two
//! significant digits) and are exported as cumulative counts at fixed bounds (0.5, 1, 5, 10, 25,
//! 50, 100, 250, 500, 1000, 2500 … ms by default), so the resolution of a percentile is the width
//! of the bucket it falls in: a p99 "of 180 ms" means "somewhere between 100 and 250 ms". Put a
//! latency limit near a bucket bound, or give Envoy finer bounds
//! (`stats_config.histogram_bucket_settings`).
//!
//! **Comparison with stable.** Thresholds alone cannot tell a bad canary from a bad afternoon: if
//! a shared database is failing, both variants fail. So the canary's error rate is also compared
//! with the stable variant's over the same window, with Fisher's exact test, one-sided. Take the
//! window's responses as a 2×2 table (variant × failed or not); given the totals of the table, the
//! number of failures that landed on the canary follows a hypergeometric distribution if both
//! variants fail with the same probability. The p-value is the chance, under that hypothesis, of
//! the canary getting at least as many of the failures as it did
//! ([`stats::canary_worse_p_value`]). A p-value below `maxPValue` (the significance level α, e.g.
//! 0.01) fails the check: failures this lopsided would happen by chance in fewer than 1 in 100
//! windows.
//!
//! **Assumptions and what they mean for you.**
//! - Requests fail independently. A burst of retries of one broken request, or one client sending
//!   garbage, makes failures look more significant than they are.
//! - The baseline is the stable variant over the same window, on the same proxies, so shared
//!   trouble hits both and cancels out. With too little stable traffic (at 100 % canary, say) the
//!   comparison is skipped and the check says so; the thresholds still apply.
//! - Each check raises a false alarm (fails a canary that is as good as stable) with probability
//!   at most α — Fisher's test is conservative, so usually less.
//! - A rollout checks every interval, and every check is another chance of a false alarm:
//!   k checks at α = 0.01 raise at least one false alarm with probability up to 1 − 0.99ᵏ.
//!   Rolling back only after several failed checks (the rollout's `analysis.failureLimit`, Kurator's `checkFailedTimes`) makes a
//!   false rollback much less likely, but this is not a sequential test: there is no overall
//!   error guarantee across the whole rollout of the kind a sequential probability ratio test
//!   would give.
//!
//! **Why Fisher and not a z-test.** Canary traffic is small on purpose: at 1 % a canary may see a
//! few hundred requests per window and zero to a handful of failures. The two-proportion z-test
//! relies on a normal approximation that needs several expected failures in each group; with 0,
//! 1 or 2 failures it is badly off, in either direction. Fisher's test is exact at any count,
//! needs no correction, and agrees with the z-test where both are valid. Its cost, a sum over the
//! hypergeometric tail, is microseconds.
//!
//! **Never promoted on no traffic.** Fewer than `minRequests` canary responses in a window make
//! the check inconclusive, never a pass ([`judge::judge`]).

pub mod judge;
pub mod snapshot;
pub mod stats;

pub use judge::{judge, judge_mirror, Check, Measured, Thresholds, Verdict};
pub use snapshot::{
    delta, merge, mirror_cluster, parse_envoy_stats, parse_mirror_stats, MirrorCounters, Snapshot,
    VariantCounters,
};
pub use stats::{canary_worse_p_value, quantile};

/// What can go wrong in the analysis: the proxy's stats could not be read, or thresholds are
/// invalid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AnalysisError {
    /// A line of the stats text is not valid Prometheus text.
    #[error("Envoy stats line {line}: {reason}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The same series appears twice, so its value is ambiguous.
    #[error("Envoy stats line {line}: series {series} appears more than once")]
    DuplicateSeries {
        /// 1-based line number of the second occurrence.
        line: usize,
        /// The series, as `name{labels}`.
        series: String,
    },
    /// The text does not end with a newline: the response was cut short.
    #[error(
        "Envoy stats end in the middle of a line after {bytes} bytes: the response was cut short"
    )]
    Truncated {
        /// How many bytes arrived.
        bytes: usize,
    },
    /// No series of the filter carries this route.
    #[error(
        "no meshcanary series with route=\"{route}\" in the Envoy stats: is the filter loaded with \
         that route, and does the proxy's tag extraction (stats_tags, or extraStatTags in Istio) \
         know the route and variant tags?"
    )]
    RouteNotFound {
        /// The route looked for.
        route: String,
    },
    /// A histogram lacks its `+Inf` bucket, so its counts are incomplete.
    #[error("{metric} for route \"{route}\", variant \"{variant}\" has no le=\"+Inf\" bucket")]
    IncompleteHistogram {
        /// The histogram's name.
        metric: String,
        /// The route.
        route: String,
        /// The variant.
        variant: String,
    },
    /// An analysis threshold is out of range.
    #[error("{field}: {reason}")]
    InvalidThreshold {
        /// The threshold's field name, e.g. `maxPValue`.
        field: String,
        /// Why it is invalid.
        reason: String,
    },
}
