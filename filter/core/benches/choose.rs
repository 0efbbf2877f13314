//! Micro-benchmark of the variant decision, [`meshcanary_core::choose`], on the host.
//!
//! `make bench` runs it (`cargo bench -p meshcanary-core --bench choose`) and reports the ns per
//! decision from criterion's `target/criterion/choose/<case>/new/estimates.json`. The cases follow
//! the Envoy configurations of the benchmark: a plain weighted decision (what every request without a
//! sticky key costs), a sticky header, the realistic worst case of 10 QA rules that do not match
//! before the sticky key, a cookie rule scanning a 4 KB `cookie` header, and a config of 1, 100
//! or 1 000 routes (one per service) with the request for the last one.
//!
//! The request is the header map serialized as Envoy hands it to the filter (one buffer per
//! request), and every iteration reads it as the filter does, so finding the headers in it is part
//! of what is measured.

// A benchmark is not the filter: a broken fixture should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{criterion_group, criterion_main, Criterion};
use meshcanary_core::choose::Inputs;
use meshcanary_core::config::CheckedConfig;
use meshcanary_core::header_map::{encode, HeaderPairs};
use meshcanary_core::{choose, Reason};
use std::hint::black_box;

/// A request's headers in the proxy-wasm wire format, as the filter receives them from Envoy.
struct Headers(Vec<u8>);

impl Headers {
    fn new(pairs: Vec<(&'static str, Vec<u8>)>) -> Headers {
        Headers(encode(&pairs))
    }
}

/// The headers every benchmark request carries, as wrk sends them in `make bench` (plus what Envoy
/// adds: `x-request-id`, `x-forwarded-proto`).
fn base_headers() -> Vec<(&'static str, Vec<u8>)> {
    [
        (":authority", "reviews"),
        (":path", "/reviews/1"),
        (":method", "GET"),
        (":scheme", "http"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "7c1f0e6a-3b52-4c1e-9a0d-5f2e8b9d4a61"),
        ("x-user-id", "user-0042"),
        ("cookie", "session=3f2a9c; theme=dark"),
    ]
    .into_iter()
    .map(|(name, value)| (name, value.as_bytes().to_vec()))
    .collect()
}

fn config(route: serde_json::Value) -> CheckedConfig {
    let document = serde_json::json!({ "generation": 1, "routes": [route] });
    CheckedConfig::from_json(document.to_string().as_bytes()).expect("a valid config")
}

fn route(extra: serde_json::Value) -> serde_json::Value {
    let mut route = serde_json::json!({
        "name": "reviews",
        "hosts": ["reviews", "reviews.default.svc.cluster.local"],
        "variants": [{"name": "v1", "weight": 9000}, {"name": "v2", "weight": 1000}],
    });
    let fields = route.as_object_mut().expect("an object");
    fields.extend(extra.as_object().expect("an object").clone());
    route
}

/// The 10 QA rules of configuration (d) in `bench/src/scenario.rs`: none matches the benchmark's
/// requests, so every one is evaluated (6 header reads, the cookie header and `:path` once each).
/// The test kit owns the file; it is read here directly so that this crate's benchmark does not
/// build the kit.
fn ten_rules() -> serde_json::Value {
    serde_json::from_str(include_str!("../../../testkit/fixtures/ten-rules.json")).expect("JSON")
}

/// A `cookie` header of about 4 KB whose rule cookie comes last, so the whole header is scanned.
fn big_cookie() -> Vec<u8> {
    let mut cookie = String::new();
    let mut index = 0;
    while cookie.len() < 4096 - 16 {
        cookie.push_str(&format!("c{index:03}=0123456789abcdef0123456789abcdef; "));
        index += 1;
    }
    cookie.push_str("canary=v2-beta");
    cookie.into_bytes()
}

/// The host of the `index`-th service of [`many_routes`].
fn service_host(index: usize) -> String {
    format!("svc-{index}.mesh.svc.cluster.local")
}

/// `count` routes, one per service, each with its short and its full name and a suffix pattern.
fn many_routes(count: usize) -> CheckedConfig {
    let routes: Vec<serde_json::Value> = (0..count)
        .map(|index| {
            serde_json::json!({
                "name": format!("svc-{index}"),
                "hosts": [format!("svc-{index}"), service_host(index), format!("*.svc-{index}.example.com")],
                "variants": [{"name": "v1", "weight": 9000}, {"name": "v2", "weight": 1000}],
            })
        })
        .collect();
    let document = serde_json::json!({ "generation": 1, "routes": routes });
    CheckedConfig::from_json(document.to_string().as_bytes()).expect("a valid config")
}

/// A signed rule's key (id `qa`, 32 bytes of secret).
const QA_KEY: &str = "qa:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA";
/// The time the benchmark's decisions are made at (tokens expire).
const NOW: u64 = 1_800_000_000;

/// The decision's inputs in the benchmark: a fixed random bucket and a fixed clock.
struct Clock;

impl Inputs for Clock {
    fn random_bucket(&mut self) -> Option<u32> {
        Some(4242)
    }
    fn now_unix(&self) -> Option<u64> {
        Some(NOW)
    }
}

fn bench_choose(c: &mut Criterion) {
    let sticky = serde_json::json!({"header": "x-user-id", "salt": "release-42"});
    let mut cases: Vec<(&str, CheckedConfig, Headers, Reason)> = vec![
        (
            "weighted",
            config(route(serde_json::json!({}))),
            Headers::new(base_headers()),
            Reason::RequestId,
        ),
        (
            "sticky_header",
            config(route(serde_json::json!({ "sticky": sticky }))),
            Headers::new(base_headers()),
            Reason::Sticky,
        ),
        (
            "ten_rules_miss_then_sticky",
            config(route(
                serde_json::json!({ "rules": ten_rules(), "sticky": sticky }),
            )),
            Headers::new(base_headers()),
            Reason::Sticky,
        ),
        (
            "cookie_rule_4kb_cookie",
            config(route(serde_json::json!({
                "rules": [{"cookie": "canary", "prefix": "v2", "variant": "v2"}]
            }))),
            Headers::new(
                base_headers()
                    .into_iter()
                    .map(|(name, value)| match name {
                        "cookie" => (name, big_cookie()),
                        _ => (name, value),
                    })
                    .collect(),
            ),
            Reason::Rule,
        ),
    ];

    // A mesh-wide config: one route per service, the request for the last one (every route
    // before it is looked at when routes are tried in order).
    for routes in [1, 100, 1000] {
        cases.push((
            match routes {
                1 => "routes_1",
                100 => "routes_100",
                _ => "routes_1000",
            },
            many_routes(routes),
            Headers::new(
                base_headers()
                    .into_iter()
                    .map(|(name, value)| match name {
                        ":authority" => (name, service_host(routes - 1).into_bytes()),
                        _ => (name, value),
                    })
                    .collect(),
            ),
            Reason::RequestId,
        ));
    }

    // A signed QA rule: without its header it costs a header lookup like any rule; with a valid
    // token, the token is parsed and its HMAC-SHA256 checked.
    let signed = route(serde_json::json!({
        "rules": [{"header": "x-meshcanary-qa", "tokenKeys": [QA_KEY]}],
        "sticky": sticky,
    }));
    cases.push((
        "signed_rule_no_token",
        config(signed.clone()),
        Headers::new(base_headers()),
        Reason::Sticky,
    ));
    let key = meshcanary_core::token::TokenKey::parse(QA_KEY).expect("a valid key");
    let token = meshcanary_core::token::mint(&key, "v2", NOW + 7200);
    let mut with_token = base_headers();
    with_token.push(("x-meshcanary-qa", token.into_bytes()));
    cases.push((
        "signed_rule_valid_token",
        config(signed),
        Headers::new(with_token),
        Reason::Rule,
    ));

    let mut group = c.benchmark_group("choose");
    for (name, config, request, reason) in &cases {
        // A fixture that decides differently from what the case claims would measure the wrong path.
        let decision =
            choose(config, &HeaderPairs::new(&request.0), &mut Clock).expect("the route matches");
        assert_eq!(decision.reason, *reason, "case {name}");
        group.bench_function(*name, |b| {
            b.iter(|| {
                let headers = HeaderPairs::new(black_box(&request.0));
                choose(black_box(config), &headers, &mut Clock)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_choose);
criterion_main!(benches);
