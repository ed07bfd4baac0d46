//! The kubelet's configuration file (`--kubelet-config`, a `KubeletConfiguration` of
//! `kubelet.config.k8s.io/v1beta1`, YAML or JSON): only what the verification of pre-pulled images
//! needs — `imagePullCredentialsVerificationPolicy`, `preloadedImagesVerificationAllowlist` and
//! `featureGates.KubeletEnsureSecretPulledImages`. Read once at start-up through the one YAML
//! bound ([`crate::adapters::files::yaml_bound`]); every other field is ignored. A file that cannot
//! be used is an error naming the file and the field; the caller warns and goes on with `Unknown`.

use crate::adapters::files::yaml_bound::{Expansion, MAX_DOCUMENT_EXPANDED_BYTES};
use crate::decide::kubelet_access::{FEATURE_GATE, KubeletPolicy, KubeletPolicyError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A kubelet configuration is a few KiB; more is not one.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

const API_VERSION: &str = "kubelet.config.k8s.io/v1beta1";
const KIND: &str = "KubeletConfiguration";

#[derive(Debug, thiserror::Error)]
pub enum KubeletConfigError {
    #[error("kubelet configuration {file}: cannot read it: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("kubelet configuration {file}: larger than {} KiB; a KubeletConfiguration is a few KiB", MAX_FILE_BYTES / 1024)]
    TooLarge { file: PathBuf },
    #[error("kubelet configuration {file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("kubelet configuration {file}: field {field}: {message}")]
    Field {
        file: PathBuf,
        field: &'static str,
        message: String,
    },
}

/// Reads and validates the file as the kubelet would.
pub fn read(path: &Path) -> Result<KubeletPolicy, KubeletConfigError> {
    let file = || path.to_path_buf();
    let meta = std::fs::metadata(path).map_err(|source| KubeletConfigError::Read {
        file: file(),
        source,
    })?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(KubeletConfigError::TooLarge { file: file() });
    }
    let text = std::fs::read_to_string(path).map_err(|source| KubeletConfigError::Read {
        file: file(),
        source,
    })?;
    parse(&text).map_err(|e| match e {
        Problem::Parse(message) => KubeletConfigError::Parse {
            file: file(),
            message,
        },
        Problem::Field(field, message) => KubeletConfigError::Field {
            file: file(),
            field,
            message,
        },
    })
}

enum Problem {
    Parse(String),
    Field(&'static str, String),
}

fn parse(text: &str) -> Result<KubeletPolicy, Problem> {
    let mut documents = serde_yaml::Deserializer::from_str(text);
    let document = documents
        .next()
        .ok_or_else(|| Problem::Parse("the file holds no document".into()))?;
    let mut expansion = Expansion::new(MAX_DOCUMENT_EXPANDED_BYTES);
    let value = expansion.value(document);
    if expansion.exceeded() {
        return Err(Problem::Parse(format!(
            "expands to more than {} MiB in memory (YAML aliases repeat what they name)",
            MAX_DOCUMENT_EXPANDED_BYTES / (1024 * 1024)
        )));
    }
    let value = value.map_err(|e| Problem::Parse(format!("neither YAML nor JSON: {e}")))?;
    if value.is_null() {
        return Err(Problem::Parse("the file holds no document".into()));
    }
    // Field by field, so that the error names the field (serde_yaml's own text may quote values).
    let field = |name: &'static str| -> Result<Option<serde_yaml::Value>, Problem> {
        match value.get(name) {
            None | Some(serde_yaml::Value::Null) => Ok(None),
            Some(v) => Ok(Some(v.clone())),
        }
    };
    let string = |name: &'static str| -> Result<Option<String>, Problem> {
        match field(name)? {
            None => Ok(None),
            Some(serde_yaml::Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Problem::Field(name, "not a string".into())),
        }
    };
    if !value.is_mapping() {
        return Err(Problem::Parse("not a KubeletConfiguration object".into()));
    }
    if string("apiVersion")?.as_deref() != Some(API_VERSION) {
        return Err(Problem::Field(
            "apiVersion",
            format!("expected {API_VERSION}"),
        ));
    }
    if string("kind")?.as_deref() != Some(KIND) {
        return Err(Problem::Field("kind", format!("expected {KIND}")));
    }
    let policy = string("imagePullCredentialsVerificationPolicy")?;
    let allowlist: Vec<String> = match field("preloadedImagesVerificationAllowlist")? {
        None => Vec::new(),
        Some(v) => serde_yaml::from_value(v).map_err(|_| {
            Problem::Field(
                "preloadedImagesVerificationAllowlist",
                "not a list of strings".into(),
            )
        })?,
    };
    let gates: BTreeMap<String, bool> = match field("featureGates")? {
        None => BTreeMap::new(),
        Some(v) => serde_yaml::from_value(v).map_err(|_| {
            Problem::Field("featureGates", "not a map of names to true/false".into())
        })?,
    };
    KubeletPolicy::new(
        policy.as_deref(),
        &allowlist,
        gates.get(FEATURE_GATE).copied(),
    )
    .map_err(|e| {
        let field = match e {
            KubeletPolicyError::UnknownPolicy(_) => "imagePullCredentialsVerificationPolicy",
            _ => "preloadedImagesVerificationAllowlist",
        };
        Problem::Field(field, e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::kubelet_access::VerificationPolicy;

    fn read_text(text: &str) -> Result<KubeletPolicy, KubeletConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, text).unwrap();
        read(&path)
    }

    #[test]
    fn yaml_and_json_are_read() {
        let yaml = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nimagePullCredentialsVerificationPolicy: NeverVerifyAllowlistedImages\npreloadedImagesVerificationAllowlist: [registry.k8s.io/pause, r.example.com/team/*]\nfeatureGates:\n  KubeletEnsureSecretPulledImages: true\n  Other: false\nclusterDNS: [10.96.0.10]\n";
        let p = read_text(yaml).unwrap();
        assert_eq!(p.policy, VerificationPolicy::NeverVerifyAllowlistedImages);
        assert_eq!(p.gate_in_file, Some(true));
        assert!(!p.allowlist.is_empty());
        let json = r#"{"apiVersion":"kubelet.config.k8s.io/v1beta1","kind":"KubeletConfiguration","imagePullCredentialsVerificationPolicy":"AlwaysVerify","authentication":{"anonymous":{"enabled":false}}}"#;
        let p = read_text(json).unwrap();
        assert_eq!(p.policy, VerificationPolicy::AlwaysVerify);
        assert_eq!(p.gate_in_file, None);
        // Nothing set: the kubelet's default.
        let p =
            read_text("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n")
                .unwrap();
        assert_eq!(p.policy, VerificationPolicy::NeverVerifyPreloadedImages);
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let head = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";
        for (text, expected) in [
            ("key: [unclosed", "neither YAML nor JSON"),
            ("- a\n- b\n", "not a KubeletConfiguration object"),
            (
                "kind: KubeletConfiguration\n",
                "field apiVersion: expected kubelet.config.k8s.io/v1beta1",
            ),
            (
                "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: Pod\n",
                "field kind: expected KubeletConfiguration",
            ),
            (
                &format!("{head}imagePullCredentialsVerificationPolicy: Sometimes\n"),
                "field imagePullCredentialsVerificationPolicy: unknown image pull credential verification policy: Sometimes",
            ),
            (
                &format!("{head}imagePullCredentialsVerificationPolicy: 3\n"),
                "field imagePullCredentialsVerificationPolicy: not a string",
            ),
            (
                &format!(
                    "{head}imagePullCredentialsVerificationPolicy: NeverVerifyAllowlistedImages\npreloadedImagesVerificationAllowlist: [\"r.io/*/x\"]\n"
                ),
                "field preloadedImagesVerificationAllowlist: not a valid wildcard pattern",
            ),
            (
                &format!("{head}preloadedImagesVerificationAllowlist: [r.io/a]\n"),
                "field preloadedImagesVerificationAllowlist: preloadedImagesVerificationAllowlist is set, but imagePullCredentialsVerificationPolicy is NeverVerifyPreloadedImages",
            ),
            (
                &format!("{head}featureGates: {{KubeletEnsureSecretPulledImages: maybe}}\n"),
                "field featureGates: not a map",
            ),
        ] {
            let e = read_text(text).expect_err(text).to_string();
            assert!(e.starts_with("kubelet configuration /"), "{e}");
            assert!(e.contains("config.yaml"), "{e}");
            assert!(e.contains(expected), "{text:?}: {e:?} lacks {expected:?}");
        }
        let e = read(Path::new("/nonexistent/kubelet/config.yaml")).unwrap_err();
        assert!(
            e.to_string()
                .contains("/nonexistent/kubelet/config.yaml: cannot read it"),
            "{e}"
        );
    }

    #[test]
    fn aliases_cannot_blow_the_file_up() {
        let mut text = String::from(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\na: &a [\"",
        );
        text.push_str(&"x".repeat(400_000));
        text.push_str("\"]\nb: [");
        text.push_str(&vec!["*a"; 100].join(","));
        text.push_str("]\n");
        let e = read_text(&text).unwrap_err().to_string();
        assert!(e.contains("expands to more than"), "{e}");
    }
}
