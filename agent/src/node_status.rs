//! Publishes pullgate's conditions on this Node (cluster mode), the way node-problem-detector does:
//! a strategic-merge patch of `nodes/status` keyed by condition type, so the kubelet's own
//! conditions (`Ready`, `MemoryPressure`, …) are never touched. `lastTransitionTime` is the time the
//! status flipped; `lastHeartbeatTime` is refreshed when the condition is written.

use crate::conditions::{Condition, Status};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
#[error("cannot patch the status of node {node}: {source}")]
pub struct NodeStatusError {
    node: String,
    source: kube::Error,
}

/// Writes conditions on one Node.
#[derive(Clone)]
pub struct NodeStatus {
    api: Api<Node>,
    node: String,
}

impl NodeStatus {
    pub fn new(client: kube::Client, node: String) -> Self {
        Self {
            api: Api::all(client),
            node,
        }
    }

    /// Strategic-merge patch of one condition into `status.conditions`.
    pub async fn publish(&self, condition: &Condition) -> Result<(), NodeStatusError> {
        let status = match condition.status {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        };
        let patch = json!({
            "status": {
                "conditions": [{
                    "type": condition.type_,
                    "status": status,
                    "reason": condition.reason,
                    "message": condition.message,
                    "lastTransitionTime": condition.last_transition_time,
                    "lastHeartbeatTime": crate::outcome::now_rfc3339(),
                }]
            }
        });
        self.api
            .patch_status(
                &self.node,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
            .map(|_| ())
            .map_err(|source| NodeStatusError {
                node: self.node.clone(),
                source,
            })
    }
}
