//! `meshcanary serve`: wires the store, router, observer and API together and runs them until
//! SIGTERM or Ctrl-C.

use crate::api::filter::WasmArtifact;
use crate::api::{self, AppState};
use crate::connections;
use crate::controller::{Controller, DriftPolicy, Drifted};
use crate::error::{Error, Result};
use crate::leader::lease::{LeaderElector, LeaseConfig};
use crate::observer::envoy_admin::EnvoyAdminObserver;
use crate::observer::prometheus::PrometheusObserver;
use crate::observer::MetricsObserver;
use crate::options::ControllerOptions;
use crate::reconcile::front::{MeshRolloutFront, RolloutResources};
use crate::reconcile::{Reconciler, ServiceTarget};
use crate::retention::{self, Retention};
use crate::router::ecds_file::EcdsFileRouter;
use crate::router::routing_objects::sync::{RoutingObjects, RoutingObjectsRouter};
use crate::router::wasmplugin::drift::{watch_drift, DriftEvent};
use crate::router::wasmplugin::WasmPluginRouter;
use crate::router::TrafficRouter;
use crate::store::configmap::ConfigMapStore;
use crate::store::file::FileStore;
use crate::store::resources::{Claims, ResourceStore};
use crate::time::HumanDuration;
use crate::webhook;
use crate::workloads::deployments::DeploymentScaler;
use clap::Args;
use futures::StreamExt;
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
    /// Standalone mode: the ECDS file the standalone Envoy watches.
    #[arg(
        long,
        env = "MESHCANARY_ECDS_FILE",
        required_unless_present = "wasmplugin",
        conflicts_with = "wasmplugin"
    )]
    pub ecds_file: Option<PathBuf>,
    /// Kubernetes mode: the WasmPlugin whose spec.pluginConfig the service writes.
    #[arg(long, env = "MESHCANARY_WASMPLUGIN")]
    pub wasmplugin: Option<String>,
    /// Kubernetes mode: keep the VirtualService and DestinationRule of a filter route in line
    /// with its variants (a subset and a header route per variant, the default route on the
    /// stable), `<route>[=<name>]`, the objects' name defaulting to the route's; they live in
    /// --kube-namespace. Repeat, or comma-separate, for several routes.
    #[arg(
        long = "routing-objects",
        env = "MESHCANARY_ROUTING_OBJECTS",
        value_name = "ROUTE[=NAME]",
        value_delimiter = ',',
        conflicts_with = "ecds_file"
    )]
    pub routing_objects: Vec<RoutingObjects>,
    /// Kubernetes mode: the WasmPlugin's namespace.
    #[arg(long, env = "MESHCANARY_KUBE_NAMESPACE", default_value = "default")]
    pub kube_namespace: String,
    /// Kubernetes mode: the ConfigMap holding the service's state.
    #[arg(
        long,
        env = "MESHCANARY_STATE_CONFIGMAP",
        default_value = "meshcanary-state"
    )]
    pub state_configmap: String,
    /// Kubernetes mode: the service's own namespace, for its state ConfigMap and leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "meshcanary-system")]
    pub state_configmap_namespace: String,
    /// Kubernetes mode: the coordination.k8s.io/v1 Lease replicas elect their leader with.
    #[arg(
        long,
        env = "MESHCANARY_LEADER_LEASE",
        default_value = "meshcanary-control"
    )]
    pub leader_lease: String,
    /// Kubernetes mode: how long the leader's Lease lasts without renewal; a successor takes over
    /// at most this long after the leader died (renewed every third of it).
    #[arg(long, env = "MESHCANARY_LEASE_DURATION", default_value = "15s")]
    pub lease_duration: HumanDuration,
    /// Kubernetes mode: this replica's identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long proxies may take to run a pushed config before `/readyz` reports the ones that
    /// still run an older one (they rejected it, or do not receive it).
    #[arg(long, env = "MESHCANARY_PROXY_GRACE", default_value = "10s")]
    pub proxy_grace: HumanDuration,
    /// Kubernetes mode: what to do when someone edits the WasmPlugin's pluginConfig by hand or a
    /// GitOps tool reverts it: re-apply the service's config, or pause every running rollout.
    #[arg(long, value_enum, default_value = "reapply")]
    pub on_drift: DriftPolicy,
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
    /// PEM file of CA certificates to trust for https:// webhooks, besides the system's (for
    /// hooks behind a private CA).
    #[arg(long, env = "MESHCANARY_WEBHOOK_CA_FILE", value_name = "PATH")]
    pub webhook_ca_file: Option<PathBuf>,
    /// Keep at most this many finished rollouts (the newest); older ones are deleted.
    #[arg(
        long,
        env = "MESHCANARY_RETAIN_FINISHED",
        value_name = "COUNT",
        default_value_t = retention::DEFAULT_MAX_FINISHED
    )]
    pub retain_finished: usize,
    /// Delete a finished rollout this long after it finished (at least 1m).
    #[arg(
        long,
        env = "MESHCANARY_RETAIN_FINISHED_FOR",
        value_name = "DURATION",
        default_value = "30days"
    )]
    pub retain_finished_for: HumanDuration,
    /// Keep finished rollouts only while together they take at most this much of the saved
    /// state, as JSON (at least 64KiB; the ConfigMap holding it in Kubernetes takes 1MiB).
    #[arg(
        long,
        env = "MESHCANARY_RETAIN_FINISHED_BYTES",
        value_name = "SIZE",
        default_value = "512KiB",
        value_parser = retention::parse_bytes
    )]
    pub retain_finished_bytes: usize,
    /// Close a connection that has not sent a complete request head this long after it opened
    /// or after its last response (idle and slow clients).
    #[arg(
        long,
        env = "MESHCANARY_HEADER_READ_TIMEOUT",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub header_read_timeout: HumanDuration,
    /// Close a connection on which nothing has moved for this long while none of its requests
    /// is being handled; a request body must arrive within it too (else 408).
    #[arg(
        long,
        env = "MESHCANARY_IDLE_TIMEOUT",
        value_name = "DURATION",
        default_value = "60s"
    )]
    pub idle_timeout: HumanDuration,
    /// Serve at most this many connections at once; one more is answered 503
    /// (too_many_connections) and closed.
    #[arg(
        long,
        env = "MESHCANARY_MAX_CONNECTIONS",
        value_name = "COUNT",
        default_value_t = connections::DEFAULT_MAX_CONNECTIONS
    )]
    pub max_connections: usize,
}

impl ServeArgs {
    /// The API's connection limits from the flags.
    fn connection_limits(&self) -> Result<connections::Limits> {
        for (flag, duration) in [
            ("header-read-timeout", self.header_read_timeout),
            ("idle-timeout", self.idle_timeout),
        ] {
            if duration.0 < std::time::Duration::from_millis(100) {
                return Err(Error::invalid(flag, "must be at least 100ms"));
            }
        }
        if self.max_connections == 0 {
            return Err(Error::invalid("max-connections", "must be at least 1"));
        }
        Ok(connections::Limits {
            header_read_timeout: self.header_read_timeout.0,
            idle_timeout: self.idle_timeout.0,
            max_connections: self.max_connections,
        })
    }

    /// The controller's settings from the flags.
    fn controller_options(&self) -> Result<ControllerOptions> {
        Ok(ControllerOptions {
            initial: read_routes(self)?,
            proxy_grace: self.proxy_grace.0,
            webhooks: webhook::Client::with_ca_file(self.webhook_ca_file.as_deref())?,
            retention: Retention::new(
                self.retain_finished,
                self.retain_finished_for.0,
                self.retain_finished_bytes,
            )?,
            // Kubernetes mode sets it once it has a client.
            scaler: None,
        })
    }
}

fn read_token(args: &ServeArgs) -> Result<String> {
    let token = match (&args.token_file, std::env::var("MESHCANARY_TOKEN")) {
        (Some(path), _) => std::fs::read_to_string(path).map_err(|source| Error::File {
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
    checked_token(&token)
}

/// The shortest token accepted, in characters.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The token as the service will compare it: trimmed, at least [`MIN_TOKEN_CHARS`] characters
/// (counted as characters, not bytes), and only printable ASCII without spaces — what an
/// `Authorization` header carries as it was typed (other bytes are not reliably sent, and a token
/// the service cannot receive would lock every write out).
fn checked_token(raw: &str) -> Result<String> {
    let token = raw.trim();
    let chars = token.chars().count();
    if chars < MIN_TOKEN_CHARS {
        return Err(Error::invalid(
            "token",
            format!("must be at least {MIN_TOKEN_CHARS} characters (it has {chars})"),
        ));
    }
    if let Some((position, bad)) = token
        .chars()
        .enumerate()
        .find(|(_, c)| !c.is_ascii_graphic())
    {
        return Err(Error::invalid(
            "token",
            format!(
                "character {} is {bad:?}: use printable ASCII without spaces, as an Authorization header carries it (e.g. head -c 24 /dev/urandom | base64)",
                position + 1
            ),
        ));
    }
    Ok(token.to_string())
}

fn read_routes(args: &ServeArgs) -> Result<Option<FilterConfig>> {
    let Some(path) = &args.routes else {
        return Ok(None);
    };
    let bytes = std::fs::read(path).map_err(|source| Error::File {
        path: path.display().to_string(),
        source,
    })?;
    FilterConfig::from_json(&bytes)
        .map(Some)
        .map_err(|error| Error::Invalid {
            field: format!("{} {}", path.display(), error.field),
            reason: error.reason,
        })
}

/// Runs the service until SIGTERM or Ctrl-C.
///
/// The API's address is bound first: a replica that cannot listen must not take the leader Lease
/// or push anything. In Kubernetes mode the Lease is released on every way out after that — a
/// clean stop, a failed start, a failed server — so a successor takes over at once.
pub async fn serve(args: ServeArgs) -> Result<()> {
    let token = read_token(&args)?;
    let options = args.controller_options()?;
    let limits = args.connection_limits()?;
    let wasm = std::path::absolute(&args.wasm).unwrap_or_else(|_| args.wasm.clone());
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
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Bind {
            address: args.listen.to_string(),
            source,
        })?;
    let api = Api {
        listener,
        token: Arc::from(token),
        protect_reads: args.protect_reads,
        wasm: wasm_artifact,
        limits,
        resources: None,
    };
    match (&args.wasmplugin, &args.ecds_file) {
        (Some(wasmplugin), _) => {
            serve_in_kubernetes(&args, wasmplugin, observer, options, api).await
        }
        (None, Some(ecds_file)) => {
            let store = FileStore::open(&args.state_dir)?;
            let router = EcdsFileRouter::new(
                ecds_file.clone(),
                WasmDelivery {
                    name: args.filter_name.clone(),
                    wasm_path: wasm.display().to_string(),
                    fail_open: !args.fail_closed,
                },
            );
            let controller =
                Controller::start(Box::new(store), Box::new(router), observer, options).await?;
            api.run(controller).await
        }
        (None, None) => Err(Error::invalid(
            "ecds-file",
            "give --ecds-file (standalone Envoy) or --wasmplugin (Kubernetes)",
        )),
    }
}

/// The HTTP API, bound and waiting for its controller.
struct Api {
    listener: tokio::net::TcpListener,
    token: Arc<str>,
    protect_reads: bool,
    wasm: Option<Arc<WasmArtifact>>,
    limits: connections::Limits,
    /// Kubernetes mode: created rollouts are MeshRollouts.
    resources: Option<Arc<dyn RolloutResources>>,
}

impl Api {
    /// Runs the controller's loops and serves the API until SIGTERM or Ctrl-C.
    async fn run(self, controller: Arc<Controller>) -> Result<()> {
        let loops = tokio::spawn(controller.clone().run());
        let app = api::app(AppState {
            controller,
            token: self.token,
            protect_reads: self.protect_reads,
            wasm: self.wasm,
            resources: self.resources,
        });
        let address = self.listener.local_addr().map_err(|source| Error::Bind {
            address: "the listener".into(),
            source,
        })?;
        tracing::info!(%address, "meshcanary control API listening");
        connections::serve(self.listener, app, self.limits, shutdown_signal()).await;
        loops.abort();
        tracing::info!("stopped");
        Ok(())
    }
}

/// Kubernetes mode: state in a ConfigMap, pushes to a WasmPlugin, one leader among the replicas,
/// a watch on the WasmPlugin for edits made outside the service, and the leader reconciling the
/// MeshRollouts of the service's namespace.
async fn serve_in_kubernetes(
    args: &ServeArgs,
    wasmplugin: &str,
    observer: Box<dyn MetricsObserver>,
    options: ControllerOptions,
    mut api: Api,
) -> Result<()> {
    let client = ::kube::Client::try_default()
        .await
        .map_err(|source| Error::remote("Kubernetes API", NoKubeClient(source)))?;
    let identity = match &args.identity {
        Some(identity) => identity.clone(),
        None => std::env::var("HOSTNAME").map_err(|_| {
            Error::invalid("identity", "set POD_NAME (the downward API) or --identity")
        })?,
    };
    let elector = LeaderElector::new(
        client.clone(),
        &args.state_configmap_namespace,
        &args.leader_lease,
        &identity,
        LeaseConfig {
            lease_duration: args.lease_duration.0,
            renew_interval: args.lease_duration.0 / 3,
            retry_interval: (args.lease_duration.0 / 7).max(std::time::Duration::from_millis(200)),
        },
    )?;
    let (leadership, election) = elector.spawn();
    tracing::info!(%identity, lease = %args.leader_lease, wasmplugin = %format!("{}/{wasmplugin}", args.kube_namespace), "Kubernetes mode");
    let mut drift_watch = None;
    let mut reconciler = None;
    // The Deployments rollouts name in `workloads` live beside the WasmPlugin.
    let mut options = options;
    options.scaler = Some(Arc::new(DeploymentScaler::new(
        client.clone(),
        &args.kube_namespace,
    )));
    let outcome = async {
        let (expected_tx, expected_rx) =
            tokio::sync::watch::channel(options.initial.clone().unwrap_or_default());
        let mut router: Box<dyn TrafficRouter> = Box::new(
            WasmPluginRouter::new(client.clone(), &args.kube_namespace, wasmplugin)
                .with_expected(expected_tx),
        );
        if !args.routing_objects.is_empty() {
            router = Box::new(RoutingObjectsRouter::new(
                router,
                client.clone(),
                &args.kube_namespace,
                args.routing_objects.clone(),
            ));
        }
        // Rollouts MeshRollouts start live in their resources; the rest in the ConfigMap.
        let claims = Arc::new(Claims::default());
        let store = ResourceStore::new(
            client.clone(),
            &args.state_configmap_namespace,
            ConfigMapStore::new(
                client.clone(),
                &args.state_configmap_namespace,
                &args.state_configmap,
            ),
            claims.clone(),
        );
        let controller = Controller::start_with_leadership(
            Box::new(store),
            router,
            observer,
            options,
            leadership,
        )
        .await?;
        // MeshRollouts live in the service's own namespace (the shipped RBAC grants them there).
        let target = ServiceTarget {
            wasm_plugin: wasmplugin.to_string(),
            namespace: args.kube_namespace.clone(),
        };
        let mesh_rollouts = Reconciler::new(
            controller.clone(),
            client.clone(),
            &args.state_configmap_namespace,
            target.clone(),
            &identity,
            claims,
        );
        api.resources = Some(Arc::new(MeshRolloutFront::new(
            controller.clone(),
            client.clone(),
            &args.state_configmap_namespace,
            target,
        )));
        reconciler = Some(tokio::spawn(mesh_rollouts.run()));
        drift_watch = Some(spawn_drift_watch(
            controller.clone(),
            client,
            &args.kube_namespace,
            wasmplugin,
            expected_rx,
            args.on_drift,
        ));
        api.run(controller).await
    }
    .await;
    if let Some(drift_watch) = drift_watch {
        drift_watch.abort();
    }
    if let Some(reconciler) = reconciler {
        reconciler.abort();
    }
    // Hand the Lease over at once instead of letting it expire, however we got here.
    if let Err(error) = elector.release().await {
        tracing::warn!(%error, "cannot release the leader lease");
    }
    election.abort();
    outcome
}

/// No Kubernetes client could be made from the environment.
#[derive(Debug, thiserror::Error)]
#[error("cannot build a client (in-cluster config or KUBECONFIG): {0}")]
struct NoKubeClient(#[source] ::kube::Error);

/// Watches the WasmPlugin and tells the controller when its pluginConfig drifts.
fn spawn_drift_watch(
    controller: Arc<Controller>,
    client: ::kube::Client,
    namespace: &str,
    wasmplugin: &str,
    expected: tokio::sync::watch::Receiver<FilterConfig>,
    policy: DriftPolicy,
) -> tokio::task::JoinHandle<()> {
    let stream = watch_drift(client, namespace, wasmplugin, expected);
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                DriftEvent::InSync { .. } => controller.drift(None, policy).await,
                DriftEvent::Drifted(drift) => {
                    let drifted = Drifted {
                        description: drift.to_string(),
                        live_generation: drift.config_generation,
                    };
                    controller.drift(Some(drifted), policy).await
                }
                DriftEvent::Deleted => {
                    let drifted = Drifted {
                        description: "the WasmPlugin does not exist (deleted?)".into(),
                        live_generation: None,
                    };
                    controller.drift(Some(drifted), DriftPolicy::Pause).await
                }
                DriftEvent::WatchError(error) => {
                    tracing::warn!(%error, "watching the WasmPlugin failed; retrying")
                }
            }
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    #[test]
    fn routing_objects_are_for_kubernetes_mode_only() {
        let parse = |extra: &[&str]| {
            let base = ["serve", "--wasm", "m.wasm"];
            Serve::try_parse_from(base.iter().chain(extra)).map(|serve| serve.args)
        };
        let args = parse(&[
            "--wasmplugin=p",
            "--routing-objects=reviews,ratings=ratings-vs",
            "--routing-objects",
            "details",
        ])
        .unwrap();
        let objects: Vec<(&str, &str)> = args
            .routing_objects
            .iter()
            .map(|o| (o.route.as_str(), o.name.as_str()))
            .collect();
        assert_eq!(
            objects,
            [
                ("reviews", "reviews"),
                ("ratings", "ratings-vs"),
                ("details", "details")
            ]
        );
        let error = parse(&["--ecds-file=e.yaml", "--routing-objects=reviews"])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--routing-objects") && error.contains("--ecds-file"),
            "{error}"
        );
        let error = parse(&["--wasmplugin=p", "--routing-objects=reviews=Bad"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a Kubernetes object name"), "{error}");
    }

    #[test]
    fn tokens_are_counted_in_characters_and_must_fit_a_header() {
        let cases: [(&str, Result<&str, &str>); 7] = [
            // Nine characters in 18 bytes: short, whatever the byte count.
            ("ééééééééé", Err("at least 16 characters (it has 9)")),
            ("0123456789abcdef", Ok("0123456789abcdef")),
            ("  0123456789abcdef\n", Ok("0123456789abcdef")),
            ("0123456789abcde", Err("at least 16 characters (it has 15)")),
            ("éééééééééééééééé", Err("character 1 is 'é'")),
            ("0123456789 abcdef", Err("character 11 is ' '")),
            ("0123456789abcdef\u{7f}x", Err("character 17 is '\\u{7f}'")),
        ];
        for (raw, expected) in cases {
            match (checked_token(raw), expected) {
                (Ok(token), Ok(want)) => assert_eq!(token, want, "{raw:?}"),
                (Err(error), Err(want)) => {
                    let Error::Invalid { field, reason } = &error else {
                        panic!("{raw:?}: {error:?}")
                    };
                    assert_eq!(field, "token");
                    assert!(reason.contains(want), "{raw:?}: {reason}");
                }
                (got, want) => panic!("{raw:?}: got {got:?}, expected {want:?}"),
            }
        }
    }
}
