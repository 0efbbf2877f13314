//! A webhook receiver for rollout hooks: records every request (path, JSON body, when, what it
//! answered) and answers each path with the statuses the test sets — a fixed status, or a script
//! such as "503 once, then 200".

use crate::LocalServer;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct HookCall {
    /// The request path, e.g. `/confirm`.
    pub path: String,
    /// The HTTP method.
    pub method: String,
    /// The body as JSON (`Value::Null` if it was not JSON).
    pub body: serde_json::Value,
    /// When it arrived.
    pub at: Instant,
    /// The status it was answered with.
    pub answered: u16,
}

/// How a path answers: the statuses in `script` first, one per request, then `then`.
#[derive(Debug, Clone)]
struct Answer {
    script: VecDeque<u16>,
    then: u16,
}

#[derive(Default)]
struct Shared {
    answers: Mutex<HashMap<String, Answer>>,
    calls: Mutex<Vec<HookCall>>,
}

/// A running receiver on a loopback port; stops when dropped. Paths not configured answer 200.
pub struct HookServer {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    shared: Arc<Shared>,
    _server: LocalServer,
}

impl HookServer {
    /// Starts a receiver on a free loopback port.
    pub async fn start() -> HookServer {
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(shared.clone());
        let server = LocalServer::start(app).await;
        HookServer {
            base_url: server.url.clone(),
            shared,
            _server: server,
        }
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Answer every request to `path` with `status` from now on.
    pub fn answer(&self, path: &str, status: u16) {
        self.answer_script(path, &[], status);
    }

    /// Answer the next requests to `path` with `first`, one status per request, then `then`.
    pub fn answer_script(&self, path: &str, first: &[u16], then: u16) {
        let answer = Answer {
            script: first.iter().copied().collect(),
            then,
        };
        self.shared
            .answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_string(), answer);
    }

    /// Every request to `path` so far, oldest first.
    pub fn calls(&self, path: &str) -> Vec<HookCall> {
        self.shared
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|call| call.path == path)
            .cloned()
            .collect()
    }

    /// Polls until the requests to `path` satisfy `done`, or panics after `timeout` with what
    /// arrived. Returns them.
    pub async fn wait_for_calls(
        &self,
        path: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[HookCall]) -> bool,
    ) -> Vec<HookCall> {
        let deadline = Instant::now() + timeout;
        loop {
            let calls = self.calls(path);
            if done(&calls) {
                return calls;
            }
            if Instant::now() >= deadline {
                let bodies: Vec<String> = calls
                    .iter()
                    .map(|c| format!("{} {}: {}", c.answered, c.method, c.body))
                    .collect();
                panic!(
                    "hook {path}: not {what} after {timeout:?}; calls so far:\n{}",
                    bodies.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> StatusCode {
    let path = uri.path().to_string();
    let status = {
        let mut answers = shared.answers.lock().unwrap_or_else(|e| e.into_inner());
        match answers.get_mut(&path) {
            Some(answer) => answer.script.pop_front().unwrap_or(answer.then),
            None => 200,
        }
    };
    shared
        .calls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(HookCall {
            path,
            method: method.to_string(),
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            at: Instant::now(),
            answered: status,
        });
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
