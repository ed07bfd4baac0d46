//! What the one-shot commands (`auth resolve`, `check`, `diagnose`) share: the PullSet they
//! resolve credentials with (one image, pulled as a pod with a ServiceAccount or with its own
//! `imagePullSecrets`), the resolution from the selected source of credentials (Docker config
//! files, a manifest directory, or else the API server the cluster flags pick), and the node name
//! they report.

use crate::adapters::files::manifests::{ManifestError, load_dir};
use crate::adapters::kube::kubeconfig::KubeconfigError;
use crate::adapters::kube::source::ClusterError;
use crate::cli::CredentialSelection;
use crate::decide::credentials::dockerconfig::DockerConfigEntry;
use crate::decide::credentials::{
    CredentialResolver as _, KubeletResolver, Resolution, resolve_docker_config_files,
};
use crate::model::image_ref::ImageRef;
use crate::model::inventory::{Inventory, ObjectKey};
use crate::model::pullset::{self, ImageEntry, LocalObjectReference, PullSetSpec, ValidPullSet};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum OneShotError {
    #[error(transparent)]
    Manifests(#[from] ManifestError),
    #[error("PullSet {0} is not in the manifests (or is invalid: see `pullgate run --once`)")]
    PullSetNotFound(ObjectKey),
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("{0}")]
    Invalid(String),
}

/// Who pulls, as a one-shot command is told: the pod rule's input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Puller {
    /// `None`: the namespace's `default` ServiceAccount. It exists in every real namespace, so
    /// when a manifest directory defines none, the pod gets no pull secrets from it — never a
    /// `ServiceAccountNotFound`.
    pub service_account: Option<String>,
    /// The pod's own `imagePullSecrets`; empty: its ServiceAccount's apply.
    pub pod_secrets: Vec<String>,
}

/// The PullSet that a pull of `image` by `puller` in `namespace` amounts to, named `name` (outcomes
/// and findings name it as their PullSet). An invalid name (of a ServiceAccount, a Secret, the
/// image) is an error that names the field.
pub fn pullset_for(
    namespace: &str,
    name: &str,
    puller: &Puller,
    image: &ImageRef,
) -> Result<ValidPullSet, OneShotError> {
    let spec = PullSetSpec {
        service_account_name: puller.service_account.clone(),
        image_pull_secrets: puller
            .pod_secrets
            .iter()
            .map(|name| LocalObjectReference { name: name.clone() })
            .collect(),
        node_selector: Default::default(),
        images: vec![ImageEntry {
            image: image.to_string(),
        }],
        pre_pull: false,
        gate: false,
        pin: false,
        canary: None,
    };
    pullset::validate(ObjectKey::new(namespace, name), spec).map_err(|errors| {
        OneShotError::Invalid(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })
}

/// The selected source of credentials, read once for every image of a command.
pub struct Selected {
    /// The pod's / PullSet's namespace; empty for Docker config files.
    pub namespace: String,
    /// `--pullset`'s name; empty otherwise.
    pub pullset: String,
    source: Source,
    /// ServiceAccount tokens (TokenRequest) when the objects come from the API server, for the
    /// credential providers in service-account token mode.
    tokens: Option<std::sync::Arc<dyn crate::decide::credentials::ServiceAccountTokens>>,
}

enum Source {
    DockerConfigs(Vec<(PathBuf, Result<Vec<DockerConfigEntry>, String>)>),
    /// Objects from a manifest directory or the API server; the PullSet `--pullset` names, else
    /// who pulls.
    Objects {
        inventory: Box<Inventory>,
        pullset: Option<Box<pullset::ValidPullSet>>,
        puller: Puller,
    },
}

/// Reads the selected source: Docker config files, the objects of a manifest directory (a
/// PullSet with `--pullset`, else a pod with `--service-account`, else `default`), or else from
/// the API server, by name only, the ServiceAccount and Secrets the pod rule uses for `--pod` or
/// a pod with `--service-account` (else `default`).
pub async fn select(selection: &CredentialSelection) -> Result<Selected, OneShotError> {
    let CredentialSelection {
        docker_configs,
        manifests,
        cluster,
        service_account,
        pullset,
        pod,
    } = selection;
    if !docker_configs.is_empty() {
        return Ok(Selected {
            namespace: String::new(),
            pullset: String::new(),
            source: Source::DockerConfigs(crate::adapters::files::docker_config::read_all(
                docker_configs,
            )),
            tokens: None,
        });
    }
    let with_service_account = Puller {
        service_account: service_account.clone(),
        pod_secrets: Vec::new(),
    };
    if let Some(dir) = manifests {
        let namespace = cluster.namespace_or_default();
        let loaded = load_dir(dir)?;
        let set = match pullset {
            Some(name) => {
                let key = ObjectKey::new(&namespace, name);
                let found = loaded.inventory.pullsets.get(&key).cloned();
                Some(Box::new(found.ok_or(OneShotError::PullSetNotFound(key))?))
            }
            None => None,
        };
        return Ok(Selected {
            namespace,
            pullset: pullset.clone().unwrap_or_default(),
            source: Source::Objects {
                inventory: Box::new(loaded.inventory),
                pullset: set,
                puller: with_service_account,
            },
            tokens: None,
        });
    }
    let connection = crate::adapters::kube::kubeconfig::connect(cluster).await?;
    let namespace = connection.namespace;
    let puller = match pod {
        Some(pod) => {
            let key = ObjectKey::new(&namespace, pod);
            let (pod_secrets, service_account, _images) =
                crate::adapters::kube::source::get_pod_pull_spec(&connection.client, &key).await?;
            Puller {
                service_account: Some(service_account),
                pod_secrets,
            }
        }
        None => with_service_account,
    };
    let inventory = crate::adapters::kube::source::read_pull_objects(
        &connection.client,
        &namespace,
        puller.service_account.as_deref().unwrap_or("default"),
        &puller.pod_secrets,
    )
    .await;
    Ok(Selected {
        namespace,
        pullset: String::new(),
        source: Source::Objects {
            inventory: Box::new(inventory),
            pullset: None,
            puller,
        },
        tokens: Some(crate::adapters::kube::token_request::TokenRequests::shared(
            connection.client.clone(),
        )),
    })
}

impl Selected {
    /// ServiceAccount tokens, when the objects come from the API server.
    pub fn tokens(
        &self,
    ) -> Option<std::sync::Arc<dyn crate::decide::credentials::ServiceAccountTokens>> {
        self.tokens.clone()
    }

    /// The resolution for `image`, as the kubelet would make it from this source.
    pub async fn resolve(
        &self,
        resolver: &KubeletResolver,
        image: &ImageRef,
    ) -> Result<Resolution, OneShotError> {
        match &self.source {
            Source::DockerConfigs(files) => {
                Ok(resolve_docker_config_files(files, resolver, image).await)
            }
            Source::Objects {
                inventory,
                pullset,
                puller,
            } => {
                let set = match pullset {
                    Some(set) => (**set).clone(),
                    None => pullset_for(&self.namespace, "auth-resolve", puller, image)?,
                };
                Ok(resolver.resolve(inventory, &set, image).await)
            }
        }
    }
}

/// The node name a one-shot command reports: the agent's rule ([`crate::model::node::node_name`],
/// without a flag), else `local`.
pub fn node_name() -> String {
    crate::model::node::node_name(None, |var| std::env::var(var).ok())
        .unwrap_or_else(|| "local".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::inventory::{Inventory, ServiceAccountObject};
    use crate::model::verdict::Verdict;

    fn resolve(inventory: &Inventory, puller: &Puller) -> Resolution {
        let image = ImageRef::parse("reg.io/team/app:v1").unwrap();
        let set = pullset_for("team", "diagnose", puller, &image).unwrap();
        futures::executor::block_on(KubeletResolver::default().resolve(inventory, &set, &image))
    }

    fn verdicts(r: &Resolution) -> Vec<Verdict> {
        r.findings.iter().map(|f| f.verdict).collect()
    }

    #[test]
    fn a_missing_default_service_account_means_no_pull_secrets() {
        let empty = Inventory::default();
        for sa in [None, Some("default".to_string())] {
            let puller = Puller {
                service_account: sa.clone(),
                pod_secrets: Vec::new(),
            };
            let r = resolve(&empty, &puller);
            assert_eq!(verdicts(&r), [Verdict::NoCredentials], "{sa:?}: {r:?}");
        }
        // A named ServiceAccount that does not exist is a finding.
        let ghost = Puller {
            service_account: Some("ghost".into()),
            pod_secrets: Vec::new(),
        };
        assert_eq!(
            verdicts(&resolve(&empty, &ghost)),
            [Verdict::ServiceAccountNotFound, Verdict::NoCredentials]
        );
        // The pod's own secrets win; its ServiceAccount is not consulted.
        let own = Puller {
            service_account: Some("ghost".into()),
            pod_secrets: vec!["regcred".into()],
        };
        assert_eq!(
            verdicts(&resolve(&empty, &own)),
            [Verdict::SecretNotFound, Verdict::NoCredentials]
        );
        // A `default` ServiceAccount that exists lends its secrets.
        let mut inventory = Inventory::default();
        let key = ObjectKey::new("team", "default");
        inventory.service_accounts.insert(
            key.clone(),
            ServiceAccountObject {
                key,
                image_pull_secrets: vec!["regcred".into()],
                ..Default::default()
            },
        );
        assert_eq!(
            verdicts(&resolve(&inventory, &Puller::default())),
            [Verdict::SecretNotFound, Verdict::NoCredentials]
        );
    }

    #[test]
    fn invalid_names_are_errors_not_panics() {
        let image = ImageRef::parse("reg.io/team/app:v1").unwrap();
        let bad = Puller {
            service_account: Some("Not A Name".into()),
            pod_secrets: vec!["also bad".into()],
        };
        let Err(OneShotError::Invalid(message)) = pullset_for("team", "x", &bad, &image) else {
            panic!("expected Invalid");
        };
        assert!(
            message.contains("spec.serviceAccountName")
                && message.contains("spec.imagePullSecrets[0].name"),
            "{message}"
        );
    }
}
