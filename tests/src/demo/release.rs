//! The scenarios themselves: a QA rule, and releases followed live until they end.

use super::console::Console;
use super::rig::{Rig, QA_HEADER, ROUTE};
use super::view;
use super::Pace;
use crate::load::Reply;
use meshcanary_control::api::rollouts::RolloutView;
use meshcanary_control::rollout::Phase;
use meshcanary_control::time::{HumanDuration, Timestamp};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How often a followed rollout is read.
const POLL: Duration = Duration::from_millis(250);
/// How long a config push may take to reach Envoy.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// `200 from v2 (x-meshcanary: v2; reason=rule)`.
fn describe_reply(reply: &Result<Reply, String>) -> String {
    match reply {
        Ok(reply) => format!(
            "{} from {} (x-meshcanary: {})",
            reply.status,
            reply.upstream.as_deref().unwrap_or("no upstream"),
            reply.decision.as_deref().unwrap_or("-")
        ),
        Err(error) => format!("failed: {error}"),
    }
}

fn upstream_of(reply: &Result<Reply, String>) -> Option<&str> {
    reply.as_ref().ok().and_then(|r| r.upstream.as_deref())
}

/// QA routing: v2 still has 0 %, yet a request with the QA header reaches it. `Ok` with a
/// summary if it did (and a request without the header did not).
pub async fn qa(rig: &Rig, console: &mut Console, number: usize) -> Result<String, String> {
    let p = console.paint();
    console.line(p.bold(&format!(
        "── {number}. QA routing: testers reach the canary before anyone else ──"
    )));
    let view = rig.routes().await?;
    let route = view
        .config
        .routes
        .iter()
        .find(|r| r.name == ROUTE)
        .ok_or_else(|| format!("the filter config has no route {ROUTE}"))?;
    let weights: Vec<String> = route
        .variants
        .iter()
        .map(|v| format!("{} {}", v.name, meshcanary_control::view::percent(v.weight)))
        .collect();
    console.line(format!("  route {ROUTE}: {}", weights.join(", ")));
    let (header, value) = QA_HEADER;
    rig.cli(
        console,
        &[
            "route",
            "rule",
            "add",
            ROUTE,
            "--variant",
            "v2",
            "--header",
            &format!("{header}={value}"),
        ],
    )
    .await?;
    let generation = rig.wait_until_applied(APPLY_TIMEOUT).await?;
    console.line(p.dim(&format!("  (Envoy runs config generation {generation})")));
    let url = format!("{}/", rig.envoy_url());
    let with_header = rig.request(&[QA_HEADER, ("x-user-id", "tester")]).await;
    let without = rig.request(&[("x-user-id", "alice")]).await;
    for (shown, reply) in [
        (format!("-H '{header}: {value}'"), &with_header),
        ("-H 'x-user-id: alice'".to_string(), &without),
    ] {
        console.line(format!(
            "  {} {}",
            p.dim("$"),
            p.bold(&format!("curl {shown} {url}"))
        ));
        console.line(format!("    {}", describe_reply(reply)));
    }
    let traffic = rig.traffic();
    console.para(
        "  ",
        "  ",
        &format!(
            "Meanwhile the {:.0} requests/s of everyone else: v1 {:.1} %, v2 {:.1} %.",
            traffic.per_second,
            traffic.percent("v1"),
            traffic.percent("v2")
        ),
    );
    match (upstream_of(&with_header), upstream_of(&without)) {
        (Some("v2"), Some("v1")) => {
            Ok("the QA header reached v2 at 0 %; others stayed on v1".into())
        }
        _ => Err(format!(
            "expected the QA request on v2 and the other on v1, got {} and {}",
            describe_reply(&with_header),
            describe_reply(&without)
        )),
    }
}

/// A release the demo runs.
#[derive(Debug, Clone)]
pub struct Release {
    /// The rollout's name.
    pub name: String,
    /// The stable variant.
    pub stable: String,
    /// The canary.
    pub canary: String,
    /// The canary's weights, in percent.
    pub percents: Vec<u32>,
    /// What the canary does wrong, if anything: it answers one request in this many with a 500.
    pub fail_every: u64,
    /// The analysis window.
    pub interval: Duration,
    /// The longest the release may take.
    pub deadline: Duration,
}

/// The share of stable's requests a release first mirrors to its canary.
pub const MIRROR_PERCENT: u32 = 20;

impl Release {
    /// v2, healthy, after `stable`.
    pub fn healthy(stable: &str, pace: Pace) -> Release {
        Release {
            name: "reviews-v2".into(),
            stable: stable.into(),
            canary: "v2".into(),
            percents: vec![5, 20, 50, 100],
            fail_every: 0,
            interval: pace.interval,
            deadline: pace.release_deadline,
        }
    }

    /// v3, failing one request in ten, after `stable`.
    pub fn broken(stable: &str, pace: Pace) -> Release {
        Release {
            name: "reviews-v3".into(),
            canary: "v3".into(),
            fail_every: 10,
            ..Release::healthy(stable, pace)
        }
    }

    /// Whether the release should be promoted.
    pub fn should_succeed(&self) -> bool {
        self.fail_every == 0
    }

    /// How long the release first mirrors stable's requests to the canary, before any weight:
    /// half an analysis window, so that no check judges the canary before it serves anyone.
    pub fn mirror_for(&self) -> Duration {
        self.interval / 2
    }

    /// The rollout spec, as the API takes it.
    pub fn spec(&self) -> serde_json::Value {
        let mirror = serde_json::json!({"mirror": {
            "percent": MIRROR_PERCENT,
            "duration": HumanDuration(self.mirror_for()).to_string(),
        }});
        let steps: Vec<serde_json::Value> = std::iter::once(mirror)
            .chain(
                self.percents
                    .iter()
                    .map(|percent| serde_json::json!({"setWeight": {"percent": percent}})),
            )
            .collect();
        serde_json::json!({
            "name": self.name,
            "route": ROUTE,
            "stable": self.stable,
            "canary": self.canary,
            "steps": steps,
            "timeout": "15m",
            "analysis": {
                "interval": HumanDuration(self.interval).to_string(),
                "minSuccessRate": 99,
                "maxLatencyMs": 500,
                "latencyPercentile": 99,
                "minRequests": 20,
                "failureLimit": 2,
                "inconclusiveLimit": 5
            }
        })
    }
}

/// Writes the spec of a release a person can start once the scenarios are done: the next variant
/// after the current stable one, with the demo's analysis. Its canary and file, if written.
pub async fn next_release(rig: &Rig) -> Option<(String, PathBuf)> {
    let stable = rig.stable_variant().await;
    let canary = match stable.as_str() {
        "v1" => "v2",
        "v2" => "v3",
        _ => "v2",
    };
    let release = Release {
        name: format!("try-{canary}"),
        canary: canary.into(),
        ..Release::healthy(&stable, rig.pace)
    };
    let path = rig.dir().join(format!("{}.json", release.name));
    let text = serde_json::to_string_pretty(&release.spec()).ok()?;
    std::fs::write(&path, text).ok()?;
    Some((canary.to_string(), path))
}

/// Runs `release` with the CLI and follows it to its end. `Ok` with a summary if it ended as it
/// should (a healthy canary promoted and serving everything, a broken one rolled back and
/// serving nothing).
pub async fn release(
    rig: &Rig,
    console: &mut Console,
    number: usize,
    release: &Release,
) -> Result<String, String> {
    let p = console.paint();
    let steps: Vec<String> = release.percents.iter().map(|p| format!("{p} %")).collect();
    let title = if release.should_succeed() {
        format!(
            "Release {}: mirror {MIRROR_PERCENT} % → {}",
            release.canary,
            steps.join(" → ")
        )
    } else {
        format!("Release {}, which has a bug", release.canary)
    };
    console.line(p.bold(&format!("── {number}. {title} ──")));
    if let Some(upstream) = rig.upstream(&release.canary) {
        upstream.set_fail_every(release.fail_every);
    }
    if !release.should_succeed() {
        console.para(
            "  ",
            "  ",
            &format!(
                "{} answers 1 request in {} with a 500. Nobody has noticed yet; the analysis will.",
                release.canary, release.fail_every
            ),
        );
    }
    let spec_path = rig.dir().join(format!("{}.json", release.name));
    let spec_text = serde_json::to_string_pretty(&release.spec()).unwrap_or_default();
    std::fs::write(&spec_path, &spec_text)
        .map_err(|error| format!("cannot write {}: {error}", spec_path.display()))?;
    console.para(
        "  ",
        "  ",
        &format!(
            "{} → {}: first {} gets a copy of {MIRROR_PERCENT} % of {}'s requests for {} (the \
             copies' answers are discarded), then steps of {}. Every {} the analysis judges the \
             last window: success rate ≥ 99 %, p99 ≤ 500 ms, errors no worse than {}'s. 2 failed \
             checks roll back.",
            release.stable,
            release.canary,
            release.canary,
            release.stable,
            HumanDuration(release.mirror_for()),
            steps.join(", "),
            HumanDuration(release.interval),
            release.stable
        ),
    );
    let spec_arg = spec_path.display().to_string();
    rig.cli(console, &["rollout", "create", "-f", &spec_arg])
        .await?;
    console.blank();
    let end = follow(rig, console, &release.name, Some(release.deadline)).await?;
    summarize_end(rig, console, release, &end).await
}

/// After a release ended: how the traffic now splits, and whether that is what should be.
async fn summarize_end(
    rig: &Rig,
    console: &mut Console,
    release: &Release,
    end: &RolloutView,
) -> Result<String, String> {
    let p = console.paint();
    let status = &end.rollout.status;
    let took = view::clock(status.updated_at.since(status.created_at));
    // Only requests routed by the final config count.
    rig.wait_until_applied(APPLY_TIMEOUT).await?;
    let traffic = rig.traffic_during(Duration::from_secs(2)).await;
    let canary_share = traffic.percent(&release.canary);
    console.line(format!(
        "  traffic now: {} {:.1} %, {} {:.1} %",
        release.stable,
        traffic.percent(&release.stable),
        release.canary,
        canary_share
    ));
    let checks = &status.analysis.checks;
    let passed = checks
        .iter()
        .filter(|c| c.check.verdict == meshcanary_control::analysis::Verdict::Pass)
        .count();
    match (status.phase, release.should_succeed()) {
        (Phase::Succeeded, true) if canary_share >= 99.5 => {
            let summary = format!(
                "{} promoted in {took} after {passed} passing checks; it now serves all traffic as the stable variant",
                release.canary
            );
            console.para(&format!("  {} ", p.green("✓")), "    ", &summary);
            Ok(summary)
        }
        // A request sent just before the switch may still be answered by the canary after it.
        (Phase::RolledBack, false) if canary_share <= 0.5 => {
            let summary = format!(
                "{} rolled back by the analysis in {took}, never above {}; all traffic is back on {}",
                release.canary,
                meshcanary_control::view::percent(highest_weight(end)),
                release.stable
            );
            console.para(&format!("  {} ", p.green("✓")), "    ", &summary);
            Ok(summary)
        }
        (phase, _) => {
            let error = format!(
                "{} ended {} with {:.1} % of the traffic on {}: {}",
                release.name,
                phase.as_str(),
                canary_share,
                release.canary,
                status.message
            );
            console.para(&format!("  {} ", p.red("✗")), "    ", &error);
            Err(error)
        }
    }
}

fn highest_weight(view: &RolloutView) -> u32 {
    view.rollout
        .status
        .history
        .iter()
        .filter(|e| e.phase == Phase::Progressing)
        .map(|e| e.canary_weight)
        .max()
        .unwrap_or(0)
}

/// What of a rollout has been shown.
struct Shown {
    events: HashSet<(u64, String)>,
    checks: HashSet<u64>,
}

impl Shown {
    fn new() -> Shown {
        Shown {
            events: HashSet::new(),
            checks: HashSet::new(),
        }
    }

    /// The lines for what is new in `view`, oldest first.
    fn news(&mut self, view: &RolloutView, console: &Console) -> Vec<String> {
        let rollout = &view.rollout;
        let created = rollout.status.created_at;
        let (width, paint) = (console.width(), console.paint());
        let mut items: Vec<(Timestamp, Vec<String>)> = Vec::new();
        for event in &rollout.status.history {
            // Checks are shown from their records, with the numbers.
            if event.message.starts_with("analysis check ") {
                continue;
            }
            if self.events.insert((event.at.0, event.message.clone())) {
                let mut event = event.clone();
                // The failed check that decided it is shown just above, with its reasons.
                if event.phase == Phase::RolledBack {
                    if let Some((head, _)) = event.message.split_once("; last: ") {
                        event.message = format!("{head}; the last failed check above says why");
                    }
                }
                items.push((event.at, view::event_lines(&event, created, width, paint)));
            }
        }
        for record in &rollout.status.analysis.checks {
            if self.checks.insert(record.at.0) {
                items.push((
                    record.at,
                    view::check_lines(record, &rollout.spec, created, width, paint),
                ));
            }
        }
        items.sort_by_key(|(at, _)| *at);
        items.into_iter().flat_map(|(_, lines)| lines).collect()
    }
}

/// Shows `name` live until it ends (or, with a `deadline`, gives up after it). Returns how it
/// ended.
pub async fn follow(
    rig: &Rig,
    console: &mut Console,
    name: &str,
    deadline: Option<Duration>,
) -> Result<RolloutView, String> {
    let started = Instant::now();
    let mut shown = Shown::new();
    loop {
        let view = rig.rollout(name).await?;
        for line in shown.news(&view, console) {
            console.line(line);
        }
        let traffic = rig.traffic();
        let paint = console.paint();
        console.set_panel(view::panel(&view, &traffic, Timestamp::now(), paint));
        let phase = view.rollout.status.phase;
        if phase.is_terminal() {
            console.clear_panel();
            return Ok(view);
        }
        if let Some(deadline) = deadline {
            if started.elapsed() > deadline {
                console.clear_panel();
                return Err(format!(
                    "{name} has not ended after {}: {}, {}",
                    HumanDuration(deadline),
                    phase.as_str(),
                    view.rollout.status.message
                ));
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// While the demo stays up: follows every rollout someone starts, and shows the traffic when
/// none runs. Never returns.
pub async fn follow_any(rig: &Rig, console: &mut Console) {
    let mut finished: HashSet<String> = HashSet::new();
    loop {
        let running = rig.rollouts().await.ok().and_then(|views| {
            for view in &views {
                if view.rollout.status.phase.is_terminal() {
                    finished.insert(view.rollout.spec.name.clone());
                }
            }
            views
                .into_iter()
                .find(|v| !finished.contains(&v.rollout.spec.name))
        });
        match running {
            Some(view) => {
                let name = view.rollout.spec.name.clone();
                console.line(format!(
                    "  following rollout {name} ({} → {})",
                    view.rollout.spec.stable, view.rollout.spec.canary
                ));
                if let Err(error) = follow(rig, console, &name, None).await {
                    console.line(format!("  stopped following {name}: {error}"));
                }
                finished.insert(name);
                console.blank();
            }
            None => {
                let paint = console.paint();
                console.set_panel(view::idle_panel(&rig.traffic(), paint));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
