//! Split accuracy: an exact number of requests through the filter at 90/10, counted per variant by
//! Envoy's cluster stats, compared with what a fair 90/10 draw would give.

use crate::client;
use crate::envoy::{self, Envoy};
use anyhow::bail;

/// How exact the split was.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SplitReport {
    /// Requests sent.
    pub requests: u64,
    /// Of those, answered 200.
    pub ok: u64,
    /// Completed by the stable cluster (`cluster.reviews-v1.upstream_rq_completed`).
    pub v1: u64,
    /// Completed by the canary cluster.
    pub v2: u64,
    /// The canary's configured share (0.1).
    pub expected_share: f64,
    /// The canary's observed share, `v2 / (v1 + v2)`.
    pub share: f64,
    /// `share - expected_share`, in percentage points.
    pub deviation_points: f64,
    /// The deviation in standard deviations of a binomial draw with the expected share: within ±3
    /// is what a fair draw gives 99.7 % of the time.
    pub z: f64,
}

impl SplitReport {
    /// The report for `v1` and `v2` completions of `requests` sent (`ok` answered 200).
    pub fn from_counts(
        requests: u64,
        ok: u64,
        v1: u64,
        v2: u64,
        expected_share: f64,
    ) -> Option<SplitReport> {
        let total = v1 + v2;
        if total == 0 || !(0.0..1.0).contains(&expected_share) || expected_share == 0.0 {
            return None;
        }
        let n = total as f64;
        let share = v2 as f64 / n;
        let sd = (n * expected_share * (1.0 - expected_share)).sqrt();
        Some(SplitReport {
            requests,
            ok,
            v1,
            v2,
            expected_share,
            share,
            deviation_points: (share - expected_share) * 100.0,
            z: (v2 as f64 - n * expected_share) / sd,
        })
    }
}

/// Sends `requests` through `envoy` (configuration (c)) over 16 connections and counts per variant.
/// Requests carry no sticky key, so each is placed by the hash of Envoy's fresh `x-request-id`.
pub async fn measure(envoy: &Envoy, requests: u64) -> anyhow::Result<SplitReport> {
    let (v1_before, v2_before) = envoy::completed_by_cluster(envoy).await?;
    let host = [("host", "reviews")];
    let ok = client::send_exactly(envoy.listener, &host, crate::wrk::PATH, requests, 16).await?;
    // Every response has arrived, so every upstream request has ended; the wait only covers the
    // stats becoming visible to the admin thread.
    let mut counts = (0, 0);
    for _ in 0..50 {
        let (v1_after, v2_after) = envoy::completed_by_cluster(envoy).await?;
        counts = (v1_after - v1_before, v2_after - v2_before);
        if counts.0 + counts.1 >= requests {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (v1, v2) = counts;
    if v1 + v2 != requests {
        bail!("sent {requests} requests, the clusters completed {v1} + {v2}");
    }
    SplitReport::from_counts(requests, ok, v1, v2, 0.1)
        .ok_or_else(|| anyhow::anyhow!("no request reached a cluster"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deviation_and_z_score() {
        // n = 100 000 at 10 %: sd = sqrt(100000 * 0.1 * 0.9) ≈ 94.87 requests.
        let cases = [
            ((90_000, 10_000), 0.0, 0.0),
            ((89_905, 10_095), 0.095, 1.0014),
            ((90_300, 9_700), -0.3, -3.1623),
        ];
        for ((v1, v2), points, z) in cases {
            let report = SplitReport::from_counts(100_000, 100_000, v1, v2, 0.1).unwrap();
            assert!(
                (report.deviation_points - points).abs() < 1e-9,
                "{v1}/{v2}: {}",
                report.deviation_points
            );
            assert!((report.z - z).abs() < 1e-3, "{v1}/{v2}: {}", report.z);
        }
    }

    #[test]
    fn degenerate_counts_give_no_report() {
        assert_eq!(SplitReport::from_counts(0, 0, 0, 0, 0.1), None);
        assert_eq!(SplitReport::from_counts(10, 10, 5, 5, 0.0), None);
        assert_eq!(SplitReport::from_counts(10, 10, 5, 5, 1.0), None);
    }
}
