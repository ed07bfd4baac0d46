//! The objects pullgate acts on, as plain library types: what every source (the manifest directory
//! today, the API server later) produces, and what the decision modules read.

use crate::model::pullset::ValidPullSet;
use secrecy::SecretSlice;
use std::collections::BTreeMap;
use std::fmt;

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Secret types the kubelet reads pull credentials from.
pub const TYPE_DOCKERCONFIGJSON: &str = "kubernetes.io/dockerconfigjson";
pub const TYPE_DOCKERCFG: &str = "kubernetes.io/dockercfg";
pub const KEY_DOCKERCONFIGJSON: &str = ".dockerconfigjson";
pub const KEY_DOCKERCFG: &str = ".dockercfg";

/// A Secret: its type and data. The data stays wrapped: `Debug` prints no byte of it.
#[derive(Clone, Debug)]
pub struct SecretObject {
    pub key: ObjectKey,
    pub type_: String,
    pub data: BTreeMap<String, SecretSlice<u8>>,
}

/// A ServiceAccount: only what credential resolution needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceAccountObject {
    pub key: ObjectKey,
    pub image_pull_secrets: Vec<String>,
    /// `metadata.uid`; empty when the source has none (a manifest directory may leave it out).
    /// A service-account-token credential provider's cache key and TokenRequest carry it.
    pub uid: String,
    /// `metadata.annotations`: a service-account-token credential provider is passed the ones
    /// its configuration names (KEP-4412).
    pub annotations: BTreeMap<String, String>,
}

/// Everything a source currently knows.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub pullsets: BTreeMap<ObjectKey, ValidPullSet>,
    pub secrets: BTreeMap<ObjectKey, SecretObject>,
    pub service_accounts: BTreeMap<ObjectKey, ServiceAccountObject>,
    /// Objects the source may not read (RBAC), with why: resolution reports `Forbidden`.
    pub forbidden: BTreeMap<ObjectKey, String>,
}

/// A Kubernetes Secret as the library type: `stringData` merged over `data`, as the API server
/// does on write; the bytes wrapped at once.
pub fn secret_object(key: ObjectKey, secret: k8s_openapi::api::core::v1::Secret) -> SecretObject {
    let type_ = secret.type_.unwrap_or_else(|| "Opaque".to_string());
    let mut data: BTreeMap<String, secrecy::SecretSlice<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0.into()))
        .collect();
    for (k, v) in secret.string_data.unwrap_or_default() {
        data.insert(k, v.into_bytes().into());
    }
    SecretObject { key, type_, data }
}

/// A Kubernetes ServiceAccount as the library type: its pull secrets' names, in order, its UID
/// and its annotations.
pub fn service_account_object(
    key: ObjectKey,
    sa: k8s_openapi::api::core::v1::ServiceAccount,
) -> ServiceAccountObject {
    let uid = sa.metadata.uid.unwrap_or_default();
    let annotations = sa.metadata.annotations.unwrap_or_default();
    let image_pull_secrets = sa
        .image_pull_secrets
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .filter(|n| !n.is_empty())
        .collect();
    ServiceAccountObject {
        key,
        image_pull_secrets,
        uid,
        annotations,
    }
}
