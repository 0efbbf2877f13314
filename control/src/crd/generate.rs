//! The MeshRollout CustomResourceDefinition, and the YAML that ships as
//! `envoy-config/istio/meshrollout-crd.yaml` (what `meshcanary crd` and `make crd` print).
//!
//! The file is generated, never edited: a unit test fails when it differs from what the code
//! generates, and says how to regenerate it.

use super::resource::MeshRollout;
use crate::error::{Error, Result};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Where the generated CRD is shipped, relative to the workspace root.
pub const SHIPPED_PATH: &str = "envoy-config/istio/meshrollout-crd.yaml";

/// The command that regenerates the shipped file.
pub const REGENERATE: &str = "make crd";

/// What the YAML starts with.
const HEADER: &str = "\
# The MeshRollout custom resource (meshcanary.io/v1alpha1), cluster-scoped: a cluster admin
# installs it (`kubectl apply -k envoy-config/istio` does). GENERATED from control/src/crd by
# `meshcanary crd` (`make crd`); do not edit by hand.
";

/// The CustomResourceDefinition, as derived from [`MeshRollout`].
pub fn crd() -> CustomResourceDefinition {
    MeshRollout::crd()
}

/// The CustomResourceDefinition as YAML, with a header saying it is generated.
pub fn crd_yaml() -> Result<String> {
    let body = serde_saphyr::to_string(&crd())
        .map_err(|error| Error::Internal(format!("write the MeshRollout CRD as YAML: {error}")))?;
    Ok(format!("{HEADER}{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{CATEGORY, GROUP, KIND, PLURAL, SHORT_NAME, VERSION};
    use serde_json::Value;

    /// The shipped file is what the code generates.
    #[test]
    fn the_shipped_crd_is_generated_from_the_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(SHIPPED_PATH);
        let shipped = std::fs::read_to_string(&path).unwrap_or_default();
        let generated = crd_yaml().unwrap();
        if shipped != generated {
            let first = shipped
                .lines()
                .zip(generated.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| shipped.lines().count().min(generated.lines().count()));
            panic!(
                "{SHIPPED_PATH} is not what the code generates (first difference at line {}):\n  shipped:   {:?}\n  generated: {:?}\nRegenerate it with `{REGENERATE}` (or `cargo run -q -p meshcanary-control -- crd > {SHIPPED_PATH}`) and commit it.",
                first + 1,
                shipped.lines().nth(first).unwrap_or("<end of file>"),
                generated.lines().nth(first).unwrap_or("<end of file>"),
            );
        }
    }

    #[test]
    fn names_scope_and_subresources() {
        let crd = serde_json::to_value(crd()).unwrap();
        let spec = &crd["spec"];
        assert_eq!(crd["metadata"]["name"], format!("{PLURAL}.{GROUP}"));
        assert_eq!(spec["group"], GROUP);
        assert_eq!(spec["scope"], "Namespaced");
        assert_eq!(spec["names"]["kind"], KIND);
        assert_eq!(spec["names"]["plural"], PLURAL);
        assert_eq!(spec["names"]["shortNames"], serde_json::json!([SHORT_NAME]));
        assert_eq!(spec["names"]["categories"], serde_json::json!([CATEGORY]));
        let version = &spec["versions"][0];
        assert_eq!(version["name"], VERSION);
        assert_eq!(version["subresources"]["status"], serde_json::json!({}));
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            columns,
            ["Phase", "Canary", "Weight", "Step", "Age", "Paused", "Message"]
        );
    }

    /// Every rule the schema carries, with a message naming the field it is about, and the
    /// conditions listed by type (server-side apply merges them by type).
    #[test]
    fn the_schema_says_what_it_checks() {
        let crd = serde_json::to_value(crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut rules = Vec::new();
        collect_rules(schema, "", &mut rules);
        let paths: Vec<&str> = rules.iter().map(|(path, _)| path.as_str()).collect();
        for expected in [
            "",
            ".spec",
            ".spec.steps[].setWeight",
            ".spec.progressive",
            ".spec.analysis",
        ] {
            assert!(
                paths.contains(&expected),
                "no rule at {expected}: {paths:?}"
            );
        }
        for (path, rule) in &rules {
            assert!(
                rule.get("message")
                    .is_some_and(|m| m.as_str().is_some_and(|m| !m.is_empty())),
                "a rule at {path} without a message: {rule}"
            );
        }
        let conditions = &schema["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"])
        );
        assert_eq!(
            schema["properties"]["status"]["properties"]["history"]["maxItems"],
            crate::crd::MAX_STATUS_HISTORY
        );
    }

    fn collect_rules(schema: &Value, path: &str, out: &mut Vec<(String, Value)>) {
        if let Some(rules) = schema["x-kubernetes-validations"].as_array() {
            out.extend(rules.iter().map(|r| (path.to_string(), r.clone())));
        }
        if let Some(properties) = schema["properties"].as_object() {
            for (name, child) in properties {
                collect_rules(child, &format!("{path}.{name}"), out);
            }
        }
        if schema["items"].is_object() {
            collect_rules(&schema["items"], &format!("{path}[]"), out);
        }
    }
}
