//! Runs the canaries for the images of a PullSet: resolves the candidates as the kubelet would,
//! probes with each in order until one works — registry-direct through a [`RegistryProbe`], and for
//! `canary.runtime: true` also through the runtime's `PullImage` ([`ImageRuntime`]) — and turns what
//! happened into one outcome per image and path. A fallback never hides a broken secret: when an
//! earlier candidate fails and a later one (or nothing) succeeds, the outcome is `Ok` with a
//! [`CanaryWarning::CredentialFailing`].

use crate::decide::canary::warning::{CanaryWarning, HostVerdict};
use crate::decide::credentials::{Candidate, CredentialResolver, Resolution};
use crate::decide::runtime::{ImageRuntime, PullAuth, RegistryMirrors};
use crate::decide::secret_scrub::scrub;
use crate::model::image_ref::ImageRef;
use crate::model::inventory::Inventory;
use crate::model::outcome::now_rfc3339;
use crate::model::pullset::{CanaryDepth, ValidPullSet};
use crate::model::time::rfc3339_seconds;
use crate::model::verdict::Verdict;
use futures::future::BoxFuture;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// What a probe saw when it worked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeReport {
    pub manifest_digest: String,
    pub blobs: usize,
    pub bytes: u64,
    pub requests: u32,
    /// What the probe warns about besides its verdict (a blob over the byte budget).
    pub warnings: Vec<CanaryWarning>,
    /// The hosts walked, when the probe walked the runtime's hosts; `node` is the one that
    /// answered.
    pub walk: Walk,
}

/// Why a probe failed, already classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeFailure {
    pub verdict: Verdict,
    pub message: String,
    /// The hosts walked; `node` is the one whose error the node reports.
    pub walk: Walk,
}

impl ProbeFailure {
    /// A failure of no particular host.
    pub fn new(verdict: Verdict, message: String) -> Self {
        Self {
            verdict,
            message,
            walk: Walk::default(),
        }
    }
}

/// The hosts a registry-direct probe tried, in the runtime's order (`decide::canary::hosts_walk`),
/// each with its verdict, and which one gives the node's answer. Empty: not walked (a single host
/// whose name the outcome does not need, or another path).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Walk {
    pub hosts: Vec<HostVerdict>,
    /// Index into `hosts` of the host whose answer is the node's.
    pub node: Option<usize>,
}

impl Walk {
    /// The host whose answer is the node's.
    pub fn node_host(&self) -> Option<&str> {
        self.node
            .and_then(|i| self.hosts.get(i))
            .map(|h| h.host.as_str())
    }

    /// What the outcome warns about the hosts, when they did not all agree with the node's
    /// answer: on success the hosts that fail besides the one that answered
    /// ([`CanaryWarning::MirrorMasks`]); on failure the hosts that failed otherwise
    /// ([`CanaryWarning::HostsDisagree`]).
    fn warning(&self, registry: &str) -> Option<CanaryWarning> {
        let i = self.node?;
        let node = self.hosts.get(i)?;
        if node.verdict.is_ok() {
            let before: Vec<HostVerdict> = self.hosts[..i].to_vec();
            let after: Vec<HostVerdict> = self.hosts[i + 1..]
                .iter()
                .filter(|h| !h.verdict.is_ok())
                .cloned()
                .collect();
            (!before.is_empty() || !after.is_empty()).then(|| CanaryWarning::MirrorMasks {
                registry: registry.to_string(),
                answered: node.host.clone(),
                before,
                after,
            })
        } else {
            let others: Vec<HostVerdict> = self
                .hosts
                .iter()
                .enumerate()
                .filter(|(j, h)| *j != i && h.verdict != node.verdict)
                .map(|(_, h)| h.clone())
                .collect();
            (!others.is_empty()).then(|| CanaryWarning::HostsDisagree {
                registry: registry.to_string(),
                reported: node.host.clone(),
                others,
            })
        }
    }

    fn scrubbed<'s>(
        mut self,
        secrets: impl Iterator<Item = &'s secrecy::SecretString> + Clone,
    ) -> Self {
        for h in &mut self.hosts {
            h.message = scrub(&h.message, secrets.clone());
        }
        self
    }
}

/// A registry-direct probe, as the canary needs it (implemented by the registry adapter).
pub trait RegistryProbe: Send + Sync {
    fn probe<'a>(
        &'a self,
        image: &'a ImageRef,
        candidate: Option<&'a Candidate>,
        depth: CanaryDepth,
    ) -> BoxFuture<'a, Result<ProbeReport, ProbeFailure>>;
}

/// Which path a canary took.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CanaryPath {
    /// Straight to the registry, bypassing the node.
    Registry,
    /// Through the container runtime's CRI `PullImage`.
    Runtime,
}

/// What made a canary run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Startup,
    Schedule,
    Rotation,
    Retry,
    Manual,
}

/// One canary outcome: a JSON line of `kind: canary`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CanaryOutcome {
    /// Always `canary`.
    pub kind: &'static str,
    pub time: String,
    pub node: String,
    pub namespace: String,
    pub pullset: String,
    pub image: String,
    pub trigger: Trigger,
    pub path: CanaryPath,
    pub depth: CanaryDepth,
    /// The host that gave the node's answer, when the registry-direct canary walked the
    /// runtime's hosts: the one that served the pull, or the one whose error the node reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The credential that worked (or was tried last), by source and key; `anonymous`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    pub verdict: Verdict,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<&'static str>,
    pub duration_ms: u64,
    /// Bytes fetched and verified.
    pub bytes: u64,
    /// Bytes per second over the probe (`full` depth).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput_bps: Option<u64>,
    /// HTTP requests the registry served for this check.
    pub requests: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    /// When the credential used says it expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Serialised as their text (`CredentialFailing: …`, `ExpiringSoon: …`, `MirrorInPath: …`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<CanaryWarning>,
}

/// Runs canaries.
pub struct CanaryRunner<P> {
    pub probe: P,
    pub node: String,
    /// Warn when a credential expires within this window.
    pub expiry_warning: Duration,
    /// For runtime canaries (`canary.runtime: true`): `PullImage` through the node's runtime;
    /// none: registry-direct only.
    pub runtime: Option<Arc<dyn ImageRuntime>>,
    /// The runtime's registry routing, to say when a runtime canary went through a mirror; none:
    /// not known.
    pub mirrors: Option<Arc<dyn RegistryMirrors>>,
}

impl<P: RegistryProbe> CanaryRunner<P> {
    /// Every image of `set`, in order.
    pub async fn check_pullset(
        &self,
        inventory: &Inventory,
        set: &ValidPullSet,
        resolver: &dyn CredentialResolver,
        depth: CanaryDepth,
        trigger: Trigger,
    ) -> Vec<CanaryOutcome> {
        let mut out = Vec::with_capacity(set.images.len());
        let with_runtime = set.spec.canary.as_ref().is_some_and(|c| c.runtime);
        for image in &set.images {
            let resolution = resolver.resolve(inventory, set, image).await;
            out.push(
                self.check_image(
                    &set.key.namespace,
                    &set.key.name,
                    image,
                    &resolution,
                    depth,
                    trigger,
                )
                .await,
            );
            if with_runtime {
                out.push(
                    self.check_runtime(
                        &set.key.namespace,
                        &set.key.name,
                        image,
                        &resolution,
                        trigger,
                    )
                    .await,
                );
            }
        }
        out
    }

    /// A runtime canary for one image: `PullImage` through the CRI with the same candidates.
    pub async fn check_runtime(
        &self,
        namespace: &str,
        pullset: &str,
        image: &ImageRef,
        resolution: &Resolution,
        trigger: Trigger,
    ) -> CanaryOutcome {
        let Some(runtime) = self.runtime.clone() else {
            let mut o = self.blank(
                namespace,
                pullset,
                image,
                CanaryDepth::Manifest,
                trigger,
                CanaryPath::Runtime,
            );
            o.verdict = Verdict::RuntimeError;
            o.message = "runtime canary requested but no CRI endpoint is configured".into();
            o.hint = Some(Verdict::RuntimeError.hint());
            return o;
        };
        let reference = image.pull_reference();
        let mirrors = self
            .mirrors
            .as_ref()
            .map(|m| m.mirrors(&image.registry))
            .unwrap_or_default();
        let runtime = &runtime;
        let reference = &reference;
        let mut o = self
            .attempt(
                namespace,
                pullset,
                image,
                resolution,
                CanaryDepth::Manifest,
                trigger,
                CanaryPath::Runtime,
                |candidate| {
                    let auth = candidate.map(|c| PullAuth {
                        username: &c.username,
                        password: &c.password,
                    });
                    Box::pin(async move {
                        match runtime.pull_image(reference, auth).await {
                            Ok(id) => Ok(ProbeReport {
                                manifest_digest: id,
                                ..ProbeReport::default()
                            }),
                            Err(failure) => {
                                Err(ProbeFailure::new(failure.verdict(), failure.to_string()))
                            }
                        }
                    })
                },
            )
            .await;
        if o.verdict.is_ok() {
            o.manifest_digest = None;
            o.message = "pulled through the runtime (the registry re-resolved the reference with this credential)".into();
        }
        if !mirrors.is_empty() {
            o.warnings.push(CanaryWarning::MirrorInPath {
                registry: image.registry.clone(),
                mirrors,
            });
        }
        o
    }

    /// One image with a resolution already made, registry-direct.
    pub async fn check_image(
        &self,
        namespace: &str,
        pullset: &str,
        image: &ImageRef,
        resolution: &Resolution,
        depth: CanaryDepth,
        trigger: Trigger,
    ) -> CanaryOutcome {
        self.attempt(
            namespace,
            pullset,
            image,
            resolution,
            depth,
            trigger,
            CanaryPath::Registry,
            |candidate| self.probe.probe(image, candidate, depth),
        )
        .await
    }

    fn blank(
        &self,
        namespace: &str,
        pullset: &str,
        image: &ImageRef,
        depth: CanaryDepth,
        trigger: Trigger,
        path: CanaryPath,
    ) -> CanaryOutcome {
        CanaryOutcome {
            kind: "canary",
            time: now_rfc3339(),
            node: self.node.clone(),
            namespace: namespace.to_string(),
            pullset: pullset.to_string(),
            image: image.to_string(),
            trigger,
            path,
            depth,
            host: None,
            credential: None,
            verdict: Verdict::Ok,
            message: String::new(),
            hint: None,
            duration_ms: 0,
            bytes: 0,
            throughput_bps: None,
            requests: 0,
            manifest_digest: None,
            expires_at: None,
            warnings: Vec::new(),
        }
    }

    /// Tries the candidates in order with `probe` until one works.
    #[allow(clippy::too_many_arguments)]
    async fn attempt<'a, F>(
        &'a self,
        namespace: &str,
        pullset: &str,
        image: &ImageRef,
        resolution: &'a Resolution,
        depth: CanaryDepth,
        trigger: Trigger,
        path: CanaryPath,
        probe: F,
    ) -> CanaryOutcome
    where
        F: Fn(Option<&'a Candidate>) -> BoxFuture<'a, Result<ProbeReport, ProbeFailure>>,
    {
        let start = Instant::now();
        let mut outcome = self.blank(namespace, pullset, image, depth, trigger, path);
        if let Some(blocked) = &resolution.blocked {
            outcome.verdict = blocked.verdict;
            outcome.message = blocked.message.clone();
            outcome.hint = Some(blocked.verdict.hint());
            outcome.duration_ms = millis(start.elapsed());
            return outcome;
        }
        let attempts: Vec<Option<&Candidate>> = if resolution.candidates.is_empty() {
            vec![None]
        } else {
            resolution.candidates.iter().map(Some).collect()
        };
        let passwords = resolution.candidates.iter().flat_map(|c| c.secrets());
        let passwords: Vec<_> = passwords.collect();
        let mut failures: Vec<(String, ProbeFailure)> = Vec::new();
        let now = SystemTime::now();
        for candidate in attempts {
            let label = candidate.map_or_else(|| "anonymous".to_string(), |c| c.source.to_string());
            let expired = candidate
                .and_then(|c| c.expires_at)
                .is_some_and(|t| t <= now);
            match probe(candidate).await {
                Ok(report) => {
                    let elapsed = start.elapsed();
                    outcome.credential = Some(label);
                    outcome.message = match depth {
                        CanaryDepth::Manifest => "manifest resolved".into(),
                        CanaryDepth::Blobs => {
                            format!("manifest and {} blob(s) reachable", report.blobs)
                        }
                        CanaryDepth::Full => {
                            let head_only = report
                                .warnings
                                .iter()
                                .filter(|w| matches!(w, CanaryWarning::NotDownloaded { .. }))
                                .count();
                            let mut m = format!(
                                "{} blob(s) downloaded and verified ({} bytes)",
                                report.blobs - head_only.min(report.blobs),
                                report.bytes
                            );
                            if head_only > 0 {
                                m.push_str(&format!(
                                    ", {head_only} over the byte budget checked by HEAD only"
                                ));
                            }
                            m
                        }
                    };
                    outcome.bytes = report.bytes;
                    outcome.requests += report.requests;
                    outcome.manifest_digest =
                        Some(report.manifest_digest).filter(|d| !d.is_empty());
                    if depth == CanaryDepth::Full && elapsed.as_millis() > 0 {
                        outcome.throughput_bps =
                            Some((report.bytes as u128 * 1000 / elapsed.as_millis()) as u64);
                    }
                    if let Some(expires) = candidate.and_then(|c| c.expires_at) {
                        outcome.expires_at = Some(rfc3339_seconds(expires));
                        if expired {
                            outcome.warnings.push(CanaryWarning::ExpiryPassed);
                        } else if expires.duration_since(now).unwrap_or_default()
                            <= self.expiry_warning
                        {
                            outcome
                                .warnings
                                .push(CanaryWarning::ExpiringSoon { at: expires });
                        }
                    }
                    outcome.warnings.extend(credential_failing(&failures));
                    outcome.warnings.extend(report.warnings);
                    let walk = report.walk.scrubbed(passwords.iter().copied());
                    outcome.host = walk.node_host().map(str::to_string);
                    outcome.warnings.extend(walk.warning(&image.registry));
                    outcome.duration_ms = millis(elapsed);
                    return outcome;
                }
                Err(mut failure) => {
                    failure.message = scrub(&failure.message, passwords.iter().copied());
                    failure.walk = failure.walk.scrubbed(passwords.iter().copied());
                    if expired && failure.verdict == Verdict::Unauthorized {
                        failure.verdict = Verdict::Expired;
                    }
                    failures.push((label, failure));
                }
            }
        }
        let (label, last) = failures.pop().unwrap_or_else(|| {
            (
                "anonymous".into(),
                ProbeFailure::new(Verdict::RuntimeError, "no probe was made".into()),
            )
        });
        let (verdict, message) = if last.verdict == Verdict::Expired {
            (
                Verdict::Expired,
                format!("{label} has expired: {}", last.message),
            )
        } else {
            resolution.explain_failure(last.verdict, &last.message)
        };
        outcome.credential = Some(label);
        outcome.verdict = verdict;
        outcome.message = message;
        outcome.hint = Some(verdict.hint());
        outcome.warnings = credential_failing(&failures).collect();
        outcome.host = last.walk.node_host().map(str::to_string);
        outcome.warnings.extend(last.walk.warning(&image.registry));
        outcome.duration_ms = millis(start.elapsed());
        outcome
    }
}

/// The warnings for candidates that failed before the one that decided.
fn credential_failing(
    failures: &[(String, ProbeFailure)],
) -> impl Iterator<Item = CanaryWarning> + '_ {
    failures
        .iter()
        .map(|(label, f)| CanaryWarning::CredentialFailing {
            credential: label.clone(),
            verdict: f.verdict,
            message: f.message.clone(),
        })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
pub(crate) mod tests;
