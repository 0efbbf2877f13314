//! The Deployments behind a rollout's variants (Kubernetes mode, `workloads` in a rollout): the
//! controller reads their readiness into the engine's observation and scales them when the
//! engine says so. [`deployments`] does it through the Kubernetes API.

pub mod deployments;

use crate::error::Result;
use crate::rollout::Replicas;
use async_trait::async_trait;

/// Scales Deployments and reads how many of their replicas are ready.
#[async_trait]
pub trait WorkloadScaler: Send + Sync + std::fmt::Debug {
    /// Sets Deployment `name`'s `spec.replicas`.
    async fn scale(&self, name: &str, replicas: u32) -> Result<()>;
    /// Deletes Deployment `name`; one that is already gone counts as deleted.
    async fn delete(&self, name: &str) -> Result<()>;
    /// Deployment `name`'s replicas: asked for and ready.
    async fn ready(&self, name: &str) -> Result<Replicas>;
}
