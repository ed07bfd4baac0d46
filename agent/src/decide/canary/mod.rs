//! Canaries: credential checks that the node's image cache cannot fool.

pub mod hosts_walk;
pub mod jitter;
pub mod manifest_cache;
pub mod rotation;
pub mod runner;
pub mod schedule;
pub mod transition;
pub mod warning;
