//! The blast-radius report, decided from plain objects: which pull secrets each namespace holds,
//! which registries they cover, who uses them, and what is wrong with them. No kube type and no
//! I/O: the adapter (`audit::cluster`) lists the objects, this module judges them, `audit::render`
//! prints the result.
//!
//! A Secret is audited when its type is `kubernetes.io/dockerconfigjson` or `kubernetes.io/dockercfg`,
//! when it holds a `.dockerconfigjson` / `.dockercfg` key whatever its type, or when a ServiceAccount,
//! a PullSet or a workload names it as an image pull secret. Its users are the ServiceAccounts
//! whose `imagePullSecrets` name it, the PullSets whose credentials it is by the pod rule (their own
//! `imagePullSecrets`, else their ServiceAccount's — [`pull_secret_names`], as the agent resolves),
//! and the [`Workload`]s (pod templates, running pods) that name it, or whose ServiceAccount
//! gives it to them by the pod rule (their own `imagePullSecrets` empty) where it covers one of
//! their images. A workload's images are every image its pod spec pulls with its pull secrets,
//! image volumes (KEP-4639) included (`model::pod_images`); each workload user lists those the
//! Secret covers (the registries it is used for). `Unused` is judged only when
//! every kind of workload could be listed. A Secret's Docker config is read with the kubelet's own
//! rules (`decide::credentials::pull_secret`), also where it sits in a Secret of another type.
//!
//! No credential value ever reaches the report: registry entries carry a keyed fingerprint (see
//! `audit::fingerprint`) and an expiry, and every message names secrets and keys only.

use super::fingerprint::FingerprintKey;
use crate::decide::credentials::dockerconfig::{DockerConfigEntry, DockerConfigFormat};
use crate::decide::credentials::pull_secret::{
    KeyRead, kubelet_format, read_data_key, read_pull_secret,
};
use crate::decide::credentials::shown_key::{shown_key, stripped_warning};
use crate::decide::credentials::{expiry, keyring, pull_secret_names};
use crate::model::image_ref::ImageRef;
use crate::model::inventory::{
    Inventory, KEY_DOCKERCFG, KEY_DOCKERCONFIGJSON, ObjectKey, SecretObject, TYPE_DOCKERCFG,
    TYPE_DOCKERCONFIGJSON,
};
use crate::model::pod_images::PodImageUse;
use crate::model::time::rfc3339_seconds;
use crate::model::verdict::Verdict;
use secrecy::ExposeSecret as _;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, SystemTime};

/// What the adapter read from the cluster.
#[derive(Clone, Debug, Default)]
pub struct AuditInput {
    /// The audited Secrets (see the module docs), every ServiceAccount, every valid PullSet.
    pub inventory: Inventory,
    /// When each Secret's data last changed, as far as its metadata tells.
    pub data_changed: BTreeMap<ObjectKey, DataChanged>,
    /// Objects the adapter skipped, and why (an invalid PullSet, an unreadable Secret).
    pub notes: Vec<String>,
    /// Workloads that name pull secrets themselves: controllers' pod templates and running pods
    /// (grouped by their controller).
    pub workloads: Vec<Workload>,
    /// Whether every kind of workload could be listed: `Unused` is judged only then.
    pub workloads_complete: bool,
}

/// A workload naming pull secrets in its own pod spec (`spec.imagePullSecrets`, which the
/// ServiceAccount admission plugin also fills in from the pod's ServiceAccount).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    /// `Deployment/web`, `CronJob/nightly`, `Pod/debug`; running pods: their controller's
    /// `ReplicaSet/web-5d9f7c` (or the pod itself when it has none).
    pub name: String,
    /// Running pods counted under this name (`None`: a controller's pod template).
    pub pods: Option<usize>,
    pub image_pull_secrets: BTreeSet<String>,
    /// `spec.serviceAccountName` (`default` when unset): the pod rule's fallback when
    /// `image_pull_secrets` is empty.
    pub service_account: String,
    /// Every image the pod spec pulls with those secrets, image volumes included
    /// (`model::pod_images`); for running pods, the union over the pods.
    pub images: BTreeSet<PodImageUse>,
}

/// When a Secret's data was last written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataChanged {
    pub at: SystemTime,
    pub basis: AgeBasis,
}

/// Where [`DataChanged`] comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AgeBasis {
    /// The latest `metadata.managedFields[].time` of a manager owning `data` or `stringData`.
    #[serde(rename = "managedFields")]
    ManagedFields,
    /// `metadata.creationTimestamp`: no managed-fields entry owns the data.
    #[serde(rename = "creationTimestamp")]
    CreationTimestamp,
}

impl AgeBasis {
    pub fn as_str(self) -> &'static str {
        match self {
            AgeBasis::ManagedFields => "managedFields",
            AgeBasis::CreationTimestamp => "creationTimestamp",
        }
    }
}

/// The thresholds and the clock.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub now: SystemTime,
    /// `ExpiresSoon` when a credential expires within this.
    pub expiry_warning: Duration,
    /// `Old` when a Secret's data has not changed for this long.
    pub max_age: Duration,
}

/// What is wrong, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum FindingKind {
    /// A credential's own expiry (JWT `exp`, ECR `expiration`) has passed.
    Expired,
    /// A Secret or ServiceAccount is referenced but does not exist.
    Missing,
    /// A Docker config the kubelet cannot read (or reads only in part).
    Malformed,
    /// A legacy `kubernetes.io/dockercfg`, a Docker config in a Secret of another type, or a
    /// referenced Secret that holds no Docker config.
    WrongType,
    /// A credential expires within `--expiry-warning`.
    ExpiresSoon,
    /// The same credential in several namespaces.
    Reused,
    /// The Secret's data has not changed for `--max-age`.
    Old,
    /// A pull secret no ServiceAccount and no PullSet uses.
    Unused,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Expired => "Expired",
            FindingKind::Missing => "Missing",
            FindingKind::Malformed => "Malformed",
            FindingKind::WrongType => "WrongType",
            FindingKind::ExpiresSoon => "ExpiresSoon",
            FindingKind::Reused => "Reused",
            FindingKind::Old => "Old",
            FindingKind::Unused => "Unused",
        }
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding, naming objects and keys, never a value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// The objects concerned: `Secret ns/name`, `ServiceAccount ns/name`, `PullSet ns/name`.
    pub objects: Vec<String>,
    /// Their namespaces, sorted.
    pub namespaces: Vec<String>,
    /// The registry (normalised key) when the finding is about one registry entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// `Reused`: the fingerprint every copy shares.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    pub message: String,
    /// What to do about it, in one line.
    pub hint: String,
}

/// Who uses a pull secret.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct User {
    pub kind: UserKind,
    pub name: String,
    /// For a PullSet: `imagePullSecrets` (its own list) or `serviceAccount NAME` (the pod rule's
    /// fallback). For a workload: its running pods (`2 pods`) and, when the pod rule gave it the
    /// Secret through its ServiceAccount, `serviceAccount NAME`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// For a workload: its images (containers' and image volumes') whose registry the Secret
    /// covers, as `volume models registry.example/team/models:v3`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum UserKind {
    ServiceAccount,
    PullSet,
    /// A pod template or running pods naming the Secret in their own `imagePullSecrets`.
    Workload,
}

impl fmt::Display for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            UserKind::ServiceAccount => "ServiceAccount",
            UserKind::PullSet => "PullSet",
            // The name carries its kind: `Deployment/web`.
            UserKind::Workload => {
                return match &self.via {
                    Some(via) => write!(f, "{} ({via})", self.name),
                    None => f.write_str(&self.name),
                };
            }
        };
        match &self.via {
            Some(via) => write!(f, "{kind} {} (via {via})", self.name),
            None => write!(f, "{kind} {}", self.name),
        }
    }
}

/// The whole report (`--json` prints it as is).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// RFC 3339.
    pub generated_at: String,
    /// How to read the fingerprints: with which key, over what.
    pub fingerprints: String,
    /// The fingerprint key was drawn for this run: fingerprints compare within this report only.
    pub fingerprint_key_per_run: bool,
    pub expiry_warning: String,
    pub max_age: String,
    pub namespaces: Vec<NamespaceReport>,
    pub findings: Vec<Finding>,
    /// Findings per kind.
    pub counts: BTreeMap<FindingKind, usize>,
    /// Objects skipped, and why.
    pub notes: Vec<String>,
}

/// What a `Reused` fingerprint is computed over; [`FingerprintKey::note`] says how to compare them.
pub const FINGERPRINT_FIELDS: &str = "over (registry, username, password, identity token)";

#[derive(Clone, Debug, Serialize)]
pub struct NamespaceReport {
    pub namespace: String,
    pub secrets: Vec<SecretReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SecretReport {
    pub name: String,
    /// `None` when the Secret is referenced but missing.
    #[serde(rename = "type")]
    pub type_: Option<String>,
    /// The data key the registries were read from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_key: Option<String>,
    pub registries: Vec<RegistryEntry>,
    pub users: Vec<User>,
    /// When the data last changed; `None` when the metadata does not say.
    pub data_changed: Option<DataChangedReport>,
    /// The kinds of the findings that concern this Secret.
    pub findings: Vec<FindingKind>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DataChangedReport {
    pub at: String,
    pub basis: AgeBasis,
}

/// One registry entry of a pull secret.
#[derive(Clone, Debug, Serialize)]
pub struct RegistryEntry {
    /// The key as written (`https://index.docker.io/v1/`).
    pub key: String,
    /// The key as the kubelet's keyring reads it (`index.docker.io`); `None`: the kubelet ignores
    /// the key (not a valid URL).
    pub registry: Option<String>,
    pub username: String,
    /// Keyed fingerprint; `None` for an entry without any credential.
    pub fingerprint: Option<String>,
    /// RFC 3339, when the credential carries its own expiry.
    pub expires_at: Option<String>,
}

/// Who names each Secret (existing or not), and the findings of references that lead nowhere
/// (a PullSet's missing ServiceAccount).
pub fn users(
    inventory: &Inventory,
    workloads: &[Workload],
) -> (BTreeMap<ObjectKey, Vec<User>>, Vec<Finding>) {
    let mut users: BTreeMap<ObjectKey, BTreeSet<User>> = BTreeMap::new();
    let mut findings = Vec::new();
    for w in workloads {
        // The pod rule: the pod's own `imagePullSecrets`, else its ServiceAccount's.
        let (names, through): (Vec<&String>, Option<&str>) = if w.image_pull_secrets.is_empty() {
            let sa = ObjectKey::new(w.namespace.clone(), w.service_account.clone());
            let names = inventory
                .service_accounts
                .get(&sa)
                .map(|sa| sa.image_pull_secrets.iter().collect())
                .unwrap_or_default();
            (names, Some(w.service_account.as_str()))
        } else {
            (w.image_pull_secrets.iter().collect(), None)
        };
        for name in names {
            let key = ObjectKey::new(w.namespace.clone(), name.clone());
            let images = covered_images(inventory.secrets.get(&key), &w.images);
            // Through its ServiceAccount, a workload counts where the Secret serves one of its
            // images (the ServiceAccount itself is a user anyway): not every pod of the namespace.
            if through.is_some() && images.is_empty() {
                continue;
            }
            let via: Vec<String> = w
                .pods
                .map(|n| match n {
                    1 => "1 pod".to_string(),
                    n => format!("{n} pods"),
                })
                .into_iter()
                .chain(through.map(|sa| format!("serviceAccount {sa}")))
                .collect();
            users.entry(key).or_default().insert(User {
                kind: UserKind::Workload,
                name: w.name.clone(),
                via: (!via.is_empty()).then(|| via.join(", ")),
                images,
            });
        }
    }
    for sa in inventory.service_accounts.values() {
        for name in &sa.image_pull_secrets {
            users
                .entry(ObjectKey::new(sa.key.namespace.clone(), name.clone()))
                .or_default()
                .insert(User {
                    kind: UserKind::ServiceAccount,
                    name: sa.key.name.clone(),
                    via: None,
                    images: Vec::new(),
                });
        }
    }
    for set in inventory.pullsets.values() {
        let mut resolution = Vec::new();
        let names = pull_secret_names(inventory, set, &mut resolution);
        let via = if set.spec.image_pull_secrets.is_empty() {
            format!("serviceAccount {}", set.service_account())
        } else {
            "imagePullSecrets".to_string()
        };
        for name in names {
            users
                .entry(ObjectKey::new(set.key.namespace.clone(), name))
                .or_default()
                .insert(User {
                    kind: UserKind::PullSet,
                    name: set.key.name.clone(),
                    via: Some(via.clone()),
                    images: Vec::new(),
                });
        }
        for f in resolution {
            if f.verdict == Verdict::ServiceAccountNotFound {
                let sa = ObjectKey::new(set.key.namespace.clone(), set.service_account());
                findings.push(Finding {
                    kind: FindingKind::Missing,
                    objects: vec![format!("ServiceAccount {sa}"), format!("PullSet {}", set.key)],
                    namespaces: vec![set.key.namespace.clone()],
                    registry: None,
                    fingerprint: None,
                    message: f.message,
                    hint: "create the ServiceAccount (with the pull secrets the PullSet's pods use), or fix spec.serviceAccountName".into(),
                });
            }
        }
    }
    let users = users
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().collect()))
        .collect();
    (users, findings)
}

/// The workload's images whose registry `secret`'s Docker config covers, by the kubelet's keyring
/// (read as the kubelet reads the Secret: a type it ignores, or data it cannot read, covers none).
fn covered_images(secret: Option<&SecretObject>, images: &BTreeSet<PodImageUse>) -> Vec<String> {
    let Some((_, KeyRead::Entries(entries))) = secret.and_then(read_pull_secret) else {
        return Vec::new();
    };
    let mut ring = keyring::Keyring::default();
    for entry in &entries {
        ring.add(&entry.key, ());
    }
    images
        .iter()
        .filter(|u| ImageRef::parse(&u.image).is_ok_and(|r| !ring.lookup(&r.name()).is_empty()))
        .map(|u| format!("{} {}", u.used_by, u.image))
        .collect()
}

/// The Secrets a ServiceAccount, PullSet or workload names: the adapter keeps these whatever
/// their type.
pub fn referenced_secrets(inventory: &Inventory, workloads: &[Workload]) -> BTreeSet<ObjectKey> {
    users(inventory, workloads).0.into_keys().collect()
}

/// Whether a Secret of this type with these data keys is audited.
pub fn is_audited<'a>(
    secret_type: &str,
    mut data_keys: impl Iterator<Item = &'a str>,
    referenced: bool,
) -> bool {
    referenced
        || secret_type == TYPE_DOCKERCONFIGJSON
        || secret_type == TYPE_DOCKERCFG
        || data_keys.any(|k| k == KEY_DOCKERCONFIGJSON || k == KEY_DOCKERCFG)
}

/// How a Secret holds (or fails to hold) a Docker config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// A type the kubelet reads; `legacy` for `kubernetes.io/dockercfg`.
    Typed {
        format: DockerConfigFormat,
        data_key: &'static str,
        legacy: bool,
    },
    /// A Docker config key in a Secret of another type: the kubelet ignores it.
    Misplaced {
        format: DockerConfigFormat,
        data_key: &'static str,
    },
    /// Neither: only here because something names it.
    NoDockerConfig,
}

fn shape(secret: &SecretObject) -> Shape {
    if let Some((format, data_key)) = kubelet_format(&secret.type_) {
        return Shape::Typed {
            format,
            data_key,
            legacy: secret.type_ == TYPE_DOCKERCFG,
        };
    }
    if secret.data.contains_key(KEY_DOCKERCONFIGJSON) {
        Shape::Misplaced {
            format: DockerConfigFormat::ConfigJson,
            data_key: KEY_DOCKERCONFIGJSON,
        }
    } else if secret.data.contains_key(KEY_DOCKERCFG) {
        Shape::Misplaced {
            format: DockerConfigFormat::Cfg,
            data_key: KEY_DOCKERCFG,
        }
    } else {
        Shape::NoDockerConfig
    }
}

const HINT_MIGRATE: &str = "recreate it as type kubernetes.io/dockerconfigjson with a .dockerconfigjson key (`kubectl create secret docker-registry`)";

/// `3d`, `5h`, `12m`: the largest whole unit.
fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3_600 => format!("{}h", s / 3_600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// As the flags write durations: whole hours as `2160h`, anything else in humantime's words.
fn as_flag(d: Duration) -> String {
    if d.subsec_nanos() == 0 && d.as_secs().is_multiple_of(3_600) {
        format!("{}h", d.as_secs() / 3_600)
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// One registry entry, judged.
struct Judged {
    entry: RegistryEntry,
    /// The fingerprint, for reuse across namespaces.
    fingerprint: Option<String>,
}

fn judge_entry(
    secret: &ObjectKey,
    entry: &DockerConfigEntry,
    options: &Options,
    key: &FingerprintKey,
    findings: &mut Vec<Finding>,
) -> Judged {
    let registry = keyring::normalize_key(&entry.key);
    let object = format!("Secret {secret}");
    // Shown as `shown_key` shows keys: no userinfo, nothing of an unparseable key.
    let shown = shown_key(&entry.key);
    if shown.stripped {
        findings.push(Finding {
            kind: FindingKind::Malformed,
            objects: vec![object.clone()],
            namespaces: vec![secret.namespace.clone()],
            registry: registry.clone(),
            fingerprint: None,
            message: stripped_warning(&shown, &object),
            hint: "write the key as host[:port][/path]; credentials belong in `auth` (and rotate one that was written in the key)".into(),
        });
    }
    if registry.is_none() {
        findings.push(Finding {
            kind: FindingKind::Malformed,
            objects: vec![object.clone()],
            namespaces: vec![secret.namespace.clone()],
            registry: None,
            fingerprint: None,
            message: format!(
                "registry key `{}` in {object} is not a valid URL; the kubelet ignores it",
                shown.text
            ),
            hint: "write the key as host[:port][/path] (`registry.example.com:5000`)".into(),
        });
    }
    let password = entry.password.expose_secret();
    let token = entry.identity_token.as_ref().map(|t| t.expose_secret());
    let fingerprint = if entry.username.is_empty() && password.is_empty() && token.is_none() {
        None
    } else {
        let registry = registry.as_deref().unwrap_or(&entry.key);
        Some(key.fingerprint(&[
            registry.as_bytes(),
            entry.username.as_bytes(),
            password.as_bytes(),
            token.unwrap_or("").as_bytes(),
        ]))
    };
    let expires_at = expiry::expires_at([password].into_iter().chain(token));
    if let Some(at) = expires_at {
        let judged = match at.duration_since(options.now) {
            Err(_) | Ok(Duration::ZERO) => Some((
                FindingKind::Expired,
                format!(
                    "the credential for `{}` in {object} expired at {} ({} ago)",
                    shown.text,
                    rfc3339_seconds(at),
                    short(options.now.duration_since(at).unwrap_or_default())
                ),
                "every pull with it fails now: refresh the token (or let a credential provider or refresher own this Secret)",
            )),
            Ok(left) if left <= options.expiry_warning => Some((
                FindingKind::ExpiresSoon,
                format!(
                    "the credential for `{}` in {object} expires at {} (in {})",
                    shown.text,
                    rfc3339_seconds(at),
                    short(left)
                ),
                "rotate it before it expires, or make sure whatever refreshes it is running",
            )),
            Ok(_) => None,
        };
        if let Some((kind, message, hint)) = judged {
            findings.push(Finding {
                kind,
                objects: vec![object.clone()],
                namespaces: vec![secret.namespace.clone()],
                registry: Some(registry.clone().unwrap_or_else(|| shown.text.clone())),
                fingerprint: None,
                message,
                hint: hint.into(),
            });
        }
    }
    Judged {
        entry: RegistryEntry {
            key: shown.text.clone(),
            registry,
            username: entry.username.clone(),
            fingerprint: fingerprint.clone(),
            expires_at: expires_at.map(rfc3339_seconds),
        },
        fingerprint,
    }
}

fn finding(kind: FindingKind, secret: &ObjectKey, message: String, hint: &str) -> Finding {
    Finding {
        kind,
        objects: vec![format!("Secret {secret}")],
        namespaces: vec![secret.namespace.clone()],
        registry: None,
        fingerprint: None,
        message,
        hint: hint.to_string(),
    }
}

fn list_users(users: &[User]) -> String {
    users
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report of everything in `input`. `key` fingerprints the credentials; `options` holds the
/// clock and the thresholds.
pub fn build(input: &AuditInput, options: &Options, key: &FingerprintKey) -> Report {
    let inventory = &input.inventory;
    let (users, mut findings) = users(inventory, &input.workloads);
    let mut kinds: BTreeMap<ObjectKey, BTreeSet<FindingKind>> = BTreeMap::new();
    let mut rows: BTreeMap<String, Vec<SecretReport>> = BTreeMap::new();
    // fingerprint → every copy: (secret, key as written, registry).
    let mut copies: BTreeMap<String, Vec<(ObjectKey, String, String)>> = BTreeMap::new();
    let no_users = Vec::new();

    for (k, secret) in &inventory.secrets {
        let secret_users = users.get(k).unwrap_or(&no_users);
        let object = format!("Secret {k}");
        let type_ = secret.type_.as_str();
        let mut own: Vec<Finding> = Vec::new();
        let mut registries = Vec::new();
        let shape = shape(secret);
        let read = match shape {
            Shape::NoDockerConfig => {
                own.push(finding(
                    FindingKind::WrongType,
                    k,
                    format!(
                        "{object} of type `{type_}` is named as an image pull secret by {}, but holds no `{KEY_DOCKERCONFIGJSON}`; the kubelet ignores it",
                        list_users(secret_users)
                    ),
                    "point the reference at a kubernetes.io/dockerconfigjson Secret, or recreate this one as that type",
                ));
                None
            }
            Shape::Typed {
                format,
                data_key,
                legacy,
            } => {
                if legacy {
                    own.push(finding(
                        FindingKind::WrongType,
                        k,
                        format!(
                            "{object} is a legacy `{TYPE_DOCKERCFG}` Secret (the pre-1.x `.dockercfg` format)"
                        ),
                        HINT_MIGRATE,
                    ));
                }
                Some((format, data_key))
            }
            Shape::Misplaced { format, data_key } => {
                own.push(finding(
                    FindingKind::WrongType,
                    k,
                    format!(
                        "{object} holds `{data_key}` but its type is `{type_}`: the kubelet ignores it{}",
                        if secret_users.is_empty() {
                            String::new()
                        } else {
                            format!(" although {} names it", list_users(secret_users))
                        }
                    ),
                    HINT_MIGRATE,
                ));
                Some((format, data_key))
            }
        };
        if let Some((format, data_key)) = read {
            match read_data_key(secret, format, data_key) {
                KeyRead::Absent => own.push(finding(
                    FindingKind::Malformed,
                    k,
                    format!(
                        "{object} of type `{type_}` has no (or an empty) `{data_key}` key; the kubelet ignores it"
                    ),
                    "rewrite it with `kubectl create secret docker-registry`",
                )),
                KeyRead::Unparsable(e) => own.push(finding(
                        FindingKind::Malformed,
                        k,
                        format!(
                            "{object} key `{data_key}`: {e}; the kubelet fails every pull that uses it"
                        ),
                        "rewrite it with `kubectl create secret docker-registry`",
                    )),
                KeyRead::Entries(entries) if entries.is_empty() => own.push(finding(
                        FindingKind::Malformed,
                        k,
                        format!("{object} covers no registry (`{data_key}` has no entry)"),
                        "add the registry's credential, or delete the Secret",
                    )),
                KeyRead::Entries(entries) => {
                        for entry in &entries {
                            let judged = judge_entry(k, entry, options, key, &mut own);
                            if let Some(fp) = judged.fingerprint {
                                copies.entry(fp).or_default().push((
                                    k.clone(),
                                    judged.entry.key.clone(),
                                    judged
                                        .entry
                                        .registry
                                        .clone()
                                        .unwrap_or_else(|| judged.entry.key.clone()),
                                ));
                            }
                            registries.push(judged.entry);
                        }
                    }
            }
            if secret_users.is_empty() && input.workloads_complete {
                own.push(finding(
                    FindingKind::Unused,
                    k,
                    format!(
                        "{object} is named by no ServiceAccount, no PullSet, no workload's pod template and no pod"
                    ),
                    "delete it: an unused credential only widens the blast radius",
                ));
            }
        }
        let changed = input.data_changed.get(k);
        if let (Some(changed), Some(_)) = (changed, read) {
            let age = options.now.duration_since(changed.at).unwrap_or_default();
            if age >= options.max_age {
                own.push(finding(
                    FindingKind::Old,
                    k,
                    format!(
                        "{object}: data unchanged for {} (since {}, per {})",
                        short(age),
                        rfc3339_seconds(changed.at),
                        changed.basis.as_str()
                    ),
                    "rotate the credential at the registry and update the Secret",
                ));
            }
        }
        kinds
            .entry(k.clone())
            .or_default()
            .extend(own.iter().map(|f| f.kind));
        findings.extend(own);
        rows.entry(k.namespace.clone())
            .or_default()
            .push(SecretReport {
                name: k.name.clone(),
                type_: Some(secret.type_.clone()),
                data_key: read.map(|(_, data_key)| data_key.to_string()),
                registries,
                users: secret_users.clone(),
                data_changed: changed.map(|c| DataChangedReport {
                    at: rfc3339_seconds(c.at),
                    basis: c.basis,
                }),
                findings: Vec::new(),
            });
    }

    for (k, secret_users) in &users {
        if inventory.secrets.contains_key(k) {
            continue;
        }
        findings.push(finding(
            FindingKind::Missing,
            k,
            format!(
                "Secret {k} does not exist; named by {}",
                list_users(secret_users)
            ),
            "create it in that namespace, or remove the reference (pulls get no credential from it)",
        ));
        kinds
            .entry(k.clone())
            .or_default()
            .insert(FindingKind::Missing);
        rows.entry(k.namespace.clone())
            .or_default()
            .push(SecretReport {
                name: k.name.clone(),
                type_: None,
                data_key: None,
                registries: Vec::new(),
                users: secret_users.clone(),
                data_changed: None,
                findings: Vec::new(),
            });
    }

    for (fp, copies) in copies {
        let namespaces: BTreeSet<&str> =
            copies.iter().map(|(k, ..)| k.namespace.as_str()).collect();
        if namespaces.len() < 2 {
            continue;
        }
        let registry = copies[0].2.clone();
        let objects: Vec<String> = copies
            .iter()
            .map(|(k, key, _)| format!("Secret {k} key {key}"))
            .collect();
        for (k, ..) in &copies {
            kinds
                .entry(k.clone())
                .or_default()
                .insert(FindingKind::Reused);
        }
        findings.push(Finding {
            kind: FindingKind::Reused,
            message: format!(
                "the same credential for `{registry}` is in {} namespaces: {}",
                namespaces.len(),
                objects.join(", ")
            ),
            objects,
            namespaces: namespaces.into_iter().map(String::from).collect(),
            registry: Some(registry),
            fingerprint: Some(fp),
            hint: "a leak in any of these namespaces exposes all of them: give each namespace its own credential (a robot account per team), then rotate this one".into(),
        });
    }

    findings.sort_by(|a, b| {
        (a.kind, &a.namespaces, &a.objects, &a.message).cmp(&(
            b.kind,
            &b.namespaces,
            &b.objects,
            &b.message,
        ))
    });
    let mut counts = BTreeMap::new();
    for f in &findings {
        *counts.entry(f.kind).or_insert(0) += 1;
    }
    let namespaces = rows
        .into_iter()
        .map(|(namespace, mut secrets)| {
            secrets.sort_by(|a, b| a.name.cmp(&b.name));
            for s in &mut secrets {
                let k = ObjectKey::new(namespace.clone(), s.name.clone());
                s.findings = kinds.get(&k).into_iter().flatten().copied().collect();
            }
            NamespaceReport { namespace, secrets }
        })
        .collect();
    Report {
        generated_at: rfc3339_seconds(options.now),
        fingerprints: format!("{}; {FINGERPRINT_FIELDS}", key.note()),
        fingerprint_key_per_run: key.is_per_run(),
        expiry_warning: as_flag(options.expiry_warning),
        max_age: as_flag(options.max_age),
        namespaces,
        findings,
        counts,
        notes: input.notes.clone(),
    }
}

#[cfg(test)]
mod tests;
