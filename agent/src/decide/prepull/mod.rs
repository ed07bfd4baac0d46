//! The pre-pull engine: keeps the desired images present in the runtime.
//!
//! One pass: a single `ListImages` to learn what is present, an `ImageStatus` to confirm what looks
//! absent, then `PullImage` for the rest with bounded parallelism. Each image is downloaded once
//! however many PullSets list it, but every owning PullSet is judged by its own credentials only:
//! its candidates are tried in order (any failure moves on to the next, as the kubelet does) until
//! one of its own succeeds; once the image is on the node (pulled by anyone, or already present)
//! that is a cheap re-resolve (`PullImage` of a cached image checks the manifest with the call's
//! credential). A credential (label) is tried once per image per pass, so owners in one namespace
//! sharing a Secret cost one call. An owner's [`Outcome`] names only its own credentials and
//! verdicts, never another namespace's. Transient failures are retried with capped, jittered
//! exponential backoff.
//!
//! A present image is re-resolved too, deliberately: the kubelet with `IfNotPresent` would start a
//! pod from the cache without asking the registry, but pullgate's answer is the one a pod gets on a
//! node without the image (DESIGN.md: "expiry masked by the node cache" is the failure it exists
//! to catch; the kubelet's own KEP-2535 `imagePullCredentialsVerificationPolicy` verifies a cached
//! image's credentials the same way).
//!
//! A runtime found unreachable (a call spent the CRI adapter's whole reconnect budget) ends the
//! pass early: no further call is made in it, every image not yet settled is reported once as a
//! `RuntimeError` saying the pass stopped early, and the next pass tries again. One reconnect
//! budget per pass, not one (times the retries) per image.

mod headroom;

pub use headroom::{HeadroomError, MinFreeDisk};

use crate::decide::credentials::Candidate;
use crate::decide::desired::{DesiredImage, Owner};
use crate::decide::runtime::{ImageRuntime, PresentImage, PullAuth, RuntimeFailure};
use crate::decide::secret_scrub::scrub;
use crate::model::outcome::{Action, Outcome, OutcomeKind, now_rfc3339};
use crate::model::verdict::Verdict;
use futures::StreamExt as _;
use secrecy::{ExposeSecret as _, SecretString};
use std::collections::HashMap;
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
    /// Free space kept on the image filesystem: no download starts at or below it.
    pub min_free_disk: MinFreeDisk,
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
    /// Owners' credentials that the runtime accepted for an image on the node, so that later passes
    /// do not ask the registry again (see [`Judged`]).
    judged: std::sync::Mutex<HashMap<(String, String), Judged>>,
}

/// How long an owner's credential that re-resolved an image on the node is taken as good without
/// asking again. Every pass (each `--recheck-interval`, each source change) would otherwise send
/// one manifest request per image and credential to the registry from every node, which registries
/// count as pulls (Docker Hub's rate limit). The canaries, not the pre-pull, watch a credential the
/// registry revokes behind an unchanged Secret; a changed Secret is a different credential and is
/// asked at once; a failure is never remembered (it is tried again on the next pass).
pub const REJUDGE_AFTER: Duration = Duration::from_secs(3600);

/// A credential the runtime accepted for an image: which image (its id), with what credential
/// (compared in memory, never hashed or shown), when.
struct Judged {
    image_id: String,
    username: String,
    password: SecretString,
    at: tokio::time::Instant,
}

impl Judged {
    fn still_holds(&self, image_id: &str, candidate: Option<&Candidate>) -> bool {
        let (username, password) = candidate.map_or(("", ""), |c| {
            (c.username.as_str(), c.password.expose_secret())
        });
        self.image_id == image_id
            && self.username == username
            && self.password.expose_secret() == password
            && self.at.elapsed() < REJUDGE_AFTER
    }
}

struct Success {
    action: Action,
    present: PresentImage,
}

#[derive(Clone)]
struct Failure {
    verdict: Verdict,
    message: String,
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
    }
}

struct ImageResult {
    /// The image is on the node (present or pulled), or the last failure.
    result: Result<Success, Failure>,
    /// Every attempt made, by label, in order: each owner is judged by its own.
    tried: Vec<(String, Result<(), Failure>)>,
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
            judged: std::sync::Mutex::default(),
        }
    }

    fn judged(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Judged>> {
        self.judged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs one pass over `desired`, handing each outcome to `sink` as soon as it is known.
    pub async fn pass(
        &self,
        desired: &[DesiredImage],
        cancel: &CancellationToken,
        sink: &(dyn Fn(Outcome) + Send + Sync),
    ) -> PassSummary {
        let down = RuntimeDown::new();
        {
            // What the sources no longer name is forgotten.
            let named: std::collections::HashSet<String> =
                desired.iter().map(|d| d.image.pull_reference()).collect();
            self.judged()
                .retain(|(reference, _), _| named.contains(reference));
        }
        let index = match self.runtime.list_images().await {
            Ok(images) => {
                // One look at the image filesystem per pass, downloads or not, so that what the
                // runtime adapter last read (its gauges) is never older than a pass.
                if self.config.min_free_disk.is_enabled() {
                    let _ = self.runtime.image_fs().await;
                }
                PresentIndex::new(images)
            }
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

        if let Some(found) = index.lookup(&desired.image) {
            let found = Some(found.clone());
            return self
                .judge_owners(desired, &reference, found, attempts, start, down, cancel)
                .await;
        }

        // Confirm absence (the listing may be stale or the name spelled differently).
        let status = self
            .with_retries(cancel, down, &mut attempts, &[], || {
                self.runtime.image_status(&reference)
            })
            .await;
        match status {
            Ok(Some(found)) => {
                return self
                    .judge_owners(
                        desired,
                        &reference,
                        Some(found),
                        attempts,
                        start,
                        down,
                        cancel,
                    )
                    .await;
            }
            Ok(None) => {
                if let Some(failure) = self.disk_pressure(down).await {
                    return ImageResult {
                        result: Err(failure),
                        tried: Vec::new(),
                        attempts,
                        elapsed: start.elapsed(),
                    };
                }
            }
            Err(failure) => {
                return ImageResult {
                    result: Err(failure),
                    tried: Vec::new(),
                    attempts,
                    elapsed: start.elapsed(),
                };
            }
        }

        self.judge_owners(desired, &reference, None, attempts, start, down, cancel)
            .await
    }

    /// A failure when the image filesystem is at or below the headroom (read before each download,
    /// as earlier pulls of the pass use space; not read at all with the headroom off). A
    /// filesystem that cannot be read does not stop the pull: the headroom is a guard, not a
    /// precondition; the runtime adapter says once per path why it cannot be read.
    async fn disk_pressure(&self, down: &RuntimeDown) -> Option<Failure> {
        if down.get().is_some() || !self.config.min_free_disk.is_enabled() {
            return None;
        }
        match self.runtime.image_fs().await {
            Ok(Some(space)) => self
                .config
                .min_free_disk
                .refuses(space)
                .map(|message| Failure {
                    verdict: Verdict::DiskPressure,
                    message,
                }),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "ImageFsInfo failed; pulling without a disk check");
                None
            }
        }
    }

    /// Tries each owner's own credentials in owner order until one of its own succeeds, each
    /// credential (label) at most once: owners in one namespace sharing a credential cost one call.
    /// `present` is the image found on the node before any pull: it is still resolved again with
    /// each owner's credentials (cheap, the layers are there), because a PullSet is judged by what
    /// its own pods would get on a node without the image, never by the node's cache or by another
    /// namespace's credential.
    #[allow(clippy::too_many_arguments)]
    async fn judge_owners(
        &self,
        desired: &DesiredImage,
        reference: &str,
        present: Option<PresentImage>,
        mut attempts: u32,
        start: Instant,
        down: &RuntimeDown,
        cancel: &CancellationToken,
    ) -> ImageResult {
        let passwords: Vec<SecretString> = desired
            .owners
            .iter()
            .flat_map(|o| o.resolution.candidates.iter())
            .flat_map(|c| c.secrets().cloned())
            .collect();
        let mut tried: Vec<(String, Result<(), Failure>)> = Vec::new();
        let mut pulled: Option<String> = None;
        for owner in &desired.owners {
            for (label, candidate) in owner_attempts(owner) {
                match tried.iter().find(|(l, _)| *l == label) {
                    Some((_, Ok(()))) => break,
                    Some((_, Err(_))) => continue,
                    None => {}
                }
                let memo = (reference.to_string(), label.clone());
                if let Some(present) = &present
                    && self
                        .judged()
                        .get(&memo)
                        .is_some_and(|j| j.still_holds(&present.id, candidate.as_ref()))
                {
                    tried.push((label, Ok(())));
                    break;
                }
                let result = self
                    .with_retries(cancel, down, &mut attempts, &passwords, || {
                        let auth = candidate.as_ref().map(|c| PullAuth {
                            username: &c.username,
                            password: &c.password,
                        });
                        self.runtime.pull_image(reference, auth)
                    })
                    .await;
                match result {
                    Ok(image_id) => {
                        // The id the runtime now holds under this reference (a moved tag is a
                        // new id, and a new judgement).
                        self.judged().insert(
                            memo,
                            Judged {
                                image_id: image_id.clone(),
                                username: candidate
                                    .as_ref()
                                    .map(|c| c.username.clone())
                                    .unwrap_or_default(),
                                password: candidate
                                    .as_ref()
                                    .map_or_else(|| SecretString::from(""), |c| c.password.clone()),
                                at: tokio::time::Instant::now(),
                            },
                        );
                        pulled.get_or_insert(image_id);
                        tried.push((label, Ok(())));
                        break;
                    }
                    Err(mut failure) => {
                        self.judged().remove(&memo);
                        failure.message = scrub(&failure.message, &passwords);
                        tracing::debug!(image = %reference, credential = %label, verdict = %failure.verdict, "pull attempt failed");
                        tried.push((label, Err(failure)));
                    }
                }
            }
        }
        let result = match (present, pulled) {
            (Some(present), _) => Ok(Success {
                action: Action::Present,
                present,
            }),
            (None, Some(image_id)) => {
                let status = match down.get() {
                    Some(_) => None,
                    None => self.runtime.image_status(reference).await.ok().flatten(),
                };
                Ok(Success {
                    action: Action::Pulled,
                    present: status.unwrap_or_else(|| PresentImage {
                        id: image_id,
                        ..PresentImage::default()
                    }),
                })
            }
            (None, None) => Err(tried
                .iter()
                .rev()
                .find_map(|(_, r)| r.as_ref().err().cloned())
                .unwrap_or_else(|| Failure {
                    verdict: Verdict::RuntimeError,
                    message: "no pull was attempted".into(),
                })),
        };
        ImageResult {
            result,
            tried,
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

    /// One outcome per owner, each judged by its own credentials only: Ok when one of its own
    /// attempts succeeded, else its own last failure. Nothing in an owner's outcome names another
    /// owner's credential or verdict (another namespace's Secret names are not its business).
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
                let own_tries: Vec<&(String, Result<(), Failure>)> = result
                    .tried
                    .iter()
                    .filter(|(label, _)| own.contains(label))
                    .collect();
                let success = own_tries.iter().find(|(_, r)| r.is_ok()).map(|(l, _)| l);
                let own_failures: Vec<(&String, &Failure)> = own_tries
                    .iter()
                    .filter_map(|(l, r)| r.as_ref().err().map(|f| (l, f)))
                    .collect();
                let warn = |failures: &[(&String, &Failure)]| -> Vec<String> {
                    failures
                        .iter()
                        .map(|(label, f)| format!("{label} failed: {}: {}", f.verdict, f.message))
                        .collect()
                };
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
                    pinned: None,
                    warnings: Vec::new(),
                    kubelet_access: Default::default(),
                    kubelet_access_warning: None,
                };
                if let Some(b) = &owner.resolution.blocked {
                    // The kubelet fails this owner's pull before trying anything, whoever else
                    // pulled the image.
                    return Outcome {
                        verdict: b.verdict,
                        message: b.message.clone(),
                        hint: Some(b.verdict.hint()),
                        ..base
                    };
                }
                match (&result.result, success) {
                    (Ok(s), Some(label)) => Outcome {
                        message: match s.action {
                            Action::Present => {
                                "image already present; this PullSet's credential resolves it"
                                    .to_string()
                            }
                            _ => "image pulled".to_string(),
                        },
                        action: s.action,
                        credential: Some((*label).clone()),
                        image_ref: Some(s.present.id.clone()).filter(|id| !id.is_empty()),
                        repo_digest: s.present.repo_digest_for(&desired.image.name()),
                        size_bytes: (s.action == Action::Pulled && s.present.size > 0)
                            .then_some(s.present.size),
                        warnings: warn(&own_failures),
                        ..base
                    },
                    (result, _) => {
                        // This owner's own last attempt explains its outcome; a failure before any
                        // pull (ImageStatus, a runtime down) applies to every owner.
                        let shared = result.as_ref().err();
                        let (label, failure) = match (own_failures.last(), shared) {
                            (Some((label, failure)), _) => (Some((*label).clone()), *failure),
                            (None, Some(f)) => (None, f),
                            (None, None) => {
                                return Outcome {
                                    verdict: Verdict::RuntimeError,
                                    message: "not checked with this PullSet's credentials in this pass; the next pass retries".into(),
                                    hint: Some(Verdict::RuntimeError.hint()),
                                    ..base
                                };
                            }
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
                            warnings: warn(&own_failures[..earlier]),
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
        message: e.to_string(),
    }
}

/// The pulls an owner may be judged by: its candidates in order (anonymous when it has none).
/// Any failure moves on to the next, as the kubelet moves on to its next credential.
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
