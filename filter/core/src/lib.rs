//! meshcanary's data-plane decisions, free of any proxy API.
//!
//! The filter that runs inside Envoy (`filter/wasm`) is a thin shell over this crate: it parses and
//! validates its `pluginConfig` with [`config`], picks a variant for every request with [`choose`],
//! and names and records its Envoy stats through [`stats`]. The control service reuses [`config`] so
//! that what it pushes is exactly what the filter accepts.
//!
//! Nothing here calls a host, a clock or a random number generator: randomness and request headers
//! are passed in, so every decision is a plain function that is tested on the host.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::indexing_slicing))]

pub mod base64url;
pub mod choose;
pub mod config;
pub mod ecds;
pub mod hash;
pub mod header_map;
pub mod host_index;
pub mod json_path;
pub mod request;
pub mod sha256;
pub mod stats;
pub mod token;

pub use choose::{choose, Decision, Reason};
pub use config::{CheckedConfig, ConfigError, FilterConfig};
