//! The control service under an unlucky operator's conditions, through the real binary and a real
//! Envoy: a gate hook that never answers, many writes at once, state that parses but is wrong, a
//! proxy that stops receiving configs.

use meshcanary_core::config::FilterConfig;
use meshcanary_e2e::control::{ControlService, TOKEN};
use meshcanary_testkit::envoy::Envoy;
use meshcanary_testkit::paths;
use meshcanary_testkit::service::{ServeCommand, ServiceProcess, READYZ};
use meshcanary_testkit::upstream::{self, Upstream};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Two routes, so one rollout's trouble can be told apart from another's progress.
fn routes() -> FilterConfig {
    serde_json::from_value(json!({"generation": 1, "routes": [
        {"name": "reviews", "hosts": ["reviews"], "variants": [{"name": "v1", "weight": 10000}, {"name": "v2", "weight": 0}]},
        {"name": "ratings", "hosts": ["ratings"], "variants": [{"name": "v1", "weight": 10000}, {"name": "v2", "weight": 0}]}
    ]}))
    .unwrap()
}

struct Rig {
    service: ControlService,
    envoy: Envoy,
    _upstreams: [Upstream; 3],
}

impl Rig {
    async fn start() -> Rig {
        let upstreams = Upstream::variants();
        let ports = upstream::ports(&upstreams);
        let envoy = Envoy::start(ports, &routes()).await;
        let service = ControlService::start(&envoy, &routes()).await;
        Rig {
            service,
            envoy,
            _upstreams: upstreams,
        }
    }
}

/// A server that accepts connections and reads them, but never answers: a hung gate.
async fn hung_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/gate", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (url, task)
}

/// How long `write` takes, and its answer.
async fn timed<T>(write: impl std::future::Future<Output = T>) -> (Duration, T) {
    let started = Instant::now();
    let out = write.await;
    (started.elapsed(), out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_that_never_answers_holds_only_its_own_rollout() {
    let rig = Rig::start().await;
    let api = rig.service.api();
    let (gate, _hung) = hung_server().await;

    // A timeout past the maximum is refused, naming the field.
    let too_long = json!({"name": "r0", "route": "reviews", "stable": "v1", "canary": "v2",
        "steps": [{"setWeight": {"percent": 10}}],
        "webhooks": [{"name": "gate", "type": "preRollout", "url": gate, "timeout": "99999h"}]});
    let reply = api
        .send("POST", "/v1/rollouts", Some(&too_long), None)
        .await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert!(
        reply.body.contains("webhooks[0].timeout") && reply.body.contains("between 100ms and 1m"),
        "{}",
        reply.body
    );

    // The gated rollout: its pre-rollout hook hangs for its whole timeout, every attempt.
    let gated = json!({"name": "gated", "route": "reviews", "stable": "v1", "canary": "v2",
        "steps": [{"setWeight": {"percent": 10}}],
        "webhooks": [{"name": "change-board", "type": "preRollout", "url": gate, "timeout": "1m", "retries": 1}]});
    let (took, created) = timed(api.create_rollout(&gated)).await;
    assert!(
        took < Duration::from_secs(2),
        "creating it waited for the hook: {took:?}"
    );
    assert_eq!(created.rollout.status.phase.as_str(), "initialized");
    assert!(
        created
            .rollout
            .status
            .message
            .contains("waiting for the preRollout hooks (change-board), at most 2m 5s 500ms"),
        "{}",
        created.rollout.status.message
    );

    // Everything else goes on at once: another rollout runs to its pause, writes answer.
    let other = json!({"name": "other", "route": "ratings", "stable": "v1", "canary": "v2",
        "steps": [{"setWeight": {"percent": 20}}, {"pause": {}}, {"setWeight": {"percent": 40}}]});
    let (took, created) = timed(api.create_rollout(&other)).await;
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(
        created.rollout.status.canary_weight, 2000,
        "it ran on while the gate hangs"
    );
    api.wait_for_rollout("other", "paused at its pause step", |view| {
        view.rollout.status.phase.as_str() == "paused" && view.rollout.status.step == 1
    })
    .await;
    let mut slowest = Duration::ZERO;
    for percent in [25, 30, 35] {
        let (took, view) = timed(api.set_weight("other", percent * 100)).await;
        assert_eq!(view.rollout.status.canary_weight, percent * 100);
        slowest = slowest.max(took);
    }
    let (took, _) = timed(api.add_rule(
        "ratings",
        &json!({"header": "x-qa", "exact": "yes", "variant": "v2"}),
    ))
    .await;
    slowest = slowest.max(took);
    assert!(
        slowest < Duration::from_secs(1),
        "a write took {slowest:?} while a hook hangs"
    );
    let (took, _) = timed(api.action("other", "resume")).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    api.wait_for_rollout("other", "at its last step's 40 %", |view| {
        view.rollout.status.canary_weight == 4000
    })
    .await;

    // The gated rollout still waits, and says so.
    let gated = api.rollout("gated").await;
    assert_eq!(gated.rollout.status.phase.as_str(), "initialized");
    assert!(
        gated
            .rollout
            .status
            .message
            .contains("waiting for the preRollout hooks"),
        "{}",
        gated.rollout.status.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_answers_with_its_own_result() {
    let rig = Rig::start().await;
    let api = rig.service.api();
    let spec = json!({"name": "r", "route": "reviews", "stable": "v1", "canary": "v2",
        "steps": [{"setWeight": {"percent": 10}}, {"pause": {}}]});
    api.create_rollout(&spec).await;
    let mut writes = tokio::task::JoinSet::new();
    for weight in 1..=50u32 {
        let api = api.clone();
        writes.spawn(async move {
            let reply = api.put_weight("r", weight * 100, None).await;
            (weight, reply)
        });
    }
    let mut versions = std::collections::BTreeSet::new();
    while let Some(done) = writes.join_next().await {
        let (weight, reply) = done.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        let body: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(
            body["status"]["canaryWeight"],
            weight * 100,
            "the answer is this write's own"
        );
        let version = body["version"].as_u64().unwrap();
        assert_eq!(
            reply.etag.as_deref(),
            Some(format!("\"{version}\"").as_str())
        );
        assert!(versions.insert(version), "version {version} answered twice");
    }
    let last = api.rollout("r").await;
    assert_eq!(Some(&last.rollout.version), versions.last());
}

/// `meshcanary serve` on a state directory holding `state`, given nothing but its token; its exit
/// status and output once it exits (it must: the test fails if it still runs after 20 s).
fn serve_on_state(ecds: &std::path::Path, state: &Value) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    std::fs::write(state_dir.join("state.json"), state.to_string()).unwrap();
    let path = |path: &std::path::Path| path.display().to_string();
    let command = ServeCommand {
        binary: paths::control_bin(),
        args: vec![
            "serve".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--state-dir".into(),
            path(&state_dir),
            "--ecds-file".into(),
            path(ecds),
            "--wasm".into(),
            path(&paths::filter_wasm()),
        ],
        env: BTreeMap::from([("MESHCANARY_TOKEN".to_string(), TOKEN.to_string())]),
        dir: dir.path().to_path_buf(),
        log: dir.path().join("service.log"),
        name: "meshcanary serve".into(),
        ready_path: READYZ,
    };
    let service = ServiceProcess::spawn(command).unwrap();
    let status = service.wait_exit(Duration::from_secs(20)).unwrap();
    (status, service.log())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_that_parses_but_is_wrong_is_refused_at_start() {
    let rig = Rig::start().await;
    let api = rig.service.api();
    let spec = json!({"name": "r", "route": "reviews", "stable": "v1", "canary": "v2",
        "steps": [{"setWeight": {"percent": 10}}, {"pause": {}}, {"setWeight": {"percent": 50}}]});
    api.create_rollout(&spec).await;
    let saved: Value = serde_json::from_str(
        &std::fs::read_to_string(rig.service.state_dir().join("state.json")).unwrap(),
    )
    .unwrap();
    let before = std::fs::read_to_string(rig.envoy.ecds_path()).unwrap();
    let cases = [
        (
            "/filter/routes/0/variants/0/weight",
            json!(99999),
            "filter.routes[0].variants[0].weight: 99999 exceeds 10000",
        ),
        (
            "/rollouts/r/status/step",
            json!(999),
            "rollouts.r.status.step: 999 is past the plan's last step (index 2)",
        ),
    ];
    for (pointer, value, error) in cases {
        let mut state = saved.clone();
        *state.pointer_mut(pointer).unwrap() = value;
        let (status, output) = serve_on_state(rig.envoy.ecds_path(), &state);
        assert!(!status.success(), "started on it:\n{output}");
        assert!(output.contains(error), "{output}");
        assert_eq!(
            std::fs::read_to_string(rig.envoy.ecds_path()).unwrap(),
            before,
            "nothing pushed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_says_when_the_proxies_do_not_run_the_pushed_config() {
    let rig = Rig::start().await;
    let api = rig.service.api();
    let ready = |path: &'static str| async move {
        let reply = api.request("GET", path, None, &[], None).await.unwrap();
        (reply.status, reply.body)
    };
    assert_eq!(ready("/readyz").await.0, 200);
    // The ECDS file's directory is removed and made again: Envoy's watch of it is gone, so the
    // next configs never reach it.
    let dir = rig.envoy.ecds_path().parent().unwrap().to_path_buf();
    let keep = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), keep.path().join(entry.file_name())).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(keep.path()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let spec = json!({"name": "r", "route": "reviews", "stable": "v1", "canary": "v2",
        "steps": [{"setWeight": {"percent": 10}}, {"pause": {}}]});
    let created = api.create_rollout(&spec).await;
    let pushed = created.propagation.generation;
    // Within the grace period nothing is said; after it, /readyz names the proxy and what it runs.
    let started = Instant::now();
    let (status, text) = loop {
        let (status, text) = ready("/readyz").await;
        if status == 503 || started.elapsed() > Duration::from_secs(20) {
            break (status, text);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, 503, "{text}");
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "before the grace period: {:?}",
        started.elapsed()
    );
    assert!(
        text.contains(&format!(
            "proxies: 1 of 1 proxies do not run generation {pushed}"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("{} runs 1", rig.envoy.admin_url)),
        "{text}"
    );
    // What the Deployment's probe asks leaves the proxies out.
    assert_eq!(ready("/readyz?exclude=proxies").await.0, 200);
}
