//! Publishes pullgate's conditions on this Node (cluster mode), the way node-problem-detector does:
//! a strategic-merge patch of `nodes/status` keyed by condition type, so the kubelet's own
//! conditions (`Ready`, `MemoryPressure`, …) are never touched. `lastTransitionTime` is the time the
//! status flipped; `lastHeartbeatTime` is refreshed when the condition is written.

use crate::decide::conditions::{Condition, Status};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
#[error("cannot patch the status of node {node}: {source}")]
pub struct NodeStatusError {
    node: String,
    source: kube::Error,
}

impl NodeStatusError {
    pub fn kind(&self) -> crate::decide::retry::ApiErrorKind {
        crate::adapters::kube::api_errors::kind(&self.source)
    }
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

    /// One strategic-merge patch of these conditions into `status.conditions` (merged by type),
    /// each with a fresh `lastHeartbeatTime`.
    pub async fn publish(&self, conditions: &[Condition]) -> Result<(), NodeStatusError> {
        let heartbeat = crate::model::outcome::now_rfc3339();
        let conditions: Vec<_> = conditions
            .iter()
            .map(|c| {
                let status = match c.status {
                    Status::True => "True",
                    Status::False => "False",
                    Status::Unknown => "Unknown",
                };
                json!({
                    "type": c.type_,
                    "status": status,
                    "reason": c.reason,
                    "message": c.message,
                    "lastTransitionTime": c.last_transition_time,
                    "lastHeartbeatTime": heartbeat,
                })
            })
            .collect();
        let patch = json!({ "status": { "conditions": conditions } });
        self.api
            .patch_status(
                &self.node,
                &super::patch_params(),
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
