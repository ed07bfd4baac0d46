//! Sources of the objects pullgate acts on. Standalone: a directory of YAML manifests, watched.

pub mod cluster;
pub mod manifests;
pub mod watch;
