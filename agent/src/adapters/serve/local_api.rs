//! The agent's local gRPC API (`proto/pullgate/v1/agent.proto`), served by tonic on a Unix socket
//! (`--api-socket`, mode 0600: root on the node, nobody else), and its client for the CLI
//! (`pullgate status`, `pullgate canary`). The only module that knows the generated types.

use crate::adapters::serve::json_lines::JsonLines;
use crate::decide::canary::runner::CanaryOutcome;
use crate::decide::status_board::{LatestVerdict, Status, StatusBoard};
use crate::model::inventory::ObjectKey;
use crate::model::node::NodeInfo;
use crate::model::snapshot::Snapshot;
use futures::{Stream, StreamExt as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The generated protobuf types and gRPC stubs.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("pullgate.v1");
}

use pb::agent_client::AgentClient;
use pb::agent_server::{Agent, AgentServer};

#[derive(Debug, thiserror::Error)]
pub enum LocalApiError {
    #[error("cannot serve the local API on {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error(
        "cannot reach the agent's local API at {path}: {source} (is `pullgate run` running on this node, with this --api-socket?)"
    )]
    Connect {
        path: PathBuf,
        source: tonic::transport::Error,
    },
    #[error("the agent answered: {0}")]
    Call(#[from] tonic::Status),
}

/// What `TriggerCanary` and `GetStatus` need of the canary scheduler; the daemon's handle to its
/// scheduler implements it.
pub trait Canaries: Send + Sync {
    /// Asks for a manual run (one PullSet, or every one). The results arrive on the receiver
    /// (bounded), which closes when the run is done; a caller that does not keep up gets
    /// [`RepliesLost`] and nothing more.
    fn run_now(
        &self,
        pullset: Option<ObjectKey>,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<CanaryOutcome, RepliesLost>>, RunNowRefused>;
    /// When each scheduled PullSet's next canary is due.
    fn next_canaries(&self) -> std::collections::BTreeMap<ObjectKey, std::time::SystemTime>;
}

/// A manual caller left its bounded reply stream full while more outcomes came: the rest were
/// not sent to it (the status board has them all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "canary results came faster than they were read; the rest were not sent (`pullgate status` shows every result)"
)]
pub struct RepliesLost;

/// Why a manual run was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RunNowRefused {
    #[error("the canary service has stopped")]
    Stopped,
    /// The scheduler's queue of manual requests is full (it is bounded).
    #[error("too many manual canary requests are waiting; try again when they are done")]
    Busy,
}

/// What the API serves from.
pub struct ApiState {
    pub board: Arc<StatusBoard>,
    pub sources: watch::Receiver<Arc<Snapshot>>,
    pub node: NodeInfo,
    /// `None` with `--once` (no canary service).
    pub canaries: Option<Arc<dyn Canaries>>,
    pub json: Arc<JsonLines>,
}

struct Service(Arc<ApiState>);

type ResultStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Agent for Service {
    async fn get_status(
        &self,
        _: tonic::Request<pb::GetStatusRequest>,
    ) -> Result<tonic::Response<pb::GetStatusResponse>, tonic::Status> {
        let state = &self.0;
        let loaded = state.sources.borrow().clone();
        let next = state
            .canaries
            .as_ref()
            .map(|c| c.next_canaries())
            .unwrap_or_default();
        let status = state.board.snapshot(&loaded, &state.node, &next);
        Ok(tonic::Response::new(to_proto(status)))
    }

    type TriggerCanaryStream = ResultStream<pb::CanaryResult>;

    async fn trigger_canary(
        &self,
        request: tonic::Request<pb::TriggerCanaryRequest>,
    ) -> Result<tonic::Response<Self::TriggerCanaryStream>, tonic::Status> {
        let request = request.into_inner();
        let Some(canaries) = &self.0.canaries else {
            return Err(tonic::Status::unavailable(
                "this agent runs --once: no canary service",
            ));
        };
        let pullset = match (request.namespace.is_empty(), request.name.is_empty()) {
            (true, true) => None,
            (false, false) => {
                let key = ObjectKey::new(request.namespace, request.name);
                let loaded = self.0.sources.borrow().clone();
                let node = loaded.node(&self.0.node);
                match loaded.inventory.pullsets.get(&key) {
                    None => {
                        return Err(tonic::Status::not_found(format!(
                            "no valid PullSet {key} (see `pullgate status` for problems)"
                        )));
                    }
                    Some(s) if s.spec.canary.is_none() => {
                        return Err(tonic::Status::failed_precondition(format!(
                            "PullSet {key} has no spec.canary"
                        )));
                    }
                    Some(s) if !node.matches(&s.spec.node_selector) => {
                        return Err(tonic::Status::failed_precondition(format!(
                            "PullSet {key} does not select node {}",
                            node.name
                        )));
                    }
                    Some(_) => Some(key),
                }
            }
            _ => {
                return Err(tonic::Status::invalid_argument(
                    "give both namespace and name, or neither (every PullSet)",
                ));
            }
        };
        let rx = canaries.run_now(pullset).map_err(|refused| match refused {
            RunNowRefused::Stopped => tonic::Status::unavailable(refused.to_string()),
            RunNowRefused::Busy => tonic::Status::resource_exhausted(refused.to_string()),
        })?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|reply| {
            reply
                .map(|o| canary_to_proto(&o))
                .map_err(|lost| tonic::Status::resource_exhausted(lost.to_string()))
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }

    type WatchStream = ResultStream<pb::Record>;

    async fn watch(
        &self,
        _: tonic::Request<pb::WatchRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        let stream =
            tokio_stream::wrappers::BroadcastStream::new(self.0.json.subscribe()).map(|line| {
                match line {
                    Ok(json) => {
                        let kind = serde_json::from_str::<serde_json::Value>(&json)
                            .ok()
                            .and_then(|v| v["kind"].as_str().map(String::from))
                            .unwrap_or_default();
                        Ok(pb::Record { kind, json })
                    }
                    Err(e) => Err(tonic::Status::data_loss(format!(
                        "this watcher fell behind: {e}"
                    ))),
                }
            });
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

/// Binds `path` (mode 0600; a stale socket is replaced, anything else refused) and serves until
/// `cancel`.
pub fn serve(
    path: &Path,
    state: ApiState,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, LocalApiError> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let bind_err = |source| LocalApiError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(bind_err)?,
        Ok(_) => {
            return Err(LocalApiError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    tracing::info!(socket = %path.display(), "serving the local API");
    let owned = path.to_path_buf();
    Ok(tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let result = tonic::transport::Server::builder()
            .add_service(AgentServer::new(Service(Arc::new(state))))
            .serve_with_incoming_shutdown(incoming, cancel.cancelled())
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "local API stopped");
        }
        let _ = std::fs::remove_file(owned);
    }))
}

/// A client of a running agent's local API.
pub struct Client {
    inner: AgentClient<tonic::transport::Channel>,
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Self, LocalApiError> {
        let socket = path.to_path_buf();
        let channel = tonic::transport::Endpoint::from_static("http://pullgate.invalid")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|source| LocalApiError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            inner: AgentClient::new(channel),
        })
    }

    pub async fn status(&mut self) -> Result<pb::GetStatusResponse, LocalApiError> {
        Ok(self
            .inner
            .get_status(pb::GetStatusRequest {})
            .await?
            .into_inner())
    }

    /// Runs canaries now; calls `each` with every result as it arrives.
    pub async fn canary(
        &mut self,
        pullset: Option<ObjectKey>,
        mut each: impl FnMut(pb::CanaryResult),
    ) -> Result<(), LocalApiError> {
        let (namespace, name) = pullset.map(|k| (k.namespace, k.name)).unwrap_or_default();
        let mut stream = self
            .inner
            .trigger_canary(pb::TriggerCanaryRequest { namespace, name })
            .await?
            .into_inner();
        while let Some(result) = stream.message().await? {
            each(result);
        }
        Ok(())
    }
}

impl Client {
    /// Follows the agent's records. Returns once the agent has answered the `Watch`: it subscribes
    /// before it answers, so no record after this call returns is missed.
    pub async fn watch(&mut self) -> Result<tonic::Streaming<pb::Record>, LocalApiError> {
        Ok(self.inner.watch(pb::WatchRequest {}).await?.into_inner())
    }
}

fn verdict(v: Option<LatestVerdict>) -> Option<pb::Verdict> {
    v.map(|v| pb::Verdict {
        verdict: v.verdict,
        message: v.message,
        hint: v.hint,
        time: v.time,
        credential: v.credential,
        host: v.host,
    })
}

fn to_proto(status: Status) -> pb::GetStatusResponse {
    pb::GetStatusResponse {
        node: status.node,
        conditions: status
            .conditions
            .into_iter()
            .map(|c| pb::Condition {
                r#type: c.type_.into(),
                status: format!("{:?}", c.status),
                reason: c.reason,
                message: c.message,
                last_transition_time: c.last_transition_time,
            })
            .collect(),
        pullsets: status
            .pullsets
            .into_iter()
            .map(|s| pb::PullSetStatus {
                namespace: s.key.namespace,
                name: s.key.name,
                gate: s.gate,
                pin: s.pin,
                pre_pull: s.pre_pull,
                canary: s.canary,
                next_canary_time: s
                    .next_canary
                    .map(crate::model::time::rfc3339_seconds)
                    .unwrap_or_default(),
                images: s
                    .images
                    .into_iter()
                    .map(|i| pb::ImageStatus {
                        image: i.image,
                        present: i.present,
                        prepull: verdict(i.prepull),
                        canary: verdict(i.canary),
                        kubelet_access: i.kubelet_access,
                        kubelet_access_warning: i.kubelet_access_warning,
                        pinned: i.pinned,
                        pin_warning: i.pin_warning,
                    })
                    .collect(),
            })
            .collect(),
        problems: status.problems,
    }
}

fn canary_to_proto(o: &CanaryOutcome) -> pb::CanaryResult {
    pb::CanaryResult {
        namespace: o.namespace.clone(),
        pullset: o.pullset.clone(),
        image: o.image.clone(),
        path: serde_name(&o.path),
        depth: serde_name(&o.depth),
        result: Some(pb::Verdict {
            verdict: o.verdict.to_string(),
            message: o.message.clone(),
            hint: o.hint.unwrap_or_default().into(),
            time: o.time.clone(),
            credential: o.credential.clone().unwrap_or_default(),
            host: o.host.clone().unwrap_or_default(),
        }),
        duration_ms: o.duration_ms,
        bytes: o.bytes,
        requests: o.requests,
        warnings: o.warnings.iter().map(ToString::to_string).collect(),
    }
}

/// The serde spelling of a unit enum (`registry`, `manifest`), as the JSON lines have it.
fn serde_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}
