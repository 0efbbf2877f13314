//! Reads the filter's stats straight from Envoy admin endpoints (`/stats/prometheus`).

use super::{MetricsObserver, ProxyGeneration};
use crate::analysis::{parse_envoy_stats, Snapshot};
use async_trait::async_trait;
use meshcanary_core::stats::GENERATION;
use std::time::Duration;

/// Scrapes a fixed list of Envoy admin endpoints.
pub struct EnvoyAdminObserver {
    endpoints: Vec<String>,
    client: reqwest::Client,
}

impl EnvoyAdminObserver {
    /// Watches `endpoints` (e.g. `http://127.0.0.1:9901`).
    pub fn new(endpoints: Vec<String>) -> EnvoyAdminObserver {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        EnvoyAdminObserver {
            endpoints: endpoints
                .into_iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            client,
        }
    }

    /// The filter's stats whose names match `filter` (Envoy's regex on stat names).
    async fn stats(&self, endpoint: &str, filter: &str) -> Result<String, String> {
        let url = format!("{endpoint}/stats/prometheus?filter={filter}");
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("cannot read {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("cannot read {url}: answered {}", response.status()));
        }
        response
            .text()
            .await
            .map_err(|e| format!("cannot read {url}: {e}"))
    }

    async fn generation(&self, endpoint: &str) -> Result<u64, String> {
        let text = self.stats(endpoint, GENERATION).await?;
        parse_gauge(&text, GENERATION).ok_or_else(|| {
            format!("no {GENERATION} at {endpoint}: is the meshcanary filter loaded?")
        })
    }
}

/// The value of an unlabelled gauge in Prometheus text.
fn parse_gauge(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let series_name = series.split('{').next()?;
            (series_name == name).then(|| value.parse::<f64>().ok())?
        })
        .map(|value| value as u64)
}

#[async_trait]
impl MetricsObserver for EnvoyAdminObserver {
    async fn snapshots(&self, route: &str) -> Result<Vec<(String, Snapshot)>, String> {
        let mut out = Vec::with_capacity(self.endpoints.len());
        for endpoint in &self.endpoints {
            let text = self.stats(endpoint, "meshcanary_").await?;
            let snapshot =
                parse_envoy_stats(&text, route).map_err(|error| format!("{endpoint}: {error}"))?;
            out.push((endpoint.clone(), snapshot));
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        format!("Envoy admin {}", self.endpoints.join(", "))
    }

    async fn generations(&self) -> Vec<ProxyGeneration> {
        let mut answers = Vec::with_capacity(self.endpoints.len());
        for endpoint in &self.endpoints {
            let (generation, error) = match self.generation(endpoint).await {
                Ok(generation) => (Some(generation), None),
                Err(error) => (None, Some(error)),
            };
            answers.push(ProxyGeneration {
                proxy: endpoint.clone(),
                generation,
                error,
            });
        }
        answers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_gauge() {
        let text = "# TYPE meshcanary_config_generation gauge\nmeshcanary_config_generation{} 12\nother 3\n";
        assert_eq!(parse_gauge(text, GENERATION), Some(12));
        assert_eq!(parse_gauge("other 3\n", GENERATION), None);
        assert_eq!(
            parse_gauge("meshcanary_config_generation{} x\n", GENERATION),
            None
        );
    }

    #[tokio::test]
    async fn an_unreachable_proxy_is_reported_not_fatal() {
        let observer = EnvoyAdminObserver::new(vec!["http://127.0.0.1:9/".into()]);
        let answers = observer.generations().await;
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].proxy, "http://127.0.0.1:9");
        assert!(answers[0].generation.is_none() && answers[0].error.is_some());
    }
}
