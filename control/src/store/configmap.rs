//! The service state in the cluster: one ConfigMap holding the whole [`ServiceState`] as JSON.
//!
//! One object, not one per rollout: the API server writes a single object atomically, so `load`
//! sees the state before or after a `save`, never half of one, without a generation pointer or a
//! second write that a crash could separate from the first. The cost is the 1 MiB limit on a
//! ConfigMap's data, which holds hundreds of rollouts (a rollout is a few KiB of JSON); `save`
//! checks the size first and asks for finished rollouts to be deleted rather than failing at the
//! API server or dropping history on its own.
//!
//! Every write is conditional on the `resourceVersion` the store last read or wrote, so nothing
//! anyone else wrote in between is overwritten blindly. On 409 Conflict the store reads the
//! ConfigMap again and looks at what changed:
//! - only its metadata (a label or annotation added by a backup tool or `kubectl annotate`):
//!   the state is still what this store wrote, so it writes again on top, keeping their metadata;
//! - the state itself (another replica that believed it led, a person restoring a backup): that
//!   is a real conflict, answered with [`Error::StateConflict`]; the store refuses further writes
//!   until it is loaded again, and the service re-reads the state and applies its change on top.

use crate::error::{Error, Result};
use crate::kube::{describe_error, is_conflict, is_not_found, MANAGED_BY, MANAGED_BY_LABEL};
use crate::state::ServiceState;
use crate::store::StateStore;
use async_trait::async_trait;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use std::collections::BTreeMap;
use tokio::sync::Mutex;

/// The data key the state is stored under.
pub const STATE_KEY: &str = "state.json";
/// The most data a ConfigMap may hold: the API server rejects larger ones.
pub const MAX_CONFIGMAP_DATA: usize = 1024 * 1024;
/// How many times a save writes again after someone else edited only the ConfigMap's metadata.
const METADATA_RETRIES: usize = 5;

/// The state text a ConfigMap holds, if any.
fn state_text(object: &ConfigMap) -> Option<&str> {
    object.data.as_ref()?.get(STATE_KEY).map(String::as_str)
}

/// [`ServiceState`] in the ConfigMap `namespace/name`, labelled
/// `app.kubernetes.io/managed-by: meshcanary`.
pub struct ConfigMapStore {
    api: Api<ConfigMap>,
    namespace: String,
    name: String,
    /// What this store last saw of the ConfigMap; every write is conditional on it.
    seen: Mutex<Seen>,
}

/// The ConfigMap as this store last read or wrote it.
enum Seen {
    /// Not loaded yet: a save may only create the ConfigMap.
    Unread,
    /// It did not exist.
    Absent,
    /// It existed; writes carry its resourceVersion and keep its other metadata.
    Object(Box<ConfigMap>),
    /// Someone else wrote it: no more writes until the next load.
    Conflicted,
}

impl ConfigMapStore {
    /// A store for the ConfigMap `namespace/name`; it is created on the first save.
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> ConfigMapStore {
        ConfigMapStore {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            seen: Mutex::new(Seen::Unread),
        }
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Error::Store {
            path: self.describe(),
            source: std::io::Error::other(message.into()),
        }
    }

    fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::CorruptState {
            path: self.describe(),
            reason: reason.into(),
        }
    }

    fn conflict(&self, reason: impl Into<String>) -> Error {
        Error::StateConflict {
            path: self.describe(),
            reason: reason.into(),
        }
    }
}

#[async_trait]
impl StateStore for ConfigMapStore {
    async fn load(&self) -> Result<Option<ServiceState>> {
        let mut seen = self.seen.lock().await;
        let Some(object) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|error| self.error(describe_error(&error)))?
        else {
            *seen = Seen::Absent;
            return Ok(None);
        };
        let managed = object
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(MANAGED_BY_LABEL))
            .is_some_and(|value| value == MANAGED_BY);
        if !managed {
            // Never take over (and later overwrite) a ConfigMap someone else made.
            return Err(self.error(format!(
                "the ConfigMap exists but is not labelled {MANAGED_BY_LABEL}: {MANAGED_BY}; \
                 refusing to use it (pick another name, or label it if it is meshcanary's)"
            )));
        }
        let text = object
            .data
            .as_ref()
            .and_then(|data| data.get(STATE_KEY))
            .ok_or_else(|| self.corrupt(format!("data.{STATE_KEY} is missing")))?;
        let state = parse_state(text).map_err(|reason| self.corrupt(reason))?;
        *seen = Seen::Object(Box::new(object));
        Ok(Some(state))
    }

    async fn save(&self, state: &ServiceState) -> Result<()> {
        let text = serde_json::to_string(state)
            .map_err(|error| self.corrupt(format!("cannot serialise the state: {error}")))?;
        check_size(&text).map_err(|message| self.error(message))?;
        let mut seen = self.seen.lock().await;
        for _ in 0..METADATA_RETRIES {
            let written = match &*seen {
                Seen::Conflicted => {
                    return Err(self.conflict(
                        "another writer changed the ConfigMap since this replica last read it; \
                         refusing to overwrite it until the state is loaded again",
                    ))
                }
                Seen::Unread | Seen::Absent => {
                    let object = ConfigMap {
                        metadata: ObjectMeta {
                            name: Some(self.name.clone()),
                            namespace: Some(self.namespace.clone()),
                            labels: Some(managed_labels(None)),
                            ..ObjectMeta::default()
                        },
                        data: Some(BTreeMap::from([(STATE_KEY.to_string(), text.clone())])),
                        ..ConfigMap::default()
                    };
                    match self.api.create(&PostParams::default(), &object).await {
                        Ok(written) => written,
                        Err(error) if is_conflict(&error) => {
                            let message = match *seen {
                                Seen::Unread => {
                                    "the ConfigMap already exists and this store has not \
                                    loaded it; refusing to overwrite it (load before saving)"
                                }
                                _ => {
                                    "another writer created the ConfigMap first; refusing to \
                                    overwrite it (is a second meshcanary replica running without \
                                    leader election?)"
                                }
                            };
                            *seen = Seen::Conflicted;
                            return Err(self.conflict(message));
                        }
                        Err(error) => return Err(self.error(describe_error(&error))),
                    }
                }
                Seen::Object(current) => {
                    let mut object = (**current).clone();
                    // Our data and label, their everything else (annotations, other labels);
                    // resourceVersion stays what we read: the precondition.
                    object.metadata.labels = Some(managed_labels(object.metadata.labels.take()));
                    object.metadata.managed_fields = None;
                    object.data = Some(BTreeMap::from([(STATE_KEY.to_string(), text.clone())]));
                    object.binary_data = None;
                    match self
                        .api
                        .replace(&self.name, &PostParams::default(), &object)
                        .await
                    {
                        Ok(written) => written,
                        Err(error) if is_conflict(&error) || is_not_found(&error) => {
                            let ours = state_text(current).map(str::to_string);
                            let now = self
                                .api
                                .get_opt(&self.name)
                                .await
                                .map_err(|error| self.error(describe_error(&error)))?;
                            match now {
                                // Only its metadata changed: write again on top of it.
                                Some(now)
                                    if ours.is_some() && state_text(&now) == ours.as_deref() =>
                                {
                                    tracing::info!(configmap = %self.describe(), "the ConfigMap's metadata was edited by someone else; writing the state on top");
                                    *seen = Seen::Object(Box::new(now));
                                    continue;
                                }
                                now => {
                                    let expected = current.metadata.resource_version.clone();
                                    *seen = Seen::Conflicted;
                                    let version = match now {
                                        Some(now) => {
                                            now.metadata.resource_version.unwrap_or_default()
                                        }
                                        None => "deleted".to_string(),
                                    };
                                    return Err(self.conflict(format!(
                                        "another writer changed the state in the ConfigMap (resourceVersion now {version}, \
                                         this replica wrote {}); re-read it before writing",
                                        expected.unwrap_or_default()
                                    )));
                                }
                            }
                        }
                        Err(error) => return Err(self.error(describe_error(&error))),
                    }
                }
            };
            *seen = Seen::Object(Box::new(written));
            return Ok(());
        }
        Err(self.error(format!(
            "the ConfigMap's metadata changed under every one of {METADATA_RETRIES} writes; will retry"
        )))
    }

    fn describe(&self) -> String {
        format!("ConfigMap {}/{}", self.namespace, self.name)
    }
}

/// `labels` with meshcanary's managed-by label set.
fn managed_labels(labels: Option<BTreeMap<String, String>>) -> BTreeMap<String, String> {
    let mut labels = labels.unwrap_or_default();
    labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string());
    labels
}

/// Refuses state that would not fit in a ConfigMap. The API server counts the data values; the
/// key is counted too, to stay on the safe side.
fn check_size(text: &str) -> Result<(), String> {
    let size = STATE_KEY.len() + text.len();
    if size > MAX_CONFIGMAP_DATA {
        return Err(format!(
            "the state is {size} bytes, more than the {MAX_CONFIGMAP_DATA} bytes a ConfigMap holds; \
             delete finished rollouts to make room"
        ));
    }
    Ok(())
}

fn parse_state(text: &str) -> Result<ServiceState, String> {
    serde_json::from_str(text).map_err(|error| format!("data.{STATE_KEY}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_limit() {
        let room = MAX_CONFIGMAP_DATA - STATE_KEY.len();
        for (len, ok) in [(0, true), (room, true), (room + 1, false)] {
            let result = check_size(&"x".repeat(len));
            assert_eq!(result.is_ok(), ok, "{len}");
            if let Err(message) = result {
                assert!(message.contains("delete finished rollouts"), "{message}");
            }
        }
    }

    #[test]
    fn labels_keep_others_and_add_ours() {
        let theirs = BTreeMap::from([("team".to_string(), "payments".to_string())]);
        let labels = managed_labels(Some(theirs));
        assert_eq!(labels.get("team").map(String::as_str), Some("payments"));
        assert_eq!(
            labels.get(MANAGED_BY_LABEL).map(String::as_str),
            Some(MANAGED_BY)
        );
        assert_eq!(managed_labels(None).len(), 1);
    }

    #[test]
    fn parse_errors_name_the_key() {
        let empty = serde_json::to_string(&ServiceState::default()).unwrap();
        assert_eq!(parse_state(&empty), Ok(ServiceState::default()));
        let error = parse_state("{\"filter\": 3}").unwrap_err();
        assert!(
            error.starts_with("data.state.json: invalid type"),
            "{error}"
        );
    }
}
