//! MeshRollouts as intent (issue 19, second slice): while this replica leads, the service watches
//! the MeshRollouts of its own namespace and makes each one's rollout happen, writing where it
//! stands back into the resource's status.
//!
//! The service's state (the ConfigMap in Kubernetes) stays the durable record: the resource says
//! what is wanted, the rollout of the same name in the state is what runs, and the status is a
//! view of that rollout written by the leader. Two parts:
//!
//! - [`decide`]: pure — given the resource (checked spec, generation, deletion, the status last
//!   written) and the service's rollout of that name, what to do (create, replace, pause, resume,
//!   finalize, report, refuse);
//! - [`reconciler`]: the kube edge — the watch, the controller calls a decision asks for, the
//!   finalizer, the status (server-side apply under [`FIELD_MANAGER`](crate::crd::FIELD_MANAGER)
//!   on the status subresource, after every change of the rollout, the engine's too) and the
//!   Events ([`events`] says which).
//!
//! Rollouts created through the HTTP API have no resource and are left alone; creating a
//! resource for them is a later slice.

pub mod decide;
pub mod events;
pub mod reconciler;

pub use decide::{decide, Decision, Observed, Refusal, ServiceTarget};
pub use reconciler::Reconciler;

/// The finalizer the service puts on a MeshRollout it acts on: a deleted resource whose rollout
/// still runs is aborted (traffic back to stable) before it goes.
pub const FINALIZER: &str = "meshcanary.io/rollout";
