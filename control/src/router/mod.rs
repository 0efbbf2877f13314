//! Where the filter config goes: the seam between the service and the proxies.

pub mod ecds_file;

use crate::error::Result;
use async_trait::async_trait;
use meshcanary_core::config::FilterConfig;

/// Delivers a complete filter config to the proxies. Applying the same config twice is harmless,
/// so the service simply re-applies after a restart or a failed push.
#[async_trait]
pub trait TrafficRouter: Send + Sync {
    /// Pushes `config` (every route, with its generation).
    async fn apply(&self, config: &FilterConfig) -> Result<()>;
    /// Where it pushes, for logs and status.
    fn describe(&self) -> String;
}
