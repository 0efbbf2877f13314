//! An HTTP proxy that holds back chosen answers: put it between a client and a server to make a
//! response arrive late, after other requests that were sent later have been answered — the
//! interleaving a slow network or a busy API server produces, made deterministic.
//!
//! The request is forwarded at once, so the server answers it in order with everything else;
//! only the answer's delivery is delayed. Everything else passes through unchanged, streamed
//! (watches included).

#![allow(dead_code)] // Each test binary uses a different part of it.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;

/// Decides, for each request (method and path), whether to hold its answer and for how long.
pub type Rule = dyn Fn(&Method, &str) -> Option<Duration> + Send + Sync;

struct Shared {
    upstream: String,
    client: reqwest::Client,
    rule: Box<Rule>,
    held: mpsc::UnboundedSender<String>,
}

/// The running proxy.
pub struct DelayProxy {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    held: Mutex<mpsc::UnboundedReceiver<String>>,
    task: JoinHandle<()>,
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DelayProxy {
    /// Starts a proxy to `upstream` (`http://host:port`) on an ephemeral loopback port; `rule`
    /// picks the answers to hold back.
    pub async fn start(
        upstream: &str,
        rule: impl Fn(&Method, &str) -> Option<Duration> + Send + Sync + 'static,
    ) -> DelayProxy {
        let (held_tx, held_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("a proxy client"),
            rule: Box::new(rule),
            held: held_tx,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let app = Router::new().fallback(forward).with_state(shared);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        DelayProxy {
            url,
            held: Mutex::new(held_rx),
            task,
        }
    }

    /// Waits until the next held answer has arrived from the server (and is being held back);
    /// returns `METHOD path` of its request.
    pub async fn next_held(&self) -> String {
        self.held
            .lock()
            .await
            .recv()
            .await
            .expect("the proxy is running")
    }
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return (StatusCode::BAD_REQUEST, "unreadable body").into_response();
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut outgoing = shared
        .client
        .request(
            parts.method.clone(),
            format!("{}{path_and_query}", shared.upstream),
        )
        .body(body);
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::CONTENT_LENGTH {
            outgoing = outgoing.header(name, value);
        }
    }
    let hold = (shared.rule)(&parts.method, parts.uri.path());
    let mut upstream = match outgoing.send().await {
        Ok(response) => response,
        Err(error) => return (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    };
    let mut response = Response::builder().status(upstream.status());
    for (name, value) in upstream.headers() {
        if ![
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::CONNECTION,
        ]
        .contains(name)
        {
            response = response.header(name, value);
        }
    }
    let body = match hold {
        Some(delay) => {
            let mut bytes = Vec::new();
            while let Ok(Some(chunk)) = upstream.chunk().await {
                bytes.extend_from_slice(&chunk);
            }
            let _ = shared
                .held
                .send(format!("{} {}", parts.method, parts.uri.path()));
            tokio::time::sleep(delay).await;
            Body::from(bytes)
        }
        None => Body::from_stream(futures::stream::unfold(upstream, |mut upstream| async {
            match upstream.chunk().await {
                Ok(Some(chunk)) => Some((Ok::<_, reqwest::Error>(chunk), upstream)),
                Ok(None) | Err(_) => None,
            }
        })),
    };
    response
        .body(body)
        .unwrap_or_else(|error| (StatusCode::BAD_GATEWAY, error.to_string()).into_response())
}
