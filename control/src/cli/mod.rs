//! The `meshcanary` CLI: rollouts and routes through the control service's HTTP API.
//!
//! The command-line types live here, with [`run`], which executes a command and turns the outcome
//! into an exit code: 0 success, 1 the service refused or the request failed, 2 a usage error
//! (clap's own, or a file or URL given on the command line that is wrong), 3 the service could not
//! be reached. The parts: [`client`] speaks HTTP and words the errors, [`steps`], [`analysis`]
//! and [`rules`] parse what people type, [`render`] formats what they read, [`watch`] follows a
//! rollout.

pub mod analysis;
pub mod client;
pub mod crd;
pub mod qa_token;
pub mod render;
pub mod rules;
pub mod steps;
pub mod watch;

use crate::api::rollouts::{RolloutList, RolloutView};
use crate::api::routes::{RoutesView, RuleAdded};
use crate::rollout::action::RolloutAction;
use crate::rollout::{Progressive, RolloutSpec, Step, Weight};
use crate::time::{HumanDuration, Timestamp};
use clap::{Args, Subcommand, ValueEnum};
use client::{decode, ApiClient, CliError, Purpose, Subject, NO_BODY};
use meshcanary_core::config::RuleConfig;
use reqwest::Method;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// CLI commands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create, follow and steer rollouts.
    Rollout(RolloutArgs),
    /// Show the filter's routes and manage their QA rules.
    Route(RouteArgs),
    /// Mint a signed QA token for a route's signed rule (offline; the key from MESHCANARY_QA_KEY).
    QaToken(qa_token::QaTokenArgs),
    /// Print the MeshRollout CustomResourceDefinition as YAML (offline), for `kubectl apply -f -`.
    Crd(crd::CrdArgs),
}

/// How to reach the service and how to print; accepted after any client subcommand.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The control service's URL.
    #[arg(
        long,
        global = true,
        env = "MESHCANARY_SERVER",
        default_value = "http://127.0.0.1:7070",
        value_name = "URL",
        help_heading = "Connection"
    )]
    pub server: String,
    /// The bearer token that changes need (reads need it only if the service protects them).
    #[arg(
        long,
        global = true,
        env = "MESHCANARY_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        help_heading = "Connection"
    )]
    pub token: Option<String>,
    /// Read the token from this file instead (keeps it out of shell history and `ps`); takes
    /// precedence over --token.
    #[arg(
        long,
        global = true,
        env = "MESHCANARY_TOKEN_FILE",
        value_name = "PATH",
        help_heading = "Connection"
    )]
    pub token_file: Option<PathBuf>,
    /// Output format: `table` for people, `json` for the API's JSON as it is (pretty-printed).
    #[arg(
        short,
        long,
        global = true,
        value_enum,
        default_value_t = Output::Table,
        value_name = "FORMAT",
        help_heading = "Connection"
    )]
    pub output: Output,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables and sentences for people.
    Table,
    /// The API's JSON, pretty-printed.
    Json,
}

/// `meshcanary rollout …`.
#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// How to reach the service.
    #[command(flatten)]
    pub connection: Connection,
    /// What to do.
    #[command(subcommand)]
    pub command: RolloutCommand,
}

/// The compact step syntax, shown in `rollout create --help`.
const CREATE_HELP: &str = "\
Examples:
  meshcanary rollout create reviews-v2 --route reviews --stable v1 --canary v2 \\
      --steps '10%,pause,50%,pause 30s,100%'
  meshcanary rollout create reviews-v2 --route reviews --stable v1 --canary v2 --progressive 10,50,90s
  meshcanary rollout create reviews-v2 --route reviews --stable v1 --canary v2 --progressive 10,50,5m \\
      --min-success-rate 99.5 --max-latency 500ms --analysis-interval 1m
  meshcanary rollout create -f reviews-v2.json

Steps (--steps, comma-separated):
  N% or Nbp       set the canary's weight: 10%, 12.5%, 1000bp (basis points; 10000bp = 100%)
  pause           wait until `meshcanary rollout resume NAME`
  pause DURATION  wait that long: 500ms, 30s, 5m, 1h, 1h 30m
After the last step the canary is promoted to 100% and becomes the route's stable variant.

Analysis: any analysis flag turns automated analysis on; each setWeight step then moves on only after
a check passes at that weight. Unset values keep the API's defaults. The other analysis settings
(maxPValue, minBaselineRequests, inconclusiveLimit) and webhooks are set in a spec file (-f).";

/// Rollout subcommands.
#[allow(clippy::large_enum_variant)] // parsed once per process, like RouteCommand
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Create a rollout; the service starts it at once.
    #[command(after_help = CREATE_HELP)]
    Create(CreateArgs),
    /// List rollouts, newest first, finished ones included (as many as the service keeps).
    List(ListArgs),
    /// Show one rollout in detail: phase, canary weight, plan, history, propagation.
    Status(StatusArgs),
    /// Pause a rollout where it is.
    Pause(NameArg),
    /// Continue a paused rollout (after a `pause` step: go on to the next step).
    Resume(NameArg),
    /// Skip the remaining steps: give the canary 100 % now (with workloads, once its full size is
    /// ready).
    Promote(NameArg),
    /// Stop a rollout and send all traffic back to the stable variant at once.
    Abort(NameArg),
    /// Make a promoted canary the route's stable variant (rollouts created with --no-auto-finish).
    Finish(NameArg),
    /// Set the canary's weight by hand; the rollout pauses, and resume continues from its step.
    SetWeight(SetWeightArgs),
    /// Raise, lower or remove the batch partition (workloads.batchPartition) of a rollout with
    /// workload batches; a rollout it held goes on.
    Partition(PartitionArgs),
    /// Delete a finished rollout (abort a running one first).
    Delete(NameArg),
}

/// A rollout's name.
#[derive(Debug, Args)]
pub struct NameArg {
    /// The rollout's name (see `meshcanary rollout list`).
    pub name: String,
}

/// The steps of `--steps`, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct StepList(pub Vec<Step>);

fn parse_step_list(text: &str) -> Result<StepList, String> {
    steps::parse_steps(text).map(StepList)
}

/// `rollout create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The rollout's name: lowercase letters, digits and '-'. With --file it replaces the file's
    /// name, so one spec file serves several rollouts.
    #[arg(required_unless_present = "file")]
    pub name: Option<String>,
    /// The filter route to change (see `meshcanary route list`).
    #[arg(long, required_unless_present = "file", conflicts_with = "file")]
    pub route: Option<String>,
    /// The variant that has the traffic now.
    #[arg(
        long,
        value_name = "VARIANT",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    pub stable: Option<String>,
    /// The variant to roll out; added to the route at 0 % if it is not there yet.
    #[arg(
        long,
        value_name = "VARIANT",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    pub canary: Option<String>,
    /// The steps, comma-separated: `N%` or `Nbp` sets the canary weight, `pause` waits for
    /// resume, `pause DURATION` waits that long. E.g. '10%,pause,50%,pause 30s,100%'.
    #[arg(
        long,
        value_name = "STEPS",
        value_parser = parse_step_list,
        required_unless_present_any = ["progressive", "file"],
        conflicts_with_all = ["progressive", "file"]
    )]
    pub steps: Option<StepList>,
    /// Instead of --steps: add STEP% every INTERVAL up to MAX%, then promote. E.g. 10,50,90s.
    #[arg(
        long,
        value_name = "STEP%,MAX%,INTERVAL",
        value_parser = steps::parse_progressive,
        conflicts_with = "file"
    )]
    pub progressive: Option<Progressive>,
    /// Read the rollout spec from a JSON file (the API's RolloutSpec); `-` reads stdin.
    #[arg(short, long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Roll back if the rollout is still progressing after this long (time paused does not
    /// count). E.g. 1h.
    #[arg(long, value_name = "DURATION", value_parser = steps::parse_duration, conflicts_with = "file")]
    pub timeout: Option<HumanDuration>,
    /// After the last step, wait in phase `promoting` for `meshcanary rollout finish` instead of
    /// making the canary the stable variant at once.
    #[arg(long, conflicts_with = "file")]
    pub no_auto_finish: bool,
    /// How long a weight step waits for every proxy to run the new weight before the rollout
    /// pauses and says so (the service's default is 30s).
    #[arg(long, value_name = "DURATION", value_parser = steps::parse_duration, conflicts_with = "file")]
    pub propagation_timeout: Option<HumanDuration>,
    /// How long after the rollout ends the variant it leaves at 0 % stays on the route before it
    /// is retired (the service's default is 60s; 0s retires at once).
    #[arg(long, value_name = "DURATION", value_parser = steps::parse_duration, conflicts_with = "file")]
    pub retire_after: Option<HumanDuration>,
    /// Automated analysis.
    #[command(flatten)]
    pub analysis: analysis::AnalysisArgs,
}

/// `rollout list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Show at most this many (one page of the API) and, if there are more, how to see the next
    /// ones; without it every rollout is listed, read a page at a time.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub limit: Option<u16>,
    /// Start after the rollouts already shown: the token a list with --limit printed.
    #[arg(long = "continue", value_name = "TOKEN")]
    pub continue_token: Option<String>,
}

/// Rollouts read per request when `rollout list` reads them all.
const LIST_PAGE: &str = "100";

/// `rollout status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The rollout's name (see `meshcanary rollout list`).
    pub name: String,
    /// Keep showing the rollout as it moves, until it ends. Exits 0 if it succeeded, 1 if it
    /// was rolled back or aborted.
    #[arg(short, long)]
    pub watch: bool,
    /// How often --watch asks the service.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = steps::parse_duration, requires = "watch")]
    pub interval: HumanDuration,
}

/// `rollout set-weight`.
#[derive(Debug, Args)]
pub struct SetWeightArgs {
    /// The rollout's name (see `meshcanary rollout list`).
    pub name: String,
    /// The canary's new weight: a percentage (25%, 12.5%) or basis points (2500bp).
    #[arg(value_parser = steps::parse_weight)]
    pub weight: Weight,
}

/// `rollout partition`.
#[derive(Debug, Args)]
pub struct PartitionArgs {
    /// The rollout's name (see `meshcanary rollout list`).
    pub name: String,
    /// The last batch (0-based) the rollout may enter, or `none` to remove the partition.
    #[arg(value_parser = parse_partition)]
    pub partition: Partition,
}

/// A batch index, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition(pub Option<u32>);

fn parse_partition(text: &str) -> std::result::Result<Partition, String> {
    match text {
        "none" => Ok(Partition(None)),
        index => index
            .parse()
            .map(|index| Partition(Some(index)))
            .map_err(|_| format!("{index:?} is neither a batch index (0, 1, …) nor \"none\"")),
    }
}

/// `meshcanary route …`.
#[derive(Debug, Args)]
pub struct RouteArgs {
    /// How to reach the service.
    #[command(flatten)]
    pub connection: Connection,
    /// What to do.
    #[command(subcommand)]
    pub command: RouteCommand,
}

/// Route subcommands.
// Parsed once per process; boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// Show every route: hosts, variants with their weights, QA rules by number, and how far the
    /// config's generation has reached.
    List,
    /// Add or remove QA rules: requests that match a rule go to its variant whatever the weights.
    Rule(RuleArgs),
}

/// `route rule …`.
#[derive(Debug, Args)]
pub struct RuleArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: RuleCommand,
}

/// Rule subcommands.
#[allow(clippy::large_enum_variant)] // parsed once per process, like RouteCommand
#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Append a QA rule to a route (rules are tried in order; the first match wins).
    #[command(
        override_usage = "meshcanary route rule add <ROUTE> --variant <VARIANT> <MATCH FLAG>",
        after_help = "Examples:\n  meshcanary route rule add reviews --variant v2 --header x-canary=always\n  meshcanary route rule add reviews --variant v2 --cookie-prefix session=qa-"
    )]
    Add(AddRuleArgs),
    /// Remove a route's QA rule by its number in `meshcanary route list`.
    Remove(RemoveRuleArgs),
}

/// `route rule add`.
#[derive(Debug, Args)]
pub struct AddRuleArgs {
    /// The route (see `meshcanary route list`).
    pub route: String,
    /// The variant that matching requests go to.
    #[arg(long)]
    pub variant: String,
    /// What to match: exactly one of these.
    #[command(flatten)]
    pub matcher: rules::MatchArgs,
}

/// `route rule remove`.
#[derive(Debug, Args)]
pub struct RemoveRuleArgs {
    /// The route (see `meshcanary route list`).
    pub route: String,
    /// The rule's number, as `meshcanary route list` shows it (rules after it move up by one).
    pub index: usize,
}

/// Runs a CLI command and returns the process exit code.
pub async fn run(command: ClientCommand) -> ExitCode {
    match execute(command).await {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            // A closed pipe (`| head`) is the reader's choice, not an error worth a message.
            let closed_pipe =
                matches!(&error, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe);
            if !closed_pipe {
                // Nothing sensible is left to do if stderr is gone too.
                let _ = writeln!(std::io::stderr(), "{}", error.report());
            }
            ExitCode::from(error.exit_code())
        }
    }
}

/// What every command needs: the client and the output format.
pub struct Context {
    /// The API client.
    pub client: ApiClient,
    /// How to print.
    pub output: Output,
}

impl Context {
    fn new(connection: &Connection) -> Result<Context, CliError> {
        let token = resolve_token(
            connection.token.as_deref(),
            connection.token_file.as_deref(),
        )?;
        Ok(Context {
            client: ApiClient::new(&connection.server, token)?,
            output: connection.output,
        })
    }

    /// Prints `value` as JSON, or what `human` makes of it.
    fn emit(
        &self,
        value: &Value,
        human: impl FnOnce() -> Result<String, CliError>,
    ) -> Result<(), CliError> {
        match self.output {
            Output::Json => print(&pretty_json(value)?),
            Output::Table => print(&human()?),
        }
    }
}

/// The token to send: from `--token-file` if given, else `--token`; blank means none.
pub fn resolve_token(
    token: Option<&str>,
    token_file: Option<&Path>,
) -> Result<Option<String>, CliError> {
    let token = match token_file {
        Some(path) => std::fs::read_to_string(path).map_err(|error| {
            CliError::Usage(format!(
                "cannot read the token file {}: {error}",
                path.display()
            ))
        })?,
        None => token.unwrap_or_default().to_string(),
    };
    let token = token.trim();
    Ok((!token.is_empty()).then(|| token.to_string()))
}

/// Writes a line to stdout and flushes it, so `--watch` output shows up as it happens.
pub fn print(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    stdout.flush()?;
    Ok(())
}

/// The API's JSON, pretty-printed.
pub fn pretty_json(value: &Value) -> Result<String, CliError> {
    serde_json::to_string_pretty(value).map_err(|error| CliError::Failed {
        doing: "print the answer as JSON".into(),
        reason: error.to_string(),
    })
}

async fn execute(command: ClientCommand) -> Result<u8, CliError> {
    match command {
        ClientCommand::Rollout(args) => {
            let context = Context::new(&args.connection)?;
            rollout(&context, args.command).await
        }
        ClientCommand::Route(args) => {
            let context = Context::new(&args.connection)?;
            route(&context, args.command).await?;
            Ok(0)
        }
        ClientCommand::QaToken(args) => qa_token::run(&args),
        ClientCommand::Crd(args) => crd::run(&args),
    }
}

/// `rollout list`: one page with `--limit`, else every page in turn (`-o json` then prints them
/// as one list).
async fn list_rollouts(context: &Context, args: &ListArgs) -> Result<(), CliError> {
    let purpose = Purpose::new("list rollouts", Subject::Rollouts);
    let segments = ["v1", "rollouts"];
    if let Some(limit) = args.limit {
        let limit = limit.to_string();
        let mut query = vec![("limit", limit.as_str())];
        if let Some(token) = &args.continue_token {
            query.push(("continue", token));
        }
        let value = context
            .client
            .get_query(&segments, &query, &purpose)
            .await?;
        return context.emit(&value, || {
            let list: RolloutList = decode(value.clone(), &purpose)?;
            let mut text = render::rollout_list(&list.items, Timestamp::now());
            if let Some(next) = &list.next {
                text.push_str(&format!(
                    "\n{} rollouts in all. More: meshcanary rollout list --limit {limit} --continue {next}",
                    list.total
                ));
            }
            Ok(text)
        });
    }
    let mut items: Vec<Value> = Vec::new();
    let mut token = args.continue_token.clone();
    let mut total;
    loop {
        let mut query = vec![("limit", LIST_PAGE)];
        if let Some(token) = &token {
            query.push(("continue", token));
        }
        let value = context
            .client
            .get_query(&segments, &query, &purpose)
            .await?;
        total = value["total"].as_u64().unwrap_or_default();
        items.extend(value["items"].as_array().cloned().unwrap_or_default());
        match value["continue"].as_str() {
            // A service that hands back the token it was given would page forever.
            Some(next) if token.as_deref() == Some(next) => {
                return Err(CliError::Failed {
                    doing: purpose.doing,
                    reason: format!("the service returned the same page token twice ({next})"),
                })
            }
            Some(next) => token = Some(next.to_string()),
            None => break,
        }
    }
    let value = serde_json::json!({"items": items, "total": total});
    context.emit(&value, || {
        let list: RolloutList = decode(value.clone(), &purpose)?;
        Ok(render::rollout_list(&list.items, Timestamp::now()))
    })
}

async fn rollout(context: &Context, command: RolloutCommand) -> Result<u8, CliError> {
    let client = &context.client;
    match command {
        RolloutCommand::Create(args) => {
            let spec = create_spec(&args)?;
            let purpose = Purpose::new(format!("create rollout {}", spec.name), Subject::Rollouts);
            let value = client
                .send(Method::POST, &["v1", "rollouts"], Some(&spec), &purpose)
                .await?;
            context.emit(&value, || confirm("created", &value, &purpose))?;
        }
        RolloutCommand::List(args) => list_rollouts(context, &args).await?,
        RolloutCommand::Status(args) if args.watch => {
            return watch::watch(context, &args.name, args.interval.0).await;
        }
        RolloutCommand::Status(args) => {
            let purpose = Purpose::new(
                format!("show rollout {}", args.name),
                Subject::Rollout(args.name.clone()),
            );
            let value = client
                .get(&["v1", "rollouts", &args.name], &purpose)
                .await?;
            context.emit(&value, || {
                let view: RolloutView = decode(value.clone(), &purpose)?;
                Ok(render::status(&view, Timestamp::now()))
            })?;
        }
        RolloutCommand::Pause(args) => act(context, &args.name, RolloutAction::Pause).await?,
        RolloutCommand::Resume(args) => act(context, &args.name, RolloutAction::Resume).await?,
        RolloutCommand::Promote(args) => act(context, &args.name, RolloutAction::Promote).await?,
        RolloutCommand::Abort(args) => act(context, &args.name, RolloutAction::Abort).await?,
        RolloutCommand::Finish(args) => act(context, &args.name, RolloutAction::Finish).await?,
        RolloutCommand::SetWeight(args) => {
            let purpose = Purpose::new(
                format!("set the canary weight of rollout {}", args.name),
                Subject::Rollout(args.name.clone()),
            );
            let path = ["v1", "rollouts", &args.name, "weight"];
            let value = client
                .send(Method::PUT, &path, Some(&args.weight), &purpose)
                .await?;
            context.emit(&value, || confirm("weight set", &value, &purpose))?;
        }
        RolloutCommand::Partition(args) => {
            let purpose = Purpose::new(
                format!("set the batch partition of rollout {}", args.name),
                Subject::Rollout(args.name.clone()),
            );
            let path = ["v1", "rollouts", &args.name, "partition"];
            let body = crate::api::rollouts::PartitionBody {
                batch_partition: args.partition.0,
            };
            let value = client
                .send(Method::PUT, &path, Some(&body), &purpose)
                .await?;
            context.emit(&value, || confirm("partition set", &value, &purpose))?;
        }
        RolloutCommand::Delete(args) => {
            let purpose = Purpose::new(
                format!("delete rollout {}", args.name),
                Subject::Rollout(args.name.clone()),
            );
            client
                .send(
                    Method::DELETE,
                    &["v1", "rollouts", &args.name],
                    NO_BODY,
                    &purpose,
                )
                .await?;
            // The API answers 204 without a body; JSON output stays empty rather than invented.
            if context.output == Output::Table {
                print(&format!("rollout {} deleted", args.name))?;
            }
        }
    }
    Ok(0)
}

/// `POST /v1/rollouts/{name}/{action}`, confirmed with what the rollout now is.
async fn act(context: &Context, name: &str, action: RolloutAction) -> Result<(), CliError> {
    let purpose = Purpose::new(
        format!("{} rollout {name}", action.as_str()),
        Subject::Rollout(name.into()),
    );
    let value = context
        .client
        .send(
            Method::POST,
            &["v1", "rollouts", name, action.as_str()],
            NO_BODY,
            &purpose,
        )
        .await?;
    context.emit(&value, || confirm(action.done(), &value, &purpose))
}

/// The one-line confirmation of a rollout the API answered with.
fn confirm(verb: &str, value: &Value, purpose: &Purpose) -> Result<String, CliError> {
    let view: RolloutView = decode(value.clone(), purpose)?;
    Ok(render::confirmation(verb, &view))
}

async fn route(context: &Context, command: RouteCommand) -> Result<(), CliError> {
    let client = &context.client;
    match command {
        RouteCommand::List => {
            let purpose = Purpose::new("list routes", Subject::Routes);
            let value = client.get(&["v1", "routes"], &purpose).await?;
            context.emit(&value, || {
                let view: RoutesView = decode(value.clone(), &purpose)?;
                Ok(render::routes(&view))
            })
        }
        RouteCommand::Rule(RuleArgs {
            command: RuleCommand::Add(args),
        }) => {
            let Some((source, name, matcher)) = args.matcher.matcher() else {
                return Err(CliError::Usage(
                    "give one matcher: --header, --cookie, --query or one of their -prefix / -present forms".into(),
                ));
            };
            let rule = rules::rule(&args.variant, source, &name, matcher);
            let purpose = Purpose::new(
                format!("add a rule to route {}", args.route),
                Subject::Routes,
            );
            let path = ["v1", "routes", &args.route, "rules"];
            let value = client
                .send(Method::POST, &path, Some(&rule), &purpose)
                .await?;
            context.emit(&value, || {
                let added: RuleAdded = decode(value.clone(), &purpose)?;
                Ok(format!(
                    "rule {} added to route {}: {} (config generation {})",
                    added.index,
                    args.route,
                    render::describe_rule(&rule),
                    added.generation
                ))
            })
        }
        RouteCommand::Rule(RuleArgs {
            command: RuleCommand::Remove(args),
        }) => {
            let purpose = Purpose::new(
                format!("remove rule {} from route {}", args.index, args.route),
                Subject::Routes,
            );
            let index = args.index.to_string();
            let path = ["v1", "routes", &args.route, "rules", &index];
            let value = client
                .send(Method::DELETE, &path, NO_BODY, &purpose)
                .await?;
            context.emit(&value, || {
                let removed: RuleConfig = decode(value.clone(), &purpose)?;
                Ok(format!(
                    "rule {} removed from route {}: {}",
                    args.index,
                    args.route,
                    render::describe_rule(&removed)
                ))
            })
        }
    }
}

/// The spec `rollout create` sends: from the file, or from the flags.
fn create_spec(args: &CreateArgs) -> Result<RolloutSpec, CliError> {
    if let Some(path) = &args.file {
        let (label, bytes) = read_input(path)?;
        let mut spec = parse_spec(&label, &bytes).map_err(CliError::Usage)?;
        if let Some(name) = &args.name {
            spec.name = name.clone();
        }
        return Ok(spec);
    }
    spec_from_flags(args).map_err(CliError::Usage)
}

/// Builds a spec from the flags; clap has already made sure the required ones are there.
fn spec_from_flags(args: &CreateArgs) -> Result<RolloutSpec, String> {
    let required = |value: &Option<String>, flag: &str| {
        value
            .clone()
            .ok_or_else(|| format!("{flag} is required without --file"))
    };
    Ok(RolloutSpec {
        name: required(&args.name, "NAME")?,
        route: required(&args.route, "--route")?,
        stable: required(&args.stable, "--stable")?,
        canary: required(&args.canary, "--canary")?,
        steps: args.steps.clone().map(|s| s.0).unwrap_or_default(),
        progressive: args.progressive,
        timeout: args.timeout,
        auto_finish: !args.no_auto_finish,
        propagation_timeout: args.propagation_timeout,
        retire_after: args.retire_after,
        analysis: args.analysis.spec(),
        // Webhooks need a name, a type and a URL each, and often a timeout, retries and metadata:
        // more than a flag reads well, so they are left to spec files.
        webhooks: Vec::new(),
        // Likewise the Deployments behind the variants.
        workloads: None,
    })
}

fn read_input(path: &Path) -> Result<(String, Vec<u8>), CliError> {
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        std::io::stdin().read_to_end(&mut bytes).map_err(|error| {
            CliError::Usage(format!("cannot read the spec from stdin: {error}"))
        })?;
        return Ok(("stdin".into(), bytes));
    }
    let bytes = std::fs::read(path).map_err(|error| {
        CliError::Usage(format!(
            "cannot read the spec file {}: {error}",
            path.display()
        ))
    })?;
    Ok((path.display().to_string(), bytes))
}

/// Parses a rollout spec file; errors name the file and the field at fault.
pub fn parse_spec(label: &str, bytes: &[u8]) -> Result<RolloutSpec, String> {
    serde_json::from_slice(bytes).map_err(|error| {
        let field = meshcanary_core::json_path::path_at(bytes, error.line(), error.column());
        let at = if field.is_empty() {
            String::new()
        } else {
            format!(" at {field}")
        };
        format!("{label} is not a rollout spec{at}: {error} (the format is the API's RolloutSpec: name, route, stable, canary, steps or progressive, …)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    /// The top level as main.rs builds it.
    #[derive(Debug, Parser)]
    #[command(name = "meshcanary")]
    struct Cli {
        #[command(subcommand)]
        command: ClientCommand,
    }

    fn parse(args: &[&str]) -> Result<ClientCommand, clap::Error> {
        let mut argv = vec!["meshcanary"];
        argv.extend(args);
        let matches = Cli::command().try_get_matches_from(argv)?;
        Cli::from_arg_matches(&matches).map(|cli| cli.command)
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn create_builds_the_spec_from_flags() {
        let Ok(ClientCommand::Rollout(RolloutArgs {
            command: RolloutCommand::Create(args),
            connection,
        })) = parse(&[
            "rollout",
            "create",
            "reviews-v2",
            "--route",
            "reviews",
            "--stable",
            "v1",
            "--canary",
            "v2",
            "--steps",
            "10%,pause,100%",
            "--timeout",
            "1h",
            "--no-auto-finish",
            "--server",
            "http://h:1",
            "-o",
            "json",
        ])
        else {
            panic!("did not parse")
        };
        assert_eq!(
            (connection.server.as_str(), connection.output),
            ("http://h:1", Output::Json)
        );
        let spec = create_spec(&args).unwrap();
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            serde_json::json!({"name": "reviews-v2", "route": "reviews", "stable": "v1",
                "canary": "v2", "steps": [{"setWeight": {"percent": 10.0}}, {"pause": {}},
                {"setWeight": {"percent": 100.0}}], "timeout": "1h", "autoFinish": false})
        );
        assert!(spec.plan().is_ok());
    }

    #[test]
    fn analysis_flags_become_the_analysis_block() {
        use serde_json::json;
        let cases: [(&[&str], Value); 4] = [
            (&[], Value::Null),
            (
                &["--min-success-rate", "99.5"],
                json!({"interval": "30s", "minSuccessRate": 99.5, "latencyPercentile": 99.0,
                    "minRequests": 20, "compareWithStable": true, "maxPValue": 0.01,
                    "minBaselineRequests": 20, "failureLimit": 2, "inconclusiveLimit": 3}),
            ),
            (
                &[
                    "--max-latency",
                    "250ms",
                    "--latency-percentile",
                    "p99.9",
                    "--analysis-interval",
                    "1m",
                    "--min-requests",
                    "50",
                    "--failure-limit",
                    "3",
                    "--no-compare-with-stable",
                ],
                json!({"interval": "1m", "maxLatencyMs": 250.0, "latencyPercentile": 99.9,
                    "minRequests": 50, "compareWithStable": false, "maxPValue": 0.01,
                    "minBaselineRequests": 20, "failureLimit": 3, "inconclusiveLimit": 3}),
            ),
            (
                &["--min-success-rate", "99", "--max-latency", "1s"],
                json!({"interval": "30s", "minSuccessRate": 99.0, "maxLatencyMs": 1000.0,
                    "latencyPercentile": 99.0, "minRequests": 20, "compareWithStable": true,
                    "maxPValue": 0.01, "minBaselineRequests": 20, "failureLimit": 2,
                    "inconclusiveLimit": 3}),
            ),
        ];
        for (flags, expected) in cases {
            let mut argv = vec![
                "rollout",
                "create",
                "reviews-v2",
                "--route",
                "reviews",
                "--stable",
                "v1",
                "--canary",
                "v2",
                "--progressive",
                "10,50,1m",
            ];
            argv.extend(flags);
            let Ok(ClientCommand::Rollout(RolloutArgs {
                command: RolloutCommand::Create(args),
                ..
            })) = parse(&argv)
            else {
                panic!("{flags:?} did not parse")
            };
            let spec = create_spec(&args).unwrap();
            assert_eq!(
                serde_json::to_value(&spec).unwrap()["analysis"],
                expected,
                "{flags:?}"
            );
            // What the flags build, the service accepts.
            assert!(spec.plan().is_ok(), "{flags:?}");
        }
    }

    #[test]
    fn a_partition_is_an_index_or_none() {
        for (text, expected) in [("0", Some(0)), ("3", Some(3)), ("none", None)] {
            let Ok(ClientCommand::Rollout(RolloutArgs {
                command: RolloutCommand::Partition(args),
                ..
            })) = parse(&["rollout", "partition", "r", text])
            else {
                panic!("{text} did not parse")
            };
            assert_eq!(args.partition, Partition(expected), "{text}");
        }
    }

    #[test]
    fn connection_options_go_before_or_after_the_subcommand() {
        for args in [
            &["rollout", "--server", "http://h:1", "status", "r"][..],
            &["rollout", "status", "r", "--server", "http://h:1"][..],
        ] {
            let Ok(ClientCommand::Rollout(RolloutArgs {
                command: RolloutCommand::Status(status),
                connection,
            })) = parse(args)
            else {
                panic!("{args:?} did not parse")
            };
            assert_eq!(connection.server, "http://h:1", "{args:?}");
            // The default interval does not demand --watch; only an explicit one does.
            assert!(!status.watch);
            assert_eq!(status.interval.0, std::time::Duration::from_secs(1));
        }
    }

    #[test]
    fn usage_errors_are_caught_by_clap() {
        let cases: [(&[&str], &str); 11] = [
            (
                &[
                    "rollout", "create", "r", "--route", "x", "--stable", "a", "--canary", "b",
                ],
                "--steps",
            ),
            (
                &["rollout", "partition", "r", "first"],
                "\"first\" is neither a batch index (0, 1, …) nor \"none\"",
            ),
            (
                &[
                    "rollout",
                    "create",
                    "-f",
                    "x.json",
                    "--no-compare-with-stable",
                ],
                "'--file <PATH>' cannot be used with '--no-compare-with-stable'",
            ),
            (
                &[
                    "rollout", "create", "r", "--route", "x", "--stable", "a", "--canary", "b",
                    "--steps", "10%,soon",
                ],
                "item 2 \"soon\" is not a step",
            ),
            (
                &["rollout", "create", "-f", "x.json", "--route", "x"],
                "cannot be used with",
            ),
            (
                &["rollout", "set-weight", "r", "25"],
                "a weight needs a unit",
            ),
            (
                &["rollout", "status", "r", "--watch", "--interval", "0s"],
                "is zero",
            ),
            (
                &["route", "rule", "add", "reviews", "--variant", "v2"],
                "required",
            ),
            (
                &[
                    "route",
                    "rule",
                    "add",
                    "reviews",
                    "--variant",
                    "v2",
                    "--header",
                    "a=b",
                    "--cookie",
                    "c=d",
                ],
                "cannot be used with",
            ),
            (&["rollout", "list", "-o", "yaml"], "invalid value 'yaml'"),
            (
                &["rollout", "status", "r", "--interval", "2s"],
                "required arguments were not provided",
            ),
        ];
        // And bad flags on an otherwise complete `rollout create`.
        let create = [
            "rollout", "create", "r", "--route", "x", "--stable", "a", "--canary", "b", "--steps",
            "10%",
        ];
        let create_cases: [(&[&str], &str); 5] = [
            (&["--min-success-rate", "120"], "invalid value '120' for '--min-success-rate <PERCENT>': 120 is not a percentage between 0 and 100"),
            (&["--max-latency", "500"], "invalid value '500' for '--max-latency <DURATION>': a latency needs a unit: write 500ms"),
            (&["--analysis-interval", "10ms"], "invalid value '10ms' for '--analysis-interval <DURATION>': must be at least 100ms"),
            (&["--min-requests", "many"], "invalid value 'many' for '--min-requests <N>'"),
            (&["--progressive", "10,50,1m"], "cannot be used with"),
        ];
        let create_cases =
            create_cases.map(|(flags, expected)| ([&create[..], flags].concat(), expected));
        let all = cases
            .map(|(args, expected)| (args.to_vec(), expected))
            .into_iter()
            .chain(create_cases);
        for (args, expected) in all {
            let error = parse(&args).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{args:?}");
            let text = error.to_string();
            assert!(text.contains(expected), "{args:?}: {text}");
        }
    }

    #[test]
    fn a_file_spec_may_be_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.json");
        std::fs::write(
            &path,
            r#"{"name": "a", "route": "reviews", "stable": "v1", "canary": "v2", "progressive": {"stepWeight": 10, "maxWeight": 50, "interval": "1m"}}"#,
        )
        .unwrap();
        let path_text = path.display().to_string();
        for (args, name) in [
            (vec!["rollout", "create", "-f", &path_text], "a"),
            (vec!["rollout", "create", "b", "-f", &path_text], "b"),
        ] {
            let Ok(ClientCommand::Rollout(RolloutArgs {
                command: RolloutCommand::Create(args),
                ..
            })) = parse(&args)
            else {
                panic!("did not parse")
            };
            assert_eq!(create_spec(&args).unwrap().name, name);
        }
    }

    #[test]
    fn spec_file_errors_name_the_file_and_field() {
        let cases: [(&str, &str); 3] = [
            (
                r#"{"name": "a", "route": "r", "stable": "v1", "canary": "v2", "stpes": []}"#,
                "spec.json is not a rollout spec",
            ),
            (
                r#"{"name": "a", "route": "r", "stable": "v1", "canary": "v2", "steps": [{"pause": {"duration": "soon"}}]}"#,
                "at steps[0].pause: \"soon\" is not a duration",
            ),
            (
                "not json",
                "spec.json is not a rollout spec: expected ident",
            ),
        ];
        for (text, expected) in cases {
            let error = parse_spec("spec.json", text.as_bytes()).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn tokens_come_from_the_file_first() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  from-file-token\n").unwrap();
        let missing = dir.path().join("missing");
        let cases = [
            (
                Some("flag"),
                Some(file.as_path()),
                Ok(Some("from-file-token")),
            ),
            (Some(" flag "), None, Ok(Some("flag"))),
            (Some(""), None, Ok(None)),
            (None, None, Ok(None)),
            (
                Some("flag"),
                Some(missing.as_path()),
                Err("cannot read the token file"),
            ),
        ];
        for (token, path, expected) in cases {
            match (resolve_token(token, path), expected) {
                (Ok(got), Ok(expected)) => assert_eq!(got.as_deref(), expected, "{token:?}"),
                (Err(error), Err(part)) => {
                    assert_eq!(error.exit_code(), client::EXIT_USAGE);
                    assert!(error.to_string().contains(part), "{error}");
                }
                (got, expected) => panic!("{token:?}: got {got:?}, expected {expected:?}"),
            }
        }
    }
}
