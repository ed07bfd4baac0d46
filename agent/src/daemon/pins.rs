//! The pins' driver: after each pre-pull pass, reads the runtime's image store, carries out what
//! `decide::pin::plan` asks (pin what the allowed `pin: true` PullSets want, take back the
//! agent's own pins nobody wants), and tells each `pin: true` outcome whether its image is
//! pinned. Nothing here decides: the rules are in `decide::pin`.

use crate::decide::gate::GateNamespaces;
use crate::decide::pin::{ImagePins, PinAction, PinState, PinSupport};
use crate::decide::prepull::MinFreeDisk;
use crate::decide::runtime::ImageRuntime;
use crate::model::image_ref::ImageRef;
use crate::model::inventory::ObjectKey;
use crate::model::node::NodeInfo;
use crate::model::outcome::Outcome;
use crate::model::snapshot::Snapshot;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The pins of one agent.
pub struct Pinner {
    pins: Arc<dyn ImagePins>,
    runtime: Arc<dyn ImageRuntime>,
    support: PinSupport,
    allowed: GateNamespaces,
    min_free_disk: MinFreeDisk,
    /// The bytes of the images pinned (by anyone) at the last reconciliation, as the runtime
    /// reports their sizes: space the kubelet's GC can never reclaim.
    pinned_bytes: AtomicU64,
}

/// What one reconciliation found, for the outcomes of the pass.
#[derive(Debug)]
pub enum PinReport {
    /// The runtime cannot pin (said once at start-up).
    Unsupported(String),
    /// The image store could not be read.
    Failed(String),
    /// Each wanted image's state, by reference.
    Done(BTreeMap<String, PinState>),
}

impl Pinner {
    /// `support` from the runtime's CRI `Version` (`decide::pin::support`), said once here when
    /// the runtime cannot pin.
    pub fn new(
        pins: Arc<dyn ImagePins>,
        runtime: Arc<dyn ImageRuntime>,
        support: PinSupport,
        allowed: GateNamespaces,
        min_free_disk: MinFreeDisk,
    ) -> Self {
        if let PinSupport::Unsupported(why) = &support {
            tracing::warn!(
                "images are not pinned: {why}; pin: true PullSets are pre-pulled as usual and report pinned: false"
            );
        }
        Self {
            pins,
            runtime,
            support,
            allowed,
            min_free_disk,
            pinned_bytes: AtomicU64::new(0),
        }
    }

    /// Whether the outcomes of this PullSet wait for the pins (`spec.pin: true`).
    pub fn holds(loaded: &Snapshot, outcome: &Outcome) -> bool {
        loaded
            .inventory
            .pullsets
            .get(&ObjectKey::new(
                outcome.namespace.clone(),
                outcome.pullset.clone(),
            ))
            .is_some_and(|s| s.spec.pin)
    }

    /// The bytes of the pinned images at the last reconciliation.
    pub fn pinned_bytes(&self) -> u64 {
        self.pinned_bytes.load(Ordering::Relaxed)
    }

    /// Pins what the allowed `pin: true` PullSets selecting this node want, unpins the agent's
    /// own pins that nothing wants.
    pub async fn reconcile(&self, loaded: &Snapshot, node: &NodeInfo) -> PinReport {
        if let PinSupport::Unsupported(why) = &self.support {
            return PinReport::Unsupported(why.clone());
        }
        let node = loaded.node(node);
        let wanted: Vec<ImageRef> = loaded
            .inventory
            .pullsets
            .values()
            .filter(|s| {
                s.spec.pin
                    && s.spec.pre_pull
                    && self.allowed.allows(&s.key.namespace)
                    && node.matches(&s.spec.node_selector)
            })
            .flat_map(|s| s.images.iter().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let records = match self.pins.records().await {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the runtime's image store: nothing pinned or unpinned in this pass");
                return PinReport::Failed(e.to_string());
            }
        };
        let refusal = if wanted.is_empty() || !self.min_free_disk.is_enabled() {
            None
        } else {
            match self.runtime.image_fs().await {
                Ok(space) => crate::decide::pin::refusal(self.min_free_disk, space),
                Err(e) => {
                    tracing::debug!(error = %e, "ImageFsInfo failed; pinning without a disk check");
                    None
                }
            }
        };
        let plan = crate::decide::pin::plan(&wanted, &records, refusal.as_deref());
        let mut failed = Vec::new();
        for action in &plan.actions {
            match self.pins.apply(action).await {
                Ok(()) => match action {
                    PinAction::Pin(name) => tracing::info!(record = %name, "image pinned"),
                    PinAction::Unpin(name) => tracing::info!(
                        record = %name,
                        "image unpinned: no pin: true PullSet wants it any more"
                    ),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "pinning failed; the next pass tries again");
                    failed.push(e.to_string());
                }
            }
        }
        let records = if plan.actions.is_empty() {
            records
        } else {
            match self.pins.records().await {
                Ok(records) => records,
                Err(e) => return PinReport::Failed(e.to_string()),
            }
        };
        self.count_pinned_bytes(&records).await;
        // What the store holds now: an action that failed leaves its image unpinned.
        let mut images = plan.images;
        for image in &wanted {
            if let Some(state) = images.get_mut(&image.pull_reference())
                && *state == PinState::Pinned
                && !crate::decide::pin::is_pinned(image, &records)
            {
                *state = PinState::Refused(format!(
                    "not pinned: {}",
                    failed
                        .first()
                        .map_or("the runtime did not keep the pin", String::as_str)
                ));
            }
        }
        PinReport::Done(images)
    }

    async fn count_pinned_bytes(&self, records: &[crate::decide::pin::ImageRecord]) {
        let pinned: BTreeSet<&str> = records
            .iter()
            .filter(|r| r.pinned)
            .map(|r| r.name.as_str())
            .collect();
        if pinned.is_empty() {
            self.pinned_bytes.store(0, Ordering::Relaxed);
            return;
        }
        if let Ok(images) = self.runtime.list_images().await {
            let bytes = images
                .iter()
                .filter(|i| {
                    std::iter::once(&i.id)
                        .chain(&i.repo_tags)
                        .chain(&i.repo_digests)
                        .any(|n| pinned.contains(n.as_str()))
                })
                .map(|i| i.size)
                .sum();
            if self.pinned_bytes.swap(bytes, Ordering::Relaxed) != bytes {
                tracing::info!(bytes, "pinned images (never reclaimed by the image GC)");
            }
        }
    }

    /// `pinned` and the warnings of one outcome of a `pin: true` PullSet.
    pub fn annotate(&self, outcome: &mut Outcome, report: &PinReport) {
        let pinned = if !self.allowed.allows(&outcome.namespace) {
            outcome
                .warnings
                .push(crate::decide::pin::not_allowed_warning(
                    &outcome.namespace,
                    &self.allowed,
                ));
            false
        } else {
            match report {
                PinReport::Unsupported(why) => {
                    outcome.warnings.push(format!("not pinned: {why}"));
                    false
                }
                PinReport::Failed(error) => {
                    outcome.warnings.push(format!("not pinned: {error}"));
                    false
                }
                PinReport::Done(images) => match images.get(&outcome.image) {
                    Some(PinState::Pinned) => true,
                    Some(state) => {
                        outcome
                            .warnings
                            .extend(crate::decide::pin::not_pinned_warning(state));
                        false
                    }
                    None => false,
                },
            }
        };
        outcome.pinned = Some(pinned);
    }
}
