//! The eleven Envoy configurations compared, their bootstrap templates (`bench/envoy/*.yaml`) and the
//! filter configs they carry.

use anyhow::{bail, Context};
use meshcanary_core::config::CheckedConfig;
use std::path::{Path, PathBuf};

/// One configuration of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// (a) straight to one cluster.
    Direct,
    /// (b) native `weighted_clusters` 90/10, the anchor.
    Weighted,
    /// (c) the meshcanary filter at 90/10.
    Filter,
    /// (d) the filter with a sticky key and 10 QA rules that do not match.
    FilterWorst,
    /// (e) a no-op wasm filter in front of (b)'s routes.
    Noop,
    /// (f) a Lua filter setting the variant header.
    Lua,
    /// (g) a wasm filter that only writes the variant header (`v1`), on (c)'s routes.
    HeaderOnly,
    /// (h) a no-op module without the SDK exporting only meshcanary's callbacks, on (b)'s routes.
    BareNoop,
    /// (i) (c) in a config of 100 routes, one per service, the request for the last one.
    Routes100,
    /// (j) the same with 1 000 routes.
    Routes1000,
    /// (k) every feature on, each at its dearest: 1 000 routes (the request for the last), (d)'s
    /// 10 QA rules that do not match, a signed rule whose token's MAC is computed and refused, a
    /// sticky cookie the request lacks (a new visitor id and `Set-Cookie` on every response), and
    /// the decision echoed in a response header.
    Everything,
}

/// The canary's share each configuration should send to `reviews-v2`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ExpectedSplit {
    /// No split: everything to v1.
    None,
    /// About this fraction to v2.
    Share(f64),
    /// Every request carries the same sticky key, so all go to one variant (either).
    OneVariant,
}

/// The files a scenario's bootstrap points at.
#[derive(Debug, Clone)]
pub struct Modules {
    /// The release meshcanary module.
    pub meshcanary: PathBuf,
    /// The no-op module.
    pub noop: PathBuf,
    /// The module that only writes the variant header.
    pub header: PathBuf,
    /// The no-op module without the SDK, with meshcanary's exports only.
    pub bare_noop: PathBuf,
}

impl Scenario {
    /// In report order.
    pub const ALL: [Scenario; 11] = [
        Scenario::Direct,
        Scenario::Weighted,
        Scenario::Filter,
        Scenario::FilterWorst,
        Scenario::Noop,
        Scenario::Lua,
        Scenario::HeaderOnly,
        Scenario::BareNoop,
        Scenario::Routes100,
        Scenario::Routes1000,
        Scenario::Everything,
    ];

    /// The letter of the issue (`a` … `f`), and `g`, `h`.
    pub fn key(self) -> &'static str {
        match self {
            Scenario::Direct => "a",
            Scenario::Weighted => "b",
            Scenario::Filter => "c",
            Scenario::FilterWorst => "d",
            Scenario::Noop => "e",
            Scenario::Lua => "f",
            Scenario::HeaderOnly => "g",
            Scenario::BareNoop => "h",
            Scenario::Routes100 => "i",
            Scenario::Routes1000 => "j",
            Scenario::Everything => "k",
        }
    }

    /// The scenarios named by a comma-separated list of letters (`BENCH_LAB=c,e`), in the order
    /// given; an unknown letter is an error that lists the known ones.
    pub fn parse_keys(keys: &str) -> anyhow::Result<Vec<Scenario>> {
        keys.split(',')
            .map(str::trim)
            .map(|key| {
                Scenario::ALL
                    .into_iter()
                    .find(|scenario| scenario.key() == key)
                    .with_context(|| {
                        format!(
                            "no configuration {key:?} (known: {})",
                            Scenario::ALL.map(Scenario::key).join(", ")
                        )
                    })
            })
            .collect()
    }

    /// What it is, in a few words.
    pub fn title(self) -> &'static str {
        match self {
            Scenario::Direct => "one cluster, no split",
            Scenario::Weighted => "native weighted_clusters 90/10",
            Scenario::Filter => "meshcanary 90/10",
            Scenario::FilterWorst => "meshcanary, sticky + 10 QA rules (no match)",
            Scenario::Noop => "no-op wasm filter + weighted_clusters",
            Scenario::Lua => "Lua filter sets the header",
            Scenario::HeaderOnly => "wasm filter that only sets the variant header",
            Scenario::BareNoop => {
                "no-op module with meshcanary's callbacks only + weighted_clusters"
            }
            Scenario::Routes100 => "meshcanary 90/10, 100 routes (request for the last)",
            Scenario::Routes1000 => "meshcanary 90/10, 1 000 routes (request for the last)",
            Scenario::Everything => {
                "meshcanary, every feature on: 1 000 routes, 10 QA rules, refused token, new visitor"
            }
        }
    }

    /// The bootstrap template.
    pub fn template(self) -> &'static str {
        match self {
            Scenario::Direct => include_str!("../envoy/direct.yaml"),
            Scenario::Weighted => include_str!("../envoy/weighted.yaml"),
            Scenario::Filter
            | Scenario::FilterWorst
            | Scenario::HeaderOnly
            | Scenario::Routes100
            | Scenario::Routes1000
            | Scenario::Everything => include_str!("../envoy/filter.yaml"),
            Scenario::Noop | Scenario::BareNoop => include_str!("../envoy/noop.yaml"),
            Scenario::Lua => include_str!("../envoy/lua.yaml"),
        }
    }

    /// The template's file name under `bench/envoy/`.
    pub fn template_name(self) -> &'static str {
        match self {
            Scenario::Direct => "direct.yaml",
            Scenario::Weighted => "weighted.yaml",
            Scenario::Filter
            | Scenario::FilterWorst
            | Scenario::HeaderOnly
            | Scenario::Routes100
            | Scenario::Routes1000
            | Scenario::Everything => "filter.yaml",
            Scenario::Noop | Scenario::BareNoop => "noop.yaml",
            Scenario::Lua => "lua.yaml",
        }
    }

    /// The split it should produce, checked from Envoy's cluster stats after each round.
    pub fn expected_split(self) -> ExpectedSplit {
        match self {
            // (g) writes `v1` on every request.
            Scenario::Direct | Scenario::HeaderOnly => ExpectedSplit::None,
            Scenario::FilterWorst => ExpectedSplit::OneVariant,
            _ => ExpectedSplit::Share(0.1),
        }
    }

    /// The meshcanary pluginConfig JSON, for (c) and (d).
    pub fn plugin_config(self) -> Option<String> {
        // The rules of the decision's micro-benchmark (filter/core/benches/choose.rs): header,
        // cookie and query rules, none matching the benchmark's requests.
        let rules = meshcanary_testkit::fixtures::ten_rules();
        let mut route = serde_json::json!({
            "name": "reviews",
            "hosts": ["reviews", "reviews.default.svc.cluster.local"],
            "variants": [{"name": "v1", "weight": 9000}, {"name": "v2", "weight": 1000}],
        });
        // Routes for other services before the request's, each with its names and a pattern.
        let others = |count: usize| -> Vec<serde_json::Value> {
            (0..count)
                .map(|i| {
                    serde_json::json!({
                        "name": format!("svc-{i}"),
                        "hosts": [format!("svc-{i}"), format!("svc-{i}.default.svc.cluster.local"), format!("*.svc-{i}.example.com")],
                        "variants": [{"name": "v1", "weight": 9000}, {"name": "v2", "weight": 1000}],
                    })
                })
                .collect()
        };
        let mut document = serde_json::json!({"generation": 1});
        let routes = match self {
            Scenario::Filter => vec![route],
            Scenario::FilterWorst => {
                route["rules"] = rules;
                route["sticky"] = serde_json::json!({"header": "x-user-id", "salt": "release-42"});
                vec![route]
            }
            Scenario::Routes100 | Scenario::Routes1000 => {
                let count = if self == Scenario::Routes100 { 99 } else { 999 };
                let mut routes = others(count);
                routes.push(route);
                routes
            }
            Scenario::Everything => {
                let mut rules = rules.as_array().cloned().unwrap_or_default();
                rules.push(serde_json::json!({"header": "x-meshcanary-qa", "tokenKeys": [QA_KEY]}));
                route["rules"] = serde_json::Value::Array(rules);
                route["sticky"] = serde_json::json!({"cookie": "mc-visitor", "salt": "release-42",
                    "assign": {"maxAge": 2592000}});
                document["responseHeader"] = serde_json::json!("x-meshcanary");
                let mut routes = others(999);
                routes.push(route);
                routes
            }
            _ => return None,
        };
        document["routes"] = serde_json::Value::Array(routes);
        Some(document.to_string())
    }

    /// The bootstrap for this scenario, ports ephemeral, upstream on `upstream_port`.
    pub fn bootstrap(self, upstream_port: u16, modules: &Modules) -> anyhow::Result<String> {
        let mut values = vec![
            ("LISTEN_PORT", "0".to_string()),
            ("ADMIN_PORT", "0".to_string()),
            ("UPSTREAM_PORT", upstream_port.to_string()),
        ];
        match self {
            Scenario::Filter
            | Scenario::FilterWorst
            | Scenario::Routes100
            | Scenario::Routes1000
            | Scenario::Everything => {
                let config = self.plugin_config().unwrap_or_default();
                // The filter would refuse an invalid config and Envoy would answer 500: fail here.
                CheckedConfig::from_json(config.as_bytes())
                    .with_context(|| format!("({}) pluginConfig", self.key()))?;
                values.push(("WASM_PATH", path_text(&modules.meshcanary)?));
                // A JSON string literal is a valid YAML double-quoted scalar.
                values.push(("PLUGIN_CONFIG", serde_json::to_string(&config)?));
            }
            Scenario::Noop => values.push(("WASM_PATH", path_text(&modules.noop)?)),
            Scenario::BareNoop => values.push(("WASM_PATH", path_text(&modules.bare_noop)?)),
            Scenario::HeaderOnly => {
                values.push(("WASM_PATH", path_text(&modules.header)?));
                // The filter reads no configuration (the SDK's default root context accepts any).
                values.push(("PLUGIN_CONFIG", "\"\"".to_string()));
            }
            _ => {}
        }
        render(self.template(), &values)
    }
}

/// The signed rule's key in (k): the token wrk sends names it, but its MAC is not this key's.
pub const QA_KEY: &str = "qa:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA";

/// A module path as it goes into a bootstrap's YAML string; an error for one that cannot.
pub fn path_text(path: &Path) -> anyhow::Result<String> {
    let text = path.to_str().context("module path is not UTF-8")?;
    if text.contains('"') || text.contains('\\') {
        bail!("module path {text:?} cannot go into a YAML string as is");
    }
    Ok(text.to_string())
}

/// Replaces `${NAME}` placeholders (the kit's rendering, as the tests' bootstraps get it).
pub fn render(template: &str, values: &[(&str, String)]) -> anyhow::Result<String> {
    Ok(meshcanary_testkit::envoy::render(template, values)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modules() -> Modules {
        Modules {
            meshcanary: "/m/meshcanary.wasm".into(),
            noop: "/m/noop.wasm".into(),
            header: "/m/header.wasm".into(),
            bare_noop: "/m/bare-noop.wasm".into(),
        }
    }

    #[test]
    fn parse_keys_names_scenarios_and_refuses_unknown_letters() {
        let cases: [(&str, Result<Vec<Scenario>, &str>); 4] = [
            ("c,e", Ok(vec![Scenario::Filter, Scenario::Noop])),
            (" h , a", Ok(vec![Scenario::BareNoop, Scenario::Direct])),
            (
                "c,z",
                Err("no configuration \"z\" (known: a, b, c, d, e, f, g, h, i, j, k)"),
            ),
            ("c,,e", Err("no configuration \"\"")),
        ];
        for (keys, expected) in cases {
            match (Scenario::parse_keys(keys), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{keys}"),
                (Err(err), Err(want)) => {
                    assert!(err.to_string().contains(want), "{keys}: {err}")
                }
                (got, want) => panic!("{keys}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn every_bootstrap_renders_without_placeholders() {
        for scenario in Scenario::ALL {
            let bootstrap = scenario.bootstrap(4242, &modules()).unwrap();
            assert!(bootstrap.contains("port_value: 4242"), "{}", scenario.key());
            assert!(bootstrap.contains("reviews-v2"), "{}", scenario.key());
        }
    }

    #[test]
    fn filter_configs_are_valid_and_carried_as_one_yaml_string() {
        for scenario in [Scenario::Filter, Scenario::FilterWorst] {
            let config = scenario.plugin_config().unwrap();
            let checked = CheckedConfig::from_json(config.as_bytes()).unwrap();
            let route = &checked.routes[0];
            let worst = scenario == Scenario::FilterWorst;
            assert_eq!(route.rules.len(), if worst { 10 } else { 0 });
            assert_eq!(route.sticky.is_some(), worst);
            let bootstrap = scenario.bootstrap(1, &modules()).unwrap();
            let line = bootstrap
                .lines()
                .find(|line| line.trim_start().starts_with("value: "))
                .unwrap();
            let carried: String =
                serde_json::from_str(line.trim_start().trim_start_matches("value: ")).unwrap();
            assert_eq!(carried, config);
            assert!(bootstrap.contains("filename: \"/m/meshcanary.wasm\""));
        }
        assert!(Scenario::Noop
            .bootstrap(1, &modules())
            .unwrap()
            .contains("/m/noop.wasm"));
        assert_eq!(Scenario::Lua.plugin_config(), None);
    }

    #[test]
    fn the_header_only_filter_runs_on_the_filter_routes_without_a_config() {
        let bootstrap = Scenario::HeaderOnly.bootstrap(4242, &modules()).unwrap();
        let filter = Scenario::Filter.bootstrap(4242, &modules()).unwrap();
        // The same bootstrap as (c) but for the module and its (empty) configuration.
        let differ: Vec<(&str, &str)> = bootstrap
            .lines()
            .zip(filter.lines())
            .filter(|(g, c)| g != c)
            .collect();
        assert_eq!(bootstrap.lines().count(), filter.lines().count());
        let cases = [
            (
                "filename: \"/m/header.wasm\"",
                "filename: \"/m/meshcanary.wasm\"",
            ),
            ("value: \"\"", "value: \"{"),
        ];
        assert_eq!(differ.len(), cases.len(), "{differ:?}");
        for ((g, c), (in_g, in_c)) in differ.into_iter().zip(cases) {
            assert!(g.contains(in_g), "{g}");
            assert!(c.contains(in_c), "{c}");
        }
        assert!(bootstrap.contains("string_match: { exact: v2 }"));
        assert_eq!(Scenario::HeaderOnly.plugin_config(), None);
        assert_eq!(Scenario::HeaderOnly.expected_split(), ExpectedSplit::None);
        assert_eq!(
            (
                Scenario::HeaderOnly.key(),
                Scenario::HeaderOnly.template_name()
            ),
            ("g", "filter.yaml")
        );
    }

    #[test]
    fn odd_module_paths_are_refused() {
        let odd = Modules {
            meshcanary: "/a\"b.wasm".into(),
            noop: "/n.wasm".into(),
            header: "/h\\.wasm".into(),
            bare_noop: "/b.wasm".into(),
        };
        assert!(Scenario::Filter.bootstrap(1, &odd).is_err());
        assert!(Scenario::HeaderOnly.bootstrap(1, &odd).is_err());
        assert!(Scenario::Noop.bootstrap(1, &odd).is_ok());
    }

    #[test]
    fn the_rules_do_not_match_the_benchmark_requests() {
        use meshcanary_core::request::RequestView;
        struct Wrk;
        impl RequestView for Wrk {
            fn header(&self, name: &str) -> Option<&[u8]> {
                let value = match name {
                    ":authority" => "reviews",
                    ":path" => crate::wrk::PATH,
                    "x-request-id" => "0f0e0d0c-1b2a-4c3d-8e9f-a0b1c2d3e4f5",
                    _ => crate::wrk::header_pairs()
                        .into_iter()
                        .find_map(|(key, value)| key.eq_ignore_ascii_case(name).then_some(value))?,
                };
                Some(value.as_bytes())
            }
        }
        let config = Scenario::FilterWorst.plugin_config().unwrap();
        let checked = CheckedConfig::from_json(config.as_bytes()).unwrap();
        let decision = meshcanary_core::choose(&checked, &Wrk, &mut || None).unwrap();
        assert_eq!(decision.reason, meshcanary_core::Reason::Sticky);
        let config = Scenario::Filter.plugin_config().unwrap();
        let checked = CheckedConfig::from_json(config.as_bytes()).unwrap();
        let decision = meshcanary_core::choose(&checked, &Wrk, &mut || None).unwrap();
        assert_eq!(decision.reason, meshcanary_core::Reason::RequestId);
        // (i) and (j): the request's route is the last of 100 and 1 000.
        for (scenario, routes) in [(Scenario::Routes100, 100), (Scenario::Routes1000, 1000)] {
            let config = scenario.plugin_config().unwrap();
            let checked = CheckedConfig::from_json(config.as_bytes()).unwrap();
            assert_eq!(checked.routes.len(), routes);
            let decision = meshcanary_core::choose(&checked, &Wrk, &mut || None).unwrap();
            assert_eq!(
                (decision.route, decision.reason),
                (routes - 1, meshcanary_core::Reason::RequestId)
            );
        }
        // (k): every rule is tried, the token's MAC refused, and the request is a new visitor.
        struct Draws;
        impl meshcanary_core::choose::Inputs for Draws {
            fn random_bucket(&mut self) -> Option<u32> {
                Some(0)
            }
            fn visitor_bits(&mut self) -> Option<u128> {
                Some(42)
            }
            fn now_unix(&self) -> Option<u64> {
                Some(1_800_000_000)
            }
        }
        let config = Scenario::Everything.plugin_config().unwrap();
        let checked = CheckedConfig::from_json(config.as_bytes()).unwrap();
        let decision = meshcanary_core::choose(&checked, &Wrk, &mut Draws).unwrap();
        assert_eq!(decision.route, 999);
        assert_eq!(decision.reason, meshcanary_core::Reason::Assigned);
        assert_eq!(
            decision.token_rejection,
            Some(meshcanary_core::token::Rejection::BadSignature)
        );
        assert_eq!(checked.routes[999].rules.len(), 11);
    }
}
