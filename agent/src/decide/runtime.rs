//! What the pre-pull engine needs from a container runtime, as a trait the agent owns. The CRI
//! adapter implements it; the engine never sees a CRI type.

use secrecy::SecretString;
use std::future::Future;
use std::time::Duration;

/// An image the runtime holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PresentImage {
    /// The runtime's image id (`sha256:…` of the config for containerd).
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Size in bytes, as the runtime reports it (0 when unknown).
    pub size: u64,
}

impl PresentImage {
    /// The repo digest for `name` (`registry/repository`), else the first one.
    pub fn repo_digest_for(&self, name: &str) -> Option<String> {
        self.repo_digests
            .iter()
            .find(|d| d.split_once('@').is_some_and(|(n, _)| n == name))
            .or_else(|| self.repo_digests.first())
            .cloned()
    }
}

/// Credentials for one pull, borrowed from a resolved candidate.
#[derive(Debug)]
pub struct PullAuth<'a> {
    pub username: &'a str,
    pub password: &'a SecretString,
}

/// Why a runtime call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeFailure {
    /// The runtime's socket is missing, refuses, or the connection broke.
    #[error("cannot reach CRI at {endpoint}: {cause}")]
    Unreachable { endpoint: String, cause: String },
    /// The call did not finish within its deadline.
    #[error("CRI {operation} did not finish within {}", humantime::format_duration(*after))]
    DeadlineExceeded {
        operation: &'static str,
        after: Duration,
    },
    /// The runtime answered with an error: its own message.
    #[error("{0}")]
    Rejected(String),
}

/// The image side of a container runtime.
pub trait ImageRuntime: Send + Sync + 'static {
    /// Every image the runtime holds (one call, for a whole pass).
    fn list_images(&self)
    -> impl Future<Output = Result<Vec<PresentImage>, RuntimeFailure>> + Send;
    /// The image if present.
    fn image_status(
        &self,
        image: &str,
    ) -> impl Future<Output = Result<Option<PresentImage>, RuntimeFailure>> + Send;
    /// Pulls the image; returns the runtime's image id.
    fn pull_image(
        &self,
        image: &str,
        auth: Option<PullAuth<'_>>,
    ) -> impl Future<Output = Result<String, RuntimeFailure>> + Send;
}
