//! The filter in a real Envoy: routing by QA rules, weights and sticky keys, live config updates,
//! rejected configs, stats, and odd input. Each test starts its own Envoy and upstreams.

use meshcanary_core::config::FilterConfig;
use meshcanary_e2e::load::{raw_request, tally, Client};
use meshcanary_testkit::envoy::Envoy;
use meshcanary_testkit::paths;
use meshcanary_testkit::upstream::{self, Upstream};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Upstreams v1, v2, v3 and an Envoy in front of them running `config`.
struct Rig {
    /// A `Vec`: a test stops one of them.
    upstreams: Vec<Upstream>,
    envoy: Envoy,
    client: Client,
}

impl Rig {
    async fn start(config: serde_json::Value) -> Rig {
        let upstreams = Upstream::variants();
        let ports = upstream::ports(&upstreams);
        let envoy = Envoy::start(ports, &filter_config(config)).await;
        let client = Client::new(&envoy.base_url);
        Rig {
            upstreams: upstreams.into(),
            envoy,
            client,
        }
    }

    fn upstream(&self, name: &str) -> &Upstream {
        self.upstreams.iter().find(|u| u.name == name).unwrap()
    }
}

fn filter_config(value: serde_json::Value) -> FilterConfig {
    FilterConfig::from_json(value.to_string().as_bytes()).unwrap()
}

/// One route `reviews` for any host, with the given weights for v1, v2 (and v3 if three are given).
fn reviews(generation: u64, weights: &[u32], extra: serde_json::Value) -> serde_json::Value {
    let names = ["v1", "v2", "v3"];
    let variants: Vec<_> = weights
        .iter()
        .zip(names)
        .map(|(w, n)| json!({"name": n, "weight": w}))
        .collect();
    let mut route = json!({"name": "reviews", "hosts": ["*"], "variants": variants});
    if let serde_json::Value::Object(fields) = extra {
        for (k, v) in fields {
            route[k] = v;
        }
    }
    json!({"generation": generation, "responseHeader": "x-meshcanary", "routes": [route]})
}

fn qa_rules() -> serde_json::Value {
    json!({"rules": [
        {"header": "x-canary", "exact": "always", "variant": "v2"},
        {"cookie": "meshcanary", "exact": "v3", "variant": "v3"},
        {"query": "variant", "exact": "v3", "variant": "v3"}
    ]})
}

fn share(counts: &HashMap<String, usize>, name: &str, total: usize) -> f64 {
    100.0 * *counts.get(name).unwrap_or(&0) as f64 / total as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qa_rules_force_their_variant_whatever_the_weight() {
    let rig = Rig::start(reviews(1, &[10000, 0, 0], qa_rules())).await;
    let c = &rig.client;
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        ("no rule", "/", vec![], "v1"),
        ("header rule", "/", vec![("x-canary", "always")], "v2"),
        (
            "header rule, other value",
            "/",
            vec![("x-canary", "never")],
            "v1",
        ),
        (
            "cookie rule",
            "/",
            vec![("cookie", "a=1; meshcanary=v3")],
            "v3",
        ),
        ("query rule", "/p?x=1&variant=v3", vec![], "v3"),
        (
            "first rule wins",
            "/?variant=v3",
            vec![("x-canary", "always")],
            "v2",
        ),
        (
            "spoofed header is overwritten",
            "/",
            vec![("x-meshcanary-variant", "v3")],
            "v1",
        ),
        (
            "spoofed header cannot beat a rule",
            "/",
            vec![("x-meshcanary-variant", "v3"), ("x-canary", "always")],
            "v2",
        ),
    ];
    for (name, path, headers, expected) in cases {
        for _ in 0..5 {
            let reply = c.get(path, &headers).await.unwrap();
            assert_eq!(reply.status, 200, "{name}");
            assert_eq!(reply.upstream.as_deref(), Some(expected), "{name}");
            assert_eq!(
                reply.seen_variant.as_deref(),
                Some(expected),
                "{name}: header the upstream saw"
            );
        }
    }
    let reply = c.get("/", &[("x-canary", "always")]).await.unwrap();
    assert_eq!(reply.decision.as_deref(), Some("v2; reason=rule"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_is_within_one_point_over_20000_users() {
    let weights = [6000, 3000, 1000];
    let rig = Rig::start(reviews(
        1,
        &weights,
        json!({"sticky": {"header": "x-user-id", "salt": "s"}}),
    ))
    .await;
    let total = 20_000;
    let replies = rig
        .client
        .many(total, 16, |i| {
            vec![("x-user-id".into(), format!("user-{i}-{}", i * 7919))]
        })
        .await;
    let counts = tally(&replies);
    assert_eq!(counts.get("error"), None, "{counts:?}");
    let mut report = Vec::new();
    for (name, weight) in ["v1", "v2", "v3"].iter().zip(weights) {
        let observed = share(&counts, name, total);
        let expected = weight as f64 / 100.0;
        report.push(format!("{name}: {observed:.2} % (weight {expected} %)"));
        assert!(
            (observed - expected).abs() <= 1.0,
            "{name}: {observed} % vs {expected} %"
        );
    }
    println!("split over {total} requests: {}", report.join(", "));
    // The filter's own counters agree with what the upstreams saw.
    for name in ["v1", "v2", "v3"] {
        let counted = rig
            .envoy
            .wait_for_metric(
                "meshcanary_requests_total",
                &[("variant", name)],
                Duration::from_secs(5),
                |v| v as usize == counts[name],
            )
            .await;
        assert_eq!(counted as u64, rig.upstream(name).served());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_split_without_any_key_follows_the_weights() {
    // No sticky key: Envoy's generated x-request-id is hashed.
    let rig = Rig::start(reviews(1, &[8000, 2000], json!({}))).await;
    let total = 20_000;
    let replies = rig.client.many(total, 16, |_| vec![]).await;
    let counts = tally(&replies);
    let v2 = share(&counts, "v2", total);
    assert!((v2 - 20.0).abs() <= 1.0, "{counts:?}");
    let by_request_id = rig
        .envoy
        .metric("meshcanary_decisions_total", &[("reason", "request_id")])
        .await;
    assert_eq!(by_request_id as usize, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_users_keep_their_variant_and_only_move_towards_the_canary() {
    let sticky = |salt: &str| json!({"sticky": {"header": "x-user-id", "salt": salt}});
    let rig = Rig::start(reviews(1, &[9000, 1000], sticky("r1"))).await;
    let users: Vec<String> = (0..400).map(|i| format!("user-{i}")).collect();
    let assign = |rig: &Rig| {
        let client = rig.client.clone();
        let users = users.clone();
        async move {
            let mut out = HashMap::new();
            for user in &users {
                let reply = client.get("/", &[("x-user-id", user)]).await.unwrap();
                out.insert(user.clone(), reply.upstream.unwrap());
            }
            out
        }
    };
    let at_10 = assign(&rig).await;
    // Same user, same variant, on every request (across both Envoy workers).
    assert_eq!(assign(&rig).await, at_10);
    // A repeated key header: the first value decides, as with Envoy's own single-header read (the
    // filter reads all headers at once and must not pick a later one).
    let on = |variant: &str| users.iter().find(|u| at_10[*u] == variant).unwrap();
    for (first, second) in [(on("v1"), on("v2")), (on("v2"), on("v1"))] {
        let reply = rig
            .client
            .get("/", &[("x-user-id", first), ("x-user-id", second)])
            .await
            .unwrap();
        assert_eq!(
            reply.upstream.unwrap(),
            at_10[first],
            "{first} then {second}"
        );
    }

    rig.envoy
        .push(&filter_config(reviews(2, &[5000, 5000], sticky("r1"))));
    rig.envoy.wait_for_generation(2).await;
    let at_50 = assign(&rig).await;
    let moved_back = users
        .iter()
        .filter(|u| at_10[*u] == "v2" && at_50[*u] == "v1")
        .count();
    let moved_forward = users
        .iter()
        .filter(|u| at_10[*u] == "v1" && at_50[*u] == "v2")
        .count();
    assert_eq!(moved_back, 0);
    assert!(
        moved_forward > 100,
        "{moved_forward} users moved to the canary"
    );

    rig.envoy
        .push(&filter_config(reviews(3, &[5000, 5000], sticky("r2"))));
    rig.envoy.wait_for_generation(3).await;
    let new_salt = assign(&rig).await;
    let changed = users.iter().filter(|u| at_50[*u] != new_salt[*u]).count();
    // Independent cohorts at 50/50 disagree for about half the users.
    assert!(
        (120..=280).contains(&changed),
        "{changed} of 400 changed variant"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_config_applies_live_without_failing_a_request() {
    let rig = Rig::start(reviews(1, &[10000, 0], json!({}))).await;
    let client = rig.client.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let batches = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, batches) = (stop.clone(), batches.clone());
        tokio::spawn(async move {
            let mut replies = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                replies.extend(client.many(200, 8, |_| vec![]).await);
                batches.fetch_add(1, Ordering::SeqCst);
            }
            replies
        })
    };
    // The load is measured in batches, not seconds, so a busy machine cannot starve the check:
    // at least one whole batch before the push, and two after traffic moved.
    let batches_done = |at_least: usize| {
        let batches = batches.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while batches.load(Ordering::SeqCst) < at_least {
                assert!(Instant::now() < deadline, "the load stalled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    batches_done(1).await;
    let pushed = Instant::now();
    rig.envoy
        .push(&filter_config(reviews(2, &[0, 10000], json!({}))));
    let applied = rig.envoy.wait_for_generation(2).await;
    // After the gauge moves, new requests follow the new weights.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = rig.client.get("/", &[]).await.unwrap();
        if reply.upstream.as_deref() == Some("v2") {
            break;
        }
        assert!(Instant::now() < deadline, "traffic never moved to v2");
    }
    let moved = pushed.elapsed();
    batches_done(batches.load(Ordering::SeqCst) + 2).await;
    stop.store(true, Ordering::SeqCst);
    let replies = load.await.unwrap();
    let failed: Vec<_> = replies
        .iter()
        .filter(|r| !matches!(r, Ok(reply) if reply.status == 200))
        .collect();
    assert!(replies.len() > 400, "load ran: {}", replies.len());
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        replies.len(),
        failed.first()
    );
    let counts = tally(&replies);
    assert!(
        counts.contains_key("v1") && counts.contains_key("v2"),
        "{counts:?}"
    );
    println!("config update: generation gauge after {applied:?}, traffic moved after {moved:?}, {} requests, none failed", replies.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_is_rejected_and_the_old_one_keeps_routing() {
    let rig = Rig::start(reviews(1, &[0, 10000], json!({}))).await;
    let fails = || {
        rig.envoy.metric(
            "envoy_extension_config_discovery_http_filter_meshcanary_config_fail",
            &[],
        )
    };
    let before = fails().await;
    let bad = [
        r#"{"generation": 2, "routes": [{"name": "reviews", "hosts": ["*"], "variants": [{"name": "v1", "weight": 5000}, {"name": "v2", "weight": 5001}]}]}"#,
        r#"{"generation": 3, "routez": []}"#,
        r#"{"generation": 4, "routes": [ "#,
        // serde reads a struct from a sequence of its fields; only JSON objects are configs.
        "[]",
        "[42]",
        r#"{"generation":45,"routes":[["reviews",["reviews"],null,[["v1",0],["v2",10000]]]]}"#,
    ];
    for (i, config) in bad.iter().enumerate() {
        rig.envoy.push_raw(2 + i as u64, config);
        rig.envoy
            .wait_for_metric(
                "envoy_extension_config_discovery_http_filter_meshcanary_config_fail",
                &[],
                Duration::from_secs(10),
                |v| v >= before + 1.0 + i as f64,
            )
            .await;
    }
    assert_eq!(
        rig.envoy.metric("meshcanary_config_generation", &[]).await,
        1.0
    );
    assert!(
        rig.envoy
            .metric("meshcanary_config_rejected_total", &[])
            .await
            >= 3.0
    );
    for _ in 0..20 {
        assert_eq!(
            rig.client.get("/", &[]).await.unwrap().upstream.as_deref(),
            Some("v2")
        );
    }
    let log = rig.envoy.log();
    assert!(
        log.contains("routes[0].variants: weights sum to 10001"),
        "log names the field"
    );
    assert!(
        log.contains("routez: unknown field `routez`"),
        "log names the field"
    );
    assert!(
        log.contains("rejected config: routes[0]: invalid type: sequence, expected a JSON object"),
        "log names the field"
    );
    // What Envoy itself logs for every rejected config (README, "A rejected config"): an alert
    // keyed on these lines fires on every push the filter refuses, though nothing stopped serving.
    let envoy_lines = |level: &str, text: &str| {
        log.lines()
            .filter(|line| line.contains(&format!("[{level}][wasm]")) && line.contains(text))
            .count()
    };
    assert_eq!(
        envoy_lines(
            "error",
            "Wasm VM failed Failed to configure base Wasm plugin"
        ),
        bad.len(),
        "{log}"
    );
    assert_eq!(
        envoy_lines("critical", "Plugin meshcanary failed to load"),
        bad.len(),
        "{log}"
    );
    assert!(
        envoy_lines(
            "critical",
            "Plugin configured to fail closed failed to load"
        ) >= bad.len(),
        "printed with FAIL_OPEN too: {log}"
    );
    // A valid config after the rejected ones still applies.
    rig.envoy
        .push(&filter_config(reviews(5, &[10000, 0], json!({}))));
    rig.envoy.wait_for_generation(5).await;
    assert_eq!(
        rig.client.get("/", &[]).await.unwrap().upstream.as_deref(),
        Some("v1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_responses_by_class_and_latency_per_variant() {
    let rig = Rig::start(reviews(
        1,
        &[5000, 5000],
        json!({"rules": [
            {"header": "x-to", "exact": "v1", "variant": "v1"},
            {"header": "x-to", "exact": "v2", "variant": "v2"}
        ]}),
    ))
    .await;
    rig.upstream("v2").set_status(500);
    rig.upstream("v1").set_delay(Duration::from_millis(30));
    for _ in 0..30 {
        assert_eq!(
            rig.client.get("/", &[("x-to", "v1")]).await.unwrap().status,
            200
        );
    }
    for _ in 0..20 {
        assert_eq!(
            rig.client.get("/", &[("x-to", "v2")]).await.unwrap().status,
            500
        );
    }
    let stats = |labels: &'static [(&'static str, &'static str)], name: &'static str| {
        let envoy = &rig.envoy;
        async move { envoy.metric(name, labels).await }
    };
    assert_eq!(
        stats(&[("variant", "v1")], "meshcanary_requests_total").await,
        30.0
    );
    assert_eq!(
        stats(&[("variant", "v2")], "meshcanary_requests_total").await,
        20.0
    );
    assert_eq!(
        stats(
            &[("variant", "v1"), ("class", "2xx")],
            "meshcanary_responses_total"
        )
        .await,
        30.0
    );
    assert_eq!(
        stats(
            &[("variant", "v2"), ("class", "5xx")],
            "meshcanary_responses_total"
        )
        .await,
        20.0
    );
    assert_eq!(
        stats(
            &[("variant", "v2"), ("class", "2xx")],
            "meshcanary_responses_total"
        )
        .await,
        0.0
    );
    assert_eq!(
        stats(
            &[("variant", "v2"), ("reason", "rule")],
            "meshcanary_decisions_total"
        )
        .await,
        20.0
    );
    // Histograms are merged at Envoy's stats flush (1 s in the bootstrap).
    rig.envoy
        .wait_for_metric(
            "meshcanary_request_duration_ms_count",
            &[("variant", "v1")],
            Duration::from_secs(10),
            |v| v == 30.0,
        )
        .await;
    rig.envoy
        .wait_for_metric(
            "meshcanary_request_duration_ms_count",
            &[("variant", "v2")],
            Duration::from_secs(10),
            |v| v == 20.0,
        )
        .await;
    let text = rig.envoy.stats().await;
    let fast_v1 = meshcanary_testkit::prometheus::value(
        &text,
        "meshcanary_request_duration_ms_bucket",
        &[("variant", "v1"), ("le", "25")],
    )
    .unwrap();
    let slow_v1 = meshcanary_testkit::prometheus::value(
        &text,
        "meshcanary_request_duration_ms_bucket",
        &[("variant", "v1"), ("le", "50")],
    )
    .unwrap();
    let all_v1 = meshcanary_testkit::prometheus::value(
        &text,
        "meshcanary_request_duration_ms_bucket",
        &[("variant", "v1"), ("le", "+Inf")],
    )
    .unwrap();
    // None can be faster than the upstream's 30 ms delay; on a loaded machine a request may take
    // longer than 50 ms (CI saw 29 of 30), so the 50 ms bucket is asked for most, not all.
    assert_eq!(fast_v1, 0.0, "v1 answers after 30 ms");
    assert_eq!(all_v1, 30.0);
    assert!(slow_v1 >= 20.0, "{slow_v1} of 30 within 50 ms");
    // The exported families carry exactly the documented labels.
    for (family, labels) in [
        (
            "meshcanary_requests_total",
            "route=\"reviews\",variant=\"v1\"}",
        ),
        (
            "meshcanary_responses_total",
            "route=\"reviews\",variant=\"v2\",class=\"5xx\"}",
        ),
        (
            "meshcanary_decisions_total",
            "route=\"reviews\",variant=\"v2\",reason=\"rule\"}",
        ),
    ] {
        assert!(
            text.contains(&format!("{family}{{{labels}")),
            "{family} with {labels} in:\n{text}"
        );
    }
    assert!(text.contains("# TYPE meshcanary_request_duration_ms histogram"));
    assert!(text.contains("meshcanary_config_generation{} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_and_client_resets_are_counted() {
    let mut rig = Rig::start(reviews(
        1,
        &[0, 5000, 5000],
        json!({"rules": [
            {"header": "x-to", "exact": "v3", "variant": "v3"}
        ]}),
    ))
    .await;
    // v2's upstream is gone: Envoy answers 503 itself, and on_log still records it for v2.
    rig.upstreams.retain(|u| u.name != "v2");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut sent_to_v2 = 0;
    for _ in 0..40 {
        let reply = rig.client.get("/", &[]).await.unwrap();
        if reply.upstream.is_none() {
            assert_eq!(reply.status, 503);
            sent_to_v2 += 1;
        }
    }
    assert!(sent_to_v2 > 0);
    assert_eq!(
        rig.envoy
            .metric(
                "meshcanary_responses_total",
                &[("variant", "v2"), ("class", "5xx")]
            )
            .await,
        sent_to_v2 as f64
    );
    // A client that hangs up while v3 is still thinking: no response, counted as a reset.
    rig.upstream("v3").set_delay(Duration::from_secs(3));
    let v3_before = rig
        .envoy
        .metric("meshcanary_requests_total", &[("variant", "v3")])
        .await;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", rig.envoy.listen_port))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut stream,
        b"GET / HTTP/1.1\r\nhost: reviews\r\nx-to: v3\r\n\r\n",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stream);
    rig.envoy
        .wait_for_metric(
            "meshcanary_responses_total",
            &[("variant", "v3"), ("class", "reset")],
            Duration::from_secs(5),
            |v| v == 1.0,
        )
        .await;
    assert_eq!(
        rig.envoy
            .metric("meshcanary_requests_total", &[("variant", "v3")])
            .await,
        v3_before + 1.0
    );
}

/// The status line and the `x-upstream` header of a raw HTTP/1.1 exchange.
async fn raw_upstream(port: u16, request: &str) -> (String, Option<String>) {
    let response = raw_request(port, request.as_bytes()).await;
    let text = String::from_utf8_lossy(&response).to_string();
    let status_line = text.lines().next().unwrap_or("").to_string();
    let upstream = text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("x-upstream")
            .then(|| value.trim().to_string())
    });
    (status_line, upstream)
}

/// HTTP/1.1 clients may send several `Cookie` lines, which Envoy keeps apart (it joins cookie
/// headers only for HTTP/2); RFC 6265 makes them one list, and so does the filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_in_any_cookie_line_count() {
    let rig = Rig::start(reviews(
        1,
        &[5000, 5000],
        json!({
            "rules": [{"cookie": "meshcanary", "exact": "v3", "variant": "v2"}],
            "sticky": {"cookie": "session", "salt": "s"}
        }),
    ))
    .await;
    let port = rig.envoy.listen_port;
    let request = |cookies: &[&str]| {
        let lines: String = cookies.iter().map(|c| format!("cookie: {c}\r\n")).collect();
        format!("GET / HTTP/1.1\r\nhost: reviews\r\n{lines}connection: close\r\n\r\n")
    };
    // The QA cookie in the second line forces its variant.
    for _ in 0..10 {
        let (status, upstream) =
            raw_upstream(port, &request(&["theme=dark", "meshcanary=v3"])).await;
        assert!(status.contains(" 200 "), "{status}");
        assert_eq!(upstream.as_deref(), Some("v2"), "QA cookie in a later line");
    }
    // A session cookie in the second line is sticky: each session gets the variant it gets in a
    // single line, every time, and sessions land on both variants.
    let mut seen = HashMap::new();
    for i in 0..40 {
        let session = format!("session=visitor-{i}");
        let one_line = raw_upstream(port, &request(&[&format!("theme=dark; {session}")]))
            .await
            .1
            .unwrap();
        for _ in 0..3 {
            let two_lines = raw_upstream(port, &request(&["theme=dark", &session]))
                .await
                .1
                .unwrap();
            assert_eq!(two_lines, one_line, "{session}");
        }
        *seen.entry(one_line).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "sessions on both variants: {seen:?}");
    assert_eq!(
        rig.envoy
            .metric("meshcanary_decisions_total", &[("reason", "sticky")])
            .await,
        160.0,
        "every session request was placed by its cookie"
    );
}

/// One request of a visitor that keeps cookies: sends `cookie` (if it has one), returns the
/// upstream that answered and the `Set-Cookie` it got, if any.
async fn visit(
    http: &reqwest::Client,
    url: &str,
    cookie: Option<&str>,
) -> (String, Option<String>) {
    let mut request = http.get(url);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        let mut values = response.headers().get_all(name).iter();
        let value = values.next().map(|v| v.to_str().unwrap().to_string());
        assert!(values.next().is_none(), "one {name} at most");
        value
    };
    let answer = (header("x-upstream").unwrap(), header("set-cookie"));
    response.bytes().await.unwrap();
    answer
}

/// Anonymous visitors stay put: without the sticky cookie the filter draws an id, places the
/// request by it and sets the cookie; a client that keeps cookies then sees one variant only —
/// 0 flips over 1 000 visitors × 20 requests — and as the canary's weight rises visitors move
/// only towards it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_visitors_get_a_cookie_and_stay_on_their_variant() {
    let config = |generation: u64, canary: u32| {
        reviews(
            generation,
            &[10000 - canary, canary],
            json!({"sticky": {"cookie": "mc-visitor", "salt": "s",
                              "assign": {"maxAge": 2592000, "secure": true, "sameSite": "Strict"}}}),
        )
    };
    let rig = Rig::start(config(1, 3000)).await;
    let url = rig.envoy.url("/");
    let http = reqwest::Client::new();
    let visitors = 1000;
    let mut tasks = tokio::task::JoinSet::new();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..16 {
        let (http, url, next) = (http.clone(), url.clone(), next.clone());
        tasks.spawn(async move {
            let mut out = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < visitors {
                let (first, set_cookie) = visit(&http, &url, None).await;
                let set_cookie = set_cookie.expect("a new visitor gets the cookie");
                let (pair, attributes) = set_cookie.split_once(';').unwrap();
                assert_eq!(
                    attributes,
                    " Max-Age=2592000; Path=/; Secure; HttpOnly; SameSite=Strict"
                );
                let mut seen = vec![first];
                for _ in 1..20 {
                    let (upstream, again) = visit(&http, &url, Some(pair)).await;
                    assert_eq!(again, None, "a visitor with the cookie gets no new one");
                    seen.push(upstream);
                }
                out.push((pair.to_string(), seen));
            }
            out
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.unwrap());
    }
    assert_eq!(all.len(), visitors);
    let flips = all
        .iter()
        .filter(|(_, seen)| seen.iter().any(|u| *u != seen[0]))
        .count();
    let ids: std::collections::HashSet<&String> = all.iter().map(|(pair, _)| pair).collect();
    let canary = all.iter().filter(|(_, seen)| seen[0] == "v2").count();
    println!("{visitors} visitors x 20 requests at 30 %: {flips} flips, {canary} on v2");
    assert_eq!(flips, 0);
    assert_eq!(ids.len(), visitors, "every visitor got its own id");
    assert!(
        (240..=360).contains(&canary),
        "{canary} of 1000 on the canary"
    );
    let reasons = |reason: &'static str| {
        let envoy = &rig.envoy;
        async move {
            envoy
                .metric("meshcanary_decisions_total", &[("reason", reason)])
                .await
        }
    };
    assert_eq!(reasons("assigned").await, visitors as f64);
    assert_eq!(reasons("sticky").await, (visitors * 19) as f64);

    // The canary goes to 70 %: visitors keep their cookie, so they move only from v1 to v2.
    rig.envoy.push(&filter_config(config(2, 7000)));
    rig.envoy.wait_for_generation(2).await;
    let mut moved_forward = 0;
    for (pair, seen) in &all {
        let (now, set_cookie) = visit(&http, &url, Some(pair)).await;
        assert_eq!(set_cookie, None);
        assert!(
            !(seen[0] == "v2" && now == "v1"),
            "{pair} moved back from the canary"
        );
        moved_forward += usize::from(seen[0] == "v1" && now == "v2");
    }
    assert!(
        (300..=500).contains(&moved_forward),
        "{moved_forward} visitors moved to the canary"
    );
}

/// Signed QA access: a token minted by `meshcanary qa-token` opens its variant (weight 0 here)
/// through a header or a query parameter; forged, altered, expired, malformed or foreign tokens
/// are ignored — the request goes where it would without them — and counted by reason; keys
/// rotate by listing the new one first and dropping the old one later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_signed_tokens_open_the_canary() {
    use meshcanary_core::token::{mint, TokenKey};
    let k1 = "k1:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA";
    let k2 = "k2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8";
    let config = |generation: u64, keys: &[&str]| {
        reviews(
            generation,
            &[10000, 0, 0],
            json!({"rules": [{"header": "x-meshcanary-qa", "tokenKeys": keys},
                             {"query": "mc-qa", "tokenKeys": keys}]}),
        )
    };
    let rig = Rig::start(config(1, &[k1])).await;
    // The real CLI mints the token, with the key from the environment.
    let minted = std::process::Command::new(paths::control_bin())
        .args(["qa-token", "--variant", "v2", "--ttl", "2h"])
        .env("MESHCANARY_QA_KEY", k1)
        .output()
        .unwrap();
    assert!(minted.status.success(), "{minted:?}");
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("k1.v2."), "{token}");

    let key1 = TokenKey::parse(k1).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = mint(&key1, "v2", now - 1);
    let for_v9 = mint(&key1, "v9", now + 3600);
    let by_k2 = mint(&TokenKey::parse(k2).unwrap(), "v3", now + 3600);
    let altered = token.replacen("k1.v2.", "k1.v3.", 1);
    let forged = format!("k1.v2.{}.{}", now + 3600, "A".repeat(43));
    let query = format!("/?mc-qa={token}");
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        ("no token", "/", vec![], "v1", None),
        (
            "minted token",
            "/",
            vec![("x-meshcanary-qa", &token)],
            "v2",
            None,
        ),
        ("minted token in the query", &query, vec![], "v2", None),
        (
            "plain value",
            "/",
            vec![("x-meshcanary-qa", "always")],
            "v1",
            Some("malformed"),
        ),
        (
            "altered variant",
            "/",
            vec![("x-meshcanary-qa", &altered)],
            "v1",
            Some("bad_signature"),
        ),
        (
            "forged MAC",
            "/",
            vec![("x-meshcanary-qa", &forged)],
            "v1",
            Some("bad_signature"),
        ),
        (
            "expired",
            "/",
            vec![("x-meshcanary-qa", &expired)],
            "v1",
            Some("expired"),
        ),
        (
            "unknown key",
            "/",
            vec![("x-meshcanary-qa", &by_k2)],
            "v1",
            Some("unknown_key"),
        ),
        (
            "unknown variant",
            "/",
            vec![("x-meshcanary-qa", &for_v9)],
            "v1",
            Some("unknown_variant"),
        ),
    ];
    for (name, path, headers, expected, rejected) in cases {
        let before = match rejected {
            Some(reason) => {
                rig.envoy
                    .metric("meshcanary_qa_tokens_rejected_total", &[("reason", reason)])
                    .await
            }
            None => 0.0,
        };
        let total_before = rig
            .envoy
            .metric("meshcanary_qa_tokens_rejected_total", &[])
            .await;
        let reply = rig.client.get(path, &headers).await.unwrap();
        assert_eq!(reply.upstream.as_deref(), Some(expected), "{name}");
        match rejected {
            Some(reason) => {
                let after = rig
                    .envoy
                    .metric("meshcanary_qa_tokens_rejected_total", &[("reason", reason)])
                    .await;
                assert_eq!(after, before + 1.0, "{name}: counted as {reason}");
            }
            None => {
                let total = rig
                    .envoy
                    .metric("meshcanary_qa_tokens_rejected_total", &[])
                    .await;
                assert_eq!(total, total_before, "{name}: nothing refused");
            }
        }
    }
    assert_eq!(
        rig.client
            .get("/", &[("x-meshcanary-qa", &token)])
            .await
            .unwrap()
            .decision
            .as_deref(),
        Some("v2; reason=rule")
    );

    // Rotation: k2 joins (tokens of both keys work), then k1 retires (its tokens stop working).
    rig.envoy.push(&filter_config(config(2, &[k2, k1])));
    rig.envoy.wait_for_generation(2).await;
    for (token, expected) in [(&token, "v2"), (&by_k2, "v3")] {
        let reply = rig
            .client
            .get("/", &[("x-meshcanary-qa", token)])
            .await
            .unwrap();
        assert_eq!(reply.upstream.as_deref(), Some(expected), "{token}");
    }
    rig.envoy.push(&filter_config(config(3, &[k2])));
    rig.envoy.wait_for_generation(3).await;
    let retired = rig
        .client
        .get("/", &[("x-meshcanary-qa", &token)])
        .await
        .unwrap();
    assert_eq!(retired.upstream.as_deref(), Some("v1"));
    let by_new = rig
        .client
        .get("/", &[("x-meshcanary-qa", &by_k2)])
        .await
        .unwrap();
    assert_eq!(by_new.upstream.as_deref(), Some("v3"));
    assert_eq!(
        rig.envoy
            .metric(
                "meshcanary_qa_tokens_rejected_total",
                &[("reason", "unknown_key"), ("route", "reviews")]
            )
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_input_passes_through_untouched() {
    let rig = Rig::start(reviews(1, &[10000, 0], json!({
        "rules": [{"cookie": "meshcanary", "exact": "v2", "variant": "v2"}, {"query": "q", "present": true, "variant": "v2"}],
        "sticky": {"cookie": "uid"}
    })))
    .await;
    let huge_cookie = format!("a={}; uid=user; meshcanary=v2", "x".repeat(50_000));
    let odd_cookie = "=; ;;; =x; uid; meshcanary; meshcanary=\"v2";
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "huge cookie, rule still found",
            vec![("cookie", huge_cookie.as_str())],
            "v2",
        ),
        ("odd cookie", vec![("cookie", odd_cookie)], "v1"),
        ("empty cookie", vec![("cookie", "")], "v1"),
    ];
    for (name, headers, expected) in cases {
        let reply = rig.client.get("/", &headers).await.unwrap();
        assert_eq!(
            (reply.status, reply.upstream.as_deref()),
            (200, Some(expected)),
            "{name}"
        );
    }
    // Raw requests: non-UTF-8 bytes in headers and query, no Host at all.
    let raw: Vec<(&str, Vec<u8>)> = vec![
        ("non-UTF-8 cookie", b"GET / HTTP/1.1\r\nhost: reviews\r\ncookie: uid=\xff\xfe; meshcanary=\xc3\x28\r\nconnection: close\r\n\r\n".to_vec()),
        ("non-UTF-8 host", b"GET / HTTP/1.1\r\nhost: rev\xffiews\r\nconnection: close\r\n\r\n".to_vec()),
        ("non-UTF-8 query", b"GET /?q=\xff&\xfe HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n".to_vec()),
        ("spoofed variant header with odd bytes", b"GET / HTTP/1.1\r\nhost: reviews\r\nx-meshcanary-variant: \xff\r\nconnection: close\r\n\r\n".to_vec()),
    ];
    for (name, request) in raw {
        let response = raw_request(rig.envoy.listen_port, &request).await;
        let text = String::from_utf8_lossy(&response).to_lowercase();
        let status_line = text.lines().next().unwrap_or("").to_string();
        // Envoy may refuse a malformed request itself (400); the filter never turns one into a 5xx.
        assert!(
            status_line.contains(" 200 ") || status_line.contains(" 400 "),
            "{name}: {status_line}"
        );
        if status_line.contains(" 200 ") {
            assert!(text.contains("x-upstream:"), "{name}: reached an upstream");
        }
    }
    // No Host at all: Envoy answers 400 itself before any HTTP filter runs (HTTP/1.0 with
    // accept_http_10 but no default_host_for_http_10, and HTTP/1.1), so the filter never sees a
    // request without :authority and counts nothing for it.
    let counted = || async {
        rig.envoy.metric("meshcanary_requests_total", &[]).await
            + rig.envoy.metric("meshcanary_unmatched_total", &[]).await
    };
    let before = counted().await;
    for (name, request) in [
        ("HTTP/1.0", "GET / HTTP/1.0\r\n\r\n"),
        ("HTTP/1.1", "GET / HTTP/1.1\r\nconnection: close\r\n\r\n"),
    ] {
        let (status_line, upstream) = raw_upstream(rig.envoy.listen_port, request).await;
        println!("no host, {name}: {status_line}");
        assert!(
            status_line.contains(" 400 "),
            "no host, {name}: {status_line}"
        );
        assert_eq!(upstream, None, "no host, {name}");
    }
    assert_eq!(counted().await, before, "the filter saw no request");
    let log = rig.envoy.log();
    assert!(!log.contains("critical"), "no panic in the filter:\n{log}");
    assert!(!log.contains("wasm log meshcanary: panicked"), "{log}");
    // Still serving normally afterwards.
    assert_eq!(
        rig.client
            .get("/", &[("cookie", "meshcanary=v2")])
            .await
            .unwrap()
            .upstream
            .as_deref(),
        Some("v2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_path_prefixes_and_dry_run() {
    let config = json!({"generation": 1, "responseHeader": "x-meshcanary", "routes": [
        {"name": "api", "hosts": ["reviews", "reviews.default.svc.cluster.local"], "pathPrefix": "/api",
         "variants": [{"name": "v1", "weight": 0}, {"name": "v3", "weight": 10000}]},
        {"name": "reviews", "hosts": ["reviews", "*.example.com"],
         "variants": [{"name": "v1", "weight": 0}, {"name": "v2", "weight": 10000}]},
        {"name": "shadow", "hosts": ["shadow"], "dryRun": true,
         "variants": [{"name": "v1", "weight": 0}, {"name": "v2", "weight": 10000}]}
    ]});
    let rig = Rig::start(config).await;
    let cases: Vec<(&str, &str, &str, &str)> = vec![
        ("exact host", "reviews", "/", "v2"),
        ("host with port", "reviews:9080", "/", "v2"),
        ("host in other case", "REVIEWS", "/", "v2"),
        ("path prefix route first", "reviews", "/api/x", "v3"),
        (
            "fqdn on the prefix route",
            "reviews.default.svc.cluster.local",
            "/api",
            "v3",
        ),
        (
            "fqdn not listed for reviews",
            "reviews.default.svc.cluster.local",
            "/",
            "v1",
        ),
        ("suffix pattern", "eu.example.com", "/", "v2"),
        ("suffix needs a label", "example.com", "/", "v1"),
        ("unmatched host goes to stable", "details", "/", "v1"),
        ("dry run decides v2 but routes stable", "shadow", "/", "v1"),
    ];
    for (name, host, path, expected) in cases {
        let reply = rig
            .client
            .get(path, &[("host", host), ("x-meshcanary-variant", "v3")])
            .await
            .unwrap();
        assert_eq!(reply.upstream.as_deref(), Some(expected), "{name}");
    }
    let reply = rig.client.get("/", &[("host", "shadow")]).await.unwrap();
    assert_eq!(
        reply.decision.as_deref(),
        Some("v2; reason=request_id"),
        "dry run still decides"
    );
    assert_eq!(
        reply.seen_variant.as_deref(),
        Some("-"),
        "dry run writes no header"
    );
    assert_eq!(
        rig.envoy
            .metric(
                "meshcanary_requests_total",
                &[("route", "shadow"), ("variant", "v2")]
            )
            .await,
        2.0
    );
    assert_eq!(
        rig.envoy.metric("meshcanary_unmatched_total", &[]).await,
        3.0
    );
}

/// A mesh-wide config, one route per service: 1 000 routes apply, and a request for any of them —
/// first, middle or last, by exact name or by suffix pattern — lands on its route's variant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_routes_route_like_one() {
    let routes: Vec<serde_json::Value> = (0..1000)
        .map(|i| {
            // Every third service is all on v2, the others all on v1.
            let canary = if i % 3 == 0 { 10000 } else { 0 };
            json!({"name": format!("svc-{i}"),
                   "hosts": [format!("svc-{i}"), format!("svc-{i}.mesh.svc.cluster.local"), format!("*.svc-{i}.example.com")],
                   "variants": [{"name": "v1", "weight": 10000 - canary}, {"name": "v2", "weight": canary}]})
        })
        .collect();
    let started = Instant::now();
    let rig = Rig::start(json!({"generation": 1, "routes": routes})).await;
    println!(
        "1 000 routes applied {:?} after starting Envoy",
        started.elapsed()
    );
    for i in [0usize, 1, 499, 500, 998, 999] {
        let expected = if i % 3 == 0 { "v2" } else { "v1" };
        for host in [
            format!("svc-{i}"),
            format!("SVC-{i}.mesh.svc.cluster.local:8080"),
            format!("api.eu.svc-{i}.example.com"),
        ] {
            let reply = rig.client.get("/", &[("host", &host)]).await.unwrap();
            assert_eq!(reply.upstream.as_deref(), Some(expected), "{host}");
        }
        assert_eq!(
            rig.envoy
                .metric(
                    "meshcanary_requests_total",
                    &[("route", &format!("svc-{i}"))]
                )
                .await,
            3.0,
            "svc-{i}"
        );
    }
    let reply = rig.client.get("/", &[("host", "svc-1000")]).await.unwrap();
    assert_eq!(reply.upstream.as_deref(), Some("v1"));
    assert_eq!(
        rig.envoy.metric("meshcanary_unmatched_total", &[]).await,
        1.0
    );
}

/// The variant in every trace: Envoy traces each request to a Zipkin collector the test runs,
/// and every span carries the variant that served it (`meshcanary.variant`, a custom tag read from
/// the request header the filter writes), whether a rule, a sticky key or the weights chose it;
/// a request the filter placed nowhere has no such tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_span_carries_the_variant_that_served_it() {
    let collector = meshcanary_e2e::zipkin::Collector::start().await;
    let upstreams = Upstream::variants();
    let config = json!({"generation": 1, "routes": [{
        "name": "reviews", "hosts": ["reviews"],
        "variants": [{"name": "v1", "weight": 5000}, {"name": "v2", "weight": 3000}, {"name": "v3", "weight": 2000}],
        "rules": [{"header": "x-canary", "exact": "always", "variant": "v3"}],
        "sticky": {"header": "x-user-id", "salt": "traces"}
    }]});
    let envoy = Envoy::start_traced(
        upstream::ports(&upstreams),
        &filter_config(config),
        collector.port,
    )
    .await;
    let client = Client::new(&envoy.base_url);
    // Each request brings its own x-request-id, which the span carries as `guid:x-request-id`, so
    // each span can be matched with the upstream that answered that request. It must be a UUID
    // (Envoy traces only those, and marks the trace decision in its version digit), so requests
    // are told apart by its last group.
    let uuid = |i: usize| format!("1d7e5a00-0000-4000-8000-{i:012}");
    let last_group = |id: &str| id.rsplit('-').next().unwrap_or_default().to_string();
    let mut served = HashMap::new();
    for i in 0..60 {
        let id = uuid(i);
        let user = format!("user-{i}");
        let mut headers = vec![("x-request-id", id.as_str()), ("host", "reviews")];
        if i % 5 == 0 {
            headers.push(("x-canary", "always"));
        } else if i % 2 == 0 {
            headers.push(("x-user-id", &user));
        }
        if i % 3 == 1 {
            // What a client sends in the variant header is replaced, in the span too.
            headers.push(("x-meshcanary-variant", "v3"));
        }
        let reply = client.get("/", &headers).await.unwrap();
        served.insert(last_group(&id), reply.upstream.unwrap());
    }
    let unrouted_id = uuid(999);
    let unrouted = client
        .get("/", &[("x-request-id", &unrouted_id), ("host", "details")])
        .await
        .unwrap();
    assert_eq!(unrouted.upstream.as_deref(), Some("v1"));
    let spans = collector.wait_for(61, Duration::from_secs(20)).await;
    let mut checked = 0;
    let mut variants = HashMap::new();
    for span in &spans {
        let tags = &span["tags"];
        let Some(id) = tags["guid:x-request-id"].as_str() else {
            continue;
        };
        let id = last_group(id);
        if id == last_group(&unrouted_id) {
            assert!(tags.get("meshcanary.variant").is_none(), "{span}");
            continue;
        }
        let Some(upstream) = served.get(&id) else {
            continue;
        };
        assert_eq!(
            tags["meshcanary.variant"].as_str(),
            Some(upstream.as_str()),
            "span of {id}: {span}"
        );
        *variants.entry(upstream.clone()).or_insert(0) += 1;
        checked += 1;
    }
    println!("{checked} spans checked, by variant: {variants:?}");
    assert_eq!(checked, 60, "one span per request: {spans:#?}");
    assert_eq!(variants.len(), 3, "all variants traced: {variants:?}");
}

/// The export names of a wasm module, read from its export section (id 7): a count, then for each
/// export its name (length-prefixed), a kind byte and an index, all numbers unsigned LEB128.
fn wasm_exports(module: &[u8]) -> Vec<String> {
    fn leb128(bytes: &[u8], at: &mut usize) -> usize {
        let (mut value, mut shift) = (0usize, 0);
        loop {
            let byte = bytes[*at];
            *at += 1;
            value |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return value;
            }
            shift += 7;
        }
    }
    assert_eq!(&module[..8], b"\0asm\x01\0\0\0", "a wasm module, version 1");
    let mut at = 8;
    while at < module.len() {
        let id = module[at];
        at += 1;
        let size = leb128(module, &mut at);
        if id == 7 {
            let mut names = Vec::new();
            let mut cursor = at;
            for _ in 0..leb128(module, &mut cursor) {
                let length = leb128(module, &mut cursor);
                names.push(String::from_utf8(module[cursor..cursor + length].to_vec()).unwrap());
                cursor += length + 1;
                leb128(module, &mut cursor);
            }
            return names;
        }
        at += size;
    }
    Vec::new()
}

/// Envoy calls only the callbacks a module exports; the build keeps exactly those the filter
/// implements (filter/wasm/exports.txt), so that no request pays a call into V8 for a no-op.
#[test]
fn the_module_exports_exactly_the_listed_callbacks() {
    let listed =
        std::fs::read_to_string(paths::workspace_root().join("filter/wasm/exports.txt")).unwrap();
    let mut listed: Vec<&str> = listed
        .lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|name| !name.is_empty())
        .collect();
    listed.sort_unstable();
    let module = std::fs::read(paths::filter_wasm()).unwrap();
    let mut exported = wasm_exports(&module);
    exported.sort_unstable();
    assert_eq!(exported, listed);
    for dropped in [
        "proxy_on_request_body",
        "proxy_on_response_body",
        "proxy_on_done",
    ] {
        assert!(!exported.iter().any(|name| name == dropped), "{dropped}");
    }
}

/// Without body callbacks the filter still routes a request with a body, both bodies pass
/// through whole, and the response echo and stats are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_responses_with_bodies_pass_through_whole() {
    let rig = Rig::start(reviews(1, &[10000, 0, 0], qa_rules())).await;
    // Larger than Envoy's 16 KiB read chunks, so the body arrives in many pieces each way.
    let body: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut request = format!(
        "POST /upload HTTP/1.1\r\nhost: reviews\r\nx-canary: always\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let response = raw_request(rig.envoy.listen_port, &request).await;
    let split = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&response[..split]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("\r\nx-upstream: v2"),
        "routed by the rule: {head}"
    );
    assert!(head.contains("\r\nx-meshcanary: v2; reason=rule"), "{head}");
    assert!(
        &response[split + 4..] == body.as_slice(),
        "the upstream got the whole body and it came back whole ({} of {} bytes)",
        response.len() - split - 4,
        body.len()
    );
    rig.envoy
        .wait_for_metric(
            "meshcanary_responses_total",
            &[("variant", "v2"), ("class", "2xx")],
            Duration::from_secs(5),
            |value| value == 1.0,
        )
        .await;
}
