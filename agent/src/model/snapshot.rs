//! The daemon's snapshot of its sources: the inventory one read of the manifest directory or the
//! API server produced, with the problems found on the way, the node's labels and taints when the
//! source knows them, and whether everything referenced has been read. Sources publish it; the
//! pre-pull loop, the canary scheduler, the node reporter and the local API read it.

use crate::model::inventory::{Inventory, ObjectKey};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// Something wrong in what a source read: a file, document or object of a manifest directory, or
/// an object or permission of the API server. Reported, skipped; the rest is still loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotProblem {
    pub file: PathBuf,
    /// 0-based document index inside a multi-document file.
    pub document: Option<usize>,
    /// `Kind namespace/name`.
    pub object: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

impl std::fmt::Display for SnapshotProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.file.as_os_str().is_empty() {
            parts.push(self.file.display().to_string());
        }
        if let Some(d) = self.document {
            parts.push(format!("document {d}"));
        }
        if let Some(o) = &self.object {
            parts.push(o.clone());
        }
        if let Some(field) = &self.field {
            parts.push(format!("field {field}"));
        }
        write!(f, "{}", parts.join(" "))?;
        write!(f, ": {}", self.message)
    }
}

/// What one read of a source produced: the snapshot the daemon passes around.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub inventory: Inventory,
    pub problems: Vec<SnapshotProblem>,
    /// Accepted-with-a-warning notes (tags without digests…), with their object.
    pub warnings: Vec<String>,
    /// sha256 over every file's path and content: equal fingerprints, equal inventories.
    pub fingerprint: String,
    /// The node's labels, when the source knows them (cluster mode: from the Node object).
    pub node_labels: Option<BTreeMap<String, String>>,
    /// The Node's taints (cluster mode).
    pub node_facts: Option<crate::model::node::NodeFacts>,
    /// Everything referenced has been read at least once (a directory is read whole).
    pub synced: bool,
}

impl Snapshot {
    /// The node as this source sees it: its labels from the source when it has them.
    pub fn node(&self, base: &crate::model::node::NodeInfo) -> crate::model::node::NodeInfo {
        match &self.node_labels {
            Some(labels) => crate::model::node::NodeInfo {
                name: base.name.clone(),
                labels: labels.clone(),
            },
            None => base.clone(),
        }
    }

    /// Every image of every PullSet selected for `base` now, as `(PullSet, image)` slots: what
    /// a per-image record (the status board, metric series, canary verdicts) may keep. Anything
    /// else belongs to a PullSet or image that is gone, and is forgotten.
    pub fn selected_images(
        &self,
        base: &crate::model::node::NodeInfo,
    ) -> BTreeSet<(ObjectKey, String)> {
        let node = self.node(base);
        self.inventory
            .pullsets
            .values()
            .filter(|s| node.matches(&s.spec.node_selector))
            .flat_map(|s| s.images.iter().map(|i| (s.key.clone(), i.to_string())))
            .collect()
    }
}
