//! meshcanary's control service and CLI.
//!
//! The service owns progressive rollouts: a rollout moves one route's canary through steps (set a
//! weight, pause, hold for a while), then promotes it and makes it the route's stable variant, or
//! rolls it back. Every change is saved to disk first and then pushed to the filters as a whole
//! filter config with a new generation — here by rewriting the ECDS file a standalone Envoy
//! watches ([`router::ecds_file`]) — and the service confirms that the proxies run it by reading
//! the filter's generation gauge ([`observer::envoy_admin`]).
//!
//! The decisions are pure: [`rollout::engine`] maps (rollout, observation, now) to the next action.
//! IO sits at the edges: [`store`], [`router`], [`observer`], [`api`] and the loops in [`controller`].
//! The same binary is the CLI ([`cli`]) that people use against the HTTP API. [`crd`] defines
//! rollouts as a Kubernetes resource (`MeshRollout`) and generates its CustomResourceDefinition;
//! [`reconcile`] runs them.

pub mod analysis;
pub mod api;
pub mod atomic_file;
pub mod cli;
pub mod connections;
pub mod controller;
pub mod crd;
pub mod error;
pub mod kube;
pub mod leader;
pub mod metrics;
pub mod observer;
pub mod options;
pub mod reconcile;
pub mod retention;
pub mod retirement;
pub mod rollout;
pub mod router;
pub mod server;
pub mod state;
pub mod store;
pub mod time;
pub mod view;
pub mod webhook;
pub mod workloads;

pub use error::{Error, Result};
