//! Liveness and readiness over HTTP (`--metrics-addr`), for the DaemonSet's probes.
//!
//! - `GET /healthz`: 200 while the process serves (liveness).
//! - `GET /readyz`: 200 once the sources are synced and the first pre-pull pass finished, 503
//!   before (readiness: a rolling update waits for it before moving to the next nodes).

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (--metrics-addr): {source}")]
pub struct HealthError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// Set once the agent is ready.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Binds now (a taken port is a start-up error), serves until `cancel`.
pub async fn serve(
    addr: SocketAddr,
    readiness: Readiness,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, HealthError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HealthError { addr, source })?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = readiness.is_ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: first pass not finished\n",
                        )
                    }
                }
            }),
        );
    let addr = listener.local_addr().unwrap_or(addr);
    tracing::info!(%addr, "serving /healthz and /readyz");
    Ok(tokio::spawn(async move {
        let shutdown = async move { cancel.cancelled().await };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "health server stopped");
        }
    }))
}
