//! The API server, through kube-rs: the cluster source (watches), this Node's conditions and taint,
//! and Events.

pub mod api_errors;
pub mod audit_lists;
pub mod event_recorder;
pub mod fleet;
pub mod kubeconfig;
pub mod node_status;
pub mod node_taint;
pub mod review;
#[cfg(test)]
pub mod scripted;
pub mod source;
pub mod token_request;

/// The field manager of every write (`managedFields[].manager`): the Node's conditions and the
/// taint removal are owned by `pullgate`, not by an empty manager.
pub const FIELD_MANAGER: &str = "pullgate";

/// The `User-Agent` of every request: `pullgate/<version>` (kube-rs sends none of its own, so the
/// API server's audit log and its `apiserver_request_total` would not say who called).
pub fn user_agent() -> String {
    format!("{FIELD_MANAGER}/{}", env!("CARGO_PKG_VERSION"))
}

/// Names pullgate on every request `config` makes: its [`user_agent`].
pub fn identify(config: &mut kube::Config) {
    // A version is ASCII digits, dots and letters: always a valid header value.
    if let Ok(value) = http::HeaderValue::from_str(&user_agent()) {
        config.headers.push((http::header::USER_AGENT, value));
    }
}

/// Patch parameters naming [`FIELD_MANAGER`].
pub fn patch_params() -> kube::api::PatchParams {
    kube::api::PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// Everything that writes about this Node: its conditions, its taint, its Events.
pub struct NodeWriters {
    pub status: node_status::NodeStatus,
    pub taints: node_taint::NodeTaints,
    pub events: event_recorder::EventRecorder,
}

impl NodeWriters {
    /// The writers for `node`, sharing one client.
    pub fn new(client: kube::Client, node: &str) -> Self {
        Self {
            status: node_status::NodeStatus::new(client.clone(), node.to_string()),
            taints: node_taint::NodeTaints::new(client.clone(), node.to_string()),
            events: event_recorder::EventRecorder::new(client, node),
        }
    }
}
