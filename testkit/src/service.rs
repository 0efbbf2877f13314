//! The control service, `meshcanary serve`, as a child process: started with its arguments and
//! exactly the environment it is given (nothing inherited from the machine: no proxy settings, no
//! `MESHCANARY_*` from a developer's shell, no backtrace switches), and ready once its readiness
//! probe answers 200. Its log is appended to, so a restarted service continues the same story.
//!
//! [`Standalone`] is the service of the end-to-end tests, the CLI tests, the demo and the
//! benchmark: it pushes to an ECDS file and reads the proxies' stats from an Envoy admin endpoint
//! or a Prometheus server. [`crate::pod`] builds the command of a pod of the shipped Deployment.

use crate::error::{Error, Result};
use crate::process::Process;
use meshcanary_core::config::FilterConfig;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

/// How long a service may take to answer its readiness probe.
pub const READY_WITHIN: Duration = Duration::from_secs(30);

/// The service's probe that says it takes writes: its state is loaded, it leads, its first push
/// is done.
pub const READYZ: &str = "/readyz";
/// The service's probe that says it runs; a replica that does not lead is never ready.
pub const HEALTHZ: &str = "/healthz";

/// A `meshcanary serve` command line and everything around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeCommand {
    /// The `meshcanary` binary.
    pub binary: PathBuf,
    /// The arguments, `serve` first; `--listen` must be among them.
    pub args: Vec<String>,
    /// Its whole environment.
    pub env: BTreeMap<String, String>,
    /// Its working directory.
    pub dir: PathBuf,
    /// The file its output is appended to.
    pub log: PathBuf,
    /// Its name in messages (a pod's name).
    pub name: String,
    /// The path that answers 200 once it is started: [`READYZ`] or [`HEALTHZ`].
    pub ready_path: &'static str,
}

/// The value of `--name=value` (or `--name value`) in `argv`, if given.
pub fn flag<'a>(argv: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("{name}=");
    argv.iter().enumerate().find_map(|(i, word)| {
        if let Some(value) = word.strip_prefix(&prefix) {
            Some(value)
        } else if word == name {
            argv.get(i + 1).map(String::as_str)
        } else {
            None
        }
    })
}

/// Where the service reads the proxies' stats from (propagation and analysis).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatsSource {
    /// `--envoy-admin <url>`: scrape an Envoy admin endpoint directly.
    EnvoyAdmin(String),
    /// `--prometheus-url <url>`: query a Prometheus server that scrapes the proxies.
    Prometheus(String),
}

/// A standalone service: the filter config pushed to an ECDS file.
#[derive(Debug, Clone)]
pub struct Standalone {
    /// The `meshcanary` binary.
    pub binary: PathBuf,
    /// Its directory: `routes.json` (its initial config), `state/` and `service.log`.
    pub dir: PathBuf,
    /// The filter config it starts from (`--routes`).
    pub routes: FilterConfig,
    /// The ECDS file it pushes to (`--ecds-file`).
    pub ecds_file: PathBuf,
    /// The filter module the ECDS file delivers (`--wasm`).
    pub wasm: PathBuf,
    /// Where it reads the proxies' stats; `None`: nowhere, so a push counts as applied once
    /// written.
    pub stats: Option<StatsSource>,
    /// The bearer token writes need (`MESHCANARY_TOKEN`).
    pub token: String,
    /// The API's loopback port; 0: a free one.
    pub port: u16,
    /// More `serve` flags after these (`--max-connections`, `--retain-finished`, …).
    pub extra_args: Vec<String>,
}

impl Standalone {
    /// The command that serves on `port`.
    pub fn command(&self, port: u16) -> ServeCommand {
        let path = |path: &Path| path.display().to_string();
        let mut args = vec![
            "serve".to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--state-dir".into(),
            path(&self.state_dir()),
            "--routes".into(),
            path(&self.routes_path()),
            "--ecds-file".into(),
            path(&self.ecds_file),
            "--wasm".into(),
            path(&self.wasm),
        ];
        match &self.stats {
            Some(StatsSource::EnvoyAdmin(url)) => {
                args.extend(["--envoy-admin".into(), url.clone()])
            }
            Some(StatsSource::Prometheus(url)) => {
                args.extend(["--prometheus-url".into(), url.clone()])
            }
            None => {}
        }
        args.extend(self.extra_args.iter().cloned());
        ServeCommand {
            binary: self.binary.clone(),
            args,
            env: BTreeMap::from([
                ("MESHCANARY_TOKEN".to_string(), self.token.clone()),
                ("RUST_LOG".to_string(), "info".to_string()),
            ]),
            dir: self.dir.clone(),
            log: self.dir.join("service.log"),
            name: "meshcanary serve".into(),
            ready_path: READYZ,
        }
    }

    /// Its state directory (`--state-dir`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn routes_path(&self) -> PathBuf {
        self.dir.join("routes.json")
    }

    /// Writes its initial config, starts it and waits until it is ready. With port 0, a start
    /// that fails at once (its port taken in the meantime) is tried again on another port.
    pub async fn start(&self) -> Result<ServiceProcess> {
        let routes = self.routes_path();
        std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&routes, self.routes.to_json()))
            .map_err(|error| Error::failed(format!("write {}", routes.display()), error))?;
        match self.port {
            0 => {
                crate::on_free_port(async |port| ServiceProcess::start(self.command(port)).await)
                    .await
            }
            port => ServiceProcess::start(self.command(port)).await,
        }
    }
}

/// A running `meshcanary serve`; dropping it kills the process (and prints its log if a test is
/// failing).
pub struct ServiceProcess {
    process: Process,
    command: ServeCommand,
    /// Its name (a pod's name).
    pub name: String,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    http: reqwest::Client,
}

impl ServiceProcess {
    /// Starts `command` in a clean environment: `command.env` and nothing else.
    pub fn spawn(command: ServeCommand) -> Result<ServiceProcess> {
        let listen = flag(&command.args, "--listen")
            .ok_or_else(|| Error::failed(&command.name, "the command sets no --listen"))?;
        let url = format!("http://{listen}");
        let process = ServiceProcess::launch(&command)?;
        Ok(ServiceProcess {
            process,
            name: command.name.clone(),
            url,
            http: crate::http_client(Duration::from_secs(10)),
            command,
        })
    }

    fn launch(command: &ServeCommand) -> Result<Process> {
        let mut child = Command::new(&command.binary);
        child
            .args(&command.args)
            .env_clear()
            .envs(&command.env)
            .current_dir(&command.dir);
        let what = format!("{} ({})", command.name, command.binary.display());
        Process::spawn_logged(&mut child, &what, &command.log)
    }

    /// [`ServiceProcess::spawn`], then [`ServiceProcess::wait_ready`] for [`READY_WITHIN`].
    pub async fn start(command: ServeCommand) -> Result<ServiceProcess> {
        let service = ServiceProcess::spawn(command)?;
        service.wait_ready(READY_WITHIN).await?;
        Ok(service)
    }

    /// Waits until its readiness probe answers 200; an error (with the end of its log) if the
    /// process exits first or `within` passes.
    pub async fn wait_ready(&self, within: Duration) -> Result<()> {
        let path = self.command.ready_path;
        self.process
            .wait_ready(within, async || match self.get(path).await {
                Some((200, _)) => Ok(()),
                Some((status, body)) => Err(format!("{path}: {status} {body}")),
                None => Err(format!("{path}: no answer")),
            })
            .await
    }

    /// Kills it (SIGKILL: no shutdown code runs), starts it again with the same command (its
    /// state directory, its port) and waits until it is ready.
    pub async fn restart(&mut self) -> Result<()> {
        let status = self.kill()?;
        self.note(&format!(
            "killed with SIGKILL ({status}); restarting on the same state"
        ));
        self.process = ServiceProcess::launch(&self.command)?;
        self.wait_ready(READY_WITHIN).await
    }

    /// A plain `GET path`: `(status, body)`, `None` if nothing answers.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    /// The command it runs.
    pub fn command(&self) -> &ServeCommand {
        &self.command
    }

    /// Replaces its arguments (`serve` first, `--listen` kept) from the next restart on.
    pub fn set_args(&mut self, args: Vec<String>) {
        self.command.args = args;
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Everything it logged so far, across restarts.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.command.log
    }

    /// A line from whoever runs it, in its log, so that the log reads as one story.
    pub fn note(&self, line: &str) {
        if let Ok(mut log) = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.command.log)
        {
            let _ = writeln!(log, "=== harness: {line}");
        }
    }

    /// Its exit status, if it has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.process.try_wait().ok().flatten()
    }

    /// SIGTERM, as Kubernetes stops a pod; waits at most `within` for the exit.
    pub fn terminate(&self, within: Duration) -> Result<ExitStatus> {
        self.process.terminate(within)
    }

    /// SIGKILL: gone without a word (a lost node, an OOM kill).
    pub fn kill(&self) -> Result<ExitStatus> {
        self.process.kill()
    }

    /// Waits at most `within` for it to exit by itself.
    pub fn wait_exit(&self, within: Duration) -> Result<ExitStatus> {
        self.process.wait(within)
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- log of {} ({}) -----\n{}",
                self.name,
                self.command.log.display(),
                self.log()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standalone(stats: Option<StatsSource>) -> Standalone {
        Standalone {
            binary: "/bin/meshcanary".into(),
            dir: "/d".into(),
            routes: FilterConfig::default(),
            ecds_file: "/e.json".into(),
            wasm: "/m.wasm".into(),
            stats,
            token: "t0k".into(),
            port: 0,
            extra_args: Vec::new(),
        }
    }

    #[test]
    fn a_standalone_command_passes_everything_as_flags() {
        let cases = [
            (None, vec![]),
            (
                Some(StatsSource::EnvoyAdmin("http://a".into())),
                vec!["--envoy-admin", "http://a"],
            ),
            (
                Some(StatsSource::Prometheus("http://p".into())),
                vec!["--prometheus-url", "http://p"],
            ),
        ];
        for (stats, tail) in cases {
            let command = standalone(stats).command(4242);
            let mut want = vec![
                "serve",
                "--listen",
                "127.0.0.1:4242",
                "--state-dir",
                "/d/state",
                "--routes",
                "/d/routes.json",
                "--ecds-file",
                "/e.json",
                "--wasm",
                "/m.wasm",
            ];
            want.extend(tail);
            assert_eq!(command.args, want);
            // Exactly this environment: the token and the log level.
            let env: Vec<(&str, &str)> = command
                .env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!(env, [("MESHCANARY_TOKEN", "t0k"), ("RUST_LOG", "info")]);
            assert_eq!(command.log, Path::new("/d/service.log"));
            assert_eq!(command.ready_path, READYZ);
        }
    }

    #[test]
    fn flags_are_found_in_both_spellings() {
        let argv: Vec<String> = ["serve", "--listen=127.0.0.1:1", "--id", "a", "--last"]
            .map(String::from)
            .to_vec();
        let cases = [
            ("--listen", Some("127.0.0.1:1")),
            ("--id", Some("a")),
            ("--last", None),
            ("--other", None),
        ];
        for (name, want) in cases {
            assert_eq!(flag(&argv, name), want, "{name}");
        }
    }

    #[tokio::test]
    async fn the_service_sees_only_the_environment_it_is_given() {
        // `sh` stands in for the service: it writes its environment and serves nothing.
        // The test process's own environment (PATH, HOME, cargo's variables) must not show.
        let dir = tempfile::tempdir().unwrap();
        let command = ServeCommand {
            binary: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "env; exit 3".into(),
                "--listen".into(),
                "127.0.0.1:1".into(),
            ],
            env: BTreeMap::from([("ONLY".to_string(), "this".to_string())]),
            dir: dir.path().to_path_buf(),
            log: dir.path().join("s.log"),
            name: "stand-in".into(),
            ready_path: READYZ,
        };
        let error = ServiceProcess::start(command).await.err().unwrap();
        let message = error.to_string();
        assert!(
            message.starts_with("stand-in (/bin/sh) exited with exit status: 3"),
            "{message}"
        );
        let log = std::fs::read_to_string(dir.path().join("s.log")).unwrap();
        let names: Vec<&str> = log
            .lines()
            .filter_map(|line| line.split_once('=').map(|(name, _)| name))
            .filter(|name| !["PWD", "SHLVL", "_"].contains(name))
            .collect();
        assert_eq!(names, ["ONLY"], "{log}");
    }
}
