//! Upstream HTTP servers standing in for the variants of a service. Each answers every request with
//! its own name in the `x-upstream` header and in the body (or, for a request with a body, that body
//! back), echoes the variant header it received in `x-seen-variant`, and can be told to fail or
//! slow down.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What an upstream does with a request; change it while it runs.
#[derive(Debug, Default)]
pub struct Behaviour {
    /// The status to answer with; 0 means 200.
    pub status: AtomicU16,
    /// Milliseconds to wait before answering.
    pub delay_ms: AtomicU64,
    /// Requests served so far.
    pub served: AtomicU64,
    /// Answer every n-th request with 500 (0: none); see [`Upstream::set_fail_every`].
    pub fail_every: AtomicU64,
}

struct Shared {
    name: String,
    behaviour: Arc<Behaviour>,
}

/// A running upstream on a loopback port; stops when dropped.
pub struct Upstream {
    /// The variant this upstream plays.
    pub name: String,
    /// Its loopback port.
    pub port: u16,
    /// Its behaviour, shared with the server.
    pub behaviour: Arc<Behaviour>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Starts an upstream called `name` on a free loopback port.
    pub async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let port = listener.local_addr().expect("upstream address").port();
        let behaviour = Arc::new(Behaviour::default());
        let shared = Arc::new(Shared {
            name: name.to_string(),
            behaviour: behaviour.clone(),
        });
        let app = axum::Router::new().fallback(serve).with_state(shared);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream {
            name: name.to_string(),
            port,
            behaviour,
            task,
        }
    }

    /// Answer every request with `status`.
    pub fn set_status(&self, status: u16) {
        self.behaviour.status.store(status, Ordering::SeqCst);
    }

    /// Wait `delay` before answering.
    pub fn set_delay(&self, delay: Duration) {
        self.behaviour
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Answer every `n`-th request with 500 (`20`: 5 % failures, spread evenly, so any 20
    /// requests in a row hold exactly one); `0` stops it. Requests not picked answer as usual.
    pub fn set_fail_every(&self, n: u64) {
        self.behaviour.fail_every.store(n, Ordering::SeqCst);
    }

    /// Requests served so far.
    pub fn served(&self) -> u64 {
        self.behaviour.served.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let behaviour = &shared.behaviour;
    let nth = behaviour.served.fetch_add(1, Ordering::SeqCst) + 1;
    let delay = behaviour.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let fail_every = behaviour.fail_every.load(Ordering::SeqCst);
    let status = match behaviour.status.load(Ordering::SeqCst) {
        _ if fail_every > 0 && nth % fail_every == 0 => StatusCode::INTERNAL_SERVER_ERROR,
        0 => StatusCode::OK,
        code => StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    };
    let seen = headers
        .get("x-meshcanary-variant")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("-"));
    let mut response = if body.is_empty() {
        (status, shared.name.clone()).into_response()
    } else {
        (status, body).into_response()
    };
    let out = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&shared.name) {
        out.insert("x-upstream", value);
    }
    out.insert("x-seen-variant", seen);
    response
}
