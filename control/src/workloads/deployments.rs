//! [`WorkloadScaler`] over the Kubernetes API: reads a Deployment (`get` on `deployments`),
//! patches its `scale` subresource (`patch` on `deployments/scale`) and deletes it (`delete` on
//! `deployments`, for `scaleDown: delete`), as the control service's ServiceAccount, which the
//! shipped RBAC allows only on the Deployments it names.

use super::WorkloadScaler;
use crate::error::{Error, Result};
use crate::kube::{api_status, describe_error, FIELD_MANAGER};
use crate::rollout::Replicas;
use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

/// Why a Deployment could not be read or scaled; each names the Deployment.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    /// The Deployment does not exist (404).
    #[error("Deployment {object} does not exist")]
    Missing {
        /// `ns/name`.
        object: String,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },
    /// The ServiceAccount may not read or scale it (403).
    #[error(
        "not allowed to {verb} Deployment {object}: {message} (a Role in its namespace must grant \
         the service account get (and, for scaleDown: delete, delete) on deployments and patch on \
         deployments/scale with resourceNames naming it, as envoy-config/istio/bookinfo/rbac.yaml \
         does)"
    )]
    Forbidden {
        /// `ns/name`.
        object: String,
        /// `get`, `scale` or `delete`.
        verb: &'static str,
        /// What the API server said.
        message: String,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },
    /// Any other failed call.
    #[error("Deployment {object}: {}", describe_error(source))]
    Api {
        /// `ns/name`.
        object: String,
        /// The API server's answer, or the transport error.
        #[source]
        source: kube::Error,
    },
}

/// Scales the Deployments of one namespace.
#[derive(Clone)]
pub struct DeploymentScaler {
    api: Api<Deployment>,
    namespace: String,
}

impl std::fmt::Debug for DeploymentScaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeploymentScaler({})", self.namespace)
    }
}

impl DeploymentScaler {
    /// The Deployments of `namespace`.
    pub fn new(client: kube::Client, namespace: &str) -> DeploymentScaler {
        DeploymentScaler {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
        }
    }

    fn error(&self, name: &str, verb: &'static str, source: kube::Error) -> Error {
        let object = format!("{}/{name}", self.namespace);
        let error = match api_status(&source) {
            Some((404, _, _)) => DeploymentError::Missing { object, source },
            Some((403, _, message)) => DeploymentError::Forbidden {
                object,
                verb,
                message: message.to_string(),
                source,
            },
            _ => DeploymentError::Api { object, source },
        };
        Error::remote("Kubernetes API", error)
    }
}

#[async_trait]
impl WorkloadScaler for DeploymentScaler {
    async fn scale(&self, name: &str, replicas: u32) -> Result<()> {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        let body = json!({"spec": {"replicas": replicas}});
        self.api
            .patch_scale(name, &params, &Patch::Merge(&body))
            .await
            .map(|_| ())
            .map_err(|error| self.error(name, "scale", error))
    }

    async fn delete(&self, name: &str) -> Result<()> {
        match self.api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(error) if api_status(&error).is_some_and(|(code, _, _)| code == 404) => Ok(()),
            Err(error) => Err(self.error(name, "delete", error)),
        }
    }

    async fn ready(&self, name: &str) -> Result<Replicas> {
        let deployment = self
            .api
            .get(name)
            .await
            .map_err(|error| self.error(name, "get", error))?;
        let count = |n: Option<i32>| n.and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
        Ok(Replicas {
            // An unset spec.replicas means 1.
            desired: deployment.spec.replicas.map_or(1, |n| count(Some(n))),
            ready: count(deployment.status.and_then(|status| status.ready_replicas)),
        })
    }
}
