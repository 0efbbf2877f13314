//! An in-memory stand-in for the Kubernetes API server, for testing `control/src/kube` without a
//! cluster.
//!
//! It serves the calls meshcanary makes, with the API server's semantics where they matter:
//! - `configmaps` (v1), `leases` (coordination.k8s.io/v1) and `wasmplugins`
//!   (extensions.istio.io/v1alpha1), namespaced: GET, LIST (label and field selectors, `limit`
//!   and `continue`), WATCH (JSON lines replayed from `resourceVersion`, or synthetic ADDED events
//!   without one; ends after `timeoutSeconds`), POST, PUT, PATCH (`application/merge-patch+json`).
//! - One global `resourceVersion` counter bumped by every write that changes something (a write
//!   that changes nothing is not a write, as on the real server); `metadata.generation` on the
//!   custom resource, bumped when anything outside metadata and status changes.
//! - Preconditions: a PUT, or a merge patch, carrying a `metadata.resourceVersion` other than the
//!   current one gets 409 Conflict; POST of an existing name 409 AlreadyExists; 404 NotFound;
//!   400 BadRequest for a wrong `apiVersion`/`kind` or a name or namespace not matching the URL;
//!   422 Invalid for what validation refuses (ConfigMap data over 1 MiB or with bad keys, a Lease
//!   duration of 0, a WasmPlugin without `spec.url` or with a non-object `pluginConfig`,
//!   bad enum values, bad names and labels, and any rule a test adds — a CRD's CEL rules do the
//!   same). Errors are `Status` objects as the real server sends them.
//! - Unknown fields are dropped as the real server prunes them; WasmPlugin's `status` is a
//!   subresource, so writes to the main resource keep the old status.
//!
//! Not modelled: managedFields, server-side apply, strategic and JSON patches (415), DELETE over
//! HTTP, bookmarks (optional for a server), consistent snapshots across `continue` pages, a
//! label-selector watch turning a MODIFIED that stops matching into DELETED.
//!
//! Tests act as other clients through the handle: [`FakeApiServer::edit`] (a `kubectl edit`),
//! [`FakeApiServer::delete`], and [`FakeApiServer::before_next`], which runs a foreign write just
//! before the server handles the next matching request (the write lands between a client's
//! read and its write).

#![allow(dead_code)] // Each test binary uses a different part of it.

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::stream::{self, StreamExt};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// The resources the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `v1` `ConfigMap`.
    ConfigMap,
    /// `coordination.k8s.io/v1` `Lease`.
    Lease,
    /// `extensions.istio.io/v1alpha1` `WasmPlugin`.
    WasmPlugin,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::ConfigMap, Kind::Lease, Kind::WasmPlugin];

    fn plural(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmaps",
            Kind::Lease => "leases",
            Kind::WasmPlugin => "wasmplugins",
        }
    }

    fn group(self) -> &'static str {
        match self {
            Kind::ConfigMap => "",
            Kind::Lease => "coordination.k8s.io",
            Kind::WasmPlugin => "extensions.istio.io",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::ConfigMap => "v1",
            Kind::Lease => "coordination.k8s.io/v1",
            Kind::WasmPlugin => "extensions.istio.io/v1alpha1",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Kind::ConfigMap => "ConfigMap",
            Kind::Lease => "Lease",
            Kind::WasmPlugin => "WasmPlugin",
        }
    }

    /// Custom resources get `metadata.generation` and keep their items' apiVersion and kind in
    /// lists; built-in lists leave them out.
    fn custom(self) -> bool {
        self == Kind::WasmPlugin
    }

    /// `configmaps`, `leases.coordination.k8s.io`: how the API server names the resource in
    /// messages.
    fn resource(self) -> String {
        match self.group() {
            "" => self.plural().to_string(),
            group => format!("{}.{group}", self.plural()),
        }
    }

    /// `ConfigMap`, `WasmPlugin.extensions.istio.io`: how "is invalid" messages name the kind.
    fn qualified_kind(self) -> String {
        match self.group() {
            "" => self.kind().to_string(),
            group => format!("{}.{group}", self.kind()),
        }
    }

    fn from_path(api_version: &str, plural: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.api_version() == api_version && k.plural() == plural)
    }
}

/// A request as the fake saw it, with the status it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `PATCH`…
    pub method: String,
    /// The path.
    pub path: String,
    /// The raw query string.
    pub query: String,
    /// The status code answered.
    pub status: u16,
}

/// One change, as watchers see it.
#[derive(Debug, Clone)]
struct Change {
    revision: u64,
    kind: Kind,
    namespace: String,
    name: String,
    event: &'static str,
    object: Value,
}

/// A failed call: the HTTP status and the `Status` body.
#[derive(Debug, Clone)]
pub struct Failure {
    /// HTTP status.
    pub code: u16,
    /// The `Status` object.
    pub status: Value,
}

impl Failure {
    fn new(code: u16, reason: &str, message: String, details: Value) -> Failure {
        Failure {
            code,
            status: json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "details": details, "code": code,
            }),
        }
    }

    fn details(kind: Kind, name: &str) -> Value {
        json!({"name": name, "group": kind.group(), "kind": kind.plural()})
    }

    fn not_found(kind: Kind, name: &str) -> Failure {
        Failure::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", kind.resource()),
            Failure::details(kind, name),
        )
    }

    fn conflict(kind: Kind, name: &str) -> Failure {
        Failure::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                kind.resource()
            ),
            Failure::details(kind, name),
        )
    }

    fn already_exists(kind: Kind, name: &str) -> Failure {
        Failure::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", kind.resource()),
            Failure::details(kind, name),
        )
    }

    fn bad_request(message: String) -> Failure {
        Failure::new(400, "BadRequest", message, Value::Null)
    }

    /// 422 with one cause per field error, as validation reports them.
    fn invalid(kind: Kind, name: &str, errors: Vec<FieldError>) -> Failure {
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.reason, "message": e.message, "field": e.field}))
            .collect();
        let summary: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        let message = match summary.len() {
            1 => summary.join(""),
            _ => format!("[{}]", summary.join(", ")),
        };
        Failure::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {message}", kind.qualified_kind()),
            json!({"name": name, "group": kind.group(), "kind": kind.kind(), "causes": causes}),
        )
    }
}

/// A validation error on one field.
#[derive(Debug, Clone)]
pub struct FieldError {
    /// `FieldValueInvalid`, `FieldValueRequired`…
    pub reason: &'static str,
    /// The field path: `spec.pluginConfig`.
    pub field: String,
    /// What is wrong, as the API server words it.
    pub message: String,
}

impl FieldError {
    /// An invalid value.
    pub fn invalid(field: &str, message: impl Into<String>) -> FieldError {
        FieldError {
            reason: "FieldValueInvalid",
            field: field.to_string(),
            message: message.into(),
        }
    }

    fn required(field: &str) -> FieldError {
        FieldError {
            reason: "FieldValueRequired",
            field: field.to_string(),
            message: "Required value".into(),
        }
    }

    fn unsupported(field: &str, value: &Value, allowed: &[&str]) -> FieldError {
        let allowed: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
        FieldError {
            reason: "FieldValueNotSupported",
            field: field.to_string(),
            message: format!(
                "Unsupported value: {value}: supported values: {}",
                allowed.join(", ")
            ),
        }
    }
}

type Hook = Box<dyn FnOnce(&mut Cluster) + Send>;
type Rule = Box<dyn Fn(&Value) -> Option<FieldError> + Send>;

/// The fake's objects, and what tests can do to them directly.
pub struct Cluster {
    revision: u64,
    uids: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    history: Vec<Change>,
    changes: broadcast::Sender<Change>,
    hooks: Vec<(Method, Kind, Hook)>,
    rules: Vec<(Kind, Rule)>,
    requests: Vec<Request>,
}

impl Cluster {
    /// The current global resourceVersion.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The stored object.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        self.objects
            .get(&(kind, namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// A foreign create, validated like any other.
    pub fn create(&mut self, kind: Kind, namespace: &str, object: Value) -> Result<Value, Failure> {
        let mut object = object;
        let name = check_identity(kind, namespace, None, &mut object)?;
        if let Some(rv) = object.pointer("/metadata/resourceVersion") {
            if rv.as_str().is_some_and(|rv| !rv.is_empty()) {
                return Err(Failure::bad_request(
                    "resourceVersion should not be set on objects to be created".into(),
                ));
            }
        }
        let key = (kind, namespace.to_string(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(Failure::already_exists(kind, &name));
        }
        let mut object = self.admit(kind, &name, object, None)?;
        self.uids += 1;
        let now = k8s_openapi::jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let metadata = metadata_mut(&mut object);
        metadata.insert(
            "uid".into(),
            format!("00000000-0000-4000-8000-{:012}", self.uids).into(),
        );
        metadata.insert("creationTimestamp".into(), now.into());
        if kind.custom() {
            metadata.insert("generation".into(), 1.into());
        } else {
            metadata.remove("generation");
        }
        Ok(self.commit(kind, namespace, &name, object, "ADDED"))
    }

    /// A foreign edit (`kubectl edit`): `change` gets the current object; the result is
    /// validated and stored as an unconditional update. Panics if the object does not exist or
    /// the result is invalid.
    pub fn edit(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> Value {
        let mut object = self
            .get(kind, namespace, name)
            .unwrap_or_else(|| panic!("no {kind:?} {namespace}/{name} to edit"));
        change(&mut object);
        remove_resource_version(&mut object);
        self.update(kind, namespace, name, object)
            .unwrap_or_else(|failure| panic!("foreign edit refused: {}", failure.status))
    }

    /// A foreign delete. Panics if the object does not exist.
    pub fn delete(&mut self, kind: Kind, namespace: &str, name: &str) {
        let key = (kind, namespace.to_string(), name.to_string());
        let mut object = self
            .objects
            .remove(&key)
            .unwrap_or_else(|| panic!("no {kind:?} {namespace}/{name} to delete"));
        self.revision += 1;
        metadata_mut(&mut object)
            .insert("resourceVersion".into(), self.revision.to_string().into());
        self.record(kind, namespace, name, "DELETED", object);
    }

    /// An update: a PUT, or the result of a patch. `object`'s `metadata.resourceVersion`, if
    /// set, is the precondition.
    fn update(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        object: Value,
    ) -> Result<Value, Failure> {
        let mut object = object;
        let Some(current) = self.get(kind, namespace, name) else {
            return Err(Failure::not_found(kind, name));
        };
        check_identity(kind, namespace, Some(name), &mut object)?;
        let wanted = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let current_version = current
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !wanted.is_empty() && wanted != current_version {
            return Err(Failure::conflict(kind, name));
        }
        let mut object = self.admit(kind, name, object, Some(&current))?;
        // Fields only the server sets, whatever the client sent.
        {
            let metadata = metadata_mut(&mut object);
            for key in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
                match current.pointer(&format!("/metadata/{key}")) {
                    Some(value) => metadata.insert(key.into(), value.clone()),
                    None => metadata.remove(key),
                };
            }
        }
        if kind.custom() {
            // The status subresource: the main resource cannot change it.
            match current.get("status") {
                Some(status) => object["status"] = status.clone(),
                None => {
                    if let Some(map) = object.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
        }
        if object == current {
            return Ok(current);
        }
        if kind.custom()
            && without_metadata_and_status(&object) != without_metadata_and_status(&current)
        {
            let generation = current
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            metadata_mut(&mut object).insert("generation".into(), (generation + 1).into());
        }
        Ok(self.commit(kind, namespace, name, object, "MODIFIED"))
    }

    fn commit(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        mut object: Value,
        event: &'static str,
    ) -> Value {
        self.revision += 1;
        metadata_mut(&mut object)
            .insert("resourceVersion".into(), self.revision.to_string().into());
        self.objects.insert(
            (kind, namespace.to_string(), name.to_string()),
            object.clone(),
        );
        self.record(kind, namespace, name, event, object.clone());
        object
    }

    fn record(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        event: &'static str,
        object: Value,
    ) {
        let change = Change {
            revision: self.revision,
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
            event,
            object,
        };
        self.history.push(change.clone());
        // No receivers is fine: nobody is watching.
        let _ = self.changes.send(change);
    }

    /// Drops unknown fields and validates, as admission does; `current` for updates.
    fn admit(
        &self,
        kind: Kind,
        name: &str,
        object: Value,
        current: Option<&Value>,
    ) -> Result<Value, Failure> {
        let object = prune(kind, object);
        let mut errors = validate_metadata(&object);
        match kind {
            Kind::ConfigMap => errors.extend(validate_configmap(&object, current)?),
            Kind::Lease => errors.extend(validate_lease(&object)?),
            Kind::WasmPlugin => errors.extend(validate_wasmplugin(&object)),
        }
        if errors.is_empty() {
            errors.extend(
                self.rules
                    .iter()
                    .filter(|(k, _)| *k == kind)
                    .filter_map(|(_, rule)| rule(&object)),
            );
        }
        if !errors.is_empty() {
            return Err(Failure::invalid(kind, name, errors));
        }
        Ok(object)
    }
}

/// The API server.
pub struct FakeApiServer {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    cluster: Arc<Mutex<Cluster>>,
    task: JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApiServer {
    /// Starts it on an ephemeral loopback port.
    pub async fn start() -> FakeApiServer {
        let cluster = Arc::new(Mutex::new(Cluster {
            revision: 100,
            uids: 0,
            objects: BTreeMap::new(),
            history: Vec::new(),
            changes: broadcast::channel(4096).0,
            hooks: Vec::new(),
            rules: Vec::new(),
            requests: Vec::new(),
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API server");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let app = Router::new().fallback(handle).with_state(cluster.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeApiServer { url, cluster, task }
    }

    /// A kube client talking to it.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().expect("the fake's URL"));
        kube::Client::try_from(config).expect("a kube client")
    }

    fn lock(&self) -> MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the objects under the server's lock.
    pub fn with<T>(&self, f: impl FnOnce(&mut Cluster) -> T) -> T {
        f(&mut self.lock())
    }

    /// Creates an object as another client would (validated). Panics if refused.
    pub fn create(&self, kind: Kind, namespace: &str, object: Value) -> Value {
        self.lock()
            .create(kind, namespace, object)
            .unwrap_or_else(|failure| panic!("create refused: {}", failure.status))
    }

    /// The stored object.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        self.lock().get(kind, namespace, name)
    }

    /// A foreign edit; see [`Cluster::edit`].
    pub fn edit(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> Value {
        self.lock().edit(kind, namespace, name, change)
    }

    /// A foreign delete.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        self.lock().delete(kind, namespace, name)
    }

    /// Runs `hook` once, right before handling the next `method` request on `kind`.
    pub fn before_next(
        &self,
        method: Method,
        kind: Kind,
        hook: impl FnOnce(&mut Cluster) + Send + 'static,
    ) {
        self.lock().hooks.push((method, kind, Box::new(hook)));
    }

    /// Adds a validation rule for `kind`, like a CRD's `x-kubernetes-validations` or a
    /// validating admission policy: writes it refuses get 422 Invalid.
    pub fn add_rule(
        &self,
        kind: Kind,
        rule: impl Fn(&Value) -> Option<FieldError> + Send + 'static,
    ) {
        self.lock().rules.push((kind, Box::new(rule)));
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    /// The current global resourceVersion.
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }
}

/// What a request's path names.
struct Target {
    kind: Kind,
    namespace: String,
    name: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => (version.to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, plural, name) = match rest {
        ["namespaces", namespace, plural] => (namespace, plural, None),
        ["namespaces", namespace, plural, name] => (namespace, plural, Some(name.to_string())),
        _ => return None,
    };
    Some(Target {
        kind: Kind::from_path(&api_version, plural)?,
        namespace: namespace.to_string(),
        name,
    })
}

async fn handle(
    State(cluster): State<Arc<Mutex<Cluster>>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = |status: u16| Request {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        status,
    };
    let Some(target) = parse_path(uri.path()) else {
        let failure = Failure::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            Value::Null,
        );
        lock(&cluster).requests.push(request(404));
        return respond(Err(failure));
    };
    let watching = method == Method::GET
        && target.name.is_none()
        && matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    if watching {
        let response = watch(&cluster, &target, &query);
        let status = response.status().as_u16();
        lock(&cluster).requests.push(request(status));
        return response;
    }
    let mut guard = lock(&cluster);
    let cluster = &mut *guard;
    let position = cluster
        .hooks
        .iter()
        .position(|(m, k, _)| *m == method && *k == target.kind);
    if let Some(position) = position {
        let (_, _, hook) = cluster.hooks.remove(position);
        hook(cluster);
    }
    let result = serve(cluster, &method, &target, &query, &headers, &body);
    let status = result.as_ref().map_or_else(|f| f.code, |_| 200);
    cluster.requests.push(request(status));
    respond(result)
}

fn lock(cluster: &Mutex<Cluster>) -> MutexGuard<'_, Cluster> {
    cluster.lock().unwrap_or_else(|e| e.into_inner())
}

fn respond(result: Result<(u16, Value), Failure>) -> Response {
    let (code, body) = match result {
        Ok((code, body)) => (code, body),
        Err(failure) => (failure.code, failure.status),
    };
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn serve(
    cluster: &mut Cluster,
    method: &Method,
    target: &Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(u16, Value), Failure> {
    let kind = target.kind;
    let namespace = target.namespace.as_str();
    let json_body = || -> Result<Value, Failure> {
        serde_json::from_slice(body)
            .map_err(|e| Failure::bad_request(format!("the request body is not JSON: {e}")))
    };
    match (method.clone(), target.name.as_deref()) {
        (Method::GET, Some(name)) => cluster
            .get(kind, namespace, name)
            .map(|object| (200, object))
            .ok_or_else(|| Failure::not_found(kind, name)),
        (Method::GET, None) => list(cluster, target, query),
        (Method::POST, None) => cluster
            .create(kind, namespace, json_body()?)
            .map(|object| (201, object)),
        (Method::PUT, Some(name)) => cluster
            .update(kind, namespace, name, json_body()?)
            .map(|object| (200, object)),
        (Method::PATCH, Some(name)) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if content_type != "application/merge-patch+json" {
                return Err(Failure::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the fake API server implements merge patches only, not {content_type:?}"
                    ),
                    Value::Null,
                ));
            }
            let patch = json_body()?;
            if !patch.is_object() {
                return Err(Failure::bad_request(format!(
                    "json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
                    json_type(&patch)
                )));
            }
            let Some(mut object) = cluster.get(kind, namespace, name) else {
                return Err(Failure::not_found(kind, name));
            };
            // The patched object's resourceVersion is the precondition: unchanged (the patch
            // did not name one) it matches; a stale one in the patch conflicts.
            merge(&mut object, &patch);
            cluster
                .update(kind, namespace, name, object)
                .map(|object| (200, object))
        }
        (method, _) => Err(Failure::new(
            405,
            "MethodNotAllowed",
            format!("the fake API server does not implement {method} here"),
            Value::Null,
        )),
    }
}

/// RFC 7386, written independently of the code under test.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let Some(target) = target.as_object_mut() else {
                return;
            };
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.as_str()).or_insert(Value::Null), value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn list(
    cluster: &Cluster,
    target: &Target,
    query: &HashMap<String, String>,
) -> Result<(u16, Value), Failure> {
    let selector = Selector::parse(query)?;
    let mut items: Vec<Value> = cluster
        .objects
        .iter()
        .filter(|((kind, namespace, _), _)| *kind == target.kind && *namespace == target.namespace)
        .filter(|(_, object)| selector.matches(object))
        .map(|(_, object)| listed(target.kind, object))
        .collect();
    let offset: usize = match query.get("continue") {
        Some(token) => token
            .parse()
            .map_err(|_| Failure::bad_request(format!("invalid continue token {token:?}")))?,
        None => 0,
    };
    items = items.split_off(offset.min(items.len()));
    let mut metadata = json!({"resourceVersion": cluster.revision.to_string()});
    if let Some(limit) = query.get("limit").and_then(|l| l.parse::<usize>().ok()) {
        if limit > 0 && items.len() > limit {
            items.truncate(limit);
            metadata["continue"] = (offset + limit).to_string().into();
        }
    }
    Ok((
        200,
        json!({
            "apiVersion": target.kind.api_version(),
            "kind": format!("{}List", target.kind.kind()),
            "metadata": metadata,
            "items": items,
        }),
    ))
}

/// Built-in lists leave apiVersion and kind off their items.
fn listed(kind: Kind, object: &Value) -> Value {
    let mut object = object.clone();
    if !kind.custom() {
        if let Some(map) = object.as_object_mut() {
            map.remove("apiVersion");
            map.remove("kind");
        }
    }
    object
}

fn watch(
    cluster: &Arc<Mutex<Cluster>>,
    target: &Target,
    query: &HashMap<String, String>,
) -> Response {
    let selector = match Selector::parse(query) {
        Ok(selector) => selector,
        Err(failure) => return respond(Err(failure)),
    };
    let since: Option<u64> = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => match rv.parse() {
            Ok(rv) => Some(rv),
            Err(_) => {
                return respond(Err(Failure::bad_request(format!(
                    "invalid resourceVersion {rv:?}"
                ))))
            }
        },
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let kind = target.kind;
    let namespace = target.namespace.clone();
    let relevant = move |change: &Change| change.kind == kind && change.namespace == namespace;
    // Under the lock: what happened so far, and a subscription to what happens next, so that
    // nothing falls between the two.
    let (initial, receiver, last) = {
        let cluster = lock(cluster);
        let initial: Vec<(&'static str, Value)> = match since {
            None => cluster
                .objects
                .iter()
                .filter(|((k, ns, _), _)| *k == kind && *ns == target.namespace)
                .filter(|(_, object)| selector.matches(object))
                .map(|(_, object)| ("ADDED", object.clone()))
                .collect(),
            Some(since) => cluster
                .history
                .iter()
                .filter(|c| c.revision > since && relevant(c) && selector.matches(&c.object))
                .map(|c| (c.event, c.object.clone()))
                .collect(),
        };
        (initial, cluster.changes.subscribe(), cluster.revision)
    };
    let line = |event: &str, object: &Value| {
        Ok::<Bytes, std::convert::Infallible>(Bytes::from(format!(
            "{}\n",
            json!({"type": event, "object": object})
        )))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let head = stream::iter(
        initial
            .into_iter()
            .map(move |(event, object)| line(event, &object))
            .collect::<Vec<_>>(),
    );
    let tail = stream::unfold(Some((receiver, last)), move |state| {
        let relevant = relevant.clone();
        let selector = selector.clone();
        async move {
            let (mut receiver, mut last) = state?;
            loop {
                match tokio::time::timeout_at(deadline, receiver.recv()).await {
                    Err(_) | Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                        // As the real server does when a watcher falls too far behind.
                        let status = Failure::new(
                            410,
                            "Expired",
                            "too old resource version".into(),
                            Value::Null,
                        )
                        .status;
                        return Some((line("ERROR", &status), None));
                    }
                    Ok(Ok(change)) => {
                        if change.revision > last
                            && relevant(&change)
                            && selector.matches(&change.object)
                        {
                            last = change.revision;
                            let next = line(change.event, &change.object);
                            return Some((next, Some((receiver, last))));
                        }
                    }
                }
            }
        }
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(head.chain(tail)),
    )
        .into_response()
}

/// Label and field selectors, in the forms kube-rs and kubectl send.
#[derive(Debug, Clone, Default)]
struct Selector {
    requirements: Vec<(String, Requirement)>,
}

#[derive(Debug, Clone)]
enum Requirement {
    Equals(String),
    NotEquals(String),
    Exists,
    Absent,
}

impl Selector {
    fn parse(query: &HashMap<String, String>) -> Result<Selector, Failure> {
        let mut requirements = Vec::new();
        for term in split_terms(query.get("labelSelector")) {
            let requirement = if let Some((key, value)) = term.split_once("!=") {
                (
                    format!("label:{}", key.trim()),
                    Requirement::NotEquals(value.trim().into()),
                )
            } else if let Some((key, value)) =
                term.split_once("==").or_else(|| term.split_once('='))
            {
                (
                    format!("label:{}", key.trim()),
                    Requirement::Equals(value.trim().into()),
                )
            } else if let Some(key) = term.strip_prefix('!') {
                (format!("label:{}", key.trim()), Requirement::Absent)
            } else if term.contains(' ') || term.contains('(') {
                return Err(Failure::bad_request(format!(
                    "the fake API server does not parse set-based selectors: {term:?}"
                )));
            } else {
                (format!("label:{term}"), Requirement::Exists)
            };
            requirements.push(requirement);
        }
        for term in split_terms(query.get("fieldSelector")) {
            let (field, requirement) = if let Some((field, value)) = term.split_once("!=") {
                (field, Requirement::NotEquals(value.into()))
            } else if let Some((field, value)) =
                term.split_once("==").or_else(|| term.split_once('='))
            {
                (field, Requirement::Equals(value.into()))
            } else {
                return Err(Failure::bad_request(format!(
                    "invalid field selector {term:?}"
                )));
            };
            if !matches!(field, "metadata.name" | "metadata.namespace") {
                return Err(Failure::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            requirements.push((format!("field:{field}"), requirement));
        }
        Ok(Selector { requirements })
    }

    fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|(key, requirement)| {
            let value = match key.split_once(':') {
                Some(("label", label)) => object
                    .pointer("/metadata/labels")
                    .and_then(|labels| labels.get(label))
                    .and_then(Value::as_str),
                Some(("field", field)) => {
                    let pointer = format!("/{}", field.replace('.', "/"));
                    object.pointer(&pointer).and_then(Value::as_str)
                }
                _ => None,
            };
            match requirement {
                Requirement::Equals(want) => value == Some(want.as_str()),
                Requirement::NotEquals(want) => value != Some(want.as_str()),
                Requirement::Exists => value.is_some(),
                Requirement::Absent => value.is_none(),
            }
        })
    }
}

fn split_terms(selector: Option<&String>) -> impl Iterator<Item = &str> {
    selector
        .map(|s| s.as_str())
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    match object.get_mut("metadata") {
        Some(Value::Object(metadata)) => metadata,
        _ => unreachable!("metadata was just made an object"),
    }
}

fn remove_resource_version(object: &mut Value) {
    metadata_mut(object).remove("resourceVersion");
}

fn without_metadata_and_status(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    object
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks apiVersion, kind, name and namespace against the URL (400 if they disagree, as the
/// real server's decoder and handlers answer); fills in a missing namespace. Returns the name.
fn check_identity(
    kind: Kind,
    namespace: &str,
    url_name: Option<&str>,
    object: &mut Value,
) -> Result<String, Failure> {
    if !object.is_object() {
        return Err(Failure::bad_request(format!(
            "the body is a JSON {}, not an object",
            json_type(object)
        )));
    }
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    if api_version != kind.api_version() {
        return Err(Failure::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            kind.api_version()
        )));
    }
    let object_kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    if object_kind != kind.kind() {
        return Err(Failure::bad_request(format!(
            "the kind in the data ({object_kind}) does not match the expected kind ({})",
            kind.kind()
        )));
    }
    let metadata = metadata_mut(object);
    match metadata.get("namespace").and_then(Value::as_str) {
        None | Some("") => {
            metadata.insert("namespace".into(), namespace.into());
        }
        Some(other) if other != namespace => return Err(Failure::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        )),
        Some(_) => {}
    }
    let name = metadata
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if let Some(url_name) = url_name {
        if name != url_name {
            return Err(Failure::bad_request(format!(
                "the name of the object ({name}) does not match the name on the URL ({url_name})"
            )));
        }
    }
    if name.is_empty() {
        return Err(Failure::invalid(
            kind,
            "",
            vec![FieldError {
                reason: "FieldValueRequired",
                field: "metadata.name".into(),
                message: "Required value: name or generateName is required".into(),
            }],
        ));
    }
    Ok(name)
}

/// Drops what the schema does not know, as the real server does for built-in types and
/// structural CRD schemas.
fn prune(kind: Kind, object: Value) -> Value {
    let top: &[&str] = match kind {
        Kind::ConfigMap => &[
            "apiVersion",
            "kind",
            "metadata",
            "data",
            "binaryData",
            "immutable",
        ],
        Kind::Lease => &["apiVersion", "kind", "metadata", "spec"],
        Kind::WasmPlugin => &["apiVersion", "kind", "metadata", "spec", "status"],
    };
    let spec: &[&str] = match kind {
        Kind::ConfigMap => &[],
        Kind::Lease => &[
            "acquireTime",
            "holderIdentity",
            "leaseDurationSeconds",
            "leaseTransitions",
            "preferredHolder",
            "renewTime",
            "strategy",
        ],
        Kind::WasmPlugin => &[
            "failStrategy",
            "imagePullPolicy",
            "imagePullSecret",
            "match",
            "phase",
            "pluginConfig",
            "pluginName",
            "priority",
            "selector",
            "sha256",
            "targetRef",
            "targetRefs",
            "type",
            "url",
            "verificationKey",
            "vmConfig",
        ],
    };
    let mut object = object;
    if let Some(map) = object.as_object_mut() {
        map.retain(|key, _| top.contains(&key.as_str()));
        if let Some(Value::Object(spec_map)) = map.get_mut("spec") {
            spec_map.retain(|key, _| spec.contains(&key.as_str()));
        }
    }
    object
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn is_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

fn validate_metadata(object: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !is_dns_subdomain(name) {
        errors.push(FieldError::invalid(
            "metadata.name",
            format!("Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"),
        ));
    }
    if let Some(labels) = object.pointer("/metadata/labels") {
        match labels.as_object() {
            Some(labels) => {
                for (key, value) in labels {
                    if !is_label_key(key) {
                        errors.push(FieldError::invalid(
                            "metadata.labels",
                            format!("Invalid value: \"{key}\": not a valid label key"),
                        ));
                    }
                    match value.as_str() {
                        Some(value) if is_label_value(value) => {}
                        _ => errors.push(FieldError::invalid(
                            "metadata.labels",
                            format!("Invalid value: {value}: not a valid label value"),
                        )),
                    }
                }
            }
            None => errors.push(FieldError::invalid(
                "metadata.labels",
                "must be a map of strings",
            )),
        }
    }
    errors
}

/// ConfigMap validation: string data under valid keys, at most 1 MiB of data in total, and no
/// data change once `immutable`.
fn validate_configmap(object: &Value, current: Option<&Value>) -> Result<Vec<FieldError>, Failure> {
    const MAX_SIZE: usize = 1024 * 1024;
    let mut errors = Vec::new();
    let mut size = 0;
    for field in ["data", "binaryData"] {
        let Some(data) = object.get(field) else {
            continue;
        };
        let Some(data) = data.as_object() else {
            return Err(Failure::bad_request(format!(
                "json: cannot unmarshal {} into Go struct field ConfigMap.{field} of type map[string]string",
                json_type(data)
            )));
        };
        for (key, value) in data {
            let Some(value) = value.as_str() else {
                return Err(Failure::bad_request(format!(
                    "json: cannot unmarshal {} into Go struct field ConfigMap.{field} of type string",
                    json_type(value)
                )));
            };
            let valid_key = !key.is_empty()
                && key.len() <= 253
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid_key {
                errors.push(FieldError::invalid(
                    &format!("{field}[{key}]"),
                    format!("Invalid value: \"{key}\": a valid config key must consist of alphanumeric characters, '-', '_' or '.'"),
                ));
            }
            size += value.len();
        }
    }
    if size > MAX_SIZE {
        errors.push(FieldError {
            reason: "FieldValueTooLong",
            field: "[]".into(),
            message: format!("Too long: may not be more than {MAX_SIZE} bytes"),
        });
    }
    if let Some(current) = current {
        let immutable = current.get("immutable").and_then(Value::as_bool) == Some(true);
        if immutable
            && (current.get("data") != object.get("data")
                || current.get("binaryData") != object.get("binaryData"))
        {
            errors.push(FieldError::invalid(
                "data",
                "Forbidden: field is immutable when `immutable` is set",
            ));
        }
    }
    Ok(errors)
}

/// Lease validation: types as the decoder checks them (400), then a positive duration and
/// non-negative transitions (422).
fn validate_lease(object: &Value) -> Result<Vec<FieldError>, Failure> {
    let typed: Result<k8s_openapi::api::coordination::v1::Lease, _> =
        serde_json::from_value(object.clone());
    if let Err(error) = typed {
        return Err(Failure::bad_request(format!(
            "Lease in version \"v1\" cannot be handled as a Lease: {error}"
        )));
    }
    let mut errors = Vec::new();
    if let Some(duration) = object
        .pointer("/spec/leaseDurationSeconds")
        .and_then(Value::as_i64)
    {
        if duration <= 0 {
            errors.push(FieldError::invalid(
                "spec.leaseDurationSeconds",
                format!("Invalid value: {duration}: must be greater than 0"),
            ));
        }
    }
    if let Some(transitions) = object
        .pointer("/spec/leaseTransitions")
        .and_then(Value::as_i64)
    {
        if transitions < 0 {
            errors.push(FieldError::invalid(
                "spec.leaseTransitions",
                format!("Invalid value: {transitions}: must be greater than or equal to 0"),
            ));
        }
    }
    Ok(errors)
}

/// The WasmPlugin CRD's structural schema, as far as meshcanary's tests touch it.
fn validate_wasmplugin(object: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Some(spec) = object.get("spec") else {
        return vec![FieldError::required("spec")];
    };
    let Some(spec) = spec.as_object() else {
        return vec![type_error("spec", spec, "object")];
    };
    match spec.get("url") {
        None => errors.push(FieldError::required("spec.url")),
        Some(Value::String(_)) => {}
        Some(other) => errors.push(type_error("spec.url", other, "string")),
    }
    let expect = |field: &str, value: Option<&Value>, wanted: &str, ok: fn(&Value) -> bool| {
        value
            .filter(|v| !ok(v))
            .map(|v| type_error(field, v, wanted))
    };
    errors.extend(expect(
        "spec.pluginConfig",
        spec.get("pluginConfig"),
        "object",
        Value::is_object,
    ));
    errors.extend(expect(
        "spec.priority",
        spec.get("priority"),
        "integer",
        |v| v.as_i64().is_some_and(|p| i32::try_from(p).is_ok()),
    ));
    errors.extend(expect(
        "spec.sha256",
        spec.get("sha256"),
        "string",
        Value::is_string,
    ));
    errors.extend(expect(
        "spec.selector",
        spec.get("selector"),
        "object",
        Value::is_object,
    ));
    errors.extend(expect(
        "spec.match",
        spec.get("match"),
        "array",
        Value::is_array,
    ));
    let enums: [(&str, &[&str]); 4] = [
        ("failStrategy", &["FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"]),
        ("phase", &["UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"]),
        (
            "imagePullPolicy",
            &["UNSPECIFIED_POLICY", "IfNotPresent", "Always"],
        ),
        ("type", &["UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK"]),
    ];
    for (field, allowed) in enums {
        if let Some(value) = spec.get(field) {
            if !value.as_str().is_some_and(|v| allowed.contains(&v)) {
                errors.push(FieldError::unsupported(
                    &format!("spec.{field}"),
                    value,
                    allowed,
                ));
            }
        }
    }
    errors
}

fn type_error(field: &str, value: &Value, wanted: &str) -> FieldError {
    FieldError::invalid(
        field,
        format!(
            "Invalid value: \"{}\": {field} in body must be of type {wanted}: \"{}\"",
            json_type(value),
            json_type(value)
        ),
    )
}
