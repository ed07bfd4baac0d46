//! A counting CRI proxy: a gRPC server on a Unix socket of its own that forwards every request,
//! untouched (bodies and trailers streamed through), to the real runtime's socket, and counts the
//! calls per method. containerd logs CRI reads only at trace level, so the calls are counted here,
//! on the wire. Used by `cargo xtask bench reconcile`, and by any test that must prove how many CRI
//! calls the agent made.

use crate::server_thread::ServerThread;
use anyhow::Result;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Calls per gRPC method seen by a [`CriCounter`], with the time to the response headers.
#[derive(Clone, Copy, Debug, Default)]
pub struct CallStats {
    pub calls: u64,
    pub answered_in: Duration,
}

/// Per method (`ListImages`, `PullImage`…).
pub type CallTable = std::collections::BTreeMap<String, CallStats>;

/// A running counting proxy; stopped on drop.
pub struct CriCounter {
    // Stopped before its socket's directory is removed (fields drop in order).
    _server: ServerThread,
    dir: tempfile::TempDir,
    calls: Arc<Mutex<CallTable>>,
}

impl CriCounter {
    /// Proxies to `upstream` (`unix:///…/containerd.sock`).
    pub fn start(upstream: &str) -> Result<Self> {
        let upstream: pullgate::adapters::cri::CriEndpoint = upstream
            .parse()
            .map_err(|e| anyhow::anyhow!("CRI endpoint `{upstream}`: {e}"))?;
        // Short prefix: the socket path must fit in sun_path.
        let dir = tempfile::Builder::new()
            .prefix("pgcri-")
            .tempdir_in("/tmp")?;
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("cri.sock"))?;
        listener.set_nonblocking(true)?;
        let calls: Arc<Mutex<CallTable>> = Arc::default();
        let table = calls.clone();
        let server = ServerThread::spawn(move |stop| async move {
            let Ok(listener) = tokio::net::UnixListener::from_std(listener) else {
                return;
            };
            let channel = pullgate::adapters::cri::connect(&upstream, Duration::from_secs(5));
            let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
                forward(channel.clone(), table.clone(), request)
            });
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_routes(app.into())
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop.await;
                })
                .await;
        });
        Ok(Self {
            _server: server,
            dir,
            calls,
        })
    }

    /// The proxy's endpoint, for `--cri-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.dir.path().join("cri.sock").display())
    }

    /// The calls so far.
    pub fn snapshot(&self) -> CallTable {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Calls of `method` so far.
    pub fn calls(&self, method: &str) -> u64 {
        self.snapshot().get(method).map_or(0, |s| s.calls)
    }
}

/// Forwards one gRPC request to the runtime and counts it under its method (`ListImages`).
async fn forward(
    channel: tonic::transport::Channel,
    calls: Arc<Mutex<CallTable>>,
    request: axum::extract::Request,
) -> axum::response::Response {
    let method = request
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let request = axum::http::Request::from_parts(parts, tonic::body::Body::new(body));
    let response = tower::ServiceExt::oneshot(channel, request).await;
    {
        let mut table = calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = table.entry(method).or_default();
        entry.calls += 1;
        entry.answered_in += started.elapsed();
    }
    match response {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            axum::response::Response::from_parts(parts, axum::body::Body::new(body))
        }
        Err(e) => {
            let (parts, ()) = tonic::Status::unavailable(format!("proxy: {e}"))
                .into_http::<()>()
                .into_parts();
            axum::response::Response::from_parts(parts, axum::body::Body::empty())
        }
    }
}

/// Calls made between two snapshots, per method.
pub fn calls_between(before: &CallTable, after: &CallTable) -> CallTable {
    after
        .iter()
        .map(|(method, a)| {
            let b = before.get(method).copied().unwrap_or_default();
            (
                method.clone(),
                CallStats {
                    calls: a.calls - b.calls,
                    answered_in: a.answered_in.saturating_sub(b.answered_in),
                },
            )
        })
        .filter(|(_, s)| s.calls > 0)
        .collect()
}
