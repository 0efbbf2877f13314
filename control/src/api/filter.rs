//! Serves the filter module itself, so a WasmPlugin can load it over HTTP without an OCI registry:
//! `url: http://<service>/filter/meshcanary.wasm` with `sha256:` from `/filter/meshcanary.wasm.sha256`
//! (istio-agent checks the sha256 of modules fetched over http(s)).

use super::AppState;
use crate::api::error::ErrorBody;
use crate::error::{Error, Result};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use sha2::{Digest, Sha256};
use std::path::Path;

/// The module's bytes and their sha256, read once at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmArtifact {
    /// The module exactly as read from `--wasm`, served by `GET /v1/filter.wasm`.
    pub bytes: Vec<u8>,
    /// Lowercase hex sha256 of `bytes`.
    pub sha256: String,
}

impl WasmArtifact {
    /// Reads the module at `path`.
    pub fn read(path: &Path) -> Result<WasmArtifact> {
        let bytes = std::fs::read(path).map_err(|source| Error::File {
            path: path.display().to_string(),
            source,
        })?;
        let sha256 = Sha256::digest(&bytes)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Ok(WasmArtifact { bytes, sha256 })
    }
}

fn artifact(state: &AppState) -> Result<&WasmArtifact> {
    state.wasm.as_deref().ok_or_else(|| {
        Error::NotFound("this service was started without a readable --wasm module".into())
    })
}

/// The filter module (`application/wasm`).
#[utoipa::path(get, path = "/filter/meshcanary.wasm", tag = "system",
    responses((status = 200, description = "The module", content_type = "application/wasm", body = Vec<u8>),
              (status = 404, description = "No module configured", body = ErrorBody)))]
pub async fn module(State(state): State<AppState>) -> Result<impl IntoResponse> {
    let artifact = artifact(&state)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/wasm".to_string()),
            (header::ETAG, format!("\"{}\"", artifact.sha256)),
        ],
        artifact.bytes.clone(),
    ))
}

/// The module's sha256 (hex), for the WasmPlugin's `sha256` field.
#[utoipa::path(get, path = "/filter/meshcanary.wasm.sha256", tag = "system",
    responses((status = 200, description = "Hex sha256", body = String),
              (status = 404, description = "No module configured", body = ErrorBody)))]
pub async fn sha256(State(state): State<AppState>) -> Result<String> {
    Ok(artifact(&state)?.sha256.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_the_module() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.wasm");
        std::fs::write(&path, b"abc").unwrap();
        let artifact = WasmArtifact::read(&path).unwrap();
        assert_eq!(
            artifact.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(WasmArtifact::read(&dir.path().join("missing")).is_err());
    }
}
