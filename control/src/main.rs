//! The `meshcanary` binary: `meshcanary serve` runs the control service; every other command is
//! the CLI, talking to a running service over its HTTP API.

use clap::{Parser, Subcommand};
use meshcanary_control::cli;
use meshcanary_control::error::with_causes;
use meshcanary_control::server::{self, ServeArgs};
use std::process::ExitCode;

/// Canary releases inside the mesh's proxies.
#[derive(Debug, Parser)]
#[command(name = "meshcanary", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process; boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control service.
    Serve {
        #[command(flatten)]
        args: ServeArgs,
        /// Log format: text or json.
        #[arg(long, env = "MESHCANARY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
    },
    /// CLI commands against a running service.
    #[command(flatten)]
    Client(cli::ClientCommand),
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        "json" => builder.json().init(),
        _ => builder.init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { args, log_format } => {
            init_logging(&log_format);
            // One line, each cause once: the errors' messages already carry most of their causes,
            // which anyhow's "Caused by:" would list again.
            server::serve(args)
                .await
                .map_err(|error| anyhow::anyhow!(with_causes(&error)))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Client(command) => Ok(cli::run(command).await),
    }
}
