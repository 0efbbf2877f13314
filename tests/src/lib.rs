//! End-to-end test harness for meshcanary, on top of the test kit (`meshcanary_testkit`, which
//! starts a real Envoy with the built filter on the standalone bootstrap from `envoy-config/`, the
//! upstreams, the control service and Prometheus): a client for the control API ([`control`]),
//! real HTTP traffic through Envoy ([`load`], [`steady_load`]), gRPC ([`grpc`]) and a Zipkin
//! collector ([`zipkin`]). Everything it starts is stopped when its handle is dropped, including
//! when a test fails.
//!
//! It needs the Envoy binary (`ENVOY_BIN`, or the project venv that `make test` creates) and the
//! release `.wasm` (`MESHCANARY_WASM`, or `make build`'s output); the control service tests also
//! need the `meshcanary` binary (`MESHCANARY_BIN`, or `target/debug/meshcanary`), and the
//! analysis tests a Prometheus server (`PROMETHEUS_BIN`, or Debian's `/usr/bin/prometheus`).
//!
//! [`demo`] holds the scenarios of `make demo`, built on the same parts, so a test runs them too.

pub mod control;
pub mod demo;
pub mod grpc;
pub mod load;
pub mod steady_load;
pub mod zipkin;
