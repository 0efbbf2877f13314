//! A Zipkin collector for the tracing tests: accepts Zipkin v2 JSON (`POST /api/v2/spans`, a JSON
//! array of spans, what Envoy's Zipkin tracer sends with `collector_endpoint_version: HTTP_JSON`)
//! on a loopback port and keeps every span it gets.

use axum::extract::State;
use axum::http::StatusCode;
use meshcanary_testkit::LocalServer;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running collector; stops when dropped.
pub struct Collector {
    /// Its loopback port.
    pub port: u16,
    spans: Arc<Mutex<Vec<serde_json::Value>>>,
    _server: LocalServer,
}

impl Collector {
    /// Starts a collector on a free loopback port.
    pub async fn start() -> Collector {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/api/v2/spans", axum::routing::post(collect))
            .with_state(spans.clone());
        let server = LocalServer::start(app).await;
        Collector {
            port: server.addr.port(),
            spans,
            _server: server,
        }
    }

    /// The spans received so far.
    pub fn spans(&self) -> Vec<serde_json::Value> {
        self.spans.lock().expect("spans lock").clone()
    }

    /// Waits until at least `count` spans arrived (Envoy sends them in batches), or panics
    /// after `timeout` saying how many did.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if spans.len() >= count {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} spans after {timeout:?}",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn collect(
    State(spans): State<Arc<Mutex<Vec<serde_json::Value>>>>,
    body: axum::body::Bytes,
) -> StatusCode {
    match serde_json::from_slice::<Vec<serde_json::Value>>(&body) {
        Ok(batch) => {
            spans.lock().expect("spans lock").extend(batch);
            StatusCode::ACCEPTED
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}
