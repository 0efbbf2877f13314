//! MeshRollouts as intent (issue 19, second slice): while this replica leads, the service watches
//! the MeshRollouts of its own namespace and makes each one's rollout happen, writing where it
//! stands back into the resource's status.
//!
//! The resource says what is wanted; the rollout of the same name in the service's state is what
//! runs, and its durable record is the resource's own `status.run`, written by the state store
//! ([`crate::store::resources`]) in every save that changes it — a new leader resumes from it.
//! The rest of the status is a view of that rollout, written by the leader. The parts:
//!
//! - [`decide`]: pure — given the resource (checked spec, generation, deletion, the status last
//!   written) and the service's rollout of that name, what to do (create, replace, pause, resume,
//!   finalize, report, refuse);
//! - [`reconciler`]: the kube edge — the watch, the controller calls a decision asks for, the
//!   finalizer, the status (server-side apply under [`FIELD_MANAGER`](crate::crd::FIELD_MANAGER)
//!   on the status subresource, after every change of the rollout, the engine's too) and the
//!   Events ([`events`] says which);
//! - [`front`]: the HTTP API's creates and deletes as MeshRollouts.
//!
//! A rollout created through the HTTP API in Kubernetes mode is a MeshRollout too ([`front`]):
//! the API creates the resource and this reconciler starts it like any other.

pub mod decide;
pub mod events;
pub mod front;
pub mod reconciler;

pub use decide::{decide, Decision, Observed, Refusal, ServiceTarget};
pub use reconciler::Reconciler;

/// The finalizer the service puts on a MeshRollout it acts on: a deleted resource whose rollout
/// still runs is aborted (traffic back to stable) before it goes.
pub const FINALIZER: &str = "meshcanary.io/rollout";
