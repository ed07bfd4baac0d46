//! Files: a directory of YAML manifests, read and watched.

pub mod manifests;
pub mod watch;
