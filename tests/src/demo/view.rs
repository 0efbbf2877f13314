//! What the demo shows of a rollout: a line per event and per analysis check as they happen, and
//! the live panel (step, weight bar, each variant's success rate, p99 and share of the traffic,
//! the verdicts so far). Pure functions of the API's answer, the traffic and `now`.

use super::console::{wrap, Paint};
use super::rig::TrafficShare;
use meshcanary_control::analysis::Verdict;
use meshcanary_control::api::rollouts::RolloutView;
use meshcanary_control::cli::render::progress_bar;
use meshcanary_control::rollout::{CheckRecord, Event, Phase, RolloutSpec};
use meshcanary_control::time::Timestamp;
use meshcanary_control::view::percent;
use std::time::Duration;

/// The panel's lines stay within this many characters, so they fit an 80-column terminal.
pub const PANEL_WIDTH: usize = 78;
/// Verdicts the panel shows.
const VERDICTS_SHOWN: usize = 16;

/// `m:ss` (or `h:mm:ss`) since the rollout was created.
pub fn clock(elapsed: Duration) -> String {
    let seconds = elapsed.as_secs();
    match seconds {
        0..3600 => format!("{}:{:02}", seconds / 60, seconds % 60),
        _ => format!(
            "{}:{:02}:{:02}",
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60
        ),
    }
}

/// A success rate: `100 %`, `90.0 %`, `99.95 %` (more decimals when one would show 100), `–`.
pub fn success(rate: Option<f64>) -> String {
    let Some(rate) = rate else {
        return "–".into();
    };
    let value = rate * 100.0;
    if value >= 100.0 {
        return "100 %".into();
    }
    let mut decimals = 1;
    while decimals < 4 && format!("{value:.decimals$}").parse::<f64>() == Ok(100.0) {
        decimals += 1;
    }
    format!("{value:.decimals$} %")
}

/// A latency: `4.96 ms`, `24.9 ms`, `512 ms`, `–`.
pub fn latency(ms: Option<f64>) -> String {
    match ms {
        None => "–".into(),
        Some(ms) if ms < 10.0 => format!("{ms:.2} ms"),
        Some(ms) if ms < 100.0 => format!("{ms:.1} ms"),
        Some(ms) => format!("{ms:.0} ms"),
    }
}

/// `p99`, `p99.9`: the percentile the rollout's analysis judges.
pub fn percentile_name(spec: &RolloutSpec) -> String {
    let p = spec
        .analysis
        .as_ref()
        .map_or(99.0, |a| a.latency_percentile);
    let text = format!("{p:.3}");
    format!("p{}", text.trim_end_matches('0').trim_end_matches('.'))
}

fn verdict_mark(verdict: Verdict, paint: Paint) -> String {
    match verdict {
        Verdict::Pass => paint.green("✓"),
        Verdict::Fail => paint.red("✗"),
        Verdict::Inconclusive => paint.yellow("?"),
    }
}

/// The lines for one history entry: `0:05  step 2/4: canary weight 20%`, wrapped, the end of a
/// rollout in colour.
pub fn event_lines(
    event: &Event,
    created_at: Timestamp,
    width: usize,
    paint: Paint,
) -> Vec<String> {
    let prefix = format!("  {:>5}  ", clock(event.at.since(created_at)));
    let indent = " ".repeat(prefix.len());
    // Wrapping works on the plain text; the colour goes on afterwards, line by line.
    wrap(&event.message, width, &prefix, &indent)
        .into_iter()
        .map(|line| {
            let (head, text) = line.split_at(prefix.len().min(line.len()));
            let text = match event.phase {
                Phase::Succeeded => paint.green(text),
                Phase::RolledBack | Phase::Aborted => paint.red(text),
                Phase::Paused => paint.yellow(text),
                _ => text.to_string(),
            };
            format!("{head}{text}")
        })
        .collect()
}

/// `v2 100 % of 52, p99 4.96 ms`, or `v1 no requests`.
fn measured(name: &str, requests: u64, rate: Option<f64>, ms: Option<f64>, p: &str) -> String {
    match requests {
        0 => format!("{name} no requests"),
        _ => format!(
            "{name} {} of {requests}, {p} {}",
            success(rate),
            latency(ms)
        ),
    }
}

/// The lines for one analysis check: the verdict with both variants' numbers, and for a check
/// that did not pass, the judge's reasons.
pub fn check_lines(
    record: &CheckRecord,
    spec: &RolloutSpec,
    created_at: Timestamp,
    width: usize,
    paint: Paint,
) -> Vec<String> {
    let check = &record.check;
    let p = percentile_name(spec);
    let verdict = match check.verdict {
        Verdict::Pass => "passed",
        Verdict::Fail => "FAILED",
        Verdict::Inconclusive => "inconclusive",
    };
    let canary = measured(
        &spec.canary,
        check.canary.requests,
        check.canary.success_rate,
        check.canary.latency_ms,
        &p,
    );
    let stable = measured(
        &spec.stable,
        check.baseline.requests,
        check.baseline.success_rate,
        check.baseline.latency_ms,
        &p,
    );
    let when = clock(record.at.since(created_at));
    let head = format!(
        "{} check {verdict} at {}: {canary} · {stable}",
        verdict_mark(check.verdict, paint),
        percent(record.canary_weight),
    );
    let mut lines = wrap(&head, width, &format!("  {when:>5}  "), "           ");
    if check.verdict != Verdict::Pass {
        for reason in &check.reasons {
            lines.extend(wrap(reason, width, "           - ", "             "));
        }
    }
    lines
}

/// The live panel: what the rollout is doing now.
pub fn panel(
    view: &RolloutView,
    traffic: &TrafficShare,
    now: Timestamp,
    paint: Paint,
) -> Vec<String> {
    let rollout = &view.rollout;
    let spec = &rollout.spec;
    let status = &rollout.status;
    let phase = status.phase.as_str();
    let phase = match status.phase {
        Phase::Succeeded => paint.green(phase),
        Phase::RolledBack | Phase::Aborted => paint.red(phase),
        Phase::Paused => paint.yellow(phase),
        _ => paint.bold(phase),
    };
    let total = rollout.plan.len();
    let step = (status.step + 1).min(total);
    let name: String = spec.name.chars().take(28).collect();
    let mut lines = vec![
        format!(
            "  {} ({} → {})  {phase}  step {step}/{total}  {}",
            paint.bold(&name),
            spec.stable,
            spec.canary,
            clock(now.since(status.created_at))
        ),
        format!(
            "  {} {}  {}",
            paint.cyan(&spec.canary),
            progress_bar(status.canary_weight, 30),
            view.propagation.summary
        ),
    ];
    if let Some(share) = view.rollout.mirror() {
        let copies = view.mirrored.map_or(String::new(), |m| {
            let failed = match m.answered {
                0 => 0.0,
                answered => 100.0 * m.server_errors as f64 / answered as f64,
            };
            format!(" · {} copies answered, {failed:.1} % 5xx", m.answered)
        });
        lines.push(format!(
            "  mirroring {} of {}'s requests to {}{copies}",
            percent(share),
            spec.stable,
            spec.canary
        ));
    }
    let last = status.analysis.checks.last();
    let p = percentile_name(spec);
    lines.push(paint.dim(&format!(
        "  {:<14}{:>10}{:>10}{:>11}{:>11}",
        "last window", "requests", "success", p, "traffic"
    )));
    for (name, role, measured) in [
        (&spec.canary, "canary", last.map(|c| &c.check.canary)),
        (&spec.stable, "stable", last.map(|c| &c.check.baseline)),
    ] {
        lines.push(format!(
            "  {:<14}{:>10}{:>10}{:>11}{:>9.1} %",
            format!("{name} {role}"),
            measured.map_or("–".into(), |m| m.requests.to_string()),
            success(measured.and_then(|m| m.success_rate)),
            latency(measured.and_then(|m| m.latency_ms)),
            traffic.percent(name),
        ));
    }
    let checks = &status.analysis.checks;
    let verdicts: Vec<String> = checks[checks.len().saturating_sub(VERDICTS_SHOWN)..]
        .iter()
        .map(|c| verdict_mark(c.check.verdict, paint))
        .collect();
    let limit = spec.analysis.as_ref().map_or(0, |a| a.failure_limit);
    let mut checks_line = format!(
        "  checks {}  failed {}/{limit}",
        if verdicts.is_empty() {
            "(none yet)".to_string()
        } else {
            verdicts.join("")
        },
        status.analysis.failed_checks
    );
    if let (Some(analysis), Some(at), Phase::Progressing) =
        (&spec.analysis, status.analysis.last_check_at, status.phase)
    {
        let next = at.plus(analysis.interval.0);
        checks_line.push_str(&format!(", next in {}s", next.since(now).as_secs() + 1));
    }
    checks_line.push_str(&format!(
        "   traffic {:.0}/s, {} 5xx",
        traffic.per_second,
        success(match traffic.total {
            0 => None,
            total => Some(traffic.failed as f64 / total as f64),
        })
    ));
    lines.push(checks_line);
    if status.phase == Phase::Paused {
        let mut message = wrap(&status.message, PANEL_WIDTH, "  paused: ", "          ");
        message.truncate(2);
        lines.extend(message.into_iter().map(|l| paint.yellow(&l)));
    }
    lines
}

/// The panel while no rollout runs: the traffic, and what to do.
pub fn idle_panel(traffic: &TrafficShare, paint: Paint) -> Vec<String> {
    let shares: Vec<String> = traffic
        .by_upstream
        .keys()
        .map(|name| format!("{name} {:.1} %", traffic.percent(name)))
        .collect();
    vec![paint.dim(&format!(
        "  traffic {:.0}/s: {}; no rollout running. Ctrl-C stops the demo.",
        traffic.per_second,
        if shares.is_empty() {
            "none".to_string()
        } else {
            shares.join(", ")
        }
    ))]
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshcanary_control::analysis::{Check, Measured};
    use meshcanary_control::rollout::Rollout;
    use meshcanary_control::view::Propagation;

    const T0: Timestamp = Timestamp(1_800_000_000_000);

    fn spec() -> RolloutSpec {
        serde_json::from_value(serde_json::json!({
            "name": "reviews-v3", "route": "reviews", "stable": "v2", "canary": "v3",
            "steps": [{"setWeight": {"percent": 5}}, {"setWeight": {"percent": 100}}],
            "analysis": {"interval": "2s", "minSuccessRate": 99, "maxLatencyMs": 500}
        }))
        .unwrap()
    }

    fn record(verdict: Verdict, canary_rate: f64) -> CheckRecord {
        CheckRecord {
            at: T0.plus(Duration::from_millis(4_200)),
            since: T0.plus(Duration::from_millis(2_200)),
            step: 0,
            canary_weight: 500,
            check: Check {
                verdict,
                reasons: vec!["canary success rate 90 % (4 failures (5xx, reset or gRPC server error) in 40 responses) is below the minimum 99 %".into()],
                canary: Measured { requests: 40, success_rate: Some(canary_rate), latency_ms: Some(4.95) },
                baseline: Measured { requests: 760, success_rate: Some(1.0), latency_ms: Some(4.9) },
                p_value: None,
            },
        }
    }

    #[test]
    fn numbers_read_well() {
        let cases = [
            (clock(Duration::from_millis(7_900)), "0:07"),
            (clock(Duration::from_secs(754)), "12:34"),
            (clock(Duration::from_secs(3_725)), "1:02:05"),
            (success(Some(1.0)), "100 %"),
            (success(Some(0.9)), "90.0 %"),
            (success(Some(0.9995)), "99.95 %"),
            (success(Some(0.99999)), "99.999 %"),
            (success(None), "–"),
            (latency(Some(4.956)), "4.96 ms"),
            (latency(Some(24.94)), "24.9 ms"),
            (latency(Some(512.4)), "512 ms"),
            (latency(None), "–"),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn a_failed_check_shows_both_variants_and_why() {
        let lines = check_lines(
            &record(Verdict::Fail, 0.9),
            &spec(),
            T0,
            100,
            Paint::new(false),
        );
        assert_eq!(
            lines[0],
            "   0:04  ✗ check FAILED at 5%: v3 90.0 % of 40, p99 4.95 ms · v2 100 % of 760, p99 4.90 ms"
        );
        assert_eq!(lines[1], "           - canary success rate 90 % (4 failures (5xx, reset or gRPC server error) in 40 responses)");
        assert_eq!(lines[2], "             is below the minimum 99 %");
        let passed = check_lines(
            &record(Verdict::Pass, 1.0),
            &spec(),
            T0,
            100,
            Paint::new(false),
        );
        assert_eq!(passed.len(), 1, "a passing check is one line: {passed:?}");
    }

    #[test]
    fn the_panel_fits_80_columns_and_says_where_the_rollout_is() {
        let mut rollout = Rollout::new(spec(), 0, T0).unwrap();
        rollout.status.phase = Phase::Progressing;
        rollout.status.canary_weight = 500;
        rollout.status.analysis.checks = vec![record(Verdict::Fail, 0.9)];
        rollout.status.analysis.failed_checks = 1;
        rollout.status.analysis.last_check_at = Some(T0.plus(Duration::from_millis(4_200)));
        let view = RolloutView {
            rollout,
            propagation: Propagation {
                generation: 3,
                applied: 1,
                total: 1,
                summary: "applied on 1/1 proxies".into(),
                proxies: vec![],
            },
            mirrored: None,
            workloads: None,
        };
        let traffic = TrafficShare {
            total: 800,
            by_upstream: [("v2".to_string(), 760), ("v3".to_string(), 40)].into(),
            failed: 4,
            per_second: 400.0,
        };
        let lines = panel(
            &view,
            &traffic,
            T0.plus(Duration::from_secs(5)),
            Paint::new(false),
        );
        for line in &lines {
            assert!(
                line.chars().count() <= PANEL_WIDTH,
                "{line:?} is {} wide",
                line.chars().count()
            );
        }
        assert_eq!(
            lines[0],
            "  reviews-v3 (v2 → v3)  progressing  step 1/2  0:05"
        );
        assert_eq!(
            lines[1],
            "  v3 [#.............................] 5%  applied on 1/1 proxies"
        );
        assert_eq!(
            lines[2],
            "  last window     requests   success        p99    traffic"
        );
        assert_eq!(
            lines[3],
            "  v3 canary             40    90.0 %    4.95 ms      5.0 %"
        );
        assert_eq!(
            lines[4],
            "  v2 stable            760     100 %    4.90 ms     95.0 %"
        );
        assert_eq!(
            lines[5],
            "  checks ✗  failed 1/2, next in 2s   traffic 400/s, 0.5 % 5xx"
        );
    }

    #[test]
    fn the_panel_says_what_a_mirror_step_copies() {
        let mut spec = spec();
        spec.steps.insert(
            0,
            serde_json::from_value(
                serde_json::json!({"mirror": {"percent": 20, "duration": "1s"}}),
            )
            .unwrap(),
        );
        let mut rollout = Rollout::new(spec, 0, T0).unwrap();
        rollout.status.phase = Phase::Progressing;
        let traffic = TrafficShare {
            total: 800,
            by_upstream: [("v2".to_string(), 800)].into(),
            failed: 0,
            per_second: 400.0,
        };
        let mut view = RolloutView {
            rollout,
            propagation: Propagation {
                generation: 3,
                applied: 1,
                total: 1,
                summary: "applied on 1/1 proxies".into(),
                proxies: vec![],
            },
            mirrored: None,
            workloads: None,
        };
        let at = T0.plus(Duration::from_secs(1));
        let lines = panel(&view, &traffic, at, Paint::new(false));
        assert_eq!(lines[2], "  mirroring 20% of v2's requests to v3");
        view.mirrored = Some(meshcanary_control::analysis::MirrorCounters {
            marked: 160,
            sent: 160,
            answered: 158,
            server_errors: 16,
        });
        let lines = panel(&view, &traffic, at, Paint::new(false));
        assert_eq!(
            lines[2],
            "  mirroring 20% of v2's requests to v3 · 158 copies answered, 10.1 % 5xx"
        );
        // Past the step: no such line.
        view.rollout.status.step = 1;
        let lines = panel(&view, &traffic, at, Paint::new(false));
        assert!(!lines.iter().any(|l| l.contains("mirroring")), "{lines:?}");
    }
}
