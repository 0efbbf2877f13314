//! The demo's `meshcanary serve`: the real binary (started by the test kit), on the port the user
//! chose, with a fresh token, feeding the demo's Envoy through its ECDS file and reading its admin
//! endpoint. Its state and log stay in the demo's directory while the demo runs.

use meshcanary_core::config::FilterConfig;
use meshcanary_testkit::envoy::Envoy;
use meshcanary_testkit::paths;
use meshcanary_testkit::service::{ServiceProcess, Standalone, StatsSource};
use std::path::{Path, PathBuf};

/// A running `meshcanary serve`; killed and reaped when dropped.
pub struct Service {
    process: ServiceProcess,
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
        let standalone = Standalone {
            binary: paths::control_bin(),
            dir: dir.to_path_buf(),
            routes: routes.clone(),
            ecds_file: envoy.ecds_path().to_path_buf(),
            wasm: paths::filter_wasm(),
            stats: Some(StatsSource::EnvoyAdmin(envoy.admin_url.clone())),
            token: meshcanary_testkit::random_hex(),
            port,
            extra_args: Vec::new(),
        };
        let process = standalone
            .start()
            .await
            .map_err(|error| error.to_string())?;
        Ok(Service {
            base_url: process.url.clone(),
            token: standalone.token,
            log_path: process.log_path().to_path_buf(),
            process,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}
