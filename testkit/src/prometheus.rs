//! Prometheus: reading single series out of the text format (Envoy's `/stats/prometheus`), and a
//! real Prometheus server (Debian's package, `/usr/bin/prometheus`) scraping an Envoy's admin
//! endpoint every second, for tests of the control service's Prometheus observer. The server
//! listens on a loopback port, keeps its TSDB in a temp dir, and is killed and reaped when dropped.

use crate::error::Result;
use crate::paths;
use crate::process::Process;
use std::process::Command;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The scrape job's name (the `job` label of every series).
pub const JOB: &str = "envoy";

/// How long [`PrometheusServer::start`] waits for readiness and for the first scrape.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The value of the series `name` whose labels include every pair in `labels` (other labels may be
/// present). Sums over all matching series, so `&[]` gives the total over every label set.
/// `None` if no series matches.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, number)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let all_present = labels.iter().all(|(key, wanted)| {
            series_labels
                .split(',')
                .any(|pair| pair == format!("{key}=\"{wanted}\""))
        });
        if all_present {
            if let Ok(number) = number.parse::<f64>() {
                *total.get_or_insert(0.0) += number;
            }
        }
    }
    total
}

/// A running Prometheus; killed and reaped when dropped.
pub struct PrometheusServer {
    process: Process,
    /// Its config and TSDB; removed once the process is gone (fields drop in order).
    _dir: TempDir,
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    http: reqwest::Client,
}

impl PrometheusServer {
    /// Starts Prometheus scraping `/stats/prometheus` at `admin_url` (an Envoy's admin interface)
    /// every second, and waits until it is ready and has scraped the filter's stats once.
    /// Panics if it does not.
    pub async fn start(admin_url: &str) -> PrometheusServer {
        PrometheusServer::start_labelled(admin_url, &[]).await
    }

    /// Like [`PrometheusServer::start`], adding `labels` to every series scraped from
    /// `admin_url` — what Istio's scrape of a sidecar adds (`app`, `namespace`, `pod`…).
    pub async fn start_labelled(admin_url: &str, labels: &[(&str, &str)]) -> PrometheusServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let target = admin_url
            .trim_start_matches("http://")
            .trim_end_matches('/');
        std::fs::write(
            dir.path().join("prometheus.yml"),
            scrape_config(target, labels),
        )
        .expect("write prometheus.yml");
        let (process, base_url) =
            crate::on_free_port(async |port| PrometheusServer::spawn(dir.path(), port).await)
                .await
                .unwrap_or_else(|error| panic!("{error} (make test installs Debian's prometheus)"));
        let server = PrometheusServer {
            process,
            _dir: dir,
            base_url,
            http: crate::http_client(Duration::from_secs(5)),
        };
        server.wait_for_scrape().await;
        server
    }

    /// Starts Prometheus on `port` with the config in `dir` and waits until `/-/ready` answers;
    /// the process and its URL.
    async fn spawn(dir: &std::path::Path, port: u16) -> Result<(Process, String)> {
        let binary = paths::prometheus_bin();
        let mut command = Command::new(&binary);
        command
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let what = format!("prometheus ({})", binary.display());
        let process = Process::spawn_logged(&mut command, &what, &dir.join("prometheus.log"))?;
        let base_url = format!("http://127.0.0.1:{port}");
        let http = crate::http_client(Duration::from_secs(5));
        let ready = format!("{base_url}/-/ready");
        process
            .wait_ready(START_TIMEOUT, async || {
                match http.get(&ready).send().await {
                    Ok(response) if response.status().is_success() => Ok(()),
                    Ok(response) => Err(format!("/-/ready: {}", response.status())),
                    Err(error) => Err(format!("/-/ready: {error}")),
                }
            })
            .await?;
        Ok((process, base_url))
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
        self.process.log()
    }
}

/// A scrape of `target` (`host:port`) every second under job [`JOB`], adding `labels`.
fn scrape_config(target: &str, labels: &[(&str, &str)]) -> String {
    let labels: String = labels
        .iter()
        .map(|(name, value)| format!("      {name}: '{value}'\n"))
        .collect();
    let labels = if labels.is_empty() {
        String::new()
    } else {
        format!("    labels:\n{labels}")
    };
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
         scrape_configs:\n- job_name: {JOB}\n  metrics_path: /stats/prometheus\n  \
         static_configs:\n  - targets: ['{target}']\n{labels}"
    )
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

    #[test]
    fn finds_and_sums_series() {
        let text = "# TYPE m counter\nm{route=\"r\",variant=\"a\"} 2\nm{route=\"r\",variant=\"b\"} 3\nother 1\nm_bucket{le=\"1\"} 9\n";
        assert_eq!(value(text, "m", &[("variant", "a")]), Some(2.0));
        assert_eq!(value(text, "m", &[("route", "r")]), Some(5.0));
        assert_eq!(value(text, "m", &[("variant", "c")]), None);
        assert_eq!(value(text, "other", &[]), Some(1.0));
    }
}
