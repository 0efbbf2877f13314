//! Istio's routing objects for the filter's routes: keeps each route's `VirtualService` and
//! `DestinationRule` consistent with the variants the filter is given.

pub mod desired;
