//! A real Envoy on ephemeral loopback ports: started on any bootstrap (the benchmark's
//! configurations), or on `envoy-config/standalone.yaml` with the filter and its config delivered
//! through an ECDS file (the end-to-end tests, the demo, the benchmark's control service). It is
//! ready once its listener is bound; it stops when dropped, and with the program on Ctrl-C (see
//! [`crate::process`]).

use crate::ecds::EcdsFile;
use crate::error::{Error, Result};
use crate::paths;
use crate::process::Process;
use meshcanary_core::config::FilterConfig;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The standalone bootstrap, with `${NAME}` placeholders (see the file's header).
pub const STANDALONE_TEMPLATE: &str = include_str!("../../envoy-config/standalone.yaml");

/// How Envoy is run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The Envoy binary.
    pub bin: PathBuf,
    /// Worker threads (`--concurrency`).
    pub concurrency: u32,
    /// Log level (`-l`).
    pub log_level: &'static str,
    /// A program and its arguments to run Envoy under (valgrind's, say; empty: Envoy itself).
    /// The wrapper must run Envoy in its own process, as valgrind does, so that [`Envoy::pid`]
    /// is Envoy's.
    pub wrapper: Vec<OsString>,
    /// How long the listener may take to come up.
    pub ready_within: Duration,
}

impl Options {
    /// The tests' settings for `bin`: two workers, info logs, 60 s to start.
    pub fn with_bin(bin: PathBuf) -> Options {
        Options {
            bin,
            concurrency: 2,
            log_level: "info",
            wrapper: Vec::new(),
            ready_within: Duration::from_secs(60),
        }
    }
}

/// What the standalone bootstrap is rendered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standalone {
    /// Loopback ports of the upstreams playing reviews v1, v2 and v3.
    pub upstreams: [u16; 3],
    /// The listener's port (0: any free one).
    pub listen_port: u16,
    /// The admin interface's port (0: any free one).
    pub admin_port: u16,
    /// A Zipkin collector to trace every request to; `None`: nothing is traced.
    pub zipkin_port: Option<u16>,
    /// The filter module the ECDS file delivers.
    pub wasm: PathBuf,
}

impl Standalone {
    /// In front of `upstreams`, on ephemeral ports, untraced, with the built filter.
    pub fn new(upstreams: [u16; 3]) -> Standalone {
        Standalone {
            upstreams,
            listen_port: 0,
            admin_port: 0,
            zipkin_port: None,
            wasm: paths::filter_wasm(),
        }
    }

    /// The bootstrap, reading the filter from the ECDS file at `ecds_path`.
    pub fn bootstrap(&self, ecds_path: &Path) -> Result<String> {
        let ecds = ecds_path
            .to_str()
            .ok_or_else(|| Error::failed(ecds_path.display().to_string(), "path is not UTF-8"))?;
        let [v1, v2, v3] = self.upstreams.map(|port| port.to_string());
        render(
            STANDALONE_TEMPLATE,
            &[
                ("LISTEN_PORT", self.listen_port.to_string()),
                ("ADMIN_PORT", self.admin_port.to_string()),
                ("ECDS_PATH", ecds.to_string()),
                ("V1_PORT", v1),
                ("V2_PORT", v2),
                ("V3_PORT", v3),
                // Untraced: no span is sampled, so nothing is ever sent to the collector port
                // (9, discard, where nothing listens on loopback).
                (
                    "TRACE_PERCENT",
                    if self.zipkin_port.is_some() {
                        "100"
                    } else {
                        "0"
                    }
                    .to_string(),
                ),
                ("ZIPKIN_PORT", self.zipkin_port.unwrap_or(9).to_string()),
            ],
        )
    }
}

/// Replaces `${NAME}` placeholders; a placeholder left outside comments is an error.
pub fn render(template: &str, values: &[(&str, String)]) -> Result<String> {
    let mut out = template.to_string();
    for (name, value) in values {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    match out
        .lines()
        .find(|line| !line.trim_start().starts_with('#') && line.contains("${"))
    {
        Some(line) => Err(Error::failed(
            "render the bootstrap",
            format!("placeholder left: {}", line.trim()),
        )),
        None => Ok(out),
    }
}

/// A running Envoy; killed and reaped when dropped.
pub struct Envoy {
    process: Process,
    /// Its admin interface.
    pub admin: SocketAddr,
    /// Its HTTP listener.
    pub listener: SocketAddr,
    /// `http://127.0.0.1:<port>` of the admin interface.
    pub admin_url: String,
    /// `http://127.0.0.1:<port>` of the listener.
    pub base_url: String,
    /// The listener's port.
    pub listen_port: u16,
    ecds: Option<EcdsFile>,
    http: reqwest::Client,
    /// The directory of its files when the kit made it; removed after Envoy stops.
    _dir: Option<TempDir>,
}

impl Envoy {
    /// Writes `bootstrap` into `dir`, starts Envoy on it (logging to `dir/envoy.log`) and waits
    /// until its listener is bound.
    pub async fn start_bootstrap(bootstrap: &str, dir: &Path, options: &Options) -> Result<Envoy> {
        let io = |what: String| move |error| Error::failed(what, error);
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let bootstrap_path = dir.join("envoy.yaml");
        std::fs::write(&bootstrap_path, bootstrap)
            .map_err(io(format!("write {}", bootstrap_path.display())))?;
        let admin_path = dir.join("admin-address");
        let (mut command, what) = match options.wrapper.split_first() {
            None => (
                Command::new(&options.bin),
                format!("Envoy {}", options.bin.display()),
            ),
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&options.bin);
                let what = format!(
                    "Envoy {} under {}",
                    options.bin.display(),
                    program.to_string_lossy()
                );
                (command, what)
            }
        };
        command
            .arg("-c")
            .arg(&bootstrap_path)
            .args(["--disable-hot-restart", "--concurrency"])
            .arg(options.concurrency.to_string())
            .args(["-l", options.log_level])
            .arg("--admin-address-path")
            .arg(&admin_path);
        let process = Process::spawn_logged(&mut command, &what, &dir.join("envoy.log"))?;
        let http = crate::http_client(Duration::from_secs(10));
        let (admin, listener) = process
            .wait_ready(options.ready_within, async || {
                bound_addresses(&http, &admin_path).await
            })
            .await?;
        Ok(Envoy {
            process,
            admin,
            listener,
            admin_url: format!("http://{admin}"),
            base_url: format!("http://{listener}"),
            listen_port: listener.port(),
            ecds: None,
            http,
            _dir: None,
        })
    }

    /// Envoy on the standalone bootstrap in `dir`, with `config` in its ECDS file; ready once
    /// its listener is bound (the filter may still be loading: see [`Envoy::wait_for_generation`]).
    pub async fn start_standalone(
        config: &FilterConfig,
        standalone: &Standalone,
        dir: &Path,
        options: &Options,
    ) -> Result<Envoy> {
        std::fs::create_dir_all(dir)
            .map_err(|error| Error::failed(format!("create {}", dir.display()), error))?;
        let ecds = EcdsFile::new(&dir.join("meshcanary.ecds.json"), &standalone.wasm)?;
        ecds.push(config)?;
        let bootstrap = standalone.bootstrap(ecds.path())?;
        let mut envoy = Envoy::start_bootstrap(&bootstrap, dir, options).await?;
        envoy.ecds = Some(ecds);
        Ok(envoy)
    }

    /// For tests: Envoy (2 workers) in front of upstreams on `ports` (v1, v2, v3) with `config`
    /// in the ECDS file, in a directory of its own; waits until the filter runs that config's
    /// generation. Panics if it does not.
    pub async fn start(ports: [u16; 3], config: &FilterConfig) -> Envoy {
        Envoy::start_with(&Standalone::new(ports), config).await
    }

    /// Like [`Envoy::start`], with the listener on `listen_port` and the admin interface on
    /// `admin_port` (0: any free port).
    pub async fn start_on(
        ports: [u16; 3],
        config: &FilterConfig,
        listen_port: u16,
        admin_port: u16,
    ) -> Envoy {
        let standalone = Standalone {
            listen_port,
            admin_port,
            ..Standalone::new(ports)
        };
        Envoy::start_with(&standalone, config).await
    }

    /// Like [`Envoy::start`], tracing every request to the Zipkin collector on `zipkin_port`.
    pub async fn start_traced(ports: [u16; 3], config: &FilterConfig, zipkin_port: u16) -> Envoy {
        let standalone = Standalone {
            zipkin_port: Some(zipkin_port),
            ..Standalone::new(ports)
        };
        Envoy::start_with(&standalone, config).await
    }

    /// [`Envoy::start`] with the bootstrap rendered from `standalone`.
    pub async fn start_with(standalone: &Standalone, config: &FilterConfig) -> Envoy {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = Options::with_bin(paths::envoy_bin());
        let mut envoy = Envoy::start_standalone(config, standalone, dir.path(), &options)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        envoy._dir = Some(dir);
        envoy.wait_for_generation(config.generation).await;
        envoy
    }

    /// Asks Envoy to exit (`POST /quitquitquit` on its admin interface) and waits at most `within`
    /// for it to end, so that a wrapper such as valgrind ends cleanly too. Whatever happens, the
    /// process is gone when this returns: one still running is killed when `self` drops.
    pub async fn quit(self, within: Duration) -> Result<ExitStatus> {
        let what = "POST /quitquitquit";
        let response = self
            .http
            .post(format!("{}/quitquitquit", self.admin_url))
            .send()
            .await
            .map_err(|error| Error::failed(what, error))?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            return Err(Error::failed(what, format!("{status} {body}")));
        }
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.process.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(Error::StillRunning {
                    what: "Envoy, after /quitquitquit,".into(),
                    within,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its process id (CPU and memory are read from /proc).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The end of its log, for error messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// The file Envoy logs to.
    pub fn log_path(&self) -> PathBuf {
        self.process
            .log_path()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// URL of `path` on the listener.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// The ECDS file this Envoy watches; whoever else pushes (the control service) writes it.
    /// Panics for an Envoy not started on the standalone bootstrap.
    pub fn ecds_path(&self) -> &Path {
        self.ecds().path()
    }

    fn ecds(&self) -> &EcdsFile {
        self.ecds
            .as_ref()
            .expect("an Envoy on the standalone bootstrap (it has an ECDS file)")
    }

    /// Replaces the filter config the way a pusher does: rewrite the ECDS file atomically.
    /// Panics if the write fails.
    pub fn push(&self, config: &FilterConfig) {
        self.ecds()
            .push(config)
            .unwrap_or_else(|error| panic!("{error}"));
    }

    /// Writes a raw pluginConfig string (possibly invalid) into the ECDS file.
    pub fn push_raw(&self, generation: u64, plugin_config: &str) {
        self.ecds()
            .push_raw(generation, plugin_config)
            .unwrap_or_else(|error| panic!("{error}"));
    }

    /// `GET path` on the admin interface: the body of a 2xx answer.
    pub async fn admin_get(&self, path: &str) -> Result<String> {
        admin_get(&self.http, &self.admin_url, path).await
    }

    /// `/stats/prometheus`; panics if the admin interface does not answer.
    pub async fn stats(&self) -> String {
        self.admin_get("/stats/prometheus")
            .await
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// One series (summed over label sets that include `labels`), 0 if absent.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        crate::prometheus::value(&self.stats().await, name, labels).unwrap_or(0.0)
    }

    /// Polls until `metric(name, labels)` satisfies `done`, or panics after `timeout` with the
    /// last value.
    pub async fn wait_for_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        timeout: Duration,
        done: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.metric(name, labels).await;
            if done(value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} is {value} after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the filter reports `generation` as the config in force; how long it took.
    pub async fn wait_for_generation(&self, generation: u64) -> Duration {
        let started = Instant::now();
        self.wait_for_metric(
            meshcanary_core::stats::GENERATION,
            &[],
            Duration::from_secs(30),
            |value| value == generation as f64,
        )
        .await;
        started.elapsed()
    }
}

/// `GET path` at `base_url`: the body of a 2xx answer.
async fn admin_get(http: &reqwest::Client, base_url: &str, path: &str) -> Result<String> {
    let what = || format!("GET {base_url}{path}");
    let response = http
        .get(format!("{base_url}{path}"))
        .send()
        .await
        .map_err(|error| Error::failed(what(), error))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|error| Error::failed(what(), error))?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(Error::failed(what(), format!("{status} {body}")))
    }
}

/// The admin address Envoy wrote to `admin_path` and its listener's, once both are bound and
/// Envoy says it is ready; otherwise what is missing.
async fn bound_addresses(
    http: &reqwest::Client,
    admin_path: &Path,
) -> Result<(SocketAddr, SocketAddr), String> {
    let admin: SocketAddr = std::fs::read_to_string(admin_path)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .ok_or("no admin address written yet")?;
    let admin_url = format!("http://{admin}");
    admin_get(http, &admin_url, "/ready")
        .await
        .map_err(|error| error.to_string())?;
    let listeners = admin_get(http, &admin_url, "/listeners?format=json")
        .await
        .map_err(|error| error.to_string())?;
    let port = listener_port(&listeners).ok_or("the listener is not bound yet")?;
    Ok((admin, SocketAddr::from(([127, 0, 0, 1], port))))
}

/// The port of the first listener in `/listeners?format=json`; `None` until it is bound.
pub fn listener_port(json: &str) -> Option<u16> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let port =
        value["listener_statuses"][0]["local_address"]["socket_address"]["port_value"].as_u64()?;
    u16::try_from(port).ok().filter(|port| *port != 0)
}

/// An Envoy build's version, as `envoy --version` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The release, e.g. `1.40.0`.
    pub number: String,
    /// The source state and build mode, e.g. `Clean RELEASE`, if given.
    pub build: Option<String>,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.build {
            Some(build) => write!(f, "{} ({build})", self.number),
            None => f.write_str(&self.number),
        }
    }
}

/// The version in `envoy --version` output (`…version: <sha>/1.40.0/Clean/RELEASE/BoringSSL`).
pub fn parse_version(text: &str) -> Option<Version> {
    let build = text.split("version:").nth(1)?.split_whitespace().next()?;
    let fields: Vec<&str> = build.split('/').collect();
    Some(Version {
        number: fields.get(1)?.to_string(),
        build: match (fields.get(2), fields.get(3)) {
            (Some(state), Some(mode)) => Some(format!("{state} {mode}")),
            _ => None,
        },
    })
}

/// `bin --version`, parsed.
pub fn version(bin: &Path) -> Option<Version> {
    let output = Command::new(bin).arg("--version").output().ok()?;
    parse_version(&String::from_utf8_lossy(&output.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_fills_placeholders_and_refuses_leftovers() {
        let template = "# ${A} in a comment stays\na: ${A}\nb: ${B}\n";
        type Case<'a> = (&'a [(&'a str, &'a str)], Result<&'a str, &'a str>);
        let cases: [Case; 3] = [
            (
                &[("A", "1"), ("B", "2")],
                Ok("# 1 in a comment stays\na: 1\nb: 2\n"),
            ),
            (&[("A", "1")], Err("placeholder left: b: ${B}")),
            (
                &[("A", "1"), ("B", "2"), ("C", "3")],
                Ok("# 1 in a comment stays\na: 1\nb: 2\n"),
            ),
        ];
        for (values, expected) in cases {
            let values: Vec<(&str, String)> =
                values.iter().map(|(k, v)| (*k, v.to_string())).collect();
            match (render(template, &values), expected) {
                (Ok(got), Ok(expected)) => assert_eq!(got, expected),
                (Err(error), Err(part)) => assert!(error.to_string().contains(part), "{error}"),
                (got, expected) => panic!("{got:?} vs {expected:?}"),
            }
        }
    }

    #[test]
    fn the_standalone_bootstrap_renders() {
        let standalone = Standalone {
            upstreams: [4241, 4242, 4243],
            listen_port: 0,
            admin_port: 9901,
            zipkin_port: None,
            wasm: "/m.wasm".into(),
        };
        let bootstrap = standalone
            .bootstrap(Path::new("/tmp/x/m.ecds.json"))
            .unwrap();
        assert!(
            bootstrap.contains("path: /tmp/x/m.ecds.json"),
            "{bootstrap}"
        );
        for port in ["4241", "4242", "4243", "9901", "0 }"] {
            assert!(bootstrap.contains(&format!("port_value: {port}")), "{port}");
        }
        assert!(bootstrap.contains("random_sampling: { value: 0 }"));
        let traced = Standalone {
            zipkin_port: Some(9411),
            ..standalone
        };
        let bootstrap = traced.bootstrap(Path::new("/e.json")).unwrap();
        assert!(bootstrap.contains("random_sampling: { value: 100 }"));
        assert!(bootstrap.contains("port_value: 9411"));
    }

    #[test]
    fn listener_ports() {
        let bound = r#"{"listener_statuses":[{"name":"ingress","local_address":{"socket_address":{"address":"127.0.0.1","port_value":41234}}}]}"#;
        let unbound = r#"{"listener_statuses":[{"name":"ingress","local_address":{"socket_address":{"address":"127.0.0.1","port_value":0}}}]}"#;
        let cases = [
            (bound, Some(41234)),
            (unbound, None),
            ("{}", None),
            ("not json", None),
        ];
        for (json, expected) in cases {
            assert_eq!(listener_port(json), expected, "{json}");
        }
    }

    #[test]
    fn versions() {
        let cases = [
            (
                "\nenvoy  version: 9e55809/1.40.0/Clean/RELEASE/BoringSSL\n\n",
                Some("1.40.0 (Clean RELEASE)"),
            ),
            ("envoy version: abc/1.33.2", Some("1.33.2")),
            ("no such file", None),
        ];
        for (text, expected) in cases {
            let parsed = parse_version(text);
            assert_eq!(parsed.map(|v| v.to_string()).as_deref(), expected, "{text}");
        }
        assert_eq!(
            parse_version("version: x/1.40.0/Clean/RELEASE").map(|v| v.number),
            Some("1.40.0".to_string())
        );
    }
}
