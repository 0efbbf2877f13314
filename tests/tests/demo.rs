//! `make demo`, unattended: the demo's scenarios (`meshcanary_e2e::demo`, which `examples/demo`
//! runs) on ephemeral ports with the fast settings of `DEMO_EXIT=1`. The QA header reaches v2 at
//! 0 %, a healthy v2 is promoted, a v3 failing one request in ten is rolled back by the analysis;
//! the output has no escape codes when it is not a terminal; and every process the demo started
//! is gone when it returns, also when it is stopped half-way.

use meshcanary_e2e::demo::{self, Console, Options, Outcome, Scenario};
use std::path::Path;
use std::time::{Duration, Instant};

/// Longer than any healthy run (about 20 s), so a hang fails instead of blocking `make test`.
const LIMIT: Duration = Duration::from_secs(90);

/// Runs the demo until `shutdown`, or fails the test with the transcript so far.
async fn run(
    options: &Options,
    shutdown: impl std::future::Future<Output = ()>,
) -> (Outcome, String) {
    let (mut console, transcript) = Console::transcript();
    let result = tokio::time::timeout(LIMIT, demo::run(options, &mut console, shutdown)).await;
    drop(console);
    let text = transcript.text();
    match result {
        Ok(Ok(outcome)) => (outcome, text),
        Ok(Err(error)) => panic!("the demo did not start: {error}\n{text}"),
        Err(_) => panic!("the demo did not finish within {LIMIT:?}:\n{text}"),
    }
}

/// Every process the demo started has been reaped.
fn assert_all_stopped(outcome: &Outcome, text: &str) {
    assert_eq!(
        outcome.processes.len(),
        2,
        "Envoy and the service: {outcome:?}"
    );
    for pid in &outcome.processes {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} is still there after the demo returned\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_promotes_the_healthy_canary_and_rolls_back_the_broken_one() {
    let options = Options::unattended(vec![Scenario::Qa, Scenario::Rollout, Scenario::Rollback]);
    let started = Instant::now();
    let (outcome, text) = run(&options, std::future::pending()).await;
    println!("{text}");
    assert!(outcome.success(&options), "{outcome:?}\n{text}");
    assert!(!outcome.interrupted);
    let scenarios: Vec<Scenario> = outcome.results.iter().map(|r| r.scenario).collect();
    assert_eq!(scenarios, options.scenarios);

    // What a person reads: the QA request decided by the rule, the promotion, and the rollback
    // with its reason.
    for expected in [
        "x-canary: always' http://127.0.0.1:",
        "    200 from v2 (x-meshcanary: v2; reason=rule)",
        "    200 from v1 (x-meshcanary: v1; reason=sticky)",
        "── 2. Release v2: mirror 20 % → 5 % → 20 % → 50 % → 100 % ──",
        "step 1/5: mirroring 20% of the route's requests to the canary",
        "check passed at 5%",
        "succeeded: v2 is the stable variant of route reviews",
        "traffic now: v1 0.0 %, v2 100.0 %",
        "check FAILED at 5%",
        "canary success rate",
        "is below the",
        "rolled back: 2 analysis checks failed (limit 2)",
        // At most a request in flight at the switch may still reach v3 (the outcome allows
        // 0.5 %).
        "traffic now: v2 ",
    ] {
        assert!(text.contains(expected), "{expected:?} is missing:\n{text}");
    }
    assert!(
        !text.contains('\x1b'),
        "escape codes in plain output:\n{text:?}"
    );
    assert!(
        outcome.results[2].summary.contains("never above 5%"),
        "the broken canary must not get past its first step: {outcome:?}"
    );
    assert_all_stopped(&outcome, &text);
    let elapsed = started.elapsed();
    println!("the unattended demo took {elapsed:?}");
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_half_way_the_demo_stops_everything_it_started() {
    let options = Options {
        exit: false,
        ..Options::unattended(vec![Scenario::Rollout])
    };
    // The interactive pace: after 4 s the rollout is still at its first steps.
    let (outcome, text) = run(&options, tokio::time::sleep(Duration::from_secs(4))).await;
    assert!(outcome.interrupted, "{outcome:?}\n{text}");
    assert!(!outcome.success(&options), "{outcome:?}");
    assert!(text.contains("interrupted"), "{text}");
    assert!(
        text.trim_end()
            .ends_with("stopping the traffic, meshcanary serve, Envoy and the upstreams"),
        "{text}"
    );
    assert_all_stopped(&outcome, &text);
}
