//! A proxy between one client and the real API server, for the interleavings a busy cluster
//! produces but a test cannot time: another client's write landing between our read and our
//! write ([`Interposer::before_next`]), or an answer that arrives late, after answers to later
//! requests ([`Interposer::hold`]). It changes nothing else: requests go on as sent (the
//! client's own token included) over TLS to the server, answers come back streamed (watches
//! too), and every request is logged with the server's status ([`Interposer::requests`]).
//!
//! Clients reach it over plain HTTP on loopback: give them a kubeconfig with its URL
//! ([`crate::envtest::Envtest::kubeconfig`] with `server`).

use crate::envtest::Envtest;
use crate::LocalServer;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Picks requests by method and path.
pub type Matcher = Box<dyn Fn(&Method, &str) -> bool + Send + Sync>;
/// Work to do before a matching request is forwarded.
pub type Hook = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;
/// For each request, whether to hold its answer back and for how long.
pub type HoldRule = Box<dyn Fn(&Method, &str) -> Option<Duration> + Send + Sync>;

/// One request that went through, with the server's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// `GET`, `PATCH`…
    pub method: String,
    /// The path.
    pub path: String,
    /// The query string (`""` if none).
    pub query: String,
    /// The server's status code (502 if it could not be reached).
    pub status: u16,
}

#[derive(Default)]
struct Rules {
    before: VecDeque<(Matcher, Hook)>,
    hold: Option<HoldRule>,
    log: Vec<Logged>,
}

struct Shared {
    upstream: kube::Client,
    rules: Mutex<Rules>,
    held: mpsc::UnboundedSender<String>,
}

/// The running proxy; dropping it stops it.
pub struct Interposer {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    shared: Arc<Shared>,
    held: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    _server: LocalServer,
}

impl Interposer {
    /// Starts a proxy to `envtest`'s API server on an ephemeral loopback port.
    pub async fn start(envtest: &Envtest) -> Interposer {
        // Trusts the server's certificate and carries no credentials of its own: each request
        // keeps the Authorization header its client sent.
        let kubeconfig = tempfile::NamedTempFile::new().expect("a temporary file");
        std::fs::write(kubeconfig.path(), envtest.kubeconfig("", None, None))
            .expect("write the proxy's kubeconfig");
        let mut file = kube::config::Kubeconfig::read_from(kubeconfig.path())
            .expect("read the proxy's kubeconfig");
        for user in &mut file.auth_infos {
            user.auth_info = None;
        }
        let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
            .await
            .expect("the proxy's client config");
        let upstream = kube::Client::try_from(config).expect("the proxy's client");
        let (held_tx, held_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            upstream,
            rules: Mutex::new(Rules::default()),
            held: held_tx,
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let server = LocalServer::start(app).await;
        Interposer {
            url: server.url.clone(),
            shared,
            held: tokio::sync::Mutex::new(held_rx),
            _server: server,
        }
    }

    fn rules(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.shared.rules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `hook` (for example another client's write, through its own connection) just before
    /// the next request with `method` whose path contains `path_part` is forwarded. Hooks queue
    /// up: each runs once, for the next matching request after the ones before it.
    pub fn before_next<F>(
        &self,
        method: Method,
        path_part: &str,
        hook: impl FnOnce() -> F + Send + 'static,
    ) where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let path_part = path_part.to_string();
        let matcher: Matcher = Box::new(move |m, path| *m == method && path.contains(&path_part));
        let hook: Hook = Box::new(move || Box::pin(hook()));
        self.rules().before.push_back((matcher, hook));
    }

    /// Holds back answers to the requests `rule` picks, for as long as it says (the request is
    /// forwarded at once; only the answer's delivery waits).
    pub fn hold(&self, rule: impl Fn(&Method, &str) -> Option<Duration> + Send + Sync + 'static) {
        self.rules().hold = Some(Box::new(rule));
    }

    /// Waits until an answer is being held back; returns `METHOD path` of its request.
    pub async fn next_held(&self) -> String {
        self.held
            .lock()
            .await
            .recv()
            .await
            .expect("the proxy is running")
    }

    /// Every request so far, in the order they were answered.
    pub fn requests(&self) -> Vec<Logged> {
        self.rules().log.clone()
    }

    /// The requests with `method` on paths containing `path_part`, watches left out.
    pub fn requests_to(&self, method: &str, path_part: &str) -> Vec<Logged> {
        self.requests()
            .into_iter()
            .filter(|r| {
                r.method == method && r.path.contains(path_part) && !r.query.contains("watch=")
            })
            .collect()
    }
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let hook = {
        let mut rules = shared.rules.lock().unwrap_or_else(|e| e.into_inner());
        let at = rules
            .before
            .iter()
            .position(|(matcher, _)| matcher(&parts.method, &path));
        at.and_then(|at| rules.before.remove(at))
            .map(|(_, hook)| hook)
    };
    if let Some(hook) = hook {
        hook().await;
    }
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return (StatusCode::BAD_REQUEST, "unreadable body").into_response();
    };
    let mut outgoing = http::Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    for (name, value) in &parts.headers {
        if name != http::header::HOST && name != http::header::CONTENT_LENGTH {
            outgoing = outgoing.header(name, value);
        }
    }
    let Ok(outgoing) = outgoing.body(kube::client::Body::from(bytes.to_vec())) else {
        return (StatusCode::BAD_REQUEST, "unforwardable request").into_response();
    };
    let hold = shared
        .rules
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .hold
        .as_ref()
        .and_then(|rule| rule(&parts.method, &path));
    let answer = shared.upstream.send(outgoing).await;
    let status = answer
        .as_ref()
        .map_or(StatusCode::BAD_GATEWAY.as_u16(), |r| r.status().as_u16());
    shared
        .rules
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .log
        .push(Logged {
            method: parts.method.to_string(),
            path: path.clone(),
            query,
            status,
        });
    let upstream = match answer {
        Ok(response) => response,
        Err(error) => return (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    };
    let (head, body) = upstream.into_parts();
    let body = match hold {
        Some(delay) => {
            use http_body_util::BodyExt;
            let bytes = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(error) => return (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
            };
            let _ = shared.held.send(format!("{} {path}", parts.method));
            tokio::time::sleep(delay).await;
            Body::from(bytes)
        }
        None => Body::new(body),
    };
    let mut response = Response::builder().status(head.status);
    for (name, value) in &head.headers {
        if ![
            http::header::CONTENT_LENGTH,
            http::header::TRANSFER_ENCODING,
            http::header::CONNECTION,
        ]
        .contains(name)
        {
            response = response.header(name, value);
        }
    }
    response
        .body(body)
        .unwrap_or_else(|error| (StatusCode::BAD_GATEWAY, error.to_string()).into_response())
}
