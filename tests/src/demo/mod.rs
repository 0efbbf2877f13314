//! The scenarios of `make demo` (`examples/demo` runs them, `tests/tests/demo.rs` checks them).
//!
//! On loopback: demo upstreams playing `reviews` v1, v2 and v3 (their error rate and latency can
//! be set while they run), a real Envoy with the filter fed through the ECDS file, the real
//! `meshcanary serve` watching Envoy's admin endpoint, and steady traffic from many users with
//! sticky `x-user-id`s. Then, as chosen:
//!
//! - [`Scenario::Qa`]: a QA rule added with the CLI sends requests carrying `x-canary: always` to
//!   v2 while its weight is 0;
//! - [`Scenario::Rollout`]: v2 is released through 5, 20, 50 and 100 % with automated analysis,
//!   shown live, and promoted to stable;
//! - [`Scenario::Rollback`]: a v3 that answers one request in ten with a 500 is released next and
//!   rolled back by the analysis, which says why.
//!
//! Afterwards the demo either exits with the outcome ([`Options::exit`]) or keeps everything
//! running for a person to try, following any rollout they start, until Ctrl-C.

mod console;
mod knobs;
mod release;
mod rig;
mod service;
mod view;

pub use console::{Console, Transcript};

use release::Release;
use rig::Rig;
use std::future::Future;
use std::time::{Duration, Instant};

/// One part of the demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// A QA header reaches the canary while its weight is 0.
    Qa,
    /// A healthy canary (v2) is promoted step by step.
    Rollout,
    /// A broken canary (v3, 10 % errors) is rolled back.
    Rollback,
}

impl Scenario {
    /// The name `SCENARIO=` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Qa => "qa",
            Scenario::Rollout => "rollout",
            Scenario::Rollback => "rollback",
        }
    }
}

/// Parses `SCENARIO`: `all` (or nothing), or a comma-separated list of `qa`, `rollout`,
/// `rollback`, run in the order given.
pub fn parse_scenarios(text: &str) -> Result<Vec<Scenario>, String> {
    let text = text.trim();
    if text.is_empty() || text == "all" {
        return Ok(vec![Scenario::Qa, Scenario::Rollout, Scenario::Rollback]);
    }
    text.split(',')
        .map(|name| match name.trim() {
            "qa" => Ok(Scenario::Qa),
            "rollout" => Ok(Scenario::Rollout),
            "rollback" => Ok(Scenario::Rollback),
            other => Err(format!(
                "SCENARIO={other:?} is not a scenario: use all, qa, rollout or rollback (or a comma-separated list)"
            )),
        })
        .collect()
}

/// What to run, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The scenarios, in order.
    pub scenarios: Vec<Scenario>,
    /// Run with fast settings and return when the scenarios are done, instead of staying up.
    pub exit: bool,
    /// Port of the control service's API (0: any free port).
    pub api_port: u16,
    /// Port of Envoy's listener (0: any free port).
    pub envoy_port: u16,
    /// Port of Envoy's admin interface (0: any free port).
    pub admin_port: u16,
}

impl Options {
    /// Everything with ephemeral ports, unattended: what the test runs.
    pub fn unattended(scenarios: Vec<Scenario>) -> Options {
        Options {
            scenarios,
            exit: true,
            api_port: 0,
            envoy_port: 0,
            admin_port: 0,
        }
    }

    /// From the environment `make demo` passes: `SCENARIO`, `DEMO_EXIT`, `DEMO_API_PORT`
    /// (default 7070, the CLI's default server), `DEMO_ENVOY_PORT` (10000) and
    /// `DEMO_ENVOY_ADMIN_PORT` (9901).
    pub fn from_env() -> Result<Options, String> {
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        let port = |name: &str, default: u16| {
            let text = var(name);
            match text.trim() {
                "" => Ok(default),
                text => text.parse::<u16>().map_err(|_| {
                    format!("{name}={text:?} is not a port number (0 to 65535; 0 picks a free one)")
                }),
            }
        };
        let exit = match var("DEMO_EXIT").trim() {
            "" | "0" | "false" | "no" => false,
            "1" | "true" | "yes" => true,
            other => {
                return Err(format!(
                    "DEMO_EXIT={other:?}: use 1 to run unattended and exit, 0 to stay up"
                ))
            }
        };
        Ok(Options {
            scenarios: parse_scenarios(&var("SCENARIO"))?,
            exit,
            api_port: port("DEMO_API_PORT", 7070)?,
            envoy_port: port("DEMO_ENVOY_PORT", 10000)?,
            admin_port: port("DEMO_ENVOY_ADMIN_PORT", 9901)?,
        })
    }
}

/// How fast things go: slow enough to watch, or as fast as the analysis allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Requests per second of the background traffic.
    pub rate: u32,
    /// Distinct users in it.
    pub users: u64,
    /// The analysis window.
    pub interval: Duration,
    /// The longest a release may take before the demo gives up on it.
    pub release_deadline: Duration,
    /// A breath between scenarios, for the reader.
    pub breather: Duration,
}

impl Pace {
    /// The pace for `exit` mode or for people.
    pub fn new(exit: bool) -> Pace {
        if exit {
            // 2 s windows at 400 requests/s: 40 canary requests at 5 %, twice `minRequests`.
            Pace {
                rate: 400,
                users: 2000,
                interval: Duration::from_secs(2),
                release_deadline: Duration::from_secs(40),
                breather: Duration::ZERO,
            }
        } else {
            Pace {
                rate: 200,
                users: 2000,
                interval: Duration::from_secs(5),
                release_deadline: Duration::from_secs(300),
                breather: Duration::from_secs(2),
            }
        }
    }
}

/// How one scenario ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioResult {
    /// Which.
    pub scenario: Scenario,
    /// Whether it showed what it should.
    pub ok: bool,
    /// One sentence saying what happened.
    pub summary: String,
}

/// How the demo ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The scenarios that ran, in order.
    pub results: Vec<ScenarioResult>,
    /// Whether Ctrl-C or SIGTERM stopped it.
    pub interrupted: bool,
    /// Ids of the processes it started (Envoy, `meshcanary serve`); all stopped and reaped when
    /// [`run`] returns.
    pub processes: Vec<u32>,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Outcome {
    /// Every chosen scenario ran and showed what it should (a Ctrl-C afterwards, while the demo
    /// stayed up, changes nothing).
    pub fn success(&self, options: &Options) -> bool {
        self.results.len() == options.scenarios.len() && self.results.iter().all(|r| r.ok)
    }
}

/// Runs the demo: starts everything, plays `options.scenarios`, then returns (in exit mode) or
/// stays up until `shutdown` completes. Everything it started is stopped before it returns,
/// also when `shutdown` comes early. `Err` if something could not start.
pub async fn run(
    options: &Options,
    console: &mut Console,
    shutdown: impl Future<Output = ()>,
) -> Result<Outcome, String> {
    let started = Instant::now();
    let pace = Pace::new(options.exit);
    let mut outcome = Outcome::default();
    tokio::pin!(shutdown);

    let p = console.paint();
    console.line(p.bold("meshcanary demo: canary releases inside Envoy"));
    console.blank();
    let rig = tokio::select! {
        rig = Rig::start(options, pace, console) => rig?,
        () = &mut shutdown => {
            console.line("interrupted while starting; stopping what was started");
            outcome.interrupted = true;
            outcome.elapsed = started.elapsed();
            return Ok(outcome);
        }
    };
    outcome.processes = rig.pids();

    let scripted = play(&rig, options, pace, console, &mut outcome.results);
    outcome.interrupted = tokio::select! {
        () = scripted => false,
        () = &mut shutdown => true,
    };
    console.clear_panel();
    if outcome.interrupted {
        console.blank();
        console.line("interrupted");
    } else {
        summarize(console, &outcome.results);
        if !options.exit {
            let next = release::next_release(&rig).await;
            rig.show_urls(console, next);
            outcome.interrupted = tokio::select! {
                () = release::follow_any(&rig, console) => false,
                () = &mut shutdown => true,
            };
            console.clear_panel();
            console.blank();
        }
    }
    console.line(p.dim("stopping the traffic, meshcanary serve, Envoy and the upstreams"));
    drop(rig);
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}

/// Plays the scenarios in order, pushing each result.
async fn play(
    rig: &Rig,
    options: &Options,
    pace: Pace,
    console: &mut Console,
    results: &mut Vec<ScenarioResult>,
) {
    for (index, scenario) in options.scenarios.iter().enumerate() {
        if index > 0 {
            tokio::time::sleep(pace.breather).await;
        }
        console.blank();
        let number = index + 1;
        let result = match scenario {
            Scenario::Qa => release::qa(rig, console, number).await,
            Scenario::Rollout => {
                let stable = rig.stable_variant().await;
                let release = Release::healthy(&stable, pace);
                release::release(rig, console, number, &release).await
            }
            Scenario::Rollback => {
                let stable = rig.stable_variant().await;
                let release = Release::broken(&stable, pace);
                release::release(rig, console, number, &release).await
            }
        };
        results.push(ScenarioResult {
            scenario: *scenario,
            ok: result.is_ok(),
            summary: result.unwrap_or_else(|error| error),
        });
    }
}

fn summarize(console: &mut Console, results: &[ScenarioResult]) {
    let p = console.paint();
    console.blank();
    console.line(p.bold("Outcome"));
    for result in results {
        let mark = if result.ok {
            p.green("✓")
        } else {
            p.red("✗")
        };
        let first = format!("  {mark} {:<8}  ", result.scenario.as_str());
        console.para(&first, &" ".repeat(14), &result.summary);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_parse_from_the_environment_text() {
        let all = vec![Scenario::Qa, Scenario::Rollout, Scenario::Rollback];
        let cases: [(&str, Result<Vec<Scenario>, &str>); 6] = [
            ("", Ok(all.clone())),
            ("all", Ok(all)),
            ("rollback", Ok(vec![Scenario::Rollback])),
            (" qa, rollout ", Ok(vec![Scenario::Qa, Scenario::Rollout])),
            ("canary", Err("\"canary\" is not a scenario")),
            ("qa,", Err("\"\" is not a scenario")),
        ];
        for (text, expected) in cases {
            match (parse_scenarios(text), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{text:?}"),
                (Err(error), Err(part)) => assert!(error.contains(part), "{text:?}: {error}"),
                (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
