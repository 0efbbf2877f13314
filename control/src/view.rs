//! What the API shows and the CLI prints that is neither domain nor wire-only: how far a config
//! has reached, and weights as people read them.

use crate::observer::ProxyGeneration;

pub use crate::rollout::engine::percent;

/// How far the latest config has reached.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Propagation {
    /// The generation asked about.
    pub generation: u64,
    /// Proxies running it (or a later one).
    pub applied: usize,
    /// Proxies watched.
    pub total: usize,
    /// `applied on N/M proxies`.
    pub summary: String,
    /// Each proxy's answer.
    pub proxies: Vec<ProxyGeneration>,
}
