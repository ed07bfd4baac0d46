//! Rotation detection: what each PullSet's credentials depend on, fingerprinted, so that a change
//! of a referenced Secret's data, or of the ServiceAccount's secret list, re-validates exactly the
//! PullSets it affects.

use crate::decide::credentials::pull_secret_names;
use crate::model::inventory::{Inventory, ObjectKey};
use secrecy::ExposeSecret as _;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;

/// PullSet → fingerprint of everything its credential resolution reads. Never printed: the
/// fingerprint is a one-way digest, and stays in memory.
pub fn fingerprints(inventory: &Inventory) -> BTreeMap<ObjectKey, [u8; 32]> {
    inventory
        .pullsets
        .values()
        .map(|set| {
            let mut findings = Vec::new();
            let names = pull_secret_names(inventory, set, &mut findings);
            let mut h = Sha256::new();
            for name in &names {
                h.update(name.as_bytes());
                h.update([0]);
                match inventory
                    .secrets
                    .get(&ObjectKey::new(set.key.namespace.clone(), name.clone()))
                {
                    None => h.update(b"\x01absent"),
                    Some(secret) => {
                        h.update(secret.type_.as_bytes());
                        for (k, v) in &secret.data {
                            h.update([2]);
                            h.update(k.as_bytes());
                            h.update([3]);
                            h.update((v.expose_secret().len() as u64).to_be_bytes());
                            h.update(v.expose_secret());
                        }
                    }
                }
            }
            (set.key.clone(), h.finalize().into())
        })
        .collect()
}

/// PullSets present in both whose credential inputs changed.
pub fn rotated(
    old: &BTreeMap<ObjectKey, [u8; 32]>,
    new: &BTreeMap<ObjectKey, [u8; 32]>,
) -> Vec<ObjectKey> {
    new.iter()
        .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
        .map(|(k, _)| k.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::inventory::{SecretObject, ServiceAccountObject};
    use crate::model::pullset::{PullSetSpec, validate};

    fn inventory(password: &str, sa_secrets: &[&str]) -> Inventory {
        let mut inv = Inventory::default();
        for (name, yaml) in [
            (
                "own",
                "imagePullSecrets: [{name: regcred}]\nimages: [{image: r.io/a:1}]",
            ),
            (
                "via-sa",
                "serviceAccountName: builder\nimages: [{image: r.io/a:1}]",
            ),
            (
                "unrelated",
                "imagePullSecrets: [{name: other}]\nimages: [{image: r.io/a:1}]",
            ),
        ] {
            let spec: PullSetSpec = serde_yaml::from_str(yaml).unwrap();
            let set = validate(ObjectKey::new("ns", name), spec).unwrap();
            inv.pullsets.insert(set.key.clone(), set);
        }
        for (name, data) in [("regcred", password), ("other", "fixed"), ("second", "x")] {
            let key = ObjectKey::new("ns", name);
            inv.secrets.insert(
                key.clone(),
                SecretObject {
                    key,
                    type_: "kubernetes.io/dockerconfigjson".into(),
                    data: [(
                        ".dockerconfigjson".to_string(),
                        data.as_bytes().to_vec().into(),
                    )]
                    .into(),
                },
            );
        }
        let sa = ObjectKey::new("ns", "builder");
        inv.service_accounts.insert(
            sa.clone(),
            ServiceAccountObject {
                key: sa,
                image_pull_secrets: sa_secrets.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        );
        inv
    }

    fn names(keys: Vec<ObjectKey>) -> Vec<String> {
        keys.into_iter().map(|k| k.name).collect()
    }

    #[test]
    fn rotation_table() {
        let base = fingerprints(&inventory("v1", &["regcred"]));
        for (password, sa, expected) in [
            ("v1", vec!["regcred"], vec![]),
            // Secret data changed: every set that reads it.
            ("v2", vec!["regcred"], vec!["own", "via-sa"]),
            // The ServiceAccount's list changed: the sets that use the SA.
            ("v1", vec!["regcred", "second"], vec!["via-sa"]),
            ("v1", vec![], vec!["via-sa"]),
        ] {
            let new = fingerprints(&inventory(password, &sa));
            assert_eq!(names(rotated(&base, &new)), expected, "{password} {sa:?}");
        }
    }
}
