//! The kubelet's answer to "which credentials would a pod pull this image with".
//!
//! 1. Pull secrets by the pod rule: the PullSet's own `imagePullSecrets`, else its ServiceAccount's
//!    (`default` when none is named; a missing `default` is an empty one, any other missing
//!    ServiceAccount a `ServiceAccountNotFound` finding) — one list or the other, never merged — in
//!    its namespace, in listed order. A missing secret is skipped (finding `SecretNotFound`); each
//!    secret is read as [`super::pull_secret`] says: one of another type, or without (or with an
//!    empty) data key, is ignored (`SecretWrongType`, `SecretMalformed`); a used secret the kubelet
//!    cannot parse fails the pull before anything is tried (`blocked: SecretMalformed`).
//! 2. The keyring rules ([`super::keyring`]) over those secrets; then over the node's Docker config
//!    file; then over the credential-provider plugins' answers (through
//!    [`super::CredentialPlugins`]). Every match is a candidate, in that order. No candidate: an
//!    anonymous pull.
//! 3. No candidate but a key that almost matches: `HostMismatch`, naming the key and the reason.

use super::dockerconfig::{self, DockerConfigEntry, DockerConfigFormat};
use super::expiry::expires_at;
use super::keyring::Keyring;
use super::pull_secret::{KeyRead, read_pull_secret};
use super::shown_key::{shown, shown_key, stripped_warning};
use super::{
    Candidate, CredentialPlugins, CredentialResolver, CredentialSource, Finding, PodServiceAccount,
    Resolution,
};
use crate::model::image_ref::ImageRef;
use crate::model::inventory::{Inventory, ObjectKey, TYPE_DOCKERCFG, TYPE_DOCKERCONFIGJSON};
use crate::model::pullset::ValidPullSet;
use crate::model::verdict::Verdict;
use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// A credential in a keyring, with where it came from.
#[derive(Clone, Debug)]
struct Filed {
    source: CredentialSource,
    username: String,
    password: SecretString,
    tokens: Vec<SecretString>,
    expires_at: Option<SystemTime>,
}

impl Filed {
    fn from_entry(entry: DockerConfigEntry, source: CredentialSource) -> Self {
        let expires_at = expires_at(
            std::iter::once(entry.password.expose_secret())
                .chain(entry.identity_token.as_ref().map(|t| t.expose_secret())),
        );
        Self {
            source,
            username: entry.username,
            password: entry.password,
            tokens: entry
                .identity_token
                .into_iter()
                .chain(entry.registry_token)
                .collect(),
            expires_at,
        }
    }

    fn candidate(&self) -> Candidate {
        Candidate {
            source: self.source.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
            tokens: self.tokens.clone(),
            expires_at: self.expires_at,
        }
    }
}

/// A file's entries, or why it could not be used.
pub type ParsedFile = Arc<Result<Vec<DockerConfigEntry>, String>>;

/// The node's Docker config file (`--node-docker-config`), as the resolver reads it; the file
/// adapter (`adapters::files::docker_config`) implements it, re-reading the file when it changes.
pub trait NodeDockerConfig: Send + Sync {
    /// The file, to name it in findings and candidates.
    fn path(&self) -> &Path;
    /// Its entries, or why it cannot be used (the kubelet logs that and goes on without it).
    fn entries(&self) -> ParsedFile;
}

/// A Docker config file's bytes in either format the kubelet reads: `config.json` (`{"auths": …}`)
/// or a legacy bare map; errors name the file.
pub fn parse_docker_config_file(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<DockerConfigEntry>, String> {
    let has_auths = serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| {
            v.as_object()
                .map(|o| o.keys().any(|k| k.eq_ignore_ascii_case("auths")))
        })
        .unwrap_or(true);
    let format = if has_auths {
        DockerConfigFormat::ConfigJson
    } else {
        DockerConfigFormat::Cfg
    };
    dockerconfig::parse(format, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The kubelet-compatible resolver.
#[derive(Default)]
pub struct KubeletResolver {
    node_config: Option<Arc<dyn NodeDockerConfig>>,
    plugins: Option<Arc<dyn CredentialPlugins>>,
}

impl KubeletResolver {
    pub fn new(
        node_config: Option<Arc<dyn NodeDockerConfig>>,
        plugins: Option<Arc<dyn CredentialPlugins>>,
    ) -> Self {
        Self {
            node_config,
            plugins,
        }
    }

    /// The node's own keyrings: its Docker config file, and every applicable plugin's answer
    /// for a pull as `service_account`.
    async fn node_keyrings(
        &self,
        repository: &str,
        service_account: &PodServiceAccount,
        findings: &mut Vec<Finding>,
    ) -> (Keyring<Filed>, Keyring<Filed>) {
        let mut node = Keyring::default();
        if let Some(config) = &self.node_config {
            match config.entries().as_ref() {
                Ok(entries) => {
                    for entry in entries {
                        let source = CredentialSource::DockerConfig {
                            path: config.path().to_path_buf(),
                            key: entry.key.clone(),
                        };
                        node.add(&entry.key, Filed::from_entry(entry.clone(), source));
                    }
                }
                Err(message) => tracing::debug!(%message, "node docker config not used"),
            }
        }
        let mut plugins = Keyring::default();
        if let Some(providers) = &self.plugins {
            let answer = providers.credentials(repository, service_account).await;
            for c in answer.credentials {
                let source = CredentialSource::Plugin {
                    provider: c.provider.clone(),
                    key: c.key.clone(),
                };
                let expires_at = expires_at([c.password.expose_secret()]);
                plugins.add(
                    &c.key,
                    Filed {
                        source,
                        username: c.username,
                        // The plugin's token: sent as the password, scrubbed as one.
                        password: c.password,
                        // The ServiceAccount token it was given: never sent, scrubbed.
                        tokens: c.tokens,
                        expires_at,
                    },
                );
            }
            for message in answer.failures {
                findings.push(Finding {
                    verdict: Verdict::NoCredentials,
                    message,
                });
            }
            findings.extend(answer.notes);
        }
        (node, plugins)
    }

    async fn resolve_inner(
        &self,
        inventory: &Inventory,
        pullset: &ValidPullSet,
        image: &ImageRef,
    ) -> Resolution {
        let mut resolution = Resolution::default();
        let repository = image.name();
        let namespace = &pullset.key.namespace;
        let secret_names = pull_secret_names(inventory, pullset, &mut resolution.findings);

        // 1. Pull secrets.
        let mut pod = Keyring::default();
        for name in &secret_names {
            let key = ObjectKey::new(namespace.clone(), name.clone());
            match secret_entries(inventory, &key) {
                SecretUse::Entries(entries) => {
                    for entry in entries {
                        let source = CredentialSource::PullSecret {
                            secret: key.clone(),
                            key: entry.key.clone(),
                        };
                        pod.add(&entry.key.clone(), Filed::from_entry(entry, source));
                    }
                }
                SecretUse::Skipped(finding) => resolution.findings.push(finding),
                SecretUse::Fatal(finding) => {
                    resolution.blocked = Some(finding.clone());
                    resolution.findings.push(finding);
                    return resolution;
                }
            }
        }
        note_ignored_keys(&pod, "a pull secret", &mut resolution.findings);

        // 2. The node's Docker config file; 3. credential-provider plugins.
        let service_account = pod_service_account(inventory, pullset);
        let (node, plugins) = self
            .node_keyrings(&repository, &service_account, &mut resolution.findings)
            .await;
        for keyring in [&pod, &node, &plugins] {
            note_stripped_keys(keyring, &mut resolution.findings);
        }

        let no_credentials = if secret_names.is_empty() {
            format!(
                "PullSet {} has no imagePullSecrets and ServiceAccount {namespace}/{} lists none; no node credential covers registry `{}`",
                pullset.key,
                pullset.service_account(),
                image.registry
            )
        } else {
            format!(
                "no key in pull secret(s) {} (nor any node credential) covers registry `{}`",
                secret_names.join(", "),
                image.registry
            )
        };
        finish(
            &mut resolution,
            &[&pod, &node, &plugins],
            image,
            no_credentials,
        );
        resolution
    }
}

/// Candidates from the keyrings in order; when there is none, the near misses (`HostMismatch`) or
/// `NoCredentials` with the given message.
fn finish(
    resolution: &mut Resolution,
    keyrings: &[&Keyring<Filed>],
    image: &ImageRef,
    no_credentials: String,
) {
    let repository = image.name();
    for keyring in keyrings {
        resolution.candidates.extend(
            keyring
                .lookup(&repository)
                .into_iter()
                .map(|f| f.value.candidate()),
        );
    }
    if !resolution.candidates.is_empty() {
        return;
    }
    let near: Vec<String> = keyrings
        .iter()
        .flat_map(|k| k.near_misses(&repository))
        .map(|(f, reason)| {
            format!(
                "`{}` in {} ({reason})",
                shown(&f.key),
                f.value.source.origin()
            )
        })
        .collect();
    resolution.findings.push(if near.is_empty() {
        Finding {
            verdict: Verdict::NoCredentials,
            message: no_credentials,
        }
    } else {
        Finding {
            verdict: Verdict::HostMismatch,
            message: format!(
                "no credential key matches registry `{}` of {repository}; near miss: {}",
                image.registry,
                near.join(", ")
            ),
        }
    });
}

/// What the kubelet would pick from these Docker config files alone (one keyring, files in the
/// given order, each as read), then the node's credentials — for `pullgate auth resolve
/// --docker-config`.
pub async fn resolve_docker_config_files(
    files: &[(PathBuf, Result<Vec<DockerConfigEntry>, String>)],
    node: &KubeletResolver,
    image: &ImageRef,
) -> Resolution {
    let mut resolution = Resolution::default();
    let mut given = Keyring::default();
    for (path, read) in files {
        match read.clone() {
            Ok(entries) => {
                for entry in entries {
                    let source = CredentialSource::DockerConfig {
                        path: path.clone(),
                        key: entry.key.clone(),
                    };
                    given.add(&entry.key.clone(), Filed::from_entry(entry, source));
                }
            }
            Err(message) => {
                let finding = Finding {
                    verdict: Verdict::SecretMalformed,
                    message,
                };
                resolution.blocked = Some(finding.clone());
                resolution.findings.push(finding);
                return resolution;
            }
        }
    }
    note_ignored_keys(&given, "a Docker config file", &mut resolution.findings);
    // No pod, hence no ServiceAccount: as a static pod.
    let (node_ring, plugin_ring) = node
        .node_keyrings(
            &image.name(),
            &PodServiceAccount::None,
            &mut resolution.findings,
        )
        .await;
    for keyring in [&given, &node_ring, &plugin_ring] {
        note_stripped_keys(keyring, &mut resolution.findings);
    }
    let files: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
    finish(
        &mut resolution,
        &[&given, &node_ring, &plugin_ring],
        image,
        format!(
            "no key in {} (nor any node credential) covers registry `{}`",
            files.join(", "),
            image.registry
        ),
    );
    resolution
}

impl CredentialResolver for KubeletResolver {
    fn resolve<'a>(
        &'a self,
        inventory: &'a Inventory,
        pullset: &'a ValidPullSet,
        image: &'a ImageRef,
    ) -> BoxFuture<'a, Resolution> {
        Box::pin(self.resolve_inner(inventory, pullset, image))
    }
}

enum SecretUse {
    Entries(Vec<DockerConfigEntry>),
    Skipped(Finding),
    Fatal(Finding),
}

/// What the kubelet does with one referenced secret.
fn secret_entries(inventory: &Inventory, key: &ObjectKey) -> SecretUse {
    if let Some(why) = inventory.forbidden.get(key) {
        return SecretUse::Skipped(Finding {
            verdict: Verdict::Forbidden,
            message: format!("pull secret {key} cannot be read: {why}"),
        });
    }
    let Some(secret) = inventory.secrets.get(key) else {
        return SecretUse::Skipped(Finding {
            verdict: Verdict::SecretNotFound,
            message: format!("pull secret {key} does not exist"),
        });
    };
    match read_pull_secret(secret) {
        Some((_, KeyRead::Entries(entries))) => SecretUse::Entries(entries),
        None => SecretUse::Skipped(Finding {
            verdict: Verdict::SecretWrongType,
            message: format!(
                "pull secret {key} has type `{}`, not `{TYPE_DOCKERCONFIGJSON}` or `{TYPE_DOCKERCFG}`; the kubelet ignores it",
                secret.type_
            ),
        }),
        Some((data_key, KeyRead::Absent)) => SecretUse::Skipped(Finding {
            verdict: Verdict::SecretMalformed,
            message: format!(
                "pull secret {key} has no (or an empty) `{data_key}` key; the kubelet ignores it"
            ),
        }),
        Some((data_key, KeyRead::Unparsable(error))) => SecretUse::Fatal(Finding {
            verdict: Verdict::SecretMalformed,
            message: format!(
                "pull secret {key} key `{data_key}`: {error}; the kubelet fails every pull that uses it"
            ),
        }),
    }
}

fn note_ignored_keys<T>(keyring: &Keyring<T>, what: &str, findings: &mut Vec<Finding>) {
    for key in &keyring.ignored {
        findings.push(Finding {
            verdict: Verdict::SecretMalformed,
            message: format!(
                "registry key `{}` in {what} is not a valid URL; the kubelet ignores it",
                shown(key)
            ),
        });
    }
}

/// A note (verdict `Ok`: nothing fails because of it) for every key whose shown form dropped
/// userinfo, a query or a fragment; the note names the key as shown, never what was dropped.
fn note_stripped_keys(keyring: &Keyring<Filed>, findings: &mut Vec<Finding>) {
    for filed in keyring.entries() {
        let shown = shown_key(&filed.key);
        if shown.stripped {
            findings.push(Finding {
                verdict: Verdict::Ok,
                message: stripped_warning(&shown, &filed.value.source.origin()),
            });
        }
    }
}

/// The ServiceAccount a pod without `serviceAccountName` runs as.
const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// The ServiceAccount a pull of `pullset` runs as, for the credential providers in
/// service-account token mode: the PullSet's `serviceAccountName` (else `default`) in its
/// namespace, whether or not its own `imagePullSecrets` make the pod rule read it.
pub fn pod_service_account(inventory: &Inventory, pullset: &ValidPullSet) -> PodServiceAccount {
    let key = ObjectKey::new(
        pullset.key.namespace.clone(),
        pullset.service_account().to_string(),
    );
    if let Some(sa) = inventory.service_accounts.get(&key) {
        return PodServiceAccount::Found(sa.clone());
    }
    let why = match inventory.forbidden.get(&key) {
        Some(why) => format!("cannot be read: {why}"),
        None => "does not exist".to_string(),
    };
    PodServiceAccount::Unavailable { key, why }
}

/// The pod rule: the set's own secrets if any, else its ServiceAccount's. A missing `default`
/// ServiceAccount, named or not, counts as an empty one (the API server creates it in every
/// namespace; a manifest directory may leave it out); any other missing ServiceAccount is a
/// `ServiceAccountNotFound` finding.
pub fn pull_secret_names(
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
        None if pullset.service_account() != DEFAULT_SERVICE_ACCOUNT => {
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

#[cfg(test)]
mod tests;
