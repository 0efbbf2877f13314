//! A real Envoy running the standalone bootstrap with the filter delivered through the ECDS file.

use crate::paths;
use crate::prometheus;
use meshcanary_core::config::FilterConfig;
use meshcanary_core::ecds::{ecds_document, WasmDelivery};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A running Envoy; killed and reaped when dropped.
pub struct Envoy {
    child: Child,
    dir: TempDir,
    /// `http://127.0.0.1:<port>` of the HTTP listener.
    pub base_url: String,
    /// The listener's port.
    pub listen_port: u16,
    /// `http://127.0.0.1:<port>` of the admin interface.
    pub admin_url: String,
    ecds_path: PathBuf,
    delivery: WasmDelivery,
    http: reqwest::Client,
}

/// Renders `${NAME}` placeholders of the bootstrap template.
pub fn render(template: &str, values: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (name, value) in values {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    let unrendered = out
        .lines()
        .find(|line| !line.trim_start().starts_with('#') && line.contains("${"));
    assert!(
        unrendered.is_none(),
        "placeholder left in bootstrap: {unrendered:?}"
    );
    out
}

/// Writes the ECDS file the way the control service does (temp file, fsync, rename), so a test
/// push is delivered exactly like a real one.
fn write_atomically(path: &Path, contents: &str) -> std::io::Result<()> {
    meshcanary_control::atomic_file::write_atomically(path, contents.as_bytes())
}

impl Envoy {
    /// Starts Envoy (2 workers) in front of upstreams on `ports` (v1, v2, v3) with `config` in the
    /// ECDS file, and waits until the listener is up and the filter runs that config's generation.
    pub async fn start(ports: [u16; 3], config: &FilterConfig) -> Envoy {
        Envoy::start_on(ports, config, 0, 0).await
    }

    /// Like [`Envoy::start`], with the listener on `listen_port` and the admin interface on
    /// `admin_port` (0: any free port).
    pub async fn start_on(
        ports: [u16; 3],
        config: &FilterConfig,
        listen_port: u16,
        admin_port: u16,
    ) -> Envoy {
        Envoy::start_with(ports, config, listen_port, admin_port, None).await
    }

    /// Like [`Envoy::start`], tracing every request to the Zipkin collector on `zipkin_port`.
    pub async fn start_traced(ports: [u16; 3], config: &FilterConfig, zipkin_port: u16) -> Envoy {
        Envoy::start_with(ports, config, 0, 0, Some(zipkin_port)).await
    }

    async fn start_with(
        ports: [u16; 3],
        config: &FilterConfig,
        listen_port: u16,
        admin_port: u16,
        zipkin_port: Option<u16>,
    ) -> Envoy {
        let dir = tempfile::tempdir().expect("temp dir");
        let ecds_path = dir.path().join("meshcanary.ecds.json");
        let delivery = WasmDelivery {
            name: "meshcanary".into(),
            wasm_path: paths::filter_wasm().display().to_string(),
            fail_open: true,
        };
        write_atomically(&ecds_path, &ecds_document(&delivery, config)).expect("write ECDS file");
        let template = std::fs::read_to_string(paths::standalone_bootstrap())
            .expect("read bootstrap template");
        let bootstrap = render(
            &template,
            &[
                ("LISTEN_PORT", listen_port.to_string()),
                ("ADMIN_PORT", admin_port.to_string()),
                ("ECDS_PATH", ecds_path.display().to_string()),
                ("V1_PORT", ports[0].to_string()),
                ("V2_PORT", ports[1].to_string()),
                ("V3_PORT", ports[2].to_string()),
                // Untraced: no span is sampled, so nothing is ever sent to the collector port
                // (9, discard, where nothing listens on loopback).
                (
                    "TRACE_PERCENT",
                    if zipkin_port.is_some() { "100" } else { "0" }.to_string(),
                ),
                ("ZIPKIN_PORT", zipkin_port.unwrap_or(9).to_string()),
            ],
        );
        let bootstrap_path = dir.path().join("envoy.yaml");
        std::fs::write(&bootstrap_path, bootstrap).expect("write bootstrap");
        let admin_path = dir.path().join("admin-address");
        let log = std::fs::File::create(dir.path().join("envoy.log")).expect("log file");
        let child = Command::new(paths::envoy_bin())
            .arg("-c")
            .arg(&bootstrap_path)
            .args(["--disable-hot-restart", "--concurrency", "2", "-l", "info"])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start envoy");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        let mut envoy = Envoy {
            child,
            dir,
            base_url: String::new(),
            listen_port: 0,
            admin_url: String::new(),
            ecds_path,
            delivery,
            http,
        };
        envoy.wait_until_ready(&admin_path).await;
        envoy.wait_for_generation(config.generation).await;
        envoy
    }

    async fn wait_until_ready(&mut self, admin_path: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("envoy exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "envoy not ready after 60 s:\n{}",
                self.log()
            );
            if self.admin_url.is_empty() {
                if let Ok(address) = std::fs::read_to_string(admin_path) {
                    if !address.trim().is_empty() {
                        self.admin_url = format!("http://{}", address.trim());
                    }
                }
            }
            if !self.admin_url.is_empty() {
                if let Some(port) = self.listener_port().await {
                    self.listen_port = port;
                    self.base_url = format!("http://127.0.0.1:{port}");
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn listener_port(&self) -> Option<u16> {
        let ready = self
            .http
            .get(format!("{}/ready", self.admin_url))
            .send()
            .await
            .ok()?;
        if !ready.status().is_success() {
            return None;
        }
        let text = self
            .http
            .get(format!("{}/listeners?format=json", self.admin_url))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        let port = json["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
            .as_u64()?;
        u16::try_from(port).ok().filter(|p| *p != 0)
    }

    /// Replaces the filter config the way a pusher does: rewrite the ECDS file atomically.
    pub fn push(&self, config: &FilterConfig) {
        write_atomically(&self.ecds_path, &ecds_document(&self.delivery, config))
            .expect("write ECDS file");
    }

    /// Writes a raw pluginConfig string (possibly invalid) into the ECDS file.
    pub fn push_raw(&self, generation: u64, plugin_config: &str) {
        let valid = FilterConfig {
            generation,
            ..FilterConfig::default()
        };
        let document = ecds_document(&self.delivery, &valid).replace(
            &serde_json::to_string(&valid.to_json()).expect("json string"),
            &serde_json::to_string(plugin_config).expect("json string"),
        );
        write_atomically(&self.ecds_path, &document).expect("write ECDS file");
    }

    /// `/stats/prometheus`.
    pub async fn stats(&self) -> String {
        self.http
            .get(format!("{}/stats/prometheus", self.admin_url))
            .send()
            .await
            .expect("admin reachable")
            .text()
            .await
            .expect("stats body")
    }

    /// One series (summed over label sets that include `labels`), 0 if absent.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        prometheus::value(&self.stats().await, name, labels).unwrap_or(0.0)
    }

    /// Polls until `metric(name, labels)` satisfies `done`, or panics after `timeout` with the last value.
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

    /// Waits until the filter reports `generation` as the config in force.
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

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// The ECDS file this Envoy watches; whoever else pushes (the control service) writes it.
    pub fn ecds_path(&self) -> &Path {
        &self.ecds_path
    }

    /// The Envoy process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file Envoy logs to.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("envoy.log")
    }

    /// URL of `path` on the listener.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
