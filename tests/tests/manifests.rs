//! The Kubernetes and Istio manifests in `envoy-config/istio/` agree with each other and with the
//! filter, without a cluster: every YAML document of every file is parsed, every kustomization's
//! file list is checked against the directory, and the names that have to match across objects are
//! compared — the Deployment's flags, ports and probes with the Service, the RBAC objects with the
//! ServiceAccount and with exactly the verbs the service needs, the WasmPlugin's module URL with the
//! Service, its initial config (the `meshcanary.io/initial-plugin-config` annotation; `pluginConfig`
//! itself is the service's) with the filter's own validation, the VirtualService with the
//! DestinationRule and the filter's variants, the stats annotations with the filter's stat tags.
//!
//! The checks return a list of problems instead of asserting one by one, so one run shows all of
//! them; `each_check_catches_a_broken_manifest` breaks the manifests on purpose, one thing at a
//! time, and requires the matching problem to be reported, so no check can pass vacuously.

use meshcanary_core::config::{CheckedConfig, CheckedRoute, FilterConfig, DEFAULT_VARIANT_HEADER};
use meshcanary_core::stats;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Where the manifests live, relative to the workspace root.
const MANIFESTS: &str = "envoy-config/istio";
/// The walkthrough that applies them, relative to the workspace root.
const WALKTHROUGH: &str = "examples/istio-bookinfo/README.md";
/// The WasmPlugin annotation carrying the filter's starting config (the service owns
/// `spec.pluginConfig`; Git does not carry it).
const INITIAL_CONFIG: &str = "meshcanary.io/initial-plugin-config";
/// Where the control service serves the filter module.
const MODULE_PATH: &str = "/filter/meshcanary.wasm";
/// What the WasmPlugin's `sha256` says until a user sets the module's digest; Istio's CRD rejects
/// it, so forgetting to set it fails loudly at `kubectl apply`.
const SHA256_PLACEHOLDER: &str = "REPLACE_ME";
/// Envoy stores proxy-wasm `define_metric` stats under this prefix; Istio's stats matcher sees the
/// full name, so whatever it includes must match names starting with it.
const WASM_CUSTOM_PREFIX: &str = "wasmcustom.";
/// The Wasm root id the WasmPlugin gives the filter.
const PLUGIN_NAME: &str = "meshcanary";
/// Istio's annotation listing the tags to extract from stat names.
const EXTRA_STAT_TAGS: &str = "sidecar.istio.io/extraStatTags";
/// Istio's per-pod ProxyConfig annotation (YAML inside a string).
const PROXY_CONFIG: &str = "proxy.istio.io/config";

/// One YAML document of a file under `envoy-config/istio/`.
#[derive(Clone, Debug)]
struct Doc {
    /// The file, relative to `envoy-config/istio/`, `/`-separated.
    file: String,
    /// Which document of the file it is (from 0, empty documents not counted).
    index: usize,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        text(&self.value, "/kind").unwrap_or_default()
    }

    fn name(&self) -> &str {
        text(&self.value, "/metadata/name").unwrap_or_default()
    }

    fn namespace(&self) -> &str {
        text(&self.value, "/metadata/namespace").unwrap_or_default()
    }

    fn dir(&self) -> &str {
        parent(&self.file)
    }

    /// Where the document is, for messages: `bookinfo/rbac.yaml#0 RoleBinding/x`.
    fn at(&self) -> String {
        format!(
            "{}#{} {}/{}",
            self.file,
            self.index,
            self.kind(),
            self.name()
        )
    }
}

/// Everything the checks read.
#[derive(Clone, Debug)]
struct Tree {
    /// Every YAML document of every `.yaml`/`.yml` file.
    docs: Vec<Doc>,
    /// Every file (relative, `/`-separated) and its text.
    files: BTreeMap<String, String>,
    /// Paths that a `.gitignore` in their directory names: local inputs such as `token.env`.
    ignored: BTreeSet<String>,
    /// Files the walkthrough applies with `kubectl patch --patch-file envoy-config/istio/<file>`
    /// (patches of objects these manifests do not contain, such as bookinfo's Deployments).
    kubectl_patches: BTreeSet<String>,
}

fn load() -> Tree {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(MANIFESTS);
    let mut files = BTreeMap::new();
    read_tree(&root, "", &mut files);
    let mut docs = Vec::new();
    let mut ignored = BTreeSet::new();
    for (file, contents) in &files {
        if is_yaml(file) {
            let values: Vec<Value> = serde_saphyr::from_multiple(contents)
                .unwrap_or_else(|error| panic!("{MANIFESTS}/{file} is not valid YAML: {error}"));
            for (index, value) in values.into_iter().enumerate() {
                docs.push(Doc {
                    file: file.clone(),
                    index,
                    value,
                });
            }
        } else if file_name(file) == ".gitignore" {
            for line in contents.lines().map(str::trim) {
                if !line.is_empty() && !line.starts_with('#') {
                    ignored.insert(join(parent(file), line));
                }
            }
        }
    }
    let walkthrough = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(WALKTHROUGH),
    )
    .unwrap_or_else(|error| panic!("cannot read {WALKTHROUGH}: {error}"));
    Tree {
        docs,
        files,
        ignored,
        kubectl_patches: patch_files(&walkthrough),
    }
}

/// The files (relative to `envoy-config/istio/`) that `text` applies with `--patch-file`.
fn patch_files(text: &str) -> BTreeSet<String> {
    let prefix = format!("{MANIFESTS}/");
    text.split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|pair| pair[0] == "--patch-file")
        .filter_map(|pair| pair[1].strip_prefix(&prefix).map(str::to_string))
        .collect()
}

fn read_tree(dir: &Path, prefix: &str, files: &mut BTreeMap<String, String>) {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()));
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if path.is_dir() {
            read_tree(&path, &join(prefix, &name), files);
        } else {
            let contents = std::fs::read_to_string(&path)
                .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
            files.insert(join(prefix, &name), contents);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers over paths and JSON values.

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

fn file_name(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, name)| name)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn is_yaml(path: &str) -> bool {
    path.ends_with(".yaml") || path.ends_with(".yml")
}

fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

/// The strings of the array at `pointer` (non-strings are left out; an absent array is empty).
fn texts<'a>(value: &'a Value, pointer: &str) -> Vec<&'a str> {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The items of the array at `pointer` (none if there is no array).
fn items<'a>(value: &'a Value, pointer: &str) -> std::slice::Iter<'a, Value> {
    const NONE: &[Value] = &[];
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .map_or(NONE.iter(), |items| items.iter())
}

/// The string-valued entries of the map at `pointer`.
fn labels(value: &Value, pointer: &str) -> BTreeMap<String, String> {
    value
        .pointer(pointer)
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether every key and value of `selector` is in `labels` (an empty selector selects nothing
/// here: Kubernetes would select everything, which is never what these manifests mean).
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty()
        && selector
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
}

fn strings(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|item| item.to_string()).collect()
}

/// A DNS-1123 subdomain, what Kubernetes accepts as most object names.
fn is_object_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Kinds that live outside any namespace.
fn is_cluster_scoped(kind: &str) -> bool {
    matches!(
        kind,
        "Namespace"
            | "ClusterRole"
            | "ClusterRoleBinding"
            | "CustomResourceDefinition"
            | "Kustomization"
    )
}

// ---------------------------------------------------------------------------------------------
// Kustomizations.

/// A `kustomization.yaml` and the files it names.
struct Kustomization<'a> {
    doc: &'a Doc,
    resources: Vec<&'a str>,
    patches: Vec<&'a str>,
    /// `envs` and `files` of the secret and ConfigMap generators.
    generator_inputs: Vec<&'a str>,
}

impl Kustomization<'_> {
    fn dir(&self) -> &str {
        self.doc.dir()
    }

    fn entries(&self) -> impl Iterator<Item = &str> + '_ {
        self.resources
            .iter()
            .chain(&self.patches)
            .chain(&self.generator_inputs)
            .copied()
    }
}

fn kustomizations(tree: &Tree) -> Vec<Kustomization<'_>> {
    tree.docs
        .iter()
        .filter(|doc| doc.kind() == "Kustomization")
        .map(|doc| {
            let patches = items(&doc.value, "/patches")
                .filter_map(|patch| text(patch, "/path"))
                .collect();
            let mut generator_inputs = Vec::new();
            for generator in ["/secretGenerator", "/configMapGenerator"] {
                for item in items(&doc.value, generator) {
                    generator_inputs.extend(texts(item, "/envs"));
                    // `files` entries may be `key=path`.
                    generator_inputs.extend(
                        texts(item, "/files")
                            .into_iter()
                            .map(|entry| entry.split_once('=').map_or(entry, |(_, path)| path)),
                    );
                }
            }
            Kustomization {
                doc,
                resources: texts(&doc.value, "/resources"),
                patches,
                generator_inputs,
            }
        })
        .collect()
}

/// The documents a kustomization creates (its `resources`), as opposed to patches.
fn resources(tree: &Tree) -> Vec<&Doc> {
    let listed: BTreeSet<String> = kustomizations(tree)
        .iter()
        .flat_map(|k| k.resources.iter().map(|entry| join(k.dir(), entry)))
        .collect();
    tree.docs
        .iter()
        .filter(|doc| listed.contains(&doc.file))
        .collect()
}

/// The documents used as patches, by a kustomization or by the walkthrough's `kubectl patch`.
fn patches(tree: &Tree) -> Vec<&Doc> {
    let listed: BTreeSet<String> = kustomizations(tree)
        .iter()
        .flat_map(|k| k.patches.iter().map(|entry| join(k.dir(), entry)))
        .chain(tree.kubectl_patches.iter().cloned())
        .collect();
    tree.docs
        .iter()
        .filter(|doc| listed.contains(&doc.file))
        .collect()
}

fn of_kind<'a>(docs: &[&'a Doc], kind: &str) -> Vec<&'a Doc> {
    docs.iter()
        .copied()
        .filter(|doc| doc.kind() == kind)
        .collect()
}

/// The single document of `kind` among `docs`, or a problem saying how many there are.
fn only<'a>(docs: &[&'a Doc], kind: &str, problems: &mut Vec<String>) -> Option<&'a Doc> {
    match of_kind(docs, kind).as_slice() {
        [doc] => Some(*doc),
        found => {
            problems.push(format!(
                "expected exactly one {kind}, found {}",
                found.len()
            ));
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The checks.

/// Every problem with the manifests; empty when they are consistent.
fn check(tree: &Tree) -> Vec<String> {
    let mut problems = Vec::new();
    check_documents(tree, &mut problems);
    check_kustomizations(tree, &mut problems);
    if let Some(service) = check_control_service(tree, &mut problems) {
        check_rbac(tree, &service, &mut problems);
        if let Some(plugin) = check_wasmplugin(tree, &service, &mut problems) {
            check_routing(tree, &plugin, &mut problems);
            check_stats(tree, &plugin, &mut problems);
            check_tracing(tree, &plugin, &mut problems);
        }
    }
    problems
}

/// Every document is a Kubernetes object with a valid name; labels and annotations are strings.
fn check_documents(tree: &Tree, problems: &mut Vec<String>) {
    let mut seen = BTreeSet::new();
    let patch_files: BTreeSet<&str> = patches(tree).iter().map(|doc| doc.file.as_str()).collect();
    for doc in &tree.docs {
        for (pointer, field) in [
            ("/apiVersion", "apiVersion"),
            ("/kind", "kind"),
            ("/metadata/name", "metadata.name"),
        ] {
            if text(&doc.value, pointer).is_none_or(str::is_empty) {
                problems.push(format!("{}: no {field}", doc.at()));
            }
        }
        if !doc.name().is_empty() && !is_object_name(doc.name()) {
            problems.push(format!(
                "{}: {:?} is not a valid object name",
                doc.at(),
                doc.name()
            ));
        }
        // Namespaced objects say where they go, so `kubectl apply` does not depend on the
        // context's namespace. Patches take the target's.
        if !is_cluster_scoped(doc.kind())
            && !patch_files.contains(doc.file.as_str())
            && doc.namespace().is_empty()
        {
            problems.push(format!("{}: no metadata.namespace", doc.at()));
        }
        for pointer in [
            "/metadata/labels",
            "/metadata/annotations",
            "/spec/template/metadata/labels",
            "/spec/template/metadata/annotations",
        ] {
            let Some(map) = doc.value.pointer(pointer) else {
                continue;
            };
            let Some(map) = map.as_object() else {
                problems.push(format!("{}: {pointer} is not a map", doc.at()));
                continue;
            };
            for (key, value) in map {
                if !value.is_string() {
                    problems.push(format!(
                        "{}: {pointer}/{key} is {value}, not a string (Kubernetes takes only strings)",
                        doc.at()
                    ));
                }
            }
        }
        let id = (
            doc.dir().to_string(),
            doc.kind().to_string(),
            doc.namespace().to_string(),
            doc.name().to_string(),
        );
        if !seen.insert(id) {
            problems.push(format!("{}: defined twice", doc.at()));
        }
    }
}

/// Every file a kustomization names exists, every YAML file is named by its directory's
/// kustomization, and remote resources are pinned.
fn check_kustomizations(tree: &Tree, problems: &mut Vec<String>) {
    let all = kustomizations(tree);
    if all.is_empty() {
        problems.push("no kustomization.yaml".to_string());
    }
    let mut dirs = BTreeSet::new();
    for k in &all {
        if file_name(&k.doc.file) != "kustomization.yaml" {
            problems.push(format!(
                "{}: a Kustomization must be in a file named kustomization.yaml",
                k.doc.at()
            ));
        }
        if !dirs.insert(k.dir()) {
            problems.push(format!(
                "{}: a second Kustomization in {:?}",
                k.doc.at(),
                k.dir()
            ));
        }
        for entry in k.entries() {
            if entry.contains("://") {
                check_remote(k, entry, problems);
                continue;
            }
            if entry.starts_with('/') || entry.split('/').any(|part| part == "..") {
                problems.push(format!(
                    "{}: {entry:?} is outside the kustomization's directory",
                    k.doc.at()
                ));
                continue;
            }
            let path = join(k.dir(), entry);
            let exists = tree.files.contains_key(&path);
            // A git-ignored local input (the API token) is made from its `.example`.
            let made_locally =
                tree.ignored.contains(&path) && tree.files.contains_key(&format!("{path}.example"));
            if !exists && !made_locally {
                problems.push(format!(
                    "{}: lists {entry:?}, which does not exist",
                    k.doc.at()
                ));
            }
        }
    }
    for file in &tree.kubectl_patches {
        if !tree.files.contains_key(file) {
            problems.push(format!(
                "{WALKTHROUGH} patches with {MANIFESTS}/{file}, which does not exist"
            ));
        }
    }
    // Only manifests must be listed (or applied as patches by the walkthrough); other files (a
    // README, an env file's example) may sit beside them.
    for file in tree.files.keys().filter(|file| is_yaml(file)) {
        let Some(k) = all.iter().find(|k| k.dir() == parent(file)) else {
            problems.push(format!("{file}: no kustomization.yaml in its directory"));
            continue;
        };
        if file_name(file) == "kustomization.yaml" || tree.kubectl_patches.contains(file) {
            continue;
        }
        let listed = k.entries().any(|entry| *file == join(k.dir(), entry));
        if !listed {
            problems.push(format!(
                "{file} is not listed in {}",
                join(k.dir(), "kustomization.yaml")
            ));
        }
    }
}

/// A remote resource must be a raw file pinned to a release branch, a tag or a commit, not to a
/// default branch that moves on every merge.
fn check_remote(k: &Kustomization<'_>, url: &str, problems: &mut Vec<String>) {
    let Some(path) = url.strip_prefix("https://raw.githubusercontent.com/") else {
        problems.push(format!(
            "{}: remote resource {url:?} is not a raw GitHub file",
            k.doc.at()
        ));
        return;
    };
    match path.split('/').nth(2) {
        Some(reference) if !matches!(reference, "master" | "main" | "HEAD" | "refs") => {}
        _ => problems.push(format!(
            "{}: remote resource {url:?} is not pinned to a release branch, tag or commit",
            k.doc.at()
        )),
    }
}

/// What the other checks need to know about the control service.
struct ControlService {
    namespace: String,
    service_account: String,
    /// `name.namespace` of the Service and the port it serves the module on.
    service_host: String,
    service_port: u64,
    /// `--kube-namespace` and `--wasmplugin`: the WasmPlugin the service patches.
    plugin_namespace: String,
    plugin_name: String,
    /// The VirtualServices and DestinationRules `--routing-objects` keeps current (`<route>[=<name>]`,
    /// comma-separated), by name, in `plugin_namespace`.
    routing_objects: Vec<String>,
    /// `--leader-lease`.
    lease: String,
    /// `--state-configmap`.
    state_configmap: String,
}

/// `--flag=value` and `--flag value` arguments.
fn flags(args: &[&str]) -> BTreeMap<String, String> {
    let mut flags = BTreeMap::new();
    let mut rest = args.iter().peekable();
    while let Some(arg) = rest.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            continue;
        };
        match flag.split_once('=') {
            Some((name, value)) => {
                flags.insert(name.to_string(), value.to_string());
            }
            None => {
                let value = match rest.peek() {
                    Some(next) if !next.starts_with("--") => rest.next().copied(),
                    _ => None,
                };
                flags.insert(flag.to_string(), value.unwrap_or_default().to_string());
            }
        }
    }
    flags
}

/// The port number a probe or Service `targetPort` names, by number or by the container port's name.
fn resolve_port(port: Option<&Value>, ports: &[(String, u64)]) -> Option<u64> {
    match port? {
        Value::Number(number) => number.as_u64(),
        Value::String(name) => ports
            .iter()
            .find(|(port_name, _)| port_name == name)
            .map(|(_, number)| *number),
        _ => None,
    }
}

/// The Deployment of `meshcanary serve` and everything that has to agree with it: its flags,
/// probes, security settings, Service, token Secret, ServiceAccount and disruption budget.
fn check_control_service(tree: &Tree, problems: &mut Vec<String>) -> Option<ControlService> {
    let created = resources(tree);
    let deployment = only(&created, "Deployment", problems)?;
    let at = deployment.at();
    let v = &deployment.value;
    let namespace = deployment.namespace().to_string();

    if v.pointer("/spec/replicas").and_then(Value::as_u64) != Some(2) {
        problems.push(format!("{at}: replicas must be 2 (a leader and a standby)"));
    }
    let pod_labels = labels(v, "/spec/template/metadata/labels");
    if !selects(&labels(v, "/spec/selector/matchLabels"), &pod_labels) {
        problems.push(format!(
            "{at}: spec.selector does not select the pod template's labels"
        ));
    }
    let pod = v
        .pointer("/spec/template/spec")
        .cloned()
        .unwrap_or(Value::Null);
    let containers = pod.pointer("/containers").and_then(Value::as_array);
    let Some([container]) = containers.map(Vec::as_slice) else {
        problems.push(format!("{at}: expected exactly one container"));
        return None;
    };

    // The command line.
    if texts(container, "/command") != ["meshcanary"]
        || texts(container, "/args").first() != Some(&"serve")
    {
        problems.push(format!("{at}: the container must run `meshcanary serve`"));
    }
    let env: BTreeMap<&str, &Value> = items(container, "/env")
        .filter_map(|var| Some((text(var, "/name")?, var)))
        .collect();
    // Kubernetes expands `$(NAME)` in args from the container's env; only what the downward API
    // gives from metadata.namespace, or a literal value, is known here.
    let expand = |value: &str| -> Option<String> {
        let Some(name) = value
            .strip_prefix("$(")
            .and_then(|rest| rest.strip_suffix(')'))
        else {
            return Some(value.to_string());
        };
        let var = env.get(name)?;
        if let Some(literal) = text(var, "/value") {
            return Some(literal.to_string());
        }
        (text(var, "/valueFrom/fieldRef/fieldPath") == Some("metadata.namespace"))
            .then(|| namespace.clone())
    };
    let mut flag = BTreeMap::new();
    for (name, value) in flags(&texts(container, "/args")) {
        match expand(&value) {
            Some(value) => {
                flag.insert(name, value);
            }
            None => problems.push(format!(
                "{at}: --{name}={value} refers to an unknown variable"
            )),
        }
    }
    for name in [
        "listen",
        "kube-namespace",
        "wasmplugin",
        "state-configmap",
        "state-configmap-namespace",
        "leader-lease",
        "prometheus-url",
        "wasm",
    ] {
        if flag.get(name).is_none_or(String::is_empty) {
            problems.push(format!("{at}: no --{name}"));
        }
    }
    let flag_value = |name: &str| flag.get(name).cloned().unwrap_or_default();

    // Ports and probes.
    let ports: Vec<(String, u64)> = items(container, "/ports")
        .filter_map(|port| {
            let number = port.pointer("/containerPort").and_then(Value::as_u64)?;
            Some((text(port, "/name").unwrap_or_default().to_string(), number))
        })
        .collect();
    let [(_, container_port)] = ports.as_slice() else {
        problems.push(format!("{at}: expected exactly one container port"));
        return None;
    };
    let container_port = *container_port;
    let listen = flag_value("listen");
    if listen != format!("0.0.0.0:{container_port}") {
        problems.push(format!(
            "{at}: --listen={listen} does not listen on all addresses at the container port {container_port}"
        ));
    }
    // Readiness leaves out the proxies' check: a proxy rejecting a config must not take away the
    // Service the module is downloaded from.
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz?exclude=proxies"),
    ] {
        let get = container.pointer(&format!("/{probe}/httpGet"));
        let probe_path = get.and_then(|get| text(get, "/path"));
        if probe_path != Some(path) {
            problems.push(format!("{at}: {probe} must GET {path}, not {probe_path:?}"));
        }
        let port = resolve_port(get.and_then(|get| get.pointer("/port")), &ports);
        if port != Some(container_port) {
            problems.push(format!(
                "{at}: {probe} port {port:?} is not the container port {container_port}"
            ));
        }
    }

    // The lease holder's identity and the token.
    if env
        .get("POD_NAME")
        .and_then(|var| text(var, "/valueFrom/fieldRef/fieldPath"))
        != Some("metadata.name")
    {
        problems.push(format!("{at}: env POD_NAME must come from metadata.name"));
    }
    let token = env.get("MESHCANARY_TOKEN").map(|var| {
        (
            text(var, "/valueFrom/secretKeyRef/name").unwrap_or_default(),
            text(var, "/valueFrom/secretKeyRef/key").unwrap_or_default(),
        )
    });
    match token {
        Some((secret, key)) if !secret.is_empty() && !key.is_empty() => {
            check_token_secret(tree, deployment, secret, key, problems);
        }
        _ => problems.push(format!(
            "{at}: env MESHCANARY_TOKEN must come from a Secret (secretKeyRef)"
        )),
    }

    // Hardening.
    // Pod-level settings apply to the container unless it overrides them.
    let either = |pointer: &str| {
        container
            .pointer(pointer)
            .or_else(|| pod.pointer(pointer))
            .cloned()
    };
    let requirements = [
        (
            "/securityContext/runAsNonRoot",
            json!(true),
            "runAsNonRoot: true",
        ),
        (
            "/securityContext/seccompProfile/type",
            json!("RuntimeDefault"),
            "seccompProfile RuntimeDefault",
        ),
    ];
    for (pointer, wanted, what) in requirements {
        if either(pointer) != Some(wanted) {
            problems.push(format!("{at}: needs {what}"));
        }
    }
    for (pointer, wanted, what) in [
        (
            "/securityContext/allowPrivilegeEscalation",
            json!(false),
            "allowPrivilegeEscalation: false",
        ),
        (
            "/securityContext/readOnlyRootFilesystem",
            json!(true),
            "readOnlyRootFilesystem: true",
        ),
        (
            "/securityContext/capabilities/drop",
            json!(["ALL"]),
            "capabilities drop [ALL]",
        ),
    ] {
        if container.pointer(pointer) != Some(&wanted) {
            problems.push(format!("{at}: the container needs {what}"));
        }
    }
    if container
        .pointer("/securityContext/capabilities/add")
        .is_some()
        || container.pointer("/securityContext/privileged") == Some(&json!(true))
    {
        problems.push(format!(
            "{at}: the container must not add capabilities or be privileged"
        ));
    }
    for resource in [
        "/resources/requests/cpu",
        "/resources/requests/memory",
        "/resources/limits/cpu",
        "/resources/limits/memory",
    ] {
        if container.pointer(resource).is_none() {
            problems.push(format!("{at}: no {resource}"));
        }
    }

    // The ServiceAccount.
    let service_account = text(&pod, "/serviceAccountName")
        .unwrap_or("default")
        .to_string();
    let accounts = of_kind(&created, "ServiceAccount");
    if !accounts
        .iter()
        .any(|sa| sa.name() == service_account && sa.namespace() == namespace)
    {
        problems.push(format!(
            "{at}: serviceAccountName {service_account:?} is not a ServiceAccount in {namespace}"
        ));
    }

    // The Service in front of it.
    let mut service_host = String::new();
    let mut service_port = 0;
    let services = of_kind(&created, "Service");
    let selecting: Vec<&&Doc> = services
        .iter()
        .filter(|s| {
            s.namespace() == namespace && selects(&labels(&s.value, "/spec/selector"), &pod_labels)
        })
        .collect();
    match selecting.as_slice() {
        [service] => {
            service_host = format!("{}.{}", service.name(), service.namespace());
            let targeting: Vec<u64> = items(&service.value, "/spec/ports")
                .filter(|port| {
                    resolve_port(port.pointer("/targetPort"), &ports) == Some(container_port)
                })
                .filter_map(|port| port.pointer("/port").and_then(Value::as_u64))
                .collect();
            match targeting.as_slice() {
                [port] => service_port = *port,
                _ => problems.push(format!(
                    "{}: no port whose targetPort is the container port {container_port}",
                    service.at()
                )),
            }
        }
        _ => problems.push(format!(
            "{at}: expected exactly one Service selecting its pods {pod_labels:?}, found {}",
            selecting.len()
        )),
    }
    for budget in of_kind(&created, "PodDisruptionBudget") {
        if budget.namespace() != namespace
            || !selects(
                &labels(&budget.value, "/spec/selector/matchLabels"),
                &pod_labels,
            )
        {
            problems.push(format!(
                "{}: does not select the control service's pods",
                budget.at()
            ));
        }
        if budget
            .value
            .pointer("/spec/minAvailable")
            .and_then(Value::as_u64)
            != Some(1)
        {
            problems.push(format!(
                "{}: minAvailable must be 1 of the 2 replicas",
                budget.at()
            ));
        }
    }

    let state = flag_value("state-configmap-namespace");
    if state != namespace {
        problems.push(format!(
            "{at}: --state-configmap-namespace={state} is not its own namespace {namespace}"
        ));
    }
    let wasm = flag_value("wasm");
    if !wasm.starts_with('/') || !wasm.ends_with(".wasm") {
        problems.push(format!(
            "{at}: --wasm={wasm} is not an absolute path to a .wasm file"
        ));
    }
    let prometheus = flag_value("prometheus-url");
    if !prometheus.starts_with("http://") && !prometheus.starts_with("https://") {
        problems.push(format!(
            "{at}: --prometheus-url={prometheus} is not an http(s) URL"
        ));
    }
    Some(ControlService {
        namespace,
        service_account,
        service_host,
        service_port,
        plugin_namespace: flag_value("kube-namespace"),
        plugin_name: flag_value("wasmplugin"),
        routing_objects: flag_value("routing-objects")
            .split(',')
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.split_once('=')
                    .map_or(item, |(_, name)| name)
                    .to_string()
            })
            .collect(),
        lease: flag_value("leader-lease"),
        state_configmap: flag_value("state-configmap"),
    })
}

/// The Secret the token comes from exists in the Deployment's namespace and has the key: a Secret
/// manifest, or a secretGenerator of the same directory whose env file (or its `.example`) sets it.
fn check_token_secret(
    tree: &Tree,
    deployment: &Doc,
    secret: &str,
    key: &str,
    problems: &mut Vec<String>,
) {
    let namespace = deployment.namespace();
    let manifest = tree.docs.iter().any(|doc| {
        doc.kind() == "Secret"
            && doc.name() == secret
            && doc.namespace() == namespace
            && (doc.value.pointer(&format!("/data/{key}")).is_some()
                || doc.value.pointer(&format!("/stringData/{key}")).is_some())
    });
    let generated = kustomizations(tree)
        .iter()
        .filter(|k| k.dir() == deployment.dir())
        .flat_map(|k| items(&k.doc.value, "/secretGenerator"))
        .filter(|generator| {
            text(generator, "/name") == Some(secret)
                && text(generator, "/namespace") == Some(namespace)
        })
        .any(|generator| {
            let literals = texts(generator, "/literals");
            let env_files = texts(generator, "/envs");
            let from_literals = literals
                .iter()
                .any(|line| line.split_once('=').is_some_and(|(k, _)| k == key));
            let from_files = env_files.iter().any(|file| {
                let path = join(deployment.dir(), file);
                let contents = tree
                    .files
                    .get(&path)
                    .or_else(|| tree.files.get(&format!("{path}.example")));
                contents.is_some_and(|contents| {
                    contents
                        .lines()
                        .map(str::trim)
                        .filter(|line| !line.starts_with('#'))
                        .any(|line| line.split_once('=').is_some_and(|(k, _)| k.trim() == key))
                })
            });
            from_literals || from_files
        });
    if !manifest && !generated {
        problems.push(format!(
            "{}: MESHCANARY_TOKEN comes from secret {secret:?} key {key:?}, which nothing here creates in {namespace}",
            deployment.at()
        ));
    }
}

/// A grant: in which namespace, on which API group and resource.
type Scope = (String, String, String);

/// The Deployments behind reviews' variants in Istio's bookinfo sample, which its rollouts name in
/// `workloads`: the only ones the service may read and scale.
const SCALED_DEPLOYMENTS: [&str; 3] = ["reviews-v1", "reviews-v2", "reviews-v3"];

fn scope(namespace: &str, group: &str, resource: &str) -> Scope {
    (
        namespace.to_string(),
        group.to_string(),
        resource.to_string(),
    )
}

/// The bindings name existing roles and only the control service's ServiceAccount, nothing is
/// granted cluster-wide, and what the ServiceAccount may do is exactly what the service needs.
fn check_rbac(tree: &Tree, service: &ControlService, problems: &mut Vec<String>) {
    let created = resources(tree);
    let roles: Vec<&Doc> = created
        .iter()
        .copied()
        .filter(|doc| matches!(doc.kind(), "Role" | "ClusterRole"))
        .collect();
    for role in &roles {
        for rule in items(&role.value, "/rules") {
            if rule.pointer("/nonResourceURLs").is_some() {
                problems.push(format!("{}: grants nonResourceURLs", role.at()));
            }
            for field in ["apiGroups", "resources", "verbs"] {
                let items = texts(rule, &format!("/{field}"));
                if items.is_empty() || items.contains(&"*") {
                    problems.push(format!("{}: a rule with no or wildcard {field}", role.at()));
                }
            }
        }
    }

    let mut granted: BTreeMap<Scope, BTreeSet<String>> = BTreeMap::new();
    for binding in created
        .iter()
        .filter(|doc| matches!(doc.kind(), "RoleBinding" | "ClusterRoleBinding"))
    {
        let at = binding.at();
        let v = &binding.value;
        if text(v, "/roleRef/apiGroup") != Some("rbac.authorization.k8s.io") {
            problems.push(format!(
                "{at}: roleRef.apiGroup must be rbac.authorization.k8s.io"
            ));
        }
        let ref_kind = text(v, "/roleRef/kind").unwrap_or_default();
        let ref_name = text(v, "/roleRef/name").unwrap_or_default();
        let role = roles.iter().find(|role| {
            role.kind() == ref_kind
                && role.name() == ref_name
                && (ref_kind == "ClusterRole" || role.namespace() == binding.namespace())
        });
        let Some(role) = role else {
            problems.push(format!(
                "{at}: roleRef names {ref_kind} {ref_name:?}, and there is no such {ref_kind}{}",
                if ref_kind == "Role" {
                    format!(" in {}", binding.namespace())
                } else {
                    String::new()
                }
            ));
            continue;
        };
        let subjects = v.pointer("/subjects").and_then(Value::as_array);
        if subjects.is_none_or(Vec::is_empty) {
            problems.push(format!("{at}: no subjects"));
        }
        for subject in subjects.into_iter().flatten() {
            let is_ours = text(subject, "/kind") == Some("ServiceAccount")
                && text(subject, "/name") == Some(&service.service_account)
                && text(subject, "/namespace") == Some(&service.namespace);
            if !is_ours {
                problems.push(format!(
                    "{at}: subject {subject} is not the Deployment's ServiceAccount {}/{}",
                    service.namespace, service.service_account
                ));
            }
        }
        if binding.kind() == "ClusterRoleBinding" {
            problems.push(format!(
                "{at}: grants cluster-wide; bind the ClusterRole with a RoleBinding per managed namespace"
            ));
            continue;
        }
        for rule in items(&role.value, "/rules") {
            for group in texts(rule, "/apiGroups") {
                for resource in texts(rule, "/resources") {
                    granted
                        .entry(scope(binding.namespace(), group, resource))
                        .or_default()
                        .extend(texts(rule, "/verbs").into_iter().map(str::to_string));
                }
            }
            // Least privilege by name: everything but `create` (which RBAC cannot restrict by
            // name) is granted on the one object the service uses, and only on it.
            let names = texts(rule, "/resourceNames");
            let verbs = texts(rule, "/verbs");
            for resource in texts(rule, "/resources") {
                let used: Vec<&str> = match resource {
                    "configmaps" => vec![&service.state_configmap],
                    "leases" => vec![&service.lease],
                    "wasmplugins" => vec![&service.plugin_name],
                    "virtualservices" | "destinationrules" => {
                        service.routing_objects.iter().map(String::as_str).collect()
                    }
                    "deployments" | "deployments/scale" => SCALED_DEPLOYMENTS.to_vec(),
                    _ => continue,
                };
                let shown = match used.as_slice() {
                    [one] => format!("{one:?}"),
                    all => format!("{all:?}"),
                };
                let mut sorted_names = names.clone();
                sorted_names.sort_unstable();
                let mut sorted_used = used.clone();
                sorted_used.sort_unstable();
                if !names.is_empty() && sorted_names != sorted_used {
                    problems.push(format!(
                        "{}: {resource} restricted to {names:?}, but the service uses {shown}",
                        role.at()
                    ));
                }
                if !names.is_empty() && verbs.contains(&"create") {
                    problems.push(format!(
                        "{}: create on {resource} restricted by resourceNames, which RBAC cannot do (it grants nothing)",
                        role.at()
                    ));
                }
                if names.is_empty() && verbs.iter().any(|verb| *verb != "create") {
                    problems.push(format!(
                        "{}: {verbs:?} on {resource} not restricted by name to {shown}",
                        role.at()
                    ));
                }
            }
        }
    }

    let own = &service.namespace;
    let managed = &service.plugin_namespace;
    let expected: BTreeMap<Scope, BTreeSet<String>> = [
        (
            scope(own, "", "configmaps"),
            strings(&["get", "create", "update"]),
        ),
        (
            scope(own, "coordination.k8s.io", "leases"),
            strings(&["get", "create", "update"]),
        ),
        (
            scope(managed, "extensions.istio.io", "wasmplugins"),
            strings(&["get", "list", "watch", "patch"]),
        ),
        // MeshRollouts: the service follows them and writes status; its API creates and deletes
        // the ones asked of it.
        (
            scope(own, "meshcanary.io", "meshrollouts"),
            strings(&[
                "get", "list", "watch", "create", "patch", "update", "delete",
            ]),
        ),
        (
            scope(own, "meshcanary.io", "meshrollouts/status"),
            strings(&["patch", "update"]),
        ),
        (scope(own, "", "events"), strings(&["create", "patch"])),
        // `--routing-objects`: each route's VirtualService and DestinationRule, read and patched.
        (
            scope(managed, "networking.istio.io", "virtualservices"),
            strings(&["get", "patch"]),
        ),
        (
            scope(managed, "networking.istio.io", "destinationrules"),
            strings(&["get", "patch"]),
        ),
        (
            scope(own, "events.k8s.io", "events"),
            strings(&["create", "patch"]),
        ),
        // Rollouts with `workloads`: the Deployments behind the variants, read and scaled, and
        // the old stable deleted after success with `scaleDown: delete`.
        (
            scope(managed, "apps", "deployments"),
            strings(&["get", "delete"]),
        ),
        (
            scope(managed, "apps", "deployments/scale"),
            strings(&["patch"]),
        ),
    ]
    .into_iter()
    .filter(|(scope, _)| {
        !service.routing_objects.is_empty()
            || !matches!(
                scope.2.as_str(),
                "virtualservices" | "destinationrules" | "deployments" | "deployments/scale"
            )
    })
    .collect();
    for (scope, verbs) in &granted {
        let wanted = expected.get(scope).cloned().unwrap_or_default();
        let extra: Vec<&String> = verbs.difference(&wanted).collect();
        if !extra.is_empty() {
            problems.push(format!(
                "RBAC grants {extra:?} on {}/{} in namespace {:?}, which the service does not need",
                scope.1, scope.2, scope.0
            ));
        }
    }
    for (scope, verbs) in &expected {
        let have = granted.get(scope).cloned().unwrap_or_default();
        let missing: Vec<&String> = verbs.difference(&have).collect();
        if !missing.is_empty() {
            problems.push(format!(
                "RBAC does not grant {missing:?} on {}/{} in namespace {:?}, which the service needs",
                scope.1, scope.2, scope.0
            ));
        }
    }
}

/// The Telemetry that tags trace spans with the variant: in the WasmPlugin's namespace, selecting
/// the same pods (the callers, where the variant is chosen), the tag read from the header the
/// filter writes.
fn check_tracing(tree: &Tree, plugin: &Plugin, problems: &mut Vec<String>) {
    let created = resources(tree);
    let Some(telemetry) = only(&created, "Telemetry", problems) else {
        return;
    };
    let at = telemetry.at();
    let v = &telemetry.value;
    if text(v, "/apiVersion") != Some("telemetry.istio.io/v1") {
        problems.push(format!("{at}: apiVersion must be telemetry.istio.io/v1"));
    }
    if telemetry.namespace() != plugin.namespace
        || labels(v, "/spec/selector/matchLabels") != plugin.selector
    {
        problems.push(format!(
            "{at}: must select the WasmPlugin's pods ({:?} in {}), where the variant is chosen",
            plugin.selector, plugin.namespace
        ));
    }
    let headers: Vec<&str> = items(v, "/spec/tracing")
        .filter_map(|tracing| text(tracing, "/customTags/meshcanary.variant/header/name"))
        .collect();
    if headers != [plugin.config.variant_header.as_str()] {
        problems.push(format!(
            "{at}: the tag meshcanary.variant must come from the header the filter writes ({:?}), not {headers:?}",
            plugin.config.variant_header
        ));
    }
}

/// What the routing and stats checks need to know about the WasmPlugin.
struct Plugin {
    doc_dir: String,
    namespace: String,
    selector: BTreeMap<String, String>,
    config: CheckedConfig,
}

/// The WasmPlugin: the one the service patches, on the callers' outbound side, early enough, with
/// the module from the control Service and a `pluginConfig` the filter accepts.
fn check_wasmplugin(
    tree: &Tree,
    service: &ControlService,
    problems: &mut Vec<String>,
) -> Option<Plugin> {
    let created = resources(tree);
    let plugin = only(&created, "WasmPlugin", problems)?;
    let at = plugin.at();
    let v = &plugin.value;
    if text(v, "/apiVersion") != Some("extensions.istio.io/v1alpha1") {
        problems.push(format!(
            "{at}: apiVersion must be extensions.istio.io/v1alpha1"
        ));
    }
    if (plugin.namespace(), plugin.name())
        != (
            service.plugin_namespace.as_str(),
            service.plugin_name.as_str(),
        )
    {
        problems.push(format!(
            "{at}: the control service patches WasmPlugin {}/{} (--kube-namespace, --wasmplugin), not this one",
            service.plugin_namespace, service.plugin_name
        ));
    }
    for (pointer, wanted) in [
        ("/spec/pluginName", PLUGIN_NAME),
        // Before every filter that reads the route; see wasmplugin.yaml.
        ("/spec/phase", "AUTHN"),
        ("/spec/failStrategy", "FAIL_OPEN"),
    ] {
        if text(v, pointer) != Some(wanted) {
            problems.push(format!(
                "{at}: {pointer} must be {wanted}, not {:?}",
                text(v, pointer)
            ));
        }
    }
    let modes: Vec<&str> = items(v, "/spec/match")
        .map(|m| text(m, "/mode").unwrap_or_default())
        .collect();
    if modes.is_empty() || modes.iter().any(|mode| *mode != "CLIENT") {
        problems.push(format!(
            "{at}: match must be [{{mode: CLIENT}}] (the variant is chosen on the caller's side), not {modes:?}"
        ));
    }
    let selector = labels(v, "/spec/selector/matchLabels");
    if selector.is_empty() {
        problems.push(format!(
            "{at}: no selector.matchLabels: it would run in every proxy of {}",
            plugin.namespace()
        ));
    }
    let sha256 = text(v, "/spec/sha256").unwrap_or_default();
    let is_digest = sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if sha256 != SHA256_PLACEHOLDER && !is_digest {
        problems.push(format!(
            "{at}: sha256 {sha256:?} is neither 64 lowercase hex digits nor the placeholder {SHA256_PLACEHOLDER}"
        ));
    }
    let url = text(v, "/spec/url").unwrap_or_default();
    let expected_hosts = [
        format!("{}.svc:{}", service.service_host, service.service_port),
        format!(
            "{}.svc.cluster.local:{}",
            service.service_host, service.service_port
        ),
    ];
    let url_ok = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(authority, path)| {
            expected_hosts.iter().any(|host| host == authority) && format!("/{path}") == MODULE_PATH
        });
    if !url_ok {
        problems.push(format!(
            "{at}: url {url:?} is not the control Service's module, http://{}{MODULE_PATH}",
            expected_hosts[0]
        ));
    }

    if v.pointer("/spec/pluginConfig").is_some() {
        problems.push(format!(
            "{at}: spec.pluginConfig is set: the service owns it (server-side apply), so the manifest \
             must leave it out or every re-apply resets a rollout (put the starting config in the \
             {INITIAL_CONFIG} annotation)"
        ));
    }
    let Some(seed) = text(
        v,
        &format!(
            "/metadata/annotations/{}",
            INITIAL_CONFIG.replace('/', "~1")
        ),
    ) else {
        problems.push(format!(
            "{at}: no {INITIAL_CONFIG} annotation: the service would start from an empty config"
        ));
        return None;
    };
    let config = match FilterConfig::from_json(seed.as_bytes()) {
        Ok(config) => config,
        Err(error) => {
            problems.push(format!(
                "{at}: {INITIAL_CONFIG} does not parse as the filter's config: {error}"
            ));
            return None;
        }
    };
    let config = match CheckedConfig::try_from(config) {
        Ok(config) => config,
        Err(error) => {
            problems.push(format!(
                "{at}: the filter would reject {INITIAL_CONFIG}: {error}"
            ));
            return None;
        }
    };
    Some(Plugin {
        doc_dir: plugin.dir().to_string(),
        namespace: plugin.namespace().to_string(),
        selector,
        config,
    })
}

/// The filter's route for a VirtualService host: the one matching it both as written and fully
/// qualified, the two names a caller in the mesh may use.
fn route_for<'a>(
    config: &'a CheckedConfig,
    host: &str,
    namespace: &str,
) -> Option<&'a CheckedRoute> {
    let full = if host.contains('.') {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.cluster.local")
    };
    config.routes.iter().find(|route| {
        [host, full.as_str()].iter().all(|name| {
            route
                .hosts
                .iter()
                .any(|pattern| pattern.matches(name.as_bytes()))
        })
    })
}

/// The VirtualService routes on the filter's variant header to subsets named after the variants,
/// which the DestinationRule defines, with the stable variant as the default at the end.
fn check_routing(tree: &Tree, plugin: &Plugin, problems: &mut Vec<String>) {
    let created = resources(tree);
    let services = of_kind(&created, "VirtualService");
    if services.is_empty() {
        problems.push("no VirtualService routes on the variant header".to_string());
    }
    let header = &plugin.config.variant_header;
    if header != DEFAULT_VARIANT_HEADER {
        problems.push(format!(
            "pluginConfig's variantHeader {header:?} is not the default {DEFAULT_VARIANT_HEADER:?}"
        ));
    }
    for vs in services {
        let at = vs.at();
        let hosts = texts(&vs.value, "/spec/hosts");
        let &[host] = hosts.as_slice() else {
            problems.push(format!("{at}: expected exactly one host"));
            continue;
        };
        let Some(route) = route_for(&plugin.config, host, vs.namespace()) else {
            problems.push(format!(
                "{at}: no pluginConfig route matches host {host:?} (and its fully qualified name)"
            ));
            continue;
        };
        let rule = of_kind(&created, "DestinationRule").into_iter().find(|dr| {
            dr.namespace() == vs.namespace() && text(&dr.value, "/spec/host") == Some(host)
        });
        let Some(rule) = rule else {
            problems.push(format!("{at}: no DestinationRule for host {host:?}"));
            continue;
        };
        let mut subsets = BTreeSet::new();
        for subset in items(&rule.value, "/spec/subsets") {
            let name = text(subset, "/name").unwrap_or_default();
            if labels(subset, "/labels").is_empty() {
                problems.push(format!("{}: subset {name:?} selects no pods", rule.at()));
            }
            subsets.insert(name.to_string());
        }

        let http: Vec<&Value> = items(&vs.value, "/spec/http").collect();
        let mut routed = BTreeSet::new();
        for (index, entry) in http.iter().enumerate() {
            let destinations: Vec<&Value> = items(entry, "/route").collect();
            let [destination] = destinations.as_slice() else {
                problems.push(format!(
                    "{at}: http[{index}] must have exactly one destination"
                ));
                continue;
            };
            let subset = text(destination, "/destination/subset").unwrap_or_default();
            if text(destination, "/destination/host") != Some(host) {
                problems.push(format!(
                    "{at}: http[{index}] goes to another host than {host:?}"
                ));
            }
            if !subsets.contains(subset) {
                problems.push(format!(
                    "{at}: http[{index}] goes to subset {subset:?}, which the DestinationRule does not define"
                ));
            }
            let matches = entry.pointer("/match").and_then(Value::as_array);
            let Some(matches) = matches else {
                // The catch-all: the stable variant, and last (routes are tried in order).
                if index + 1 != http.len() {
                    problems.push(format!(
                        "{at}: http[{index}] matches everything but is not last"
                    ));
                }
                if Some(subset) != route.variants.first().map(String::as_str) {
                    problems.push(format!(
                        "{at}: the default route goes to {subset:?}, not the stable variant {:?}",
                        route.variants.first()
                    ));
                }
                continue;
            };
            for condition in matches {
                let condition_headers = condition.pointer("/headers").and_then(Value::as_object);
                let value = match condition_headers
                    .map(|h| h.iter().collect::<Vec<_>>())
                    .as_deref()
                {
                    Some([(name, value)]) if *name == header => text(value, "/exact"),
                    _ => None,
                };
                let Some(value) = value else {
                    problems.push(format!(
                        "{at}: http[{index}] must match exactly the header {header:?} with an exact value"
                    ));
                    continue;
                };
                if !route.variants.iter().any(|variant| variant == value) {
                    problems.push(format!(
                        "{at}: http[{index}] matches {header}: {value:?}, which is not a variant of route {:?} ({:?})",
                        route.name, route.variants
                    ));
                }
                if subset != value {
                    problems.push(format!(
                        "{at}: http[{index}] sends variant {value:?} to subset {subset:?}; subsets are named after variants"
                    ));
                }
                routed.insert(value.to_string());
            }
        }
        if http
            .last()
            .is_none_or(|entry| entry.pointer("/match").is_some())
        {
            problems.push(format!(
                "{at}: the last route must be the catch-all for the stable variant"
            ));
        }
        for variant in route.variants.iter().skip(1) {
            if !routed.contains(variant) {
                problems.push(format!(
                    "{at}: no route for variant {variant:?}: requests the filter sends to it would reach the stable subset"
                ));
            }
        }
    }
}

/// The pods the WasmPlugin selects get the stats annotations: tag extraction for exactly the
/// filter's tags, and a stats matcher that keeps every one of the filter's stats.
fn check_stats(tree: &Tree, plugin: &Plugin, problems: &mut Vec<String>) {
    let patched: Vec<&Doc> = patches(tree)
        .into_iter()
        .filter(|doc| {
            doc.kind() == "Deployment"
                && doc.dir() == plugin.doc_dir
                && selects(
                    &plugin.selector,
                    &labels(&doc.value, "/spec/template/metadata/labels"),
                )
        })
        .collect();
    let [patch] = patched.as_slice() else {
        problems.push(format!(
            "expected one Deployment patch for the pods the WasmPlugin selects ({:?}) in namespace {}, found {}",
            plugin.selector,
            plugin.namespace,
            patched.len()
        ));
        return;
    };
    let at = patch.at();
    let annotations = labels(&patch.value, "/spec/template/metadata/annotations");

    let tags: Vec<&str> = annotations
        .get(EXTRA_STAT_TAGS)
        .map(|value| value.split(',').map(str::trim).collect())
        .unwrap_or_default();
    let mut sorted = tags.clone();
    sorted.sort_unstable();
    let mut wanted = stats::TAGS.to_vec();
    wanted.sort_unstable();
    if sorted != wanted {
        problems.push(format!(
            "{at}: {EXTRA_STAT_TAGS} lists {tags:?}; the filter's tags are {:?}",
            stats::TAGS
        ));
    }

    let proxy_config = annotations
        .get(PROXY_CONFIG)
        .map(|yaml| serde_saphyr::from_str::<Value>(yaml));
    let prefixes: Vec<String> = match proxy_config {
        Some(Ok(config)) => texts(&config, "/proxyStatsMatcher/inclusionPrefixes")
            .into_iter()
            .map(str::to_string)
            .collect(),
        Some(Err(error)) => {
            problems.push(format!("{at}: {PROXY_CONFIG} is not YAML: {error}"));
            return;
        }
        None => Vec::new(),
    };
    // Any route and variant will do: the prefix must keep every one.
    let (route, variant) = plugin
        .config
        .routes
        .first()
        .and_then(|route| Some((route.name.as_str(), route.variants.first()?.as_str())))
        .unwrap_or(("reviews", "v1"));
    let labelled = [("route", route), ("variant", variant), ("class", "2xx")];
    let names = [
        stats::tagged_name(&labelled[..2], stats::REQUESTS),
        stats::tagged_name(&labelled, stats::RESPONSES),
        stats::tagged_name(
            &[labelled[0], labelled[1], ("reason", "sticky")],
            stats::DECISIONS,
        ),
        stats::tagged_name(&labelled[..2], stats::DURATION_MS),
        stats::GENERATION.to_string(),
        stats::REJECTED.to_string(),
        stats::UNMATCHED.to_string(),
    ];
    for name in names {
        let full = format!("{WASM_CUSTOM_PREFIX}{name}");
        if !prefixes
            .iter()
            .any(|prefix| full.starts_with(prefix.as_str()))
        {
            problems.push(format!(
                "{at}: {PROXY_CONFIG} proxyStatsMatcher.inclusionPrefixes {prefixes:?} does not keep {full:?}"
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn manifests_agree() {
    let tree = load();
    let problems = check(&tree);
    assert!(
        problems.is_empty(),
        "{} problem(s) in {MANIFESTS}:\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

/// One deliberate mistake in the manifests.
enum Edit {
    /// Set what is at a JSON pointer (`~1` stands for `/` in keys) of the document with this kind
    /// and name to a value given as JSON; the parent must exist.
    Set(&'static str, &'static str, &'static str, &'static str),
    /// Remove the map entry at a JSON pointer; it must exist.
    Remove(&'static str, &'static str, &'static str),
    /// Replace the control Deployment's `--name=…` argument of the same name.
    Flag(&'static str),
    /// Set what is at a JSON pointer of the WasmPlugin's initial config (the annotation's JSON).
    Seed(&'static str, &'static str),
    /// Anything else.
    Other(fn(&mut Tree)),
}

impl Edit {
    fn apply(&self, tree: &mut Tree) {
        match *self {
            Edit::Set(kind, name, pointer, json) => {
                let value: Value = serde_json::from_str(json).expect("the new value is JSON");
                let (parent, key) = split_pointer(pointer);
                match doc_mut(tree, kind, name).pointer_mut(parent) {
                    Some(Value::Object(map)) => {
                        map.insert(key, value);
                    }
                    Some(Value::Array(list)) => {
                        let index: usize = key.parse().expect("an array index");
                        assert!(index < list.len(), "{kind}/{name} has no {pointer}");
                        list[index] = value;
                    }
                    _ => panic!("{kind}/{name} has no map or list at {parent}"),
                }
            }
            Edit::Remove(kind, name, pointer) => {
                let (parent, key) = split_pointer(pointer);
                let removed = doc_mut(tree, kind, name)
                    .pointer_mut(parent)
                    .and_then(Value::as_object_mut)
                    .and_then(|map| map.remove(&key));
                assert!(removed.is_some(), "{kind}/{name} has nothing at {pointer}");
            }
            Edit::Flag(new) => {
                let prefix = new.split_once('=').map_or(new, |(name, _)| name);
                let arg = doc_mut(tree, "Deployment", CONTROL)
                    .pointer_mut("/spec/template/spec/containers/0/args")
                    .and_then(Value::as_array_mut)
                    .and_then(|args| {
                        args.iter_mut().find(|arg| {
                            arg.as_str()
                                .is_some_and(|arg| arg.starts_with(&format!("{prefix}=")))
                        })
                    });
                *arg.unwrap_or_else(|| panic!("no {prefix}= argument")) = json!(new);
            }
            Edit::Seed(pointer, json) => {
                let key = format!(
                    "/metadata/annotations/{}",
                    INITIAL_CONFIG.replace('/', "~1")
                );
                let annotation = doc_mut(tree, "WasmPlugin", PLUGIN)
                    .pointer_mut(&key)
                    .expect("the WasmPlugin has the initial config");
                let mut config: Value =
                    serde_json::from_str(annotation.as_str().expect("a string")).expect("JSON");
                let value: Value = serde_json::from_str(json).expect("the new value is JSON");
                let (parent, key) = split_pointer(pointer);
                match config.pointer_mut(parent) {
                    Some(Value::Object(map)) => {
                        map.insert(key, value);
                    }
                    Some(Value::Array(list)) => {
                        let index: usize = key.parse().expect("an array index");
                        list[index] = value;
                    }
                    _ => panic!("the initial config has no map or list at {parent}"),
                }
                *annotation = Value::String(config.to_string());
            }
            Edit::Other(edit) => edit(tree),
        }
    }
}

/// The parent pointer and the (unescaped) last key of a JSON pointer.
fn split_pointer(pointer: &str) -> (&str, String) {
    let (parent, key) = pointer.rsplit_once('/').expect("a pointer starts with /");
    (parent, key.replace("~1", "/").replace("~0", "~"))
}

/// The document of `kind` named `name`; panics if there is none, so a mistake that cannot be
/// made is not mistaken for one that was caught.
fn doc_mut<'a>(tree: &'a mut Tree, kind: &str, name: &str) -> &'a mut Value {
    match tree
        .docs
        .iter_mut()
        .find(|doc| doc.kind() == kind && doc.name() == name)
    {
        Some(doc) => &mut doc.value,
        None => panic!("no {kind}/{name}"),
    }
}

fn http_routes(tree: &mut Tree) -> &mut Vec<Value> {
    doc_mut(tree, "VirtualService", "reviews")
        .pointer_mut("/spec/http")
        .and_then(Value::as_array_mut)
        .expect("the VirtualService has http routes")
}

const CONTROL: &str = "meshcanary-control";
const PLUGIN: &str = "reviews-canary";

use Edit::{Flag, Other, Remove, Seed, Set};

/// Each mistake, and words of the problem it must produce.
#[rustfmt::skip]
const BREAKAGES: &[(&str, Edit, &str)] = &[
    // Documents and files.
    ("a document without a name", Remove("Service", CONTROL, "/metadata/name"), "no metadata.name"),
    ("an upper-case name", Set("Service", CONTROL, "/metadata/name", r#""Meshcanary""#), "not a valid object name"),
    ("a namespaced object without namespace", Remove("WasmPlugin", PLUGIN, "/metadata/namespace"), "no metadata.namespace"),
    // Tracing.
    ("the variant tag from another header", Set("Telemetry", "meshcanary-variant", "/spec/tracing/0/customTags/meshcanary.variant/header/name", r#""x-variant""#), "must come from the header the filter writes"),
    ("tags on the wrong pods", Set("Telemetry", "meshcanary-variant", "/spec/selector/matchLabels/app", r#""reviews""#), "must select the WasmPlugin's pods"),
    ("a numeric annotation", Set("Deployment", CONTROL, "/spec/template/metadata/annotations/prometheus.io~1port", "7070"), "not a string"),
    ("a listed file that is missing", Other(|t| { t.files.remove("bookinfo/rbac.yaml"); t.docs.retain(|d| d.file != "bookinfo/rbac.yaml"); }), "which does not exist"),
    ("a file nobody lists", Other(|t| { t.files.insert("extra.yaml".into(), String::new()); }), "extra.yaml is not listed"),
    ("the token input without its example", Other(|t| { t.files.remove("token.env.example"); t.files.remove("token.env"); }), "\"token.env\", which does not exist"),
    ("a remote resource on master", Set("Kustomization", "meshcanary-bookinfo", "/resources/0", r#""https://raw.githubusercontent.com/istio/istio/master/samples/bookinfo/platform/kube/bookinfo.yaml""#), "not pinned"),
    ("a patch file the walkthrough does not apply", Other(|t| { t.kubectl_patches.clear(); }), "productpage-stats.yaml is not listed"),
    ("the walkthrough patching with a missing file", Other(|t| { t.kubectl_patches.insert("bookinfo/gone.yaml".into()); }), "bookinfo/gone.yaml, which does not exist"),
    // The control service.
    ("one replica", Set("Deployment", CONTROL, "/spec/replicas", "1"), "replicas must be 2"),
    ("a Service selecting other pods", Set("Service", CONTROL, "/spec/selector", r#"{"app.kubernetes.io/name": "other"}"#), "one Service selecting its pods"),
    ("a Service aiming at another port", Set("Service", CONTROL, "/spec/ports/0/targetPort", "8080"), "no port whose targetPort is the container port"),
    ("--listen on another port", Flag("--listen=0.0.0.0:8080"), "--listen=0.0.0.0:8080 does not listen"),
    ("liveness on /health", Set("Deployment", CONTROL, "/spec/template/spec/containers/0/livenessProbe/httpGet/path", r#""/health""#), "livenessProbe must GET /healthz"),
    ("readiness on another port", Set("Deployment", CONTROL, "/spec/template/spec/containers/0/readinessProbe/httpGet/port", "9090"), "readinessProbe port"),
    ("no POD_NAME", Set("Deployment", CONTROL, "/spec/template/spec/containers/0/env/0/name", r#""MY_POD""#), "env POD_NAME"),
    ("the token from another secret", Set("Deployment", CONTROL, "/spec/template/spec/containers/0/env/2/valueFrom/secretKeyRef/name", r#""other""#), "which nothing here creates"),
    ("a writable root filesystem", Set("Deployment", CONTROL, "/spec/template/spec/containers/0/securityContext/readOnlyRootFilesystem", "false"), "readOnlyRootFilesystem"),
    ("privilege escalation allowed", Remove("Deployment", CONTROL, "/spec/template/spec/containers/0/securityContext/allowPrivilegeEscalation"), "allowPrivilegeEscalation"),
    ("capabilities kept", Set("Deployment", CONTROL, "/spec/template/spec/containers/0/securityContext/capabilities/drop", r#"["NET_RAW"]"#), "capabilities drop"),
    ("no seccomp profile", Remove("Deployment", CONTROL, "/spec/template/spec/securityContext/seccompProfile"), "seccompProfile"),
    ("no memory limit", Remove("Deployment", CONTROL, "/spec/template/spec/containers/0/resources/limits/memory"), "no /resources/limits/memory"),
    ("an unknown ServiceAccount", Set("Deployment", CONTROL, "/spec/template/spec/serviceAccountName", r#""other""#), "is not a ServiceAccount"),
    ("state in another namespace", Flag("--state-configmap-namespace=default"), "--state-configmap-namespace=default is not its own namespace"),
    ("a budget for other pods", Set("PodDisruptionBudget", CONTROL, "/spec/selector/matchLabels", r#"{"app": "x"}"#), "does not select"),
    // RBAC.
    ("a binding for another account", Set("RoleBinding", CONTROL, "/subjects/0/name", r#""default""#), "is not the Deployment's ServiceAccount"),
    ("a binding to a missing Role", Set("RoleBinding", CONTROL, "/roleRef/name", r#""missing""#), "no such Role"),
    ("a ClusterRoleBinding", Set("RoleBinding", "meshcanary-wasmplugin", "/kind", r#""ClusterRoleBinding""#), "grants cluster-wide"),
    ("delete on the state ConfigMap", Set("Role", CONTROL, "/rules/1/verbs", r#"["get", "update", "delete"]"#), "grants [\"delete\"] on /configmaps"),
    ("deletecollection on MeshRollouts", Set("Role", CONTROL, "/rules/4/verbs", r#"["get", "list", "watch", "create", "patch", "update", "delete", "deletecollection"]"#), "grants [\"deletecollection\"] on meshcanary.io/meshrollouts"),
    ("no status writes", Set("Role", CONTROL, "/rules/5/verbs", r#"["get"]"#), "does not grant [\"patch\", \"update\"] on meshcanary.io/meshrollouts/status"),
    ("list on ConfigMaps", Set("Role", CONTROL, "/rules/0/verbs", r#"["create", "list"]"#), "grants [\"list\"] on /configmaps"),
    ("every ConfigMap readable", Remove("Role", CONTROL, "/rules/1/resourceNames"), "on configmaps not restricted by name"),
    ("create restricted by name", Set("Role", CONTROL, "/rules/0/resourceNames", r#"["meshcanary-state"]"#), "which RBAC cannot do"),
    ("no update on the state", Set("Role", CONTROL, "/rules/1/verbs", r#"["get"]"#), "does not grant [\"update\"] on /configmaps"),
    ("no create on leases", Set("Role", CONTROL, "/rules/2/verbs", r#"["get"]"#), "does not grant [\"create\"] on coordination.k8s.io/leases"),
    ("update on WasmPlugins", Set("Role", "meshcanary-wasmplugin", "/rules/0/verbs", r#"["get", "list", "watch", "patch", "update"]"#), "grants [\"update\"] on extensions.istio.io/wasmplugins"),
    ("every WasmPlugin patchable", Remove("Role", "meshcanary-wasmplugin", "/rules/0/resourceNames"), "on wasmplugins not restricted by name"),
    ("a wildcard resource", Set("Role", "meshcanary-wasmplugin", "/rules/0/resources", r#"["*"]"#), "wildcard resources"),
    ("every VirtualService patchable", Remove("Role", "meshcanary-wasmplugin", "/rules/1/resourceNames"), "on virtualservices not restricted by name"),
    ("another VirtualService by name", Set("Role", "meshcanary-wasmplugin", "/rules/1/resourceNames", r#"["ratings"]"#), "but the service uses \"reviews\""),
    ("update on routing objects", Set("Role", "meshcanary-wasmplugin", "/rules/1/verbs", r#"["get", "patch", "update"]"#), "grants [\"update\"] on networking.istio.io/destinationrules"),
    ("routing objects in the wrong API group", Set("Role", "meshcanary-wasmplugin", "/rules/1/apiGroups", r#"["extensions.istio.io"]"#), "does not grant [\"get\", \"patch\"] on networking.istio.io/virtualservices"),
    ("Secrets readable", Set("Role", CONTROL, "/rules/1/resources", r#"["configmaps", "secrets"]"#), "on /secrets"),
    ("WasmPlugins granted in another namespace", Other(|t| { for kind in ["Role", "RoleBinding"] { doc_mut(t, kind, "meshcanary-wasmplugin")["metadata"]["namespace"] = json!("bookinfo"); } }), "in namespace \"bookinfo\""),
    ("another lease name", Flag("--leader-lease=other"), "the service uses \"other\""),
    ("another state ConfigMap name", Flag("--state-configmap=other"), "the service uses \"other\""),
    // The WasmPlugin.
    ("the service patching another WasmPlugin", Flag("--wasmplugin=other"), "not this one"),
    ("the module on another port", Set("WasmPlugin", PLUGIN, "/spec/url", r#""http://meshcanary-control.meshcanary-system.svc:7071/filter/meshcanary.wasm""#), "not the control Service's module"),
    ("the module at another path", Set("WasmPlugin", PLUGIN, "/spec/url", r#""http://meshcanary-control.meshcanary-system.svc:7070/meshcanary.wasm""#), "not the control Service's module"),
    ("a malformed digest", Set("WasmPlugin", PLUGIN, "/spec/sha256", r#""sha256:abc""#), "64 lowercase hex"),
    ("the STATS phase", Set("WasmPlugin", PLUGIN, "/spec/phase", r#""STATS""#), "/spec/phase must be AUTHN"),
    ("the server side", Set("WasmPlugin", PLUGIN, "/spec/match/0/mode", r#""SERVER""#), "match must be"),
    ("fail closed", Set("WasmPlugin", PLUGIN, "/spec/failStrategy", r#""FAIL_CLOSE""#), "FAIL_OPEN"),
    ("pluginConfig in the manifest", Set("WasmPlugin", PLUGIN, "/spec/pluginConfig", "{}"), "the service owns it"),
    ("no initial config", Remove("WasmPlugin", PLUGIN, "/metadata/annotations/meshcanary.io~1initial-plugin-config"), "no meshcanary.io/initial-plugin-config"),
    ("a typo in the initial config", Seed("/routes/0/variants/0/wieght", "1"), "unknown field `wieght`"),
    ("weights not summing to 10000", Seed("/routes/0/variants/1/weight", "10"), "weights sum to 10010"),
    // Routing.
    ("a route for another host", Seed("/routes/0/hosts", r#"["ratings"]"#), "no pluginConfig route matches host"),
    ("only the short host name", Seed("/routes/0/hosts", r#"["reviews"]"#), "no pluginConfig route matches host"),
    ("another variant header", Seed("/variantHeader", r#""x-variant""#), "is not the default \"x-meshcanary-variant\""),
    ("the VirtualService on another header", Set("VirtualService", "reviews", "/spec/http/0/match/0/headers", r#"{"x-variant": {"exact": "v2"}}"#), "must match exactly the header"),
    ("a prefix match", Set("VirtualService", "reviews", "/spec/http/0/match/0/headers/x-meshcanary-variant", r#"{"prefix": "v2"}"#), "must match exactly the header"),
    ("a header value that is no variant", Set("VirtualService", "reviews", "/spec/http/0/match/0/headers/x-meshcanary-variant/exact", r#""v4""#), "which is not a variant"),
    ("a variant sent to another subset", Set("VirtualService", "reviews", "/spec/http/1/route/0/destination/subset", r#""v2""#), "sends variant \"v3\" to subset \"v2\""),
    ("a subset the DestinationRule lacks", Set("VirtualService", "reviews", "/spec/http/1/route/0/destination/subset", r#""v9""#), "which the DestinationRule does not define"),
    ("the default route to the canary", Set("VirtualService", "reviews", "/spec/http/2/route/0/destination/subset", r#""v2""#), "not the stable variant"),
    ("a variant without a route", Other(|t| { http_routes(t).remove(1); }), "no route for variant \"v3\""),
    ("the catch-all first", Other(|t| http_routes(t).rotate_right(1)), "matches everything but is not last"),
    ("a subset without labels", Remove("DestinationRule", "reviews", "/spec/subsets/2/labels"), "selects no pods"),
    // Stats.
    ("a tag missing", Set("Deployment", "productpage-v1", "/spec/template/metadata/annotations/sidecar.istio.io~1extraStatTags", r#""route,variant,class""#), "the filter's tags are"),
    ("an extra tag", Set("Deployment", "productpage-v1", "/spec/template/metadata/annotations/sidecar.istio.io~1extraStatTags", r#""route,variant,class,reason,pod""#), "the filter's tags are"),
    ("a matcher that misses wasmcustom.", Set("Deployment", "productpage-v1", "/spec/template/metadata/annotations/proxy.istio.io~1config", r#""proxyStatsMatcher:\n  inclusionPrefixes:\n  - meshcanary_\n""#), "does not keep \"wasmcustom."),
    ("the annotations on pods the plugin does not select", Set("Deployment", "productpage-v1", "/spec/template/metadata/labels/app", r#""reviews""#), "patch for the pods the WasmPlugin selects"),
];

#[test]
fn each_check_catches_a_broken_manifest() {
    let tree = load();
    assert!(
        check(&tree).is_empty(),
        "the manifests themselves must pass first"
    );
    let mut missed = Vec::new();
    for (what, edit, expected) in BREAKAGES {
        let mut broken = tree.clone();
        edit.apply(&mut broken);
        let problems = check(&broken);
        if !problems.iter().any(|problem| problem.contains(expected)) {
            missed.push(format!(
                "{what}: expected a problem containing {expected:?}, got {problems:#?}"
            ));
        }
    }
    assert!(
        missed.is_empty(),
        "mistakes the checks did not catch:\n{}",
        missed.join("\n")
    );
}
