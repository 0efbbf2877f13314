//! The control service under test: `meshcanary serve` in standalone mode, pushing to an Envoy that
//! runs the standalone bootstrap (`envoy-config/standalone.yaml`) with the filter delivered through
//! the ECDS file, and watching that Envoy's admin endpoint. The arrangement of the end-to-end tests
//! (`tests/src/control.rs`, `tests/src/envoy.rs`), with every process under a [`Guarded`] handle so
//! that Ctrl-C stops them too; and the reading of the service's answers.

use crate::client::{self, Connection};
use crate::envoy::Envoy;
use crate::process::Guarded;
use crate::scenario;
use crate::upstream::Upstream;
use anyhow::{bail, Context};
use hyper::body::Bytes;
use meshcanary_core::config::FilterConfig;
use meshcanary_core::ecds::{ecds_document, WasmDelivery};
use serde_json::{json, Value};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The bearer token the service requires for writes.
pub const TOKEN: &str = "meshcanary-bench-token-0123456789";

/// The filter routes the service starts with; each gets a rollout, so the status reads see a
/// handful of them.
pub const ROUTES: [&str; 5] = ["reviews", "ratings", "details", "productpage", "cart"];

/// Environment variables `meshcanary serve` reads that must not leak in from the caller (the
/// Makefile exports `MESHCANARY_WASM`, a developer's shell may set others): everything it needs is
/// passed as flags.
const SERVICE_ENV: [&str; 11] = [
    "MESHCANARY_LISTEN",
    "MESHCANARY_STATE_DIR",
    "MESHCANARY_TOKEN_FILE",
    "MESHCANARY_PROTECT_READS",
    "MESHCANARY_ROUTES",
    "MESHCANARY_ECDS_FILE",
    "MESHCANARY_WASM",
    "MESHCANARY_ENVOY_ADMIN",
    "MESHCANARY_PROMETHEUS_URL",
    "MESHCANARY_LOG_FORMAT",
    "RUST_LOG",
];

/// How long the service may take to listen and answer `/readyz`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The filter config everything starts from: one route per name in [`ROUTES`] (host = name), all
/// traffic on v1, v2 present at 0.
pub fn routes_config() -> anyhow::Result<FilterConfig> {
    let routes: Vec<Value> = ROUTES
        .iter()
        .map(|name| {
            json!({
                "name": name,
                "hosts": [name],
                "variants": [{"name": "v1", "weight": 10000}, {"name": "v2", "weight": 0}]
            })
        })
        .collect();
    let config = json!({"generation": 1, "routes": routes}).to_string();
    FilterConfig::from_json(config.as_bytes()).context("the bench's routes config")
}

/// A rollout of `route` from v1 to v2 that stops at its second step: 10 %, then an open pause.
pub fn paused_rollout_spec(name: &str, route: &str) -> Value {
    json!({
        "name": name,
        "route": route,
        "stable": "v1",
        "canary": "v2",
        "steps": [{"setWeight": {"percent": 10}}, {"pause": {}}]
    })
}

/// The standalone bootstrap with the ECDS file at `ecds_path` and the upstreams of v1, v2 and v3
/// all on `upstream_port`; listener and admin on ephemeral ports.
pub fn standalone_bootstrap(ecds_path: &Path, upstream_port: u16) -> anyhow::Result<String> {
    let ecds = ecds_path.to_str().context("ECDS path is not UTF-8")?;
    let port = upstream_port.to_string();
    scenario::render(
        include_str!("../../envoy-config/standalone.yaml"),
        &[
            ("LISTEN_PORT", "0".into()),
            ("ADMIN_PORT", "0".into()),
            ("ECDS_PATH", ecds.into()),
            ("V1_PORT", port.clone()),
            ("V2_PORT", port.clone()),
            ("V3_PORT", port),
            // No tracing: the bench measures the control service, not Envoy's tracer.
            ("TRACE_PERCENT", "0".to_string()),
            ("ZIPKIN_PORT", "9".to_string()),
        ],
    )
}

/// Writes `contents` so that Envoy's file watch sees the old file or the new one, never half: a
/// temp file in the same directory, fsync, rename over the target.
fn write_atomically(path: &Path, contents: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).with_context(|| format!("create {tmp:?}"))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {path:?}"))
}

/// Envoy with the filter through the ECDS file, an upstream, and the service pushing to it. The
/// fields drop in order: the service first, so it never scrapes a stopped Envoy.
pub struct Rig {
    /// `meshcanary serve`.
    pub service: ControlService,
    /// The Envoy it pushes to.
    pub envoy: Envoy,
    _upstream: Upstream,
}

impl Rig {
    /// Starts the upstream, Envoy (in `dir/envoy`, the filter at `routes_config()`'s generation)
    /// and the service `control_bin` (in `dir/service`).
    pub async fn start(
        envoy_bin: &Path,
        control_bin: &Path,
        wasm: &Path,
        dir: &Path,
    ) -> anyhow::Result<Rig> {
        let config = routes_config()?;
        let upstream = Upstream::start()?;
        let envoy_dir = dir.join("envoy");
        std::fs::create_dir_all(&envoy_dir)?;
        let ecds_path = envoy_dir.join("meshcanary.ecds.json");
        let delivery = WasmDelivery {
            name: "meshcanary".into(),
            wasm_path: wasm.to_str().context("module path is not UTF-8")?.into(),
            fail_open: true,
        };
        write_atomically(&ecds_path, &ecds_document(&delivery, &config))?;
        let bootstrap = standalone_bootstrap(&ecds_path, upstream.port)?;
        let envoy = Envoy::start(envoy_bin, &bootstrap, &envoy_dir)
            .await
            .context("Envoy on envoy-config/standalone.yaml")?;
        let service = ControlService::start(
            control_bin,
            &ServiceFiles {
                dir: dir.join("service"),
                ecds: ecds_path,
                wasm: wasm.to_path_buf(),
            },
            envoy.admin,
            &config,
        )
        .await?;
        Ok(Rig {
            service,
            envoy,
            _upstream: upstream,
        })
    }

    /// Creates one rollout per route in [`ROUTES`] (`<route>-canary`, see [`paused_rollout_spec`])
    /// and waits until each is paused at its pause step with its 10 % applied in Envoy; their
    /// names.
    pub async fn create_paused_rollouts(&self) -> anyhow::Result<Vec<String>> {
        let mut api = self.service.connect().await?;
        let mut names = Vec::new();
        for route in ROUTES {
            let name = format!("{route}-canary");
            api.create_rollout(&paused_rollout_spec(&name, route))
                .await
                .with_context(|| {
                    format!(
                        "create rollout {name}:
{}",
                        self.service.log()
                    )
                })?;
            names.push(name);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        for name in &names {
            loop {
                let view = api.rollout(name).await?;
                if paused_and_applied(&view, 1) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "rollout {name} not paused at 10 % in Envoy after {START_TIMEOUT:?}: \
                         {view}\nservice log:\n{}\nEnvoy log:\n{}",
                        self.service.log(),
                        self.envoy.log()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(names)
    }

    /// The generation Envoy's filter reports running (`meshcanary_config_generation`), read
    /// through `admin` (a keep-alive connection to Envoy's admin interface).
    pub async fn envoy_generation(admin: &mut Connection) -> anyhow::Result<Option<u64>> {
        let (status, body) = admin
            .get("localhost", GENERATION_STATS_PATH)
            .await
            .context("read Envoy's generation gauge")?;
        if status != 200 {
            bail!("{GENERATION_STATS_PATH}: {status}");
        }
        Ok(generation_gauge(&String::from_utf8_lossy(&body)))
    }
}

/// The admin path that shows the filter's generation gauge and nothing else.
pub const GENERATION_STATS_PATH: &str = "/stats/prometheus?filter=meshcanary_config_generation";

/// The files the service is started with.
struct ServiceFiles {
    /// Its state directory, routes file and log go here.
    dir: PathBuf,
    /// The ECDS file Envoy watches.
    ecds: PathBuf,
    /// The filter module.
    wasm: PathBuf,
}

/// A running `meshcanary serve`; killed and reaped when dropped.
pub struct ControlService {
    process: Guarded,
    /// Its API.
    pub addr: SocketAddr,
    log: PathBuf,
}

impl ControlService {
    /// Starts `bin serve` on an ephemeral loopback port (read back from its log) and waits until
    /// `/readyz` answers 200.
    async fn start(
        bin: &Path,
        files: &ServiceFiles,
        envoy_admin: SocketAddr,
        routes: &FilterConfig,
    ) -> anyhow::Result<ControlService> {
        std::fs::create_dir_all(&files.dir)?;
        let routes_path = files.dir.join("routes.json");
        std::fs::write(&routes_path, routes.to_json()).context("write routes.json")?;
        let log = files.dir.join("service.log");
        let log_file = std::fs::File::create(&log).context("create service.log")?;
        let mut command = Command::new(bin);
        for name in SERVICE_ENV {
            command.env_remove(name);
        }
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(files.dir.join("state"))
            .arg("--routes")
            .arg(&routes_path)
            .arg("--ecds-file")
            .arg(&files.ecds)
            .arg("--wasm")
            .arg(&files.wasm)
            .arg("--envoy-admin")
            .arg(format!("http://{envoy_admin}"))
            .env("MESHCANARY_TOKEN", TOKEN)
            // JSON lines: the bound address is read back from the log. At info nothing is logged
            // per request (the API's trace layer logs at debug).
            .env("MESHCANARY_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let what = format!(
            "{} (cargo build --release -p meshcanary-control, or `make bench`)",
            bin.display()
        );
        let process = Guarded::spawn(&mut command, &what)?;
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            if let Some(status) = process.try_wait()? {
                bail!("meshcanary serve exited with {status}:\n{}", tail(&log));
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(addr) = listening_address(&text) {
                break addr;
            }
            if Instant::now() > deadline {
                bail!(
                    "meshcanary serve not listening after {START_TIMEOUT:?}:\n{}",
                    tail(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        loop {
            if let Some(status) = process.try_wait()? {
                bail!("meshcanary serve exited with {status}:\n{}", tail(&log));
            }
            let ready = client::get_text(addr, "/readyz").await;
            if ready.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "meshcanary serve not ready after {START_TIMEOUT:?} ({ready:?}):\n{}",
                    tail(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(ControlService { process, addr, log })
    }

    /// Its process id (CPU time is read from /proc).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The end of its log, for errors.
    pub fn log(&self) -> String {
        tail(&self.log)
    }

    /// A client on a keep-alive connection of its own.
    pub async fn connect(&self) -> anyhow::Result<Api> {
        Ok(Api {
            connection: Connection::open(self.addr).await?,
        })
    }
}

fn tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let start = log.len().saturating_sub(4000);
    let start = (start..log.len())
        .find(|index| log.is_char_boundary(*index))
        .unwrap_or(log.len());
    log[start..].to_string()
}

/// The control API over one keep-alive connection, writes with the bearer token.
pub struct Api {
    connection: Connection,
}

impl Api {
    /// `method path` with `body` as JSON; the status and the body parsed as JSON (`Null` if it is
    /// not JSON).
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let authorization = format!("Bearer {TOKEN}");
        let headers = [
            ("host", "localhost"),
            ("authorization", authorization.as_str()),
            ("content-type", "application/json"),
        ];
        let body = match body {
            Some(body) => Bytes::from(serde_json::to_vec(body)?),
            None => Bytes::new(),
        };
        let (status, body) = self
            .connection
            .send(method, path, &headers, body)
            .await
            .with_context(|| format!("{method} {path}"))?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    /// `method path` with `body`, expecting `status`; the answer.
    async fn expect(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        status: u16,
    ) -> anyhow::Result<Value> {
        let (got, answer) = self.request(method, path, body).await?;
        if got != status {
            bail!("{method} {path}: expected {status}, got {got}: {answer}");
        }
        Ok(answer)
    }

    /// `POST /v1/rollouts`.
    pub async fn create_rollout(&mut self, spec: &Value) -> anyhow::Result<Value> {
        self.expect("POST", "/v1/rollouts", Some(spec), 201).await
    }

    /// `GET /v1/rollouts/{name}`.
    pub async fn rollout(&mut self, name: &str) -> anyhow::Result<Value> {
        self.expect("GET", &format!("/v1/rollouts/{name}"), None, 200)
            .await
    }

    /// `PUT /v1/rollouts/{name}/weight` in basis points.
    pub async fn put_weight(&mut self, name: &str, basis_points: u32) -> anyhow::Result<Value> {
        let body = json!({ "basisPoints": basis_points });
        self.expect(
            "PUT",
            &format!("/v1/rollouts/{name}/weight"),
            Some(&body),
            200,
        )
        .await
    }
}

/// The address in the service's `meshcanary control API listening` JSON log line.
pub fn listening_address(log: &str) -> Option<SocketAddr> {
    log.lines().find_map(|line| {
        let entry: Value = serde_json::from_str(line).ok()?;
        let fields = &entry["fields"];
        (fields["message"] == "meshcanary control API listening")
            .then(|| fields["address"].as_str()?.parse().ok())
            .flatten()
    })
}

/// The value of the filter's unlabelled `meshcanary_config_generation` gauge in Prometheus text
/// (Envoy writes it as `meshcanary_config_generation{} 7`).
pub fn generation_gauge(text: &str) -> Option<u64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            if name != meshcanary_core::stats::GENERATION {
                return None;
            }
            let value: f64 = value.trim().parse().ok()?;
            (value >= 0.0 && value.fract() == 0.0).then_some(value as u64)
        })
}

/// The generation that carries a rollout's current weight (`status.weightGeneration`).
pub fn weight_generation(view: &Value) -> Option<u64> {
    view["status"]["weightGeneration"].as_u64()
}

/// Whether the service reports `generation` as the rollout's weight generation and applied on
/// every proxy it watches.
pub fn applied_everywhere(view: &Value, generation: u64) -> bool {
    let propagation = &view["propagation"];
    let total = propagation["total"].as_u64().unwrap_or(0);
    weight_generation(view) == Some(generation)
        && propagation["generation"].as_u64() == Some(generation)
        && total > 0
        && propagation["applied"].as_u64() == Some(total)
}

/// Whether the rollout is paused at step `step` with its weight applied everywhere.
pub fn paused_and_applied(view: &Value, step: u64) -> bool {
    view["status"]["phase"] == "paused"
        && view["status"]["step"].as_u64() == Some(step)
        && weight_generation(view).is_some_and(|generation| applied_everywhere(view, generation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_address_comes_from_the_json_log() {
        let log = r#"{"timestamp":"t","level":"INFO","fields":{"message":"started from the initial filter config","generation":1},"target":"meshcanary_control::service"}
not json at all
{"timestamp":"t","level":"INFO","fields":{"message":"meshcanary control API listening","address":"127.0.0.1:41283"},"target":"meshcanary_control::server"}
"#;
        let cases = [
            (log, Some(SocketAddr::from(([127, 0, 0, 1], 41283)))),
            (log.lines().next().unwrap_or_default(), None),
            (
                r#"{"fields":{"message":"meshcanary control API listening","address":"nope"}}"#,
                None,
            ),
            ("", None),
        ];
        for (text, expected) in cases {
            assert_eq!(listening_address(text), expected, "{text}");
        }
    }

    #[test]
    fn generation_gauges() {
        let cases = [
            (
                "# TYPE meshcanary_config_generation gauge\nmeshcanary_config_generation 17\n",
                Some(17),
            ),
            ("meshcanary_config_generation{} 7\n", Some(7)),
            ("meshcanary_config_generation 3.0\n", Some(3)),
            ("meshcanary_config_generation_x 5\n", None),
            ("meshcanary_config_generation 2.5\n", None),
            ("", None),
        ];
        for (text, expected) in cases {
            assert_eq!(generation_gauge(text), expected, "{text}");
        }
    }

    fn view(phase: &str, step: u64, weight_generation: u64, applied: u64, total: u64) -> Value {
        json!({
            "spec": {"name": "r"},
            "status": {"phase": phase, "step": step, "weightGeneration": weight_generation},
            "version": 3,
            "propagation": {
                "generation": weight_generation,
                "applied": applied,
                "total": total,
                "summary": format!("applied on {applied}/{total} proxies")
            }
        })
    }

    #[test]
    fn propagation_as_the_service_reports_it() {
        let cases = [
            (view("paused", 1, 7, 1, 1), 7, true),
            (view("paused", 1, 7, 0, 1), 7, false),
            (view("paused", 1, 7, 0, 0), 7, false),
            // A later weight than the one awaited: that one is not what is being timed.
            (view("paused", 1, 8, 1, 1), 7, false),
            (Value::Null, 7, false),
        ];
        for (view, generation, expected) in cases {
            assert_eq!(
                applied_everywhere(&view, generation),
                expected,
                "{view} {generation}"
            );
        }
        assert_eq!(weight_generation(&view("paused", 1, 7, 1, 1)), Some(7));
        assert!(paused_and_applied(&view("paused", 1, 7, 1, 1), 1));
        assert!(!paused_and_applied(&view("progressing", 1, 7, 1, 1), 1));
        assert!(!paused_and_applied(&view("paused", 0, 7, 1, 1), 1));
        assert!(!paused_and_applied(&view("paused", 1, 7, 0, 1), 1));
    }

    #[test]
    fn the_routes_and_rollouts_are_valid() {
        let config = routes_config().unwrap();
        assert_eq!(config.generation, 1);
        let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ROUTES);
        let spec = paused_rollout_spec("r-reviews", "reviews");
        assert_eq!(spec["steps"][1], json!({"pause": {}}));
    }

    #[test]
    fn the_standalone_bootstrap_renders() {
        let bootstrap = standalone_bootstrap(Path::new("/tmp/x/m.ecds.json"), 4242).unwrap();
        assert!(
            bootstrap.contains("path: /tmp/x/m.ecds.json"),
            "{bootstrap}"
        );
        assert_eq!(bootstrap.matches("port_value: 4242").count(), 3);
        assert!(bootstrap.contains("port_value: 0"));
    }
}
