//! The ECDS file through which a standalone Envoy gets the filter and its config: rendered by
//! `meshcanary_core::ecds` and written exactly as the control service writes it, so that a push
//! from a test or a benchmark reaches Envoy the way a real one does.

use crate::error::{Error, Result};
use meshcanary_core::config::FilterConfig;
use meshcanary_core::ecds::{ecds_document, WasmDelivery};
use std::path::{Path, PathBuf};

/// The filter's name in the ECDS document (the bootstrap's `config_discovery` refers to it).
pub const FILTER_NAME: &str = "meshcanary";

/// An ECDS file that Envoy watches.
#[derive(Debug, Clone)]
pub struct EcdsFile {
    path: PathBuf,
    delivery: WasmDelivery,
}

impl EcdsFile {
    /// The file at `path`, delivering the module `wasm` (failing open, as the shipped config
    /// does). Nothing is written yet.
    pub fn new(path: &Path, wasm: &Path) -> Result<EcdsFile> {
        let wasm_path = wasm
            .to_str()
            .ok_or_else(|| Error::failed(wasm.display().to_string(), "module path is not UTF-8"))?
            .to_string();
        Ok(EcdsFile {
            path: path.to_path_buf(),
            delivery: WasmDelivery {
                name: FILTER_NAME.into(),
                wasm_path,
                fail_open: true,
            },
        })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the filter config the way a pusher does: the file is rewritten atomically.
    pub fn push(&self, config: &FilterConfig) -> Result<()> {
        self.write(&ecds_document(&self.delivery, config))
    }

    /// Writes `plugin_config` (any string, valid or not) as the filter's configuration, for
    /// tests of what the filter does with a config it must refuse.
    pub fn push_raw(&self, generation: u64, plugin_config: &str) -> Result<()> {
        let valid = FilterConfig {
            generation,
            ..FilterConfig::default()
        };
        let quoted = |text: &str| serde_json::to_string(text).unwrap_or_default();
        let document = ecds_document(&self.delivery, &valid)
            .replace(&quoted(&valid.to_json()), &quoted(plugin_config));
        self.write(&document)
    }

    fn write(&self, document: &str) -> Result<()> {
        meshcanary_control::atomic_file::write_atomically(&self.path, document.as_bytes())
            .map_err(|error| Error::failed(format!("write {}", self.path.display()), error))
    }
}

/// The filter config inside an ECDS document as the control service (or a test) wrote it.
pub fn read(path: &Path) -> Result<FilterConfig> {
    let what = || format!("read the filter config in {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|error| Error::failed(what(), error))?;
    let document: serde_json::Value =
        serde_json::from_str(&text).map_err(|error| Error::failed(what(), error))?;
    let value = document["resources"][0]["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .ok_or_else(|| Error::failed(what(), "no StringValue configuration"))?;
    FilterConfig::from_json(value.as_bytes()).map_err(|error| Error::failed(what(), error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_pushed_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = EcdsFile::new(&dir.path().join("m.ecds.json"), Path::new("/m.wasm")).unwrap();
        let config = FilterConfig::from_json(
            br#"{"generation":7,"routes":[{"name":"r","hosts":["*"],"variants":[{"name":"a","weight":10000},{"name":"b","weight":0}]}]}"#,
        )
        .unwrap();
        file.push(&config).unwrap();
        assert_eq!(read(file.path()).unwrap(), config);
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(text.contains("/m.wasm"), "{text}");
    }

    #[test]
    fn a_raw_push_carries_the_string_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let file = EcdsFile::new(&dir.path().join("m.ecds.json"), Path::new("/m.wasm")).unwrap();
        file.push_raw(3, "[42]").unwrap();
        let error = read(file.path()).unwrap_err().to_string();
        assert!(error.starts_with("read the filter config in "), "{error}");
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(text.contains(r#""value": "[42]""#), "{text}");
    }
}
