//! `meshcanary serve`: wires the store, router, observer and API together and runs them until
//! SIGTERM or Ctrl-C.

use crate::api::filter::WasmArtifact;
use crate::api::{self, AppState};
use crate::error::{Error, Result};
use crate::observer::envoy_admin::EnvoyAdminObserver;
use crate::observer::prometheus::PrometheusObserver;
use crate::observer::MetricsObserver;
use crate::router::ecds_file::EcdsFileRouter;
use crate::service::Controller;
use crate::store::file::FileStore;
use clap::Args;
use meshcanary_core::config::FilterConfig;
use meshcanary_core::ecds::WasmDelivery;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// How to run the service.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address the HTTP API listens on.
    #[arg(long, env = "MESHCANARY_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Directory for the service's state (rollouts and the filter config); one service per directory.
    #[arg(long, env = "MESHCANARY_STATE_DIR", default_value = "meshcanary-state")]
    pub state_dir: PathBuf,
    /// File holding the bearer token writes need (or set MESHCANARY_TOKEN).
    #[arg(long, env = "MESHCANARY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Require the token for reads too.
    #[arg(long, env = "MESHCANARY_PROTECT_READS")]
    pub protect_reads: bool,
    /// The filter config (JSON, the pluginConfig schema) to start from when there is no saved state.
    #[arg(long, env = "MESHCANARY_ROUTES")]
    pub routes: Option<PathBuf>,
    /// The ECDS file the standalone Envoy watches.
    #[arg(long, env = "MESHCANARY_ECDS_FILE")]
    pub ecds_file: PathBuf,
    /// Path of the filter's .wasm as Envoy sees it.
    #[arg(long, env = "MESHCANARY_WASM")]
    pub wasm: PathBuf,
    /// Extension config name (and root_id) of the filter in Envoy's listener.
    #[arg(long, default_value = "meshcanary")]
    pub filter_name: String,
    /// Fail requests (503) if the filter's VM fails, instead of skipping the filter.
    #[arg(long)]
    pub fail_closed: bool,
    /// Envoy admin endpoints to read the filter's stats from: propagation and analysis (repeat,
    /// or comma-separate, for several proxies).
    #[arg(
        long = "envoy-admin",
        env = "MESHCANARY_ENVOY_ADMIN",
        value_delimiter = ','
    )]
    pub envoy_admin: Vec<String>,
    /// Read the filter's stats through this Prometheus server instead of Envoy admin endpoints
    /// (for meshes where Prometheus already scrapes the sidecars).
    #[arg(
        long,
        env = "MESHCANARY_PROMETHEUS_URL",
        conflicts_with = "envoy_admin"
    )]
    pub prometheus_url: Option<String>,
}

fn read_token(args: &ServeArgs) -> Result<String> {
    let token = match (&args.token_file, std::env::var("MESHCANARY_TOKEN")) {
        (Some(path), _) => std::fs::read_to_string(path).map_err(|source| Error::Store {
            path: path.display().to_string(),
            source,
        })?,
        (None, Ok(token)) => token,
        (None, Err(_)) => {
            return Err(Error::invalid(
                "token",
                "writes need a bearer token: set MESHCANARY_TOKEN or --token-file",
            ))
        }
    };
    let token = token.trim().to_string();
    if token.len() < 16 {
        return Err(Error::invalid("token", "must be at least 16 characters"));
    }
    Ok(token)
}

fn read_routes(args: &ServeArgs) -> Result<FilterConfig> {
    let Some(path) = &args.routes else {
        return Ok(FilterConfig::default());
    };
    let bytes = std::fs::read(path).map_err(|source| Error::Store {
        path: path.display().to_string(),
        source,
    })?;
    FilterConfig::from_json(&bytes).map_err(|error| Error::Invalid {
        field: format!("{} {}", path.display(), error.field),
        reason: error.reason,
    })
}

/// Runs the service until SIGTERM or Ctrl-C.
pub async fn serve(args: ServeArgs) -> Result<()> {
    let token = read_token(&args)?;
    let initial = read_routes(&args)?;
    let store = FileStore::open(&args.state_dir)?;
    let wasm = std::path::absolute(&args.wasm).unwrap_or_else(|_| args.wasm.clone());
    let router = EcdsFileRouter::new(
        args.ecds_file.clone(),
        WasmDelivery {
            name: args.filter_name.clone(),
            wasm_path: wasm.display().to_string(),
            fail_open: !args.fail_closed,
        },
    );
    let observer: Box<dyn MetricsObserver> = match &args.prometheus_url {
        Some(url) => Box::new(PrometheusObserver::new(url)),
        None => Box::new(EnvoyAdminObserver::new(args.envoy_admin.clone())),
    };
    // Serving the module is optional: in standalone mode Envoy reads it from disk.
    let wasm_artifact = match WasmArtifact::read(&wasm) {
        Ok(artifact) => Some(Arc::new(artifact)),
        Err(error) => {
            tracing::warn!(%error, "not serving the filter module");
            None
        }
    };
    let controller =
        Controller::start(Box::new(store), Box::new(router), observer, initial).await?;
    let loops = tokio::spawn(controller.clone().run());
    let app = api::app(AppState {
        controller,
        token: Arc::from(token),
        protect_reads: args.protect_reads,
        wasm: wasm_artifact,
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Store {
            path: format!("listen {}", args.listen),
            source,
        })?;
    let address = listener.local_addr().map_or(args.listen, |a| a);
    tracing::info!(%address, "meshcanary control API listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|source| Error::Store {
            path: format!("serve {address}"),
            source,
        })?;
    loops.abort();
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
}
