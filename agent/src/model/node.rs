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

/// What the API server says about this Node besides its labels (cluster mode).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub taints: Vec<NodeTaint>,
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
