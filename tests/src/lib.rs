//! End-to-end test harness: starts real Envoy with the filter, upstream servers and a client.
