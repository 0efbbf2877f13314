//! Automated canary analysis end to end: a real Envoy with the filter in front of upstreams whose
//! error rate and latency the test sets, steady traffic from many sticky users, and
//! `meshcanary serve` judging every step from Envoy's admin stats or through a real Prometheus
//! server. A healthy canary is promoted by itself; one with 5 % errors or 300 ms more latency is
//! rolled back; no traffic or unreadable stats hold the rollout without promoting it; and webhooks
//! gate the start and the promotion and hear about the end.
//!
//! Each test starts its own upstreams, Envoy, service (and Prometheus) and polls the rollout's
//! status until a final state, with a deadline; nothing waits on a sleep that could race.

use meshcanary_control::analysis::Verdict;
use meshcanary_control::api::rollouts::RolloutView;
use meshcanary_control::rollout::{Hold, Phase};
use meshcanary_core::config::FilterConfig;
use meshcanary_e2e::control::{weight_applied, ControlApi, ControlService, StatsSource};
use meshcanary_e2e::load::{tally, Client};
use meshcanary_e2e::steady_load::SteadyLoad;
use meshcanary_testkit::envoy::Envoy;
use meshcanary_testkit::hook_server::{HookCall, HookServer};
use meshcanary_testkit::prometheus::PrometheusServer;
use meshcanary_testkit::upstream::{self, Upstream};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Background traffic: at 10 % canary weight a 2 s window holds about 50 canary requests, well
/// above the `minRequests` of 20 the tests ask for.
const RATE: u32 = 250;
/// Distinct sticky users in the background traffic.
const USERS: u64 = 5000;

/// Where the service under test reads the stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stats {
    /// `--envoy-admin` of the test's Envoy.
    EnvoyAdmin,
    /// `--prometheus-url` of a Prometheus scraping the test's Envoy.
    Prometheus,
    /// `--envoy-admin` pointing at a closed port.
    ClosedEnvoyAdmin,
    /// `--prometheus-url` pointing at a closed port.
    ClosedPrometheus,
}

/// Upstreams v1, v2, v3, an Envoy in front of them, maybe a Prometheus scraping it, the control
/// service, and background traffic once started. Fields drop in order: the traffic stops first,
/// Envoy and the upstreams last.
struct Rig {
    load: Option<SteadyLoad>,
    service: ControlService,
    _prometheus: Option<PrometheusServer>,
    envoy: Option<Envoy>,
    client: Client,
    upstreams: [Upstream; 3],
    started: Instant,
}

impl Rig {
    async fn start(stats: Stats) -> Rig {
        let started = Instant::now();
        let upstreams = Upstream::variants();
        let config = routes();
        let envoy = Envoy::start(upstream::ports(&upstreams), &config).await;
        let mut prometheus = None;
        let source = match stats {
            Stats::EnvoyAdmin => StatsSource::EnvoyAdmin(envoy.admin_url.clone()),
            Stats::Prometheus => {
                let server = PrometheusServer::start(&envoy.admin_url).await;
                let url = server.base_url.clone();
                prometheus = Some(server);
                StatsSource::Prometheus(url)
            }
            Stats::ClosedEnvoyAdmin => StatsSource::EnvoyAdmin(closed_url()),
            Stats::ClosedPrometheus => StatsSource::Prometheus(closed_url()),
        };
        let service = ControlService::start_with_stats(&envoy, &config, source).await;
        let client = Client::new(&envoy.base_url);
        println!("{stats:?} rig up in {:?}", started.elapsed());
        Rig {
            load: None,
            service,
            _prometheus: prometheus,
            envoy: Some(envoy),
            client,
            upstreams,
            started,
        }
    }

    fn api(&self) -> &ControlApi {
        self.service.api()
    }

    fn v2(&self) -> &Upstream {
        &self.upstreams[1]
    }

    fn envoy(&self) -> &Envoy {
        self.envoy.as_ref().expect("envoy is running")
    }

    /// Starts the background traffic and waits until it flows.
    async fn start_traffic(&mut self) {
        let load = SteadyLoad::start(self.client.clone(), RATE, USERS);
        let deadline = Instant::now() + Duration::from_secs(10);
        while load.counts().finished < 20 {
            assert!(
                Instant::now() < deadline,
                "no traffic through Envoy: {:?}",
                load.counts()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.load = Some(load);
    }

    /// Sends `requests` requests from fresh random users and counts the answers by upstream.
    async fn sample(&self, requests: usize) -> HashMap<String, usize> {
        let seed = self.started.elapsed().as_nanos() as u64;
        let replies = self
            .client
            .many(requests, 8, move |i| {
                vec![("x-user-id".into(), format!("sample-{seed}-{i}"))]
            })
            .await;
        tally(&replies)
    }

    /// Waits until Envoy runs the filter config the service last saved.
    async fn wait_for_envoy(&self) -> FilterConfig {
        let config = self.api().routes().await.config;
        self.envoy().wait_for_generation(config.generation).await;
        config
    }
}

/// The filter config every test starts from: route `reviews` for any host, all on v1, sticky on
/// `x-user-id`.
fn routes() -> FilterConfig {
    let config = json!({"generation": 1, "routes": [{
        "name": "reviews", "hosts": ["*"],
        "variants": [{"name": "v1", "weight": 10000}, {"name": "v2", "weight": 0}],
        "sticky": {"header": "x-user-id", "salt": "analysis-e2e"}
    }]});
    FilterConfig::from_json(config.to_string().as_bytes()).expect("valid routes")
}

/// A URL on a loopback port nothing listens on.
fn closed_url() -> String {
    format!("http://127.0.0.1:{}", meshcanary_testkit::free_port())
}

/// A rollout of v2 on route `reviews` through `percents`, with `analysis` and `webhooks`.
fn spec(name: &str, percents: &[u32], analysis: Value, webhooks: Value) -> Value {
    let steps: Vec<Value> = percents
        .iter()
        .map(|percent| json!({"setWeight": {"percent": percent}}))
        .collect();
    json!({"name": name, "route": "reviews", "stable": "v1", "canary": "v2",
           "steps": steps, "analysis": analysis, "webhooks": webhooks})
}

/// The analysis of the traffic tests: 2 s windows (the latency histogram is merged every 1 s),
/// 20 canary requests per window, roll back at the second failed check.
fn analysis(max_latency_ms: u32) -> Value {
    json!({"interval": "2s", "minSuccessRate": 99, "maxLatencyMs": max_latency_ms,
           "latencyPercentile": 99, "minRequests": 20, "failureLimit": 2, "inconclusiveLimit": 3})
}

/// Analysis for tests without traffic: 1 s windows, hold after two inconclusive checks.
fn quick_analysis() -> Value {
    json!({"interval": "1s", "minSuccessRate": 99, "minRequests": 20, "failureLimit": 2,
           "inconclusiveLimit": 2})
}

/// Polls the rollout every 50 ms until `done`, or panics after `timeout` with its status.
async fn wait_for(
    api: &ControlApi,
    name: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&RolloutView) -> bool,
) -> RolloutView {
    let deadline = Instant::now() + timeout;
    loop {
        let view = api.rollout(name).await;
        if done(&view) {
            return view;
        }
        if Instant::now() >= deadline {
            panic!(
                "rollout {name}: not {what} after {timeout:?}\n{}\nservice log (end):\n{}",
                describe(&view),
                log_tail(&api.log(), 80)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The rollout's phase, weight, history and checks, for failure messages.
fn describe(view: &RolloutView) -> String {
    let status = &view.rollout.status;
    let mut out = format!(
        "phase {:?}, step {}, canary weight {}, hold {:?}, message: {}\nhistory:\n",
        status.phase, status.step, status.canary_weight, status.hold, status.message
    );
    for event in &status.history {
        out += &format!(
            "  {:?} step {} weight {}: {}\n",
            event.phase, event.step, event.canary_weight, event.message
        );
    }
    out += "checks:\n";
    for record in &status.analysis.checks {
        out += &format!(
            "  step {} weight {} {:?} canary {:?} stable {:?}\n",
            record.step,
            record.canary_weight,
            record.check.verdict,
            record.check.canary,
            record.check.baseline
        );
    }
    out
}

/// Prints how long the test took and the checks it saw, one line each.
fn report(what: &str, view: &RolloutView, started: Instant) {
    let status = &view.rollout.status;
    let mut out = format!(
        "{what}: {:?} after {:.1?}: {}\n",
        status.phase,
        started.elapsed(),
        status.message
    );
    for record in &status.analysis.checks {
        let (canary, stable) = (&record.check.canary, &record.check.baseline);
        out += &format!(
            "  step {} at {:>5} bp: {:<12} canary {:>4} req, success {:?}, latency {:?} | stable {:>4} req, latency {:?}\n",
            record.step,
            record.canary_weight,
            format!("{:?}", record.check.verdict),
            canary.requests,
            canary.success_rate,
            canary.latency_ms.map(|ms| ms.round()),
            stable.requests,
            stable.latency_ms.map(|ms| ms.round()),
        );
    }
    println!("{out}");
}

fn log_tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether the rollout ever reached promotion.
fn ever_promoted(view: &RolloutView) -> bool {
    view.rollout
        .status
        .history
        .iter()
        .any(|e| matches!(e.phase, Phase::Promoting | Phase::Succeeded))
}

/// The highest canary weight the rollout ever had.
fn highest_weight(view: &RolloutView) -> u32 {
    let status = &view.rollout.status;
    status
        .history
        .iter()
        .map(|e| e.canary_weight)
        .chain([status.canary_weight])
        .max()
        .unwrap_or(0)
}

fn done(view: &RolloutView) -> bool {
    view.rollout.status.phase.is_terminal()
}

/// A healthy canary goes through 10, 30 and 60 % with a passing check at each weight, is
/// promoted and finishes as the route's stable variant; Envoy then sends everything to it.
async fn a_healthy_canary_is_promoted(stats: Stats) {
    let mut rig = Rig::start(stats).await;
    rig.start_traffic().await;
    let api = rig.api();
    let name = "healthy";
    api.create_rollout(&spec(name, &[10, 30, 60], analysis(500), json!([])))
        .await;
    let end = wait_for(api, name, "finished", Duration::from_secs(40), done).await;
    let status = &end.rollout.status;
    assert_eq!(status.phase, Phase::Succeeded, "{}", describe(&end));
    assert_eq!(status.canary_weight, 10000);
    // Nothing about this canary is worse than stable. Only its p99 could cross 500 ms, when the
    // machine is busy enough to stall every variant; one such check is within failureLimit.
    for check in &status.analysis.checks {
        if check.check.verdict == Verdict::Fail {
            let reasons = check.check.reasons.join("; ");
            assert!(
                reasons.contains("latency") && reasons.contains("is above the maximum 500 ms"),
                "a healthy canary failed a check: {}",
                describe(&end)
            );
        }
    }
    for (step, weight) in [(0, 1000), (1, 3000), (2, 6000)] {
        let pass = status
            .analysis
            .checks
            .iter()
            .find(|c| c.step == step && c.check.verdict == Verdict::Pass);
        let Some(pass) = pass else {
            panic!("no passing check at step {step}:\n{}", describe(&end));
        };
        let canary = &pass.check.canary;
        assert_eq!(pass.canary_weight, weight);
        assert!(canary.requests >= 20, "{canary:?}");
        assert_eq!(canary.success_rate, Some(1.0), "{canary:?}");
        assert!(canary.latency_ms.is_some_and(|ms| ms < 500.0), "{canary:?}");
        assert!(pass.check.baseline.requests > 0, "{pass:?}");
    }
    assert!(
        status
            .history
            .iter()
            .any(|e| e.phase == Phase::Promoting && e.message.contains("every step passed")),
        "{}",
        describe(&end)
    );
    report(&format!("{stats:?} healthy"), &end, rig.started);
    if stats == Stats::Prometheus {
        let proxies = &end.propagation.proxies;
        assert!(
            proxies.len() == 1 && proxies[0].proxy.contains("instance=127.0.0.1:"),
            "the service watches Envoy through Prometheus: {proxies:?}"
        );
    }

    let config = rig.wait_for_envoy().await;
    let weights: Vec<(&str, u32)> = config.routes[0]
        .variants
        .iter()
        .map(|v| (v.name.as_str(), v.weight))
        .collect();
    assert_eq!(
        weights,
        vec![("v2", 10000), ("v1", 0)],
        "v2 is the stable variant"
    );
    let counts = rig.sample(300).await;
    assert_eq!(counts.get("v2"), Some(&300), "{counts:?}");
    let load = rig.load.take().expect("traffic").stop().await;
    assert_eq!(load.errors, 0, "{load:?}");
    assert_eq!(
        load.by_status.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "{load:?}"
    );
    println!("{stats:?} healthy: traffic {load:?}");
}

/// A canary failing 1 request in 20 (5 % 5xx) is rolled back at the second failed check, with
/// the success rate in the reason; the rollback hook hears about it; and every user is back on
/// v1.
async fn a_canary_with_errors_is_rolled_back(stats: Stats) {
    let mut rig = Rig::start(stats).await;
    let hooks = HookServer::start().await;
    rig.v2().set_fail_every(20);
    rig.start_traffic().await;
    let api = rig.api();
    let name = "failing";
    let webhooks = json!([{"name": "pager", "type": "rollback", "url": hooks.url("/rollback"),
                           "retries": 0, "metadata": {"team": "reviews"}}]);
    api.create_rollout(&spec(name, &[10, 30, 60], analysis(500), webhooks))
        .await;
    let end = wait_for(api, name, "finished", Duration::from_secs(30), done).await;
    let status = &end.rollout.status;
    assert_eq!(status.phase, Phase::RolledBack, "{}", describe(&end));
    assert_eq!(status.canary_weight, 0);
    assert!(!ever_promoted(&end), "{}", describe(&end));
    assert_eq!(status.analysis.failed_checks, 2, "{}", describe(&end));
    let message = &status.message;
    assert!(
        message.contains("rolled back: 2 analysis checks failed (limit 2)")
            && message.contains("success rate")
            && message.contains("below the minimum 99 %"),
        "{message}"
    );
    let failed: Vec<_> = status
        .analysis
        .checks
        .iter()
        .filter(|c| c.check.verdict == Verdict::Fail)
        .collect();
    assert_eq!(failed.len(), 2, "{}", describe(&end));
    for check in &failed {
        let canary = &check.check.canary;
        assert!(canary.requests >= 20, "{canary:?}");
        assert!(
            canary.success_rate.is_some_and(|rate| rate < 0.99),
            "{canary:?}"
        );
        assert_eq!(check.check.baseline.success_rate, Some(1.0), "{check:?}");
    }

    // The rollback hook got the documented payload.
    let calls = hooks
        .wait_for_calls("/rollback", "called", Duration::from_secs(10), |c| {
            !c.is_empty()
        })
        .await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    let body = &calls[0].body;
    assert_payload(body, "rollback", name, "rolledBack", 0);
    assert_eq!(body["hook"], "pager");
    assert_eq!(body["lastCheck"]["check"]["verdict"], "fail", "{body}");
    assert_eq!(body["metadata"]["team"], "reviews", "{body}");

    // Traffic is back on v1.
    wait_for(
        api,
        name,
        "at 0 % on every proxy",
        Duration::from_secs(10),
        weight_applied,
    )
    .await;
    let config = rig.wait_for_envoy().await;
    assert_eq!(config.routes[0].variants[0].name, "v1");
    assert_eq!(config.routes[0].variants[0].weight, 10000);
    let counts = rig.sample(300).await;
    assert_eq!(counts.get("v1"), Some(&300), "{counts:?}");
    report(&format!("{stats:?} failing"), &end, rig.started);
}

/// Checks the fields every hook payload carries.
fn assert_payload(body: &Value, kind: &str, rollout: &str, phase: &str, canary_weight: u32) {
    assert_eq!(body["kind"], kind, "{body}");
    assert_eq!(body["rollout"], rollout, "{body}");
    assert_eq!(body["route"], "reviews", "{body}");
    assert_eq!(body["phase"], phase, "{body}");
    assert_eq!(body["stable"], "v1", "{body}");
    assert_eq!(body["canary"], "v2", "{body}");
    assert_eq!(body["canaryWeight"], canary_weight, "{body}");
    assert!(body["canaryPercent"].is_string(), "{body}");
    assert!(body["step"].is_u64() && body["steps"].is_u64(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_is_promoted_through_every_step() {
    a_healthy_canary_is_promoted(Stats::EnvoyAdmin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_with_5_percent_errors_is_rolled_back_and_traffic_returns_to_stable() {
    a_canary_with_errors_is_rolled_back(Stats::EnvoyAdmin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_prometheus_a_healthy_canary_is_promoted() {
    a_healthy_canary_is_promoted(Stats::Prometheus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_prometheus_a_canary_with_5_percent_errors_is_rolled_back() {
    a_canary_with_errors_is_rolled_back(Stats::Prometheus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_300ms_slower_fails_the_latency_limit_and_is_rolled_back() {
    let mut rig = Rig::start(Stats::EnvoyAdmin).await;
    rig.v2().set_delay(Duration::from_millis(300));
    rig.start_traffic().await;
    let api = rig.api();
    let name = "slow";
    api.create_rollout(&spec(name, &[10, 30, 60], analysis(200), json!([])))
        .await;
    let end = wait_for(api, name, "finished", Duration::from_secs(30), done).await;
    let status = &end.rollout.status;
    assert_eq!(status.phase, Phase::RolledBack, "{}", describe(&end));
    assert_eq!(status.canary_weight, 0);
    assert!(!ever_promoted(&end), "{}", describe(&end));
    let message = &status.message;
    assert!(
        message.contains("2 analysis checks failed (limit 2)")
            && message.contains("p99 latency")
            && message.contains("above the maximum 200 ms"),
        "{message}"
    );
    for check in status
        .analysis
        .checks
        .iter()
        .filter(|c| c.check.verdict == Verdict::Fail)
    {
        // Every canary request takes 300 ms or more: its p99 lies in Envoy's (250, 500] bucket
        // or above. (Stable's p99 is not asserted: on a busy two-core machine it can reach that
        // bucket too, and the rollout judges only the canary's latency.)
        let canary = &check.check.canary;
        assert!(
            canary.latency_ms.is_some_and(|ms| ms > 250.0),
            "{}",
            describe(&end)
        );
        assert_eq!(
            canary.success_rate,
            Some(1.0),
            "slow, not failing: {}",
            describe(&end)
        );
    }
    report(name, &end, rig.started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_traffic_the_rollout_holds_at_its_first_step_and_says_why() {
    let rig = Rig::start(Stats::EnvoyAdmin).await;
    let api = rig.api();
    let name = "quiet";
    api.create_rollout(&spec(name, &[10, 50], quick_analysis(), json!([])))
        .await;
    let paused = wait_for(api, name, "paused", Duration::from_secs(15), |v| {
        v.rollout.status.phase != Phase::Progressing && v.rollout.status.phase != Phase::Initialized
    })
    .await;
    let status = &paused.rollout.status;
    assert_eq!(status.phase, Phase::Paused, "{}", describe(&paused));
    assert_eq!(status.hold, Some(Hold::Inconclusive));
    assert!(
        status
            .message
            .contains("2 analysis checks in a row were inconclusive, so the rollout holds")
            && status.message.contains("the canary served no requests"),
        "{}",
        status.message
    );
    assert_eq!((status.step, status.canary_weight), (0, 1000));
    assert_eq!(highest_weight(&paused), 1000, "{}", describe(&paused));
    assert!(!ever_promoted(&paused));
    let checks = &status.analysis.checks;
    assert_eq!(checks.len(), 2, "{}", describe(&paused));
    assert!(checks
        .iter()
        .all(|c| c.check.verdict == Verdict::Inconclusive && c.check.canary.requests == 0));

    // Paused means paused: three more intervals change nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = api.rollout(name).await;
    assert_eq!(later.rollout.status.phase, Phase::Paused);
    assert_eq!(later.rollout.status.canary_weight, 1000);
    assert_eq!(later.rollout.status.analysis.checks.len(), 2);
    assert_eq!(later.rollout.version, paused.rollout.version);
    report(name, &later, rig.started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_an_inconclusive_hold_judges_afresh_one_check_per_interval() {
    let rig = Rig::start(Stats::EnvoyAdmin).await;
    let api = rig.api();
    let name = "resumed";
    api.create_rollout(&spec(name, &[10, 50], quick_analysis(), json!([])))
        .await;
    let held = |v: &RolloutView| v.rollout.status.phase == Phase::Paused;
    let first = wait_for(api, name, "paused", Duration::from_secs(15), held).await;
    assert_eq!(first.rollout.status.hold, Some(Hold::Inconclusive));
    let before = first.rollout.status.analysis.checks.len();

    // A person resumes a while later, when a check is long due (and none ran while it held).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let still = api.rollout(name).await;
    assert_eq!(still.rollout.status.analysis.checks.len(), before);
    // Resuming resets the streak: it takes inconclusiveLimit (2) fresh checks, an interval
    // (1 s) apart, to hold again.
    let resumed = api.action(name, "resume").await;
    let resumed_at = resumed
        .rollout
        .status
        .history
        .iter()
        .rev()
        .find(|e| e.message == "resumed by request")
        .map(|e| e.at)
        .expect("a resume event");
    let again = wait_for(api, name, "paused again", Duration::from_secs(15), held).await;
    let status = &again.rollout.status;
    assert_eq!(
        status.hold,
        Some(Hold::Inconclusive),
        "{}",
        describe(&again)
    );
    assert_eq!((status.canary_weight, highest_weight(&again)), (1000, 1000));
    let fresh = &status.analysis.checks[before..];
    let times: Vec<String> = fresh
        .iter()
        .map(|c| format!("+{:?}", c.at.since(resumed_at)))
        .collect();
    assert_eq!(
        fresh.len(),
        2,
        "checks after resuming at {resumed_at}: {times:?}\n{}",
        describe(&again)
    );
    let spacing = fresh[1].at.since(fresh[0].at);
    assert!(
        spacing >= Duration::from_millis(800),
        "the two checks after resuming came {spacing:?} apart ({times:?} after the resume), \
         so the rollout held again without waiting an interval:\n{}",
        describe(&again)
    );
    report(name, &again, rig.started);
}

/// With stats the service cannot read, every check is inconclusive and the rollout holds at its
/// first weight, saying what it cannot read.
async fn unreadable_stats_hold_the_rollout(stats: Stats, source: &str) {
    let rig = Rig::start(stats).await;
    let api = rig.api();
    let name = "blind";
    api.create_rollout(&spec(name, &[10, 50], quick_analysis(), json!([])))
        .await;
    let paused = wait_for(api, name, "paused", Duration::from_secs(15), |v| {
        v.rollout.status.phase != Phase::Progressing && v.rollout.status.phase != Phase::Initialized
    })
    .await;
    let status = &paused.rollout.status;
    assert_eq!(status.phase, Phase::Paused, "{}", describe(&paused));
    assert_eq!(status.hold, Some(Hold::Inconclusive));
    assert!(
        status.message.contains("inconclusive")
            && status
                .message
                .contains(&format!("cannot read the stats from {source}")),
        "{}",
        status.message
    );
    assert_eq!(status.canary_weight, 1000);
    assert_eq!(highest_weight(&paused), 1000);
    assert!(!ever_promoted(&paused));
    assert!(status.analysis.checks.len() >= 2);
    assert!(status
        .analysis
        .checks
        .iter()
        .all(|c| c.check.verdict == Verdict::Inconclusive));
    let proxies = &paused.propagation.proxies;
    assert!(
        proxies
            .iter()
            .all(|p| p.generation.is_none() && p.error.is_some()),
        "{proxies:?}"
    );
    report(&format!("{stats:?}"), &paused, rig.started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_envoy_admin_makes_checks_inconclusive_and_the_rollout_holds() {
    unreadable_stats_hold_the_rollout(Stats::ClosedEnvoyAdmin, "Envoy admin http://127.0.0.1:")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_prometheus_makes_checks_inconclusive_and_the_rollout_holds() {
    unreadable_stats_hold_the_rollout(Stats::ClosedPrometheus, "Prometheus http://127.0.0.1:")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_dying_mid_rollout_holds_it_without_promotion() {
    let mut rig = Rig::start(Stats::EnvoyAdmin).await;
    rig.start_traffic().await;
    let name = "orphaned";
    rig.api()
        .create_rollout(&spec(name, &[10, 30, 60, 90], analysis(500), json!([])))
        .await;
    let moving = wait_for(
        rig.api(),
        name,
        "past its first step",
        Duration::from_secs(20),
        |v| v.rollout.status.step >= 1 || done(v),
    )
    .await;
    assert_eq!(
        moving.rollout.status.phase,
        Phase::Progressing,
        "{}",
        describe(&moving)
    );
    // The next check is an interval (2 s) away: Envoy dies before it.
    drop(rig.envoy.take());
    let checks_before = moving.rollout.status.analysis.checks.len();
    let api = rig.api();
    let paused = wait_for(api, name, "paused", Duration::from_secs(20), |v| {
        v.rollout.status.phase != Phase::Progressing
    })
    .await;
    let status = &paused.rollout.status;
    assert_eq!(status.phase, Phase::Paused, "{}", describe(&paused));
    assert_eq!(status.hold, Some(Hold::Inconclusive));
    assert!(
        status
            .message
            .contains("cannot read the stats from Envoy admin"),
        "{}",
        status.message
    );
    assert!(!ever_promoted(&paused), "{}", describe(&paused));
    assert_eq!(
        highest_weight(&paused),
        highest_weight(&moving),
        "no step after Envoy died: {}",
        describe(&paused)
    );
    let after: Vec<Verdict> = status.analysis.checks[checks_before..]
        .iter()
        .map(|c| c.check.verdict)
        .collect();
    assert_eq!(
        after,
        vec![Verdict::Inconclusive; 3],
        "{}",
        describe(&paused)
    );
    report(name, &paused, rig.started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_promotion_hook_holds_promotion_until_it_answers_2xx() {
    let mut rig = Rig::start(Stats::EnvoyAdmin).await;
    let hooks = HookServer::start().await;
    hooks.answer("/confirm", 503);
    rig.start_traffic().await;
    let api = rig.api();
    let name = "gated";
    let analysis = json!({"interval": "1s", "minSuccessRate": 99, "minRequests": 20,
                          "failureLimit": 2, "inconclusiveLimit": 3});
    let webhooks = json!([
        {"name": "steps", "type": "rollout", "url": hooks.url("/step"), "retries": 0},
        {"name": "approve", "type": "confirmPromotion", "url": hooks.url("/confirm"),
         "retries": 0, "timeout": "2s", "metadata": {"ticket": "CHG-42"}},
        {"name": "announce", "type": "postRollout", "url": hooks.url("/post"), "retries": 0}
    ]);
    api.create_rollout(&spec(name, &[20, 50], analysis, webhooks))
        .await;
    let waiting = wait_for(
        api,
        name,
        "waiting for the confirm-promotion hook",
        Duration::from_secs(20),
        |v| v.rollout.status.message.contains("confirm-promotion") || done(v),
    )
    .await;
    let status = &waiting.rollout.status;
    assert_eq!(status.phase, Phase::Progressing, "{}", describe(&waiting));
    assert!(
        status
            .message
            .starts_with("waiting for the confirm-promotion hooks")
            && status.message.contains("503"),
        "{}",
        status.message
    );
    assert_eq!(
        (status.step, status.canary_weight),
        (1, 5000),
        "every step is done"
    );
    assert_eq!(status.analysis.last_verdict, Some(Verdict::Pass));

    // The gate is asked again every interval and promotion keeps waiting.
    let refused = hooks
        .wait_for_calls("/confirm", "refused twice", Duration::from_secs(10), |c| {
            c.len() >= 2
        })
        .await;
    assert!(refused.iter().all(|c| c.answered == 503));
    let still = api.rollout(name).await;
    assert_eq!(
        still.rollout.status.phase,
        Phase::Progressing,
        "{}",
        describe(&still)
    );
    assert_eq!(still.rollout.status.canary_weight, 5000);
    assert!(!ever_promoted(&still), "{}", describe(&still));
    let body = &refused[0].body;
    assert_payload(body, "confirmPromotion", name, "progressing", 5000);
    assert_eq!(
        (body["step"].as_u64(), body["steps"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(body["lastCheck"]["check"]["verdict"], "pass", "{body}");
    assert_eq!(body["metadata"]["ticket"], "CHG-42", "{body}");

    hooks.answer("/confirm", 200);
    let end = wait_for(api, name, "finished", Duration::from_secs(15), done).await;
    let status = &end.rollout.status;
    assert_eq!(status.phase, Phase::Succeeded, "{}", describe(&end));
    let messages: Vec<&str> = status.history.iter().map(|e| e.message.as_str()).collect();
    let confirmed = messages
        .iter()
        .position(|m| *m == "confirm-promotion hooks passed");
    let promoting = status
        .history
        .iter()
        .position(|e| e.phase == Phase::Promoting);
    assert!(
        confirmed.is_some() && confirmed < promoting,
        "{}",
        describe(&end)
    );

    // Notifications: one `rollout` call per step, and the post-rollout call after success.
    let post = hooks
        .wait_for_calls("/post", "called", Duration::from_secs(10), |c| {
            !c.is_empty()
        })
        .await;
    assert_eq!(post.len(), 1);
    assert_payload(&post[0].body, "postRollout", name, "succeeded", 10000);
    let mut steps = Vec::new();
    for call in hooks.calls("/step") {
        let weight = call.body["canaryWeight"].as_u64().unwrap_or(0);
        assert_payload(&call.body, "rollout", name, "progressing", weight as u32);
        steps.push((call.body["step"].as_u64(), weight));
    }
    assert_eq!(steps, vec![(Some(0), 2000), (Some(1), 5000)]);
    report(name, &end, rig.started);
}

/// Pre-rollout and rollback hooks of the gate tests: `pre` is the pre-rollout hook's path.
fn gate_hooks(hooks: &HookServer, pre: &str) -> Value {
    json!([
        {"name": "smoke", "type": "preRollout", "url": hooks.url(pre), "retries": 0},
        {"name": "pager", "type": "rollback", "url": hooks.url("/rollback"), "retries": 0}
    ])
}

/// A refused gate is retried once per analysis interval (1 s here), not at once.
fn assert_retried_an_interval_apart(calls: &[HookCall]) {
    for pair in calls.windows(2) {
        let spacing = pair[1].at - pair[0].at;
        assert!(
            spacing >= Duration::from_millis(800),
            "the pre-rollout hook was called twice {spacing:?} apart, answered {} then {}: \
             each attempt should come an analysis interval (1 s) after the last refusal",
            pair[0].answered,
            pair[1].answered
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_rollout_hook_holds_the_start_until_it_answers_2xx() {
    let rig = Rig::start(Stats::EnvoyAdmin).await;
    let hooks = HookServer::start().await;
    hooks.answer_script("/pre", &[503], 200);
    let api = rig.api();
    let name = "smoke-tested";
    let created = api
        .create_rollout(&spec(
            name,
            &[10, 50],
            quick_analysis(),
            gate_hooks(&hooks, "/pre"),
        ))
        .await;
    let started = wait_for(api, name, "started", Duration::from_secs(10), |v| {
        v.rollout.status.phase != Phase::Initialized
    })
    .await;
    let status = &started.rollout.status;
    assert_eq!(status.phase, Phase::Progressing, "{}", describe(&started));
    let calls = hooks.calls("/pre");
    for call in &calls {
        assert_payload(&call.body, "preRollout", name, "initialized", 0);
    }
    let answers: Vec<u16> = calls.iter().map(|c| c.answered).collect();
    assert_eq!(answers, vec![503, 200], "one refusal, then a pass");
    assert_retried_an_interval_apart(&calls);
    // Creating it ran the first attempt: the answer shows the refused gate holding the start.
    let created = &created.rollout.status;
    assert_eq!(
        (created.phase, created.canary_weight),
        (Phase::Initialized, 0),
        "{created:?}"
    );
    let messages: Vec<&str> = status.history.iter().map(|e| e.message.as_str()).collect();
    let failed = messages
        .iter()
        .position(|m| m.starts_with("pre-rollout hook failed (attempt 1)"));
    let passed = messages
        .iter()
        .position(|m| *m == "pre-rollout hooks passed");
    let first_step = messages.iter().position(|m| m.starts_with("step 1/2"));
    assert!(
        failed.is_some() && failed < passed && passed < first_step,
        "{}",
        describe(&started)
    );

    api.action(name, "abort").await;
    let aborted = hooks
        .wait_for_calls("/rollback", "called", Duration::from_secs(10), |c| {
            !c.is_empty()
        })
        .await;
    assert_payload(&aborted[0].body, "rollback", name, "aborted", 0);
    report(name, &api.rollout(name).await, rig.started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_rollout_hook_that_keeps_refusing_rolls_back_before_the_first_step() {
    let rig = Rig::start(Stats::EnvoyAdmin).await;
    let hooks = HookServer::start().await;
    hooks.answer("/pre", 503);
    let api = rig.api();
    let name = "refused";
    api.create_rollout(&spec(
        name,
        &[10, 50],
        quick_analysis(),
        gate_hooks(&hooks, "/pre"),
    ))
    .await;
    let end = wait_for(api, name, "finished", Duration::from_secs(10), done).await;
    let status = &end.rollout.status;
    assert_eq!(status.phase, Phase::RolledBack, "{}", describe(&end));
    assert!(
        status
            .message
            .contains("the pre-rollout hooks failed 2 times"),
        "{}",
        status.message
    );
    assert_eq!(highest_weight(&end), 0, "{}", describe(&end));
    let rolled_back = hooks
        .wait_for_calls("/rollback", "called", Duration::from_secs(10), |c| {
            !c.is_empty()
        })
        .await;
    assert_payload(&rolled_back[0].body, "rollback", name, "rolledBack", 0);
    let calls = hooks.calls("/pre");
    assert_eq!(calls.len(), 2, "one call per attempt, failureLimit 2");
    assert_retried_an_interval_apart(&calls);
    report(name, &end, rig.started);
}
