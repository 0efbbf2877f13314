//! The demo's `meshcanary serve`: the real binary, on the port the user chose, with a fresh token,
//! feeding the demo's Envoy through its ECDS file and reading its admin endpoint. Its state and
//! log stay in the demo's directory while the demo runs.

use crate::envoy::Envoy;
use crate::paths;
use meshcanary_core::config::FilterConfig;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::control::SERVICE_ENV;
/// How long the service may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `meshcanary serve`; killed and reaped when dropped.
pub struct Service {
    child: Child,
    /// `http://127.0.0.1:<port>` of the API.
    pub base_url: String,
    /// The bearer token writes need.
    pub token: String,
    /// Where it logs.
    pub log_path: PathBuf,
}

impl Service {
    /// Starts the service in `dir` on `port` (0: a free one) for `envoy`, starting from
    /// `routes`, and waits until it is ready.
    pub async fn start(
        dir: &Path,
        port: u16,
        envoy: &Envoy,
        routes: &FilterConfig,
    ) -> Result<Service, String> {
        let routes_path = dir.join("routes.json");
        std::fs::write(&routes_path, routes.to_json())
            .map_err(|error| format!("cannot write {}: {error}", routes_path.display()))?;
        let token = random_token()?;
        let log_path = dir.join("service.log");
        // A port found free can be taken before the service binds it; with a port of our own
        // choosing, try another.
        let attempts = if port == 0 { 3 } else { 1 };
        let mut last_error = String::new();
        for _ in 0..attempts {
            let port = match port {
                0 => free_port()?,
                port => port,
            };
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|error| format!("cannot open {}: {error}", log_path.display()))?;
            let stderr = log
                .try_clone()
                .map_err(|error| format!("cannot open {}: {error}", log_path.display()))?;
            let mut command = Command::new(paths::control_bin());
            // A backtrace would bury the one line that says why the service stopped.
            for name in SERVICE_ENV
                .iter()
                .chain(&["RUST_BACKTRACE", "RUST_LIB_BACKTRACE"])
            {
                command.env_remove(name);
            }
            let child = command
                .arg("serve")
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--state-dir")
                .arg(dir.join("state"))
                .arg("--routes")
                .arg(&routes_path)
                .arg("--ecds-file")
                .arg(envoy.ecds_path())
                .arg("--wasm")
                .arg(paths::filter_wasm())
                .arg("--envoy-admin")
                .arg(&envoy.admin_url)
                .env("MESHCANARY_TOKEN", &token)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(stderr)
                .spawn()
                .map_err(|error| {
                    format!("cannot start {}: {error}", paths::control_bin().display())
                })?;
            let mut service = Service {
                child,
                base_url: format!("http://127.0.0.1:{port}"),
                token: token.clone(),
                log_path: log_path.clone(),
            };
            match service.wait_until_ready().await {
                Ok(()) => return Ok(service),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_until_ready(&mut self) -> Result<(), String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|error| error.to_string())?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = format!("{}/readyz", self.base_url);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "meshcanary serve exited with {status}; its log ({}):\n{}",
                    self.log_path.display(),
                    tail(&self.log_path, 20)
                ));
            }
            if let Ok(response) = http.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "meshcanary serve is not ready after {READY_TIMEOUT:?} at {url}; its log ({}):\n{}",
                    self.log_path.display(),
                    tail(&self.log_path, 20)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `lines` lines of a file.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|error| format!("cannot find a free port: {error}"))
}

/// 32 hex digits from the kernel's random source.
fn random_token() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(&mut bytes))
        .map_err(|error| format!("cannot read /dev/urandom for a token: {error}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
