//! The kube edge of [`super::desired`]: a [`TrafficRouter`] that, before each push, reads each
//! configured route's `VirtualService` and `DestinationRule`, and writes what
//! [`super::desired::desired`] asks for.
//!
//! Each write is a JSON merge patch of `spec` alone carrying the `metadata.resourceVersion` it was
//! computed from: a concurrent writer (a person, a GitOps tool) makes it fail with 409, and the
//! router reads again and recomputes, so their edit is kept. Nothing is written when nothing
//! changes. The objects are never created or deleted: they are the user's.

use super::desired::{desired, ShapeError};
use crate::error::{Error, Result};
use crate::kube::{api_status, describe_error, is_conflict, FIELD_MANAGER};
use crate::router::wasmplugin::{merge_patch, MAX_CONFLICT_RETRIES};
use crate::router::{LiveConfig, PushError, TrafficRouter};
use async_trait::async_trait;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::Api;
use meshcanary_core::config::{FilterConfig, RouteConfig, DEFAULT_VARIANT_HEADER};
use serde_json::{json, Value};
use std::str::FromStr;

/// A filter route and the name of its `VirtualService` and `DestinationRule` (the flag
/// `--routing-objects <route>[=<name>]`; the name defaults to the route's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingObjects {
    /// The filter route's name.
    pub route: String,
    /// The name of both objects.
    pub name: String,
}

impl FromStr for RoutingObjects {
    type Err = String;

    fn from_str(text: &str) -> Result<RoutingObjects, String> {
        let (route, name) = text.split_once('=').unwrap_or((text, text));
        if route.is_empty() {
            return Err(format!("{text:?}: expected <route>[=<name>]"));
        }
        // A Kubernetes object name (RFC 1123 subdomain): what the API server would refuse anyway,
        // said at start-up instead of on every push.
        let valid_name = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !valid_name {
            return Err(format!(
                "{text:?}: {name:?} is not a Kubernetes object name (lowercase letters, digits, '-' and '.')"
            ));
        }
        Ok(RoutingObjects {
            route: route.to_string(),
            name: name.to_string(),
        })
    }
}

/// Istio's `networking.istio.io/v1` `VirtualService`.
pub fn virtual_service_resource() -> ApiResource {
    istio_networking("VirtualService", "virtualservices")
}

/// Istio's `networking.istio.io/v1` `DestinationRule`.
pub fn destination_rule_resource() -> ApiResource {
    istio_networking("DestinationRule", "destinationrules")
}

fn istio_networking(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "networking.istio.io".into(),
        version: "v1".into(),
        api_version: "networking.istio.io/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Why a route's routing objects could not be brought in line; each names the object.
#[derive(Debug, thiserror::Error)]
pub enum RoutingObjectsError {
    /// The object does not exist (404); the service never creates it.
    #[error("{object} does not exist; install it first (meshcanary only keeps its variant subsets and routes current)")]
    Missing {
        /// `VirtualService ns/name`.
        object: String,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },
    /// The service account may not read or write the object (403).
    #[error(
        "not allowed to {verb} {object}: {message} (a Role in its namespace must grant the \
         service account get and patch on {plural}.networking.istio.io with resourceNames \
         [{name}], as envoy-config/istio/bookinfo/rbac.yaml does)"
    )]
    Forbidden {
        /// `VirtualService ns/name`.
        object: String,
        /// `get` or `patch`.
        verb: &'static str,
        /// `virtualservices` or `destinationrules`.
        plural: String,
        /// The object's name.
        name: String,
        /// What the API server said.
        message: String,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },
    /// The object's spec is not one the service can work with.
    #[error("{object} {source}")]
    Unreadable {
        /// `VirtualService ns/name`.
        object: String,
        /// The field and what is wrong with it.
        #[source]
        source: ShapeError,
    },
    /// Any other failed call.
    #[error("{object}: {}", describe_error(source))]
    Api {
        /// `VirtualService ns/name`.
        object: String,
        /// The API server's answer, or the transport error.
        #[source]
        source: kube::Error,
    },
    /// The API server answered without a `resourceVersion`, which every write is conditional on.
    #[error("{object}: the API server returned no resourceVersion")]
    NoResourceVersion {
        /// `VirtualService ns/name`.
        object: String,
    },
    /// Someone else wrote the objects during every read-patch round trip.
    #[error("{object} changed under every one of {attempts} attempts; will retry")]
    Contended {
        /// `VirtualService ns/name`.
        object: String,
        /// How many round trips were tried.
        attempts: usize,
    },
}

impl RoutingObjectsError {
    /// The `error` label of a failed push: `routing_objects`.
    pub fn metric_label(&self) -> &'static str {
        "routing_objects"
    }
}

/// One of the two objects of a route: its API and how it is named in messages.
struct Object<'a> {
    api: &'a Api<DynamicObject>,
    resource: &'a ApiResource,
    namespace: &'a str,
    name: &'a str,
}

impl Object<'_> {
    fn describe(&self) -> String {
        format!("{} {}/{}", self.resource.kind, self.namespace, self.name)
    }

    fn error(&self, verb: &'static str, error: kube::Error) -> RoutingObjectsError {
        let object = self.describe();
        match api_status(&error) {
            Some((404, _, _)) => RoutingObjectsError::Missing {
                object,
                source: error,
            },
            Some((403, _, message)) => RoutingObjectsError::Forbidden {
                object,
                verb,
                plural: self.resource.plural.clone(),
                name: self.name.to_string(),
                message: message.to_string(),
                source: error,
            },
            _ => RoutingObjectsError::Api {
                object,
                source: error,
            },
        }
    }

    async fn get(&self) -> Result<(Value, String), RoutingObjectsError> {
        let object = self
            .api
            .get(self.name)
            .await
            .map_err(|error| self.error("get", error))?;
        let version = object.metadata.resource_version.clone().ok_or_else(|| {
            RoutingObjectsError::NoResourceVersion {
                object: self.describe(),
            }
        })?;
        let spec = object.data.get("spec").cloned().unwrap_or(Value::Null);
        Ok((spec, version))
    }

    /// Writes `desired` over `live`; `Ok(false)` when someone wrote the object since `version`.
    async fn patch(
        &self,
        live: &Value,
        desired: &Value,
        version: &str,
    ) -> Result<bool, RoutingObjectsError> {
        let Some(change) = merge_patch(live, desired) else {
            return Ok(true);
        };
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        let body = json!({"metadata": {"resourceVersion": version}, "spec": change});
        match self
            .api
            .patch(self.name, &params, &Patch::Merge(&body))
            .await
        {
            Ok(_) => Ok(true),
            Err(error) if is_conflict(&error) => Ok(false),
            Err(error) => Err(self.error("patch", error)),
        }
    }
}

/// Keeps the `VirtualService` and `DestinationRule` of each configured route in line with the
/// route's variants, then pushes the config through `inner`.
///
/// The objects are synced first, so that a new canary's subset and header route exist before the
/// filter sends it any traffic. A configured route the config does not hold is skipped with a
/// warning: the filter passes its requests through untouched (to the default route), so its
/// objects are left as they are, and refusing the push would also stop every other route.
pub struct RoutingObjectsRouter {
    inner: Box<dyn TrafficRouter>,
    objects: Vec<RoutingObjects>,
    namespace: String,
    virtual_services: Api<DynamicObject>,
    destination_rules: Api<DynamicObject>,
}

impl RoutingObjectsRouter {
    /// Wraps `inner`; the objects live in `namespace`.
    pub fn new(
        inner: Box<dyn TrafficRouter>,
        client: kube::Client,
        namespace: &str,
        objects: Vec<RoutingObjects>,
    ) -> RoutingObjectsRouter {
        RoutingObjectsRouter {
            inner,
            objects,
            namespace: namespace.to_string(),
            virtual_services: Api::namespaced_with(
                client.clone(),
                namespace,
                &virtual_service_resource(),
            ),
            destination_rules: Api::namespaced_with(
                client,
                namespace,
                &destination_rule_resource(),
            ),
        }
    }

    /// Brings the objects named `name` in line with `route`.
    async fn sync(
        &self,
        name: &str,
        route: &RouteConfig,
        header: &str,
    ) -> Result<(), RoutingObjectsError> {
        let (vs_resource, dr_resource) = (virtual_service_resource(), destination_rule_resource());
        let virtual_service = Object {
            api: &self.virtual_services,
            resource: &vs_resource,
            namespace: &self.namespace,
            name,
        };
        let destination_rule = Object {
            api: &self.destination_rules,
            resource: &dr_resource,
            namespace: &self.namespace,
            name,
        };
        for attempt in 1..=MAX_CONFLICT_RETRIES {
            let (dr_spec, dr_version) = destination_rule.get().await?;
            let (vs_spec, vs_version) = virtual_service.get().await?;
            let wanted = desired(&dr_spec, &vs_spec, route, header).map_err(|source| {
                let object = match source.kind {
                    "DestinationRule" => destination_rule.describe(),
                    _ => virtual_service.describe(),
                };
                RoutingObjectsError::Unreadable { object, source }
            })?;
            // The subset first: a header route naming a subset that does not exist yet makes
            // the proxies answer 503.
            if let Some(spec) = &wanted.destination_rule {
                if !destination_rule.patch(&dr_spec, spec, &dr_version).await? {
                    tracing::info!(object = %destination_rule.describe(), attempt, "changed while syncing; re-reading");
                    continue;
                }
            }
            if let Some(spec) = &wanted.virtual_service {
                if !virtual_service.patch(&vs_spec, spec, &vs_version).await? {
                    tracing::info!(object = %virtual_service.describe(), attempt, "changed while syncing; re-reading");
                    continue;
                }
            }
            if wanted.destination_rule.is_some() || wanted.virtual_service.is_some() {
                tracing::info!(route = %route.name, namespace = %self.namespace, %name, "routing objects updated for the route's variants");
            }
            return Ok(());
        }
        Err(RoutingObjectsError::Contended {
            object: format!("VirtualService/DestinationRule {}/{name}", self.namespace),
            attempts: MAX_CONFLICT_RETRIES,
        })
    }
}

#[async_trait]
impl TrafficRouter for RoutingObjectsRouter {
    async fn apply(&self, config: &FilterConfig) -> Result<()> {
        // Istio matches header names in lowercase.
        let header = config
            .variant_header
            .as_deref()
            .unwrap_or(DEFAULT_VARIANT_HEADER)
            .to_ascii_lowercase();
        for objects in &self.objects {
            let Some(route) = config
                .routes
                .iter()
                .find(|route| route.name == objects.route)
            else {
                tracing::warn!(route = %objects.route, "--routing-objects names a route the filter config does not have; its VirtualService and DestinationRule are left as they are");
                continue;
            };
            self.sync(&objects.name, route, &header)
                .await
                .map_err(|source| Error::Push {
                    target: format!("the routing objects of route {}", objects.route),
                    source: Box::new(PushError::RoutingObjects(source)),
                })?;
        }
        self.inner.apply(config).await
    }

    async fn live(&self) -> Result<LiveConfig> {
        self.inner.live().await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_names_a_route_and_optionally_its_objects() {
        // The flag, and the route and name it gives or a part of the error.
        type Expected = Result<(&'static str, &'static str), &'static str>;
        let cases: [(&str, Expected); 6] = [
            ("reviews", Ok(("reviews", "reviews"))),
            ("reviews=reviews-vs", Ok(("reviews", "reviews-vs"))),
            ("reviews=a.b-1", Ok(("reviews", "a.b-1"))),
            ("=reviews", Err("expected <route>[=<name>]")),
            ("reviews=", Err("is not a Kubernetes object name")),
            (
                "Reviews",
                Err("\"Reviews\" is not a Kubernetes object name"),
            ),
        ];
        for (text, expected) in cases {
            match (text.parse::<RoutingObjects>(), expected) {
                (Ok(got), Ok((route, name))) => {
                    assert_eq!((got.route.as_str(), got.name.as_str()), (route, name))
                }
                (Err(error), Err(want)) => assert!(error.contains(want), "{text}: {error}"),
                (got, want) => panic!("{text}: got {got:?}, expected {want:?}"),
            }
        }
    }
}
