//! A real Kubernetes API server, as controller-runtime's envtest gives Go operators: etcd and
//! kube-apiserver started on free loopback ports, RBAC on, no kubelet and no controllers, and
//! Istio's CRDs installed.
//!
//! The binaries come from `KUBEBUILDER_ASSETS` (a directory with `kube-apiserver`, `etcd` and
//! `kubectl`; `setup-envtest use 1.36 -p path` makes one), Istio's CRDs from
//! `$KUBEBUILDER_ASSETS/istio-crds.yaml` or `MESHCANARY_ISTIO_CRDS`. `make test` builds the
//! directory from `../shared/envtest` when that exists. Without them a test skips with a message
//! saying how to get them — except under CI (`CI` set), where it fails: a skipped suite proves
//! nothing.
//!
//! [`Envtest::shared`] is one server for all the tests of a test binary (each test works in
//! namespaces of its own); [`Envtest::start`] a private one, for a test that restarts it.

use crate::supervise::{write_exec_script, Supervised};
use crate::{free_port, random_hex};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How to get the binaries, for skip and failure messages.
pub const HOW_TO_GET: &str = "`make test` builds them from ../shared/envtest when that directory \
    exists; elsewhere run `setup-envtest use 1.36 -p path` (sigs.k8s.io/controller-runtime/tools/\
    setup-envtest), `export KUBEBUILDER_ASSETS=<that path>`, and put Istio's CRDs (istio/istio \
    manifests/charts/base/files/crd-all.gen.yaml) at $KUBEBUILDER_ASSETS/istio-crds.yaml";

/// The MeshRollout CRD's name.
pub const MESHROLLOUT_CRD: &str = "meshrollouts.meshcanary.io";
/// Where the project ships it, relative to the workspace root.
pub const MESHROLLOUT_CRD_FILE: &str = "envoy-config/istio/meshrollout-crd.yaml";

/// How long the server may take to answer `/readyz` "ok" (about 3 s on a quiet 2-core machine).
const READY_WITHIN: Duration = Duration::from_secs(60);

/// Where the binaries and CRDs are.
#[derive(Debug, Clone)]
pub struct Assets {
    /// `kube-apiserver`.
    pub kube_apiserver: PathBuf,
    /// `etcd`.
    pub etcd: PathBuf,
    /// `kubectl`.
    pub kubectl: PathBuf,
    /// Istio's CRDs, one YAML stream.
    pub istio_crds: PathBuf,
}

impl Assets {
    /// Finds them by the envtest convention; the error says what is missing.
    pub fn find() -> Result<Assets, String> {
        let dir = std::env::var_os("KUBEBUILDER_ASSETS")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .ok_or("KUBEBUILDER_ASSETS is not set")?;
        let binary = |name: &str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(format!("{} does not exist", path.display()))
            }
        };
        let istio_crds = std::env::var_os("MESHCANARY_ISTIO_CRDS")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.join("istio-crds.yaml"));
        if !istio_crds.is_file() {
            return Err(format!(
                "Istio's CRDs are not at {} (or MESHCANARY_ISTIO_CRDS)",
                istio_crds.display()
            ));
        }
        Ok(Assets {
            kube_apiserver: binary("kube-apiserver")?,
            etcd: binary("etcd")?,
            kubectl: binary("kubectl")?,
            istio_crds,
        })
    }
}

/// A running etcd + kube-apiserver.
pub struct Envtest {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// `http://127.0.0.1:<port>` of etcd.
    pub etcd_url: String,
    assets: Assets,
    dir: PathBuf,
    admin_token: String,
    processes: Mutex<Supervised>,
}

/// The name the current test runs under (libtest names its threads after the tests).
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string()
}

/// Decides what a test does without the binaries: fail under CI, else skip saying so.
fn unavailable(reason: &str) -> Option<&'static Envtest> {
    let test = test_name();
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!(
            "{test}: no real Kubernetes API server ({reason}); CI must run the Kubernetes tests. {HOW_TO_GET}"
        );
    }
    eprintln!("SKIPPED {test}: no real Kubernetes API server ({reason}). {HOW_TO_GET}");
    None
}

impl Envtest {
    /// The server shared by every test of this test binary, started by the first test that asks.
    /// `None` (after saying so on stderr) when the binaries are missing and `CI` is not set.
    pub fn shared() -> Option<&'static Envtest> {
        static SHARED: OnceLock<Result<Envtest, String>> = OnceLock::new();
        match SHARED.get_or_init(|| Assets::find().map(Envtest::start_with)) {
            Ok(envtest) => Some(envtest),
            Err(reason) => unavailable(reason),
        }
    }

    /// A server of the test's own (for a test that stops and restarts it); `None` as for
    /// [`Envtest::shared`].
    pub fn start() -> Option<Envtest> {
        match Assets::find() {
            Ok(assets) => Some(Envtest::start_with(assets)),
            Err(reason) => {
                unavailable(&reason);
                None
            }
        }
    }

    fn start_with(assets: Assets) -> Envtest {
        let started = Instant::now();
        // The supervisor removes the directory when it is done; it must outlive the TempDir guard.
        let dir = tempfile::Builder::new()
            .prefix("meshcanary-envtest-")
            .tempdir()
            .expect("a temporary directory")
            .keep();
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs).expect("the certificate directory");
        generate_service_account_key(&dir);
        let admin_token = format!("admin-{}", random_hex());
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{admin_token},admin,admin-uid,\"system:masters\"\n"),
        )
        .expect("write tokens.csv");
        let (etcd_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let path = |p: &Path| p.display().to_string();
        write_exec_script(
            &dir,
            "etcd",
            &assets.etcd,
            &[
                format!("--data-dir={}", path(&dir.join("etcd-data"))),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                "--log-level=warn".into(),
            ],
        );
        write_exec_script(
            &dir,
            "kube-apiserver",
            &assets.kube_apiserver,
            &[
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                format!("--etcd-servers={etcd_url}"),
                format!("--cert-dir={}", path(&certs)),
                format!("--token-auth-file={}", path(&dir.join("tokens.csv"))),
                "--authorization-mode=RBAC".into(),
                format!("--service-account-key-file={}", path(&dir.join("sa.pub"))),
                format!(
                    "--service-account-signing-key-file={}",
                    path(&dir.join("sa.key"))
                ),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
            ],
        );
        let processes = Supervised::start(&dir, &["etcd", "kube-apiserver"], Some(&dir));
        let envtest = Envtest {
            url: format!("https://127.0.0.1:{api_port}"),
            etcd_url,
            assets,
            dir,
            admin_token,
            processes: Mutex::new(processes),
        };
        std::fs::write(
            envtest.admin_kubeconfig(),
            envtest.kubeconfig(&envtest.admin_token, None, None),
        )
        .expect("write the admin kubeconfig");
        envtest.wait_ready();
        envtest.install_istio_crds();
        envtest.install_meshrollout_crd();
        eprintln!(
            "envtest: kube-apiserver at {} ready with Istio's CRDs and the MeshRollout CRD in {:.1} s ({})",
            envtest.url,
            started.elapsed().as_secs_f64(),
            envtest.dir.display()
        );
        envtest
    }

    /// The binaries and CRDs in use.
    pub fn assets(&self) -> &Assets {
        &self.assets
    }

    /// The server's self-signed serving certificate (what clients trust).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("certs").join("apiserver.crt")
    }

    /// A kubeconfig (YAML) for `token`, optionally with a default namespace, pointing at
    /// `server` (default: this API server; give a proxy's `http://` URL to go through it).
    pub fn kubeconfig(&self, token: &str, namespace: Option<&str>, server: Option<&str>) -> String {
        let server = server.unwrap_or(&self.url);
        let authority = if server.starts_with("https://") {
            format!("\n    certificate-authority: {}", self.ca_file().display())
        } else {
            String::new()
        };
        let namespace = namespace
            .map(|ns| format!("\n    namespace: {ns}"))
            .unwrap_or_default();
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: envtest
  cluster:
    server: {server}{authority}
users:
- name: user
  user:
    token: {token}
contexts:
- name: envtest
  context:
    cluster: envtest
    user: user{namespace}
current-context: envtest
"
        )
    }

    /// The administrator's kubeconfig (`system:masters`).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// A kube client from a kubeconfig file.
    pub async fn client_from(kubeconfig: &Path) -> kube::Client {
        let file = kube::config::Kubeconfig::read_from(kubeconfig)
            .unwrap_or_else(|e| panic!("read {}: {e}", kubeconfig.display()));
        let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
            .await
            .unwrap_or_else(|e| panic!("load {}: {e}", kubeconfig.display()));
        kube::Client::try_from(config).expect("a kube client")
    }

    /// A kube client acting as the administrator.
    pub async fn admin_client(&self) -> kube::Client {
        Envtest::client_from(&self.admin_kubeconfig()).await
    }

    /// `kubectl` acting as the administrator.
    pub fn kubectl(&self) -> Command {
        self.kubectl_with(&self.admin_kubeconfig())
    }

    /// `kubectl` with the given kubeconfig and nothing else from the environment.
    pub fn kubectl_with(&self, kubeconfig: &Path) -> Command {
        let mut command = Command::new(&self.assets.kubectl);
        command
            .env_clear()
            .env("KUBECONFIG", kubeconfig)
            .env("HOME", &self.dir)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null());
        command
    }

    /// Runs `kubectl` as the administrator with `args`; panics with its output if it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        run_ok(self.kubectl().args(args))
    }

    /// Creates a namespace called `<prefix>-<random>` and returns its name.
    pub fn create_namespace(&self, prefix: &str) -> String {
        let name = format!("{prefix}-{}", &random_hex()[..8]);
        self.kubectl_ok(&["create", "namespace", &name]);
        name
    }

    /// A token for ServiceAccount `namespace/name`, from the TokenRequest API (`kubectl create
    /// token`): what the kubelet mounts into the ServiceAccount's pods.
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        self.kubectl_ok(&["create", "token", name, "-n", namespace, "--duration=2h"])
            .trim()
            .to_string()
    }

    /// Stops kube-apiserver (etcd keeps running); [`Envtest::start_apiserver`] brings it back.
    pub fn stop_apiserver(&self) {
        self.lock().stop("kube-apiserver");
    }

    /// Starts kube-apiserver again, on the same port and data, and waits until it is ready.
    pub fn start_apiserver(&self) {
        self.lock().start_again("kube-apiserver");
        self.wait_ready();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Supervised> {
        self.processes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// etcd's current revision (what a resourceVersion counts).
    pub fn etcd_revision(&self) -> i64 {
        let answer = self.etcd_post("/v3/kv/range", r#"{"key":"AA=="}"#);
        answer
            .pointer("/header/revision")
            .and_then(|r| r.as_str().and_then(|s| s.parse().ok()).or(r.as_i64()))
            .unwrap_or_else(|| panic!("no revision in {answer}"))
    }

    /// Compacts etcd's history up to its current revision: a watch resumed from an older
    /// resourceVersion then gets 410 Gone ("too old resource version").
    pub fn compact_etcd(&self) -> i64 {
        let revision = self.etcd_revision();
        self.etcd_post(
            "/v3/kv/compaction",
            &format!(r#"{{"revision":"{revision}","physical":true}}"#),
        );
        revision
    }

    /// A POST to etcd's JSON gateway (plain HTTP/1.1 on loopback).
    fn etcd_post(&self, path: &str, body: &str) -> serde_json::Value {
        use std::io::{Read, Write};
        let address = self.etcd_url.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address).expect("connect to etcd");
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("write to etcd");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .expect("read etcd's answer");
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        assert!(head.starts_with("HTTP/1.1 200"), "etcd {path}: {answer}");
        // The gateway may answer chunked: the JSON object is between the outer braces.
        let json = body
            .find('{')
            .and_then(|start| body.rfind('}').map(|end| &body[start..=end]))
            .unwrap_or("{}");
        serde_json::from_str(json).unwrap_or_else(|e| panic!("etcd {path}: {e}: {body}"))
    }

    /// kube-apiserver's log so far (for failure messages).
    pub fn apiserver_log(&self) -> String {
        self.lock().log("kube-apiserver")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let answer = self.kubectl().args(["get", "--raw=/readyz"]).output();
            if let Ok(output) = &answer {
                if output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "ok"
                {
                    return;
                }
            }
            let log = self.apiserver_log();
            // kube-apiserver gives up by itself when it cannot reach etcd or start.
            if Instant::now() > deadline || log.contains("\"command failed\"") {
                let tail: String = log.lines().rev().take(30).collect::<Vec<_>>().join("\n");
                panic!(
                    "kube-apiserver at {} not ready within {READY_WITHIN:?}; last answer {answer:?}; \
                     its log, last lines first:\n{tail}\netcd:\n{}",
                    self.url,
                    self.lock().log("etcd")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The project's own CRD (`envoy-config/istio/meshrollout-crd.yaml`), as a cluster admin
    /// installs it, once per server and before any test applies the manifests: the tests that
    /// share a server all `kubectl apply -k` a kustomization that lists it, and two client-side
    /// applies that both find it missing would race to create it.
    fn install_meshrollout_crd(&self) {
        let crd = crate::workspace_root().join(MESHROLLOUT_CRD_FILE);
        self.kubectl_ok(&["apply", "-f", &crd.display().to_string()]);
        self.wait_established(MESHROLLOUT_CRD);
    }

    /// Waits until the API server serves the resource of CRD `name` (its `Established`
    /// condition): creating objects of a CRD that is not yet established fails.
    pub fn wait_established(&self, name: &str) {
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/{name}"),
        ]);
    }

    fn install_istio_crds(&self) {
        let crds = self.assets.istio_crds.display().to_string();
        self.kubectl_ok(&["apply", "--server-side", "-f", &crds]);
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ]);
    }
}

/// Runs `command`; panics with its output if it fails; returns its stdout.
pub fn run_ok(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    assert_success(command, &output);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn assert_success(command: &Command, output: &Output) {
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The key pair ServiceAccount tokens are signed and checked with.
fn generate_service_account_key(dir: &Path) {
    let key = dir.join("sa.key");
    run_ok(
        Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("2048")
            .stderr(Stdio::piped()),
    );
    run_ok(
        Command::new("openssl")
            .args(["rsa", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(dir.join("sa.pub"))
            .stderr(Stdio::piped()),
    );
}
