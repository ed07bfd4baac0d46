//! The scale-out readiness gate: when the agent lifts its own start-up taint.
//!
//! A node registered with the taint (`pullgate.io/not-ready:NoSchedule` by default) keeps it until
//! both of these hold for the PullSets with `gate: true` selected here:
//!
//! - every image is present (`CriticalImagesReady` is True), and
//! - the latest canary of every such PullSet that has canaries was `Ok` for every image.
//!
//! After the gate timeout (counted from the agent's start) the taint is removed anyway with a
//! `GateTimedOut` event, so a broken registry cannot freeze an autoscaler — unless the action is
//! `Keep`, in which case the event is emitted once and the taint stays until the gate opens.
//!
//! Who may hold the taint: only PullSets from the namespaces a cluster admin allowed
//! ([`GateNamespaces`], `--gate-namespaces`). Whoever may create a PullSet in a namespace (a
//! tenant) must not be able to keep every new node tainted; a `gate: true` PullSet elsewhere is
//! reported (a `GateNotAllowed` Event on it, the gate's Events on the Node) and does not count.
//! Plain decisions: no clock, no client; the caller passes the elapsed time.

use crate::model::inventory::{Inventory, ObjectKey};
use crate::model::node::NodeInfo;
use crate::model::pullset::ValidPullSet;
use crate::model::verdict::Verdict;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The namespaces whose `gate: true` PullSets hold the taint: names, exactly (no globs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GateNamespaces {
    /// Every namespace: standalone mode, where the manifests directory is the node admin's.
    Any,
    /// Only these (`--gate-namespaces`; empty: no PullSet gates).
    Only(BTreeSet<String>),
}

impl GateNamespaces {
    /// From `--gate-namespaces`: a comma-separated list; blanks around names and empty entries
    /// are ignored.
    pub fn only<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Self::Only(
            names
                .into_iter()
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect(),
        )
    }

    pub fn allows(&self, namespace: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Only(names) => names.contains(namespace),
        }
    }

    /// Whether this PullSet counts toward the gate: `gate: true` in an allowed namespace (the
    /// caller has checked that it selects this node).
    pub fn counts(&self, pullset: &ValidPullSet) -> bool {
        pullset.spec.gate && self.allows(&pullset.key.namespace)
    }
}

impl std::fmt::Display for GateNamespaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => f.write_str("any namespace"),
            Self::Only(names) if names.is_empty() => f.write_str("no namespace"),
            Self::Only(names) => {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                f.write_str(&names.join(","))
            }
        }
    }
}

/// The (PullSet, image) pairs whose canaries the gate waits for: every image of every PullSet
/// that counts toward the gate ([`GateNamespaces::counts`]) with canaries selected for this node.
pub fn gated_canaries(
    inventory: &Inventory,
    node: &NodeInfo,
    allowed: &GateNamespaces,
) -> Vec<(ObjectKey, String)> {
    inventory
        .pullsets
        .values()
        .filter(|s| {
            allowed.counts(s) && s.spec.canary.is_some() && node.matches(&s.spec.node_selector)
        })
        .flat_map(|s| s.images.iter().map(|i| (s.key.clone(), i.to_string())))
        .collect()
}

/// The PullSets whose start-up canary a tainted node is waiting for: those counting toward the
/// gate ([`gated_canaries`]) while the Node carries `<taint_key>:NoSchedule`. Their start-up
/// canary runs at once, without the rotation window's offset: the offset spreads a fleet's
/// canaries over its registries, but a node held out of scheduling gains nothing by waiting, and
/// every second of it is a second of scale-out. Unknown facts (standalone, the Node not read yet)
/// or no taint: none.
pub fn awaited_at_start_up(
    inventory: &Inventory,
    node: &NodeInfo,
    facts: Option<&crate::model::node::NodeFacts>,
    wait: &GateWait,
) -> BTreeSet<ObjectKey> {
    if !facts
        .is_some_and(|f| f.has_taint(&wait.taint_key, crate::decide::node_report::TAINT_EFFECT))
    {
        return BTreeSet::new();
    }
    gated_canaries(inventory, node, &wait.namespaces)
        .into_iter()
        .map(|(key, _)| key)
        .collect()
}

/// What the canary scheduler needs of the gate (cluster mode): who counts, and the taint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateWait {
    pub namespaces: GateNamespaces,
    pub taint_key: String,
}

/// The `gate: true` PullSets selected for this node whose namespace may not gate: reported, not
/// waited for.
pub fn not_allowed(
    inventory: &Inventory,
    node: &NodeInfo,
    allowed: &GateNamespaces,
) -> BTreeSet<ObjectKey> {
    inventory
        .pullsets
        .values()
        .filter(|s| s.spec.gate && !allowed.counts(s) && node.matches(&s.spec.node_selector))
        .map(|s| s.key.clone())
        .collect()
}

/// What the gate's Events on the Node add about the PullSets that were not counted (empty when
/// none): at most three names, then how many more.
pub fn not_counted_note(not_allowed: &BTreeSet<ObjectKey>, allowed: &GateNamespaces) -> String {
    if not_allowed.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = not_allowed
        .iter()
        .take(3)
        .map(ToString::to_string)
        .collect();
    let more = not_allowed.len().saturating_sub(3);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!(
        "; not counted (gate: true outside --gate-namespaces {allowed}): {}{more}",
        shown.join(", ")
    )
}

/// `Some(false)` when a gated canary failed, `None` while one has not run, else `Some(true)`
/// (also when no gated PullSet has canaries: the pre-pull proved its credentials).
pub fn credentials_valid(
    expected: &[(ObjectKey, String)],
    verdicts: &BTreeMap<(ObjectKey, String), Verdict>,
) -> Option<bool> {
    let mut complete = true;
    for key in expected {
        match verdicts.get(key) {
            Some(v) if !v.is_ok() => return Some(false),
            Some(_) => {}
            None => complete = false,
        }
    }
    complete.then_some(true)
}

/// What to do when the timeout passes before the gate opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutAction {
    /// Remove the taint anyway (a broken registry must not freeze an autoscaler).
    Remove,
    /// Keep the taint until the gate opens.
    Keep,
}

/// What the gate sees at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateInputs {
    /// The node carries the taint (`None`: the Node has not been read yet).
    pub tainted: Option<bool>,
    /// `CriticalImagesReady` for the gated PullSets (`None`: no pass finished yet).
    pub images_ready: Option<bool>,
    /// Every canary of the gated PullSets is `Ok` (`None`: some have not run yet).
    pub credentials_valid: Option<bool>,
    /// Since the agent started.
    pub elapsed: Duration,
}

/// What the agent does now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GateDecision {
    /// Nothing to do (no taint, or still waiting within the timeout).
    Wait,
    /// Both conditions hold: remove the taint (`GateOpened`).
    Open,
    /// The timeout passed: remove the taint anyway (`GateTimedOut`); `waiting_for` says why.
    TimedOutRemove { waiting_for: String },
    /// The timeout passed with `Keep`: say so once (`GateTimedOut`), keep the taint.
    TimedOutKeep { waiting_for: String },
}

/// The gate's memory: whether the timeout was already announced.
#[derive(Clone, Debug)]
pub struct Gate {
    timeout: Duration,
    action: TimeoutAction,
    announced_keep: bool,
}

impl Gate {
    pub fn new(timeout: Duration, action: TimeoutAction) -> Self {
        Self {
            timeout,
            action,
            announced_keep: false,
        }
    }

    /// Decides from the current inputs. `Open` and `TimedOutRemove` repeat while the taint is still
    /// there (a failed removal is retried); `TimedOutKeep` is returned once.
    pub fn decide(&mut self, inputs: &GateInputs) -> GateDecision {
        if inputs.tainted != Some(true) {
            return GateDecision::Wait;
        }
        if inputs.images_ready == Some(true) && inputs.credentials_valid == Some(true) {
            return GateDecision::Open;
        }
        if inputs.elapsed < self.timeout {
            return GateDecision::Wait;
        }
        let waiting_for = waiting_for(inputs);
        match self.action {
            TimeoutAction::Remove => GateDecision::TimedOutRemove { waiting_for },
            TimeoutAction::Keep if !self.announced_keep => {
                self.announced_keep = true;
                GateDecision::TimedOutKeep { waiting_for }
            }
            TimeoutAction::Keep => GateDecision::Wait,
        }
    }
}

fn waiting_for(inputs: &GateInputs) -> String {
    let part = |name: &str, state: Option<bool>| match state {
        Some(true) => None,
        Some(false) => Some(format!("{name} is False")),
        None => Some(format!("{name} is not known yet")),
    };
    [
        part("CriticalImagesReady", inputs.images_ready),
        part(
            "PullCredentialsValid (gated PullSets)",
            inputs.credentials_valid,
        ),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn inputs(
        tainted: Option<bool>,
        images: Option<bool>,
        creds: Option<bool>,
        elapsed: Duration,
    ) -> GateInputs {
        GateInputs {
            tainted,
            images_ready: images,
            credentials_valid: creds,
            elapsed,
        }
    }

    #[test]
    fn decision_table() {
        use GateDecision::*;
        use TimeoutAction::{Keep, Remove};
        let (t, f) = (Some(true), Some(false));
        let images_false = "CriticalImagesReady is False";
        let creds_unknown = "PullCredentialsValid (gated PullSets) is not known yet";
        let creds_false = "PullCredentialsValid (gated PullSets) is False";
        for (case, action, i, expected) in [
            (
                "no taint: nothing to do",
                Remove,
                inputs(f, t, t, MIN),
                Wait,
            ),
            (
                "node not read yet",
                Remove,
                inputs(None, t, t, 20 * MIN),
                Wait,
            ),
            ("both true opens", Remove, inputs(t, t, t, MIN), Open),
            (
                "both true opens after the timeout",
                Keep,
                inputs(t, t, t, 20 * MIN),
                Open,
            ),
            (
                "images missing, within timeout",
                Remove,
                inputs(t, f, t, 9 * MIN),
                Wait,
            ),
            (
                "credentials unknown, within timeout",
                Remove,
                inputs(t, t, None, MIN),
                Wait,
            ),
            (
                "timeout removes",
                Remove,
                inputs(t, f, None, 10 * MIN),
                TimedOutRemove {
                    waiting_for: format!("{images_false}, {creds_unknown}"),
                },
            ),
            (
                "timeout keeps, announced",
                Keep,
                inputs(t, t, f, 11 * MIN),
                TimedOutKeep {
                    waiting_for: creds_false.into(),
                },
            ),
        ] {
            let mut gate = Gate::new(10 * MIN, action);
            assert_eq!(gate.decide(&i), expected, "{case}");
        }
    }

    #[test]
    fn gated_credentials_table() {
        let a = (ObjectKey::new("ns", "a"), "r/x@sha256:1".to_string());
        let b = (ObjectKey::new("ns", "b"), "r/y@sha256:2".to_string());
        let expected = vec![a.clone(), b.clone()];
        let map = |pairs: &[(&(ObjectKey, String), Verdict)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).clone(), *v))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(credentials_valid(&[], &BTreeMap::new()), Some(true));
        assert_eq!(
            credentials_valid(&expected, &map(&[(&a, Verdict::Ok)])),
            None
        );
        assert_eq!(
            credentials_valid(&expected, &map(&[(&a, Verdict::Unauthorized)])),
            Some(false)
        );
        assert_eq!(
            credentials_valid(&expected, &map(&[(&a, Verdict::Ok), (&b, Verdict::Ok)])),
            Some(true)
        );
        // Verdicts of PullSets that do not gate do not count.
        let other = (ObjectKey::new("ns", "c"), "r/z".to_string());
        assert_eq!(
            credentials_valid(
                &expected,
                &map(&[
                    (&a, Verdict::Ok),
                    (&b, Verdict::Ok),
                    (&other, Verdict::Expired)
                ])
            ),
            Some(true)
        );
    }

    fn gating_inventory() -> Inventory {
        use crate::model::pullset::{PullSetSpec, validate};
        let mut inv = Inventory::default();
        // (namespace, name, spec)
        for (ns, name, yaml) in [
            (
                "kube-system",
                "critical",
                "gate: true\ncanary: {onRotation: true}",
            ),
            (
                "kube-system",
                "plain",
                "gate: false\ncanary: {onRotation: true}",
            ),
            ("tenant", "hog", "gate: true\ncanary: {onRotation: true}"),
            ("tenant", "no-canary", "gate: true"),
            (
                "tenant",
                "elsewhere",
                "gate: true\nnodeSelector: {pool: gpu}",
            ),
            ("team", "quiet", "gate: false"),
        ] {
            let spec: PullSetSpec = serde_yaml::from_str(&format!(
                "{yaml}\nimages: [{{image: 'r.example/{name}@sha256:{}'}}]",
                "a".repeat(64)
            ))
            .unwrap();
            let key = ObjectKey::new(ns, name);
            inv.pullsets
                .insert(key.clone(), validate(key, spec).unwrap());
        }
        inv
    }

    #[test]
    fn only_pullsets_from_allowed_namespaces_hold_the_gate() {
        let inv = gating_inventory();
        let node = NodeInfo {
            name: "n1".into(),
            labels: BTreeMap::from([("pool".to_string(), "cpu".to_string())]),
        };
        let names = |keys: Vec<ObjectKey>| keys.iter().map(ToString::to_string).collect::<Vec<_>>();
        // (case, allowed, gated canaries, not allowed)
        for (case, allowed, canaries, refused) in [
            (
                "the default install: kube-system only",
                GateNamespaces::only("kube-system,pullgate-system".split(',')),
                vec!["kube-system/critical"],
                vec!["tenant/hog", "tenant/no-canary"],
            ),
            (
                "tenant allowed too (blanks and empty entries ignored)",
                GateNamespaces::only(" kube-system , tenant,,".split(',')),
                vec!["kube-system/critical", "tenant/hog"],
                vec![],
            ),
            (
                "nothing allowed: nothing gates",
                GateNamespaces::only("".split(',')),
                vec![],
                vec!["kube-system/critical", "tenant/hog", "tenant/no-canary"],
            ),
            (
                "exact names, no prefix match",
                GateNamespaces::only(["kube"]),
                vec![],
                vec!["kube-system/critical", "tenant/hog", "tenant/no-canary"],
            ),
            (
                "standalone: any namespace",
                GateNamespaces::Any,
                vec!["kube-system/critical", "tenant/hog"],
                vec![],
            ),
        ] {
            let gated: Vec<ObjectKey> = gated_canaries(&inv, &node, &allowed)
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            assert_eq!(names(gated), canaries, "{case}: gated canaries");
            let out: Vec<ObjectKey> = not_allowed(&inv, &node, &allowed).into_iter().collect();
            assert_eq!(names(out), refused, "{case}: not allowed");
            for s in inv.pullsets.values() {
                assert_eq!(
                    allowed.counts(s),
                    s.spec.gate && allowed.allows(&s.key.namespace),
                    "{case}: {}",
                    s.key
                );
            }
        }
        let hog = GateNamespaces::only(["kube-system"]);
        assert!(!hog.counts(&inv.pullsets[&ObjectKey::new("tenant", "hog")]));
        assert!(hog.counts(&inv.pullsets[&ObjectKey::new("kube-system", "critical")]));
    }

    #[test]
    fn only_a_tainted_node_waits_for_its_gated_start_up_canaries() {
        use crate::model::node::{NodeFacts, NodeTaint};
        let inv = gating_inventory();
        let node = NodeInfo {
            name: "n1".into(),
            labels: BTreeMap::from([("pool".to_string(), "cpu".to_string())]),
        };
        let wait = GateWait {
            namespaces: GateNamespaces::only(["kube-system"]),
            taint_key: "pullgate.io/not-ready".into(),
        };
        let facts = |key: &str, effect: &str| NodeFacts {
            taints: vec![NodeTaint {
                key: key.into(),
                value: None,
                effect: effect.into(),
            }],
            kubelet_version: None,
        };
        let names =
            |keys: BTreeSet<ObjectKey>| keys.iter().map(ToString::to_string).collect::<Vec<_>>();
        // (case, facts, awaited)
        for (case, facts, awaited) in [
            (
                "tainted: the gated PullSets with canaries",
                Some(facts("pullgate.io/not-ready", "NoSchedule")),
                vec!["kube-system/critical"],
            ),
            ("the Node not read yet", None, vec![]),
            ("no taint", Some(NodeFacts::default()), vec![]),
            (
                "another key",
                Some(facts("other.io/not-ready", "NoSchedule")),
                vec![],
            ),
            (
                "another effect",
                Some(facts("pullgate.io/not-ready", "NoExecute")),
                vec![],
            ),
        ] {
            assert_eq!(
                names(awaited_at_start_up(&inv, &node, facts.as_ref(), &wait)),
                awaited,
                "{case}"
            );
        }
    }

    #[test]
    fn the_note_names_at_most_three_pullsets_not_counted() {
        let allowed = GateNamespaces::only(["kube-system"]);
        assert_eq!(not_counted_note(&BTreeSet::new(), &allowed), "");
        let keys: BTreeSet<ObjectKey> = (1..=5)
            .map(|i| ObjectKey::new("tenant", format!("p{i}")))
            .collect();
        assert_eq!(
            not_counted_note(&keys, &allowed),
            "; not counted (gate: true outside --gate-namespaces kube-system): tenant/p1, tenant/p2, tenant/p3 and 2 more"
        );
        assert_eq!(GateNamespaces::only([""]).to_string(), "no namespace");
    }

    #[test]
    fn keep_is_announced_once_and_remove_repeats_until_the_taint_is_gone() {
        let mut keep = Gate::new(MIN, TimeoutAction::Keep);
        let late = inputs(Some(true), Some(false), Some(true), 2 * MIN);
        assert!(matches!(
            keep.decide(&late),
            GateDecision::TimedOutKeep { .. }
        ));
        assert_eq!(keep.decide(&late), GateDecision::Wait);
        // The gate still opens later.
        let ok = inputs(Some(true), Some(true), Some(true), 3 * MIN);
        assert_eq!(keep.decide(&ok), GateDecision::Open);

        let mut remove = Gate::new(MIN, TimeoutAction::Remove);
        assert!(matches!(
            remove.decide(&late),
            GateDecision::TimedOutRemove { .. }
        ));
        assert!(matches!(
            remove.decide(&late),
            GateDecision::TimedOutRemove { .. }
        ));
        let gone = inputs(Some(false), Some(false), Some(true), 4 * MIN);
        assert_eq!(remove.decide(&gone), GateDecision::Wait);
    }
}
