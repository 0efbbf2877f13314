//! Rollouts as a Kubernetes resource: the `MeshRollout` custom resource
//! (`meshcanary.io/v1alpha1`, short name `mro`, category `meshcanary`), generated from Rust types.
//!
//! A MeshRollout is the rollout a GitOps tool keeps in Git: its `spec` is the API's rollout body
//! (the same JSON, without `name`, which is `metadata.name`) plus the WasmPlugin it acts on and a
//! `paused` intent; its `status` is where the control service reports — and keeps — where the
//! rollout stands. The parts:
//!
//! - [`resource`]: the spec, the derive that makes the resource, and [`CheckedMeshRollout`], the
//!   spec validated by the API's own rules, errors naming `spec.<field>`;
//! - [`status`]: the status subresource (phase, weight, propagation, the last check, standard
//!   conditions, a bounded history) built from a [`Rollout`], and `run`, the rollout's durable record;
//! - [`generate`]: the CustomResourceDefinition and its YAML, which `meshcanary crd` prints and
//!   `envoy-config/istio/meshrollout-crd.yaml` ships.
//!
//! The API server enforces what the schema can say (ranges, patterns, lengths, CEL rules with
//! messages naming the field); the conversion to the checked spec enforces everything, as the
//! HTTP API does. Nothing here talks to a cluster: [`crate::reconcile`] does.
//!
//! [`Rollout`]: crate::rollout::Rollout

pub mod generate;
pub mod resource;
pub mod status;

pub use generate::{crd, crd_yaml};
pub use resource::{CheckedMeshRollout, MeshRollout, MeshRolloutSpec, Target};
pub use status::{MeshRolloutStatus, MAX_STATUS_HISTORY};

/// The API group.
pub const GROUP: &str = "meshcanary.io";
/// The (only) version.
pub const VERSION: &str = "v1alpha1";
/// The kind.
pub const KIND: &str = "MeshRollout";
/// The resource's plural name (`kubectl get meshrollouts`).
pub const PLURAL: &str = "meshrollouts";
/// The short name (`kubectl get mro`): Argo Rollouts has `ro`, Flagger `canary`.
pub const SHORT_NAME: &str = "mro";
/// The category (`kubectl get meshcanary`).
pub const CATEGORY: &str = "meshcanary";
/// The field manager the control service writes the status's view with (server-side apply).
pub const FIELD_MANAGER: &str = "meshcanary";
/// The field manager of the service's state store, which alone writes `status.run`.
pub const STATE_FIELD_MANAGER: &str = "meshcanary-state";
