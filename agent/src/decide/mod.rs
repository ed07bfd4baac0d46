//! Decisions: pure rules over the model, tested with data tables, and the agent's loops as state
//! machines tested under paused time. Nothing here names an adapter crate, touches a file or a
//! socket, or runs a process (`agent/tests/tidy.rs` holds that); the world is reached only through
//! the traits declared here (`runtime::ImageRuntime`, `runtime::RegistryMirrors`,
//! `canary::runner::RegistryProbe`, `credentials::CredentialResolver`,
//! `credentials::CredentialPlugins`, `credentials::NodeDockerConfig`).

pub mod audit;
pub mod canary;
pub mod conditions;
pub mod credentials;
pub mod desired;
pub mod event_policy;
pub mod gate;
pub mod kubelet_access;
pub mod node_report;
pub mod pin;
pub mod prepull;
pub mod registry_hosts;
pub mod retry;
pub mod runtime;
pub mod secret_scrub;
pub mod status_board;
pub mod watchdog;
