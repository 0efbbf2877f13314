//! The `meshcanary` CLI: rollouts and routes through the control service's HTTP API.

use clap::Subcommand;
use std::process::ExitCode;

/// CLI commands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {}

/// Runs a CLI command and returns the process exit code.
pub async fn run(command: ClientCommand) -> ExitCode {
    match command {}
}
