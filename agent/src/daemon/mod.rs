//! The long-running agent (`pullgate run`): the wiring of sources, the pre-pull loop, the canary
//! scheduler and the node reporter, and what they share.

pub mod canary_scheduler;
pub mod node_reporter;
pub mod pins;
pub mod run;
pub mod telemetry;
pub mod watchdog;
