//! `make demo`: canary releases inside Envoy, on one machine.
//!
//! Starts on loopback demo upstreams playing `reviews` v1, v2 and v3, a real Envoy with the
//! meshcanary filter (fed through its ECDS file), the real `meshcanary serve`, and steady traffic
//! from many sticky users; then shows a QA rule reaching the canary at 0 %, a healthy v2 released
//! step by step with automated analysis and promoted, and a v3 with a bug rolled back by itself.
//! The scenarios live in `meshcanary_e2e::demo`, which `tests/tests/demo.rs` runs too.
//!
//! Environment (the Makefile passes it through):
//! - `SCENARIO`: `all` (default), `qa`, `rollout`, `rollback`, or a comma-separated list;
//! - `DEMO_EXIT=1`: fast settings, no waiting; exit 0 if every scenario showed what it should;
//! - `DEMO_API_PORT` (7070), `DEMO_ENVOY_PORT` (10000), `DEMO_ENVOY_ADMIN_PORT` (9901); 0 picks
//!   a free port.
//!
//! Without `DEMO_EXIT=1` everything keeps running until Ctrl-C, SIGTERM or SIGHUP. Either way the demo
//! stops every process it started before it exits.

use meshcanary_e2e::demo::{self, Console, Options};
use std::process::ExitCode;

/// Exit code when the environment is wrong.
const EXIT_USAGE: u8 = 2;
/// Exit code when interrupted before the scenarios were done in exit mode (128 + SIGINT).
const EXIT_INTERRUPTED: u8 = 130;

/// Resolves on Ctrl-C (SIGINT), SIGTERM, or SIGHUP (the terminal was closed).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let on = |kind: SignalKind| async move {
        match signal(kind) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = on(SignalKind::interrupt()) => {}
        () = on(SignalKind::terminate()) => {}
        () = on(SignalKind::hangup()) => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match Options::from_env() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("demo: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut console = Console::stdout();
    let outcome = match demo::run(&options, &mut console, shutdown_signal()).await {
        Ok(outcome) => outcome,
        Err(error) => {
            drop(console);
            eprintln!("demo: {error}");
            return ExitCode::FAILURE;
        }
    };
    drop(console);
    if outcome.success(&options) {
        return ExitCode::SUCCESS;
    }
    if outcome.interrupted && outcome.results.iter().all(|r| r.ok) {
        // Stopped before the scenarios were done: a failure only for an unattended run.
        return match options.exit {
            true => ExitCode::from(EXIT_INTERRUPTED),
            false => ExitCode::SUCCESS,
        };
    }
    for result in outcome.results.iter().filter(|r| !r.ok) {
        eprintln!(
            "demo: {} did not go as it should: {}",
            result.scenario.as_str(),
            result.summary
        );
    }
    ExitCode::FAILURE
}
