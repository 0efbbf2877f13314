//! The ECDS resource that delivers the filter and its config to Envoy, in the shape istiod builds
//! for a WasmPlugin: a `TypedExtensionConfig` holding an `envoy.extensions.filters.http.wasm.v3.Wasm`
//! whose `configuration` is a `google.protobuf.StringValue` of the pluginConfig JSON, with `root_id`
//! set to the plugin name and an empty `vm_id`.
//!
//! A standalone Envoy reads it from a file named by a `path_config_source` (see
//! `envoy-config/standalone.yaml`); whoever writes that file replaces it atomically.

use crate::config::FilterConfig;
use serde_json::json;

/// How the filter's module is delivered alongside its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmDelivery {
    /// The extension config name the listener's `config_discovery` asks for, and the plugin's
    /// `root_id` (Istio: the WasmPlugin's `pluginName`).
    pub name: String,
    /// Absolute path of the `.wasm` file on the proxy's machine.
    pub wasm_path: String,
    /// `true`: if the VM fails at runtime, requests skip the filter (Istio `FAIL_OPEN`);
    /// `false`: they fail with 503 (`FAIL_CLOSE`).
    pub fail_open: bool,
}

/// The discovery document for a file-based ECDS source: one `TypedExtensionConfig`. The config's
/// generation doubles as the document's `version_info`.
pub fn ecds_document(delivery: &WasmDelivery, config: &FilterConfig) -> String {
    let document = json!({
        "version_info": config.generation.to_string(),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": delivery.name,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": delivery.name,
                    "root_id": delivery.name,
                    "vm_config": {
                        "vm_id": "",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": delivery.wasm_path}}
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": config.to_json()
                    },
                    "failure_policy": if delivery.fail_open { "FAIL_OPEN" } else { "FAIL_CLOSED" }
                }
            }
        }]
    });
    // A json! value always serialises.
    serde_json::to_string_pretty(&document).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_the_config_as_a_string_value() {
        let config = FilterConfig {
            generation: 9,
            ..FilterConfig::default()
        };
        let delivery = WasmDelivery {
            name: "meshcanary".into(),
            wasm_path: "/x/f.wasm".into(),
            fail_open: true,
        };
        let document: serde_json::Value =
            serde_json::from_str(&ecds_document(&delivery, &config)).unwrap();
        assert_eq!(document["version_info"], "9");
        let wasm = &document["resources"][0]["typed_config"]["config"];
        assert_eq!(wasm["root_id"], "meshcanary");
        assert_eq!(wasm["vm_config"]["vm_id"], "");
        assert_eq!(wasm["failure_policy"], "FAIL_OPEN");
        let carried = wasm["configuration"]["value"].as_str().unwrap();
        assert_eq!(FilterConfig::from_json(carried.as_bytes()).unwrap(), config);
    }
}
