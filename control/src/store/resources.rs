//! The service state in Kubernetes mode with MeshRollouts: a rollout a MeshRollout started lives
//! in that resource's `status.run`, the durable record of it (like Argo Rollouts and Flagger,
//! whose resources' status is their rollout's state); the ConfigMap keeps only what has no
//! resource — the filter config as last pushed (the WasmPlugin carries it to the proxies; the copy
//! tells a hand edit from the service's own), retirements, rollouts created before the resource
//! existed — and, per rollout kept in a resource, which run the filter config reflects.
//!
//! A save writes every changed record first, then the rest. The two are separate objects, so a
//! crash can fall between them; [`ServiceState::restore_runs`] makes a loaded state whole again,
//! the record being what counts. Each record write is conditional: it carries the
//! `resourceVersion` this store last saw, and on 409 Conflict the store reads the resource again
//! and writes again only if `status.run` is still the record it wrote (someone else changed
//! the spec, the view or the finalizer); a record it did not write means another writer (a
//! replica that believes it leads) — [`Error::StateConflict`], as the ConfigMap answers.
//!
//! Which rollouts live in resources is the reconciler's to say ([`Claims`]): it claims a name
//! before it starts that resource's run and releases it once the resource is gone; at load,
//! every resource with a record is claimed. A rollout nobody claimed stays in the ConfigMap.
//!
//! Migration from a ConfigMap that held every rollout is automatic: a MeshRollout whose run is
//! still only in the ConfigMap is claimed as the reconciler takes it over, and the next save
//! moves it into the resource.

use crate::crd::{MeshRollout, STATE_FIELD_MANAGER};
use crate::error::{Error, Result};
use crate::kube::{describe_error, is_conflict, is_not_found};
use crate::rollout::Rollout;
use crate::state::{RunRef, ServiceState};
use crate::store::configmap::ConfigMapStore;
use crate::store::StateStore;
use async_trait::async_trait;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

/// How many times a record write reads the resource again after someone else changed other
/// parts of it.
const CONFLICT_RETRIES: usize = 5;

/// The names of the rollouts kept in their MeshRollout (shared by the reconciler and the store).
#[derive(Debug, Default)]
pub struct Claims {
    names: Mutex<BTreeSet<String>>,
}

impl Claims {
    /// Rollout `name` lives in the MeshRollout of that name from the next save on.
    pub fn claim(&self, name: &str) {
        self.lock().insert(name.to_string());
    }

    /// Rollout `name` no longer has a resource: the next save keeps it in the ConfigMap.
    pub fn release(&self, name: &str) {
        self.lock().remove(name);
    }

    /// Whether rollout `name` lives in its resource.
    pub fn contains(&self, name: &str) -> bool {
        self.lock().contains(name)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // A panic elsewhere cannot leave a set of names half-changed.
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The state split between MeshRollouts' `status.run` and a ConfigMap (see the module docs).
pub struct ResourceStore {
    rest: ConfigMapStore,
    api: Api<MeshRollout>,
    namespace: String,
    claims: Arc<Claims>,
    /// Per claimed resource: the record this store last wrote or read there, and the
    /// resourceVersion it saw then.
    records: tokio::sync::Mutex<BTreeMap<String, Seen>>,
    /// The rest as last saved: a save that changes only records does not write the ConfigMap.
    saved_rest: tokio::sync::Mutex<Option<ServiceState>>,
}

/// A resource's record as this store last saw it.
#[derive(Debug, Clone)]
struct Seen {
    record: Option<Rollout>,
    resource_version: String,
    has_status: bool,
}

/// How a record write ended.
enum Written {
    Done,
    /// The resource is gone: the rollout goes back to the ConfigMap.
    Gone,
}

impl ResourceStore {
    /// A store keeping rollouts `claims` names in the MeshRollouts of `namespace` and the rest
    /// in `rest`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        rest: ConfigMapStore,
        claims: Arc<Claims>,
    ) -> ResourceStore {
        ResourceStore {
            rest,
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            claims,
            records: tokio::sync::Mutex::new(BTreeMap::new()),
            saved_rest: tokio::sync::Mutex::new(None),
        }
    }

    fn where_(&self, name: &str) -> String {
        format!("MeshRollout {}/{name} status.run", self.namespace)
    }

    fn remote(&self, name: &str, error: &kube::Error) -> Error {
        Error::Store {
            path: self.where_(name),
            source: std::io::Error::other(describe_error(error)),
        }
    }

    /// Reads resource `name`: its record and where it stands, or `None` when it is gone.
    async fn read(&self, name: &str) -> Result<Option<Seen>> {
        let Some(resource) = self
            .api
            .get_opt(name)
            .await
            .map_err(|error| self.remote(name, &error))?
        else {
            return Ok(None);
        };
        self.seen(&resource).map(Some)
    }

    fn seen(&self, resource: &MeshRollout) -> Result<Seen> {
        let name = resource.name_any();
        let record = match &resource.status {
            Some(status) => status.run().map_err(|error| Error::CorruptState {
                path: self.where_(&name),
                reason: format!(
                    "{}: {}; fix or remove it (meshcanary will not act on it)",
                    error.path(),
                    error.inner()
                ),
            })?,
            None => None,
        };
        if let Some(record) = &record {
            if record.spec.name != name {
                return Err(Error::CorruptState {
                    path: self.where_(&name),
                    reason: format!(
                        "spec.name: {:?} is not the resource's name; fix or remove it",
                        record.spec.name
                    ),
                });
            }
        }
        Ok(Seen {
            record,
            resource_version: resource.resource_version().unwrap_or_default(),
            has_status: resource.status.is_some(),
        })
    }

    /// Writes `rollout` into its resource's `status.run`, conditional on what this store saw
    /// there (see the module docs).
    async fn write(
        &self,
        records: &mut BTreeMap<String, Seen>,
        rollout: &Rollout,
    ) -> Result<Written> {
        let name = rollout.spec.name.as_str();
        if records
            .get(name)
            .is_some_and(|seen| seen.record.as_ref() == Some(rollout))
        {
            return Ok(Written::Done);
        }
        let value = serde_json::to_value(rollout).map_err(|error| {
            Error::Internal(format!("cannot serialise rollout {name}: {error}"))
        })?;
        for _ in 0..CONFLICT_RETRIES {
            let seen = match records.get(name) {
                Some(seen) => seen.clone(),
                None => match self.read(name).await? {
                    Some(seen) => seen,
                    None => return Ok(Written::Gone),
                },
            };
            // `add` replaces the whole member: fields the new record leaves out do not linger.
            let set_record = if seen.has_status {
                json!({"op": "add", "path": "/status/run", "value": value})
            } else {
                json!({"op": "add", "path": "/status", "value": {"run": value}})
            };
            let patch: json_patch::Patch = serde_json::from_value(json!([
                {"op": "replace", "path": "/metadata/resourceVersion", "value": seen.resource_version},
                set_record,
            ]))
            .map_err(|error| Error::Internal(format!("record patch: {error}")))?;
            let params = PatchParams {
                field_manager: Some(STATE_FIELD_MANAGER.into()),
                ..PatchParams::default()
            };
            match self
                .api
                .patch_status(name, &params, &Patch::Json::<()>(patch))
                .await
            {
                Ok(written) if written.status.as_ref().is_none_or(|s| s.run.is_none()) => {
                    // The API server pruned the field: its CRD predates `status.run`.
                    return Err(Error::Store {
                        path: self.where_(name),
                        source: std::io::Error::other(
                            "the API server dropped status.run: the MeshRollout CRD installed is \
                             older than this service; apply envoy-config/istio/meshrollout-crd.yaml \
                             of this version",
                        ),
                    });
                }
                Ok(written) => {
                    records.insert(
                        name.to_string(),
                        Seen {
                            record: Some(rollout.clone()),
                            resource_version: written.resource_version().unwrap_or_default(),
                            has_status: true,
                        },
                    );
                    return Ok(Written::Done);
                }
                Err(error) if is_not_found(&error) => {
                    records.remove(name);
                    return Ok(Written::Gone);
                }
                Err(error) if is_conflict(&error) => {
                    let Some(now) = self.read(name).await? else {
                        records.remove(name);
                        return Ok(Written::Gone);
                    };
                    if records.contains_key(name) && now.record != seen.record {
                        records.remove(name);
                        return Err(Error::StateConflict {
                            path: self.where_(name),
                            reason: "another writer changed the rollout's record since this \
                                     replica last read it; refusing to overwrite it"
                                .into(),
                        });
                    }
                    // Someone changed other parts (the spec, the view, the finalizer): again,
                    // on top of what they wrote.
                    records.insert(name.to_string(), now);
                }
                Err(error) => return Err(self.remote(name, &error)),
            }
        }
        Err(Error::StateConflict {
            path: self.where_(name),
            reason: format!("the resource kept changing under {CONFLICT_RETRIES} writes in a row"),
        })
    }
}

#[async_trait]
impl StateStore for ResourceStore {
    async fn load(&self) -> Result<Option<ServiceState>> {
        let mut records = self.records.lock().await;
        records.clear();
        *self.saved_rest.lock().await = None;
        let rest = self.rest.load().await?;
        let resources = self
            .api
            .list(&ListParams::default())
            .await
            .map_err(|error| Error::Store {
                path: format!("MeshRollouts in {}", self.namespace),
                source: std::io::Error::other(describe_error(&error)),
            })?;
        let mut runs = Vec::new();
        for resource in &resources.items {
            let seen = self.seen(resource)?;
            if let Some(record) = &seen.record {
                self.claims.claim(&record.spec.name);
                runs.push(record.clone());
            }
            records.insert(resource.name_any(), seen);
        }
        let Some(mut state) = rest else {
            if !runs.is_empty() {
                // The records alone lack the filter config they drive; starting without them
                // would push a config that forgets their canaries.
                return Err(Error::CorruptState {
                    path: self.rest.describe(),
                    reason: format!(
                        "the ConfigMap is missing but {} MeshRollouts hold rollout records; restore it from a backup, or delete their status to start over",
                        runs.len()
                    ),
                });
            }
            return Ok(None);
        };
        for note in state.restore_runs(runs) {
            tracing::warn!("{note}");
        }
        Ok(Some(state))
    }

    async fn save(&self, state: &ServiceState) -> Result<()> {
        let mut records = self.records.lock().await;
        let mut rest = state.clone();
        for (name, rollout) in &state.rollouts {
            if !self.claims.contains(name) {
                continue;
            }
            match self.write(&mut records, rollout).await? {
                Written::Done => {
                    rest.rollouts.remove(name);
                    rest.kept_elsewhere
                        .insert(name.clone(), RunRef::of(rollout));
                }
                Written::Gone => {
                    tracing::info!(rollout = %name, "its MeshRollout is gone: the rollout is kept in the ConfigMap");
                    self.claims.release(name);
                }
            }
        }
        let mut saved_rest = self.saved_rest.lock().await;
        if saved_rest.as_ref() == Some(&rest) {
            return Ok(());
        }
        *saved_rest = None;
        self.rest.save(&rest).await?;
        *saved_rest = Some(rest);
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "{} with rollout records in MeshRollouts/{}",
            self.rest.describe(),
            self.namespace
        )
    }
}
