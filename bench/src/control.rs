//! The control service under test: `meshcanary serve` in standalone mode, pushing to an Envoy that
//! runs the standalone bootstrap (`envoy-config/standalone.yaml`) with the filter delivered through
//! the ECDS file, and watching that Envoy's admin endpoint. Both are started by the test kit, as the
//! end-to-end tests start them, and stopped on Ctrl-C too; this adds the bench's rollouts and the
//! reading of the service's answers.

use crate::client::Connection;
use crate::envoy::{self, Envoy};
use anyhow::{bail, Context};
use hyper::body::Bytes;
use meshcanary_core::config::FilterConfig;
use meshcanary_testkit::envoy::Standalone as StandaloneEnvoy;
use meshcanary_testkit::service::{ServiceProcess, Standalone, StatsSource};
use meshcanary_testkit::upstream::Upstream;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// The bearer token the service requires for writes.
pub const TOKEN: &str = "meshcanary-bench-token-0123456789";

/// The filter routes the service starts with; each gets a rollout, so the status reads see a
/// handful of them.
pub const ROUTES: [&str; 5] = ["reviews", "ratings", "details", "productpage", "cart"];

/// How long the rollouts may take to settle at their pause.
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
        let upstream = Upstream::plain()?;
        let standalone = StandaloneEnvoy {
            // v1, v2 and v3 all on the one upstream.
            upstreams: [upstream.port; 3],
            listen_port: 0,
            admin_port: 0,
            // No tracing: the bench measures the control service, not Envoy's tracer.
            zipkin_port: None,
            wasm: wasm.to_path_buf(),
        };
        let envoy = Envoy::start_standalone(
            &config,
            &standalone,
            &dir.join("envoy"),
            &envoy::options(envoy_bin),
        )
        .await
        .context("Envoy on envoy-config/standalone.yaml")?;
        let service = ControlService::start(
            Standalone {
                binary: control_bin.to_path_buf(),
                dir: dir.join("service"),
                routes: config,
                ecds_file: envoy.ecds_path().to_path_buf(),
                wasm: wasm.to_path_buf(),
                stats: Some(StatsSource::EnvoyAdmin(envoy.admin_url.clone())),
                token: TOKEN.into(),
                port: 0,
                extra_args: Vec::new(),
            },
            control_bin,
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
                        self.envoy.log_tail()
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

/// A running `meshcanary serve`; killed and reaped when dropped.
pub struct ControlService {
    process: ServiceProcess,
    /// Its API.
    pub addr: SocketAddr,
}

impl ControlService {
    /// Starts `standalone` on an ephemeral loopback port and waits until `/readyz` answers 200.
    async fn start(standalone: Standalone, bin: &Path) -> anyhow::Result<ControlService> {
        let process = standalone.start().await.with_context(|| {
            format!(
                "{} (cargo build --release -p meshcanary-control, or `make bench`)",
                bin.display()
            )
        })?;
        let addr = process
            .url
            .trim_start_matches("http://")
            .parse()
            .with_context(|| format!("the service's address {}", process.url))?;
        Ok(ControlService { process, addr })
    }

    /// Its process id (CPU time is read from /proc).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The end of its log, for errors.
    pub fn log(&self) -> String {
        self.process.log_tail()
    }

    /// A client on a keep-alive connection of its own.
    pub async fn connect(&self) -> anyhow::Result<Api> {
        Ok(Api {
            connection: Connection::open(self.addr).await?,
        })
    }
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
}
