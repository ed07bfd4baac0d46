//! The node this agent runs on: its name and labels, and which PullSets select it.

use std::collections::BTreeMap;

/// Identity of the node, as selection needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl NodeInfo {
    /// A `nodeSelector` matches when every one of its pairs is among the node's labels (an empty
    /// selector matches every node), as for a pod.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// This node's name: the `--node-name` flag when given (clap fills it from `PULLGATE_NODE_NAME`
/// too), else the environment's `PULLGATE_NODE_NAME`, else `NODE_NAME` (the usual downward-API
/// name); an empty value counts as unset. `env` looks a variable up (`std::env::var(..).ok()` in the
/// agent), so the rule is tested without touching the process environment.
pub fn node_name(flag: Option<String>, env: impl Fn(&str) -> Option<String>) -> Option<String> {
    flag.into_iter()
        .chain(
            ["PULLGATE_NODE_NAME", "NODE_NAME"]
                .into_iter()
                .filter_map(&env),
        )
        .find(|name| !name.is_empty())
}

/// What the API server says about this Node besides its labels (cluster mode).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub taints: Vec<NodeTaint>,
    /// `status.nodeInfo.kubeletVersion` (`v1.35.2`), for the kubelet's defaults.
    pub kubelet_version: Option<String>,
}

impl NodeFacts {
    /// The node carries a taint with this key and effect.
    pub fn has_taint(&self, key: &str, effect: &str) -> bool {
        self.taints
            .iter()
            .any(|t| t.key == key && t.effect == effect)
    }
}

/// One of the Node's taints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTaint {
    pub key: String,
    pub value: Option<String>,
    pub effect: String,
}

/// `k=v,k2=v2`, as given to `--node-labels`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeLabels(pub BTreeMap<String, String>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node label `{0}`: expected key=value")]
pub struct NodeLabelError(String);

impl NodeLabels {
    pub fn parse(s: &str) -> Result<Self, NodeLabelError> {
        let mut labels = BTreeMap::new();
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    labels.insert(k.trim().to_string(), v.trim().to_string());
                }
                _ => return Err(NodeLabelError(pair.to_string())),
            }
        }
        Ok(Self(labels))
    }
}

impl std::str::FromStr for NodeLabels {
    type Err = NodeLabelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(s: &str) -> BTreeMap<String, String> {
        NodeLabels::parse(s).unwrap().0
    }

    #[test]
    fn selection_table() {
        let node = NodeInfo {
            name: "n1".into(),
            labels: labels("pool=gpu,zone=a"),
        };
        for (selector, expected) in [
            ("", true),
            ("pool=gpu", true),
            ("pool=gpu,zone=a", true),
            ("pool=cpu", false),
            ("pool=gpu,zone=b", false),
            ("arch=arm64", false),
            ("pool=", false),
        ] {
            assert_eq!(node.matches(&labels(selector)), expected, "{selector}");
        }
    }

    #[test]
    fn node_name_table() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let both: &[(&str, &str)] = &[("PULLGATE_NODE_NAME", "p"), ("NODE_NAME", "n")];
        for (flag, vars, expected) in [
            (Some("f"), both, Some("f")),
            (None, both, Some("p")),
            (None, &[("NODE_NAME", "n")][..], Some("n")),
            (
                Some(""),
                &[("PULLGATE_NODE_NAME", ""), ("NODE_NAME", "n")][..],
                Some("n"),
            ),
            (None, &[("HOSTNAME", "pod-xyz")][..], None),
            (None, &[][..], None),
        ] {
            assert_eq!(
                node_name(flag.map(String::from), env(vars)).as_deref(),
                expected,
                "{flag:?} {vars:?}"
            );
        }
    }

    #[test]
    fn label_parsing() {
        assert_eq!(
            labels(" a=1 , b = 2,"),
            BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())])
        );
        assert_eq!(labels("k="), BTreeMap::from([("k".into(), String::new())]));
        assert!(NodeLabels::parse("novalue").is_err());
        assert!(NodeLabels::parse("=v").is_err());
    }
}
