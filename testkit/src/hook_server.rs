//! A webhook receiver for rollout hooks: records every request (path, JSON body, when, what it
//! answered) and answers each path with the statuses the test sets — a fixed status, or a script
//! such as "503 once, then 200".

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

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
    /// `Location` of paths that answer a redirect.
    locations: Mutex<HashMap<String, String>>,
    calls: Mutex<Vec<HookCall>>,
}

/// A running receiver on a loopback port; stops when dropped. Paths not configured answer 200.
pub struct HookServer {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl HookServer {
    /// Starts a receiver on a free loopback port.
    pub async fn start() -> HookServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind hook server");
        let port = listener.local_addr().expect("hook server address").port();
        HookServer::serve(listener, format!("http://127.0.0.1:{port}"))
    }

    /// Starts a receiver on a free loopback port that speaks TLS with the certificate chain and
    /// key in the PEM files `cert` and `key`; its base URL is `https://localhost:<port>`.
    pub async fn start_tls(cert: &Path, key: &Path) -> HookServer {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .expect("read the hook server's certificate");
        let key = PrivateKeyDer::from_pem_file(key).expect("read the hook server's key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
        .expect("the hook server's TLS config");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind hook server");
        let port = listener.local_addr().expect("hook server address").port();
        let listener = TlsListener {
            listener,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        };
        HookServer::serve(listener, format!("https://localhost:{port}"))
    }

    fn serve<L: axum::serve::Listener>(listener: L, base_url: String) -> HookServer
    where
        L::Addr: std::fmt::Debug,
    {
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HookServer {
            base_url,
            shared,
            task,
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

    /// Answer every request to `path` with the redirect `status` (3xx) to `location`.
    pub fn answer_redirect(&self, path: &str, status: u16, location: &str) {
        self.shared
            .locations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_string(), location.to_string());
        self.answer(path, status);
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

impl Drop for HookServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
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
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let location = shared
        .locations
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(uri.path())
        .cloned();
    match location {
        Some(location) if status.is_redirection() => {
            (status, [(axum::http::header::LOCATION, location)]).into_response()
        }
        _ => status.into_response(),
    }
}

/// Accepts TLS connections; a client whose handshake fails (it does not trust the certificate)
/// is dropped and the next one accepted.
struct TlsListener {
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, address)) = self.listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let handshake = self.acceptor.accept(stream);
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), handshake).await {
                return (tls, address);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}
