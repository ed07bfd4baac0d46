//! The API server, through kube-rs: the cluster source (watches), this Node's conditions and taint,
//! and Events.

pub mod api_errors;
pub mod audit_lists;
pub mod event_recorder;
pub mod node_status;
pub mod node_taint;
pub mod source;
