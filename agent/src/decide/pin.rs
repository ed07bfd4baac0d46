//! Pinned images (`spec.pin: true`): which image records of the runtime's store to pin, which
//! pins of the agent's own to take back, and whether the runtime can pin at all.
//!
//! The kubelet's image GC never removes an image the CRI reports `pinned`. containerd's CRI
//! reports an image pinned when *any* of its references (records in the `k8s.io` image store: the
//! tag, the repo digest and the `sha256:` id) carries the label `io.cri-containerd.pinned=pinned`
//! (`internal/cri/store/image/image.go`, v1.7.24 and v2.1.9: `pinnedRefs`, an image stays pinned
//! while one of its references is), from containerd 1.6.22 and 1.7.3 on. So the agent pins every
//! reference the image has, and marks each record it pinned with its own label
//! ([`OWN_PIN_LABEL`]), which outlives a restart: it only ever unpins a record carrying its own
//! label, never another tool's pin. An image several PullSets want stays pinned while any
//! `pin: true` PullSet wants it.
//!
//! A pinned image can never be reclaimed, so a *new* pin (an image none of whose references is
//! pinned yet) is refused while the image filesystem is at or below the `--min-free-disk`
//! headroom ([`PinState::Refused`], the `PinRefused` warning); pins already held are kept.
//!
//! Who may pin: a tenant who may create a PullSet could otherwise pin arbitrary images on every
//! node and fill its disk. Only PullSets in the `--pin-namespaces` namespaces pin (every namespace
//! in standalone mode, where the manifests directory is the node admin's); elsewhere `pin: true`
//! is a warning on the PullSet's outcomes ([`not_allowed_warning`]), not an error.
//!
//! Plain decisions: the runtime's store comes in as [`ImageRecord`]s through [`ImagePins`], the
//! actions go out as [`PinAction`]s.

use crate::decide::gate::GateNamespaces;
use crate::decide::prepull::MinFreeDisk;
use crate::decide::runtime::ImageFsSpace;
use crate::model::image_ref::ImageRef;
use futures::future::BoxFuture;
use std::collections::{BTreeMap, BTreeSet};

/// The label containerd's CRI reads as "pinned" on an image record.
pub const CRI_PINNED_LABEL: &str = "io.cri-containerd.pinned";
/// Its value.
pub const CRI_PINNED_VALUE: &str = "pinned";
/// The agent's own mark on each record it pinned: what it may unpin.
pub const OWN_PIN_LABEL: &str = "pullgate.io/pinned";
/// Its value.
pub const OWN_PIN_VALUE: &str = "true";

/// One record of the runtime's image store (containerd: an image in the `k8s.io` namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRecord {
    /// The record's name: `registry/repo:tag`, `registry/repo@sha256:…` or `sha256:…`.
    pub name: String,
    /// The digest of its target (manifest or index): the references of one image share it.
    pub target: String,
    /// Carries [`CRI_PINNED_LABEL`]`=`[`CRI_PINNED_VALUE`].
    pub pinned: bool,
    /// Carries [`OWN_PIN_LABEL`]`=`[`OWN_PIN_VALUE`]: the agent pinned it.
    pub ours: bool,
}

/// What the runtime's store is asked to do, by record name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PinAction {
    /// Set both labels.
    Pin(String),
    /// Remove both labels (only ever on a record carrying the agent's own).
    Unpin(String),
}

/// What became of one wanted image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinState {
    /// Pinned (by the agent, another tool, or both) once the actions are done.
    Pinned,
    /// A new pin refused: the image filesystem is at or below the headroom (the message says so).
    Refused(String),
    /// No record of the image in the runtime's store (not pulled).
    Absent,
}

/// The actions of one reconciliation, and each wanted image's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PinPlan {
    pub actions: Vec<PinAction>,
    /// By [`ImageRef::pull_reference`].
    pub images: BTreeMap<String, PinState>,
}

/// The name under which the runtime's store holds `image`: `name@digest` when it has a digest
/// (containerd's CRI drops the tag of a `tag@digest` reference), else `name:tag`, `latest`
/// assumed.
pub fn store_name(image: &ImageRef) -> String {
    match (&image.digest, &image.tag) {
        (Some(d), _) => format!("{}@{d}", image.name()),
        (None, Some(t)) => format!("{}:{t}", image.name()),
        (None, None) => format!("{}:latest", image.name()),
    }
}

/// Pins every reference of each wanted image, takes back the agent's own pins no image wants any
/// more, leaves every other record alone. `refusal` is `Some(message)` when the image filesystem
/// is at or below the headroom: then no image that is not pinned yet is pinned.
pub fn plan(wanted: &[ImageRef], records: &[ImageRecord], refusal: Option<&str>) -> PinPlan {
    let by_name: BTreeMap<&str, &ImageRecord> =
        records.iter().map(|r| (r.name.as_str(), r)).collect();
    let mut by_target: BTreeMap<&str, Vec<&ImageRecord>> = BTreeMap::new();
    for r in records {
        by_target.entry(r.target.as_str()).or_default().push(r);
    }
    let mut keep: BTreeSet<&str> = BTreeSet::new();
    let mut pin: BTreeSet<&str> = BTreeSet::new();
    let mut images = BTreeMap::new();
    for image in wanted {
        let state = match by_name.get(store_name(image).as_str()) {
            None => PinState::Absent,
            Some(record) => {
                let group = by_target
                    .get(record.target.as_str())
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let held = group.iter().any(|r| r.pinned);
                match refusal {
                    Some(message) if !held => PinState::Refused(message.to_string()),
                    _ => {
                        for r in group {
                            keep.insert(&r.name);
                            if !r.pinned {
                                pin.insert(&r.name);
                            }
                        }
                        PinState::Pinned
                    }
                }
            }
        };
        images.insert(image.pull_reference(), state);
    }
    let mut actions: Vec<PinAction> = pin.iter().map(|n| PinAction::Pin(n.to_string())).collect();
    actions.extend(
        records
            .iter()
            .filter(|r| r.ours && !keep.contains(r.name.as_str()))
            .map(|r| PinAction::Unpin(r.name.clone())),
    );
    actions.sort();
    actions.dedup();
    PinPlan { actions, images }
}

/// Whether the store holds `image` pinned: any record of its target carries the CRI's label (as
/// containerd's CRI reads it).
pub fn is_pinned(image: &ImageRef, records: &[ImageRecord]) -> bool {
    let name = store_name(image);
    records
        .iter()
        .find(|r| r.name == name)
        .is_some_and(|found| records.iter().any(|r| r.target == found.target && r.pinned))
}

/// The refusal of new pins when the image filesystem is at or below the headroom, else `None`.
pub fn refusal(min_free_disk: MinFreeDisk, space: Option<ImageFsSpace>) -> Option<String> {
    let space = space.filter(|_| min_free_disk.is_enabled())?;
    let keep = min_free_disk.bytes(space);
    (space.free_bytes <= keep && keep > 0).then(|| {
        format!(
            "PinRefused: not pinned: the image filesystem has {} bytes free of {}, at or below the --min-free-disk headroom of {min_free_disk} ({keep} bytes), and a pinned image can never be reclaimed; the next pass checks again",
            space.free_bytes, space.capacity_bytes
        )
    })
}

/// Whether the runtime can pin, from its CRI `Version` (`runtime_name`, `runtime_version`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinSupport {
    Supported,
    /// Why not, for the one start-up warning and each `pin: true` outcome.
    Unsupported(String),
}

/// containerd's CRI reports `pinned` from 1.6.22 and 1.7.3 (and every 2.x); other runtimes are
/// not pinned through containerd's API. A version that cannot be read is taken as supported (a
/// pin that does not show is still harmless).
pub fn support(runtime_name: &str, runtime_version: &str) -> PinSupport {
    if runtime_name != "containerd" {
        return PinSupport::Unsupported(format!(
            "the container runtime is {runtime_name:?}, not containerd: images are pinned through containerd's API only"
        ));
    }
    let Some((major, minor, patch)) = release(runtime_version) else {
        return PinSupport::Supported;
    };
    let reports = match (major, minor) {
        (0, _) => false,
        (1, 0..=5) => false,
        (1, 6) => patch >= 22,
        (1, 7) => patch >= 3,
        _ => true,
    };
    if reports {
        PinSupport::Supported
    } else {
        PinSupport::Unsupported(format!(
            "containerd {runtime_version}'s CRI does not report pinned images (from 1.6.22, 1.7.3 and 2.0 on)"
        ))
    }
}

/// `major.minor.patch` from a version as containerd reports it (`v1.7.24`, `1.6.20~ds1`,
/// `2.1.9`).
fn release(version: &str) -> Option<(u64, u64, u64)> {
    let v = version.trim().trim_start_matches('v');
    let mut parts = v.splitn(3, '.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch_text = parts.next().unwrap_or("0");
    let digits: String = patch_text
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor, digits.parse().unwrap_or(0)))
}

/// The warning on each outcome of a `pin: true` PullSet outside the pin namespaces.
pub fn not_allowed_warning(namespace: &str, allowed: &GateNamespaces) -> String {
    format!(
        "PinNotAllowed: spec.pin is ignored: namespace {namespace} may not pin images (--pin-namespaces: {allowed}); the images are pre-pulled, not pinned"
    )
}

/// Why the image was not pinned, as a warning on the outcome.
pub fn not_pinned_warning(state: &PinState) -> Option<String> {
    match state {
        PinState::Pinned => None,
        PinState::Refused(message) => Some(message.clone()),
        PinState::Absent => Some(
            "not pinned: the image is not in the runtime's image store; the next pass pins it once it is pulled".into(),
        ),
    }
}

/// Whether `warning` (one of an outcome's `warnings`) is one of this module's: why a `pin: true`
/// PullSet's image is not pinned ([`not_allowed_warning`], [`not_pinned_warning`], [`refusal`],
/// and the pinner's `not pinned: …`), for `pullgate status`.
pub fn is_pin_warning(warning: &str) -> bool {
    ["PinNotAllowed:", "PinRefused:", "not pinned:"]
        .iter()
        .any(|prefix| warning.starts_with(prefix))
}

/// A failure of the runtime's image store, in its own words (the adapter names the call and the
/// record); never a credential (the store holds none).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PinFailure(pub String);

/// The runtime's image store, as the pins need it (the containerd adapter implements it).
pub trait ImagePins: Send + Sync + 'static {
    /// Every record of the store.
    fn records(&self) -> BoxFuture<'_, Result<Vec<ImageRecord>, PinFailure>>;
    /// Carries out one action.
    fn apply<'a>(&'a self, action: &'a PinAction) -> BoxFuture<'a, Result<(), PinFailure>>;
}

#[cfg(test)]
mod tests;
