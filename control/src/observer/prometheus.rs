//! Reads the filter's stats through the Prometheus HTTP API (`/api/v1/query`), for meshes where
//! Prometheus already scrapes the sidecars. Each series is one proxy (told apart by the labels
//! Prometheus adds, `instance` and `pod`), so counter resets are handled per proxy exactly as with
//! the Envoy admin observer.

use super::{MetricsObserver, ObserveError, ProxyGeneration};
use crate::analysis::{Snapshot, VariantCounters};
use async_trait::async_trait;
use meshcanary_core::stats::{DURATION_MS, GENERATION, REQUESTS, RESPONSES};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Why a Prometheus query gave no samples to use.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    /// No answer.
    #[error("cannot query {url}: {source}")]
    Unreachable {
        /// The query endpoint.
        url: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The answer is not the query API's JSON (a proxy's error page, a wrong URL).
    #[error("{url} answered {status} with an unreadable body: {source}")]
    Unreadable {
        /// The query endpoint.
        url: String,
        /// The answer's status.
        status: reqwest::StatusCode,
        /// Why the body could not be read.
        #[source]
        source: reqwest::Error,
    },
    /// Prometheus refused the query, and said why.
    #[error("{url} refused {promql:?}: {reason}")]
    Refused {
        /// The query endpoint.
        url: String,
        /// The query.
        promql: String,
        /// Prometheus's `error`.
        reason: String,
    },
    /// A successful answer without `data`.
    #[error("{url}: no data for {promql:?}")]
    NoData {
        /// The query endpoint.
        url: String,
        /// The query.
        promql: String,
    },
    /// The answer is not an instant vector.
    #[error("{url}: expected a vector for {promql:?}, got {result_type}")]
    NotVector {
        /// The query endpoint.
        url: String,
        /// The query.
        promql: String,
        /// What it was instead.
        result_type: String,
    },
}

/// Queries a Prometheus server.
pub struct PrometheusObserver {
    base_url: String,
    client: reqwest::Client,
}

#[derive(Debug, Deserialize)]
struct QueryResponse {
    status: String,
    #[serde(default)]
    data: Option<QueryData>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueryData {
    result_type: String,
    result: Vec<Sample>,
}

/// One series of an instant vector.
#[derive(Debug, Clone, Deserialize)]
struct Sample {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

impl Sample {
    fn number(&self) -> Option<f64> {
        self.value
            .1
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() || v.is_infinite())
    }

    /// Which proxy the series came from.
    fn proxy(&self) -> String {
        ["pod", "instance"]
            .iter()
            .filter_map(|label| self.metric.get(*label).map(|v| format!("{label}={v}")))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl PrometheusObserver {
    /// Queries the Prometheus at `base_url` (e.g. `http://prometheus:9090`).
    pub fn new(base_url: &str) -> PrometheusObserver {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        PrometheusObserver {
            base_url: base_url.trim_end_matches('/').to_string(),
            client,
        }
    }

    async fn query(&self, promql: &str) -> Result<Vec<Sample>, PrometheusError> {
        let url = format!("{}/api/v1/query", self.base_url);
        let request = self.client.get(&url).query(&[("query", promql)]);
        let response = match request.send().await {
            Ok(response) => response,
            Err(source) => return Err(PrometheusError::Unreachable { url, source }),
        };
        let status = response.status();
        let body: QueryResponse = match response.json().await {
            Ok(body) => body,
            Err(source) => {
                return Err(PrometheusError::Unreadable {
                    url,
                    status,
                    source,
                })
            }
        };
        if body.status != "success" {
            return Err(PrometheusError::Refused {
                url,
                promql: promql.to_string(),
                reason: body.error.unwrap_or_default(),
            });
        }
        let Some(data) = body.data else {
            return Err(PrometheusError::NoData {
                url,
                promql: promql.to_string(),
            });
        };
        if data.result_type != "vector" {
            return Err(PrometheusError::NotVector {
                url,
                promql: promql.to_string(),
                result_type: data.result_type,
            });
        }
        Ok(data.result)
    }
}

/// The counters of the sample's proxy and variant.
fn counters<'a>(
    proxies: &'a mut BTreeMap<String, Snapshot>,
    sample: &Sample,
) -> Option<&'a mut VariantCounters> {
    let variant = sample.metric.get("variant")?.clone();
    Some(
        proxies
            .entry(sample.proxy())
            .or_default()
            .variants
            .entry(variant)
            .or_default(),
    )
}

/// Builds per-proxy snapshots from the samples of the five queries.
fn snapshots_from(
    requests: &[Sample],
    responses: &[Sample],
    buckets: &[Sample],
    counts: &[Sample],
    sums: &[Sample],
) -> Vec<(String, Snapshot)> {
    let mut proxies: BTreeMap<String, Snapshot> = BTreeMap::new();
    let whole = |v: f64| {
        if v.is_finite() && v >= 0.0 {
            v.round() as u64
        } else {
            0
        }
    };
    for sample in requests {
        if let (Some(value), Some(c)) = (sample.number(), counters(&mut proxies, sample)) {
            c.requests += whole(value);
        }
    }
    for sample in responses {
        let class = sample.metric.get("class").cloned();
        if let (Some(value), Some(class), Some(c)) =
            (sample.number(), class, counters(&mut proxies, sample))
        {
            *c.responses.entry(class).or_default() += whole(value);
        }
    }
    for sample in buckets {
        let le = sample.metric.get("le").and_then(|le| match le.as_str() {
            "+Inf" => Some(f64::INFINITY),
            other => other.parse::<f64>().ok(),
        });
        if let (Some(value), Some(le), Some(c)) =
            (sample.number(), le, counters(&mut proxies, sample))
        {
            c.duration_buckets.push((le, whole(value)));
        }
    }
    for sample in counts {
        if let (Some(value), Some(c)) = (sample.number(), counters(&mut proxies, sample)) {
            c.duration_count += whole(value);
        }
    }
    for sample in sums {
        if let (Some(value), Some(c)) = (sample.number(), counters(&mut proxies, sample)) {
            c.duration_sum += value;
        }
    }
    for snapshot in proxies.values_mut() {
        for counters in snapshot.variants.values_mut() {
            counters
                .duration_buckets
                .sort_by(|a, b| a.0.total_cmp(&b.0));
        }
    }
    proxies.into_iter().collect()
}

#[async_trait]
impl MetricsObserver for PrometheusObserver {
    async fn generations(&self) -> Vec<ProxyGeneration> {
        match self.query(GENERATION).await {
            // No series is no answer: before the first scrape, or once the proxies' series went
            // stale, nothing says the config arrived.
            Ok(samples) if samples.is_empty() => vec![ProxyGeneration {
                proxy: self.base_url.clone(),
                generation: None,
                error: Some(format!("no {GENERATION} series in Prometheus yet")),
            }],
            Ok(samples) => samples
                .iter()
                .map(|sample| ProxyGeneration {
                    proxy: sample.proxy(),
                    generation: sample.number().map(|v| v as u64),
                    error: None,
                })
                .collect(),
            Err(error) => vec![ProxyGeneration {
                proxy: self.base_url.clone(),
                generation: None,
                error: Some(error.to_string()),
            }],
        }
    }

    async fn snapshots(&self, route: &str) -> Result<Vec<(String, Snapshot)>, ObserveError> {
        // Route names are validated to letters, digits, '_' and '-': safe inside a PromQL string.
        let selector = format!("{{route=\"{route}\"}}");
        let requests = self.query(&format!("{REQUESTS}{selector}")).await?;
        let responses = self.query(&format!("{RESPONSES}{selector}")).await?;
        let buckets = self
            .query(&format!("{DURATION_MS}_bucket{selector}"))
            .await?;
        let counts = self
            .query(&format!("{DURATION_MS}_count{selector}"))
            .await?;
        let sums = self.query(&format!("{DURATION_MS}_sum{selector}")).await?;
        Ok(snapshots_from(
            &requests, &responses, &buckets, &counts, &sums,
        ))
    }

    fn describe(&self) -> String {
        format!("Prometheus {}", self.base_url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(labels: &[(&str, &str)], value: &str) -> Sample {
        Sample {
            metric: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value: (0.0, value.to_string()),
        }
    }

    #[test]
    fn groups_series_by_proxy_and_variant() {
        let a = ("instance", "10.0.0.1:15090");
        let b = ("instance", "10.0.0.2:15090");
        let requests = [
            sample(&[a, ("variant", "v2")], "10"),
            sample(&[b, ("variant", "v2")], "5"),
            sample(&[a, ("variant", "v1")], "90"),
        ];
        let responses = [
            sample(&[a, ("variant", "v2"), ("class", "5xx")], "2"),
            sample(&[a, ("variant", "v2"), ("class", "2xx")], "8"),
        ];
        let buckets = [
            sample(&[a, ("variant", "v2"), ("le", "+Inf")], "10"),
            sample(&[a, ("variant", "v2"), ("le", "5")], "7"),
        ];
        let counts = [sample(&[a, ("variant", "v2")], "10")];
        let sums = [sample(&[a, ("variant", "v2")], "42.5")];
        let out = snapshots_from(&requests, &responses, &buckets, &counts, &sums);
        assert_eq!(out.len(), 2);
        let (proxy, snapshot) = &out[0];
        assert_eq!(proxy, "instance=10.0.0.1:15090");
        let v2 = &snapshot.variants["v2"];
        assert_eq!((v2.requests, v2.failures(), v2.duration_count), (10, 2, 10));
        assert_eq!(v2.duration_buckets, vec![(5.0, 7), (f64::INFINITY, 10)]);
        assert_eq!(v2.duration_sum, 42.5);
        assert_eq!(out[1].1.variants["v2"].requests, 5);
    }

    #[tokio::test]
    async fn an_unreachable_prometheus_is_an_error() {
        let observer = PrometheusObserver::new("http://127.0.0.1:9/");
        assert!(observer
            .snapshots("reviews")
            .await
            .unwrap_err()
            .to_string()
            .contains("cannot query http://127.0.0.1:9/api/v1/query"));
        let generations = observer.generations().await;
        assert!(generations[0].error.is_some());
    }
}
