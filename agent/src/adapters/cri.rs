//! The CRI adapter: the only module that knows `k8s-cri` and tonic's client types.
//!
//! One lazily connected [`Channel`] over a Unix socket; every call has a deadline; a call that fails
//! because the runtime is unreachable (socket missing, refused, connection broken by a restart) is
//! retried with capped, jittered backoff until its reconnect budget is spent, then reported as
//! `cannot reach CRI at unix:///…: <cause>`. Nothing here panics on a runtime's behaviour.
//!
//! Failures leave as [`RuntimeFailure`]: unreachable, past a deadline, or rejected with the
//! runtime's own message. What a rejection means (a verdict) is not decided here but by
//! `RuntimeFailure::verdict`.

use crate::decide::runtime::{ImageFsSpace, ImageRuntime, PresentImage, PullAuth, RuntimeFailure};
use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    AuthConfig, ImageFilter, ImageFsInfoRequest, ImageSpec, ImageStatusRequest,
    ListContainersRequest, ListImagesRequest, PullImageRequest, RemoveImageRequest, StatusRequest,
    VersionRequest,
};
use secrecy::ExposeSecret;
use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint, Uri};

/// A `unix://` CRI endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CriEndpoint {
    path: PathBuf,
}

impl CriEndpoint {
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl std::fmt::Display for CriEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unix://{}", self.path.display())
    }
}

impl FromStr for CriEndpoint {
    type Err = CriError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let path = s
            .strip_prefix("unix://")
            .or_else(|| s.starts_with('/').then_some(s))
            .ok_or_else(|| CriError::InvalidEndpoint(s.to_string()))?;
        if path.is_empty() || !path.starts_with('/') {
            return Err(CriError::InvalidEndpoint(s.to_string()));
        }
        Ok(Self { path: path.into() })
    }
}

/// Errors of the CRI adapter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CriError {
    #[error("invalid CRI endpoint `{0}`: expected unix:///path/to/socket")]
    InvalidEndpoint(String),
    /// A call failed; a rejection says which call (`CRI Version failed: …`).
    #[error("{}", describe(.0))]
    Call(#[from] RuntimeFailure),
}

fn describe(failure: &RuntimeFailure) -> String {
    match failure {
        RuntimeFailure::Rejected { operation, message } => {
            format!("CRI {operation} failed: {message}")
        }
        other => other.to_string(),
    }
}

pub type Result<T, E = CriError> = std::result::Result<T, E>;

/// Deadlines and reconnect budget.
#[derive(Clone, Copy, Debug)]
pub struct CriTimeouts {
    /// Every call but `PullImage`.
    pub call: Duration,
    /// `PullImage`.
    pub pull: Duration,
    /// How long one call keeps reconnecting before it reports the runtime unreachable.
    pub reconnect_budget: Duration,
}

impl Default for CriTimeouts {
    fn default() -> Self {
        Self {
            call: Duration::from_secs(10),
            pull: Duration::from_secs(15 * 60),
            reconnect_budget: Duration::from_secs(30),
        }
    }
}

/// The runtime's self-description from `Version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeVersion {
    pub runtime_name: String,
    pub runtime_version: String,
    pub runtime_api_version: String,
}

/// Image filesystem usage from `ImageFsInfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFsUsage {
    pub mountpoint: String,
    pub used_bytes: u64,
    pub inodes_used: u64,
}

/// A container the runtime knows, as far as image safety needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerImageUse {
    pub container_id: String,
    /// The image as the container was created with it.
    pub image: String,
    /// The runtime's image id.
    pub image_ref: String,
}

/// A CRI client over one lazily (re)connected channel.
#[derive(Clone)]
pub struct CriClient {
    endpoint: CriEndpoint,
    channel: Channel,
    timeouts: CriTimeouts,
    reconnects: Arc<AtomicU64>,
    image_fs: Arc<crate::adapters::statvfs::ImageFsProbe>,
}

impl CriClient {
    /// Creates the client; the socket is dialled on first use and redialled after any failure.
    pub fn new(endpoint: CriEndpoint, timeouts: CriTimeouts) -> Self {
        let channel = connect(&endpoint, timeouts.call);
        Self {
            endpoint,
            channel,
            timeouts,
            reconnects: Arc::new(AtomicU64::new(0)),
            image_fs: Arc::default(),
        }
    }

    /// Reads the image filesystem's mountpoint under `host_root` (`--host-root`; `None`: as the
    /// runtime reports it).
    #[must_use]
    pub fn with_host_root(mut self, host_root: Option<crate::adapters::statvfs::HostRoot>) -> Self {
        self.image_fs = Arc::new(crate::adapters::statvfs::ImageFsProbe::new(host_root));
        self
    }

    /// The last look at the image filesystem (for the gauges), if the runtime named one.
    pub fn image_fs_reading(&self) -> Option<crate::adapters::statvfs::ImageFsReading> {
        self.image_fs.last()
    }

    pub fn endpoint(&self) -> &CriEndpoint {
        &self.endpoint
    }

    /// How many times a call found the runtime unreachable and had to reconnect.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
    }

    fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    /// `Version`.
    pub async fn version(&self) -> Result<RuntimeVersion> {
        let r = self
            .call("Version", self.timeouts.call, || async {
                self.runtime()
                    .version(VersionRequest {
                        version: "v1".into(),
                    })
                    .await
            })
            .await?;
        Ok(RuntimeVersion {
            runtime_name: r.runtime_name,
            runtime_version: r.runtime_version,
            runtime_api_version: r.runtime_api_version,
        })
    }

    /// The verbose `Status`'s `config` entry: containerd's CRI configuration as JSON (its
    /// `registry.configPath`, legacy `registry.mirrors` / `registry.configs`); `None` when the
    /// runtime sends none (CRI-O, or a runtime that ignores `verbose`). The text may hold the
    /// legacy `registry.configs.*.auth` passwords: it is parsed once
    /// (`containerd_config::RuntimeRegistryConfig::from_cri_config`), never logged or kept.
    pub async fn status_config(&self) -> Result<Option<String>> {
        let mut r = self
            .call("Status", self.timeouts.call, || async {
                self.runtime().status(StatusRequest { verbose: true }).await
            })
            .await?;
        Ok(r.info.remove("config"))
    }

    /// `ImageFsInfo`: usage of the first image filesystem.
    pub async fn image_fs_info(&self) -> Result<Vec<ImageFsUsage>> {
        let r = self
            .call("ImageFsInfo", self.timeouts.call, || async {
                self.images().image_fs_info(ImageFsInfoRequest {}).await
            })
            .await?;
        Ok(r.image_filesystems
            .into_iter()
            .map(|fs| ImageFsUsage {
                mountpoint: fs.fs_id.map(|id| id.mountpoint).unwrap_or_default(),
                used_bytes: fs.used_bytes.map_or(0, |v| v.value),
                inodes_used: fs.inodes_used.map_or(0, |v| v.value),
            })
            .collect())
    }

    /// `ListContainers`: which images containers on the node use (running or not).
    pub async fn list_containers(&self) -> Result<Vec<ContainerImageUse>> {
        let r = self
            .call("ListContainers", self.timeouts.call, || async {
                self.runtime()
                    .list_containers(ListContainersRequest { filter: None })
                    .await
            })
            .await?;
        Ok(r.containers
            .into_iter()
            .map(|c| ContainerImageUse {
                container_id: c.id,
                image: c.image.map(|i| i.image).unwrap_or_default(),
                image_ref: c.image_ref,
            })
            .collect())
    }

    /// `RemoveImage`.
    pub async fn remove_image(&self, image: &str) -> Result<()> {
        self.call("RemoveImage", self.timeouts.call, || async {
            self.images()
                .remove_image(RemoveImageRequest {
                    image: Some(image_spec(image)),
                })
                .await
        })
        .await?;
        Ok(())
    }

    async fn list(&self) -> std::result::Result<Vec<PresentImage>, RuntimeFailure> {
        let r = self
            .call("ListImages", self.timeouts.call, || async {
                self.images()
                    .list_images(ListImagesRequest {
                        filter: None::<ImageFilter>,
                    })
                    .await
            })
            .await?;
        Ok(r.images.into_iter().map(present).collect())
    }

    async fn status(
        &self,
        image: &str,
    ) -> std::result::Result<Option<PresentImage>, RuntimeFailure> {
        let r = self
            .call("ImageStatus", self.timeouts.call, || async {
                self.images()
                    .image_status(ImageStatusRequest {
                        image: Some(image_spec(image)),
                        verbose: false,
                    })
                    .await
            })
            .await?;
        Ok(r.image.map(present))
    }

    async fn pull(
        &self,
        image: &str,
        auth: Option<PullAuth<'_>>,
    ) -> std::result::Result<String, RuntimeFailure> {
        let r = self
            .call("PullImage", self.timeouts.pull, || async {
                // Built per attempt and dropped right after: the request is never logged or kept.
                let request = PullImageRequest {
                    image: Some(image_spec(image)),
                    auth: auth.as_ref().map(|a| AuthConfig {
                        username: a.username.to_string(),
                        password: a.password.expose_secret().to_string(),
                        // Left empty, as the kubelet leaves it: containerd parses a non-empty value
                        // as a URL and scopes the credential to its host.
                        ..AuthConfig::default()
                    }),
                    sandbox_config: None,
                };
                self.images().pull_image(request).await
            })
            .await?;
        Ok(r.image_ref)
    }

    /// Runs one unary call with a deadline, reconnecting with backoff while the runtime is
    /// unreachable, within the reconnect budget.
    async fn call<T, F, Fut>(
        &self,
        operation: &'static str,
        deadline: Duration,
        mut attempt: F,
    ) -> std::result::Result<T, RuntimeFailure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let mut delays = backon::BackoffBuilder::build(
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(5))
                .with_jitter()
                .without_max_times(),
        );
        loop {
            let error = match tokio::time::timeout(deadline, attempt()).await {
                Err(_) => {
                    return Err(RuntimeFailure::DeadlineExceeded {
                        operation,
                        after: deadline,
                    });
                }
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => self.classify(operation, &status),
            };
            let RuntimeFailure::Unreachable { cause, .. } = &error else {
                return Err(error);
            };
            let delay = delays.next().unwrap_or(Duration::from_secs(5));
            if started.elapsed() + delay > self.timeouts.reconnect_budget {
                return Err(error);
            }
            self.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(endpoint = %self.endpoint, operation, %cause, retry_in = ?delay, "CRI unreachable; reconnecting");
            tokio::time::sleep(delay).await;
        }
    }

    /// Whether the runtime could not be reached, or answered with an error of its own.
    fn classify(&self, operation: &'static str, status: &tonic::Status) -> RuntimeFailure {
        use tonic::Code;
        let message = status.message().to_string();
        let transport = matches!(status.code(), Code::Unavailable)
            || (matches!(
                status.code(),
                Code::Unknown | Code::Internal | Code::Cancelled
            ) && is_transport_message(&message, status));
        if transport {
            let cause = if !self.endpoint.path.exists() {
                "socket does not exist".to_string()
            } else {
                transport_cause(status)
            };
            RuntimeFailure::Unreachable {
                endpoint: self.endpoint.to_string(),
                cause,
            }
        } else {
            RuntimeFailure::Rejected { operation, message }
        }
    }
}

/// Whether an `Unknown`/`Internal`/`Cancelled` status means the CRI connection itself failed.
/// tonic makes such a status locally from the transport's error and keeps that error as its
/// source, or says so in its own words; a status the runtime sent has only a message, and that
/// message may well speak of the *registry's* connection (`read: connection reset by peer`):
/// that is the runtime's answer, for the verdict to judge, not a broken CRI connection.
fn is_transport_message(message: &str, status: &tonic::Status) -> bool {
    if std::error::Error::source(status).is_some() {
        return true;
    }
    let m = message.to_ascii_lowercase();
    m.starts_with("transport error")
        || m.starts_with("h2 protocol error")
        || m.starts_with("error reading a body from connection")
}

/// The innermost cause of a transport failure, for a message an operator can act on.
fn transport_cause(status: &tonic::Status) -> String {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    let mut last = status.message().to_string();
    while let Some(e) = cause {
        last = e.to_string();
        cause = e.source();
    }
    last
}

/// Dials the Unix socket lazily; tonic redials after a broken connection.
pub fn connect(endpoint: &CriEndpoint, connect_timeout: Duration) -> Channel {
    let path = endpoint.path.clone();
    // The URI is required by the builder and ignored by the Unix connector; it is a constant.
    #[allow(clippy::expect_used)]
    let builder = Endpoint::from_static("http://cri.invalid").connect_timeout(connect_timeout);
    builder.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    }))
}

fn image_spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_string(),
        ..ImageSpec::default()
    }
}

fn present(image: k8s_cri::v1::Image) -> PresentImage {
    PresentImage {
        id: image.id,
        repo_tags: image.repo_tags,
        repo_digests: image.repo_digests,
        size: image.size,
    }
}

impl ImageRuntime for CriClient {
    fn list_images(&self) -> BoxFuture<'_, std::result::Result<Vec<PresentImage>, RuntimeFailure>> {
        Box::pin(self.list())
    }

    fn image_status<'a>(
        &'a self,
        image: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Option<PresentImage>, RuntimeFailure>> {
        Box::pin(self.status(image))
    }

    fn pull_image<'a>(
        &'a self,
        image: &'a str,
        auth: Option<PullAuth<'a>>,
    ) -> BoxFuture<'a, std::result::Result<String, RuntimeFailure>> {
        Box::pin(self.pull(image, auth))
    }

    fn image_fs(&self) -> BoxFuture<'_, std::result::Result<Option<ImageFsSpace>, RuntimeFailure>> {
        Box::pin(async move {
            let filesystems = match self.image_fs_info().await {
                Ok(filesystems) => filesystems,
                Err(CriError::Call(failure)) => return Err(failure),
                Err(CriError::InvalidEndpoint(_)) => return Ok(None),
            };
            // The first filesystem that names a mountpoint; none named is said by the probe too.
            let mountpoint = filesystems
                .into_iter()
                .map(|fs| fs.mountpoint)
                .find(|m| !m.is_empty())
                .unwrap_or_default();
            let probe = self.image_fs.clone();
            Ok(tokio::task::spawn_blocking(move || probe.read(&mountpoint))
                .await
                .ok()
                .flatten())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_parsing() {
        for (input, ok) in [
            ("unix:///run/containerd/containerd.sock", true),
            ("/run/containerd/containerd.sock", true),
            ("unix://relative.sock", false),
            ("tcp://127.0.0.1:1234", false),
            ("unix://", false),
        ] {
            assert_eq!(input.parse::<CriEndpoint>().is_ok(), ok, "{input}");
        }
        let e: CriEndpoint = "/run/x.sock".parse().unwrap();
        assert_eq!(e.to_string(), "unix:///run/x.sock");
    }

    #[test]
    fn a_rejection_names_its_call_and_the_runtime_keeps_its_words() {
        let rejected = RuntimeFailure::Rejected {
            operation: "Version",
            message: "unknown service".into(),
        };
        assert_eq!(rejected.to_string(), "unknown service");
        assert_eq!(
            CriError::from(rejected).to_string(),
            "CRI Version failed: unknown service"
        );
        let late = RuntimeFailure::DeadlineExceeded {
            operation: "ListImages",
            after: Duration::from_secs(10),
        };
        assert_eq!(
            CriError::from(late).to_string(),
            "CRI ListImages did not finish within 10s"
        );
    }

    #[tokio::test]
    async fn the_runtime_s_words_about_the_registry_connection_are_its_answer() {
        let client = CriClient::new(
            "unix:///nonexistent/cri.sock".parse().unwrap(),
            CriTimeouts {
                call: Duration::from_secs(1),
                pull: Duration::from_secs(1),
                reconnect_budget: Duration::from_millis(1),
            },
        );
        let from_runtime = tonic::Status::unknown(
            r#"failed to pull and unpack image "r.io/a:v1": failed to resolve image: failed to do request: Head "https://r.io/v2/a/manifests/v1": read tcp 10.0.0.1:4000->10.0.0.2:443: read: connection reset by peer"#,
        );
        let failure = client.classify("PullImage", &from_runtime);
        assert!(
            matches!(failure, RuntimeFailure::Rejected { .. }),
            "{failure:?}"
        );
        assert_eq!(failure.verdict(), crate::model::verdict::Verdict::Network);
        for local in [
            tonic::Status::unavailable("connection refused"),
            tonic::Status::unknown("transport error"),
            tonic::Status::from_error(Box::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "connection reset by peer",
            ))),
        ] {
            let failure = client.classify("PullImage", &local);
            assert!(
                matches!(failure, RuntimeFailure::Unreachable { .. }),
                "{local:?}: {failure:?}"
            );
        }
    }

    /// Under paused time: the backoff sleeps pass instantly, and the budget is tokio's clock.
    #[tokio::test(start_paused = true)]
    async fn a_missing_socket_is_reported_clearly_within_budget() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint: CriEndpoint = format!("unix://{}/absent.sock", dir.path().display())
            .parse()
            .unwrap();
        let client = CriClient::new(
            endpoint.clone(),
            CriTimeouts {
                call: Duration::from_secs(1),
                pull: Duration::from_secs(1),
                reconnect_budget: Duration::from_millis(500),
            },
        );
        let started = Instant::now();
        let err = client.version().await.unwrap_err();
        assert!(
            started.elapsed() <= Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            err.to_string(),
            format!("cannot reach CRI at {endpoint}: socket does not exist")
        );
        assert!(client.reconnects() >= 1);
    }
}
