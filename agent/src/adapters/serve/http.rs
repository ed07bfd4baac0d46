//! The agent's HTTP endpoints on `--metrics-addr` (axum):
//!
//! - `GET /metrics`: Prometheus text (see `metrics`). With `--metrics-auth kubernetes` only for a
//!   bearer token the API server authenticates (TokenReview) and authorizes for `get /metrics`
//!   (SubjectAccessReview), cached (`metrics_auth`): 401 without a token or with one it does not
//!   know, 403 when not allowed, 503 when the review could not be made, 429 with `Retry-After`
//!   (and no review) past the review limits (`--metrics-review-burst`/`-refill`).
//! - `GET /healthz` (liveness): 200 while the pre-pull loop, the canary scheduler and the node
//!   reporter make progress, 503 when one has ended or gone past its own bound without a beat
//!   (`decide::watchdog`); the body is JSON: `status`, the first `unhealthy` task and why, and
//!   every watched task with its last beat.
//! - `GET /readyz`: 200 when the sources are synced, the first pre-pull pass finished and the
//!   runtime answered its last check; 503 with the reason before (readiness: a rolling update
//!   waits for it before moving on to the next nodes).
//!
//! `/healthz` and `/readyz` stay open (probes carry no token). The server reads a request's
//! headers within [`HttpLimits::header_timeout`] or closes the connection (a client that never
//! finishes its headers holds nothing), and serves at most [`HttpLimits::max_connections`]
//! connections at once: one over that is closed at once, unserved.

use crate::adapters::serve::metrics::Metrics;
use crate::adapters::serve::metrics_auth::{Access, MetricsAuth, MetricsAuthError};
use crate::decide::watchdog::Health;
use axum::Router;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::response::{IntoResponse, Response};
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

/// The server's bounds on its clients.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// A connection that has not sent a request's headers within this is closed.
    pub header_timeout: std::time::Duration,
    /// Connections served at once; one more is closed unserved.
    pub max_connections: usize,
}

/// Who may read `/metrics`: anyone, or who the API server says.
pub type MetricsAccess = Option<Arc<MetricsAuth>>;

async fn metrics_access(auth: &MetricsAccess, headers: &HeaderMap) -> Result<(), Response> {
    let Some(auth) = auth else {
        return Ok(());
    };
    let header = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    match auth.access(header).await {
        Ok(Access::Allowed) => Ok(()),
        Ok(Access::Unauthenticated) => Err((
            StatusCode::UNAUTHORIZED,
            [(WWW_AUTHENTICATE, "Bearer")],
            "Unauthorized\n",
        )
            .into_response()),
        Ok(Access::Forbidden) => {
            Err((StatusCode::FORBIDDEN, "Forbidden: get /metrics\n").into_response())
        }
        Err(MetricsAuthError::Throttled { retry_after }) => {
            tracing::debug!("a /metrics request over the review limits; refused unreviewed");
            Err((
                StatusCode::TOO_MANY_REQUESTS,
                [(RETRY_AFTER, retry_after.as_secs().to_string())],
                "Too many token reviews; retry later\n",
            )
                .into_response())
        }
        Err(e) => {
            tracing::warn!(error = %e, "a /metrics request could not be reviewed");
            Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "the token could not be reviewed\n",
            )
                .into_response())
        }
    }
}

/// Binds now (a taken port is a start-up error), serves until `cancel`.
#[allow(clippy::too_many_arguments)] // each is one concern of the endpoints, named at the call
pub async fn serve(
    addr: SocketAddr,
    readiness: Readiness,
    metrics: Arc<Metrics>,
    refresh: Refresh,
    liveness: Liveness,
    auth: MetricsAccess,
    limits: HttpLimits,
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
            get(move |headers: HeaderMap| {
                let (auth, metrics, refresh) = (auth.clone(), metrics.clone(), refresh.clone());
                async move {
                    if let Err(refused) = metrics_access(&auth, &headers).await {
                        return refused;
                    }
                    refresh(&metrics);
                    (
                        [(
                            CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                        .into_response()
                }
            }),
        );
    let addr = listener.local_addr().unwrap_or(addr);
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(tokio::spawn(accept_loop(listener, app, limits, cancel)))
}

/// Accepts while a connection slot is free, serves each connection with the header timeout,
/// stops accepting at `cancel` and lets open connections finish their request.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: HttpLimits,
    cancel: CancellationToken,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let builder = Arc::new(builder);
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "HTTP accept failed");
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(
                max = limits.max_connections,
                "HTTP connection over the cap; closed"
            );
            drop(stream);
            continue;
        };
        let (builder, service, cancel) = (
            builder.clone(),
            TowerToHyperService::new(app.clone()),
            cancel.clone(),
        );
        tokio::spawn(async move {
            let _slot = slot;
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "HTTP connection ended");
                    }
                }
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}
