//! The standalone scenario: a real Envoy with the meshcanary filter in front of two local services
//! playing `reviews` v1 (stable) and v2 (canary). It shows a QA request reaching the canary at 0 %,
//! then moves the canary through 10 %, 50 % and 100 % by rewriting the ECDS file, measuring the split
//! of real traffic from many sticky users at each step, and prints the filter's Prometheus stats.
//!
//! `DEMO_EXIT=1` exits when the scenario is done; otherwise it keeps Envoy running for you to try
//! until Ctrl-C, and then stops everything it started.

use meshcanary_core::config::FilterConfig;
use meshcanary_e2e::envoy::Envoy;
use meshcanary_e2e::load::{tally, Client};
use meshcanary_e2e::prometheus;
use meshcanary_e2e::upstream::Upstream;
use std::time::Instant;

fn config(generation: u64, canary: u32) -> FilterConfig {
    let json = serde_json::json!({
        "generation": generation,
        "responseHeader": "x-meshcanary",
        "routes": [{
            "name": "reviews",
            "hosts": ["*"],
            "variants": [{"name": "v1", "weight": 10000 - canary}, {"name": "v2", "weight": canary}],
            "rules": [{"header": "x-canary", "exact": "always", "variant": "v2"}],
            "sticky": {"header": "x-user-id", "salt": "release-2"}
        }]
    });
    match FilterConfig::from_json(json.to_string().as_bytes()) {
        Ok(config) => config,
        Err(error) => panic!("demo config is invalid: {error}"),
    }
}

#[tokio::main]
async fn main() {
    let stable = Upstream::start("v1").await;
    let canary = Upstream::start("v2").await;
    let spare = Upstream::start("v3").await;
    println!("starting Envoy with the meshcanary filter (reviews: v1 stable, v2 canary)…");
    let envoy = Envoy::start([stable.port, canary.port, spare.port], &config(1, 0)).await;
    let client = Client::new(&envoy.base_url);

    let qa = client.get("/", &[("x-canary", "always")]).await;
    let plain = client.get("/", &[]).await;
    println!("\nQA request at 0 % canary:");
    println!(
        "  curl -H 'x-canary: always' {}  → {:?}",
        envoy.base_url,
        qa.map(|r| r.decision)
    );
    println!(
        "  curl {}                        → {:?}",
        envoy.base_url,
        plain.map(|r| r.decision)
    );

    println!(
        "\n{:>8} {:>10} {:>12} {:>12} {:>8}",
        "canary", "applied", "to v1", "to v2", "errors"
    );
    for (generation, canary_weight) in [(2, 1000), (3, 5000), (4, 10000)] {
        let started = Instant::now();
        envoy.push(&config(generation, canary_weight));
        envoy.wait_for_generation(generation).await;
        let applied = started.elapsed();
        let total = 4000;
        let replies = client
            .many(total, 16, |i| {
                vec![("x-user-id".into(), format!("user-{}", i % 800))]
            })
            .await;
        let counts = tally(&replies);
        let pct = |name: &str| 100.0 * *counts.get(name).unwrap_or(&0) as f64 / total as f64;
        println!(
            "{:>7}% {:>8.0}ms {:>11.1}% {:>11.1}% {:>8}",
            canary_weight / 100,
            applied.as_secs_f64() * 1000.0,
            pct("v1"),
            pct("v2"),
            counts.get("error").unwrap_or(&0)
        );
    }

    let stats = envoy.stats().await;
    println!(
        "\nthe filter's stats ({}/stats/prometheus):",
        envoy.admin_url
    );
    for line in stats
        .lines()
        .filter(|l| l.starts_with("meshcanary_") && !l.contains("_bucket"))
    {
        if !line.ends_with(" 0") {
            println!("  {line}");
        }
    }
    let v2 =
        prometheus::value(&stats, "meshcanary_requests_total", &[("variant", "v2")]).unwrap_or(0.0);
    println!("  ({v2} requests decided for v2 in all)");

    if std::env::var("DEMO_EXIT").is_ok_and(|v| v == "1") {
        return;
    }
    println!(
        "\nEnvoy keeps running: listener {}  admin {}",
        envoy.base_url, envoy.admin_url
    );
    println!(
        "try: curl -i -H 'x-user-id: alice' {}   — Ctrl-C stops everything",
        envoy.base_url
    );
    let _ = tokio::signal::ctrl_c().await;
    println!("stopping Envoy and the upstreams");
}
