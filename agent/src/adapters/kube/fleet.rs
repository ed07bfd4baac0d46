//! `pullgate status` from the API server: pullgate's two conditions on each Node, read with `get`
//! (named nodes) or `list` (all) of `nodes` — nothing else, so a read-only ClusterRole with
//! `nodes: get, list` is all it needs.

use k8s_openapi::api::core::v1::{Node, NodeCondition};
use kube::Api;
use kube::api::ListParams;

/// The conditions pullgate writes on a Node (see `decide::conditions`).
pub const CONDITION_TYPES: [&str; 2] = ["CriticalImagesReady", "PullCredentialsValid"];

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot read node {node}: {source}")]
    Get { node: String, source: kube::Error },
    #[error("cannot list nodes: {0}")]
    List(kube::Error),
}

/// One of pullgate's conditions as a Node carries it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NodeConditionState {
    pub status: String,
    pub reason: String,
    pub message: String,
    /// `lastTransitionTime`, as written (RFC 3339).
    pub since: Option<String>,
}

/// A Node and pullgate's conditions on it (`None`: not written, no agent reported there).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NodeConditions {
    pub node: String,
    pub critical_images_ready: Option<NodeConditionState>,
    pub pull_credentials_valid: Option<NodeConditionState>,
}

/// The named Nodes (each by `get`, in the order given), or every Node (one paged `list`).
pub async fn read(
    client: &kube::Client,
    nodes: &[String],
) -> Result<Vec<NodeConditions>, FleetError> {
    let api: Api<Node> = Api::all(client.clone());
    let mut out = Vec::new();
    if nodes.is_empty() {
        let mut params = ListParams::default().limit(500);
        loop {
            let page = api.list(&params).await.map_err(FleetError::List)?;
            out.extend(page.items.iter().map(conditions));
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
        out.sort_by(|a, b| a.node.cmp(&b.node));
    } else {
        for name in nodes {
            let node = api.get(name).await.map_err(|source| FleetError::Get {
                node: name.clone(),
                source,
            })?;
            out.push(conditions(&node));
        }
    }
    Ok(out)
}

fn conditions(node: &Node) -> NodeConditions {
    let all: &[NodeCondition] = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let of = |type_: &str| {
        all.iter()
            .find(|c| c.type_ == type_)
            .map(|c| NodeConditionState {
                status: c.status.clone(),
                reason: c.reason.clone().unwrap_or_default(),
                message: c.message.clone().unwrap_or_default(),
                since: c.last_transition_time.as_ref().map(|t| t.0.to_string()),
            })
    };
    NodeConditions {
        node: node.metadata.name.clone().unwrap_or_default(),
        critical_images_ready: of(CONDITION_TYPES[0]),
        pull_credentials_valid: of(CONDITION_TYPES[1]),
    }
}
