//! What the agent knows now, for `pullgate status` (the local API's `GetStatus`): the latest
//! pre-pull and canary outcome of every image of every PullSet, the conditions, and the problems.
//! Plain data: the API adapter turns a [`Status`] into protobuf.

use crate::decide::canary::runner::CanaryOutcome;
use crate::decide::conditions::Condition;
use crate::model::inventory::ObjectKey;
use crate::model::node::NodeInfo;
use crate::model::outcome::{Action, Outcome};
use crate::model::snapshot::Snapshot;
use crate::model::verdict::Verdict;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::SystemTime;

/// The latest verdict of one kind for one image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatestVerdict {
    pub verdict: String,
    pub message: String,
    pub hint: String,
    pub time: String,
    pub credential: String,
    /// The host whose answer the registry-direct canary's verdict is (empty when none).
    pub host: String,
}

impl LatestVerdict {
    fn new(
        verdict: Verdict,
        message: &str,
        hint: Option<&str>,
        time: &str,
        credential: Option<&str>,
    ) -> Self {
        Self {
            verdict: verdict.to_string(),
            message: message.into(),
            hint: hint.unwrap_or_default().into(),
            time: time.into(),
            credential: credential.unwrap_or_default().into(),
            host: String::new(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageState {
    pub image: String,
    pub present: bool,
    pub prepull: Option<LatestVerdict>,
    pub canary: Option<LatestVerdict>,
    /// The latest pre-pull's `kubelet_access` (empty before one), and its warning (empty when none).
    pub kubelet_access: String,
    pub kubelet_access_warning: String,
    /// The latest pre-pull's `pinned` (a `pin: true` PullSet's only), and why not when not
    /// (its pin warnings, `decide::pin::is_pin_warning`, joined; empty when none).
    pub pinned: Option<bool>,
    pub pin_warning: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullSetState {
    pub key: ObjectKey,
    pub gate: bool,
    pub pin: bool,
    pub pre_pull: bool,
    pub canary: bool,
    pub next_canary: Option<SystemTime>,
    pub images: Vec<ImageState>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub node: String,
    pub conditions: Vec<Condition>,
    pub pullsets: Vec<PullSetState>,
    pub problems: Vec<String>,
}

#[derive(Default)]
struct Board {
    prepull: BTreeMap<(ObjectKey, String), Outcome>,
    canary: BTreeMap<(ObjectKey, String), CanaryOutcome>,
    conditions: BTreeMap<&'static str, Condition>,
}

/// Latest outcomes, fed by the reporters.
#[derive(Default)]
pub struct StatusBoard {
    board: Mutex<Board>,
}

impl StatusBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, Board> {
        self.board
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn prepull(&self, o: &Outcome) {
        let key = (ObjectKey::new(&o.namespace, &o.pullset), o.image.clone());
        self.lock().prepull.insert(key, o.clone());
    }

    pub fn canary(&self, o: &CanaryOutcome) {
        let key = (ObjectKey::new(&o.namespace, &o.pullset), o.image.clone());
        self.lock().canary.insert(key, o.clone());
    }

    /// Forgets every outcome whose PullSet image is not in `live` (deleted, no longer selected
    /// here, or removed from its PullSet): a PullSet created again under the same name starts
    /// clean, and the board holds no more than the sources name.
    pub fn retain(&self, live: &BTreeSet<(ObjectKey, String)>) {
        let mut board = self.lock();
        board.prepull.retain(|slot, _| live.contains(slot));
        board.canary.retain(|slot, _| live.contains(slot));
    }

    pub fn condition(&self, c: &Condition) {
        self.lock().conditions.insert(c.type_, c.clone());
    }

    /// The PullSets selected for `node` now, each image with its latest outcomes.
    pub fn snapshot(
        &self,
        loaded: &Snapshot,
        node: &NodeInfo,
        next_canaries: &BTreeMap<ObjectKey, SystemTime>,
    ) -> Status {
        let board = self.lock();
        let node = loaded.node(node);
        let pullsets = loaded
            .inventory
            .pullsets
            .values()
            .filter(|s| node.matches(&s.spec.node_selector))
            .map(|s| PullSetState {
                key: s.key.clone(),
                gate: s.spec.gate,
                pin: s.spec.pin,
                pre_pull: s.spec.pre_pull,
                canary: s.spec.canary.is_some(),
                next_canary: next_canaries.get(&s.key).copied(),
                images: s
                    .images
                    .iter()
                    .map(|i| {
                        let slot = (s.key.clone(), i.to_string());
                        let prepull = board.prepull.get(&slot);
                        ImageState {
                            image: slot.1.clone(),
                            present: prepull.is_some_and(|o| {
                                matches!(o.action, Action::Present | Action::Pulled)
                            }),
                            prepull: prepull.map(|o| {
                                LatestVerdict::new(
                                    o.verdict,
                                    &o.message,
                                    o.hint,
                                    &o.time,
                                    o.credential.as_deref(),
                                )
                            }),
                            kubelet_access: prepull
                                .map(|o| o.kubelet_access.as_str().to_string())
                                .unwrap_or_default(),
                            kubelet_access_warning: prepull
                                .and_then(|o| o.kubelet_access_warning.clone())
                                .unwrap_or_default(),
                            pinned: prepull.and_then(|o| o.pinned),
                            pin_warning: prepull
                                .map(|o| {
                                    o.warnings
                                        .iter()
                                        .filter(|w| crate::decide::pin::is_pin_warning(w))
                                        .cloned()
                                        .collect::<Vec<_>>()
                                        .join("; ")
                                })
                                .unwrap_or_default(),
                            canary: board.canary.get(&slot).map(|o| LatestVerdict {
                                host: o.host.clone().unwrap_or_default(),
                                ..LatestVerdict::new(
                                    o.verdict,
                                    &o.message,
                                    o.hint,
                                    &o.time,
                                    o.credential.as_deref(),
                                )
                            }),
                        }
                    })
                    .collect(),
            })
            .collect();
        Status {
            node: node.name.clone(),
            conditions: board.conditions.values().cloned().collect(),
            pullsets,
            problems: loaded.problems.iter().map(ToString::to_string).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepull(pullset: &str, image: &str) -> Outcome {
        let mut o =
            crate::decide::event_policy::tests::prepull(Action::Failed, Verdict::Unauthorized);
        o.namespace = "team".into();
        o.pullset = pullset.into();
        o.image = image.into();
        o
    }

    #[test]
    fn what_is_gone_is_forgotten() {
        let board = StatusBoard::default();
        for (set, image) in [("s", "r.io/a:1"), ("s", "r.io/b:1"), ("t", "r.io/a:1")] {
            board.prepull(&prepull(set, image));
            let mut c = crate::decide::canary::runner::tests::outcome(image, Verdict::Ok, vec![]);
            c.namespace = "team".into();
            c.pullset = set.into();
            board.canary(&c);
        }
        // PullSet t deleted, image b removed from s.
        let live: BTreeSet<(ObjectKey, String)> =
            [(ObjectKey::new("team", "s"), "r.io/a:1".to_string())].into();
        board.retain(&live);
        let b = board.lock();
        let keys = |m: Vec<&(ObjectKey, String)>| m.into_iter().cloned().collect::<BTreeSet<_>>();
        assert_eq!(keys(b.prepull.keys().collect()), live);
        assert_eq!(keys(b.canary.keys().collect()), live);
    }

    #[test]
    fn a_pin_pullsets_images_say_whether_they_are_pinned_and_why_not() {
        let board = StatusBoard::default();
        let mut loaded = Snapshot::default();
        for (name, pin) in [("pinned", true), ("refused", true), ("plain", false)] {
            let spec: crate::model::pullset::PullSetSpec =
                serde_yaml::from_str(&format!("pin: {pin}\nimages: [{{image: r.io/a:1}}]"))
                    .expect("a test spec");
            let set = crate::model::pullset::validate(ObjectKey::new("team", name), spec)
                .expect("a valid test spec");
            loaded.inventory.pullsets.insert(set.key.clone(), set);
        }
        let node = NodeInfo {
            name: "n".into(),
            labels: BTreeMap::new(),
        };
        let status = board.snapshot(&loaded, &node, &BTreeMap::new());
        let first = |status: &Status, name: &str| {
            let set = status
                .pullsets
                .iter()
                .find(|s| s.key.name == name)
                .expect("the PullSet");
            (set.pin, set.images[0].clone())
        };
        // Before the first pre-pull: nothing said either way.
        let (pin, image) = first(&status, "pinned");
        assert!(pin);
        assert_eq!((image.pinned, image.pin_warning.as_str()), (None, ""));

        let mut o = prepull("pinned", "r.io/a:1");
        o.pinned = Some(true);
        o.warnings = vec!["NotAPinWarning: kept out".into()];
        board.prepull(&o);
        let mut o = prepull("refused", "r.io/a:1");
        o.pinned = Some(false);
        o.warnings = vec![
            "NotAPinWarning: kept out".into(),
            "PinRefused: not pinned: low on disk".into(),
        ];
        board.prepull(&o);
        board.prepull(&prepull("plain", "r.io/a:1"));
        let status = board.snapshot(&loaded, &node, &BTreeMap::new());
        let (_, image) = first(&status, "pinned");
        assert_eq!((image.pinned, image.pin_warning.as_str()), (Some(true), ""));
        let (_, image) = first(&status, "refused");
        assert_eq!(
            (image.pinned, image.pin_warning.as_str()),
            (Some(false), "PinRefused: not pinned: low on disk")
        );
        let (pin, image) = first(&status, "plain");
        assert!(!pin);
        assert_eq!((image.pinned, image.pin_warning.as_str()), (None, ""));
    }
}
