//! Leader election: of several replicas of the service, exactly one writes and runs rollouts,
//! the others serve reads and take over when it goes away. [`lease`] elects on a
//! `coordination.k8s.io/v1` Lease.

pub mod lease;

pub use lease::LeaderState;
