//! Who may start a pre-pulled image on this node: the kubelet's verification of pre-pulled images
//! (KEP-2535, feature gate `KubeletEnsureSecretPulledImages`: alpha 1.33–1.34 off by default, beta
//! from 1.35 on by default), ported from `pkg/kubelet/images/pullmanager/image_pull_policies.go`
//! (v1.35/v1.36: the policies, the allowlist's validation with the kubelet's error texts and its
//! matching of a pod's image as written, tag and digest trimmed).
//!
//! An image pullgate pulls through the CRI has no kubelet "pulled record", so the kubelet counts it
//! as *preloaded*:
//!
//! | gate | `imagePullCredentialsVerificationPolicy` | a pod naming the present image (`IfNotPresent`) |
//! |---|---|---|
//! | off (before 1.35 by default) | ignored | starts, no credential asked: [`KubeletAccess::AnyPod`] |
//! | on | `NeverVerify` | starts: `AnyPod` |
//! | on | `NeverVerifyPreloadedImages` (default) | starts (no pulled record): `AnyPod` |
//! | on | `NeverVerifyAllowlistedImages` | listed in `preloadedImagesVerificationAllowlist`: `AnyPod`; else each new credential is checked with the registry: `VerifiedPerCredential` |
//! | on | `AlwaysVerify` | `VerifiedPerCredential` |
//!
//! Where the gate's default matters (the last two rows) and neither the file nor the kubelet's
//! version says it, the answer is [`KubeletAccess::Unknown`]. A private image (its pre-pull used a
//! credential) that any pod may start is the warning's subject; a public one (pulled anonymously)
//! is `AnyPod` too, with nothing to warn about.

use crate::model::image_ref::ImageRef;
use crate::model::outcome::{KubeletAccess, Outcome};
use std::collections::BTreeSet;

/// The credential label of a pull without credentials (`decide::prepull`'s).
const ANONYMOUS: &str = "anonymous";

/// The feature gate's name, in `featureGates` and `--feature-gates`.
pub const FEATURE_GATE: &str = "KubeletEnsureSecretPulledImages";

/// The kubelet's `imagePullCredentialsVerificationPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerificationPolicy {
    NeverVerify,
    NeverVerifyPreloadedImages,
    NeverVerifyAllowlistedImages,
    AlwaysVerify,
}

impl VerificationPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NeverVerify => "NeverVerify",
            Self::NeverVerifyPreloadedImages => "NeverVerifyPreloadedImages",
            Self::NeverVerifyAllowlistedImages => "NeverVerifyAllowlistedImages",
            Self::AlwaysVerify => "AlwaysVerify",
        }
    }
}

impl std::fmt::Display for VerificationPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the kubelet refuses in its configuration (it does not start with it); the texts are the
/// kubelet's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KubeletPolicyError {
    #[error("unknown image pull credential verification policy: {0}")]
    UnknownPolicy(String),
    #[error("leading/trailing spaces are not allowed: {0}")]
    Spaces(String),
    #[error("the supplied pattern is too short: {0}")]
    TooShort(String),
    #[error("not a valid wildcard pattern, only patterns ending with '/*' are allowed: {0}")]
    Wildcard(String),
    #[error("at least registry hostname is required")]
    NoHost,
    #[error("failed to parse as an image name: {0}")]
    NotAnImage(String),
    #[error("neither tag nor digest is accepted in an image reference: {0}")]
    TagOrDigest(String),
    #[error(
        "preloadedImagesVerificationAllowlist is set, but imagePullCredentialsVerificationPolicy is {0}, not NeverVerifyAllowlistedImages"
    )]
    AllowlistUnused(VerificationPolicy),
}

impl std::str::FromStr for VerificationPolicy {
    type Err = KubeletPolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "NeverVerify" => Self::NeverVerify,
            "NeverVerifyPreloadedImages" => Self::NeverVerifyPreloadedImages,
            "NeverVerifyAllowlistedImages" => Self::NeverVerifyAllowlistedImages,
            "AlwaysVerify" => Self::AlwaysVerify,
            other => return Err(KubeletPolicyError::UnknownPolicy(other.to_string())),
        })
    }
}

/// `preloadedImagesVerificationAllowlist`: image names without tag or digest, or a full path
/// segment prefix (`registry.example.com/team/*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    exact: BTreeSet<String>,
    /// Each ends with `/`.
    prefixes: Vec<String>,
}

impl Allowlist {
    /// The kubelet's `NewNeverVerifyAllowListedPullPolicy`: every pattern valid, or the first
    /// error (the kubelet refuses to start).
    pub fn parse(patterns: &[String]) -> Result<Self, KubeletPolicyError> {
        let mut list = Self::default();
        for pattern in patterns {
            if pattern != pattern.trim() {
                return Err(KubeletPolicyError::Spaces(pattern.clone()));
            }
            let (trimmed, wildcard) = match pattern.strip_suffix("/*") {
                Some(_) => (&pattern[..pattern.len() - 1], true),
                None => (pattern.as_str(), false),
            };
            if trimmed.is_empty() {
                return Err(KubeletPolicyError::TooShort(pattern.clone()));
            }
            if trimmed.contains('*') {
                return Err(KubeletPolicyError::Wildcard(pattern.clone()));
            }
            if wildcard {
                if trimmed.len() == 1 {
                    return Err(KubeletPolicyError::NoHost);
                }
                list.prefixes.push(trimmed.to_string());
                continue;
            }
            let parsed = ImageRef::parse(trimmed)
                .map_err(|e| KubeletPolicyError::NotAnImage(e.to_string()))?;
            if parsed.tag.is_some() || parsed.digest.is_some() {
                return Err(KubeletPolicyError::TagOrDigest(pattern.clone()));
            }
            list.exact.insert(trimmed.to_string());
        }
        Ok(list)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    /// The kubelet's `imageMatches` for a pod's image as written: the exact names compared with
    /// the image without tag and digest, the prefixes with the image as written.
    pub fn matches_written(&self, image: &str) -> bool {
        self.exact.contains(trim_tag_digest(image))
            || self.prefixes.iter().any(|p| image.starts_with(p.as_str()))
    }

    /// Whether a pod naming `image` in any of its usual spellings (`registry.example.com/a/b`;
    /// on Docker Hub also `nginx`, `library/nginx`, `docker.io/library/nginx`) is exempted: the
    /// kubelet compares the pod's string as written, and a pod may write any of them.
    pub fn matches(&self, image: &ImageRef) -> bool {
        spellings(image).iter().any(|s| self.matches_written(s))
    }
}

/// `registry/repository` and, on Docker Hub, its familiar forms.
fn spellings(image: &ImageRef) -> Vec<String> {
    let mut out = vec![image.name()];
    if image.registry == "docker.io" {
        out.push(image.repository.clone());
        if let Some(short) = image.repository.strip_prefix("library/") {
            out.push(short.to_string());
        }
    }
    out
}

/// The image name without `:tag` and `@digest` (distribution's `ParseImageName` for a valid
/// reference: a tag is a `:` after the last `/`).
fn trim_tag_digest(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(name, _)| name);
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(colon) => &image[..last_slash + colon],
        None => image,
    }
}

/// The kubelet's release, major and minor (`v1.35.2` → 1.35).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KubeletVersion {
    pub major: u32,
    pub minor: u32,
}

impl KubeletVersion {
    /// `v1.35.2`, `1.34.0-eks-1234`, `v1.36.0+k3s1`; `None` when it does not start with
    /// `MAJOR.MINOR`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim().trim_start_matches('v');
        let mut parts = text.splitn(3, '.');
        let major = parts.next()?.parse().ok()?;
        let minor: String = parts
            .next()?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        Some(Self {
            major,
            minor: minor.parse().ok()?,
        })
    }

    /// The gate's default in this release (`kube_features.go`: alpha, off, in 1.33 and 1.34; beta,
    /// on, from 1.35; absent before 1.33).
    pub fn gate_default(self) -> bool {
        (self.major, self.minor) >= (1, 35)
    }
}

impl std::fmt::Display for KubeletVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What the kubelet's configuration file says, validated as the kubelet validates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeletPolicy {
    /// `imagePullCredentialsVerificationPolicy` (the kubelet's default when unset).
    pub policy: VerificationPolicy,
    pub allowlist: Allowlist,
    /// `featureGates.KubeletEnsureSecretPulledImages`, when the file sets it.
    pub gate_in_file: Option<bool>,
}

impl KubeletPolicy {
    /// From the file's fields: `policy` unset is `NeverVerifyPreloadedImages`; an allowlist with
    /// another policy is refused, as the kubelet refuses it.
    pub fn new(
        policy: Option<&str>,
        allowlist: &[String],
        gate_in_file: Option<bool>,
    ) -> Result<Self, KubeletPolicyError> {
        let policy = match policy {
            None | Some("") => VerificationPolicy::NeverVerifyPreloadedImages,
            Some(p) => p.parse()?,
        };
        if !allowlist.is_empty() && policy != VerificationPolicy::NeverVerifyAllowlistedImages {
            return Err(KubeletPolicyError::AllowlistUnused(policy));
        }
        Ok(Self {
            policy,
            allowlist: Allowlist::parse(allowlist)?,
            gate_in_file,
        })
    }

    /// The gate: the file's setting, else the release's default, else not known.
    pub fn gate(&self, version: Option<KubeletVersion>) -> Option<bool> {
        self.gate_in_file
            .or_else(|| version.map(KubeletVersion::gate_default))
    }
}

/// The answer for one pre-pulled image, with the warning when a private image is exposed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub access: KubeletAccess,
    /// For a private image any pod may start: what makes it so and the setting that changes it.
    pub warning: Option<String>,
}

/// Who may start `image` once pullgate has pre-pulled it. `policy` is `None` without
/// `--kubelet-config` (or when the file could not be read); `private`: the pre-pull used a
/// credential.
pub fn decide(
    policy: Option<&KubeletPolicy>,
    version: Option<KubeletVersion>,
    image: &ImageRef,
    private: bool,
) -> Decision {
    let unknown = Decision {
        access: KubeletAccess::Unknown,
        warning: None,
    };
    let Some(p) = policy else {
        return unknown;
    };
    let gate = p.gate(version);
    // Without verification: why any pod may start it, and what would change that.
    let (access, why) = match (gate, p.policy) {
        (_, VerificationPolicy::NeverVerify) => (
            KubeletAccess::AnyPod,
            "the kubelet's imagePullCredentialsVerificationPolicy is NeverVerify".to_string(),
        ),
        (Some(false), _) => (
            KubeletAccess::AnyPod,
            format!(
                "the kubelet's feature gate {FEATURE_GATE} is off{}",
                match (p.gate_in_file, version) {
                    (Some(_), _) => " in its configuration file".to_string(),
                    (None, Some(v)) => format!(" (the default of kubelet {v})"),
                    (None, None) => String::new(),
                }
            ),
        ),
        (_, VerificationPolicy::NeverVerifyPreloadedImages) => (
            KubeletAccess::AnyPod,
            "the kubelet's imagePullCredentialsVerificationPolicy is NeverVerifyPreloadedImages and an image pulled through the CRI has no kubelet pull record".to_string(),
        ),
        (None, _) => return unknown,
        (Some(true), VerificationPolicy::AlwaysVerify) => {
            return Decision {
                access: KubeletAccess::VerifiedPerCredential,
                warning: None,
            };
        }
        (Some(true), VerificationPolicy::NeverVerifyAllowlistedImages) => {
            if !p.allowlist.matches(image) {
                return Decision {
                    access: KubeletAccess::VerifiedPerCredential,
                    warning: None,
                };
            }
            (
                KubeletAccess::AnyPod,
                "it matches the kubelet's preloadedImagesVerificationAllowlist".to_string(),
            )
        }
    };
    let policy_fix = match p.policy {
        VerificationPolicy::NeverVerifyAllowlistedImages if p.allowlist.matches(image) => {
            "remove it from preloadedImagesVerificationAllowlist".to_string()
        }
        VerificationPolicy::NeverVerifyAllowlistedImages | VerificationPolicy::AlwaysVerify => {
            String::new()
        }
        _ => "set imagePullCredentialsVerificationPolicy: AlwaysVerify (or NeverVerifyAllowlistedImages without this image in preloadedImagesVerificationAllowlist)".to_string(),
    };
    let fix = match (gate == Some(false), policy_fix.is_empty()) {
        (true, true) => format!(
            "turn the feature gate {FEATURE_GATE} on (featureGates in the kubelet's configuration; on by default from 1.35)"
        ),
        (true, false) => format!(
            "turn the feature gate {FEATURE_GATE} on (featureGates in the kubelet's configuration; on by default from 1.35) and {policy_fix}"
        ),
        (false, _) => policy_fix,
    };
    Decision {
        access,
        warning: private.then(|| {
            format!(
                "{image} was pre-pulled with a credential, but any pod on this node can start it without one: {why}; to have the kubelet check each pod's credential, {fix}"
            )
        }),
    }
}

/// What the daemon knows of its kubelet (`--kubelet-config`, `--kubelet-version`), applied to
/// every pre-pull record.
#[derive(Clone, Debug, Default)]
pub struct KubeletView {
    /// `None`: no `--kubelet-config`, or the file could not be used (warned at start-up).
    pub policy: Option<KubeletPolicy>,
    /// `--kubelet-version`.
    pub flag_version: Option<KubeletVersion>,
}

impl KubeletView {
    /// Sets the record's `kubelet_access` (and its warning). `node_version`: the Node's
    /// `status.nodeInfo.kubeletVersion` (cluster mode), preferred to the flag. A pre-pull is
    /// private when it succeeded with a credential (not `anonymous`).
    pub fn annotate(&self, outcome: &mut Outcome, node_version: Option<&str>) {
        let Ok(image) = ImageRef::parse(&outcome.image) else {
            return;
        };
        let version = node_version
            .and_then(KubeletVersion::parse)
            .or(self.flag_version);
        let private = outcome.verdict.is_ok()
            && outcome
                .credential
                .as_deref()
                .is_some_and(|c| c != ANONYMOUS);
        let d = decide(self.policy.as_ref(), version, &image, private);
        outcome.kubelet_access = d.access;
        outcome.kubelet_access_warning = d.warning;
    }
}

/// The `CriticalImagesReady` message's note on the private images any pod may start (empty when
/// none), in the style of `gate::not_counted_note`.
pub fn condition_note(exposed: &BTreeSet<String>, policy: Option<&KubeletPolicy>) -> String {
    if exposed.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = exposed.iter().take(3).map(String::as_str).collect();
    let more = exposed.len().saturating_sub(3);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    let policy = policy.map_or("?", |p| p.policy.as_str());
    format!(
        "; any pod on this node can start these privately pre-pulled images without credentials (kubelet imagePullCredentialsVerificationPolicy {policy}; see pullgate status): {}{more}",
        shown.join(", ")
    )
}

#[cfg(test)]
mod tests;
