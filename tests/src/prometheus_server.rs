//! A real Prometheus server (Debian's package, `/usr/bin/prometheus`) scraping a harness
//! [`Envoy`]'s `/stats/prometheus` every second, for tests of the control service's Prometheus
//! observer. It listens on a loopback port, keeps its TSDB in a temp dir, and is killed and
//! reaped when dropped.

use crate::envoy::Envoy;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The scrape job's name (the `job` label of every series).
pub const JOB: &str = "envoy";

/// How long [`PrometheusServer::start`] waits for readiness and for the first scrape.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Prometheus; killed and reaped when dropped.
pub struct PrometheusServer {
    child: Option<Child>,
    dir: TempDir,
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    http: reqwest::Client,
}

/// The Prometheus binary: `$PROMETHEUS_BIN`, else Debian's `/usr/bin/prometheus`, else the first
/// `prometheus` on `PATH`.
pub fn prometheus_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("PROMETHEUS_BIN") {
        return PathBuf::from(path);
    }
    let debian = PathBuf::from("/usr/bin/prometheus");
    if debian.is_file() {
        return debian;
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("prometheus"))
            .find(|candidate| candidate.is_file())
    });
    match on_path {
        Some(path) => path,
        None => panic!(
            "no prometheus binary (PROMETHEUS_BIN, /usr/bin/prometheus or PATH): run make test (installs Debian's prometheus)"
        ),
    }
}

impl PrometheusServer {
    /// Starts Prometheus scraping `envoy`'s admin `/stats/prometheus` every second, and waits
    /// until it is ready and has scraped the filter's stats once.
    pub async fn start(envoy: &Envoy) -> PrometheusServer {
        PrometheusServer::start_labelled(envoy, &[]).await
    }

    /// Like [`PrometheusServer::start`], adding `labels` to every series scraped from `envoy` —
    /// what Istio's scrape of a sidecar adds (`app`, `namespace`, `pod`…).
    pub async fn start_labelled(envoy: &Envoy, labels: &[(&str, &str)]) -> PrometheusServer {
        let binary = prometheus_bin();
        let dir = tempfile::tempdir().expect("temp dir");
        let target = envoy
            .admin_url
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let labels: String = labels
            .iter()
            .map(|(name, value)| format!("      {name}: '{value}'\n"))
            .collect();
        let labels = match labels.is_empty() {
            true => String::new(),
            false => format!("    labels:\n{labels}"),
        };
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n- job_name: {JOB}\n  metrics_path: /stats/prometheus\n  \
             static_configs:\n  - targets: ['{target}']\n{labels}"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write prometheus.yml");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        let mut server = PrometheusServer {
            child: None,
            dir,
            base_url: String::new(),
            http,
        };
        // A port found free can be taken before Prometheus binds it; such a start fails fast.
        for attempt in 1.. {
            let port = free_port();
            server.base_url = format!("http://127.0.0.1:{port}");
            server.spawn(&binary, port);
            match server.wait_until_ready().await {
                Ok(()) => break,
                Err(status) if attempt < 3 => {
                    eprintln!(
                        "prometheus on port {port} exited ({status}); retrying on another port"
                    )
                }
                Err(status) => panic!("prometheus exited with {status}:\n{}", server.log()),
            }
        }
        server.wait_for_scrape().await;
        server
    }

    fn spawn(&mut self, binary: &Path, port: u16) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("prometheus.log"))
            .expect("prometheus log file");
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                self.dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("prometheus log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "start {}: {error} (run make test (installs Debian's prometheus))",
                    binary.display()
                )
            });
        self.child = Some(child);
    }

    /// Polls `/-/ready` until 200; `Err` with the exit status if the process ends first.
    async fn wait_until_ready(&mut self) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(status);
                }
            }
            let ready = self
                .http
                .get(format!("{}/-/ready", self.base_url))
                .send()
                .await;
            if ready.as_ref().is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after {START_TIMEOUT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a scrape of Envoy succeeded and brought the filter's generation gauge.
    pub async fn wait_for_scrape(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let up = self.query(&format!("up{{job=\"{JOB}\"}} == 1")).await;
            let generation = self.query(meshcanary_core::stats::GENERATION).await;
            let scraped = |result: &Result<Vec<serde_json::Value>, String>| {
                result.as_ref().is_ok_and(|samples| !samples.is_empty())
            };
            if scraped(&up) && scraped(&generation) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus has not scraped Envoy after {START_TIMEOUT:?} (up: {up:?}, generation: {generation:?}):\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An instant query: the `data.result` samples, or why there are none.
    pub async fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let url = format!("{}/api/v1/query?query={}", self.base_url, encode(promql));
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let text = response.text().await.map_err(|e| e.to_string())?;
        let body: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        if body["status"] != "success" {
            return Err(text);
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Prometheus' log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Percent-encodes a query parameter value (everything but unreserved characters).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("find a free port")
        .port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_promql() {
        assert_eq!(
            encode("up{job=\"envoy\"} == 1"),
            "up%7Bjob%3D%22envoy%22%7D%20%3D%3D%201"
        );
    }
}
