//! Istio's routing objects for the filter's routes: keeps each route's `VirtualService` and
//! `DestinationRule` consistent with the variants the filter is given, so that a new canary gets
//! its subset and header route, a retired one loses its route, and a promotion moves the default
//! route, without a person editing them (`--routing-objects`).
//!
//! [`desired`] decides what the objects must hold (pure); [`sync`] reads and writes them around
//! each push.

pub mod desired;
pub mod sync;
