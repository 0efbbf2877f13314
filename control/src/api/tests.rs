//! The API's observable behaviour through `app(state).oneshot(request)`, with an in-memory store,
//! a router that records what it is given and an observer with fixed answers.

use super::{app, AppState};
use crate::controller::Controller;
use crate::error::Result;
use crate::observer::{MetricsObserver, ProxyGeneration};
use crate::router::wasmplugin::WasmPluginError;
use crate::router::TrafficRouter;
use crate::state::ServiceState;
use crate::store::StateStore;
use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use meshcanary_core::config::FilterConfig;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tower::ServiceExt;

const TOKEN: &str = "test-token-0123456789";

#[derive(Clone, Default)]
struct MemoryStore(Arc<Mutex<Option<ServiceState>>>);

#[async_trait]
impl StateStore for MemoryStore {
    async fn load(&self) -> Result<Option<ServiceState>> {
        Ok(self.0.lock().unwrap().clone())
    }
    async fn save(&self, state: &ServiceState) -> Result<()> {
        *self.0.lock().unwrap() = Some(state.clone());
        Ok(())
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

/// Records what it is given; while `.1` is set, it fails every push instead, as a WasmPlugin
/// that someone keeps changing would.
#[derive(Clone, Default)]
struct RecordingRouter(Arc<Mutex<Vec<FilterConfig>>>, Arc<AtomicBool>);

#[async_trait]
impl TrafficRouter for RecordingRouter {
    async fn apply(&self, config: &FilterConfig) -> Result<()> {
        if self.1.load(Ordering::SeqCst) {
            return Err(crate::Error::Push {
                target: self.describe(),
                source: Box::new(WasmPluginError::Contended { attempts: 5 }.into()),
            });
        }
        self.0.lock().unwrap().push(config.clone());
        Ok(())
    }
    fn describe(&self) -> String {
        "recording".into()
    }
}

struct NoProxies;

#[async_trait]
impl MetricsObserver for NoProxies {
    async fn generations(&self) -> Vec<ProxyGeneration> {
        Vec::new()
    }
    async fn snapshots(
        &self,
        _route: &str,
    ) -> std::result::Result<Vec<(String, crate::analysis::Snapshot)>, crate::observer::ObserveError>
    {
        Ok(Vec::new())
    }
    fn describe(&self) -> String {
        "none".into()
    }
}

struct Harness {
    app: axum::Router,
    pushed: RecordingRouter,
    store: MemoryStore,
    /// The engine loop does not run here; a test that needs its passes calls `tick`.
    controller: Arc<Controller>,
}

async fn harness(protect_reads: bool) -> Harness {
    harness_with(protect_reads, crate::options::ControllerOptions::default()).await
}

async fn harness_with(protect_reads: bool, options: crate::options::ControllerOptions) -> Harness {
    let initial = FilterConfig::from_json(
        json!({"generation": 1, "routes": [{"name": "reviews", "hosts": ["*"],
            "variants": [{"name": "v1", "weight": 10000}, {"name": "v2", "weight": 0}]}]})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let pushed = RecordingRouter::default();
    let store = MemoryStore::default();
    let controller = Controller::start(
        Box::new(store.clone()),
        Box::new(pushed.clone()),
        Box::new(NoProxies),
        crate::options::ControllerOptions {
            initial: Some(initial),
            ..options
        },
    )
    .await
    .unwrap();
    let app = app(AppState {
        resources: None,
        controller: controller.clone(),
        token: Arc::from(TOKEN),
        protect_reads,
        wasm: Some(Arc::new(super::filter::WasmArtifact {
            bytes: b"\0asm".to_vec(),
            sha256: "00ff".into(),
        })),
    });
    Harness {
        app,
        pushed,
        store,
        controller,
    }
}

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match body {
        Some(value) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Body::from(value.to_string())
        }
        None => Body::empty(),
    };
    let response = app
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, headers, value)
}

fn rollout(name: &str) -> Value {
    json!({"name": name, "route": "reviews", "stable": "v1", "canary": "v2",
           "steps": [{"setWeight": {"percent": 10}}, {"pause": {}}, {"setWeight": {"percent": 50}}]})
}

#[tokio::test]
async fn create_starts_the_rollout_and_pushes_its_weight() {
    let h = harness(false).await;
    let (status, headers, body) = call(
        &h.app,
        "POST",
        "/v1/rollouts",
        Some(TOKEN),
        Some(rollout("r1")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(headers[header::LOCATION], "/v1/rollouts/r1");
    assert_eq!(headers[header::ETAG], format!("\"{}\"", body["version"]));
    // The answer is the rollout as the create left it: in its first step, its weight pushed by
    // that same write (the engine loop, not running here, would take the next steps).
    assert_eq!(body["status"]["phase"], "progressing");
    assert_eq!(body["status"]["step"], 0);
    assert_eq!(body["status"]["canaryWeight"], 1000);
    assert_eq!(body["propagation"]["summary"], "applied on 0/0 proxies");
    let last = h.pushed.0.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.routes[0].variants[1].weight, 1000);
    assert_eq!(last.generation, 2);
}

/// Standalone mode has no Deployments: a rollout naming some is refused, naming the field, and
/// nothing is created.
#[tokio::test]
async fn standalone_refuses_a_rollout_with_workloads() {
    let h = harness(false).await;
    let mut spec = rollout("r1");
    spec["workloads"] = json!({"stable": "reviews-v1", "canary": "reviews-v2"});
    let (status, _, body) = call(&h.app, "POST", "/v1/rollouts", Some(TOKEN), Some(spec)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "workloads");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("needs Kubernetes mode (--wasmplugin)"),
        "{body}"
    );
    let (status, _, _) = call(&h.app, "GET", "/v1/rollouts/r1", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Issue 20: finished variants stayed at 0 % forever, so after about 15 releases a route reached
/// the filter's 16 variants and took no canary. Now each release retires the old stable.
#[tokio::test]
async fn fifty_releases_in_a_row_on_one_route_each_succeed() {
    let h = harness(false).await;
    for release in 1..=50 {
        let (stable, canary, name) = (
            format!("v{release}"),
            format!("v{}", release + 1),
            format!("r{release}"),
        );
        let spec = json!({"name": name, "route": "reviews", "stable": stable, "canary": canary,
                          "steps": [{"setWeight": {"percent": 50}}, {"setWeight": {"percent": 100}}],
                          "retireAfter": "0s"});
        let (status, _, body) = call(&h.app, "POST", "/v1/rollouts", Some(TOKEN), Some(spec)).await;
        assert_eq!(status, StatusCode::CREATED, "release {release}: {body}");
        let mut variants = Vec::new();
        for _ in 0..20 {
            h.controller.tick().await.unwrap();
            let (_, _, routes) = call(&h.app, "GET", "/v1/routes", None, None).await;
            variants = routes["config"]["routes"][0]["variants"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| {
                    (
                        v["name"].as_str().unwrap().to_string(),
                        v["weight"].as_u64().unwrap(),
                    )
                })
                .collect::<Vec<_>>();
            assert!(variants.len() <= 2, "release {release}: {variants:?}");
            if variants.len() == 1 {
                break;
            }
        }
        assert_eq!(variants, [(canary.clone(), 10000)], "release {release}");
        let (_, _, body) = call(&h.app, "GET", &format!("/v1/rollouts/{name}"), None, None).await;
        assert_eq!(
            body["status"]["phase"], "succeeded",
            "release {release}: {body}"
        );
        assert_eq!(
            body["status"]["message"],
            format!("retired {stable} from route reviews"),
            "release {release}"
        );
    }
    let last = h.pushed.0.lock().unwrap().last().cloned().unwrap();
    let names: Vec<&str> = last.routes[0]
        .variants
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(names, ["v51"], "what the proxies run");
}

/// A variant a finished rollout leaves behind waits out its grace; one that a QA rule sends
/// requests to leaves with that rule, and the rollout's history says so.
#[tokio::test]
async fn a_rolled_back_canary_leaves_after_its_grace_with_its_rules() {
    let h = harness(false).await;
    let rule = json!({"header": "x-qa", "exact": "v3", "variant": "v3"});
    let spec = json!({"name": "r1", "route": "reviews", "stable": "v1", "canary": "v3",
                      "steps": [{"setWeight": {"percent": 10}}, {"pause": {}}],
                      "retireAfter": "1s"});
    let (status, _, body) = call(&h.app, "POST", "/v1/rollouts", Some(TOKEN), Some(spec)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _, body) = call(
        &h.app,
        "POST",
        "/v1/routes/reviews/rules",
        Some(TOKEN),
        Some(rule),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _, body) = call(&h.app, "POST", "/v1/rollouts/r1/abort", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let names = |routes: &Value| -> Vec<String> {
        routes["config"]["routes"][0]["variants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect()
    };
    h.controller.tick().await.unwrap();
    let (_, _, routes) = call(&h.app, "GET", "/v1/routes", None, None).await;
    assert_eq!(
        names(&routes),
        ["v1", "v2", "v3"],
        "within its grace, v3 stays"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    h.controller.tick().await.unwrap();
    let (_, _, routes) = call(&h.app, "GET", "/v1/routes", None, None).await;
    assert_eq!(names(&routes), ["v1", "v2"]);
    assert_eq!(
        routes["config"]["routes"][0]["rules"],
        Value::Null,
        "{routes}"
    );
    let (_, _, body) = call(&h.app, "GET", "/v1/rollouts/r1", None, None).await;
    assert_eq!(body["status"]["phase"], "aborted");
    assert_eq!(
        body["status"]["message"],
        "retired v3 from route reviews, with the QA rule that sent requests to it: header x-qa = \"v3\""
    );
}

/// A variant that a running rollout uses is not retired behind its back: it stays, and the
/// rollout that left it says why.
#[tokio::test]
async fn a_variant_in_use_stays_and_the_history_says_why() {
    let h = harness(false).await;
    let create = |name: &str, canary: &str| {
        json!({"name": name, "route": "reviews", "stable": "v1", "canary": canary,
               "steps": [{"setWeight": {"percent": 10}}, {"pause": {}}], "retireAfter": "0s"})
    };
    let (status, _, body) = call(
        &h.app,
        "POST",
        "/v1/rollouts",
        Some(TOKEN),
        Some(create("r1", "v3")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    call(&h.app, "POST", "/v1/rollouts/r1/abort", Some(TOKEN), None).await;
    // The same canary again, before the engine retired it.
    let (status, _, body) = call(
        &h.app,
        "POST",
        "/v1/rollouts",
        Some(TOKEN),
        Some(create("r2", "v3")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    h.controller.tick().await.unwrap();
    let (_, _, body) = call(&h.app, "GET", "/v1/rollouts/r1", None, None).await;
    assert_eq!(
        body["status"]["message"],
        "v3 stays on route reviews: rollout r2 (paused) uses it"
    );
    let (_, _, routes) = call(&h.app, "GET", "/v1/routes", None, None).await;
    assert_eq!(routes["config"]["routes"][0]["variants"][2]["name"], "v3");
}

#[tokio::test]
async fn errors_have_the_documented_shape() {
    let h = harness(false).await;
    call(
        &h.app,
        "POST",
        "/v1/rollouts",
        Some(TOKEN),
        Some(rollout("r1")),
    )
    .await;
    let mut unknown = rollout("r2");
    unknown["stepz"] = json!([]);
    let mut wrong_type = rollout("r2");
    wrong_type["steps"][0]["setWeight"]["percent"] = json!("ten");
    let mut invalid = rollout("r2");
    invalid["steps"][0]["setWeight"]["percent"] = json!(150);
    let mut other_route = rollout("r2");
    other_route["route"] = json!("ratings");
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<Value>,
        StatusCode,
        &'static str,
        Option<&'static str>,
    );
    let cases: Vec<Case> = vec![
        (
            "no token",
            "POST",
            "/v1/rollouts",
            None,
            Some(rollout("r2")),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            None,
        ),
        (
            "wrong token",
            "POST",
            "/v1/rollouts/r1/pause",
            Some("nope"),
            None,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            None,
        ),
        (
            "unknown field",
            "POST",
            "/v1/rollouts",
            Some(TOKEN),
            Some(unknown),
            StatusCode::BAD_REQUEST,
            "malformed_request",
            Some("stepz"),
        ),
        (
            "wrong type",
            "POST",
            "/v1/rollouts",
            Some(TOKEN),
            Some(wrong_type),
            StatusCode::BAD_REQUEST,
            "malformed_request",
            Some("steps[0].setWeight.percent"),
        ),
        (
            "invalid value",
            "POST",
            "/v1/rollouts",
            Some(TOKEN),
            Some(invalid),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("steps[0].setWeight.percent"),
        ),
        (
            "unknown route",
            "POST",
            "/v1/rollouts",
            Some(TOKEN),
            Some(other_route),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("route"),
        ),
        (
            "second rollout on the route",
            "POST",
            "/v1/rollouts",
            Some(TOKEN),
            Some(rollout("r2")),
            StatusCode::CONFLICT,
            "conflict",
            None,
        ),
        (
            "same name",
            "POST",
            "/v1/rollouts",
            Some(TOKEN),
            Some(rollout("r1")),
            StatusCode::CONFLICT,
            "conflict",
            None,
        ),
        (
            "unknown rollout",
            "GET",
            "/v1/rollouts/nope",
            None,
            None,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        ),
        (
            "unknown action",
            "POST",
            "/v1/rollouts/r1/explode",
            Some(TOKEN),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        ),
        (
            "delete a running rollout",
            "DELETE",
            "/v1/rollouts/r1",
            Some(TOKEN),
            None,
            StatusCode::CONFLICT,
            "conflict",
            None,
        ),
        (
            "finish before promotion",
            "POST",
            "/v1/rollouts/r1/finish",
            Some(TOKEN),
            None,
            StatusCode::CONFLICT,
            "conflict",
            None,
        ),
        (
            "bad weight",
            "PUT",
            "/v1/rollouts/r1/weight",
            Some(TOKEN),
            Some(json!({"percent": 10, "basisPoints": 1000})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("basisPoints"),
        ),
        (
            "weight over 100 %",
            "PUT",
            "/v1/rollouts/r1/weight",
            Some(TOKEN),
            Some(json!({"percent": 150})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("percent"),
        ),
        (
            "weight over 10000 bp",
            "PUT",
            "/v1/rollouts/r1/weight",
            Some(TOKEN),
            Some(json!({"basisPoints": 10001})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("basisPoints"),
        ),
        (
            "rule for an unknown variant",
            "POST",
            "/v1/routes/reviews/rules",
            Some(TOKEN),
            Some(json!({"header": "x", "present": true, "variant": "v9"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("variant"),
        ),
        (
            "rule on an unknown route",
            "POST",
            "/v1/routes/nope/rules",
            Some(TOKEN),
            Some(json!({"header": "x", "present": true, "variant": "v2"})),
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        ),
        (
            "rule index not a number",
            "DELETE",
            "/v1/routes/reviews/rules/x",
            Some(TOKEN),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        ),
        (
            "no such endpoint",
            "GET",
            "/v2/things",
            None,
            None,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        ),
    ];
    for (name, method, path, token, body, status, code, field) in cases {
        let (got, _, body) = call(&h.app, method, path, token, body).await;
        assert_eq!(got, status, "{name}: {body}");
        let error = body["error"]
            .as_object()
            .unwrap_or_else(|| panic!("{name}: {body}"));
        assert_eq!(error["code"], code, "{name}: {body}");
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{name}"
        );
        assert_eq!(
            error.get("field").and_then(Value::as_str),
            field,
            "{name}: {body}"
        );
        assert!(
            error
                .keys()
                .all(|k| ["code", "message", "field"].contains(&k.as_str())),
            "{name}: {body}"
        );
    }
}

#[tokio::test]
async fn bodies_are_limited_and_must_be_json() {
    let h = harness(false).await;
    let mut huge = rollout("r1");
    huge["name"] = json!("x".repeat(70_000));
    let (status, _, body) = call(&h.app, "POST", "/v1/rollouts", Some(TOKEN), Some(huge)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    let request = Request::post("/v1/rollouts")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(rollout("r1").to_string()))
        .unwrap();
    let response = h.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn reads_are_open_unless_protected() {
    let open = harness(false).await;
    assert_eq!(
        call(&open.app, "GET", "/v1/rollouts", None, None).await.0,
        StatusCode::OK
    );
    let closed = harness(true).await;
    assert_eq!(
        call(&closed.app, "GET", "/v1/rollouts", None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&closed.app, "GET", "/v1/rollouts", Some(TOKEN), None)
            .await
            .0,
        StatusCode::OK
    );
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/filter/meshcanary.wasm",
        "/filter/meshcanary.wasm.sha256",
    ] {
        assert_eq!(
            call(&closed.app, "GET", path, None, None).await.0,
            StatusCode::OK,
            "{path}"
        );
    }
}

#[tokio::test]
async fn if_match_guards_against_stale_writes() {
    let h = harness(false).await;
    let (_, headers, _) = call(
        &h.app,
        "POST",
        "/v1/rollouts",
        Some(TOKEN),
        Some(rollout("r1")),
    )
    .await;
    let etag = headers[header::ETAG].to_str().unwrap().to_string();
    let stale = "\"1\"";
    let request = |tag: &str| {
        Request::post("/v1/rollouts/r1/resume")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::IF_MATCH, tag)
            .body(Body::empty())
            .unwrap()
    };
    let response = h.app.clone().oneshot(request(stale)).await.unwrap();
    assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
    let response = h.app.clone().oneshot(request(&etag)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_ne!(
        response.headers()[header::ETAG].to_str().unwrap(),
        etag,
        "the version moved"
    );
}

#[tokio::test]
async fn signed_rules_are_pushed_whole_and_shown_without_secrets() {
    let h = harness(false).await;
    let secret = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA";
    let rule = json!({"header": "x-meshcanary-qa", "tokenKeys": [format!("k1:{secret}")]});
    let (status, _, _) = call(
        &h.app,
        "POST",
        "/v1/routes/reviews/rules",
        Some(TOKEN),
        Some(rule),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let pushed = h.pushed.0.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        pushed.routes[0].rules[0].token_keys,
        [format!("k1:{secret}")]
    );
    let (_, _, routes) = call(&h.app, "GET", "/v1/routes", None, None).await;
    assert_eq!(
        routes["config"]["routes"][0]["rules"][0]["tokenKeys"],
        json!(["k1:<redacted>"])
    );
    assert!(!routes.to_string().contains(secret), "{routes}");
    let (_, _, removed) = call(
        &h.app,
        "DELETE",
        "/v1/routes/reviews/rules/0",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(removed["tokenKeys"], json!(["k1:<redacted>"]));
}

#[tokio::test]
async fn concurrent_writes_lose_nothing() {
    let h = harness(false).await;
    let adds = (0..50).map(|i| {
        let app = h.app.clone();
        async move {
            call(
                &app,
                "POST",
                "/v1/routes/reviews/rules",
                Some(TOKEN),
                Some(json!({"header": "x-qa", "exact": format!("user-{i}"), "variant": "v2"})),
            )
            .await
            .0
        }
    });
    let statuses = futures_join(adds).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::CREATED),
        "{statuses:?}"
    );
    let (_, _, routes) = call(&h.app, "GET", "/v1/routes", None, None).await;
    let rules = routes["config"]["routes"][0]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 50);
    assert_eq!(routes["config"]["generation"], 51);
    let last_pushed = h.pushed.0.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last_pushed.routes[0].rules.len(), 50);
    let (status, _, removed) = call(
        &h.app,
        "DELETE",
        "/v1/routes/reviews/rules/0",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(removed["variant"], "v2");
}

async fn futures_join<F: std::future::Future<Output = StatusCode> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<StatusCode> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn the_openapi_document_and_metrics_describe_the_service() {
    let h = harness(false).await;
    call(
        &h.app,
        "POST",
        "/v1/rollouts",
        Some(TOKEN),
        Some(rollout("r1")),
    )
    .await;
    let (_, _, doc) = call(&h.app, "GET", "/openapi.json", None, None).await;
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/v1/rollouts",
        "/v1/rollouts/{name}",
        "/v1/rollouts/{name}/{action}",
        "/v1/rollouts/{name}/weight",
        "/v1/rollouts/{name}/partition",
        "/v1/routes",
        "/v1/routes/{route}/rules",
        "/healthz",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} missing from {:?}",
            paths.keys()
        );
    }
    assert!(doc["components"]["schemas"]["RolloutSpec"].is_object());
    for schema in ["PartitionBody", "WorkloadsView", "Batch", "BatchReplicas"] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} missing"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // Every schema the document refers to is in it (a step type or a view field added later
    // included: `MirrorStep`, `MirrorCounters`).
    fn refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref") {
                    out.push(target.clone());
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut targets = Vec::new();
    refs(&doc, &mut targets);
    for target in &targets {
        let name = target.trim_start_matches("#/components/schemas/");
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{target} is referred to but not defined"
        );
    }
    for name in ["MirrorStep", "MirrorCounters"] {
        assert!(
            targets.iter().any(|t| t.ends_with(&format!("/{name}"))),
            "{name} is not in the document"
        );
    }
    let (_, _, metrics) = call(&h.app, "GET", "/metrics", None, None).await;
    let text = metrics.as_str().unwrap();
    assert!(
        text.contains("meshcanary_control_rollouts{phase=\"progressing\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "meshcanary_control_canary_weight_basis_points{rollout=\"r1\",route=\"reviews\"} 1000"
        ),
        "{text}"
    );
    assert!(
        text.contains("meshcanary_control_pushes_total{result=\"ok\"} 2"),
        "{text}"
    );
}

/// Issue 18 item 3: a failed push is counted with what failed, from the error's typed cause,
/// and `/readyz` shows the error as it always did.
#[tokio::test]
async fn a_failed_push_is_counted_by_its_error() {
    let h = harness(false).await;
    h.pushed.1.store(true, Ordering::SeqCst);
    let (status, _, body) = call(
        &h.app,
        "POST",
        "/v1/rollouts",
        Some(TOKEN),
        Some(rollout("r1")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, _, metrics) = call(&h.app, "GET", "/metrics", None, None).await;
    let text = metrics.as_str().unwrap();
    for series in [
        "meshcanary_control_pushes_total{result=\"ok\"} 1",
        "meshcanary_control_pushes_total{result=\"failed\",error=\"wasmplugin_conflict\"} 1",
    ] {
        assert!(text.contains(series), "{series} missing from {text}");
    }
    let (status, _, body) = call(&h.app, "GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "not_ready");
    assert_eq!(
        body["error"]["message"],
        "not ready: push: push to recording: the WasmPlugin changed under every one of 5 attempts; will retry"
    );
}

#[tokio::test]
async fn the_dashboard_is_served_open_and_self_contained() {
    // Reads protected: the page itself must still load, so a person can type the token into it.
    let h = harness(true).await;
    let (status, headers, body) = call(&h.app, "GET", "/dashboard", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        policy.starts_with("default-src 'none'; script-src 'sha256-"),
        "{policy}"
    );
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    let page = body.as_str().unwrap();
    assert!(page.starts_with("<!doctype html>"));
    for hook in [
        "id=\"rollout-rows\"",
        "id=\"detail-phase\"",
        "id=\"detail-weight\"",
        "id=\"chart-weight\"",
        "id=\"chart-success\"",
        "id=\"chart-latency\"",
        "id=\"steps\"",
        "id=\"timeline\"",
        "id=\"check\"",
        "id=\"token\"",
        "id=\"error\"",
        "data-action=\"pause\"",
        "data-action=\"resume\"",
        "data-action=\"promote\"",
        "data-action=\"abort\"",
        "sessionStorage",
        "Authorization",
        "`/v1/rollouts?${query}`",
        "id=\"pager\"",
        "/v1/rollouts/${encodeURIComponent(name)}/${action}",
    ] {
        assert!(page.contains(hook), "the page has no {hook}");
    }

    let (status, headers, _) = call(&h.app, "GET", "/", None, None).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/dashboard");
    // The data behind it is still protected.
    let (status, _, _) = call(&h.app, "GET", "/v1/rollouts", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, _, doc) = call(&h.app, "GET", "/openapi.json", None, None).await;
    assert!(
        doc["paths"]["/dashboard"]["get"]["responses"]["200"]["content"]["text/html"].is_object(),
        "{}",
        doc["paths"]["/dashboard"]
    );
}

/// Sends a request as given (method, path, headers, body bytes) and returns status, headers and
/// the body as JSON (or as a string if it is not JSON).
async fn raw(
    app: &axum::Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, headers, value)
}

/// Issue 17 item 6: the answers that used to leave the documented shape — axum's own rejections
/// and fallbacks, a prefix-matched content type, errors about a whole body — are all
/// `{"error": {"code", "message", "field"}}` with JSON's content type and the field to blame.
#[tokio::test]
async fn every_error_from_every_route_has_the_documented_shape_and_field() {
    let h = harness(false).await;
    call(
        &h.app,
        "POST",
        "/v1/rollouts",
        Some(TOKEN),
        Some(rollout("r1")),
    )
    .await;
    let auth = format!("Bearer {TOKEN}");
    let json = ("content-type", "application/json");
    let bearer = ("authorization", auth.as_str());
    let absurd = json!({"name": "r9", "route": "reviews", "stable": "v1", "canary": "v2",
        "steps": [{"setWeight": {"percent": 10}}, {"pause": {"duration": "300000000y"}}]})
    .to_string();
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        String,
        StatusCode,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "path segment not UTF-8",
            "GET",
            "/v1/rollouts/%ff",
            vec![],
            String::new(),
            StatusCode::BAD_REQUEST,
            "malformed_request",
            Some("name"),
        ),
        (
            "route path segment not UTF-8",
            "DELETE",
            "/v1/routes/%ff/rules/0",
            vec![bearer],
            String::new(),
            StatusCode::BAD_REQUEST,
            "malformed_request",
            Some("route"),
        ),
        (
            "method not allowed",
            "POST",
            "/healthz",
            vec![bearer],
            String::new(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            None,
        ),
        (
            "method not allowed on a collection",
            "PATCH",
            "/v1/rollouts",
            vec![bearer],
            String::new(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            None,
        ),
        (
            "a content type that only starts like JSON",
            "POST",
            "/v1/rollouts",
            vec![bearer, ("content-type", "application/jsonfoo")],
            rollout("r2").to_string(),
            StatusCode::BAD_REQUEST,
            "malformed_request",
            Some("Content-Type"),
        ),
        (
            "a rule with a header and a cookie",
            "POST",
            "/v1/routes/reviews/rules",
            vec![bearer, json],
            json!({"header": "x-qa", "cookie": "qa", "exact": "1", "variant": "v2"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("cookie"),
        ),
        (
            "a rule matching on nothing",
            "POST",
            "/v1/routes/reviews/rules",
            vec![bearer, json],
            json!({"exact": "1", "variant": "v2"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("header"),
        ),
        (
            "a rule with two matchers",
            "POST",
            "/v1/routes/reviews/rules",
            vec![bearer, json],
            json!({"header": "x-qa", "exact": "1", "present": true, "variant": "v2"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("present"),
        ),
        (
            "a weight with neither unit",
            "PUT",
            "/v1/rollouts/r1/weight",
            vec![bearer, json],
            "{}".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("percent"),
        ),
        (
            "a weight with both units",
            "PUT",
            "/v1/rollouts/r1/weight",
            vec![bearer, json],
            json!({"percent": 1, "basisPoints": 100}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("basisPoints"),
        ),
        (
            "an absurd duration",
            "POST",
            "/v1/rollouts",
            vec![bearer, json],
            absurd,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("steps[1].pause.duration"),
        ),
    ];
    let mut wrong = Vec::new();
    for (name, method, path, headers, body, status, code, field) in cases {
        let (got, headers, body) = raw(&h.app, method, path, &headers, &body).await;
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let error = body["error"].as_object();
        let message = body["error"]["message"].as_str().unwrap_or("");
        let ok = got == status
            && content_type == "application/json"
            && body.as_object().is_some_and(|o| o.len() == 1)
            && error.is_some_and(|e| {
                e.keys()
                    .all(|k| ["code", "message", "field"].contains(&k.as_str()))
            })
            && body["error"]["code"] == code
            && !message.is_empty()
            && !message.starts_with(':')
            && body["error"].get("field").and_then(Value::as_str) == field;
        if !ok {
            wrong.push(format!("{name}: {got} {content_type:?} {body}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // A 405 still says which methods the path takes.
    let (_, headers, body) = raw(&h.app, "POST", "/healthz", &[bearer], "").await;
    assert_eq!(headers[header::ALLOW], "GET,HEAD", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("POST is not allowed on /healthz")),
        "{body}"
    );
}

/// Issue 17 item 8: the list is a page (`items`, `continue`, `total`), newest first, and finished
/// rollouts beyond the retention policy are deleted by the next write.
#[tokio::test]
async fn lists_come_in_pages_and_finished_rollouts_are_retained_by_policy() {
    let options = crate::options::ControllerOptions {
        retention: crate::retention::Retention::new(
            3,
            crate::retention::DEFAULT_MAX_AGE,
            crate::retention::DEFAULT_MAX_BYTES,
        )
        .unwrap(),
        ..Default::default()
    };
    let h = harness_with(false, options).await;
    for i in 1..=5 {
        let name = format!("r{i}");
        let (status, _, body) = call(
            &h.app,
            "POST",
            "/v1/rollouts",
            Some(TOKEN),
            Some(rollout(&name)),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let path = format!("/v1/rollouts/{name}/abort");
        let (status, _, body) = call(&h.app, "POST", &path, Some(TOKEN), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // Times are in milliseconds, and ties are ordered by name: each rollout gets its own
        // millisecond, so "newest" means the same to the list, retention and this test.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let names = |body: &Value| -> Vec<String> {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["spec"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    // The writes after each abort (the engine's tick) deleted all but the newest three.
    let (_, _, all) = call(&h.app, "GET", "/v1/rollouts", None, None).await;
    assert_eq!(names(&all), ["r5", "r4", "r3"]);
    assert_eq!(all["total"], 3);
    assert!(all.get("continue").is_none());
    let (status, _, body) = call(
        &h.app,
        "POST",
        "/v1/rollouts",
        Some(TOKEN),
        Some(rollout("r6")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, _, first) = call(&h.app, "GET", "/v1/rollouts?limit=2", None, None).await;
    assert_eq!(names(&first), ["r6", "r5"]);
    assert_eq!(first["total"], 4);
    let token = first["continue"].as_str().unwrap();
    let path = format!("/v1/rollouts?limit=2&continue={token}");
    let (_, _, second) = call(&h.app, "GET", &path, None, None).await;
    assert_eq!(names(&second), ["r4", "r3"]);
    assert!(second.get("continue").is_none());
    let saved = h.store.0.lock().unwrap().clone().unwrap();
    let mut kept: Vec<&String> = saved.rollouts.keys().collect();
    kept.sort();
    assert_eq!(kept, ["r3", "r4", "r5", "r6"], "the saved state too");
}

/// A Deployment scaler whose first `failures` scales fail, as an API server that is briefly
/// unreachable would; it records every attempt.
#[derive(Debug, Default)]
struct FlakyScaler {
    failures: Mutex<usize>,
    attempts: Mutex<Vec<(String, u32, bool)>>,
}

#[async_trait]
impl crate::workloads::WorkloadScaler for FlakyScaler {
    async fn scale(&self, name: &str, replicas: u32) -> Result<()> {
        let fail = {
            let mut failures = self.failures.lock().unwrap();
            let fail = *failures > 0;
            *failures = failures.saturating_sub(1);
            fail
        };
        self.attempts
            .lock()
            .unwrap()
            .push((name.to_string(), replicas, !fail));
        if fail {
            return Err(crate::Error::Conflict("the API server is away".into()));
        }
        Ok(())
    }
    async fn delete(&self, name: &str) -> Result<()> {
        self.scale(name, 0).await
    }
    async fn ready(&self, _name: &str) -> Result<crate::rollout::Replicas> {
        Ok(crate::rollout::Replicas::default())
    }
}

async fn scaling_harness(failures: usize) -> (Harness, Arc<FlakyScaler>) {
    let scaler = Arc::new(FlakyScaler {
        failures: Mutex::new(failures),
        ..FlakyScaler::default()
    });
    let options = crate::options::ControllerOptions {
        scaler: Some(scaler.clone()),
        ..Default::default()
    };
    (harness_with(false, options).await, scaler)
}

fn scaled_rollout(workloads: Value) -> Value {
    let mut body = rollout("r");
    body["workloads"] = workloads;
    body
}

/// Waits (a few seconds at most) until the scaler has a successful scale of `name` to `replicas`.
async fn scaled(scaler: &FlakyScaler, name: &str, replicas: u32) -> Vec<(String, u32, bool)> {
    for _ in 0..100 {
        let attempts = scaler.attempts.lock().unwrap().clone();
        if attempts.contains(&(name.to_string(), replicas, true)) {
            return attempts;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!(
        "{name} never scaled to {replicas}: {:?}",
        scaler.attempts.lock().unwrap()
    );
}

#[tokio::test]
async fn a_failed_scale_is_retried_until_it_goes_through() {
    let (h, scaler) = scaling_harness(2).await;
    let body =
        scaled_rollout(json!({"stable": "reviews-v1", "canary": "reviews-v2", "replicas": 4}));
    let (status, _, body) = call(&h.app, "POST", "/v1/rollouts", Some(TOKEN), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let attempts = scaled(&scaler, "reviews-v2", 1).await;
    let expected = [false, false, true].map(|ok| ("reviews-v2".to_string(), 1, ok));
    assert_eq!(attempts, expected);
}

#[tokio::test]
async fn a_scale_that_keeps_failing_shows_in_the_rollouts_view() {
    let (h, _scaler) = scaling_harness(usize::MAX).await;
    let body =
        scaled_rollout(json!({"stable": "reviews-v1", "canary": "reviews-v2", "replicas": 4}));
    let (status, _, body) = call(&h.app, "POST", "/v1/rollouts", Some(TOKEN), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut last = Value::Null;
    for _ in 0..100 {
        let (_, _, view) = call(&h.app, "GET", "/v1/rollouts/r", None, None).await;
        if view["workloads"]["canary"]["error"].is_string() {
            last = view;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let error = last["workloads"]["canary"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.starts_with("scale to 1: ")
            && error.contains("the API server is away")
            && error.contains("retrying"),
        "{last}"
    );
    assert!(last["workloads"]["stable"].get("error").is_none(), "{last}");
}

#[tokio::test]
async fn a_run_replaced_while_running_scales_its_canary_down() {
    let (h, scaler) = scaling_harness(0).await;
    let body =
        scaled_rollout(json!({"stable": "reviews-v1", "canary": "reviews-v2", "replicas": 4}));
    let (status, _, body) = call(&h.app, "POST", "/v1/rollouts", Some(TOKEN), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    scaled(&scaler, "reviews-v2", 1).await;
    let mut next =
        scaled_rollout(json!({"stable": "reviews-v1", "canary": "reviews-v3", "replicas": 4}));
    next["canary"] = json!("v3");
    let spec: crate::rollout::RolloutSpec = serde_json::from_value(next).unwrap();
    h.controller.replace(spec, "a new spec").await.unwrap();
    scaled(&scaler, "reviews-v2", 0).await;
    scaled(&scaler, "reviews-v3", 1).await;
}

#[tokio::test]
async fn set_weight_may_not_raise_a_scaled_canary_and_the_partition_is_set_through_the_api() {
    let (h, _scaler) = scaling_harness(0).await;
    let mut body = scaled_rollout(
        json!({"stable": "reviews-v1", "canary": "reviews-v2", "replicas": 4,
        "batches": [{"replicas": 1, "weight": {"percent": 10}}, {"replicas": "50%", "weight": {"percent": 50}}],
        "batchPartition": 0}),
    );
    body["name"] = json!("batched");
    let (status, _, body) = call(&h.app, "POST", "/v1/rollouts", Some(TOKEN), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _, body) = call(
        &h.app,
        "PUT",
        "/v1/rollouts/batched/weight",
        Some(TOKEN),
        Some(json!({"percent": 20})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("may only go down (0% now)"),
        "{body}"
    );
    let (status, _, body) = call(
        &h.app,
        "PUT",
        "/v1/rollouts/batched/partition",
        Some(TOKEN),
        Some(json!({"batchPartition": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["spec"]["workloads"]["batchPartition"], 1);
    assert_eq!(
        body["status"]["message"],
        "workloads.batchPartition set to 1"
    );
    let (status, _, body) = call(
        &h.app,
        "PUT",
        "/v1/rollouts/batched/partition",
        Some(TOKEN),
        Some(json!({"batchPartition": 2})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "workloads.batchPartition");
    let (status, _, body) = call(
        &h.app,
        "PUT",
        "/v1/rollouts/batched/partition",
        Some(TOKEN),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["spec"]["workloads"].get("batchPartition").is_none(),
        "{body}"
    );
    // A rollout without batches has no partition to set.
    let body = scaled_rollout(json!({"stable": "reviews-v1", "canary": "reviews-v3"}));
    let mut body = body;
    body["route"] = json!("reviews");
    body["canary"] = json!("v3");
    let _ = call(
        &h.app,
        "POST",
        "/v1/rollouts/batched/abort",
        Some(TOKEN),
        None,
    )
    .await;
    let (status, _, created) = call(&h.app, "POST", "/v1/rollouts", Some(TOKEN), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, _, body) = call(
        &h.app,
        "PUT",
        "/v1/rollouts/r/partition",
        Some(TOKEN),
        Some(json!({"batchPartition": 0})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "batchPartition");
}
