//! What the agent serves: `/metrics`, `/healthz`, `/readyz` over HTTP, the local gRPC API on a Unix
//! socket, the metrics registry, and JSON lines on stdout.

pub mod http;
pub mod json_lines;
pub mod local_api;
pub mod metrics;
pub mod metrics_auth;
