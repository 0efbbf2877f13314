//! Where the service keeps its state between runs.

pub mod configmap;
pub mod file;
pub mod resources;

use crate::error::Result;
use crate::state::ServiceState;
use async_trait::async_trait;

/// Durable storage for [`ServiceState`]. `save` is atomic: after a crash at any moment, `load`
/// returns either the state before or the state after the save, never a mix.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// The last saved state, or `None` on first start.
    async fn load(&self) -> Result<Option<ServiceState>>;
    /// Replaces the saved state.
    async fn save(&self, state: &ServiceState) -> Result<()>;
    /// Where the state lives, for logs.
    fn describe(&self) -> String;
}
