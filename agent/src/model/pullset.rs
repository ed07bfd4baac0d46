//! The `PullSet` custom resource (`pullgate.io/v1alpha1`) and its validation.
//!
//! The Rust type is the source of truth: the CRD in `manifests/` is generated from it. Validation
//! returns errors that name the object and the field (`spec.images[2].image`), and warnings for what
//! is allowed but risky (a tag without a digest).

use crate::model::image_ref::{ImageRef, ImageRefError};
use crate::model::inventory::ObjectKey;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The longest `spec.canary.jitter` accepted: one day. The jitter spreads a fleet's scheduled
/// canaries over a window after each cron tick; a day spreads any fleet, while a longer window
/// would delay a node's canary past its next daily ticks and past the point where a credential
/// about to expire is caught in time. The scheduler clamps any window that did not pass
/// validation to this same bound.
pub const MAX_CANARY_JITTER: Duration = Duration::from_secs(24 * 60 * 60);

/// The most images one PullSet may list (`spec.images`, `maxItems` in the CRD). A tenant's set
/// acts on every node it selects: each image is a pull, a disk share, and a canary per run, so
/// the list is bounded. 256 covers a whole platform's images (a busy node runs far fewer
/// distinct images) while keeping one object's work per pass, and its size in etcd, small.
pub const MAX_IMAGES: usize = 256;

/// The most pull Secrets one PullSet may name (`spec.imagePullSecrets`, `maxItems`). Each is a
/// by-name watch on every selected node (a request stream on the API server per node), and the
/// kubelet tries them in order for each image; a pod rarely needs more than a few (one per
/// registry), so 16 leaves room without letting one object open hundreds of watches per node.
pub const MAX_PULL_SECRETS: usize = 16;

/// What a PullSet asks of every node it selects.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "pullgate.io",
    version = "v1alpha1",
    kind = "PullSet",
    namespaced,
    shortname = "pset",
    printcolumn = r#"{"name":"ServiceAccount","type":"string","jsonPath":".spec.serviceAccountName"}"#,
    printcolumn = r#"{"name":"PrePull","type":"boolean","jsonPath":".spec.prePull"}"#,
    printcolumn = r#"{"name":"Gate","type":"boolean","jsonPath":".spec.gate"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PullSetSpec {
    /// Resolve credentials as a pod with this ServiceAccount would (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Pull secrets used instead of the ServiceAccount's when set (the pod rule).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_PULL_SECRETS))]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Labels a node must carry to act on this set; empty selects every node.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// The images. Digests are preferred; tags are allowed and warned about.
    #[schemars(length(max = MAX_IMAGES))]
    pub images: Vec<ImageEntry>,
    /// Keep these images present on every selected node.
    #[serde(default = "default_true")]
    pub pre_pull: bool,
    /// Count toward the node's readiness gate.
    #[serde(default = "default_true")]
    pub gate: bool,
    /// Pin the images once pre-pulled, so that the kubelet's image GC never removes them
    /// (containerd 1.6.22+/1.7.3+; only in the agent's `--pin-namespaces`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pin: bool,
    /// Credential canaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySpec>,
}

/// A reference to a Secret in the PullSet's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalObjectReference {
    pub name: String,
}

/// One image of a PullSet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageEntry {
    /// `registry/repository[:tag][@sha256:…]`.
    pub image: String,
}

/// When and how deep to validate credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanarySpec {
    /// Cron schedule (`0 */6 * * *`); none when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Spread across the fleet, deterministic per node (`10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<String>,
    /// Re-validate within seconds of a credential change.
    #[serde(default = "default_true")]
    pub on_rotation: bool,
    /// How far a registry-direct canary goes.
    #[serde(default)]
    pub depth: CanaryDepth,
    /// Also pull through the CRI.
    #[serde(default)]
    pub runtime: bool,
}

/// Registry-direct canary depth.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CanaryDepth {
    /// Resolve and fetch the manifest.
    #[default]
    Manifest,
    /// Also HEAD every blob.
    Blobs,
    /// Download every blob and verify size and digest.
    Full,
}

fn default_true() -> bool {
    true
}

/// The CustomResourceDefinition, as YAML, with a header saying how it is made.
pub fn crd_yaml() -> String {
    use kube_core::CustomResourceExt as _;
    let body = serde_yaml::to_string(&PullSet::crd()).unwrap_or_default();
    format!(
        "# Generated from agent/src/model/pullset.rs by `cargo xtask manifests`; do not edit.\n{body}"
    )
}

/// A validation problem, naming the object and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("PullSet {object}: {field}: {message}")]
pub struct FieldError {
    pub object: ObjectKey,
    pub field: String,
    pub message: String,
}

/// A PullSet that passed validation, with its images parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidPullSet {
    pub key: ObjectKey,
    pub spec: PullSetSpec,
    pub images: Vec<ImageRef>,
    /// Accepted but risky: each names the field.
    pub warnings: Vec<String>,
    /// The object's UID when it came from the API server (Events refer to it).
    pub uid: Option<String>,
}

impl ValidPullSet {
    /// The ServiceAccount whose pull secrets apply when the set names none of its own.
    pub fn service_account(&self) -> &str {
        self.spec
            .service_account_name
            .as_deref()
            .unwrap_or("default")
    }
}

/// Validates a spec. Every problem is returned, not just the first.
pub fn validate(key: ObjectKey, spec: PullSetSpec) -> Result<ValidPullSet, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut images = Vec::new();
    let err = |field: String, message: String| FieldError {
        object: key.clone(),
        field,
        message,
    };

    if spec.images.is_empty() {
        errors.push(err(
            "spec.images".into(),
            "must list at least one image".into(),
        ));
    }
    if spec.images.len() > MAX_IMAGES {
        errors.push(err(
            "spec.images".into(),
            format!(
                "lists {} images; at most {MAX_IMAGES} are allowed",
                spec.images.len()
            ),
        ));
    }
    if spec.image_pull_secrets.len() > MAX_PULL_SECRETS {
        errors.push(err(
            "spec.imagePullSecrets".into(),
            format!(
                "names {} Secrets; at most {MAX_PULL_SECRETS} are allowed",
                spec.image_pull_secrets.len()
            ),
        ));
    }
    for (i, entry) in spec.images.iter().enumerate().take(MAX_IMAGES) {
        let field = format!("spec.images[{i}].image");
        match ImageRef::parse(&entry.image) {
            Ok(image) => {
                if !image.is_pinned() {
                    warnings.push(format!(
                        "{field}: `{}` is not pinned by digest; what a node pre-pulls may differ from what it runs later",
                        entry.image
                    ));
                }
                if images.contains(&image) {
                    warnings.push(format!("{field}: `{}` is listed twice", entry.image));
                } else {
                    images.push(image);
                }
            }
            Err(e) => errors.push(err(field, image_error_message(&e))),
        }
    }
    for (i, secret) in spec
        .image_pull_secrets
        .iter()
        .enumerate()
        .take(MAX_PULL_SECRETS)
    {
        if !is_dns_subdomain(&secret.name) {
            errors.push(err(
                format!("spec.imagePullSecrets[{i}].name"),
                format!("`{}` is not a valid Secret name", secret.name),
            ));
        }
    }
    if let Some(sa) = &spec.service_account_name
        && !is_dns_subdomain(sa)
    {
        errors.push(err(
            "spec.serviceAccountName".into(),
            format!("`{sa}` is not a valid ServiceAccount name"),
        ));
    }
    if let Some(schedule) = spec.canary.as_ref().and_then(|c| c.schedule.as_ref())
        && let Err(message) = cron_expression(schedule)
    {
        errors.push(err("spec.canary.schedule".into(), message));
    }
    if let Some(jitter) = spec.canary.as_ref().and_then(|c| c.jitter.as_ref()) {
        match humantime::parse_duration(jitter) {
            Err(_) => errors.push(err(
                "spec.canary.jitter".into(),
                format!("`{jitter}` is not a duration (e.g. `10m`, `30s`)"),
            )),
            Ok(window) if window > MAX_CANARY_JITTER => errors.push(err(
                "spec.canary.jitter".into(),
                format!(
                    "`{jitter}` is longer than {}h, the longest jitter allowed",
                    MAX_CANARY_JITTER.as_secs() / 3600
                ),
            )),
            Ok(_) => {}
        }
    }

    if errors.is_empty() {
        Ok(ValidPullSet {
            uid: None,
            key,
            spec,
            images,
            warnings,
        })
    } else {
        Err(errors)
    }
}

/// A canary schedule as the scheduler takes it: standard 5-field cron (`0 */6 * * *`) gets a
/// leading seconds field of `0`; 6 fields (with seconds) are taken as they are.
pub fn cron_expression(schedule: &str) -> Result<String, String> {
    cron_schedule(schedule).map(|(expression, _)| expression)
}

/// [`cron_expression`] and its parsed pattern: the one cron parser of validation and the
/// scheduler (seconds required, day-of-month and day-of-week both, as cron does).
pub fn cron_schedule(schedule: &str) -> Result<(String, croner::Cron), String> {
    let fields = schedule.split_whitespace().count();
    let expression = match fields {
        5 => format!("0 {}", schedule.trim()),
        6 => schedule.trim().to_string(),
        _ => {
            return Err(format!(
                "`{schedule}` is not a cron schedule: expected 5 fields (or 6 with seconds)"
            ));
        }
    };
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(&expression)
        .map(|pattern| (expression, pattern))
        .map_err(|e| format!("`{schedule}` is not a valid cron schedule: {e}"))
}

fn image_error_message(e: &ImageRefError) -> String {
    e.to_string()
}

/// RFC 1123 DNS subdomain, as Kubernetes requires of most object names.
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl fmt::Display for CanaryDepth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CanaryDepth::Manifest => "manifest",
            CanaryDepth::Blobs => "blobs",
            CanaryDepth::Full => "full",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ObjectKey {
        ObjectKey::new("payments", "critical")
    }

    fn spec(yaml: &str) -> PullSetSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn the_committed_crd_matches_the_type() {
        let committed = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/base/crd.yaml"
        ));
        assert!(
            committed == crd_yaml(),
            "manifests/base/crd.yaml is out of date with agent/src/model/pullset.rs: run `cargo xtask manifests`"
        );
    }

    #[test]
    fn defaults_follow_the_design() {
        let s = spec("images: [{image: reg.io/a:1}]");
        assert!(s.pre_pull && s.gate);
        assert!(s.canary.is_none());
        let c = spec("images: [{image: reg.io/a:1}]\ncanary: {schedule: '0 * * * *'}")
            .canary
            .unwrap();
        assert!(c.on_rotation && !c.runtime);
        assert_eq!(c.depth, CanaryDepth::Manifest);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        for yaml in [
            "images: [{image: reg.io/a:1}]\nprepull: true",
            "images: [{image: reg.io/a:1, tag: x}]",
            "images: [{image: reg.io/a:1}]\ncanary: {deph: full}",
            "images: [{image: reg.io/a:1}]\nimagePullSecrets: [{name: a, namespace: b}]",
        ] {
            let err = serde_yaml::from_str::<PullSetSpec>(yaml)
                .unwrap_err()
                .to_string();
            assert!(err.contains("unknown field"), "{yaml}: {err}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let ok = validate(
            key(),
            spec(&format!(
                "images: [{{image: 'reg.io/a@{digest}'}}, {{image: reg.io/b:1}}]"
            )),
        )
        .unwrap();
        assert_eq!(ok.images.len(), 2);
        assert_eq!(ok.warnings.len(), 1);
        assert!(
            ok.warnings[0].starts_with("spec.images[1].image"),
            "{:?}",
            ok.warnings
        );

        let errs = validate(
            key(),
            spec("images: [{image: reg.io/a:1}, {image: 'Reg.io/UPPER:1'}]\nimagePullSecrets: [{name: Bad_Name}]\ncanary: {jitter: soon}"),
        )
        .unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.images[1].image",
                "spec.imagePullSecrets[0].name",
                "spec.canary.jitter"
            ]
        );
        assert!(
            errs[0]
                .to_string()
                .starts_with("PullSet payments/critical: spec.images[1].image:"),
            "{}",
            errs[0]
        );

        let bad_cron = validate(
            key(),
            spec("images: [{image: reg.io/a:1}]\ncanary: {schedule: 'every day'}"),
        )
        .unwrap_err();
        assert_eq!(bad_cron[0].field, "spec.canary.schedule");
        assert_eq!(cron_expression("0 */6 * * *").unwrap(), "0 0 */6 * * *");
        assert_eq!(cron_expression("*/2 * * * * *").unwrap(), "*/2 * * * * *");
        assert!(cron_expression("61 * * * *").is_err());

        let empty = validate(key(), spec("images: []")).unwrap_err();
        assert_eq!(empty[0].field, "spec.images");
    }

    #[test]
    fn the_canary_jitter_is_bounded_to_a_day() {
        for (jitter, accepted) in [
            ("0s", true),
            ("10m", true),
            ("23h 59m 59s", true),
            ("24h", true),
            ("1day", true),
            ("24h 1ns", false),
            ("25h", false),
            ("2days", false),
            ("800days", false),
            ("10000years", false),
            ("18446744073709551615s", false),
        ] {
            let yaml = format!("images: [{{image: reg.io/a:1}}]\ncanary: {{jitter: '{jitter}'}}");
            match validate(key(), spec(&yaml)) {
                Ok(_) => assert!(accepted, "`{jitter}` was accepted"),
                Err(errs) => {
                    assert!(!accepted, "`{jitter}` was rejected: {errs:?}");
                    assert_eq!(errs.len(), 1, "{errs:?}");
                    assert_eq!(errs[0].field, "spec.canary.jitter");
                    assert_eq!(
                        errs[0].to_string(),
                        format!(
                            "PullSet payments/critical: spec.canary.jitter: `{jitter}` is longer than 24h, the longest jitter allowed"
                        )
                    );
                }
            }
        }
    }

    #[test]
    fn images_and_pull_secrets_are_bounded() {
        let images = |n: usize| {
            (0..n)
                .map(|i| format!("{{image: reg.io/a:{i}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let secrets = |n: usize| {
            (0..n)
                .map(|i| format!("{{name: s{i}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (n_images, n_secrets, expected) in [
            (MAX_IMAGES, MAX_PULL_SECRETS, vec![]),
            (
                MAX_IMAGES + 1,
                1,
                vec![
                    "PullSet payments/critical: spec.images: lists 257 images; at most 256 are allowed",
                ],
            ),
            (
                1,
                MAX_PULL_SECRETS + 1,
                vec![
                    "PullSet payments/critical: spec.imagePullSecrets: names 17 Secrets; at most 16 are allowed",
                ],
            ),
        ] {
            let yaml = format!(
                "images: [{}]\nimagePullSecrets: [{}]",
                images(n_images),
                secrets(n_secrets)
            );
            let errors: Vec<String> = match validate(key(), spec(&yaml)) {
                Ok(_) => vec![],
                Err(errs) => errs.iter().map(ToString::to_string).collect(),
            };
            assert_eq!(errors, expected, "{n_images} images, {n_secrets} secrets");
        }
        // The CRD carries the same bounds, so the API server refuses such an object first.
        let crd = crd_yaml();
        assert!(crd.contains(&format!("maxItems: {MAX_IMAGES}")), "{crd}");
        assert!(
            crd.contains(&format!("maxItems: {MAX_PULL_SECRETS}")),
            "{crd}"
        );
    }
}
