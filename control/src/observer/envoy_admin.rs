//! Reads the filter's stats straight from Envoy admin endpoints (`/stats/prometheus`).

use super::{MetricsObserver, ObserveError, ProxyGeneration};
use crate::analysis::{
    parse_envoy_stats, parse_mirror_stats, AnalysisError, MirrorCounters, Snapshot,
};
use async_trait::async_trait;
use meshcanary_core::stats::GENERATION;
use std::time::Duration;

/// Why an Envoy admin endpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EnvoyAdminError {
    /// No answer, or the answer's body could not be read.
    #[error("cannot read {url}: {source}")]
    Unreachable {
        /// The stats URL.
        url: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// Envoy answered with a status other than 2xx.
    #[error("cannot read {url}: answered {status}")]
    Status {
        /// The stats URL.
        url: String,
        /// Its answer.
        status: reqwest::StatusCode,
    },
    /// The stats have no filter config generation: the filter is not loaded, or not yet.
    #[error("no {} at {endpoint}: is the meshcanary filter loaded?", GENERATION)]
    NoGeneration {
        /// The admin endpoint.
        endpoint: String,
    },
    /// The stats text could not be understood.
    #[error("{endpoint}: {source}")]
    Stats {
        /// The admin endpoint.
        endpoint: String,
        /// What is wrong with the text.
        #[source]
        source: AnalysisError,
    },
}

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
    async fn stats(&self, endpoint: &str, filter: &str) -> Result<String, EnvoyAdminError> {
        let url = format!("{endpoint}/stats/prometheus?filter={filter}");
        let response = match self.client.get(&url).send().await {
            Ok(response) => response,
            Err(source) => return Err(EnvoyAdminError::Unreachable { url, source }),
        };
        let status = response.status();
        if !status.is_success() {
            return Err(EnvoyAdminError::Status { url, status });
        }
        response
            .text()
            .await
            .map_err(|source| EnvoyAdminError::Unreachable { url, source })
    }

    async fn generation(&self, endpoint: &str) -> Result<u64, EnvoyAdminError> {
        let text = self.stats(endpoint, GENERATION).await?;
        parse_gauge(&text, GENERATION).ok_or_else(|| EnvoyAdminError::NoGeneration {
            endpoint: endpoint.to_string(),
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
    async fn snapshots(&self, route: &str) -> Result<Vec<(String, Snapshot)>, ObserveError> {
        let mut out = Vec::with_capacity(self.endpoints.len());
        for endpoint in &self.endpoints {
            let text = self.stats(endpoint, "meshcanary_").await?;
            let snapshot =
                parse_envoy_stats(&text, route).map_err(|source| EnvoyAdminError::Stats {
                    endpoint: endpoint.clone(),
                    source,
                })?;
            out.push((endpoint.clone(), snapshot));
        }
        Ok(out)
    }

    async fn mirrored(
        &self,
        route: &str,
        variant: &str,
    ) -> Result<Option<MirrorCounters>, ObserveError> {
        let mut total = MirrorCounters::default();
        for endpoint in &self.endpoints {
            // Matches the filter's `meshcanary_mirrored_total` and the `<route>-<variant>-mirror`
            // cluster's stats alike.
            let text = self.stats(endpoint, "mirror").await?;
            let counters = parse_mirror_stats(&text, route, variant).map_err(|source| {
                EnvoyAdminError::Stats {
                    endpoint: endpoint.clone(),
                    source,
                }
            })?;
            total = total + counters;
        }
        Ok(Some(total))
    }

    fn describe(&self) -> String {
        format!("Envoy admin {}", self.endpoints.join(", "))
    }

    async fn generations(&self) -> Vec<ProxyGeneration> {
        let mut answers = Vec::with_capacity(self.endpoints.len());
        for endpoint in &self.endpoints {
            let (generation, error) = match self.generation(endpoint).await {
                Ok(generation) => (Some(generation), None),
                // The answer is shown in the rollouts' propagation: a person reads it.
                Err(error) => (None, Some(error.to_string())),
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
