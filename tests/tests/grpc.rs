//! gRPC through the filter in a real Envoy: calls are classed by their `grpc-status` (a gRPC call
//! answers HTTP 200 and fails in its trailers), streams are counted once at their end, and the
//! analysis of the control service rolls back a gRPC canary that fails some of its calls — which
//! it promoted while every gRPC call counted as `2xx`.
//!
//! The upstreams are tonic servers over h2c (`meshcanary_e2e::grpc`); Envoy speaks to each the
//! protocol the client speaks (`use_downstream_protocol_config` in the standalone bootstrap).

use meshcanary_control::analysis::Verdict;
use meshcanary_control::rollout::Phase;
use meshcanary_core::config::FilterConfig;
use meshcanary_e2e::control::{ControlService, StatsSource};
use meshcanary_e2e::grpc::{GrpcClient, GrpcUpstream};
use meshcanary_testkit::envoy::Envoy;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;

/// gRPC upstreams v1 and v2 and an Envoy in front of them; v3's cluster points at a closed port.
struct Rig {
    upstreams: Vec<GrpcUpstream>,
    envoy: Envoy,
    client: GrpcClient,
}

impl Rig {
    async fn start(config: serde_json::Value) -> Rig {
        let mut upstreams = Vec::new();
        for name in ["v1", "v2"] {
            upstreams.push(GrpcUpstream::start(name).await);
        }
        let closed = meshcanary_testkit::free_port();
        let ports = [upstreams[0].port, upstreams[1].port, closed];
        let envoy = Envoy::start(ports, &filter_config(config)).await;
        let client = GrpcClient::connect(&envoy.base_url).await;
        Rig {
            upstreams,
            envoy,
            client,
        }
    }

    fn upstream(&self, name: &str) -> &GrpcUpstream {
        self.upstreams.iter().find(|u| u.name == name).unwrap()
    }

    /// `meshcanary_responses_total` of `variant` by class (classes at 0 left out).
    async fn classes(&self, variant: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for class in meshcanary_core::stats::ResponseClass::ALL {
            let value = self
                .envoy
                .metric(
                    "meshcanary_responses_total",
                    &[("variant", variant), ("class", class.as_str())],
                )
                .await;
            if value > 0.0 {
                out.insert(class.as_str().to_string(), value);
            }
        }
        out
    }
}

fn filter_config(value: serde_json::Value) -> FilterConfig {
    FilterConfig::from_json(value.to_string().as_bytes()).unwrap()
}

fn classes(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_are_classed_by_their_grpc_status() {
    let rig = Rig::start(json!({"generation": 1, "routes": [{
        "name": "echo", "hosts": ["*"],
        "variants": [{"name": "v1", "weight": 10000}, {"name": "v2", "weight": 0}, {"name": "v3", "weight": 0}],
        "rules": [{"header": "x-to", "exact": "v2", "variant": "v2"},
                  {"header": "x-to", "exact": "v3", "variant": "v3"}]
    }]}))
    .await;
    let c = &rig.client;
    // v2 fails every call the way a broken server does, then with NOT_FOUND, the caller's problem.
    rig.upstream("v2").fail_every(1, Code::Internal);
    for _ in 0..10 {
        assert_eq!(c.say(&[]).await.unwrap(), ("v1".into(), 1));
        let failed = c.say(&[("x-to", "v2")]).await.unwrap_err();
        assert_eq!(failed.code(), Code::Internal, "{failed:?}");
        assert_eq!(failed.message(), "failed by v2");
    }
    rig.upstream("v2").fail_every(1, Code::NotFound);
    for _ in 0..10 {
        let missing = c.say(&[("x-to", "v2")]).await.unwrap_err();
        assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    }
    // Each unary failure was a trailers-only response: HTTP 200, grpc-status in the headers.
    assert_eq!(rig.classes("v1").await, classes(&[("grpc_ok", 10.0)]));
    assert_eq!(
        rig.classes("v2").await,
        classes(&[("grpc_client_error", 10.0), ("grpc_server_error", 10.0)])
    );

    // Streams: counted once, at their end, by the status in the trailers after the messages.
    rig.upstream("v2").fail_every(0, Code::Ok);
    for _ in 0..5 {
        assert_eq!(c.stream(&[], 50).await.unwrap(), ("v1".into(), 50));
        assert_eq!(
            c.stream(&[("x-to", "v2")], 50).await.unwrap(),
            ("v2".into(), 50)
        );
    }
    rig.upstream("v2").fail_every(1, Code::Unavailable);
    for _ in 0..3 {
        let failed = c.stream(&[("x-to", "v2")], 20).await.unwrap_err();
        assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    }
    assert_eq!(rig.classes("v1").await, classes(&[("grpc_ok", 15.0)]));
    assert_eq!(
        rig.classes("v2").await,
        classes(&[
            ("grpc_client_error", 10.0),
            ("grpc_ok", 5.0),
            ("grpc_server_error", 13.0)
        ])
    );
    let requests = rig
        .envoy
        .metric("meshcanary_requests_total", &[("variant", "v2")])
        .await;
    assert_eq!(
        requests, 28.0,
        "one request per call, however many messages"
    );

    // Envoy's own reply to a gRPC call whose upstream cannot be reached is a gRPC UNAVAILABLE
    // (HTTP 200, trailers-only).
    for _ in 0..3 {
        let failed = c.say(&[("x-to", "v3")]).await.unwrap_err();
        assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    }
    assert_eq!(
        rig.classes("v3").await,
        classes(&[("grpc_server_error", 3.0)])
    );
}

/// Open-loop gRPC traffic: `per_second` unary calls, each from one of `users` sticky users
/// (`x-user-id` metadata), until stopped; counts the answers by variant or error code.
struct GrpcLoad {
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcLoad {
    fn start(client: GrpcClient, per_second: u64, users: u64) -> GrpcLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let task = {
            let (stop, counts) = (stop.clone(), counts.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let mut sent = 0u64;
                let mut next_user = 0x9e37_79b9_7f4a_7c15u64;
                let mut calls = tokio::task::JoinSet::new();
                while !stop.load(Ordering::SeqCst) {
                    let due = (started.elapsed().as_secs_f64() * per_second as f64) as u64;
                    while sent < due && calls.len() < 256 {
                        sent += 1;
                        next_user = next_user
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1);
                        let user = format!("user-{}", (next_user >> 33) % users);
                        let (client, counts) = (client.clone(), counts.clone());
                        calls.spawn(async move {
                            let key = match client.say(&[("x-user-id", &user)]).await {
                                Ok((upstream, _)) => upstream,
                                Err(status) => format!("{:?}", status.code()),
                            };
                            *counts.lock().unwrap().entry(key).or_insert(0) += 1;
                        });
                    }
                    while calls.try_join_next().is_some() {}
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                calls.shutdown().await;
            })
        };
        GrpcLoad { stop, counts, task }
    }

    fn counts(&self) -> BTreeMap<String, u64> {
        self.counts.lock().unwrap().clone()
    }

    async fn stop(self) -> BTreeMap<String, u64> {
        self.stop.store(true, Ordering::SeqCst);
        let counts = self.counts.clone();
        let _ = self.task.await;
        let counts = counts.lock().unwrap().clone();
        counts
    }
}

/// A gRPC canary whose server fails one call in ten with UNAVAILABLE answers HTTP 200 to every
/// call. The analysis judges the `grpc_server_error` class as failures and rolls it back; when
/// every gRPC call counted as `2xx` (before the filter read `grpc-status`) it was promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_canary_that_fails_some_calls_is_rolled_back_by_the_analysis() {
    let started = Instant::now();
    let mut upstreams = Vec::new();
    for name in ["v1", "v2", "v3"] {
        upstreams.push(GrpcUpstream::start(name).await);
    }
    upstreams[1].fail_every(10, Code::Unavailable);
    let routes = filter_config(json!({"generation": 1, "routes": [{
        "name": "reviews", "hosts": ["*"],
        "variants": [{"name": "v1", "weight": 10000}, {"name": "v2", "weight": 0}],
        "sticky": {"header": "x-user-id", "salt": "grpc-e2e"}
    }]}));
    let envoy = Envoy::start(
        [upstreams[0].port, upstreams[1].port, upstreams[2].port],
        &routes,
    )
    .await;
    let service = ControlService::start_with_stats(
        &envoy,
        &routes,
        StatsSource::EnvoyAdmin(envoy.admin_url.clone()),
    )
    .await;
    let load = GrpcLoad::start(GrpcClient::connect(&envoy.base_url).await, 250, 5000);
    let deadline = Instant::now() + Duration::from_secs(10);
    while load.counts().values().sum::<u64>() < 20 {
        assert!(
            Instant::now() < deadline,
            "no gRPC traffic: {:?}",
            load.counts()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let api = service.api();
    let name = "grpc-canary";
    api.create_rollout(&json!({
        "name": name, "route": "reviews", "stable": "v1", "canary": "v2",
        "steps": [{"setWeight": {"percent": 10}}, {"setWeight": {"percent": 30}}, {"setWeight": {"percent": 60}}],
        "analysis": {"interval": "2s", "minSuccessRate": 99, "maxLatencyMs": 500,
                     "latencyPercentile": 99, "minRequests": 20, "failureLimit": 2,
                     "inconclusiveLimit": 3}
    }))
    .await;
    let deadline = Instant::now() + Duration::from_secs(40);
    let end = loop {
        let view = api.rollout(name).await;
        if view.rollout.status.phase.is_terminal() {
            break view;
        }
        assert!(
            Instant::now() < deadline,
            "not finished after 40 s: {:?} {}",
            view.rollout.status.phase,
            view.rollout.status.message
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let counts = load.stop().await;
    let status = &end.rollout.status;
    let checks: Vec<String> = status
        .analysis
        .checks
        .iter()
        .map(|c| {
            format!(
                "weight {} {:?} canary {:?} stable {:?}",
                c.canary_weight, c.check.verdict, c.check.canary, c.check.baseline
            )
        })
        .collect();
    println!(
        "after {:?}: {:?} {}\n{}\ncalls: {counts:?}",
        started.elapsed(),
        status.phase,
        status.message,
        checks.join("\n")
    );
    assert_eq!(status.phase, Phase::RolledBack, "{}", status.message);
    assert_eq!(status.canary_weight, 0);
    assert!(
        status.message.contains("success rate")
            && status.message.contains("below the minimum 99 %"),
        "{}",
        status.message
    );
    let failed: Vec<_> = status
        .analysis
        .checks
        .iter()
        .filter(|c| c.check.verdict == Verdict::Fail)
        .collect();
    assert_eq!(failed.len(), 2, "{checks:#?}");
    for check in failed {
        let rate = check.check.canary.success_rate.unwrap();
        assert!((0.8..0.97).contains(&rate), "about 90 %: {check:?}");
        assert_eq!(check.check.baseline.success_rate, Some(1.0), "{check:?}");
    }
    // The clients saw the same: v2's calls failed with UNAVAILABLE, v1's never.
    assert!(
        counts.get("Unavailable").copied().unwrap_or(0) > 0,
        "{counts:?}"
    );
    assert!(counts.get("v1").copied().unwrap_or(0) > 0, "{counts:?}");
    drop(service);
    drop(envoy);
}
