//! Data the tests and benchmarks share, so that a benchmark's configuration and the micro-benchmark
//! of the same decision cannot drift apart.
//!
//! The files live in `testkit/fixtures/`. The decision's criterion benchmark
//! (`filter/core/benches/choose.rs`) reads them with `include_str!` rather than through this crate:
//! the filter's pure crate stays quick to build and test without the kit's dependencies.

/// The 10 QA rules of the benchmark's configuration (d) and of the criterion benchmark, as a JSON
/// array: header, cookie and query rules, none of which matches the benchmark's requests, so every
/// one is evaluated (6 header reads, the cookie header and `:path` once each).
pub const TEN_RULES: &str = include_str!("../fixtures/ten-rules.json");

/// [`TEN_RULES`] parsed.
pub fn ten_rules() -> serde_json::Value {
    serde_json::from_str(TEN_RULES).expect("fixtures/ten-rules.json is JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ten_rules_are_ten_valid_rules() {
        let rules = ten_rules();
        assert_eq!(rules.as_array().map(Vec::len), Some(10));
        let config = serde_json::json!({
            "generation": 1,
            "routes": [{
                "name": "reviews",
                "hosts": ["reviews"],
                "variants": [{"name": "v1", "weight": 9000}, {"name": "v2", "weight": 1000}],
                "rules": rules,
            }]
        });
        let checked =
            meshcanary_core::config::CheckedConfig::from_json(config.to_string().as_bytes())
                .unwrap();
        assert_eq!(checked.routes[0].rules.len(), 10);
    }
}
