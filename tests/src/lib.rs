//! End-to-end test harness for meshcanary: starts a real Envoy with the built filter and the
//! standalone bootstrap from `envoy-config/`, small upstream servers that say which variant they
//! are, and drives real HTTP traffic through them. Everything it starts is stopped when its handle
//! is dropped, including when a test fails.
//!
//! It needs the Envoy binary (`ENVOY_BIN`, or the project venv that `make test` creates) and the
//! release `.wasm` (`MESHCANARY_WASM`, or `make build`'s output); the control service tests also
//! need the `meshcanary` binary (`MESHCANARY_BIN`, or `target/debug/meshcanary`), and the
//! analysis tests a Prometheus server (`PROMETHEUS_BIN`, or Debian's `/usr/bin/prometheus`).
//!
//! [`demo`] holds the scenarios of `make demo`, built on the same parts, so a test runs them too.

pub mod control;
pub mod demo;
pub mod envoy;
pub mod grpc;
pub mod hook_server;
pub mod load;
pub mod paths;
pub mod prometheus;
pub mod prometheus_server;
pub mod steady_load;
pub mod upstream;
pub mod zipkin;
