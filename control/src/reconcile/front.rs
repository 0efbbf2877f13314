//! The HTTP API's rollouts as MeshRollouts (Kubernetes mode): a rollout created with
//! `POST /v1/rollouts` is a MeshRollout `kubectl get mro` lists, started by the same reconciler
//! as one a GitOps tool applied, and `DELETE /v1/rollouts/{name}` deletes it. Standalone, the
//! API keeps writing the service's state directly (there is no resource to create).
//!
//! The API answers as before: a body the service would refuse is refused at once, with the
//! field, and leaves no resource behind ([`Controller::check_create`] runs the create's checks
//! first); a created resource is answered once its rollout runs.

use super::decide::ServiceTarget;
use crate::controller::Controller;
use crate::crd::{MeshRollout, MeshRolloutSpec, Target};
use crate::error::{Error, Result};
use crate::kube::{describe_error, is_conflict, is_not_found, MANAGED_BY, MANAGED_BY_LABEL};
use crate::rollout::{Rollout, RolloutSpec};
use async_trait::async_trait;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The field manager of the resources the API creates.
pub const API_FIELD_MANAGER: &str = "meshcanary-api";
/// The annotation saying a MeshRollout was created through the HTTP API (value `api`).
pub const CREATED_BY: &str = "meshcanary.io/created-by";
/// How long a create waits for the reconciler to start the resource's rollout.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How often it looks.
const START_POLL: Duration = Duration::from_millis(50);

/// Where the API's rollouts live besides the service's state.
#[async_trait]
pub trait RolloutResources: Send + Sync {
    /// Creates the resource of rollout `spec` and answers with the rollout once it runs.
    async fn create(&self, spec: RolloutSpec) -> Result<Rollout>;
    /// Deletes rollout `name`'s resource, if it has one.
    async fn delete(&self, name: &str) -> Result<()>;
}

/// The API's rollouts as MeshRollouts in the service's namespace.
pub struct MeshRolloutFront {
    controller: Arc<Controller>,
    api: Api<MeshRollout>,
    namespace: String,
    target: ServiceTarget,
}

impl MeshRolloutFront {
    /// Rollouts of `controller` (which drives `target`) as MeshRollouts in `namespace`.
    pub fn new(
        controller: Arc<Controller>,
        client: kube::Client,
        namespace: &str,
        target: ServiceTarget,
    ) -> MeshRolloutFront {
        MeshRolloutFront {
            controller,
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            target,
        }
    }

    fn resource(&self, spec: &RolloutSpec) -> MeshRollout {
        let target = Target {
            wasm_plugin: self.target.wasm_plugin.clone(),
            namespace: Some(self.target.namespace.clone()),
        };
        let mut resource = MeshRollout::new(
            &spec.name,
            MeshRolloutSpec::from_rollout_spec(spec, target, false),
        );
        resource.metadata = ObjectMeta {
            name: Some(spec.name.clone()),
            namespace: Some(self.namespace.clone()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_string(),
                MANAGED_BY.to_string(),
            )])),
            annotations: Some(BTreeMap::from([(
                CREATED_BY.to_string(),
                "api".to_string(),
            )])),
            ..ObjectMeta::default()
        };
        resource
    }

    fn remote(&self, what: &str, name: &str, error: &kube::Error) -> Error {
        Error::Unavailable(format!(
            "cannot {what} MeshRollout {}/{name}: {}",
            self.namespace,
            describe_error(error)
        ))
    }

    /// Waits until the reconciler runs the created resource's rollout, or refuses it (then the
    /// resource goes, and the refusal is the answer).
    async fn started(&self, name: &str) -> Result<Rollout> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let mut polls = 0u32;
        loop {
            if let Ok(rollout) = self.controller.get(name).await {
                return Ok(rollout);
            }
            polls += 1;
            if polls.is_multiple_of(10) {
                if let Some(refusal) = self.refusal(name).await? {
                    self.delete(name).await?;
                    return Err(refusal);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "MeshRollout {ns}/{name} is created, but its rollout did not start within {}s; `kubectl describe mro {name} -n {ns}` says why",
                    START_TIMEOUT.as_secs(),
                    ns = self.namespace
                )));
            }
            tokio::time::sleep(START_POLL).await;
        }
    }

    /// The reconciler's refusal of resource `name`, as the API's error.
    async fn refusal(&self, name: &str) -> Result<Option<Error>> {
        let resource = self
            .api
            .get_opt(name)
            .await
            .map_err(|error| self.remote("read", name, &error))?;
        let Some(resource) = resource else {
            return Ok(Some(Error::Conflict(format!(
                "MeshRollout {}/{name} was deleted before its rollout started",
                self.namespace
            ))));
        };
        let Some(status) = &resource.status else {
            return Ok(None);
        };
        let refused = status.condition("Progressing").filter(|c| {
            c.status == "False"
                && c.observed_generation == resource.metadata.generation
                && matches!(c.reason.as_str(), "Refused" | "InvalidSpec")
        });
        Ok(refused.map(|c| from_spec_error(&c.message)))
    }
}

#[async_trait]
impl RolloutResources for MeshRolloutFront {
    async fn create(&self, spec: RolloutSpec) -> Result<Rollout> {
        self.controller.check_create(&spec).await?;
        let params = PostParams {
            field_manager: Some(API_FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        let name = spec.name.clone();
        match self.api.create(&params, &self.resource(&spec)).await {
            Ok(_) => {}
            Err(error) if is_conflict(&error) => {
                return Err(Error::Conflict(format!(
                    "rollout {name} already exists: MeshRollout {}/{name} (delete it to start a new run under this name)",
                    self.namespace
                )))
            }
            Err(error) => return Err(self.remote("create", &name, &error)),
        }
        tracing::info!(rollout = %name, namespace = %self.namespace, "created MeshRollout for an API rollout");
        self.started(&name).await
    }

    async fn delete(&self, name: &str) -> Result<()> {
        match self.api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(self.remote("delete", name, &error)),
        }
    }
}

/// A refusal's message (`spec.route: "x" is not a route …`) as the API's error, naming the
/// field as the API's body does (`route`).
fn from_spec_error(message: &str) -> Error {
    match message
        .strip_prefix("spec.")
        .and_then(|rest| rest.split_once(": "))
    {
        Some((field, reason)) if !field.contains(' ') => Error::invalid(field, reason),
        _ => Error::Conflict(message.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_bodys_field() {
        let cases = [
            (
                "spec.route: \"x\" is not a route of the filter config",
                Some(("route", "\"x\" is not a route of the filter config")),
            ),
            (
                "spec.steps[1].setWeight.percent: too big",
                Some(("steps[1].setWeight.percent", "too big")),
            ),
            ("rollout r is already running with another spec", None),
            ("metadata.name: taken", None),
        ];
        for (message, expected) in cases {
            match (from_spec_error(message), expected) {
                (Error::Invalid { field, reason }, Some((f, r))) => {
                    assert_eq!((field.as_str(), reason.as_str()), (f, r), "{message}")
                }
                (Error::Conflict(text), None) => assert_eq!(text, message),
                (other, _) => panic!("{message}: {other:?}"),
            }
        }
    }
}
