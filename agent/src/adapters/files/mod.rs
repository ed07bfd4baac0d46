//! Files: a directory of YAML manifests, read and watched; Docker config files on the node.

pub mod docker_config;
pub mod manifests;
pub mod watch;
