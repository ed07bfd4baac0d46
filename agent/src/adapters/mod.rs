//! Adapters at the edges: each module is the only one that knows its crate's types. The container
//! runtime (CRI), registries, containerd's registry configuration, credential-provider processes,
//! the API server, files, and what the agent serves (HTTP, the local gRPC API, metrics, JSON lines).

pub mod containerd;
pub mod containerd_config;
pub mod credential_plugin;
pub mod cri;
pub mod files;
pub mod kube;
pub mod kubelet_config;
pub mod registry;
pub mod serve;
pub mod statvfs;
