//! What `meshcanary serve` sets in the controller besides its seams (store, router, observer):
//! the client rollout hooks are called with, and which finished rollouts are kept.

use crate::retention::Retention;
use crate::webhook;

/// The controller's settings; the default is what `serve` uses without flags.
#[derive(Debug, Clone, Default)]
pub struct ControllerOptions {
    /// Calls rollout hooks (`--webhook-ca-file` adds CAs it trusts).
    pub webhooks: webhook::Client,
    /// Which finished rollouts are kept (`--retain-finished*`).
    pub retention: Retention,
}
