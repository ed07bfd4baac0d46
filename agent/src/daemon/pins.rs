//! The pins' driver: after each pre-pull pass, reads the runtime's image store, carries out what
//! `decide::pin::plan` asks (pin what the allowed `pin: true` PullSets want, take back the
//! agent's own pins nobody wants), and tells each `pin: true` outcome whether its image is
//! pinned. Nothing here decides: the rules are in `decide::pin`.
//!
//! A runtime that cannot pin is said once, when the first `pin: true` PullSet this node would
//! pin appears (not at start-up: a node without one has nothing to be told). What the agent's own
//! pins hold is kept in [`PinTotals`], for the `pullgate_pinned_images` and
//! `pullgate_pinned_image_bytes` gauges.

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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The images the agent itself pinned (records carrying `OWN_PIN_LABEL`), as of the last
/// reconciliation: how many, and their bytes as the runtime reports their sizes — space the
/// kubelet's image GC can never reclaim, which the `--min-free-disk` headroom has to live with.
/// Shared with the metrics refresh; another tool's pins are not counted.
#[derive(Debug, Default)]
pub struct PinTotals {
    images: AtomicU64,
    bytes: AtomicU64,
}

impl PinTotals {
    pub fn images(&self) -> u64 {
        self.images.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn set(&self, images: u64, bytes: u64) {
        self.images.store(images, Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
    }
}

/// The pins of one agent.
pub struct Pinner {
    pins: Arc<dyn ImagePins>,
    runtime: Arc<dyn ImageRuntime>,
    support: PinSupport,
    allowed: GateNamespaces,
    min_free_disk: MinFreeDisk,
    totals: Arc<PinTotals>,
    /// The runtime's inability to pin has been said (once, at the first `pin: true` PullSet).
    told: AtomicBool,
    /// The agent's own pinned records [`PinTotals`] were last counted for: counted again (one
    /// `ListImages`) only when they change.
    counted: Mutex<Option<BTreeSet<String>>>,
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
    /// `support` from the runtime's CRI `Version` (`decide::pin::support`); `totals` is where
    /// the agent's own pins are counted (the metrics read it).
    pub fn new(
        pins: Arc<dyn ImagePins>,
        runtime: Arc<dyn ImageRuntime>,
        support: PinSupport,
        allowed: GateNamespaces,
        min_free_disk: MinFreeDisk,
        totals: Arc<PinTotals>,
    ) -> Self {
        Self {
            pins,
            runtime,
            support,
            allowed,
            min_free_disk,
            totals,
            told: AtomicBool::new(false),
            counted: Mutex::new(None),
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

    /// Pins what the allowed `pin: true` PullSets selecting this node want, unpins the agent's
    /// own pins that nothing wants.
    pub async fn reconcile(&self, loaded: &Snapshot, node: &NodeInfo) -> PinReport {
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
        if let PinSupport::Unsupported(why) = &self.support {
            if !wanted.is_empty() && !self.told.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "images are not pinned: {why}; pin: true PullSets are pre-pulled as usual and report pinned: false"
                );
            }
            return PinReport::Unsupported(why.clone());
        }
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
        self.count_own(&records).await;
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

    /// Counts the images the agent's own pins hold into [`PinTotals`]: one `ListImages` when
    /// those records changed since the last count (the sizes of an image id do not change); a
    /// failed listing keeps the last figures and is tried again next pass.
    async fn count_own(&self, records: &[crate::decide::pin::ImageRecord]) {
        let ours: BTreeSet<String> = records
            .iter()
            .filter(|r| r.ours && r.pinned)
            .map(|r| r.name.clone())
            .collect();
        if self.counted().as_ref() == Some(&ours) {
            return;
        }
        let (images, bytes) = if ours.is_empty() {
            (0, 0)
        } else {
            match self.runtime.list_images().await {
                Ok(listed) => listed
                    .iter()
                    .filter(|i| {
                        std::iter::once(&i.id)
                            .chain(&i.repo_tags)
                            .chain(&i.repo_digests)
                            .any(|n| ours.contains(n))
                    })
                    .fold((0u64, 0u64), |(n, b), i| (n + 1, b.saturating_add(i.size))),
                Err(e) => {
                    tracing::debug!(error = %e, "ListImages failed; the pinned totals are counted next pass");
                    return;
                }
            }
        };
        if (images, bytes) != (self.totals.images(), self.totals.bytes()) {
            tracing::info!(
                images,
                bytes,
                "images pinned by pullgate (never reclaimed by the image GC)"
            );
        }
        self.totals.set(images, bytes);
        *self.counted() = Some(ours);
    }

    fn counted(&self) -> std::sync::MutexGuard<'_, Option<BTreeSet<String>>> {
        self.counted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::pin::{ImageRecord, PinFailure};
    use crate::decide::runtime::PresentImage;
    use crate::decide::runtime::fake::FakeRuntime;
    use crate::model::pullset::{PullSetSpec, validate};
    use futures::future::BoxFuture;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const APP: &str = "reg.test/app:v1";
    const THEIRS: &str = "reg.test/theirs:v1";

    /// An image store of records, labelled as the actions say.
    #[derive(Default)]
    struct Store(Mutex<Vec<ImageRecord>>);

    impl Store {
        fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ImageRecord>> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }

    impl ImagePins for Store {
        fn records(&self) -> BoxFuture<'_, Result<Vec<ImageRecord>, PinFailure>> {
            Box::pin(async move { Ok(self.lock().clone()) })
        }

        fn apply<'a>(&'a self, action: &'a PinAction) -> BoxFuture<'a, Result<(), PinFailure>> {
            Box::pin(async move {
                let (name, pin) = match action {
                    PinAction::Pin(n) => (n, true),
                    PinAction::Unpin(n) => (n, false),
                };
                for r in self.lock().iter_mut().filter(|r| &r.name == name) {
                    r.pinned = pin;
                    r.ours = pin;
                }
                Ok(())
            })
        }
    }

    /// `reg.test/app:v1` (three records, 4096 bytes) and another tool's pinned
    /// `reg.test/theirs:v1` (two records, 1000 bytes), in the store and in the runtime.
    fn node_with_images() -> (Arc<Store>, Arc<FakeRuntime>) {
        let record = |name: &str, target: &str, pinned: bool| ImageRecord {
            name: name.into(),
            target: target.into(),
            pinned,
            ours: false,
        };
        let store = Store(Mutex::new(vec![
            record(APP, D1, false),
            record(&format!("reg.test/app@{D1}"), D1, false),
            record("sha256:c1", D1, false),
            record(THEIRS, D2, true),
            record("sha256:c2", D2, false),
        ]));
        let runtime = FakeRuntime::default();
        for (image, id, size) in [(APP, "sha256:c1", 4096), (THEIRS, "sha256:c2", 1000)] {
            runtime
                .present
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(
                    image.into(),
                    PresentImage {
                        id: id.into(),
                        repo_tags: vec![image.into()],
                        repo_digests: vec![],
                        size,
                    },
                );
        }
        (Arc::new(store), Arc::new(runtime))
    }

    fn pinner(
        store: Arc<Store>,
        runtime: Arc<FakeRuntime>,
        support: PinSupport,
    ) -> (Pinner, Arc<PinTotals>) {
        let totals = Arc::new(PinTotals::default());
        let pinner = Pinner::new(
            store,
            runtime,
            support,
            GateNamespaces::only(["team"]),
            "0".parse().expect("a valid headroom"),
            totals.clone(),
        );
        (pinner, totals)
    }

    /// PullSets of namespace `team` by (name, YAML spec).
    fn snapshot(sets: &[(&str, &str)]) -> Snapshot {
        let mut loaded = Snapshot::default();
        for (name, yaml) in sets {
            let spec: PullSetSpec = serde_yaml::from_str(yaml).expect("a test spec");
            let set = validate(ObjectKey::new("team", *name), spec).expect("a valid test spec");
            loaded.inventory.pullsets.insert(set.key.clone(), set);
        }
        loaded
    }

    fn node() -> NodeInfo {
        NodeInfo {
            name: "n".into(),
            labels: BTreeMap::new(),
        }
    }

    const PINNED: &str = "pin: true\nimages: [{image: reg.test/app:v1}]";
    const UNPINNED: &str = "images: [{image: reg.test/app:v1}]";

    /// What the agent logs while `f` runs, as text.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
        type Writer = Logs;
        fn make_writer(&'a self) -> Logs {
            self.clone()
        }
    }

    impl Logs {
        fn text(&self) -> String {
            String::from_utf8_lossy(
                &self
                    .0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            )
            .into_owned()
        }
    }

    #[tokio::test]
    async fn a_runtime_that_cannot_pin_is_said_once_when_the_first_pin_pullset_appears() {
        let logs = Logs::default();
        let _guard = tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_writer(logs.clone())
                .with_ansi(false)
                .finish(),
        );
        let said = || logs.text().matches("images are not pinned:").count();
        let (store, runtime) = node_with_images();
        let why =
            "containerd 1.6.20's CRI does not report pinned images (from 1.6.22, 1.7.3 and 2.0 on)";
        let (pinner, _) = pinner(store.clone(), runtime, PinSupport::Unsupported(why.into()));
        // Start-up and passes without a pin: true PullSet (or with one in a namespace that may
        // not pin): nothing to tell.
        for sets in [vec![], vec![("plain", UNPINNED)]] {
            let report = pinner.reconcile(&snapshot(&sets), &node()).await;
            assert!(matches!(report, PinReport::Unsupported(_)), "{report:?}");
        }
        let mut elsewhere = snapshot(&[("plain", UNPINNED)]);
        let spec: PullSetSpec = serde_yaml::from_str(PINNED).expect("a test spec");
        let other = validate(ObjectKey::new("tenant", "hog"), spec).expect("a valid test spec");
        elsewhere
            .inventory
            .pullsets
            .insert(other.key.clone(), other);
        pinner.reconcile(&elsewhere, &node()).await;
        assert_eq!(said(), 0, "{}", logs.text());

        // The first pin: true PullSet: said, naming why; the next passes and PullSets: not again.
        let with_pin = snapshot(&[("critical", PINNED)]);
        let report = pinner.reconcile(&with_pin, &node()).await;
        assert_eq!(said(), 1, "{}", logs.text());
        assert!(logs.text().contains(why), "{}", logs.text());
        for sets in [
            vec![("critical", PINNED)],
            vec![],
            vec![("critical", PINNED), ("second", PINNED)],
        ] {
            pinner.reconcile(&snapshot(&sets), &node()).await;
        }
        assert_eq!(said(), 1, "{}", logs.text());
        // Each outcome still says why it is not pinned; nothing was labelled.
        let mut outcome = crate::decide::event_policy::tests::prepull(
            crate::model::outcome::Action::Present,
            crate::model::verdict::Verdict::Ok,
        );
        outcome.namespace = "team".into();
        outcome.image = APP.into();
        pinner.annotate(&mut outcome, &report);
        assert_eq!(outcome.pinned, Some(false));
        assert_eq!(outcome.warnings, [format!("not pinned: {why}")]);
        assert!(store.lock().iter().all(|r| !r.ours), "{:?}", store.lock());
    }

    #[tokio::test]
    async fn the_totals_count_the_agents_own_pins_only_and_follow_them() {
        let (store, runtime) = node_with_images();
        let (pinner, totals) = pinner(store.clone(), runtime.clone(), PinSupport::Supported);
        // Another tool's pin is not the agent's: nothing counted.
        pinner
            .reconcile(&snapshot(&[("plain", UNPINNED)]), &node())
            .await;
        assert_eq!((totals.images(), totals.bytes()), (0, 0));

        // Pinned: one image (its three records), its size.
        let report = pinner
            .reconcile(&snapshot(&[("critical", PINNED)]), &node())
            .await;
        assert!(
            matches!(&report, PinReport::Done(images) if images.get(APP) == Some(&PinState::Pinned)),
            "{report:?}"
        );
        assert_eq!((totals.images(), totals.bytes()), (1, 4096));
        // Unchanged pins are not listed again.
        let calls = runtime.calls();
        pinner
            .reconcile(&snapshot(&[("critical", PINNED)]), &node())
            .await;
        assert_eq!(runtime.calls(), calls, "no ListImages for unchanged pins");
        assert_eq!((totals.images(), totals.bytes()), (1, 4096));

        // The PullSet goes: the agent's pins are taken back, the totals go to zero; the other
        // tool's pin stays.
        pinner.reconcile(&snapshot(&[]), &node()).await;
        assert_eq!((totals.images(), totals.bytes()), (0, 0));
        let records = store.lock().clone();
        assert!(records.iter().all(|r| !r.ours), "{records:?}");
        assert!(
            records.iter().any(|r| r.name == THEIRS && r.pinned),
            "{records:?}"
        );
    }
}
