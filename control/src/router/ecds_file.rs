//! The standalone-Envoy router: renders the filter config into the ECDS file that Envoy's
//! `path_config_source` watches, replacing it atomically so Envoy never reads half a file.

use super::{PushError, TrafficRouter};
use crate::atomic_file::write_atomically;
use crate::error::{Error, Result};
use async_trait::async_trait;
use meshcanary_core::config::FilterConfig;
use meshcanary_core::ecds::{ecds_document, WasmDelivery};
use std::path::PathBuf;

/// Writes the `TypedExtensionConfig` file.
pub struct EcdsFileRouter {
    path: PathBuf,
    delivery: WasmDelivery,
}

impl EcdsFileRouter {
    /// A router writing `path` for the filter at `delivery`.
    pub fn new(path: PathBuf, delivery: WasmDelivery) -> EcdsFileRouter {
        EcdsFileRouter { path, delivery }
    }
}

#[async_trait]
impl TrafficRouter for EcdsFileRouter {
    async fn apply(&self, config: &FilterConfig) -> Result<()> {
        let document = ecds_document(&self.delivery, config);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&path, document.as_bytes()))
            .await
            .map_err(|error| Error::Push {
                target: self.describe(),
                source: Box::new(PushError::EcdsTask(error)),
            })?
            .map_err(|error| Error::Push {
                target: self.describe(),
                source: Box::new(PushError::EcdsFile(error)),
            })
    }

    fn describe(&self) -> String {
        format!("ECDS file {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_the_document_envoy_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ecds.json");
        let router = EcdsFileRouter::new(
            path.clone(),
            WasmDelivery {
                name: "meshcanary".into(),
                wasm_path: "/f.wasm".into(),
                fail_open: true,
            },
        );
        let config = FilterConfig {
            generation: 3,
            ..FilterConfig::default()
        };
        router.apply(&config).await.unwrap();
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(written["version_info"], "3");
        let missing = EcdsFileRouter::new(
            dir.path().join("no/such/dir/x.json"),
            router.delivery.clone(),
        );
        let error = missing.apply(&config).await.unwrap_err();
        assert!(
            error.to_string().starts_with("push to ECDS file"),
            "{error}"
        );
    }
}
