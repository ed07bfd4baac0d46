//! The pre-pull engine: keeps the desired images present in the runtime.
//!
//! One pass: a single `ListImages` to learn what is present, an `ImageStatus` to confirm what looks
//! absent, then `PullImage` for the rest with bounded parallelism. Each image is pulled once however
//! many PullSets list it; its candidates are tried in order (any failure moves on to the next, as the
//! kubelet does), transient failures are retried with capped, jittered exponential backoff. Every
//! owning PullSet gets an [`Outcome`].

use crate::credentials::Candidate;
use crate::desired::DesiredImage;
use crate::outcome::{Action, Outcome, OutcomeKind, now_rfc3339};
use crate::runtime::{ImageRuntime, PresentImage, PullAuth, RuntimeFailure};
use crate::secret_scrub::scrub;
use crate::verdict::{Verdict, classify_pull_error};
use futures::StreamExt as _;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Retry policy for transient failures (network, rate limit, runtime unavailable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per candidate, the first included (at least 1).
    pub attempts: u32,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Delays between attempts: exponential from `min_delay`, capped at `max_delay`, with jitter.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        backon::BackoffBuilder::build(
            backon::ExponentialBuilder::default()
                .with_min_delay(self.min_delay)
                .with_max_delay(self.max_delay)
                .with_factor(2.0)
                .with_max_times(self.attempts.saturating_sub(1) as usize)
                .with_jitter(),
        )
    }
}

/// Engine settings.
#[derive(Clone, Copy, Debug)]
pub struct PrePullConfig {
    pub max_parallel: usize,
    pub retry: RetryPolicy,
}

/// Totals of a pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassSummary {
    pub outcomes: usize,
    pub failures: usize,
}

/// The engine, generic over the runtime it drives.
pub struct PrePuller<R> {
    runtime: Arc<R>,
    config: PrePullConfig,
    node: String,
}

struct Success {
    action: Action,
    present: PresentImage,
    credential: Option<String>,
}

struct Failure {
    verdict: Verdict,
    message: String,
    credential: Option<String>,
}

struct ImageResult {
    result: Result<Success, Failure>,
    attempts: u32,
    elapsed: Duration,
    /// Candidates that failed before another succeeded: they would break a pod that gets only them.
    warnings: Vec<String>,
}

impl<R: ImageRuntime> PrePuller<R> {
    pub fn new(runtime: Arc<R>, config: PrePullConfig, node: impl Into<String>) -> Self {
        Self {
            runtime,
            config: PrePullConfig {
                max_parallel: config.max_parallel.max(1),
                ..config
            },
            node: node.into(),
        }
    }

    /// Runs one pass over `desired`, handing each outcome to `sink` as soon as it is known.
    pub async fn pass(
        &self,
        desired: &[DesiredImage],
        cancel: &CancellationToken,
        sink: &(dyn Fn(Outcome) + Send + Sync),
    ) -> PassSummary {
        let index = match self.runtime.list_images().await {
            Ok(images) => PresentIndex::new(images),
            Err(e) => {
                tracing::warn!(error = %e, "ListImages failed; checking images one by one");
                PresentIndex::default()
            }
        };
        let mut summary = PassSummary::default();
        let mut results = futures::stream::iter(desired)
            .map(|d| {
                let index = &index;
                async move {
                    let r = self.ensure(d, index, cancel).await;
                    (d, r)
                }
            })
            .buffer_unordered(self.config.max_parallel);
        while let Some((desired, result)) = results.next().await {
            for outcome in self.outcomes(desired, &result) {
                summary.outcomes += 1;
                if !outcome.verdict.is_ok() {
                    summary.failures += 1;
                }
                sink(outcome);
            }
        }
        summary
    }

    async fn ensure(&self, desired: &DesiredImage, index: &PresentIndex, cancel: &CancellationToken) -> ImageResult {
        let start = Instant::now();
        let reference = desired.image.pull_reference();
        let mut attempts = 0;
        let mut warnings = Vec::new();

        if let Some(present) = index.lookup(&desired.image) {
            return ImageResult {
                result: Ok(Success {
                    action: Action::Present,
                    present: present.clone(),
                    credential: None,
                }),
                attempts,
                elapsed: start.elapsed(),
                warnings,
            };
        }

        // Confirm absence (the listing may be stale or the name spelled differently).
        let status = self
            .with_retries(cancel, &mut attempts, || self.runtime.image_status(&reference))
            .await;
        match status {
            Ok(Some(present)) => {
                return ImageResult {
                    result: Ok(Success {
                        action: Action::Present,
                        present,
                        credential: None,
                    }),
                    attempts,
                    elapsed: start.elapsed(),
                    warnings,
                };
            }
            Ok(None) => {}
            Err(failure) => {
                return ImageResult {
                    result: Err(failure),
                    attempts,
                    elapsed: start.elapsed(),
                    warnings,
                };
            }
        }

        let candidates = merged_candidates(desired);
        let mut last = None;
        let tries: Vec<Option<&Candidate>> = if candidates.is_empty() {
            vec![None]
        } else {
            candidates.iter().map(Some).collect()
        };
        for candidate in tries {
            let label = candidate.map_or_else(|| "anonymous".to_string(), |c| c.source.to_string());
            let pulled = self
                .with_retries(cancel, &mut attempts, || {
                    let auth = candidate.map(|c| PullAuth {
                        username: &c.username,
                        password: &c.password,
                    });
                    self.runtime.pull_image(&reference, auth)
                })
                .await;
            match pulled {
                Ok(image_id) => {
                    let present = match self.runtime.image_status(&reference).await {
                        Ok(Some(p)) => p,
                        _ => PresentImage {
                            id: image_id,
                            ..PresentImage::default()
                        },
                    };
                    return ImageResult {
                        result: Ok(Success {
                            action: Action::Pulled,
                            present,
                            credential: Some(label),
                        }),
                        attempts,
                        elapsed: start.elapsed(),
                        warnings,
                    };
                }
                Err(mut failure) => {
                    failure.message = scrub(&failure.message, candidates.iter().map(|c| &c.password));
                    if cancel.is_cancelled() {
                        last = Some(Failure {
                            credential: Some(label),
                            ..failure
                        });
                        break;
                    }
                    warnings.push(format!("{label} failed: {} ({})", failure.verdict, failure.message));
                    last = Some(Failure {
                        credential: Some(label),
                        ..failure
                    });
                }
            }
        }
        // The last failure is the outcome itself; the warnings keep the earlier candidates' failures.
        warnings.pop();
        let failure = last.unwrap_or(Failure {
            verdict: Verdict::RuntimeError,
            message: "no pull was attempted".into(),
            credential: None,
        });
        tracing::debug!(image = %reference, verdict = %failure.verdict, "pre-pull failed");
        ImageResult {
            result: Err(failure),
            attempts,
            elapsed: start.elapsed(),
            warnings,
        }
    }

    /// Runs `call`, retrying transient failures with the policy's backoff.
    async fn with_retries<T, F, Fut>(&self, cancel: &CancellationToken, attempts: &mut u32, mut call: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RuntimeFailure>>,
    {
        let mut delays = self.config.retry.delays();
        loop {
            *attempts += 1;
            let failure = match call().await {
                Ok(v) => return Ok(v),
                Err(e) => to_failure(e),
            };
            if !failure.verdict.is_transient() || cancel.is_cancelled() {
                return Err(failure);
            }
            let Some(delay) = delays.next() else {
                return Err(failure);
            };
            tracing::debug!(verdict = %failure.verdict, error = %failure.message, ?delay, "transient failure; retrying");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = cancel.cancelled() => return Err(failure),
            }
        }
    }

    fn outcomes(&self, desired: &DesiredImage, result: &ImageResult) -> Vec<Outcome> {
        let time = now_rfc3339();
        desired
            .owners
            .iter()
            .map(|owner| {
                let base = Outcome {
                    kind: OutcomeKind::Prepull,
                    time: time.clone(),
                    node: self.node.clone(),
                    namespace: owner.pullset.namespace.clone(),
                    pullset: owner.pullset.name.clone(),
                    image: desired.image.to_string(),
                    verdict: Verdict::Ok,
                    message: String::new(),
                    hint: None,
                    duration_ms: u64::try_from(result.elapsed.as_millis()).unwrap_or(u64::MAX),
                    action: Action::Failed,
                    attempts: result.attempts,
                    credential: None,
                    image_ref: None,
                    repo_digest: None,
                    warnings: result.warnings.clone(),
                };
                match &result.result {
                    Ok(s) => Outcome {
                        message: match s.action {
                            Action::Present => "image already present".into(),
                            _ => "image pulled".into(),
                        },
                        action: s.action,
                        credential: s.credential.clone(),
                        image_ref: Some(s.present.id.clone()).filter(|id| !id.is_empty()),
                        repo_digest: s.present.repo_digest_for(&desired.image.name()),
                        ..base
                    },
                    Err(f) => {
                        let (verdict, message) = owner.resolution.explain_failure(f.verdict, &f.message);
                        Outcome {
                            verdict,
                            message,
                            hint: Some(verdict.hint()),
                            credential: f.credential.clone(),
                            ..base
                        }
                    }
                }
            })
            .collect()
    }
}

fn to_failure(e: RuntimeFailure) -> Failure {
    let verdict = match &e {
        RuntimeFailure::Unreachable { .. } | RuntimeFailure::DeadlineExceeded { .. } => Verdict::RuntimeError,
        RuntimeFailure::Rejected(message) => classify_pull_error(message),
    };
    Failure {
        verdict,
        message: e.to_string(),
        credential: None,
    }
}

/// Candidates of every owner, in owner order, each source once.
fn merged_candidates(desired: &DesiredImage) -> Vec<Candidate> {
    let mut seen = HashSet::new();
    desired
        .owners
        .iter()
        .flat_map(|o| o.resolution.candidates.iter())
        .filter(|c| seen.insert(c.source.to_string()))
        .cloned()
        .collect()
}

/// What `ListImages` returned, by tag and by digest.
#[derive(Default)]
struct PresentIndex {
    by_name: HashMap<String, PresentImage>,
}

impl PresentIndex {
    fn new(images: Vec<PresentImage>) -> Self {
        let mut by_name = HashMap::new();
        for image in images {
            for name in image.repo_tags.iter().chain(image.repo_digests.iter()) {
                by_name.insert(name.clone(), image.clone());
            }
        }
        Self { by_name }
    }

    fn lookup(&self, image: &crate::image_ref::ImageRef) -> Option<&PresentImage> {
        let key = match (&image.digest, &image.tag) {
            (Some(d), _) => format!("{}@{d}", image.name()),
            (None, Some(t)) => format!("{}:{t}", image.name()),
            (None, None) => format!("{}:latest", image.name()),
        };
        self.by_name.get(&key)
    }
}

#[cfg(test)]
mod tests;
