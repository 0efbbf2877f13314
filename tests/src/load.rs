//! Sending real requests through Envoy: one at a time, many concurrently, or raw bytes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a request through Envoy came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Which upstream answered (its `x-upstream` header), if any did.
    pub upstream: Option<String>,
    /// The variant header the upstream saw (`-` if none).
    pub seen_variant: Option<String>,
    /// The filter's response header, if configured.
    pub decision: Option<String>,
}

/// A keep-alive HTTP client aimed at one Envoy listener.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base_url: Arc<str>,
}

impl Client {
    /// A client for `base_url` (e.g. `http://127.0.0.1:10000`).
    pub fn new(base_url: &str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(64)
                .build()
                .expect("http client"),
            base_url: base_url.into(),
        }
    }

    /// GET `path` with `headers`; the `host` header, if given, sets `:authority`.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        let mut request = self.http.get(format!("{}{path}", self.base_url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let reply = Reply {
            status: response.status().as_u16(),
            upstream: header("x-upstream"),
            seen_variant: header("x-seen-variant"),
            decision: header("x-meshcanary"),
        };
        response.bytes().await.map_err(|e| e.to_string())?;
        Ok(reply)
    }

    /// Sends `count` requests, `concurrency` at a time; request `i` carries `headers(i)`.
    /// Returns the replies in request order.
    pub async fn many(
        &self,
        count: usize,
        concurrency: usize,
        headers: impl Fn(usize) -> Vec<(String, String)> + Send + Sync + 'static,
    ) -> Vec<Result<Reply, String>> {
        let headers = Arc::new(headers);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let (client, headers, next) = (self.clone(), headers.clone(), next.clone());
            tasks.spawn(async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= count {
                        return out;
                    }
                    let owned = headers(i);
                    let borrowed: Vec<(&str, &str)> = owned
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    out.push((i, client.get("/", &borrowed).await));
                }
            });
        }
        let mut all: Vec<(usize, Result<Reply, String>)> = Vec::with_capacity(count);
        while let Some(done) = tasks.join_next().await {
            all.extend(done.expect("load task"));
        }
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, reply)| reply).collect()
    }
}

/// How many replies came from each upstream (`"error"` for failed requests, `"none"` for replies
/// without an upstream).
pub fn tally(replies: &[Result<Reply, String>]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for reply in replies {
        let key = match reply {
            Ok(reply) => reply.upstream.clone().unwrap_or_else(|| "none".into()),
            Err(_) => "error".into(),
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

/// Sends raw bytes on a new connection and returns everything the server sent back until it
/// closed the connection (send `connection: close`) or 5 s passed.
pub async fn raw_request(port: u16, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to envoy");
    stream.write_all(request).await.expect("send raw request");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    response
}
