//! Decisions: pure rules over the model, tested with data tables. Nothing here names an adapter
//! crate or runs a process (the tidy test in `tests/tests/tidy.rs` holds that); the world is
//! reached only through the traits declared here (`runtime::ImageRuntime`,
//! `runtime::RegistryMirrors`, `canary::runner::RegistryProbe`, `credentials::CredentialResolver`).

pub mod audit;
pub mod canary;
pub mod conditions;
pub mod credentials;
pub mod desired;
pub mod event_policy;
pub mod gate;
pub mod node_report;
pub mod prepull;
pub mod retry;
pub mod runtime;
pub mod secret_scrub;
pub mod status_board;
