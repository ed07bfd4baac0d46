//! What pullgate reports: one record per outcome, serialised as a JSON line in standalone mode.
//! Every field is safe to print: no record type here can hold a credential.

use crate::model::verdict::Verdict;
use serde::Serialize;
use std::time::SystemTime;

/// Which path produced an outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutcomeKind {
    Prepull,
}

/// What the pre-pull did for an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Already in the runtime's store.
    Present,
    /// Pulled in this pass.
    Pulled,
    /// Tried and failed.
    Failed,
}

/// Who may start a pre-pulled image on this node, by the kubelet's verification of pre-pulled
/// images (KEP-2535; decided by `decide::kubelet_access`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum KubeletAccess {
    /// Any pod on this node can start it without credentials.
    AnyPod,
    /// The kubelet checks each new credential with the registry before a pod starts it.
    VerifiedPerCredential,
    /// Not known: no `--kubelet-config`, an unreadable one, or the feature gate's default matters
    /// and the kubelet's version is not known.
    #[default]
    Unknown,
}

impl KubeletAccess {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AnyPod => "AnyPod",
            Self::VerifiedPerCredential => "VerifiedPerCredential",
            Self::Unknown => "Unknown",
        }
    }
}

/// The outcome of one image for one PullSet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub kind: OutcomeKind,
    /// RFC 3339, UTC.
    pub time: String,
    pub node: String,
    pub namespace: String,
    pub pullset: String,
    pub image: String,
    pub verdict: Verdict,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<&'static str>,
    pub duration_ms: u64,
    pub action: Action,
    pub attempts: u32,
    /// The credential that worked or was tried last, by source (`secret ns/name key K`), or
    /// `anonymous`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_ref: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo_digest: Option<String>,
    /// The image's size as the runtime reports it, when this pass pulled it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Whether the image is pinned, for a `pin: true` PullSet (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Who may start the image once present (`--kubelet-config`); `Unknown` without it.
    pub kubelet_access: KubeletAccess,
    /// Set when a private image (pre-pulled with a credential) is `AnyPod`: why, and the kubelet
    /// setting that would change it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubelet_access_warning: Option<String>,
}

/// A problem in the configuration a source read: reported, skipped, and the rest keeps running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SourceProblem {
    /// Always `source`.
    pub kind: &'static str,
    pub time: String,
    pub node: String,
    /// The file (standalone mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// 0-based index of the YAML document in the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<usize>,
    /// `Kind namespace/name`, when it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// The field at fault (`spec.images[1].image`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

/// Now, as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    crate::model::time::rfc3339_millis(SystemTime::now())
}
