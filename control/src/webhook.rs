//! Calling a rollout's HTTP hooks: a JSON POST with the rollout's state, a timeout per attempt and a
//! few retries; any 2xx answer is success.

use crate::rollout::analysis_spec::WEBHOOK_RETRY_PAUSE;
use crate::rollout::engine::percent;
use crate::rollout::{Rollout, Webhook, WebhookKind};
use serde::Serialize;
use std::collections::BTreeMap;

/// What a hook receives.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload<'a> {
    /// The hook's name.
    pub hook: &'a str,
    /// When it is called.
    pub kind: WebhookKind,
    /// The rollout.
    pub rollout: &'a str,
    /// Its route.
    pub route: &'a str,
    /// Its phase.
    pub phase: &'static str,
    /// The stable variant.
    pub stable: &'a str,
    /// The canary variant.
    pub canary: &'a str,
    /// The canary's weight in basis points.
    pub canary_weight: u32,
    /// The same as a percentage, for people.
    pub canary_percent: String,
    /// The current step (0-based) and the number of steps.
    pub step: usize,
    /// Steps in the plan.
    pub steps: usize,
    /// The last analysis check, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_check: Option<&'a crate::rollout::CheckRecord>,
    /// The hook's metadata.
    pub metadata: &'a BTreeMap<String, String>,
}

/// Calls every hook of `kind` of `rollout` in order; the first that fails (after its retries)
/// stops the rest and its error is returned.
pub async fn call_all(
    client: &reqwest::Client,
    rollout: &Rollout,
    kind: WebhookKind,
) -> Result<(), String> {
    for hook in rollout.webhooks(kind) {
        call(client, rollout, hook).await?;
    }
    Ok(())
}

/// Calls one hook with its retries.
pub async fn call(
    client: &reqwest::Client,
    rollout: &Rollout,
    hook: &Webhook,
) -> Result<(), String> {
    let payload = Payload {
        hook: &hook.name,
        kind: hook.kind,
        rollout: &rollout.spec.name,
        route: &rollout.spec.route,
        phase: rollout.status.phase.as_str(),
        stable: &rollout.spec.stable,
        canary: &rollout.spec.canary,
        canary_weight: rollout.status.canary_weight,
        canary_percent: percent(rollout.status.canary_weight),
        step: rollout.status.step,
        steps: rollout.plan.len(),
        last_check: rollout.status.analysis.checks.last(),
        metadata: &hook.metadata,
    };
    let mut last_error = String::new();
    for attempt in 0..=hook.retries {
        if attempt > 0 {
            tokio::time::sleep(WEBHOOK_RETRY_PAUSE).await;
        }
        let result = client
            .post(&hook.url)
            .timeout(hook.timeout())
            .json(&payload)
            .send()
            .await;
        match result {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => last_error = format!("{} answered {}", hook.url, response.status()),
            Err(error) => last_error = format!("{}: {error}", hook.url),
        }
        tracing::warn!(rollout = %rollout.spec.name, hook = %hook.name, attempt, error = %last_error, "webhook failed");
    }
    Err(format!(
        "hook {:?} failed after {} attempts: {last_error}",
        hook.name,
        hook.retries + 1
    ))
}
