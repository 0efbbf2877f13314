//! The control service (`meshcanary serve`, started by the test kit) as the end-to-end tests use
//! it: it pushes to an [`Envoy`]'s ECDS file and watches that Envoy's admin endpoint. Its state
//! directory lives in a temp dir that outlives the process, so a test can kill it with SIGKILL and
//! start it again on the same state. [`ControlApi`] drives its HTTP API; every panic it raises
//! carries the service's log.

use meshcanary_control::api::rollouts::RolloutView;
use meshcanary_control::api::routes::{RoutesView, RuleAdded};
use meshcanary_core::config::FilterConfig;
use meshcanary_testkit::envoy::Envoy;
use meshcanary_testkit::paths;
pub use meshcanary_testkit::service::StatsSource;
use meshcanary_testkit::service::{ServiceProcess, Standalone};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The bearer token every harness service requires for writes.
pub const TOKEN: &str = "e2e-token-0123456789abcdefghij";

/// How long [`ControlApi::wait_for_rollout`] waits before giving up.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(15);

/// A running `meshcanary serve`; killed and reaped when dropped.
pub struct ControlService {
    process: ServiceProcess,
    /// The harness's own `serve` arguments, before any extra ones.
    harness_args: Vec<String>,
    api: ControlApi,
    dir: TempDir,
}

impl ControlService {
    /// Starts the service for `envoy` with `routes` as its initial filter config (give it the
    /// config Envoy was started with, so the service's first push changes nothing) and waits
    /// until `/readyz` answers 200.
    pub async fn start(envoy: &Envoy, routes: &FilterConfig) -> ControlService {
        let stats = StatsSource::EnvoyAdmin(envoy.admin_url.clone());
        ControlService::start_with_stats(envoy, routes, stats).await
    }

    /// Like [`ControlService::start`], but the service reads the stats from `stats` (another
    /// admin URL, possibly unreachable, or a Prometheus server) instead of `envoy`'s admin.
    pub async fn start_with_stats(
        envoy: &Envoy,
        routes: &FilterConfig,
        stats: StatsSource,
    ) -> ControlService {
        ControlService::start_without_envoy(envoy.ecds_path(), routes, stats).await
    }

    /// Starts the service with no Envoy behind it: it writes the filter config to `ecds_file`,
    /// which nothing needs to watch, and reads the proxies' stats from `stats` (a stand-in for an
    /// Envoy admin endpoint, say). For tests of the API and the dashboard.
    pub async fn start_without_envoy(
        ecds_file: &Path,
        routes: &FilterConfig,
        stats: StatsSource,
    ) -> ControlService {
        ControlService::start_with_args(ecds_file, routes, stats, &[]).await
    }

    /// Like [`ControlService::start_without_envoy`], with more `serve` flags (`--max-connections`,
    /// `--retain-finished`, …) after the harness's own.
    pub async fn start_with_args(
        ecds_file: &Path,
        routes: &FilterConfig,
        stats: StatsSource,
        extra_args: &[&str],
    ) -> ControlService {
        let dir = tempfile::tempdir().expect("temp dir");
        let standalone = Standalone {
            binary: paths::control_bin(),
            dir: dir.path().to_path_buf(),
            routes: routes.clone(),
            ecds_file: ecds_file.to_path_buf(),
            wasm: paths::filter_wasm(),
            stats: Some(stats),
            token: TOKEN.into(),
            port: 0,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
        };
        let process = standalone
            .start()
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let api = ControlApi::new(process.url.clone(), Arc::from(process.log_path()));
        let harness_args = &process.command().args;
        let harness_args = harness_args[..harness_args.len() - extra_args.len()].to_vec();
        ControlService {
            process,
            harness_args,
            api,
            dir,
        }
    }

    /// The client for this service's API.
    pub fn api(&self) -> &ControlApi {
        &self.api
    }

    /// The service's state directory (`--state-dir`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Everything the service logged so far, across restarts.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        Some(self.process.pid())
    }

    /// The `serve` flags after the harness's own from the next (re)start on.
    pub fn set_extra_args(&mut self, extra_args: &[&str]) {
        let mut args = self.harness_args.clone();
        args.extend(extra_args.iter().map(|a| a.to_string()));
        self.process.set_args(args);
    }

    /// Kills the process with SIGKILL (no shutdown code runs) and reaps it.
    pub fn kill_hard(&mut self) {
        let status = self
            .process
            .kill()
            .unwrap_or_else(|error| panic!("{error}"));
        self.process
            .note(&format!("killed with SIGKILL ({status})"));
    }

    /// Starts the service again on the same state directory and port (killing it first if it
    /// still runs) and waits until it is ready.
    pub async fn restart(&mut self) {
        if let Err(error) = self.process.restart().await {
            panic!("meshcanary serve after a restart: {error}");
        }
    }
}

/// An answer from the API, kept raw for tests that check error shapes.
#[derive(Debug, Clone)]
pub struct ApiReply {
    /// HTTP status.
    pub status: u16,
    /// The `ETag` header, if any.
    pub etag: Option<String>,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body.
    pub body: String,
}

impl ApiReply {
    /// The body as JSON; `Value::Null` if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A client for the control API; cheap to clone, so concurrent tasks can each hold one.
#[derive(Clone)]
pub struct ControlApi {
    http: reqwest::Client,
    base_url: Arc<str>,
    log_path: Arc<Path>,
}

impl ControlApi {
    fn new(base_url: String, log_path: Arc<Path>) -> ControlApi {
        ControlApi {
            http: meshcanary_testkit::http_client(Duration::from_secs(10)),
            base_url: base_url.into(),
            log_path,
        }
    }

    /// `http://127.0.0.1:<port>` of the API.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Everything the service logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends exactly what it is given: `token` (if any) as a bearer token, `headers`, `body`.
    /// `Err` only if no HTTP answer came back.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<ApiReply, String> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (etag, content_type) = (header("etag"), header("content-type"));
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| e.to_string())?;
        Ok(ApiReply {
            status,
            etag,
            content_type,
            body,
        })
    }

    /// An authenticated request with an optional JSON body and `If-Match`; panics if no answer.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
        if_match: Option<&str>,
    ) -> ApiReply {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(version) = if_match {
            headers.push(("if-match", version));
        }
        let body = body.map(|b| serde_json::to_vec(b).expect("serialise body"));
        match self
            .request(method, path, Some(TOKEN), &headers, body)
            .await
        {
            Ok(reply) => reply,
            Err(error) => panic!("{method} {path}: {error}\n{}", self.log()),
        }
    }

    /// `reply` parsed as `T` if it has `status`; otherwise panics with the answer and the log.
    pub fn expect<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        reply: ApiReply,
        status: u16,
    ) -> T {
        if reply.status != status {
            panic!(
                "{what}: expected {status}, got {} {}\n{}",
                reply.status,
                reply.body,
                self.log()
            );
        }
        match serde_json::from_str(&reply.body) {
            Ok(value) => value,
            Err(error) => panic!(
                "{what}: cannot read {}: {error}\n{}",
                reply.body,
                self.log()
            ),
        }
    }

    /// `POST /v1/rollouts`; expects 201.
    pub async fn create_rollout(&self, spec: &serde_json::Value) -> RolloutView {
        let reply = self.send("POST", "/v1/rollouts", Some(spec), None).await;
        self.expect("create rollout", reply, 201)
    }

    /// `GET /v1/rollouts/{name}`; expects 200.
    pub async fn rollout(&self, name: &str) -> RolloutView {
        let reply = self
            .send("GET", &format!("/v1/rollouts/{name}"), None, None)
            .await;
        self.expect(&format!("get rollout {name}"), reply, 200)
    }

    /// `POST /v1/rollouts/{name}/{action}` (pause, resume, promote, abort, finish); expects 200.
    pub async fn action(&self, name: &str, action: &str) -> RolloutView {
        let reply = self
            .send("POST", &format!("/v1/rollouts/{name}/{action}"), None, None)
            .await;
        self.expect(&format!("{action} rollout {name}"), reply, 200)
    }

    /// `PUT /v1/rollouts/{name}/weight` in basis points, with an optional `If-Match`; the raw
    /// answer.
    pub async fn put_weight(
        &self,
        name: &str,
        basis_points: u32,
        if_match: Option<&str>,
    ) -> ApiReply {
        let body = serde_json::json!({ "basisPoints": basis_points });
        self.send(
            "PUT",
            &format!("/v1/rollouts/{name}/weight"),
            Some(&body),
            if_match,
        )
        .await
    }

    /// `PUT /v1/rollouts/{name}/weight` in basis points; expects 200.
    pub async fn set_weight(&self, name: &str, basis_points: u32) -> RolloutView {
        let reply = self.put_weight(name, basis_points, None).await;
        self.expect(&format!("set weight of {name}"), reply, 200)
    }

    /// `POST /v1/routes/{route}/rules`; expects 201.
    pub async fn add_rule(&self, route: &str, rule: &serde_json::Value) -> RuleAdded {
        let reply = self
            .send(
                "POST",
                &format!("/v1/routes/{route}/rules"),
                Some(rule),
                None,
            )
            .await;
        self.expect(&format!("add rule to {route}"), reply, 201)
    }

    /// `GET /v1/routes`; expects 200.
    pub async fn routes(&self) -> RoutesView {
        let reply = self.send("GET", "/v1/routes", None, None).await;
        self.expect("get routes", reply, 200)
    }

    /// Polls the rollout every 50 ms until `done` holds, or panics after [`WAIT_TIMEOUT`] with
    /// its last status and the service log. `what` says what was awaited.
    pub async fn wait_for_rollout(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&RolloutView) -> bool,
    ) -> RolloutView {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let view = self.rollout(name).await;
            if done(&view) {
                return view;
            }
            if Instant::now() >= deadline {
                let status = serde_json::to_string_pretty(&view).unwrap_or_default();
                panic!(
                    "rollout {name}: not {what} after {WAIT_TIMEOUT:?}; last seen:\n{status}\n\
                     service log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether every watched proxy runs the generation carrying the rollout's current weight.
pub fn weight_applied(view: &RolloutView) -> bool {
    view.propagation.total > 0
        && view.propagation.applied == view.propagation.total
        && view.propagation.generation == view.rollout.status.weight_generation
}
