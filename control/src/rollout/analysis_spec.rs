//! What a rollout asks of automated analysis and of webhooks, and where they stand.
//!
//! The thresholds follow Flagger's and Kurator's vocabulary (request success rate, request
//! duration, check interval, failed-check limit); the comparison with the stable variant is ours.

use crate::analysis::judge::{Check, Thresholds, Verdict};
use crate::error::{Error, Result};
use crate::time::{HumanDuration, Timestamp};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use utoipa::ToSchema;

/// Checks kept per rollout (oldest dropped first).
pub const MAX_CHECKS: usize = 100;
/// How often a failing gate webhook is retried when the rollout has no analysis interval.
pub const DEFAULT_GATE_INTERVAL: Duration = Duration::from_secs(10);

/// Automated analysis: every `interval` while the rollout progresses, the canary's success rate and
/// latency over the last window are judged, and compared with the stable variant's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, KubeSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "has(self.minSuccessRate) || has(self.maxLatencyMs) || !has(self.compareWithStable) || self.compareWithStable"
).message("judges nothing: set minSuccessRate, maxLatencyMs or compareWithStable"))]
pub struct AnalysisSpec {
    /// The window: a check runs this often while the rollout progresses (default `30s`).
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// Minimum success rate in percent (responses that are neither 5xx, resets nor gRPC server
    /// errors), e.g. `99`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub min_success_rate: Option<f64>,
    /// Maximum latency in milliseconds at `latencyPercentile`, e.g. `500`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("exclusiveMinimum" = true, "minimum" = 0))]
    pub max_latency_ms: Option<f64>,
    /// The latency percentile judged (default `99`).
    #[serde(default = "default_percentile")]
    #[schemars(range(max = 100), extend("exclusiveMinimum" = true, "minimum" = 0))]
    pub latency_percentile: f64,
    /// Canary responses a window needs; with fewer the check is inconclusive (default `20`).
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// Fail a check when the canary's error rate is significantly above the stable variant's in the
    /// same window (one-sided Fisher exact test; default `true`).
    #[serde(default = "default_true")]
    pub compare_with_stable: bool,
    /// Significance level of that comparison: the chance a check fails a canary that is as good as
    /// stable (default `0.01`).
    #[serde(default = "default_p_value")]
    #[schemars(extend("exclusiveMinimum" = true, "minimum" = 0, "exclusiveMaximum" = true, "maximum" = 1))]
    pub max_p_value: f64,
    /// Stable responses a window needs for the comparison; with fewer it is skipped (default `20`).
    #[serde(default = "default_min_requests")]
    pub min_baseline_requests: u64,
    /// Failed checks that roll the rollout back (Flagger's threshold, Kurator's checkFailedTimes;
    /// default `2`).
    #[serde(default = "default_failure_limit")]
    #[schemars(range(min = 1))]
    pub failure_limit: u32,
    /// Inconclusive checks in a row after which the rollout pauses and says why (default `3`).
    #[serde(default = "default_inconclusive_limit")]
    #[schemars(range(min = 1))]
    pub inconclusive_limit: u32,
}

impl Default for AnalysisSpec {
    /// What `"analysis": {}` means: the serde defaults, no success-rate or latency threshold, the
    /// comparison with stable on.
    fn default() -> AnalysisSpec {
        AnalysisSpec {
            interval: default_interval(),
            min_success_rate: None,
            max_latency_ms: None,
            latency_percentile: default_percentile(),
            min_requests: default_min_requests(),
            compare_with_stable: default_true(),
            max_p_value: default_p_value(),
            min_baseline_requests: default_min_requests(),
            failure_limit: default_failure_limit(),
            inconclusive_limit: default_inconclusive_limit(),
        }
    }
}

fn default_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_percentile() -> f64 {
    99.0
}
fn default_min_requests() -> u64 {
    20
}
fn default_true() -> bool {
    true
}
fn default_p_value() -> f64 {
    0.01
}
fn default_failure_limit() -> u32 {
    2
}
fn default_inconclusive_limit() -> u32 {
    3
}

impl AnalysisSpec {
    /// Checks the values; `field` is where the spec sits (`analysis`).
    pub fn check(&self, field: &str) -> Result<()> {
        if self.interval.0 < Duration::from_millis(100) {
            return Err(Error::invalid(
                format!("{field}.interval"),
                "must be at least 100ms",
            ));
        }
        if let Some(rate) = self.min_success_rate {
            if !(0.0..=100.0).contains(&rate) {
                return Err(Error::invalid(
                    format!("{field}.minSuccessRate"),
                    format!("{rate} is not a percentage between 0 and 100"),
                ));
            }
        }
        if let Some(ms) = self.max_latency_ms {
            if !(ms > 0.0 && ms.is_finite()) {
                return Err(Error::invalid(
                    format!("{field}.maxLatencyMs"),
                    format!("{ms} is not a positive number of milliseconds"),
                ));
            }
        }
        if !(self.latency_percentile > 0.0 && self.latency_percentile <= 100.0) {
            return Err(Error::invalid(
                format!("{field}.latencyPercentile"),
                format!(
                    "{} is not a percentile in (0, 100]",
                    self.latency_percentile
                ),
            ));
        }
        if !(self.max_p_value > 0.0 && self.max_p_value < 1.0) {
            return Err(Error::invalid(
                format!("{field}.maxPValue"),
                format!("{} is not a probability in (0, 1)", self.max_p_value),
            ));
        }
        if self.failure_limit == 0 {
            return Err(Error::invalid(
                format!("{field}.failureLimit"),
                "must be at least 1",
            ));
        }
        if self.inconclusive_limit == 0 {
            return Err(Error::invalid(
                format!("{field}.inconclusiveLimit"),
                "must be at least 1",
            ));
        }
        if self.min_success_rate.is_none()
            && self.max_latency_ms.is_none()
            && !self.compare_with_stable
        {
            return Err(Error::invalid(
                field,
                "judges nothing: set minSuccessRate, maxLatencyMs or compareWithStable",
            ));
        }
        Ok(())
    }

    /// The thresholds in the form the judge takes.
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            min_success_rate: self.min_success_rate.map(|percent| percent / 100.0),
            max_latency_ms: self.max_latency_ms,
            latency_quantile: self.latency_percentile / 100.0,
            min_requests: self.min_requests,
            max_p_value: self.max_p_value,
            min_baseline_requests: self.min_baseline_requests,
            compare_with_stable: self.compare_with_stable,
        }
    }
}

/// When a webhook is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum WebhookKind {
    /// Before the first step; the rollout starts only after it answers 2xx (after `failureLimit`
    /// failed attempts the rollout is rolled back).
    PreRollout,
    /// At every step (e.g. to start a load test); a failure counts as a failed check.
    Rollout,
    /// Before promotion; promotion waits until it answers 2xx.
    ConfirmPromotion,
    /// After the rollout succeeded (notification).
    PostRollout,
    /// After the rollout was rolled back or aborted (notification).
    Rollback,
}

impl WebhookKind {
    /// The name used in the API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookKind::PreRollout => "preRollout",
            WebhookKind::Rollout => "rollout",
            WebhookKind::ConfirmPromotion => "confirmPromotion",
            WebhookKind::PostRollout => "postRollout",
            WebhookKind::Rollback => "rollback",
        }
    }
}

/// A hook's per-attempt timeout when it sets none.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// The shortest per-attempt timeout a hook may set.
pub const MIN_WEBHOOK_TIMEOUT: Duration = Duration::from_millis(100);
/// The longest per-attempt timeout a hook may set.
pub const MAX_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// The pause between a hook's attempts.
pub const WEBHOOK_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// An HTTP hook. It receives a JSON POST (rollout, route, phase, weights, last verdict, metadata);
/// any 2xx answer is success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Webhook {
    /// A name for logs and status.
    #[schemars(length(min = 1))]
    pub name: String,
    /// When it is called.
    #[serde(rename = "type")]
    pub kind: WebhookKind,
    /// `http://` or `https://` URL to POST to. Redirects are not followed: a 3xx answer is a
    /// failure.
    #[schemars(regex(pattern = r"^https?://[^/?#@]+([/?#].*)?$"))]
    pub url: String,
    /// Per attempt (default `5s`, from `100ms` to `1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Extra attempts after a failure (default `2`), 500 ms apart.
    #[serde(default = "default_retries")]
    #[schemars(range(max = 10))]
    pub retries: u32,
    /// Passed through in the payload.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

fn default_retries() -> u32 {
    2
}

impl Webhook {
    /// Checks the hook; `field` is where it sits (`webhooks[2]`).
    pub fn check(&self, field: &str) -> Result<()> {
        if self.name.is_empty() {
            return Err(Error::invalid(format!("{field}.name"), "must not be empty"));
        }
        if let Err(reason) = crate::webhook::check_url(&self.url) {
            return Err(Error::invalid(format!("{field}.url"), reason));
        }
        if self.retries > 10 {
            return Err(Error::invalid(format!("{field}.retries"), "at most 10"));
        }
        if let Some(timeout) = self.timeout {
            if !(MIN_WEBHOOK_TIMEOUT..=MAX_WEBHOOK_TIMEOUT).contains(&timeout.0) {
                return Err(Error::invalid(
                    format!("{field}.timeout"),
                    format!(
                        "{timeout} is not between {} and {} (a hook that takes longer holds its rollout for that long at every attempt)",
                        HumanDuration(MIN_WEBHOOK_TIMEOUT),
                        HumanDuration(MAX_WEBHOOK_TIMEOUT)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The per-attempt timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout.map_or(DEFAULT_WEBHOOK_TIMEOUT, |t| t.0)
    }

    /// The longest a call of this hook can take: every attempt timing out, with the pauses
    /// between them.
    pub fn longest(&self) -> Duration {
        let attempts = self.retries.saturating_add(1);
        self.timeout()
            .saturating_mul(attempts)
            .saturating_add(WEBHOOK_RETRY_PAUSE.saturating_mul(self.retries))
    }
}

/// One analysis check as kept in the rollout's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckRecord {
    /// When the window ended.
    pub at: Timestamp,
    /// When it started.
    pub since: Timestamp,
    /// The step the rollout was in.
    pub step: usize,
    /// The canary weight then (basis points).
    pub canary_weight: u32,
    /// The judgement with its inputs.
    pub check: Check,
}

/// Where analysis and gates stand.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    /// Failed checks so far (webhook failures of `rollout` hooks count too).
    pub failed_checks: u32,
    /// Inconclusive checks in a row.
    pub inconclusive_streak: u32,
    /// When the last window ended (a check, or the first reading that starts the first window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_at: Option<Timestamp>,
    /// When a check last passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pass_at: Option<Timestamp>,
    /// The verdict of the last check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verdict: Option<Verdict>,
    /// The checks, oldest first (the last 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckRecord>,
    /// Whether the pre-rollout hooks passed.
    #[serde(default)]
    pub pre_rollout_passed: bool,
    /// Failed pre-rollout attempts.
    #[serde(default)]
    pub pre_rollout_failures: u32,
    /// Whether the confirm-promotion hooks passed.
    #[serde(default)]
    pub promotion_confirmed: bool,
    /// When a gate last failed (its retry waits an interval from then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_gate_at: Option<Timestamp>,
    /// When the gate hooks now being waited for were called (their answer is recorded when it
    /// comes; after their longest possible time the engine calls them again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_called_at: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_what_an_empty_analysis_block_means() {
        let empty: AnalysisSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(AnalysisSpec::default(), empty);
        assert!(AnalysisSpec::default().check("analysis").is_ok());
    }
}
