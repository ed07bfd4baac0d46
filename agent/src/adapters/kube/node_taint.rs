//! Removes pullgate's own start-up taint from this Node, and nothing else.
//!
//! The patch is a JSON patch on the index where the taint was read: `test` that the element
//! there has our key and effect (what identifies a taint; not its other fields, which a newer
//! server may add to), then `remove` it. The API server
//! applies both to one version of the object, so a concurrent change to the node's other taints
//! (another controller adding or removing one, which shifts the indexes) makes the `test` fail
//! instead of removing the wrong taint; the agent then reads the Node again and retries, a few
//! times with a short jittered backoff (backon), before it gives up ([`TaintError::Contended`]) and
//! leaves the next try to the reporter's own backoff.

use crate::decide::retry::ApiErrorKind;
use backon::BackoffBuilder as _;
use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::{Api, Patch};
use serde_json::json;
use std::time::Duration;

/// Re-reads of the Node after a failed `test`, before giving up for this round.
const CONTENDED_TRIES: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum TaintError {
    #[error("cannot read node {node}: {source}")]
    Get { node: String, source: kube::Error },
    #[error("cannot remove taint {key}:{effect} from node {node}: {source}")]
    Patch {
        node: String,
        key: String,
        effect: String,
        source: kube::Error,
    },
    #[error("taint {key}:{effect} on node {node} kept moving under concurrent changes; will retry")]
    Contended {
        node: String,
        key: String,
        effect: String,
    },
}

impl TaintError {
    /// A lost race counts as a conflict.
    pub fn kind(&self) -> ApiErrorKind {
        match self {
            Self::Get { source, .. } | Self::Patch { source, .. } => {
                crate::adapters::kube::api_errors::kind(source)
            }
            Self::Contended { .. } => ApiErrorKind::Conflict,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// The node did not carry the taint (someone else removed it, or it never had it).
    Absent,
}

/// Removes one taint (by key and effect) from one Node.
#[derive(Clone)]
pub struct NodeTaints {
    api: Api<Node>,
    node: String,
}

impl NodeTaints {
    pub fn new(client: kube::Client, node: String) -> Self {
        Self {
            api: Api::all(client),
            node,
        }
    }

    pub async fn remove(&self, key: &str, effect: &str) -> Result<Removal, TaintError> {
        let mut delays = backon::ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_millis(800))
            .with_max_times(CONTENDED_TRIES - 1)
            .build();
        loop {
            let node = self
                .api
                .get(&self.node)
                .await
                .map_err(|source| TaintError::Get {
                    node: self.node.clone(),
                    source,
                })?;
            let taints: Vec<Taint> = node.spec.and_then(|s| s.taints).unwrap_or_default();
            let Some(index) = taints
                .iter()
                .position(|t| t.key == key && t.effect == effect)
            else {
                return Ok(Removal::Absent);
            };
            let path = format!("/spec/taints/{index}");
            // `test` only what identifies the taint (its key and effect): a field a newer API
            // server adds to taints (or `timeAdded` written differently) must not make the test
            // fail for ever.
            let patch: json_patch::Patch = serde_json::from_value(json!([
                {"op": "test", "path": format!("{path}/key"), "value": key},
                {"op": "test", "path": format!("{path}/effect"), "value": effect},
                {"op": "remove", "path": path},
            ]))
            .map_err(|e| TaintError::Patch {
                node: self.node.clone(),
                key: key.into(),
                effect: effect.into(),
                source: kube::Error::SerdeError(e),
            })?;
            match self
                .api
                .patch(
                    &self.node,
                    &super::patch_params(),
                    &Patch::Json::<()>(patch),
                )
                .await
            {
                Ok(_) => return Ok(Removal::Removed),
                // A failed `test` (422, or 409 from some servers): the taints changed; read again.
                Err(kube::Error::Api(status)) if matches!(status.code, 409 | 422) => {
                    let Some(delay) = delays.next() else {
                        break;
                    };
                    tracing::debug!(node = %self.node, "taint moved under a concurrent change; re-reading");
                    tokio::time::sleep(delay).await;
                }
                Err(source) => {
                    return Err(TaintError::Patch {
                        node: self.node.clone(),
                        key: key.into(),
                        effect: effect.into(),
                        source,
                    });
                }
            }
        }
        Err(TaintError::Contended {
            node: self.node.clone(),
            key: key.into(),
            effect: effect.into(),
        })
    }
}
