//! `meshcanary crd`: prints the MeshRollout CustomResourceDefinition as YAML, offline — the
//! same text `envoy-config/istio/meshrollout-crd.yaml` ships (`make crd` writes it there).

use super::client::CliError;
use clap::Args;

/// Arguments of `meshcanary crd` (none yet: it prints the one version there is).
#[derive(Debug, Clone, Args)]
pub struct CrdArgs {}

/// Runs the command: the YAML on stdout.
pub fn run(_: &CrdArgs) -> Result<u8, CliError> {
    let yaml = crate::crd::crd_yaml().map_err(|error| CliError::Failed {
        doing: "generate the MeshRollout CRD".into(),
        reason: error.to_string(),
    })?;
    super::print(yaml.trim_end())?;
    Ok(0)
}
