//! Desired state for this node: which images to keep present, for which PullSets, with which
//! credentials. Pure: inventory + node in, a list out.

use crate::decide::credentials::{CredentialResolver, Resolution};
use crate::model::image_ref::ImageRef;
use crate::model::inventory::{Inventory, ObjectKey};
use crate::model::node::NodeInfo;
use std::collections::BTreeMap;

/// A PullSet that wants an image, with the credentials it would pull it with.
#[derive(Clone, Debug)]
pub struct Owner {
    pub pullset: ObjectKey,
    pub resolution: Resolution,
}

/// One image to keep present (listed once however many sets name it).
#[derive(Clone, Debug)]
pub struct DesiredImage {
    pub image: ImageRef,
    /// The sets that listed it, in key order.
    pub owners: Vec<Owner>,
}

/// The images every `prePull: true` PullSet selecting this node wants, de-duplicated by reference.
pub async fn prepull_images(
    inventory: &Inventory,
    node: &NodeInfo,
    resolver: &dyn CredentialResolver,
) -> Vec<DesiredImage> {
    let mut by_image: BTreeMap<ImageRef, Vec<Owner>> = BTreeMap::new();
    for set in inventory.pullsets.values() {
        if !set.spec.pre_pull || !node.matches(&set.spec.node_selector) {
            continue;
        }
        for image in &set.images {
            let resolution = resolver.resolve(inventory, set, image).await;
            by_image.entry(image.clone()).or_default().push(Owner {
                pullset: set.key.clone(),
                resolution,
            });
        }
    }
    by_image
        .into_iter()
        .map(|(image, owners)| DesiredImage { image, owners })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::credentials::KubeletResolver;
    use crate::model::pullset::{PullSetSpec, validate};

    fn inventory(sets: &[(&str, &str)]) -> Inventory {
        let mut inv = Inventory::default();
        for (name, yaml) in sets {
            let spec: PullSetSpec = serde_yaml::from_str(yaml).unwrap();
            let set = validate(ObjectKey::new("ns", *name), spec).unwrap();
            inv.pullsets.insert(set.key.clone(), set);
        }
        inv
    }

    #[test]
    fn selection_and_dedup() {
        let inv = inventory(&[
            ("a", "images: [{image: r.io/x:1}, {image: r.io/y:1}]"),
            (
                "b",
                "images: [{image: 'r.io/x:1'}]\nnodeSelector: {pool: gpu}",
            ),
            (
                "c",
                "images: [{image: r.io/z:1}]\nnodeSelector: {pool: cpu}",
            ),
            ("d", "images: [{image: r.io/w:1}]\nprePull: false"),
        ]);
        let node = NodeInfo {
            name: "n".into(),
            labels: [("pool".to_string(), "gpu".to_string())].into(),
        };
        let desired =
            futures::executor::block_on(prepull_images(&inv, &node, &KubeletResolver::default()));
        let got: Vec<(String, Vec<String>)> = desired
            .iter()
            .map(|d| {
                (
                    d.image.to_string(),
                    d.owners.iter().map(|o| o.pullset.name.clone()).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "r.io/x:1".to_string(),
                    vec!["a".to_string(), "b".to_string()]
                ),
                ("r.io/y:1".to_string(), vec!["a".to_string()]),
            ]
        );
    }
}
