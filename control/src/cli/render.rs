//! What the CLI prints for people: aligned tables, the canary progress bar, a rollout's status as
//! titled sections, the routes, and one-line confirmations.
//!
//! Everything here is a pure function of the API's answer and `now` (passed in, for ages), so the
//! output is tested without a service or a clock. A rollout's status is a list of [`Section`]s so
//! that more of them (the latest analysis, say) can be added without touching the others.

use crate::analysis::{Measured, Verdict};
use crate::api::rollouts::RolloutView;
use crate::api::routes::RoutesView;
use crate::rollout::{AnalysisSpec, Phase, PlanStep};
use crate::time::Timestamp;
use crate::view::percent;
use crate::view::Propagation;
use meshcanary_core::config::{RouteConfig, RuleConfig, StickyConfig, TOTAL_WEIGHT};
use std::time::{Duration, UNIX_EPOCH};

/// Width of the canary progress bar, between the brackets.
pub const BAR_WIDTH: usize = 30;
/// History entries `rollout status` shows.
pub const HISTORY_SHOWN: usize = 10;

/// A block of `rollout status` output: an optional title and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Shown above the body; the body is then indented under it.
    pub title: Option<String>,
    /// The lines, without a trailing newline.
    pub body: String,
}

impl Section {
    /// A titled section.
    pub fn titled(title: impl Into<String>, body: impl Into<String>) -> Section {
        Section {
            title: Some(title.into()),
            body: body.into(),
        }
    }
}

/// Sections separated by blank lines, each body indented under its title.
pub fn render_sections(sections: &[Section]) -> String {
    let blocks: Vec<String> = sections
        .iter()
        .map(|section| match &section.title {
            None => section.body.clone(),
            Some(title) => {
                let body: Vec<String> = section
                    .body
                    .lines()
                    .map(|line| format!("  {line}").trim_end().to_string())
                    .collect();
                format!("{title}\n{}", body.join("\n"))
            }
        })
        .collect();
    blocks.join("\n\n")
}

/// Columns aligned on the widest cell, two spaces apart, no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let width = cell.chars().count();
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(width),
                None => widths.push(width),
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                let width = widths.get(i).copied().unwrap_or(0);
                format!("{cell:<width$}")
            })
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut lines = vec![line(headers.to_vec())];
    lines.extend(
        rows.iter()
            .map(|row| line(row.iter().map(String::as_str).collect())),
    );
    lines.join("\n")
}

/// `key  value` lines with the values aligned.
fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    pairs
        .iter()
        .map(|(key, value)| format!("{key:<width$}  {value}").trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `[#########.....................] 30%`. Any weight above 0 shows at least one `#`, so a 0.5 %
/// canary does not look like no canary.
pub fn progress_bar(basis_points: u32, width: usize) -> String {
    let basis_points = basis_points.min(TOTAL_WEIGHT);
    let total = TOTAL_WEIGHT as usize;
    let mut filled = (basis_points as usize * width) / total;
    if basis_points > 0 && filled == 0 {
        filled = 1.min(width);
    }
    format!(
        "[{}{}] {}",
        "#".repeat(filled),
        ".".repeat(width - filled),
        percent(basis_points)
    )
}

/// A duration in the largest unit that fits, like kubectl's ages: `45s`, `12m`, `5h`, `3d`.
pub fn short_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86_400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// RFC 3339 to the second: `2026-11-18T11:06:40Z`.
fn clock(at: Timestamp) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(at.0)).to_string()
}

/// `2026-11-18T11:06:40Z (5m ago)`.
fn when(at: Timestamp, now: Timestamp) -> String {
    format!("{} ({} ago)", clock(at), short_duration(now.since(at)))
}

/// `2/5`: the current step counted from 1, capped at the plan's length once every step is done.
pub fn step_position(step: usize, plan_len: usize) -> String {
    format!("{}/{plan_len}", (step + 1).min(plan_len))
}

/// A plan step for people: `set weight 10%`, `pause until resumed`, `pause 30s`,
/// `mirror 20% for 1m`.
pub fn describe_step(step: &PlanStep) -> String {
    match step {
        PlanStep::SetWeight(bp) => format!("set weight {}", percent(*bp)),
        PlanStep::Pause(None) => "pause until resumed".into(),
        PlanStep::Pause(Some(duration)) => format!("pause {duration}"),
        PlanStep::Mirror {
            basis_points,
            duration: None,
        } => format!("mirror {} until resumed", percent(*basis_points)),
        PlanStep::Mirror {
            basis_points,
            duration: Some(duration),
        } => format!("mirror {} for {duration}", percent(*basis_points)),
    }
}

/// A QA rule for people: `header x-canary = "always" → v2`.
pub fn describe_rule(rule: &RuleConfig) -> String {
    let source = match (&rule.header, &rule.cookie, &rule.query) {
        (Some(name), _, _) => format!("header {name}"),
        (_, Some(name), _) => format!("cookie {name}"),
        (_, _, Some(name)) => format!("query {name}"),
        _ => "(no source)".into(),
    };
    if !rule.token_keys.is_empty() {
        // A signed rule: name its keys by id, never their secrets.
        let ids: Vec<&str> = rule
            .token_keys
            .iter()
            .map(|key| key.split(':').next().unwrap_or_default())
            .collect();
        return format!(
            "{source} carries a token signed by {} → the token's variant",
            ids.join(", ")
        );
    }
    let matcher = match (&rule.exact, &rule.prefix, rule.present) {
        (Some(value), _, _) => format!("= {value:?}"),
        (_, Some(prefix), _) => format!("starts with {prefix:?}"),
        (_, _, Some(true)) => "is present".into(),
        _ => "(no match)".into(),
    };
    format!("{source} {matcher} → {}", rule.variant)
}

/// One line after an action: `rollout reviews-v2 resumed: progressing, canary v2 at 50%, step 3/5`.
pub fn confirmation(verb: &str, view: &RolloutView) -> String {
    let rollout = &view.rollout;
    format!(
        "rollout {} {verb}: {}, canary {} at {}, step {}",
        rollout.spec.name,
        rollout.status.phase.as_str(),
        rollout.spec.canary,
        percent(rollout.status.canary_weight),
        step_position(rollout.status.step, rollout.plan.len())
    )
}

/// `rollout list`: one row per rollout.
pub fn rollout_list(views: &[RolloutView], now: Timestamp) -> String {
    if views.is_empty() {
        return "No rollouts. Start one with `meshcanary rollout create NAME --route ROUTE --stable V1 --canary V2 --steps 10%,pause,100%`.".into();
    }
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|view| {
            let rollout = &view.rollout;
            let status = &rollout.status;
            vec![
                rollout.spec.name.clone(),
                rollout.spec.route.clone(),
                format!("{} → {}", rollout.spec.stable, rollout.spec.canary),
                status.phase.as_str().to_string(),
                step_position(status.step, rollout.plan.len()),
                percent(status.canary_weight),
                format!("{}/{}", view.propagation.applied, view.propagation.total),
                short_duration(now.since(status.created_at)),
                format!("{} ago", short_duration(now.since(status.updated_at))),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "ROUTE",
            "STABLE → CANARY",
            "PHASE",
            "STEP",
            "WEIGHT",
            "PROXIES",
            "AGE",
            "UPDATED",
        ],
        &rows,
    )
}

/// `rollout status`: the rollout as sections — summary, plan, the latest analysis check (with
/// analysis), history, propagation.
pub fn status_sections(view: &RolloutView, now: Timestamp) -> Vec<Section> {
    let mut sections = vec![summary_section(view, now), plan_section(view, now)];
    sections.extend(workloads_section(view));
    sections.extend(analysis_section(view, now));
    sections.push(history_section(view));
    sections.push(propagation_section(&view.propagation));
    sections
}

/// What analysis judges and how often, in one line: the thresholds that are set, the comparison
/// with stable if it is on, and the traffic a window needs.
pub fn describe_analysis(spec: &AnalysisSpec) -> String {
    let mut criteria = Vec::new();
    if let Some(rate) = spec.min_success_rate {
        criteria.push(format!("success rate ≥ {rate} %"));
    }
    if let Some(ms) = spec.max_latency_ms {
        criteria.push(format!("p{} latency ≤ {ms} ms", spec.latency_percentile));
    }
    if spec.compare_with_stable {
        criteria.push(format!(
            "error rate compared with stable's (p < {})",
            spec.max_p_value
        ));
    }
    format!(
        "every {}: {}; at least {} canary responses a window",
        spec.interval,
        criteria.join(", "),
        spec.min_requests
    )
}

/// What analysis judges, then the latest check as a compact table of canary and stable, its
/// verdict and reasons, and how many checks failed so far; `None` for rollouts without analysis.
fn analysis_section(view: &RolloutView, now: Timestamp) -> Option<Section> {
    let spec = view.rollout.spec.analysis.as_ref()?;
    let status = &view.rollout.status.analysis;
    let criteria = describe_analysis(spec);
    let counts = format!(
        "failed checks {} of {} allowed, inconclusive in a row {} of {}",
        status.failed_checks,
        spec.failure_limit,
        status.inconclusive_streak,
        spec.inconclusive_limit
    );
    let Some(last) = status.checks.last() else {
        return Some(Section::titled(
            "Analysis",
            format!("{criteria}\nno check yet\n{counts}"),
        ));
    };
    let verdict = match last.check.verdict {
        Verdict::Pass => "passed",
        Verdict::Fail => "FAILED",
        Verdict::Inconclusive => "inconclusive",
    };
    let percent_of =
        |rate: Option<f64>| rate.map_or("-".to_string(), |r| format!("{:.2} %", r * 100.0));
    let millis = |ms: Option<f64>| ms.map_or("-".to_string(), |ms| format!("{ms:.1} ms"));
    let row = |name: &str, measured: &Measured| {
        vec![
            name.to_string(),
            measured.requests.to_string(),
            percent_of(measured.success_rate),
            millis(measured.latency_ms),
        ]
    };
    let quantile = format!("p{}", spec.latency_percentile);
    let table = table(
        &["variant", "requests", "success", &quantile],
        &[
            row(
                &format!("canary {}", view.rollout.spec.canary),
                &last.check.canary,
            ),
            row(
                &format!("stable {}", view.rollout.spec.stable),
                &last.check.baseline,
            ),
        ],
    );
    let p_value = last
        .check
        .p_value
        .map(|p| format!(", p = {p:.3}"))
        .unwrap_or_default();
    let reasons: Vec<String> = last
        .check
        .reasons
        .iter()
        .map(|r| format!("- {r}"))
        .collect();
    Some(Section::titled(
        "Analysis",
        format!(
            "{criteria}\nlast check {verdict} {} at {}{p_value}\n{table}\n{}\n{counts}",
            when(last.at, now),
            percent(last.canary_weight),
            reasons.join("\n")
        ),
    ))
}

/// With `workloads`: each variant's Deployment with its desired and ready replicas, what the
/// rollout asked of the canary, and the batch it is in.
fn workloads_section(view: &RolloutView) -> Option<Section> {
    let workloads = view.workloads.as_ref()?;
    let count = |n: Option<u32>| n.map_or("-".to_string(), |n| n.to_string());
    let rows: Vec<Vec<String>> = [
        (
            view.rollout.spec.stable.as_str(),
            "stable",
            &workloads.stable,
        ),
        (
            view.rollout.spec.canary.as_str(),
            "canary",
            &workloads.canary,
        ),
    ]
    .into_iter()
    .map(|(variant, role, replicas)| {
        vec![
            format!("{variant} ({role})"),
            replicas.deployment.clone(),
            count(replicas.desired),
            count(replicas.ready),
        ]
    })
    .collect();
    let mut body = table(&["VARIANT", "DEPLOYMENT", "DESIRED", "READY"], &rows);
    let full = workloads
        .full
        .map_or(String::new(), |full| format!(" of {full}"));
    body.push_str(&format!(
        "\nCanary replicas asked for: {}{full}",
        workloads.requested
    ));
    if workloads.batches > 0 {
        let batch = match workloads.batch {
            Some(batch) => format!("batch {} of {}", batch + 1, workloads.batches),
            None if view.rollout.status.canary_weight == 0 => {
                format!("before batch 1 of {}", workloads.batches)
            }
            None => format!("past the {} batches (full size)", workloads.batches),
        };
        body.push_str(&format!("\nBatch: {batch}"));
        if let Some(partition) = workloads.partition {
            body.push_str(&format!(
                " (holds after batch {}: batchPartition {partition})",
                partition + 1
            ));
        }
    }
    for replicas in [&workloads.stable, &workloads.canary] {
        if let Some(error) = &replicas.error {
            body.push_str(&format!("\nFailing: {}: {error}", replicas.deployment));
        }
    }
    if workloads.stable.desired.is_none() && view.rollout.status.phase.is_terminal() {
        body.push_str("\n(replicas are read while the rollout runs)");
    }
    Some(Section::titled("Workloads", body))
}

/// `rollout status` as text.
pub fn status(view: &RolloutView, now: Timestamp) -> String {
    render_sections(&status_sections(view, now))
}

fn summary_section(view: &RolloutView, now: Timestamp) -> Section {
    let rollout = &view.rollout;
    let spec = &rollout.spec;
    let status = &rollout.status;
    let mut pairs = vec![
        ("Rollout", spec.name.clone()),
        (
            "Route",
            format!("{}: {} → {}", spec.route, spec.stable, spec.canary),
        ),
        ("Phase", status.phase.as_str().to_string()),
        ("Message", status.message.clone()),
        (
            "Canary",
            format!(
                "{}  ({} has {})",
                progress_bar(status.canary_weight, BAR_WIDTH),
                spec.stable,
                percent(TOTAL_WEIGHT.saturating_sub(status.canary_weight))
            ),
        ),
        (
            "Step",
            match rollout.plan.get(status.step) {
                Some(step) if !status.phase.is_terminal() => format!(
                    "{}: {}",
                    step_position(status.step, rollout.plan.len()),
                    describe_step(step)
                ),
                _ => step_position(status.step, rollout.plan.len()),
            },
        ),
    ];
    if let Some(share) = rollout.mirror() {
        pairs.push((
            "Mirror",
            format!(
                "{} of {}'s requests copied to {}; the copies' answers are discarded",
                percent(share),
                spec.stable,
                spec.canary
            ),
        ));
    }
    if let Some(mirrored) = &view.mirrored {
        pairs.push(("Copies", mirrored.summary()));
    }
    if let Some(timeout) = spec.timeout {
        pairs.push((
            "Timeout",
            format!(
                "{timeout}, {} used progressing",
                short_duration(rollout.progressed(now))
            ),
        ));
    }
    pairs.push(("Created", when(status.created_at, now)));
    pairs.push(("Updated", when(status.updated_at, now)));
    if let Some(next) = next_hint(view) {
        pairs.push(("Next", next));
    }
    Section {
        title: None,
        body: fields(&pairs),
    }
}

/// What a person can do next, when the rollout waits for one.
fn next_hint(view: &RolloutView) -> Option<String> {
    let rollout = &view.rollout;
    let name = &rollout.spec.name;
    match rollout.status.phase {
        Phase::Paused => Some(format!(
            "`meshcanary rollout resume {name}` continues; `promote` gives {} 100%, `abort` sends everything back to {}",
            rollout.spec.canary, rollout.spec.stable
        )),
        Phase::Promoting if !rollout.spec.auto_finish => Some(format!(
            "`meshcanary rollout finish {name}` makes {} the stable variant",
            rollout.spec.canary
        )),
        _ => None,
    }
}

/// `✓` done, `▶` current, `✗` where a failed rollout stopped. Once promoted, the step it was on
/// is behind it too.
fn step_marker(index: usize, view: &RolloutView) -> &'static str {
    use std::cmp::Ordering;
    let status = &view.rollout.status;
    match (index.cmp(&status.step), status.phase) {
        (Ordering::Less, _) => "✓",
        (Ordering::Equal, Phase::Promoting | Phase::Succeeded) => "✓",
        (Ordering::Equal, Phase::RolledBack | Phase::Aborted) => "✗",
        (Ordering::Equal, _) => "▶",
        (Ordering::Greater, _) => " ",
    }
}

fn plan_section(view: &RolloutView, now: Timestamp) -> Section {
    let rollout = &view.rollout;
    let status = &rollout.status;
    let digits = rollout.plan.len().to_string().len();
    let lines: Vec<String> = rollout
        .plan
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let mut text = describe_step(step);
            // A running timed pause or mirror says how long it still holds.
            if let (Some(Some(duration)), true) = (
                step.holds(),
                i == status.step && status.phase == Phase::Progressing,
            ) {
                let ends = status.step_started_at.plus(duration.0);
                text.push_str(&format!(" ({} left)", short_duration(ends.since(now))));
            }
            format!("{} {:>digits$}  {text}", step_marker(i, view), i + 1)
        })
        .collect();
    Section::titled("Plan", lines.join("\n"))
}

fn history_section(view: &RolloutView) -> Section {
    let rollout = &view.rollout;
    let history = &rollout.status.history;
    let shown = &history[history.len().saturating_sub(HISTORY_SHOWN)..];
    let title = if shown.len() < history.len() {
        format!("History (last {} of {})", shown.len(), history.len())
    } else {
        "History".to_string()
    };
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|event| {
            vec![
                clock(event.at),
                event.phase.as_str().to_string(),
                step_position(event.step, rollout.plan.len()),
                percent(event.canary_weight),
                event.message.clone(),
            ]
        })
        .collect();
    Section::titled(
        title,
        table(&["TIME", "PHASE", "STEP", "WEIGHT", "MESSAGE"], &rows),
    )
}

fn propagation_line(propagation: &Propagation) -> String {
    if propagation.total == 0 {
        return format!(
            "generation {}: no proxies watched (the service runs without --envoy-admin), so a push counts as applied once written",
            propagation.generation
        );
    }
    format!(
        "generation {}: {}",
        propagation.generation, propagation.summary
    )
}

fn propagation_section(propagation: &Propagation) -> Section {
    let mut body = propagation_line(propagation);
    if !propagation.proxies.is_empty() {
        let rows: Vec<Vec<String>> = propagation
            .proxies
            .iter()
            .map(|proxy| {
                let state = match (proxy.generation, &proxy.error) {
                    (_, Some(error)) => format!("error: {error}"),
                    (Some(g), None) if g >= propagation.generation => format!("{g} (applied)"),
                    (Some(g), None) => format!("{g} (behind)"),
                    (None, None) => "unknown".into(),
                };
                vec![proxy.proxy.clone(), state]
            })
            .collect();
        body.push('\n');
        body.push_str(&table(&["PROXY", "GENERATION"], &rows));
    }
    Section::titled("Propagation", body)
}

fn describe_sticky(sticky: &StickyConfig) -> String {
    let source = match (&sticky.header, &sticky.cookie) {
        (Some(header), _) => format!("header {header}"),
        (_, Some(cookie)) => format!("cookie {cookie}"),
        _ => "(no key)".into(),
    };
    format!("{source}, salt {:?}", sticky.salt)
}

fn route_block(route: &RouteConfig) -> String {
    let variants: Vec<String> = route
        .variants
        .iter()
        .map(|v| format!("{} {}", v.name, percent(v.weight)))
        .collect();
    let mut pairs = vec![("hosts", route.hosts.join(", "))];
    if let Some(prefix) = &route.path_prefix {
        pairs.push(("path", format!("{prefix}*")));
    }
    pairs.push(("variants", variants.join(", ")));
    if let Some(sticky) = &route.sticky {
        pairs.push(("sticky", describe_sticky(sticky)));
    }
    if route.dry_run {
        pairs.push((
            "dry run",
            "yes: decisions are counted, routing is unchanged".into(),
        ));
    }
    let digits = route.rules.len().saturating_sub(1).to_string().len();
    let rules = if route.rules.is_empty() {
        "none".to_string()
    } else {
        route
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| format!("\n  {i:>digits$}  {}", describe_rule(rule)))
            .collect()
    };
    pairs.push(("QA rules", rules));
    format!("{}\n{}", route.name, indent(&fields(&pairs)))
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("  {line}").trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `route list`: the config's generation and propagation, then each route.
pub fn routes(view: &RoutesView) -> String {
    let config = &view.config;
    let mut blocks = vec![format!(
        "Filter config {}",
        propagation_line(&view.propagation)
    )];
    if let Some(error) = &view.push_error {
        blocks.push(format!(
            "Push failed: {error} (the service retries; the proxies still run the previous config)"
        ));
    }
    if config.routes.is_empty() {
        blocks.push("The filter config has no routes.".into());
    }
    blocks.extend(config.routes.iter().map(route_block));
    blocks.join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: Timestamp = Timestamp(1_795_000_000_000);

    /// A view as the API sends it, with `status` fields overridden by `status`.
    fn view(status: serde_json::Value) -> RolloutView {
        let mut value = json!({
            "spec": {"name": "reviews-v2", "route": "reviews", "stable": "v1", "canary": "v2",
                     "steps": [{"setWeight": {"percent": 10}}, {"pause": {}},
                               {"setWeight": {"percent": 50}}, {"pause": {"duration": "30s"}},
                               {"setWeight": {"percent": 100}}]},
            "plan": [{"setWeight": 1000}, {"pause": null}, {"setWeight": 5000},
                     {"pause": "30s"}, {"setWeight": 10000}],
            "status": {"phase": "paused", "message": "paused at step 2: waiting for resume",
                       "step": 1, "stepStartedAt": "2026-11-18T11:05:40Z", "canaryWeight": 1000,
                       "weightGeneration": 2, "hold": "pauseStep", "progressedMs": 0,
                       "createdAt": "2026-11-18T11:01:40Z", "updatedAt": "2026-11-18T11:06:30Z",
                       "history": [
                           {"at": "2026-11-18T11:01:40Z", "phase": "initialized", "step": 0, "canaryWeight": 0, "message": "created"},
                           {"at": "2026-11-18T11:01:40Z", "phase": "paused", "step": 1, "canaryWeight": 1000, "message": "paused at step 2: waiting for resume"}]},
            "version": 4,
            "propagation": {"generation": 2, "applied": 0, "total": 0,
                            "summary": "applied on 0/0 proxies", "proxies": []}
        });
        for (k, v) in status.as_object().unwrap() {
            match k.as_str() {
                // The view's own field, beside the rollout's.
                "mirrored" => value["mirrored"] = v.clone(),
                _ => value["status"][k] = v.clone(),
            }
        }
        if value["mirrored"].is_object() {
            // A mirror step in place of the timed pause.
            value["spec"]["steps"][3] = json!({"mirror": {"percent": 20, "duration": "30s"}});
            value["plan"][3] = json!({"mirror": {"basisPoints": 2000, "duration": "30s"}});
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_latest_check_is_a_compact_table() {
        let mut with_analysis = view(
            json!({"analysis": {"failedChecks": 1, "inconclusiveStreak": 0, "checks": [
            {"at": "2026-11-18T11:06:20Z", "since": "2026-11-18T11:05:50Z", "step": 0, "canaryWeight": 1000,
             "check": {"verdict": "fail", "reasons": ["canary success rate 94 % is below the minimum 99 %"],
                       "canary": {"requests": 120, "successRate": 0.94, "latencyMs": 12.5},
                       "baseline": {"requests": 1100, "successRate": 0.999, "latencyMs": 9.0},
                       "pValue": 0.0001}}]}}),
        );
        with_analysis.rollout.spec.analysis =
            Some(serde_json::from_value(json!({"minSuccessRate": 99})).unwrap());
        let text = render_sections(
            &analysis_section(&with_analysis, NOW)
                .into_iter()
                .collect::<Vec<_>>(),
        );
        assert!(
            text.contains("every 30s: success rate ≥ 99 %, error rate compared with stable's"),
            "{text}"
        );
        assert!(text.contains("last check FAILED"), "{text}");
        assert!(
            text.contains("canary v2  120       94.00 %  12.5 ms"),
            "{text}"
        );
        assert!(
            text.contains("stable v1  1100      99.90 %  9.0 ms"),
            "{text}"
        );
        assert!(
            text.contains("- canary success rate 94 % is below the minimum 99 %"),
            "{text}"
        );
        assert!(text.contains("failed checks 1 of 2 allowed"), "{text}");
        assert!(
            analysis_section(&view(json!({})), NOW).is_none(),
            "no section without analysis"
        );
    }

    #[test]
    fn the_analysis_says_what_it_judges() {
        let cases = [
            (
                json!({}),
                "every 30s: error rate compared with stable's (p < 0.01); at least 20 canary responses a window",
            ),
            (
                json!({"minSuccessRate": 99.5, "maxLatencyMs": 250, "latencyPercentile": 99.9,
                       "interval": "1m", "minRequests": 50, "maxPValue": 0.05}),
                "every 1m: success rate ≥ 99.5 %, p99.9 latency ≤ 250 ms, error rate compared with stable's (p < 0.05); at least 50 canary responses a window",
            ),
            (
                json!({"maxLatencyMs": 0.5, "compareWithStable": false}),
                "every 30s: p99 latency ≤ 0.5 ms; at least 20 canary responses a window",
            ),
        ];
        for (spec, expected) in cases {
            let spec: AnalysisSpec = serde_json::from_value(spec).unwrap();
            assert_eq!(describe_analysis(&spec), expected);
        }
    }

    #[test]
    fn before_the_first_check_the_analysis_shows_its_settings() {
        let mut waiting = view(json!({}));
        waiting.rollout.spec.analysis =
            Some(serde_json::from_value(json!({"minSuccessRate": 99, "failureLimit": 3})).unwrap());
        let section = analysis_section(&waiting, NOW).unwrap();
        assert_eq!(
            section.body,
            "every 30s: success rate ≥ 99 %, error rate compared with stable's (p < 0.01); at least 20 canary responses a window\n\
             no check yet\n\
             failed checks 0 of 3 allowed, inconclusive in a row 0 of 3"
        );
    }

    #[test]
    fn progress_bars() {
        let cases = [
            (0, 10, "[..........] 0%"),
            (3500, 10, "[###.......] 35%"),
            (50, 10, "[#.........] 0.5%"),
            (9999, 10, "[#########.] 99.99%"),
            (10000, 10, "[##########] 100%"),
            (20000, 4, "[####] 100%"),
            (5000, 0, "[] 50%"),
        ];
        for (bp, width, expected) in cases {
            assert_eq!(progress_bar(bp, width), expected, "{bp}");
        }
    }

    #[test]
    fn short_durations() {
        let cases = [
            (0, "0s"),
            (59, "59s"),
            (60, "1m"),
            (3599, "59m"),
            (3600, "1h"),
            (86_399, "23h"),
            (86_400 * 3, "3d"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(short_duration(Duration::from_secs(seconds)), expected);
        }
    }

    #[test]
    fn tables_align_without_trailing_spaces() {
        let text = table(
            &["A", "LONGER", "C"],
            &[
                vec!["wide cell".into(), "x".into(), "".into()],
                vec!["y".into(), "→".into(), "z".into()],
            ],
        );
        assert_eq!(
            text,
            "A          LONGER  C\nwide cell  x\ny          →       z"
        );
    }

    #[test]
    fn step_positions() {
        for (step, len, expected) in [(0, 5, "1/5"), (4, 5, "5/5"), (5, 5, "5/5"), (0, 0, "0/0")] {
            assert_eq!(step_position(step, len), expected);
        }
    }

    #[test]
    fn steps_and_rules_read_well() {
        let steps = [
            (PlanStep::SetWeight(1250), "set weight 12.5%"),
            (PlanStep::Pause(None), "pause until resumed"),
            (
                PlanStep::Mirror {
                    basis_points: 2000,
                    duration: Some(crate::time::HumanDuration(Duration::from_secs(60))),
                },
                "mirror 20% for 1m",
            ),
            (
                PlanStep::Mirror {
                    basis_points: 5,
                    duration: None,
                },
                "mirror 0.05% until resumed",
            ),
            (
                PlanStep::Pause(Some(crate::time::HumanDuration(Duration::from_secs(90)))),
                "pause 1m 30s",
            ),
        ];
        for (step, expected) in steps {
            assert_eq!(describe_step(&step), expected);
        }
        let rules = [
            (
                json!({"variant": "v2", "header": "x-canary", "exact": "always"}),
                "header x-canary = \"always\" → v2",
            ),
            (
                json!({"variant": "v3", "cookie": "session", "prefix": "qa-"}),
                "cookie session starts with \"qa-\" → v3",
            ),
            (
                json!({"variant": "v2", "query": "canary", "present": true}),
                "query canary is present → v2",
            ),
            (
                json!({"header": "x-qa", "tokenKeys": ["k2:c2VjcmV0", "k1:b2xk"]}),
                "header x-qa carries a token signed by k2, k1 → the token's variant",
            ),
        ];
        for (rule, expected) in rules {
            let rule: RuleConfig = serde_json::from_value(rule).unwrap();
            assert_eq!(describe_rule(&rule), expected);
        }
    }

    #[test]
    fn confirmations_say_phase_weight_and_step() {
        assert_eq!(
            confirmation("paused", &view(json!({}))),
            "rollout reviews-v2 paused: paused, canary v2 at 10%, step 2/5"
        );
    }

    #[test]
    fn the_list_has_one_aligned_row_per_rollout() {
        let text = rollout_list(&[view(json!({}))], NOW);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        for column in [
            "NAME",
            "STABLE → CANARY",
            "PHASE",
            "STEP",
            "WEIGHT",
            "PROXIES",
            "AGE",
            "UPDATED",
        ] {
            assert!(lines[0].contains(column), "{column}: {text}");
        }
        let cells: Vec<&str> = lines[1]
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(
            cells,
            [
                "reviews-v2",
                "reviews",
                "v1 → v2",
                "paused",
                "2/5",
                "10%",
                "0/0",
                "5m",
                "10s ago"
            ]
        );
        assert!(rollout_list(&[], NOW).starts_with("No rollouts."));
    }

    #[test]
    fn status_marks_the_current_step_and_says_what_next() {
        let text = status(&view(json!({})), NOW);
        for part in [
            "Rollout  reviews-v2",
            "Route    reviews: v1 → v2",
            "Phase    paused",
            "Canary   [###...........................] 10%  (v1 has 90%)",
            "Step     2/5: pause until resumed",
            "Created  2026-11-18T11:01:40Z (5m ago)",
            "Next     `meshcanary rollout resume reviews-v2` continues",
            "Plan\n  ✓ 1  set weight 10%\n  ▶ 2  pause until resumed\n    3  set weight 50%",
            "History\n  TIME",
            "created",
            "Propagation\n  generation 2: no proxies watched",
        ] {
            assert!(text.contains(part), "missing {part:?} in\n{text}");
        }
    }

    #[test]
    fn status_sections_follow_the_rollout() {
        type Case<'a> = (&'a str, serde_json::Value, &'a [&'a str], &'a [&'a str]);
        let cases: Vec<Case> = vec![
            (
                "a running timed pause shows the time left",
                json!({"phase": "progressing", "hold": null, "step": 3,
                       "stepStartedAt": "2026-11-18T11:06:30Z", "canaryWeight": 5000}),
                &["▶ 4  pause 30s (20s left)", "✓ 3  set weight 50%"],
                &["Next"],
            ),
            (
                "a running mirror step says what it copies",
                json!({"phase": "progressing", "hold": null, "step": 3,
                       "stepStartedAt": "2026-11-18T11:06:30Z", "canaryWeight": 0,
                       "mirrored": {"marked": 80, "sent": 80, "answered": 79, "serverErrors": 1}}),
                &[
                    "Mirror   20% of v1's requests copied to v2",
                    "Copies   mirrored 80 requests: 79 answered, 1.27% 5xx",
                    "▶ 4  mirror 20% for 30s (20s left)",
                ],
                &["Next"],
            ),
            (
                "an aborted rollout marks where it stopped",
                json!({"phase": "aborted", "hold": null, "step": 2, "canaryWeight": 0}),
                &["✗ 3  set weight 50%", "Step     3/5\n"],
                &["▶", "Next"],
            ),
            (
                "a succeeded rollout has every step done",
                json!({"phase": "succeeded", "hold": null, "step": 4, "canaryWeight": 10000}),
                &[
                    "✓ 5  set weight 100%",
                    "[##############################] 100%  (v1 has 0%)",
                ],
                &["▶", "✗"],
            ),
        ];
        for (name, status, present, absent) in cases {
            let text = status_sections(&view(status), NOW)
                .iter()
                .map(|s| render_sections(std::slice::from_ref(s)) + "\n")
                .collect::<String>();
            for part in present {
                assert!(text.contains(part), "{name}: missing {part:?} in\n{text}");
            }
            for part in absent {
                assert!(!text.contains(part), "{name}: has {part:?} in\n{text}");
            }
        }
    }

    #[test]
    fn workloads_show_desired_and_ready_replicas_per_variant_and_the_batch() {
        let mut with_workloads = view(json!({}));
        assert!(
            workloads_section(&with_workloads).is_none(),
            "no workloads, no section"
        );
        with_workloads.workloads = Some(
            serde_json::from_value(json!({
                "stable": {"deployment": "reviews-v1", "desired": 3, "ready": 3},
                "canary": {"deployment": "reviews-v2", "desired": 2, "ready": 1},
                "requested": 2, "full": 4, "batch": 0, "batches": 2, "partition": 0,
            }))
            .unwrap(),
        );
        let text = status(&with_workloads, NOW);
        for part in [
            "Workloads\n  VARIANT      DEPLOYMENT  DESIRED  READY\n  v1 (stable)  reviews-v1  3        3\n  v2 (canary)  reviews-v2  2        1",
            "Canary replicas asked for: 2 of 4",
            "Batch: batch 1 of 2 (holds after batch 1: batchPartition 0)",
        ] {
            assert!(text.contains(part), "missing {part:?} in\n{text}");
        }
        let mut ended = with_workloads.clone();
        ended.rollout.status.phase = Phase::Succeeded;
        ended.rollout.status.canary_weight = TOTAL_WEIGHT;
        ended.workloads = Some(
            serde_json::from_value(json!({
                "stable": {"deployment": "reviews-v1", "error": "scale to 0: forbidden (gave up after 9 attempts in 10m)"},
                "canary": {"deployment": "reviews-v2"},
                "requested": 4, "full": 4, "batches": 2,
            }))
            .unwrap(),
        );
        let text = status(&ended, NOW);
        for part in [
            "v1 (stable)  reviews-v1  -        -",
            "Batch: past the 2 batches (full size)",
            "Failing: reviews-v1: scale to 0: forbidden (gave up after 9 attempts in 10m)",
            "(replicas are read while the rollout runs)",
        ] {
            assert!(text.contains(part), "missing {part:?} in\n{text}");
        }
    }

    #[test]
    fn history_shows_the_latest_entries() {
        let events: Vec<serde_json::Value> = (0..25)
            .map(|i| {
                json!({"at": "2026-11-18T11:01:40Z", "phase": "paused", "step": 1,
                            "canaryWeight": 1000, "message": format!("event {i}")})
            })
            .collect();
        let text = status(&view(json!({"history": events})), NOW);
        assert!(text.contains("History (last 10 of 25)"), "{text}");
        assert!(
            text.contains("event 24") && text.contains("event 15"),
            "{text}"
        );
        assert!(!text.contains("event 14"), "{text}");
    }

    #[test]
    fn propagation_lists_each_proxy() {
        let propagation: Propagation = serde_json::from_value(json!({
            "generation": 5, "applied": 1, "total": 3, "summary": "applied on 1/3 proxies",
            "proxies": [{"proxy": "http://a:9901", "generation": 5},
                        {"proxy": "http://b:9901", "generation": 4},
                        {"proxy": "http://c:9901", "error": "connection refused"}]}))
        .unwrap();
        let text = render_sections(&[propagation_section(&propagation)]);
        assert_eq!(
            text,
            "Propagation\n  generation 5: applied on 1/3 proxies\n  PROXY          GENERATION\n  http://a:9901  5 (applied)\n  http://b:9901  4 (behind)\n  http://c:9901  error: connection refused"
        );
    }

    #[test]
    fn routes_show_variants_rules_and_push_errors() {
        let view: RoutesView = serde_json::from_value(json!({
            "config": {"generation": 3, "routes": [{
                "name": "reviews", "hosts": ["reviews", "reviews.default"], "pathPrefix": "/api",
                "variants": [{"name": "v1", "weight": 9000}, {"name": "v2", "weight": 1000}],
                "rules": [{"variant": "v2", "header": "x-canary", "exact": "always"},
                          {"variant": "v2", "query": "canary", "present": true}],
                "sticky": {"header": "x-user-id", "salt": "r42"}}]},
            "pushError": "write /x: permission denied",
            "propagation": {"generation": 3, "applied": 0, "total": 0,
                            "summary": "applied on 0/0 proxies", "proxies": []}}))
        .unwrap();
        let text = routes(&view);
        for part in [
            "Filter config generation 3: no proxies watched",
            "Push failed: write /x: permission denied",
            "reviews\n  hosts     reviews, reviews.default\n  path      /api*\n  variants  v1 90%, v2 10%\n  sticky    header x-user-id, salt \"r42\"\n  QA rules\n    0  header x-canary = \"always\" → v2\n    1  query canary is present → v2",
        ] {
            assert!(text.contains(part), "missing {part:?} in\n{text}");
        }
    }
}
