//! The pre-pull engine: keeps the desired images present in the runtime.
//!
//! One pass: a single `ListImages` to learn what is present, an `ImageStatus` to confirm what looks
//! absent, then `PullImage` for the rest with bounded parallelism. Each image is pulled once however
//! many PullSets list it; its candidates are tried in order (any failure moves on to the next, as the
//! kubelet does), transient failures are retried with capped, jittered exponential backoff. Every
//! owning PullSet gets an [`Outcome`].
//!
//! A runtime found unreachable (a call spent the CRI adapter's whole reconnect budget) ends the
//! pass early: no further call is made in it, every image not yet settled is reported once as a
//! `RuntimeError` saying the pass stopped early, and the next pass tries again. One reconnect
//! budget per pass, not one (times the retries) per image.

use crate::decide::credentials::Candidate;
use crate::decide::desired::{DesiredImage, Owner};
use crate::decide::runtime::{ImageRuntime, PresentImage, PullAuth, RuntimeFailure};
use crate::decide::secret_scrub::scrub;
use crate::model::outcome::{Action, Outcome, OutcomeKind, now_rfc3339};
use crate::model::verdict::Verdict;
use futures::StreamExt as _;
use secrecy::SecretString;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
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
    /// The runtime was found unreachable and the pass stopped early.
    pub runtime_down: bool,
    /// The agent is shutting down: the pass stopped without reporting every image.
    pub cancelled: bool,
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
    /// The attempt that pulled it; `None` when it was already present.
    by: Option<String>,
}

struct Failure {
    verdict: Verdict,
    message: String,
    /// The runtime is unreachable (this call found it so, or an earlier one in the pass did).
    runtime_down: bool,
}

/// What one pass has learnt about the runtime, shared by its images: set once, by the first call
/// that found the runtime unreachable, to that failure's message.
type RuntimeDown = OnceLock<String>;

/// The failure of a call not made because the runtime is known to be down in this pass.
fn stopped_early(down: &str) -> Failure {
    Failure {
        verdict: Verdict::RuntimeError,
        message: format!(
            "not attempted: the pass stopped early because the container runtime is unreachable ({down}); the next pass retries"
        ),
        runtime_down: true,
    }
}

/// One way to pull: a candidate credential, or anonymous. Labelled by source, never by value.
struct Attempt {
    label: String,
    candidate: Option<Candidate>,
}

struct ImageResult {
    result: Result<Success, Failure>,
    /// Failures of the attempts made, by label, in order.
    failed: Vec<(String, Failure)>,
    attempts: u32,
    elapsed: Duration,
}

const ANONYMOUS: &str = "anonymous";

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
        let down = RuntimeDown::new();
        let index = match self.runtime.list_images().await {
            Ok(images) => PresentIndex::new(images),
            Err(e @ RuntimeFailure::Unreachable { .. }) => {
                let _ = down.set(e.to_string());
                PresentIndex::default()
            }
            Err(e) => {
                tracing::warn!(error = %e, "ListImages failed; checking images one by one");
                PresentIndex::default()
            }
        };
        let mut summary = PassSummary::default();
        let mut results = futures::stream::iter(desired)
            .map(|d| {
                let (index, down) = (&index, &down);
                async move {
                    let r = self.ensure(d, index, down, cancel).await;
                    (d, r)
                }
            })
            .buffer_unordered(self.config.max_parallel);
        loop {
            // Shutting down: no image is started and those in flight are dropped (their calls
            // cancelled); what has no outcome yet is left to the next start.
            let next = tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    summary.cancelled = true;
                    tracing::info!("shutting down: the pre-pull pass stops");
                    break;
                }
                next = results.next() => next,
            };
            let Some((desired, result)) = next else { break };
            for outcome in self.outcomes(desired, &result) {
                summary.outcomes += 1;
                if !outcome.verdict.is_ok() {
                    summary.failures += 1;
                }
                sink(outcome);
            }
        }
        if let Some(cause) = down.get() {
            summary.runtime_down = true;
            tracing::warn!(error = %cause, images = desired.len(), "the container runtime is unreachable: the pass stopped early; the next pass retries");
        }
        summary
    }

    async fn ensure(
        &self,
        desired: &DesiredImage,
        index: &PresentIndex,
        down: &RuntimeDown,
        cancel: &CancellationToken,
    ) -> ImageResult {
        let start = Instant::now();
        let reference = desired.image.pull_reference();
        let mut attempts = 0;

        let present = |present: PresentImage, attempts: u32| ImageResult {
            result: Ok(Success {
                action: Action::Present,
                present,
                by: None,
            }),
            failed: Vec::new(),
            attempts,
            elapsed: start.elapsed(),
        };
        if let Some(found) = index.lookup(&desired.image) {
            return present(found.clone(), attempts);
        }

        // Confirm absence (the listing may be stale or the name spelled differently).
        let status = self
            .with_retries(cancel, down, &mut attempts, &[], || {
                self.runtime.image_status(&reference)
            })
            .await;
        match status {
            Ok(Some(found)) => return present(found, attempts),
            Ok(None) => {}
            Err(failure) => {
                return ImageResult {
                    result: Err(failure),
                    failed: Vec::new(),
                    attempts,
                    elapsed: start.elapsed(),
                };
            }
        }

        let plan = attempts_for(desired);
        let passwords: Vec<SecretString> = plan
            .iter()
            .filter_map(|a| a.candidate.as_ref())
            .flat_map(|c| c.secrets().cloned())
            .collect();
        let mut failed = Vec::new();
        for attempt in &plan {
            let pulled = self
                .with_retries(cancel, down, &mut attempts, &passwords, || {
                    let auth = attempt.candidate.as_ref().map(|c| PullAuth {
                        username: &c.username,
                        password: &c.password,
                    });
                    self.runtime.pull_image(&reference, auth)
                })
                .await;
            match pulled {
                Ok(image_id) => {
                    let status = match down.get() {
                        Some(_) => None,
                        None => self.runtime.image_status(&reference).await.ok().flatten(),
                    };
                    let present = status.unwrap_or_else(|| PresentImage {
                        id: image_id,
                        ..PresentImage::default()
                    });
                    return ImageResult {
                        result: Ok(Success {
                            action: Action::Pulled,
                            present,
                            by: Some(attempt.label.clone()),
                        }),
                        failed,
                        attempts,
                        elapsed: start.elapsed(),
                    };
                }
                Err(mut failure) => {
                    failure.message = scrub(&failure.message, &passwords);
                    tracing::debug!(image = %reference, credential = %attempt.label, verdict = %failure.verdict, "pull attempt failed");
                    // A runtime that is down says nothing of the next credential: stop here.
                    let stop = failure.runtime_down || cancel.is_cancelled();
                    failed.push((attempt.label.clone(), failure));
                    if stop {
                        break;
                    }
                }
            }
        }
        let last = failed.last().map_or_else(
            || Failure {
                verdict: Verdict::RuntimeError,
                message: "no pull was attempted".into(),
                runtime_down: false,
            },
            |(_, f)| Failure {
                verdict: f.verdict,
                message: f.message.clone(),
                runtime_down: f.runtime_down,
            },
        );
        ImageResult {
            result: Err(last),
            failed,
            attempts,
            elapsed: start.elapsed(),
        }
    }

    /// Runs `call`, retrying transient failures with the policy's backoff. Nothing is called once
    /// the runtime is known to be down in this pass; a call that finds it unreachable says so to
    /// the whole pass and is not retried (the adapter already spent its reconnect budget).
    async fn with_retries<T, F, Fut>(
        &self,
        cancel: &CancellationToken,
        down: &RuntimeDown,
        attempts: &mut u32,
        secrets: &[SecretString],
        mut call: F,
    ) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RuntimeFailure>>,
    {
        let mut delays = self.config.retry.delays();
        loop {
            if let Some(cause) = down.get() {
                return Err(stopped_early(cause));
            }
            *attempts += 1;
            let failure = match call().await {
                Ok(v) => return Ok(v),
                Err(e @ RuntimeFailure::Unreachable { .. }) => {
                    let cause = e.to_string();
                    let failure = Failure {
                        verdict: e.verdict(),
                        message: format!("{cause}; the pass stopped early, the next pass retries"),
                        runtime_down: true,
                    };
                    let _ = down.set(cause);
                    return Err(failure);
                }
                Err(e) => to_failure(e),
            };
            if !failure.verdict.is_transient() || cancel.is_cancelled() {
                return Err(failure);
            }
            let Some(delay) = delays.next() else {
                return Err(failure);
            };
            let error = scrub(&failure.message, secrets);
            tracing::debug!(verdict = %failure.verdict, %error, ?delay, "transient failure; retrying");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = cancel.cancelled() => return Err(failure),
            }
        }
    }

    /// One outcome per owner, each judged by its own credentials: an owner whose own attempts
    /// failed gets them as warnings even when another owner's credential pulled the image.
    fn outcomes(&self, desired: &DesiredImage, result: &ImageResult) -> Vec<Outcome> {
        let time = now_rfc3339();
        desired
            .owners
            .iter()
            .map(|owner| {
                let own: Vec<String> = owner_attempts(owner)
                    .into_iter()
                    .map(|(label, _)| label)
                    .collect();
                let own_failures: Vec<&(String, Failure)> = result
                    .failed
                    .iter()
                    .filter(|(label, _)| own.contains(label))
                    .collect();
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
                    size_bytes: None,
                    warnings: Vec::new(),
                };
                match &result.result {
                    Ok(s) => {
                        let by_own = s.by.as_ref().filter(|label| own.contains(label));
                        let message = match (s.action, &s.by, by_own) {
                            (Action::Present, _, _) => "image already present".to_string(),
                            (_, _, Some(_)) | (_, None, _) => "image pulled".to_string(),
                            (_, Some(other), None) => {
                                format!("image pulled with {other}, listed by another PullSet")
                            }
                        };
                        Outcome {
                            message,
                            action: s.action,
                            credential: by_own.cloned(),
                            image_ref: Some(s.present.id.clone()).filter(|id| !id.is_empty()),
                            repo_digest: s.present.repo_digest_for(&desired.image.name()),
                            size_bytes: (s.action == Action::Pulled && s.present.size > 0)
                                .then_some(s.present.size),
                            warnings: owner
                                .resolution
                                .blocked
                                .iter()
                                .map(|b| {
                                    format!(
                                        "this PullSet's own pull would fail: {}: {}",
                                        b.verdict, b.message
                                    )
                                })
                                .chain(own_failures.iter().map(|(label, f)| {
                                    format!("{label} failed: {}: {}", f.verdict, f.message)
                                }))
                                .collect(),
                            ..base
                        }
                    }
                    Err(_) if owner.resolution.blocked.is_some() => {
                        let blocked = owner.resolution.blocked.as_ref().map_or_else(
                            || (Verdict::SecretMalformed, String::new()),
                            |b| (b.verdict, b.message.clone()),
                        );
                        Outcome {
                            verdict: blocked.0,
                            message: blocked.1,
                            hint: Some(blocked.0.hint()),
                            ..base
                        }
                    }
                    Err(f) => {
                        // This owner's own last attempt explains its outcome; an earlier failure
                        // (ImageStatus) applies to every owner.
                        let (label, failure) = match own_failures.last() {
                            Some((label, failure)) => (Some(label.clone()), failure),
                            None => (None, f),
                        };
                        let (verdict, message) = owner
                            .resolution
                            .explain_failure(failure.verdict, &failure.message);
                        let earlier = own_failures.len().saturating_sub(1);
                        Outcome {
                            verdict,
                            message,
                            hint: Some(verdict.hint()),
                            credential: label,
                            warnings: own_failures[..earlier]
                                .iter()
                                .map(|(label, f)| {
                                    format!("{label} failed: {}: {}", f.verdict, f.message)
                                })
                                .collect(),
                            ..base
                        }
                    }
                }
            })
            .collect()
    }
}

fn to_failure(e: RuntimeFailure) -> Failure {
    Failure {
        verdict: e.verdict(),
        runtime_down: matches!(e, RuntimeFailure::Unreachable { .. }),
        message: e.to_string(),
    }
}

/// The pulls to try: each owner's candidates in owner order (anonymous for an owner with none),
/// each label once. Any failure moves on to the next, as the kubelet moves on to its next credential.
fn attempts_for(desired: &DesiredImage) -> Vec<Attempt> {
    let mut seen = HashSet::new();
    let mut plan = Vec::new();
    for owner in &desired.owners {
        for (label, candidate) in owner_attempts(owner) {
            if seen.insert(label.clone()) {
                plan.push(Attempt { label, candidate });
            }
        }
    }
    plan
}

fn owner_attempts(owner: &Owner) -> Vec<(String, Option<Candidate>)> {
    if owner.resolution.blocked.is_some() {
        // The kubelet fails such a pull before trying anything.
        Vec::new()
    } else if owner.resolution.candidates.is_empty() {
        vec![(ANONYMOUS.to_string(), None)]
    } else {
        owner
            .resolution
            .candidates
            .iter()
            .map(|c| (c.source.to_string(), Some(c.clone())))
            .collect()
    }
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

    fn lookup(&self, image: &crate::model::image_ref::ImageRef) -> Option<&PresentImage> {
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
