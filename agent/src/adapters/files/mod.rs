//! Files: a directory of YAML manifests, read and watched; Docker config files on the node; the
//! bound on what any YAML document may build in memory.

pub mod docker_config;
pub mod manifests;
pub mod watch;
pub mod yaml_bound;
