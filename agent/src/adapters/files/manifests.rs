//! Standalone source: `PullSet`, `Secret` and `ServiceAccount` objects read from the YAML files of a
//! directory. The only module that parses Kubernetes objects from files (with k8s-openapi's types,
//! converted to [`crate::model::inventory`] types at once).
//!
//! A broken file, document or object becomes a [`SnapshotProblem`] naming the file, the document
//! index and the field; it is skipped and everything else is still loaded. Secret data never appears
//! in a problem: serde messages that could quote a value are cut to their category.

use super::yaml_bound::Expansion;
use crate::model::inventory::{
    ObjectKey, TYPE_DOCKERCFG, TYPE_DOCKERCONFIGJSON, secret_object, service_account_object,
};
use crate::model::pullset::{self, PullSetSpec};
use crate::model::snapshot::{Snapshot, SnapshotProblem};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest directory {}: {source}", path.display())]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
}

const PULLSET_API_VERSION: &str = "pullgate.io/v1alpha1";

/// Reads every `*.yaml` / `*.yml` file under `dir` (recursively, in path order).
/// Files larger than this are reported and skipped, not parsed.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

pub fn load_dir(dir: &Path) -> Result<Snapshot, ManifestError> {
    let mut files = Vec::new();
    collect_files(dir, &mut files).map_err(|source| ManifestError::Directory {
        path: dir.to_path_buf(),
        source,
    })?;
    files.sort();
    let mut loaded = Snapshot::default();
    let mut hasher = Sha256::new();
    let mut origin: BTreeMap<String, PathBuf> = BTreeMap::new();
    for file in files {
        // A Kubernetes object is at most ~1.5 MiB; a huge file is a mistake, and parsing it would
        // take several copies of it in memory.
        if let Ok(meta) = std::fs::metadata(&file)
            && meta.len() > MAX_FILE_BYTES
        {
            loaded.problems.push(problem(
                &file,
                None,
                None,
                None,
                format!(
                    "{} MiB, over the {} MiB limit for one file (a Kubernetes object is at most 1.5 MiB); skipped",
                    meta.len() / (1024 * 1024),
                    MAX_FILE_BYTES / (1024 * 1024)
                ),
            ));
            hasher.update(file.as_os_str().as_encoded_bytes());
            hasher.update(meta.len().to_be_bytes());
            continue;
        }
        let text = match std::fs::read(&file) {
            Ok(bytes) => bytes,
            Err(e) => {
                loaded.problems.push(problem(
                    &file,
                    None,
                    None,
                    None,
                    format!("cannot read: {e}"),
                ));
                continue;
            }
        };
        hasher.update(file.as_os_str().as_encoded_bytes());
        hasher.update([0]);
        hasher.update(&text);
        hasher.update([0]);
        match String::from_utf8(text) {
            Ok(text) => load_text(&file, &text, &mut loaded, &mut origin),
            Err(_) => {
                loaded
                    .problems
                    .push(problem(&file, None, None, None, "not UTF-8 text".into()))
            }
        }
    }
    loaded.fingerprint = hex::encode(hasher.finalize());
    loaded.synced = true;
    Ok(loaded)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        // Hidden entries are skipped: editors' swap files, Kubernetes' `..data` ConfigMap links.
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            collect_files(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

pub use super::yaml_bound::{MAX_DOCUMENT_EXPANDED_BYTES, MAX_FILE_EXPANDED_BYTES};

fn load_text(
    file: &Path,
    text: &str,
    loaded: &mut Snapshot,
    origin: &mut BTreeMap<String, PathBuf>,
) {
    let mut file_used = 0u64;
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let file_left = MAX_FILE_EXPANDED_BYTES.saturating_sub(file_used);
        let mut expansion = Expansion::new(MAX_DOCUMENT_EXPANDED_BYTES.min(file_left));
        let result = expansion.value(document);
        file_used += expansion.used();
        if expansion.exceeded() {
            if file_left < MAX_DOCUMENT_EXPANDED_BYTES {
                loaded.problems.push(problem(
                    file,
                    Some(index),
                    None,
                    None,
                    format!(
                        "the documents of this file expand to more than {} MiB in memory (YAML aliases repeat what they name); this document and the rest of the file are skipped",
                        MAX_FILE_EXPANDED_BYTES / (1024 * 1024)
                    ),
                ));
                return;
            }
            loaded.problems.push(problem(
                file,
                Some(index),
                None,
                None,
                format!(
                    "expands to more than {} MiB in memory (YAML aliases repeat what they name; a Kubernetes object is at most 1.5 MiB); document skipped",
                    MAX_DOCUMENT_EXPANDED_BYTES / (1024 * 1024)
                ),
            ));
            continue;
        }
        let value = match result {
            Ok(v) => v,
            Err(e) => {
                // A syntax error ends the stream: nothing after it in this file can be read.
                loaded.problems.push(problem(
                    file,
                    Some(index),
                    None,
                    None,
                    format!("invalid YAML: {e}"),
                ));
                return;
            }
        };
        if value.is_null() {
            continue;
        }
        if let Err(p) = load_object(value, index, loaded, origin, file) {
            loaded.problems.push(p);
        }
    }
}

fn load_object(
    value: serde_yaml::Value,
    index: usize,
    loaded: &mut Snapshot,
    origin: &mut BTreeMap<String, PathBuf>,
    file: &Path,
) -> Result<(), SnapshotProblem> {
    let api_version = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let kind = value
        .get("kind")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    if api_version.is_empty() || kind.is_empty() {
        let field = if api_version.is_empty() {
            "apiVersion"
        } else {
            "kind"
        };
        return Err(problem(
            file,
            Some(index),
            None,
            Some(field),
            format!("missing `{field}`"),
        ));
    }
    let name_of = |ns: &str, name: &str| format!("{kind} {ns}/{name}");
    let meta_name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("?")
        .to_string();
    let meta_ns = value
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
        .unwrap_or("default")
        .to_string();
    let object = name_of(&meta_ns, &meta_name);
    let fail = |field: Option<String>, message: String| SnapshotProblem {
        file: file.to_path_buf(),
        document: Some(index),
        object: Some(object.clone()),
        field,
        message,
    };

    match (api_version.as_str(), kind.as_str()) {
        (PULLSET_API_VERSION, "PullSet") => {
            let doc: PullSetDoc = from_value(value, false).map_err(|(f, m)| fail(f, m))?;
            let key = object_key(&doc.metadata).map_err(|(f, m)| fail(Some(f), m))?;
            claim(origin, &object, file).map_err(|m| fail(None, m))?;
            match pullset::validate(key.clone(), doc.spec) {
                Ok(set) => {
                    loaded
                        .warnings
                        .extend(set.warnings.iter().map(|w| format!("PullSet {key}: {w}")));
                    loaded.inventory.pullsets.insert(key, set);
                }
                Err(errors) => {
                    // Report every field error; the set is skipped as a whole.
                    let mut errors = errors.into_iter();
                    let first = errors.next();
                    for e in errors {
                        loaded.problems.push(fail(Some(e.field), e.message));
                    }
                    if let Some(e) = first {
                        return Err(fail(Some(e.field), e.message));
                    }
                }
            }
        }
        ("v1", "Secret") => {
            let secret: k8s_openapi::api::core::v1::Secret =
                from_value(value, true).map_err(|(f, m)| fail(f, m))?;
            let key = object_key(&secret.metadata).map_err(|(f, m)| fail(Some(f), m))?;
            claim(origin, &object, file).map_err(|m| fail(None, m))?;
            let object_value = secret_object(key, secret);
            let type_ = object_value.type_.clone();
            let wrong_type = type_ != TYPE_DOCKERCONFIGJSON && type_ != TYPE_DOCKERCFG;
            loaded
                .inventory
                .secrets
                .insert(object_value.key.clone(), object_value);
            if wrong_type {
                // Kept (so a PullSet naming it gets `SecretWrongType`) and reported.
                return Err(fail(
                    Some("type".into()),
                    format!(
                        "type `{type_}` is not a pull-secret type (`{TYPE_DOCKERCONFIGJSON}` or `{TYPE_DOCKERCFG}`); the kubelet ignores it for pulls"
                    ),
                ));
            }
        }
        ("v1", "ServiceAccount") => {
            let sa: k8s_openapi::api::core::v1::ServiceAccount =
                from_value(value, false).map_err(|(f, m)| fail(f, m))?;
            let key = object_key(&sa.metadata).map_err(|(f, m)| fail(Some(f), m))?;
            claim(origin, &object, file).map_err(|m| fail(None, m))?;
            loaded
                .inventory
                .service_accounts
                .insert(key.clone(), service_account_object(key, sa));
        }
        _ => {
            tracing::debug!(file = %file.display(), %api_version, %kind, "ignoring object of another kind");
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PullSetDoc {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    metadata: ObjectMeta,
    spec: PullSetSpec,
    #[serde(default, rename = "status")]
    _status: Option<serde_yaml::Value>,
}

/// Deserialises with the failing field's path. With `sensitive`, a message that could quote a
/// value is cut to its category.
fn from_value<T: serde::de::DeserializeOwned>(
    value: serde_yaml::Value,
    sensitive: bool,
) -> Result<T, (Option<String>, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let message = if sensitive {
            redact_serde_message(&message)
        } else {
            message
        };
        (Some(path).filter(|p| p != "."), message)
    })
}

/// `invalid type: string "s3cret", expected …` → `invalid type, expected …`; base64 errors lose
/// their byte and offset.
fn redact_serde_message(message: &str) -> String {
    for prefix in ["invalid type", "invalid value", "invalid length"] {
        if message.starts_with(prefix) {
            return match message.find(", expected") {
                Some(i) => format!("{prefix}{}", &message[i..]),
                None => prefix.to_string(),
            };
        }
    }
    if message.starts_with("missing field")
        || message.starts_with("unknown field")
        || message.starts_with("duplicate field")
    {
        return message.to_string();
    }
    "invalid value (not shown: Secret content is never printed); expected base64 in `data`"
        .to_string()
}

fn object_key(meta: &ObjectMeta) -> Result<ObjectKey, (String, String)> {
    let name = meta
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ("metadata.name".to_string(), "missing".to_string()))?;
    if !pullset::is_dns_subdomain(&name) {
        return Err((
            "metadata.name".into(),
            format!("`{name}` is not a valid object name"),
        ));
    }
    let namespace = meta
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    if !pullset::is_dns_subdomain(&namespace) || namespace.contains('.') {
        return Err((
            "metadata.namespace".into(),
            format!("`{namespace}` is not a valid namespace"),
        ));
    }
    Ok(ObjectKey::new(namespace, name))
}

/// First definition wins; a duplicate is a problem.
fn claim(origin: &mut BTreeMap<String, PathBuf>, object: &str, file: &Path) -> Result<(), String> {
    match origin.get(object) {
        Some(first) => Err(format!(
            "defined again; the first definition in {} is kept",
            first.display()
        )),
        None => {
            origin.insert(object.to_string(), file.to_path_buf());
            Ok(())
        }
    }
}

fn problem(
    file: &Path,
    document: Option<usize>,
    object: Option<String>,
    field: Option<&str>,
    message: String,
) -> SnapshotProblem {
    SnapshotProblem {
        file: file.to_path_buf(),
        document,
        object,
        field: field.map(str::to_string),
        message,
    }
}

#[cfg(test)]
mod tests;
