//! The project's manifests installed into a real API server the way a user installs them: a copy
//! of `envoy-config/` (the user's checkout, so commands that edit files edit the copy), a
//! `token.env`, the WasmPlugin's digest set, then `kubectl apply -k` of `envoy-config/istio` (the
//! MeshRollout CRD with it, waited for until Established) and of `envoy-config/istio/bookinfo`.
//!
//! [`Namespaces::Shipped`] applies them unchanged (the control service in `meshcanary-system`,
//! bookinfo's objects in `default`). [`Namespaces::Fresh`] gives a test namespaces of its own
//! through a kustomize overlay of each directory — `namespace:` and the one cross-namespace
//! reference (the RoleBinding's subject) — so that tests sharing one API server cannot see each
//! other's Lease, state or WasmPlugin. The ClusterRole-free manifests make that overlay complete.

use crate::envtest::{run_ok, Envtest};
use crate::random_hex;
use std::path::{Path, PathBuf};

/// The namespaces the shipped manifests use.
pub const SHIPPED_SYSTEM_NAMESPACE: &str = "meshcanary-system";
/// The namespace of bookinfo in the shipped manifests.
pub const SHIPPED_APPS_NAMESPACE: &str = "default";
/// The control service's ServiceAccount.
pub const SERVICE_ACCOUNT: &str = "meshcanary-control";
/// The control service's Deployment (and container name).
pub const DEPLOYMENT: &str = "meshcanary-control";
/// The shipped WasmPlugin.
pub const WASMPLUGIN: &str = "reviews-canary";
/// A well-formed digest for the WasmPlugin's `sha256` (the shipped file has a placeholder that
/// Istio's CRD rejects on purpose). No proxy downloads the module here.
pub const TEST_MODULE_SHA256: &str =
    "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

/// Where the manifests go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespaces {
    /// As shipped: `meshcanary-system` and `default`.
    Shipped,
    /// Two namespaces of the test's own, created for it.
    Fresh,
}

/// What to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Where.
    pub namespaces: Namespaces,
    /// Also `envoy-config/istio/bookinfo` (the WasmPlugin, its RBAC and reviews' routing).
    pub bookinfo: bool,
}

/// The project installed in an API server.
pub struct Installed<'a> {
    /// The server.
    pub envtest: &'a Envtest,
    /// The control service's namespace.
    pub system: String,
    /// The managed namespace (bookinfo's).
    pub apps: String,
    /// The API token in `token.env` (the Secret behind `MESHCANARY_TOKEN`).
    pub api_token: String,
    /// The user's checkout: copies of `envoy-config/` and `examples/istio-bookinfo/` under
    /// `<checkout>`.
    pub checkout: tempfile::TempDir,
}

impl<'a> Installed<'a> {
    /// Installs the manifests into `envtest`.
    pub fn install(envtest: &'a Envtest, options: Options) -> Installed<'a> {
        let checkout = new_checkout();
        let api_token = random_hex();
        let istio = checkout.path().join("envoy-config/istio");
        std::fs::write(istio.join("token.env"), format!("token={api_token}\n"))
            .expect("write token.env");
        set_module_digest(&istio.join("bookinfo/wasmplugin.yaml"), TEST_MODULE_SHA256);
        let (system, apps) = match options.namespaces {
            Namespaces::Shipped => (
                SHIPPED_SYSTEM_NAMESPACE.to_string(),
                SHIPPED_APPS_NAMESPACE.to_string(),
            ),
            Namespaces::Fresh => (
                envtest.create_namespace("mc-system"),
                envtest.create_namespace("mc-apps"),
            ),
        };
        let installed = Installed {
            envtest,
            system,
            apps,
            api_token,
            checkout,
        };
        installed.apply_control_service(options.namespaces);
        if options.bookinfo {
            installed.apply_bookinfo_into(options.namespaces);
        }
        installed
    }

    /// The user's checkout only (a copy of `envoy-config/`, no `token.env`, the digest not set),
    /// with nothing installed, for a test that runs the install commands itself; the namespaces
    /// are the shipped ones.
    pub fn prepare(envtest: &'a Envtest) -> Installed<'a> {
        let checkout = new_checkout();
        Installed {
            envtest,
            system: SHIPPED_SYSTEM_NAMESPACE.to_string(),
            apps: SHIPPED_APPS_NAMESPACE.to_string(),
            api_token: String::new(),
            checkout,
        }
    }

    /// `<checkout>/envoy-config/istio`.
    pub fn istio_dir(&self) -> PathBuf {
        self.checkout.path().join("envoy-config/istio")
    }

    fn apply_control_service(&self, namespaces: Namespaces) {
        let dir = match namespaces {
            Namespaces::Shipped => self.istio_dir(),
            Namespaces::Fresh => self.overlay(
                "system",
                "../envoy-config/istio",
                &self.system,
                // kustomize already points the Role's subject at the new namespace.
                "",
            ),
        };
        self.envtest
            .kubectl_ok(&["apply", "-k", &dir.display().to_string()]);
        // The kustomization carries the cluster-scoped MeshRollout CRD; it must be served before
        // anything creates a MeshRollout.
        self.envtest
            .wait_established(crate::envtest::MESHROLLOUT_CRD);
    }

    /// (Re-)applies `envoy-config/istio/bookinfo` into the managed namespace, as installed.
    pub fn apply_bookinfo(&self) {
        let namespaces = match (self.system.as_str(), self.apps.as_str()) {
            (SHIPPED_SYSTEM_NAMESPACE, SHIPPED_APPS_NAMESPACE) => Namespaces::Shipped,
            _ => Namespaces::Fresh,
        };
        self.apply_bookinfo_into(namespaces);
    }

    fn apply_bookinfo_into(&self, namespaces: Namespaces) {
        let dir = match namespaces {
            Namespaces::Shipped => self.istio_dir().join("bookinfo"),
            Namespaces::Fresh => self.overlay(
                "apps",
                "../envoy-config/istio/bookinfo",
                &self.apps,
                // The RoleBinding's subject lives in the control service's namespace.
                &format!(
                    "patches:
- target: {{kind: RoleBinding}}
  patch: |-
    - op: replace
      path: /subjects/0/namespace
      value: {}
",
                    self.system
                ),
            ),
        };
        self.envtest
            .kubectl_ok(&["apply", "-n", &self.apps, "-k", &dir.display().to_string()]);
    }

    /// A kustomization in `<checkout>/<name>` that puts `base` into `namespace`.
    fn overlay(&self, name: &str, base: &str, namespace: &str, extra: &str) -> PathBuf {
        let dir = self.checkout.path().join(name);
        std::fs::create_dir_all(&dir).expect("the overlay directory");
        std::fs::write(
            dir.join("kustomization.yaml"),
            format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- {base}\nnamespace: {namespace}\n{extra}"
            ),
        )
        .expect("write the overlay");
        dir
    }

    /// A kubeconfig file acting as the control service's ServiceAccount (a fresh TokenRequest
    /// token), pointing at `server` (default: the API server itself).
    pub fn service_account_kubeconfig(&self, server: Option<&str>) -> PathBuf {
        let token = self
            .envtest
            .service_account_token(&self.system, SERVICE_ACCOUNT);
        let path = self
            .checkout
            .path()
            .join(format!("sa-{}.kubeconfig", &random_hex()[..8]));
        std::fs::write(
            &path,
            self.envtest.kubeconfig(&token, Some(&self.system), server),
        )
        .expect("write the ServiceAccount's kubeconfig");
        path
    }

    /// A kube client acting as the control service's ServiceAccount.
    pub async fn service_account_client(&self) -> kube::Client {
        Envtest::client_from(&self.service_account_kubeconfig(None)).await
    }

    /// An object as stored, as JSON (`kubectl get -o json`), or `None` if it does not exist.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<serde_json::Value> {
        let output = self
            .envtest
            .kubectl()
            .args(["get", kind, name, "-n", namespace, "-o", "json"])
            .output()
            .expect("run kubectl");
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                stderr.contains("NotFound"),
                "kubectl get {kind} {name}: {stderr}"
            );
            return None;
        }
        Some(serde_json::from_slice(&output.stdout).expect("kubectl's JSON"))
    }

    /// The control service's Deployment as stored.
    pub fn deployment(&self) -> serde_json::Value {
        self.get("deployment", &self.system, DEPLOYMENT)
            .expect("the Deployment is installed")
    }

    /// Runs `kubectl` as the administrator in the checkout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        run_ok(
            self.envtest
                .kubectl()
                .current_dir(self.checkout.path())
                .args(args),
        )
    }
}

/// A fresh copy of `envoy-config/` and of the walkthrough's `examples/istio-bookinfo/` in a
/// temporary directory, without a developer's local `token.env`.
fn new_checkout() -> tempfile::TempDir {
    let checkout = tempfile::Builder::new()
        .prefix("meshcanary-checkout-")
        .tempdir()
        .expect("a temporary directory");
    for tree in ["envoy-config", "examples/istio-bookinfo"] {
        copy_tree(
            &crate::workspace_root().join(tree),
            &checkout.path().join(tree),
        );
    }
    let _ = std::fs::remove_file(checkout.path().join("envoy-config/istio/token.env"));
    checkout
}

/// Replaces the WasmPlugin's `sha256:` line, as the walkthrough's `sed` does.
pub fn set_module_digest(path: &Path, digest: &str) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut replaced = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            if line.starts_with("  sha256: ") {
                replaced = true;
                format!("  sha256: \"{digest}\"")
            } else {
                line.to_string()
            }
        })
        .collect();
    assert!(replaced, "{} has no `  sha256:` line", path.display());
    std::fs::write(path, lines.join("\n") + "\n").expect("write the WasmPlugin");
}

/// Copies the directory tree `from` to `to` (files and directories; nothing else is expected).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}
