//! The agent's HTTP endpoints on `--metrics-addr` (axum):
//!
//! - `GET /metrics`: Prometheus text (see `metrics`).
//! - `GET /healthz` (liveness): 200 while the pre-pull loop, the canary scheduler and the node
//!   reporter make progress, 503 when one has ended or gone past its own bound without a beat
//!   (`decide::watchdog`); the body is JSON: `status`, the first `unhealthy` task and why, and
//!   every watched task with its last beat.
//! - `GET /readyz`: 200 when the sources are synced, the first pre-pull pass finished and the
//!   runtime answered its last check; 503 with the reason before (readiness: a rolling update
//!   waits for it before moving on to the next nodes).

use crate::adapters::serve::metrics::Metrics;
use crate::decide::watchdog::Health;
use axum::Router;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (--metrics-addr): {source}")]
pub struct HttpError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// What readiness waits for.
#[derive(Clone, Default)]
pub struct Readiness {
    first_pass: Arc<AtomicBool>,
    runtime_ok: Arc<AtomicBool>,
}

impl Readiness {
    /// The sources synced and one full pass ran.
    pub fn set_first_pass_done(&self) {
        self.first_pass.store(true, Ordering::Relaxed);
    }
    /// The runtime answered (or not) its latest check.
    pub fn set_runtime_reachable(&self, ok: bool) {
        self.runtime_ok.store(ok, Ordering::Relaxed);
    }
    /// `Ok` or why not.
    pub fn check(&self) -> Result<(), &'static str> {
        if !self.first_pass.load(Ordering::Relaxed) {
            return Err("not ready: sources not synced or first pass not finished");
        }
        if !self.runtime_ok.load(Ordering::Relaxed) {
            return Err("not ready: the container runtime did not answer");
        }
        Ok(())
    }
}

/// Called before `/metrics` is encoded, to bring counters kept elsewhere up to date.
pub type Refresh = Arc<dyn Fn(&Metrics) + Send + Sync>;

/// What `/healthz` answers: the watchdog's verdict now.
pub type Liveness = Arc<dyn Fn() -> Health + Send + Sync>;

/// Binds now (a taken port is a start-up error), serves until `cancel`.
pub async fn serve(
    addr: SocketAddr,
    readiness: Readiness,
    metrics: Arc<Metrics>,
    refresh: Refresh,
    liveness: Liveness,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, HttpError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError { addr, source })?;
    let app = Router::new()
        .route(
            "/healthz",
            get(move || {
                let health = liveness();
                async move {
                    let code = if health.is_healthy() {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    let body = serde_json::to_string(&health)
                        .unwrap_or_else(|_| format!("{{\"status\":\"{}\"}}", health.status));
                    (code, [(CONTENT_TYPE, "application/json")], body + "\n")
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let ready = readiness.check();
                async move {
                    match ready {
                        Ok(()) => (StatusCode::OK, "ready\n"),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                refresh(&metrics);
                let text = metrics.encode();
                async move {
                    (
                        [(
                            CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        );
    let addr = listener.local_addr().unwrap_or(addr);
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(tokio::spawn(async move {
        let shutdown = async move { cancel.cancelled().await };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "HTTP endpoints stopped");
        }
    }))
}
