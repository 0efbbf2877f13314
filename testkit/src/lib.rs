//! What meshcanary's tests, benchmarks and demo start around the code under test, so that each
//! meets the real thing and all of them start it the same way:
//!
//! - the control service, `meshcanary serve`, with exactly the environment it is given and ready
//!   once `/readyz` says so ([`service`]);
//! - a real Envoy, on any bootstrap or on `envoy-config/standalone.yaml` with the filter delivered
//!   through an ECDS file written as the service writes it ([`envoy`], [`ecds`]);
//! - upstreams that stand in for the variants of a service ([`upstream`]), a real Prometheus
//!   ([`prometheus`]) and a webhook receiver ([`hook_server`]);
//! - a real Kubernetes API server ([`envtest`]: etcd and kube-apiserver from `KUBEBUILDER_ASSETS`,
//!   RBAC on, Istio's CRDs installed), the project's own manifests installed into it as a user
//!   installs them ([`install`]), the control service started with the arguments and environment
//!   its Deployment gives it ([`pod`]), and a proxy that can interleave a foreign write or hold
//!   back an answer between a client and the API server ([`interpose`]);
//! - the fixtures the tests and benchmarks share ([`fixtures`]).
//!
//! Every process started here stops with its handle, and with the program on Ctrl-C where the
//! program asks for it ([`process`]); the servers a test binary shares in statics run under a
//! small supervisor that stops them when the pipe from the test process closes ([`supervise`]).

pub mod ecds;
pub mod envoy;
pub mod envtest;
pub mod error;
pub mod fixtures;
pub mod hook_server;
pub mod install;
pub mod interpose;
pub mod paths;
pub mod pod;
pub mod process;
pub mod prometheus;
pub mod service;
pub mod supervise;
pub mod upstream;
pub mod wait;

pub use error::{Error, Result};

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// A free TCP port on loopback (the OS picks it; free at the time of asking).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("a local address").port()
}

/// Sixteen random bytes as hex, from the kernel (tokens, unique names).
pub fn random_hex() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An HTTP client for loopback servers: no proxy from the environment (a developer's
/// `HTTP_PROXY` must not reroute 127.0.0.1), at most `timeout` per request.
pub fn http_client(timeout: std::time::Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .expect("an HTTP client without TLS builds")
}

/// Runs `start` on a free loopback port, up to three times: a port found free can be taken by
/// someone else before the server binds it, and such a start ends at once
/// ([`Error::Exited`]), so another port is tried. Any other error is returned as it is.
pub async fn on_free_port<T>(mut start: impl AsyncFnMut(u16) -> Result<T>) -> Result<T> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match start(free_port()).await {
            Err(Error::Exited { .. }) if attempt < 3 => continue,
            done => return done,
        }
    }
}

/// An axum app served by this process on a free loopback port, on the caller's runtime; it stops
/// when dropped. For the small servers a test stands up itself (webhook receivers, collectors,
/// a proxy between the service and the API server).
pub struct LocalServer {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl LocalServer {
    /// Binds a free loopback port and serves `app` on it. Panics if no port can be bound.
    pub async fn start(app: axum::Router) -> LocalServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("a local address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        LocalServer {
            addr,
            url: format!("http://{addr}"),
            task,
        }
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether the peer closes `stream` within `within`: a read that ends (EOF or reset), whatever it
/// sent before. For tests of servers that must drop idle or slow connections.
pub async fn closed_by_peer(
    stream: &mut tokio::net::TcpStream,
    within: std::time::Duration,
) -> bool {
    use tokio::io::AsyncReadExt;
    let mut sink = vec![0u8; 64 * 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}
