//! First-version resolver: the pod rule for choosing secrets, then the first credential whose
//! registry host (with port) equals the image's.

use super::dockerconfig::{self, DockerConfigFormat};
use super::{Candidate, CredentialResolver, CredentialSource, Finding, Resolution};
use crate::image_ref::{DOCKER_HUB, ImageRef};
use crate::inventory::{
    Inventory, KEY_DOCKERCFG, KEY_DOCKERCONFIGJSON, ObjectKey, TYPE_DOCKERCFG,
    TYPE_DOCKERCONFIGJSON,
};
use crate::pullset::ValidPullSet;
use crate::verdict::Verdict;
use secrecy::ExposeSecret;

/// Resolves with the pod rule and an exact host comparison.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExactHostResolver;

impl CredentialResolver for ExactHostResolver {
    fn resolve(
        &self,
        inventory: &Inventory,
        pullset: &ValidPullSet,
        image: &ImageRef,
    ) -> Resolution {
        let mut resolution = Resolution::default();
        let namespace = &pullset.key.namespace;
        let secret_names = pull_secret_names(inventory, pullset, &mut resolution.findings);

        let mut near_misses = Vec::new();
        let mut keys_seen = 0usize;
        for name in &secret_names {
            let key = ObjectKey::new(namespace.clone(), name.clone());
            let Some(secret) = inventory.secrets.get(&key) else {
                resolution.findings.push(Finding {
                    verdict: Verdict::SecretNotFound,
                    message: format!("pull secret {key} does not exist"),
                });
                continue;
            };
            let (format, data_key) = match secret.type_.as_str() {
                TYPE_DOCKERCONFIGJSON => (DockerConfigFormat::ConfigJson, KEY_DOCKERCONFIGJSON),
                TYPE_DOCKERCFG => (DockerConfigFormat::Cfg, KEY_DOCKERCFG),
                other => {
                    resolution.findings.push(Finding {
                        verdict: Verdict::SecretWrongType,
                        message: format!(
                            "pull secret {key} has type `{other}`, not `{TYPE_DOCKERCONFIGJSON}`; the kubelet ignores it"
                        ),
                    });
                    continue;
                }
            };
            let Some(bytes) = secret.data.get(data_key) else {
                resolution.findings.push(Finding {
                    verdict: Verdict::SecretMalformed,
                    message: format!("pull secret {key} has no `{data_key}` key"),
                });
                continue;
            };
            let entries = match dockerconfig::parse(format, bytes.expose_secret()) {
                Ok(entries) => entries,
                Err(e) => {
                    resolution.findings.push(Finding {
                        verdict: Verdict::SecretMalformed,
                        message: format!("pull secret {key} key `{data_key}`: {e}"),
                    });
                    continue;
                }
            };
            for entry in entries {
                keys_seen += 1;
                let host = key_host(&entry.key);
                if host == image.registry {
                    if resolution.candidates.is_empty() {
                        resolution.candidates.push(Candidate {
                            source: CredentialSource::PullSecret {
                                secret: key.clone(),
                                key: entry.key.clone(),
                            },
                            username: entry.username,
                            password: entry.password,
                        });
                    }
                } else if hostname(&host) == hostname(&image.registry) {
                    near_misses.push(format!("`{}` in {key}", entry.key));
                }
            }
        }

        if resolution.candidates.is_empty() {
            if !near_misses.is_empty() {
                resolution.findings.push(Finding {
                    verdict: Verdict::HostMismatch,
                    message: format!(
                        "no pull secret key matches registry `{}`; near miss: {}",
                        image.registry,
                        near_misses.join(", ")
                    ),
                });
            } else {
                let scope = if secret_names.is_empty() {
                    format!(
                        "PullSet {} has no imagePullSecrets and ServiceAccount {namespace}/{} lists none",
                        pullset.key,
                        pullset.service_account()
                    )
                } else {
                    format!(
                        "none of the {keys_seen} key(s) in pull secret(s) {} is for registry `{}`",
                        secret_names.join(", "),
                        image.registry
                    )
                };
                resolution.findings.push(Finding {
                    verdict: Verdict::NoCredentials,
                    message: scope,
                });
            }
        }
        resolution
    }
}

/// The pod rule: the set's own secrets if any, else its ServiceAccount's. A missing `default`
/// ServiceAccount counts as an empty one (the API server creates it in every namespace).
fn pull_secret_names(
    inventory: &Inventory,
    pullset: &ValidPullSet,
    findings: &mut Vec<Finding>,
) -> Vec<String> {
    if !pullset.spec.image_pull_secrets.is_empty() {
        return pullset
            .spec
            .image_pull_secrets
            .iter()
            .map(|r| r.name.clone())
            .collect();
    }
    let sa_key = ObjectKey::new(
        pullset.key.namespace.clone(),
        pullset.service_account().to_string(),
    );
    match inventory.service_accounts.get(&sa_key) {
        Some(sa) => sa.image_pull_secrets.clone(),
        None if pullset.spec.service_account_name.is_some() => {
            findings.push(Finding {
                verdict: Verdict::ServiceAccountNotFound,
                message: format!(
                    "ServiceAccount {sa_key} named by PullSet {} does not exist",
                    pullset.key
                ),
            });
            Vec::new()
        }
        None => Vec::new(),
    }
}

/// The host (with port) a Docker config key names: scheme and path dropped.
fn key_host(key: &str) -> String {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = rest.split('/').next().unwrap_or(rest);
    match host {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
        h => h.to_string(),
    }
}

fn hostname(host: &str) -> &str {
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{SecretObject, ServiceAccountObject};
    use crate::pullset::{PullSetSpec, validate};
    use base64::Engine as _;
    use std::collections::BTreeMap;

    fn dockerconfig(entries: &[(&str, &str, &str)]) -> Vec<u8> {
        let auths: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|(k, u, p)| {
                let auth = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                (k.to_string(), serde_json::json!({ "auth": auth }))
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({ "auths": auths })).unwrap()
    }

    fn secret(name: &str, type_: &str, data_key: &str, bytes: Vec<u8>) -> SecretObject {
        SecretObject {
            key: ObjectKey::new("ns", name),
            type_: type_.into(),
            data: BTreeMap::from([(data_key.to_string(), bytes.into())]),
        }
    }

    fn inventory() -> Inventory {
        let mut inv = Inventory::default();
        for s in [
            secret(
                "good",
                TYPE_DOCKERCONFIGJSON,
                KEY_DOCKERCONFIGJSON,
                dockerconfig(&[("https://reg.io:5000", "alice", "pw1")]),
            ),
            secret(
                "other-port",
                TYPE_DOCKERCONFIGJSON,
                KEY_DOCKERCONFIGJSON,
                dockerconfig(&[("reg.io", "bob", "pw2")]),
            ),
            secret(
                "opaque",
                "Opaque",
                KEY_DOCKERCONFIGJSON,
                dockerconfig(&[("reg.io:5000", "x", "y")]),
            ),
            secret(
                "broken",
                TYPE_DOCKERCONFIGJSON,
                KEY_DOCKERCONFIGJSON,
                b"{not json".to_vec(),
            ),
            secret(
                "legacy",
                TYPE_DOCKERCFG,
                KEY_DOCKERCFG,
                br#"{"reg.io:5000":{"username":"carol","password":"pw3"}}"#.to_vec(),
            ),
            secret(
                "hub",
                TYPE_DOCKERCONFIGJSON,
                KEY_DOCKERCONFIGJSON,
                dockerconfig(&[("https://index.docker.io/v1/", "dan", "pw4")]),
            ),
        ] {
            inv.secrets.insert(s.key.clone(), s);
        }
        inv.service_accounts.insert(
            ObjectKey::new("ns", "builder"),
            ServiceAccountObject {
                key: ObjectKey::new("ns", "builder"),
                image_pull_secrets: vec!["good".into()],
            },
        );
        inv
    }

    fn pullset(yaml: &str) -> ValidPullSet {
        let spec: PullSetSpec = serde_yaml::from_str(yaml).unwrap();
        validate(ObjectKey::new("ns", "set"), spec).unwrap()
    }

    /// (pullset yaml, image, expected candidate user, expected finding verdicts)
    #[test]
    fn resolve_table() {
        let cases: Vec<(&str, &str, Option<&str>, Vec<Verdict>)> = vec![
            (
                "imagePullSecrets: [{name: good}]",
                "reg.io:5000/a:1",
                Some("alice"),
                vec![],
            ),
            (
                "imagePullSecrets: [{name: legacy}]",
                "reg.io:5000/a:1",
                Some("carol"),
                vec![],
            ),
            (
                "imagePullSecrets: [{name: good}, {name: legacy}]",
                "reg.io:5000/a:1",
                Some("alice"),
                vec![],
            ),
            (
                "imagePullSecrets: [{name: missing}, {name: good}]",
                "reg.io:5000/a:1",
                Some("alice"),
                vec![Verdict::SecretNotFound],
            ),
            (
                "imagePullSecrets: [{name: opaque}]",
                "reg.io:5000/a:1",
                None,
                vec![Verdict::SecretWrongType, Verdict::NoCredentials],
            ),
            (
                "imagePullSecrets: [{name: broken}]",
                "reg.io:5000/a:1",
                None,
                vec![Verdict::SecretMalformed, Verdict::NoCredentials],
            ),
            (
                "imagePullSecrets: [{name: other-port}]",
                "reg.io:5000/a:1",
                None,
                vec![Verdict::HostMismatch],
            ),
            (
                "imagePullSecrets: [{name: good}]",
                "reg.io/a:1",
                None,
                vec![Verdict::HostMismatch],
            ),
            (
                "imagePullSecrets: [{name: good}]",
                "elsewhere.io/a:1",
                None,
                vec![Verdict::NoCredentials],
            ),
            (
                "imagePullSecrets: [{name: hub}]",
                "nginx:1",
                Some("dan"),
                vec![],
            ),
            // The ServiceAccount's secrets apply only when the set lists none.
            (
                "serviceAccountName: builder",
                "reg.io:5000/a:1",
                Some("alice"),
                vec![],
            ),
            (
                "serviceAccountName: builder\nimagePullSecrets: [{name: legacy}]",
                "reg.io:5000/a:1",
                Some("carol"),
                vec![],
            ),
            (
                "serviceAccountName: ghost",
                "reg.io:5000/a:1",
                None,
                vec![Verdict::ServiceAccountNotFound, Verdict::NoCredentials],
            ),
            // No SA named and no `default` SA object: an empty default SA, anonymous.
            ("{}", "reg.io:5000/a:1", None, vec![Verdict::NoCredentials]),
        ];
        let inv = inventory();
        for (yaml, image, user, findings) in cases {
            let set = pullset(&format!(
                "{}\nimages: [{{image: '{image}'}}]",
                yaml.trim_start_matches("{}")
            ));
            let image = ImageRef::parse(image).unwrap();
            let r = ExactHostResolver.resolve(&inv, &set, &image);
            assert_eq!(
                r.candidates.first().map(|c| c.username.as_str()),
                user,
                "{yaml} {image}"
            );
            let got: Vec<_> = r.findings.iter().map(|f| f.verdict).collect();
            assert_eq!(got, findings, "{yaml} {image}: {:?}", r.findings);
            assert!(r.candidates.len() <= 1);
            let rendered = format!("{r:?}");
            for pw in ["pw1", "pw2", "pw3", "pw4"] {
                assert!(!rendered.contains(pw), "{rendered}");
            }
        }
    }
}
