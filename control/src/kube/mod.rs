//! What every piece of Kubernetes mode shares: how the API server's answers are read (conflict,
//! not found, a one-line description), the field manager and the managed-by label. The pieces
//! themselves sit with what they are:
//!
//! - [`crate::router::wasmplugin::WasmPluginRouter`] pushes the filter config into an Istio
//!   `WasmPlugin`'s `spec.pluginConfig`, and nothing else, by server-side apply under its own field
//!   manager with optimistic concurrency; it reads back what a `WasmPlugin` holds so that a service
//!   without state adopts it ([`crate::controller::adopt`]);
//! - [`crate::router::wasmplugin::drift`] notices when someone (a person with `kubectl edit`, a
//!   GitOps tool reverting) changes that `pluginConfig` behind the service's back, or deletes it;
//! - [`crate::store::configmap::ConfigMapStore`] keeps the service state in one ConfigMap, so a
//!   restarted or rescheduled pod resumes where the last one stopped;
//! - [`crate::leader::lease::LeaderElector`] elects one active replica with a
//!   `coordination.k8s.io/v1` Lease, so several replicas can run while exactly one of them writes;
//! - [`crate::router::routing_objects::sync::RoutingObjectsRouter`] keeps the Istio
//!   `VirtualService` and `DestinationRule` of each `--routing-objects` route in line with its
//!   variants before each push.
//!
//! Every write carries the `metadata.resourceVersion` it was computed from: the API server refuses
//! it with 409 Conflict if anyone wrote in between, so no write is ever lost silently.
//!
//! RBAC the service account needs (`envoy-config/istio/` grants exactly this, by name): `get`,
//! `list`, `watch` (with the field selector `metadata.name=<plugin>`) and `patch` on its one
//! `wasmplugins.extensions.istio.io`; `get` and `update` on its state ConfigMap and its Lease, and
//! `create` on `configmaps` and `coordination.k8s.io` `leases` of its own namespace (RBAC cannot
//! restrict `create` by name); with `--routing-objects`, `get` and `patch` on each of those
//! `virtualservices` and `destinationrules.networking.istio.io`, by name.

/// The field manager meshcanary's writes are recorded under in `metadata.managedFields`.
pub const FIELD_MANAGER: &str = "meshcanary";
/// The label key on every object meshcanary creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "meshcanary";

/// The API server's answer to a failed call, if it answered: `(code, reason, message)`.
pub(crate) fn api_status(error: &kube::Error) -> Option<(u16, &str, &str)> {
    match error {
        kube::Error::Api(status) => Some((status.code, &status.reason, &status.message)),
        _ => None,
    }
}

/// Whether the API server refused a write because the object changed since it was read.
pub(crate) fn is_conflict(error: &kube::Error) -> bool {
    api_status(error).is_some_and(|(code, _, _)| code == 409)
}

/// Whether the object does not exist.
pub(crate) fn is_not_found(error: &kube::Error) -> bool {
    api_status(error).is_some_and(|(code, _, _)| code == 404)
}

/// A one-line description of a failed call: the API server's message when it gave one (it names
/// the object and the field), otherwise the transport error.
pub(crate) fn describe_error(error: &kube::Error) -> String {
    match api_status(error) {
        Some((code, reason, message)) if !message.is_empty() => {
            format!("{message} ({code} {reason})")
        }
        Some((code, reason, _)) => format!("{code} {reason}"),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    #[test]
    fn errors_are_classified_and_described() {
        let status = |code, reason: &str, message: &str| {
            kube::Error::Api(Status::failure(message, reason).with_code(code).boxed())
        };
        let cases = [
            (
                status(409, "Conflict", "the object has been modified"),
                true,
                false,
                "the object has been modified (409 Conflict)",
            ),
            (
                status(404, "NotFound", "wasmplugins \"x\" not found"),
                false,
                true,
                "wasmplugins \"x\" not found (404 NotFound)",
            ),
            (status(422, "Invalid", ""), false, false, "422 Invalid"),
        ];
        for (error, conflict, not_found, text) in cases {
            assert_eq!(is_conflict(&error), conflict, "{error}");
            assert_eq!(is_not_found(&error), not_found, "{error}");
            assert_eq!(describe_error(&error), text);
        }
        let transport = kube::Error::LinesCodecMaxLineLengthExceeded;
        assert!(!is_conflict(&transport) && !is_not_found(&transport));
        assert_eq!(describe_error(&transport), transport.to_string());
    }
}
