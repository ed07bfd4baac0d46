//! `pullgate auth …`: credential tools for people on call, and the node-credential wiring shared
//! with `pullgate run`.

use crate::adapters::credential_plugin::{CredentialProviders, PluginError, load_config};
use crate::adapters::files::manifests::{ManifestError, load_dir};
use crate::cli::{CredentialSelection, NodeCredentialArgs, ResolveArgs};
use crate::decide::credentials::{
    CredentialResolver as _, KubeletResolver, NodeDockerConfig, Resolution,
    resolve_docker_config_files,
};
use crate::model::image_ref::{ImageRef, ImageRefError};
use crate::model::inventory::ObjectKey;
use crate::model::pullset::{self, ImageEntry, PullSetSpec};
use secrecy::ExposeSecret as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Image(#[from] ImageRefError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Manifests(#[from] ManifestError),
    #[error(
        "--image-credential-provider-bin-dir is required with --image-credential-provider-config"
    )]
    NoBinDir,
    #[error("PullSet {0} is not in the manifests (or is invalid: see `pullgate run --once`)")]
    PullSetNotFound(ObjectKey),
    #[error("--namespace is required with --manifests")]
    NoNamespace,
    #[error("{0}")]
    Invalid(String),
}

/// The kubelet-compatible resolver with the node's own credentials, as the flags configure them.
pub fn build_resolver(args: &NodeCredentialArgs) -> Result<KubeletResolver, AuthError> {
    let NodeCredentialArgs {
        node_docker_config,
        image_credential_provider_config,
        image_credential_provider_bin_dir,
        credential_provider_timeout,
    } = args;
    let plugins = match image_credential_provider_config {
        Some(config) => {
            let bin_dir = image_credential_provider_bin_dir
                .as_ref()
                .ok_or(AuthError::NoBinDir)?;
            let providers = load_config(config)?;
            Some(Arc::new(CredentialProviders::new(
                providers,
                bin_dir,
                **credential_provider_timeout,
            )?))
        }
        None => None,
    };
    Ok(KubeletResolver::new(
        node_docker_config.clone().map(NodeDockerConfig::new),
        plugins,
    ))
}

#[derive(Serialize)]
struct Report {
    image: String,
    registry: String,
    repository: String,
    /// In the order the kubelet would try them. Empty: an anonymous pull.
    candidates: Vec<CandidateReport>,
    /// What resolution found on the way (missing secrets, near misses…).
    verdicts: Vec<VerdictReport>,
    /// The kubelet would fail the pull before trying anything.
    blocked: bool,
}

#[derive(Serialize)]
struct CandidateReport {
    source: String,
    /// The key as written in its source.
    key: String,
    username: String,
    /// Hex sha256 of the password: compare two credentials without seeing either.
    password_sha256: String,
    /// RFC 3339, when the credential carries its own expiry; null otherwise.
    expires_at: Option<String>,
}

#[derive(Serialize)]
struct VerdictReport {
    verdict: crate::model::verdict::Verdict,
    message: String,
}

/// `pullgate auth resolve`: prints the report; `Ok(true)` when the kubelet would have at least one
/// credential to try and nothing blocks the pull.
pub async fn resolve(args: ResolveArgs) -> Result<bool, AuthError> {
    let ResolveArgs {
        image,
        selection,
        node_credentials,
        json,
    } = args;
    let image = ImageRef::parse(&image)?;
    let resolver = build_resolver(&node_credentials)?;
    let resolution = resolve_selection(&selection, &resolver, &image).await?;
    let report = report(&image, &resolution);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", table(&report));
    }
    Ok(!report.blocked && !report.candidates.is_empty())
}

/// The resolution for `image` from the selected source of credentials.
pub async fn resolve_selection(
    selection: &CredentialSelection,
    resolver: &KubeletResolver,
    image: &ImageRef,
) -> Result<Resolution, AuthError> {
    let CredentialSelection {
        docker_configs,
        manifests,
        namespace,
        service_account,
        pullset,
    } = selection;
    let (namespace, service_account, pullset) =
        (namespace.clone(), service_account.clone(), pullset.clone());
    Ok(match manifests {
        Some(dir) => {
            let namespace = namespace.ok_or(AuthError::NoNamespace)?;
            let loaded = load_dir(dir)?;
            let set = match pullset {
                Some(name) => {
                    let key = ObjectKey::new(namespace, name);
                    loaded
                        .inventory
                        .pullsets
                        .get(&key)
                        .cloned()
                        .ok_or(AuthError::PullSetNotFound(key))?
                }
                None => {
                    // A pod with this ServiceAccount and no imagePullSecrets of its own.
                    let spec = PullSetSpec {
                        service_account_name: service_account,
                        image_pull_secrets: Vec::new(),
                        node_selector: Default::default(),
                        images: vec![ImageEntry {
                            image: image.to_string(),
                        }],
                        pre_pull: false,
                        gate: false,
                        canary: None,
                    };
                    pullset::validate(ObjectKey::new(namespace, "auth-resolve"), spec).map_err(
                        |errors| {
                            AuthError::Invalid(
                                errors
                                    .iter()
                                    .map(ToString::to_string)
                                    .collect::<Vec<_>>()
                                    .join("; "),
                            )
                        },
                    )?
                }
            };
            resolver.resolve(&loaded.inventory, &set, image).await
        }
        None => resolve_docker_config_files(docker_configs, resolver, image).await,
    })
}

fn report(image: &ImageRef, resolution: &Resolution) -> Report {
    Report {
        image: image.to_string(),
        registry: image.registry.clone(),
        repository: image.name(),
        candidates: resolution
            .candidates
            .iter()
            .map(|c| CandidateReport {
                source: c.source.origin(),
                key: c.source.key().to_string(),
                username: c.username.clone(),
                password_sha256: hex::encode(Sha256::digest(c.password.expose_secret().as_bytes())),
                expires_at: c
                    .expires_at
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            })
            .collect(),
        verdicts: resolution
            .findings
            .iter()
            .map(|f| VerdictReport {
                verdict: f.verdict,
                message: f.message.clone(),
            })
            .collect(),
        blocked: resolution.blocked.is_some(),
    }
}

fn table(r: &Report) -> String {
    let mut out = format!(
        "image       {}\nregistry    {}\nrepository  {}\n\n",
        r.image, r.registry, r.repository
    );
    if r.blocked {
        out.push_str(
            "the kubelet would fail this pull before trying any credential (see below)\n\n",
        );
    } else if r.candidates.is_empty() {
        out.push_str("no credential matches: the kubelet pulls anonymously\n\n");
    } else {
        let rows: Vec<[String; 6]> = r
            .candidates
            .iter()
            .enumerate()
            .map(|(i, c)| {
                [
                    (i + 1).to_string(),
                    c.source.clone(),
                    c.key.clone(),
                    c.username.clone(),
                    c.password_sha256[..12].to_string(),
                    c.expires_at.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        let header = [
            "#",
            "source",
            "key",
            "username",
            "password sha256",
            "expires",
        ]
        .map(String::from);
        let widths: Vec<usize> = (0..6)
            .map(|i| {
                rows.iter()
                    .chain([&header])
                    .map(|r| r[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in [&header].into_iter().chain(rows.iter()) {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out.push('\n');
    }
    for v in &r.verdicts {
        out.push_str(&format!("{:<24}{}\n", v.verdict.as_str(), v.message));
    }
    out
}
