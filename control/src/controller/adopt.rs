//! Which filter config a service without saved state starts from.
//!
//! A service must never overwrite a config it did not write. With no state of its own (a first
//! start, or its state ConfigMap deleted) it looks at what its target holds and, in this order:
//! 1. adopts the target's live config (a WasmPlugin's `spec.pluginConfig`) — the proxies run it;
//! 2. else takes the seed the target's owner left for it (a WasmPlugin's
//!    `meshcanary.io/initial-plugin-config` annotation) — the shipped manifests do that, so that
//!    Git never holds `pluginConfig` and GitOps never fights the service over it;
//! 3. else takes the config given on its command line (`--routes`), or an empty one.
//!
//! While the target does not exist, or holds a config the filter would reject, it does not start
//! at all (it waits and says why): pushing anything then would be overwriting what someone else
//! is about to install or must repair.

use crate::error::{Error, Result};
use crate::router::LiveConfig;
use meshcanary_core::config::{CheckedConfig, FilterConfig};

/// The config to start from.
#[derive(Debug, Clone, PartialEq)]
pub struct Starting {
    /// The filter config the service serves and pushes from its first tick.
    pub config: FilterConfig,
    /// Where it came from, for the log.
    pub source: String,
    /// What the operator should know (a `--routes` that was not used, say).
    pub notes: Vec<String>,
}

/// Decides the starting config from what the target holds (`live`) and the command line's
/// `--routes` (`given`). An error means "do not start yet": the target is missing, or its config
/// or seed is not one the filter accepts (the error names the field).
pub fn starting_config(live: LiveConfig, given: Option<&FilterConfig>) -> Result<Starting> {
    let from_command_line = || Starting {
        config: given.cloned().unwrap_or_default(),
        source: match given {
            Some(_) => "the --routes file".to_string(),
            None => "an empty config (no --routes)".to_string(),
        },
        notes: Vec::new(),
    };
    let unused_routes = |source: &str, config: &FilterConfig| -> Vec<String> {
        match given {
            Some(given) if given != config => vec![format!(
                "--routes differs from {source} and is not used: the service adopts what is \
                 there (change it through the API)"
            )],
            _ => Vec::new(),
        }
    };
    let starting = match live {
        LiveConfig::Unknown => from_command_line(),
        LiveConfig::TargetMissing(what) => {
            return Err(Error::Unavailable(format!(
                "{what}; waiting for it (meshcanary never creates it)"
            )))
        }
        LiveConfig::Present {
            config: Some(value),
            config_at,
            ..
        } => {
            let config = checked(value.to_string().as_bytes(), &config_at)?;
            Starting {
                notes: unused_routes(&config_at, &config),
                source: format!("the live {config_at} (adopted)"),
                config,
            }
        }
        LiveConfig::Present {
            config: None,
            seed: Some(seed),
            seed_at,
            ..
        } => {
            let config = checked(seed.as_bytes(), &seed_at)?;
            Starting {
                notes: unused_routes(&seed_at, &config),
                source: seed_at,
                config,
            }
        }
        LiveConfig::Present {
            config: None,
            seed: None,
            ..
        } => from_command_line(),
    };
    Ok(starting)
}

/// Parses and validates `json`; an error names the field under `at`.
fn checked(json: &[u8], at: &str) -> Result<FilterConfig> {
    let invalid = |error: meshcanary_core::ConfigError| {
        let field = if error.field.is_empty() {
            at.to_string()
        } else {
            format!("{at}.{}", error.field)
        };
        Error::invalid(
            field,
            format!(
                "{}; meshcanary does not start from (or overwrite) a config the filter rejects: fix it there",
                error.reason
            ),
        )
    };
    let config = FilterConfig::from_json(json).map_err(invalid)?;
    CheckedConfig::try_from(config.clone()).map_err(invalid)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn routes(weight: u32) -> FilterConfig {
        serde_json::from_value(json!({"generation": 3, "routes": [{"name": "reviews", "hosts": ["reviews"],
            "variants": [{"name": "v1", "weight": 10000 - weight}, {"name": "v2", "weight": weight}]}]}))
        .unwrap()
    }

    fn present(config: Option<serde_json::Value>, seed: Option<String>) -> LiveConfig {
        LiveConfig::Present {
            config,
            config_at: "WasmPlugin d/p spec.pluginConfig".into(),
            seed,
            seed_at: "WasmPlugin d/p annotation x".into(),
        }
    }

    #[test]
    fn live_config_then_seed_then_command_line() {
        let live = serde_json::to_value(routes(1000)).unwrap();
        let seed = serde_json::to_string(&routes(0)).unwrap();
        let given = routes(5000);
        let same_as_live = routes(1000);
        // (what the target holds, --routes, expected config, expected source, notes)
        let cases: Vec<(LiveConfig, Option<&FilterConfig>, FilterConfig, &str, usize)> = vec![
            (
                LiveConfig::Unknown,
                Some(&given),
                given.clone(),
                "the --routes file",
                0,
            ),
            (
                LiveConfig::Unknown,
                None,
                FilterConfig::default(),
                "an empty config (no --routes)",
                0,
            ),
            (
                present(Some(live.clone()), Some(seed.clone())),
                None,
                routes(1000),
                "the live WasmPlugin d/p spec.pluginConfig (adopted)",
                0,
            ),
            (
                present(Some(live.clone()), None),
                Some(&given),
                routes(1000),
                "the live WasmPlugin d/p spec.pluginConfig (adopted)",
                1,
            ),
            (
                present(Some(live.clone()), None),
                Some(&same_as_live),
                routes(1000),
                "the live WasmPlugin d/p spec.pluginConfig (adopted)",
                0,
            ),
            (
                present(Some(json!({})), None),
                Some(&given),
                FilterConfig::default(),
                "the live WasmPlugin d/p spec.pluginConfig (adopted)",
                1,
            ),
            (
                present(None, Some(seed.clone())),
                None,
                routes(0),
                "WasmPlugin d/p annotation x",
                0,
            ),
            (
                present(None, Some(seed.clone())),
                Some(&given),
                routes(0),
                "WasmPlugin d/p annotation x",
                1,
            ),
            (
                present(None, None),
                Some(&given),
                given.clone(),
                "the --routes file",
                0,
            ),
        ];
        for (live, given, config, source, notes) in cases {
            let what = format!("{live:?} / {given:?}");
            let starting = starting_config(live, given).unwrap();
            assert_eq!(starting.config, config, "{what}");
            assert_eq!(starting.source, source, "{what}");
            assert_eq!(starting.notes.len(), notes, "{what}: {:?}", starting.notes);
        }
    }

    #[test]
    fn a_missing_target_or_a_rejected_config_means_wait() {
        let error = starting_config(
            LiveConfig::TargetMissing("WasmPlugin d/p does not exist".into()),
            None,
        )
        .unwrap_err();
        assert_eq!(error.code(), "not_ready");
        assert!(
            error
                .to_string()
                .contains("WasmPlugin d/p does not exist; waiting for it"),
            "{error}"
        );

        let bad_weight = json!({"routes": [{"name": "r", "hosts": ["r"],
            "variants": [{"name": "v1", "weight": 99999}, {"name": "v2", "weight": 0}]}]});
        let cases = [
            (
                present(Some(bad_weight.clone()), None),
                "WasmPlugin d/p spec.pluginConfig.routes[0].variants[0].weight",
            ),
            (
                present(Some(json!({"routs": []})), None),
                "WasmPlugin d/p spec.pluginConfig",
            ),
            (
                present(None, Some(bad_weight.to_string())),
                "WasmPlugin d/p annotation x.routes[0].variants[0].weight",
            ),
            (
                present(None, Some("{not json".into())),
                "WasmPlugin d/p annotation x",
            ),
        ];
        for (live, field) in cases {
            let error = starting_config(live, None).unwrap_err();
            let Error::Invalid { field: got, reason } = &error else {
                panic!("{error:?}")
            };
            assert!(got.starts_with(field), "{got} / {field}");
            assert!(reason.contains("fix it there"), "{reason}");
        }
    }
}
