//! The kubelet's `CredentialProviderConfig` file (or directory of files), validated as the kubelet
//! validates it, and Go's duration syntax. YAML goes through the one bound on what a document may
//! build ([`crate::adapters::files::yaml_bound`]), so aliases cannot blow a small file up.

use super::PluginError;
use crate::adapters::files::manifests::MAX_FILE_BYTES;
use crate::adapters::files::yaml_bound::{Expansion, MAX_DOCUMENT_EXPANDED_BYTES};
use crate::decide::credentials::keyring::SchemelessUrl;
use crate::decide::credentials::sa_token::{TokenAttributes, TokenCacheType};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

const CONFIG_GROUP: &str = "kubelet.config.k8s.io";
/// The one plugin API version that carries a ServiceAccount token (`tokenAttributes`).
pub(super) const TOKEN_API_VERSION: &str = "credentialprovider.kubelet.k8s.io/v1";
pub(super) const PLUGIN_API_VERSIONS: [&str; 3] = [
    "credentialprovider.kubelet.k8s.io/v1",
    "credentialprovider.kubelet.k8s.io/v1beta1",
    "credentialprovider.kubelet.k8s.io/v1alpha1",
];

/// One provider of a `CredentialProviderConfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderConfig {
    pub name: String,
    pub match_images: Vec<String>,
    pub default_cache_duration: Duration,
    pub api_version: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `tokenAttributes`: the provider runs in service-account token mode (KEP-4412).
    pub token_attributes: Option<TokenAttributes>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConfigFile {
    api_version: String,
    kind: String,
    #[serde(default)]
    providers: Vec<ProviderFile>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProviderFile {
    #[serde(default)]
    name: String,
    #[serde(default)]
    match_images: Vec<String>,
    #[serde(default)]
    default_cache_duration: Option<String>,
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
    /// Service-account token mode (KEP-4412).
    #[serde(default)]
    token_attributes: Option<TokenAttributesFile>,
}

/// `tokenAttributes` as written; [`validate_token_attributes`] checks it as the kubelet does.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenAttributesFile {
    #[serde(default)]
    service_account_token_audience: String,
    #[serde(default)]
    cache_type: String,
    /// A pointer in the kubelet's type: absent is an error, not `false`.
    #[serde(default)]
    require_service_account: Option<bool>,
    #[serde(default)]
    required_service_account_annotation_keys: Vec<String>,
    #[serde(default)]
    optional_service_account_annotation_keys: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvVar {
    name: String,
    value: String,
}

/// Loads a config file, or every `*.json`/`*.yaml`/`*.yml` file of a directory (sorted), and
/// validates it as the kubelet does. Every problem is reported, not just the first.
pub fn load_config(path: &Path) -> Result<Vec<ProviderConfig>, PluginError> {
    let config_error = |message: String| PluginError::Config {
        path: path.to_path_buf(),
        message,
    };
    let files = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| config_error(e.to_string()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("json" | "yaml" | "yml")
                    )
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(config_error(
                "no .json, .yaml or .yml file in the directory".into(),
            ));
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut providers = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        let parsed = read_config_file(&file)
            .map_err(|message| config_error(format!("{}: {message}", file.display())))?;
        if parsed.kind != "CredentialProviderConfig"
            || parsed.api_version.split('/').next() != Some(CONFIG_GROUP)
        {
            problems.push(format!(
                "{}: expected kind CredentialProviderConfig in group {CONFIG_GROUP}, got {} {}",
                file.display(),
                parsed.api_version,
                parsed.kind
            ));
            continue;
        }
        for (i, p) in parsed.providers.into_iter().enumerate() {
            let name = p.name.clone();
            match validate_provider(p) {
                Ok(p) => providers.push(p),
                Err(e) => problems.push(format!(
                    "{}: providers[{i}] (`{name}`): {e}",
                    file.display()
                )),
            }
        }
    }
    let mut names: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
    names.sort_unstable();
    for pair in names.windows(2) {
        if pair[0] == pair[1] {
            problems.push(format!("duplicate provider name `{}`", pair[0]));
        }
    }
    if providers.is_empty() && problems.is_empty() {
        problems.push("at least one provider is required".into());
    }
    if problems.is_empty() {
        Ok(providers)
    } else {
        Err(config_error(problems.join("; ")))
    }
}

/// One file: at most [`MAX_FILE_BYTES`] read, one YAML (or JSON) document, built within
/// [`MAX_DOCUMENT_EXPANDED_BYTES`], then typed.
fn read_config_file(file: &Path) -> Result<ConfigFile, String> {
    let size = std::fs::metadata(file).map_err(|e| e.to_string())?.len();
    if size > MAX_FILE_BYTES {
        return Err(format!(
            "{} MiB, over the {} MiB limit for one file (a credential provider config is a few KiB)",
            size / (1024 * 1024),
            MAX_FILE_BYTES / (1024 * 1024)
        ));
    }
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    parse_config_text(&text)
}

fn parse_config_text(text: &str) -> Result<ConfigFile, String> {
    let mut documents = serde_yaml::Deserializer::from_str(text);
    let document = documents
        .next()
        .ok_or_else(|| "the file holds no YAML document".to_string())?;
    let mut expansion = Expansion::new(MAX_DOCUMENT_EXPANDED_BYTES);
    let value = expansion.value(document);
    if expansion.exceeded() {
        return Err(format!(
            "expands to more than {} MiB in memory (YAML aliases repeat what they name; a credential provider config is a few KiB)",
            MAX_DOCUMENT_EXPANDED_BYTES / (1024 * 1024)
        ));
    }
    let value = value.map_err(|e| format!("invalid YAML: {e}"))?;
    if value.is_null() {
        return Err("the file holds no YAML document".into());
    }
    if documents.next().is_some() {
        return Err("more than one YAML document; a credential provider config is one".into());
    }
    serde_yaml::from_value(value).map_err(|e| e.to_string())
}

fn validate_provider(p: ProviderFile) -> Result<ProviderConfig, String> {
    let mut problems = Vec::new();
    if p.name.is_empty() {
        problems.push("name is required".to_string());
    } else if p.name.contains('/') || p.name.contains(' ') || p.name == "." || p.name == ".." {
        problems.push(format!(
            "name `{}` must not contain '/' or ' ' and must not be '.' or '..'",
            p.name
        ));
    }
    if p.api_version.is_empty() {
        problems.push("apiVersion is required".into());
    } else if !PLUGIN_API_VERSIONS.contains(&p.api_version.as_str()) {
        problems.push(format!(
            "apiVersion `{}` is not one of {PLUGIN_API_VERSIONS:?}",
            p.api_version
        ));
    }
    if p.match_images.is_empty() {
        problems.push("matchImages is required".into());
    }
    for m in &p.match_images {
        if SchemelessUrl::parse(m).is_none() {
            problems.push(format!("matchImages entry `{m}` is not a valid URL"));
        }
    }
    let default_cache_duration = match p.default_cache_duration.as_deref() {
        None => {
            problems.push("defaultCacheDuration is required".into());
            Duration::ZERO
        }
        Some(d) => parse_go_duration(d).unwrap_or_else(|| {
            problems.push(format!(
                "defaultCacheDuration `{d}` is not a non-negative duration"
            ));
            Duration::ZERO
        }),
    };
    let token_attributes = p
        .token_attributes
        .map(|t| validate_token_attributes(t, &p.api_version, &mut problems));
    if !problems.is_empty() {
        return Err(problems.join(", "));
    }
    Ok(ProviderConfig {
        name: p.name,
        match_images: p.match_images,
        default_cache_duration,
        api_version: p.api_version,
        args: p.args,
        env: p.env.into_iter().map(|e| (e.name, e.value)).collect(),
        token_attributes: token_attributes.flatten(),
    })
}

/// The cache types the kubelet accepts, sorted as its messages list them.
const CACHE_TYPES: [&str; 2] = ["ServiceAccount", "Token"];

/// `tokenAttributes` as the kubelet's `validateCredentialProviderConfig` checks it (feature gate
/// on: beta and on by default from 1.34): the audience, `cacheType` and `requireServiceAccount`
/// required; only with plugin apiVersion v1; required annotation keys only with
/// `requireServiceAccount: true`; each key a qualified name (case aside), no key twice in a list
/// nor in both. Every problem is pushed, naming the field.
fn validate_token_attributes(
    t: TokenAttributesFile,
    api_version: &str,
    problems: &mut Vec<String>,
) -> Option<TokenAttributes> {
    let before = problems.len();
    if t.service_account_token_audience.is_empty() {
        problems.push("tokenAttributes.serviceAccountTokenAudience is required".into());
    }
    if t.require_service_account.is_none() {
        problems.push("tokenAttributes.requireServiceAccount is required".into());
    }
    if !api_version.is_empty() && api_version != TOKEN_API_VERSION {
        problems.push(format!(
            "tokenAttributes is only supported for {TOKEN_API_VERSION} API version, not `{api_version}`"
        ));
    }
    if t.require_service_account == Some(false)
        && !t.required_service_account_annotation_keys.is_empty()
    {
        problems.push(
            "tokenAttributes.requiredServiceAccountAnnotationKeys: requireServiceAccount cannot be false when requiredServiceAccountAnnotationKeys is set".into(),
        );
    }
    for (field, keys) in [
        (
            "requiredServiceAccountAnnotationKeys",
            &t.required_service_account_annotation_keys,
        ),
        (
            "optionalServiceAccountAnnotationKeys",
            &t.optional_service_account_annotation_keys,
        ),
    ] {
        let mut seen = std::collections::BTreeSet::new();
        for key in keys {
            for message in qualified_name_problems(&key.to_lowercase()) {
                problems.push(format!("tokenAttributes.{field}: `{key}`: {message}"));
            }
            if !seen.insert(key.as_str()) {
                problems.push(format!("tokenAttributes.{field}: duplicate key `{key}`"));
            }
        }
    }
    let both: std::collections::BTreeSet<&String> = t
        .required_service_account_annotation_keys
        .iter()
        .filter(|k| t.optional_service_account_annotation_keys.contains(*k))
        .collect();
    if !both.is_empty() {
        let keys: Vec<String> = both.iter().map(|k| format!("`{k}`")).collect();
        problems.push(format!(
            "tokenAttributes: annotation keys cannot be both required and optional: {}",
            keys.join(", ")
        ));
    }
    let cache_type = match t.cache_type.as_str() {
        "" => {
            problems.push(format!(
                "tokenAttributes.cacheType is required to be set when tokenAttributes is specified. Supported values are: {}",
                CACHE_TYPES.join(", ")
            ));
            None
        }
        "Token" => Some(TokenCacheType::Token),
        "ServiceAccount" => Some(TokenCacheType::ServiceAccount),
        other => {
            problems.push(format!(
                "tokenAttributes.cacheType `{other}` is not supported: supported values are {}",
                CACHE_TYPES.join(", ")
            ));
            None
        }
    };
    if problems.len() > before {
        return None;
    }
    Some(TokenAttributes {
        audience: t.service_account_token_audience,
        cache_type: cache_type?,
        require_service_account: t.require_service_account?,
        required_annotation_keys: t.required_service_account_annotation_keys,
        optional_annotation_keys: t.optional_service_account_annotation_keys,
    })
}

/// The longest name part of a qualified name, and of a DNS-1123 subdomain prefix.
const QUALIFIED_NAME_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;

/// apimachinery's `validation.IsQualifiedName`: `[prefix/]name`, the prefix a DNS-1123 subdomain,
/// the name at most 63 characters of `[A-Za-z0-9][-A-Za-z0-9_.]*[A-Za-z0-9]`. Its messages.
fn qualified_name_problems(value: &str) -> Vec<String> {
    const NAME_FORMAT: &str = "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName', or 'my.name', or '123-abc')";
    let mut problems = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                problems.push("prefix part must be non-empty".to_string());
            } else {
                problems.extend(
                    dns1123_subdomain_problems(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            return vec![format!(
                "{NAME_FORMAT} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            )];
        }
    };
    if name.is_empty() {
        problems.push("name part must be non-empty".into());
    } else if name.len() > QUALIFIED_NAME_MAX {
        problems.push(format!(
            "name part must be no more than {QUALIFIED_NAME_MAX} characters"
        ));
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let shaped = name.starts_with(alnum)
        && name.ends_with(alnum)
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !name.is_empty() && !shaped {
        problems.push(format!("name part {NAME_FORMAT}"));
    }
    problems
}

/// apimachinery's `IsDNS1123Subdomain`.
fn dns1123_subdomain_problems(value: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX {
        problems.push(format!(
            "must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
        ));
    }
    let label_ok = |l: &str| {
        let lower_alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        !l.is_empty()
            && l.starts_with(lower_alnum)
            && l.ends_with(lower_alnum)
            && l.chars().all(|c| lower_alnum(c) || c == '-')
    };
    if !value.split('.').all(label_ok) {
        problems.push("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com')".into());
    }
    problems
}

/// Go's `time.ParseDuration` for non-negative values: `300ms`, `1.5h`, `2h45m`, `0`. Like Go, a
/// value past `time.Duration`'s range (2⁶³−1 ns, about 292 years) is refused, not saturated.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    /// Go's largest `time.Duration`, in nanoseconds.
    const GO_MAX_NANOS: f64 = i64::MAX as f64;
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += number * nanos_per;
        if !total.is_finite() || total >= GO_MAX_NANOS {
            return None;
        }
        rest = &rest[unit_end..];
    }
    Some(Duration::from_nanos(total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        for (input, expected) in [
            ("0", Some(Duration::ZERO)),
            ("0s", Some(Duration::ZERO)),
            ("12h", Some(Duration::from_secs(12 * 3600))),
            ("1h30m", Some(Duration::from_secs(5400))),
            ("1.5h", Some(Duration::from_secs(5400))),
            ("300ms", Some(Duration::from_millis(300))),
            ("2m3s", Some(Duration::from_secs(123))),
            // Go's largest duration is 2562047h47m16.854775807s.
            ("2562047h", Some(Duration::from_secs(2_562_047 * 3600))),
            ("2562048h", None),
            ("99999999999999999999h", None),
            (
                "999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999h",
                None,
            ),
            ("10", None),
            ("", None),
            ("-1h", None),
            ("5d", None),
            (".h", None),
        ] {
            assert_eq!(parse_go_duration(input), expected, "{input}");
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn config_loading_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(
            dir.path(),
            "good.yaml",
            r#"
apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: ecr-credential-provider
    matchImages: ["*.dkr.ecr.*.amazonaws.com", "*.dkr.ecr.*.amazonaws.com.cn"]
    defaultCacheDuration: "12h"
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    args: [get-credentials]
    env: [{name: AWS_PROFILE, value: temp}]
"#,
        );
        let providers = load_config(&good).unwrap();
        assert_eq!(providers.len(), 1);
        assert_eq!(
            providers[0].default_cache_duration,
            Duration::from_secs(12 * 3600)
        );
        assert_eq!(
            providers[0].env,
            [("AWS_PROFILE".to_string(), "temp".to_string())]
        );

        let cases = [
            (
                "kind: Other\napiVersion: kubelet.config.k8s.io/v1\nproviders: []",
                "expected kind CredentialProviderConfig",
            ),
            (
                "kind: CredentialProviderConfig\napiVersion: kubelet.config.k8s.io/v1\nproviders: []",
                "at least one provider",
            ),
            (
                "kind: CredentialProviderConfig\napiVersion: kubelet.config.k8s.io/v1\nproviders: [{name: a/b, matchImages: [x.io], defaultCacheDuration: 1h, apiVersion: credentialprovider.kubelet.k8s.io/v1}]",
                "must not contain '/'",
            ),
            (
                "kind: CredentialProviderConfig\napiVersion: kubelet.config.k8s.io/v1\nproviders: [{name: a, matchImages: [x.io], defaultCacheDuration: 1h, apiVersion: v2}]",
                "apiVersion `v2`",
            ),
            (
                "kind: CredentialProviderConfig\napiVersion: kubelet.config.k8s.io/v1\nproviders: [{name: a, matchImages: [], apiVersion: credentialprovider.kubelet.k8s.io/v1}]",
                "matchImages is required, defaultCacheDuration is required",
            ),
            (
                "kind: CredentialProviderConfig\napiVersion: kubelet.config.k8s.io/v1\nproviders: [{name: a, matchImages: ['x.io:abc'], defaultCacheDuration: 1h, apiVersion: credentialprovider.kubelet.k8s.io/v1}]",
                "not a valid URL",
            ),
            (
                "kind: CredentialProviderConfig\napiVersion: kubelet.config.k8s.io/v1\nproviders: [{name: a, matchImages: [x.io], defaultCacheDuration: 1h, apiVersion: credentialprovider.kubelet.k8s.io/v1}, {name: a, matchImages: [y.io], defaultCacheDuration: 1h, apiVersion: credentialprovider.kubelet.k8s.io/v1}]",
                "duplicate provider name `a`",
            ),
            (
                "kind: CredentialProviderConfig\napiVersion: kubelet.config.k8s.io/v1\nproviders: [{name: a, matchImages: [x.io], defaultCacheDuration: 1h, apiVersion: credentialprovider.kubelet.k8s.io/v1, typo: 1}]",
                "unknown field `typo`",
            ),
            (
                "kind: CredentialProviderConfig\napiVersion: kubelet.config.k8s.io/v1\nproviders: [{name: a, matchImages: [x.io], defaultCacheDuration: 1h, apiVersion: credentialprovider.kubelet.k8s.io/v1}]\n---\nkind: Other\n",
                "more than one YAML document",
            ),
            ("", "no YAML document"),
            ("kind: [unclosed", "invalid YAML"),
        ];
        for (yaml, expected) in cases {
            let path = write(dir.path(), "case.yaml", yaml);
            let err = load_config(&path).unwrap_err().to_string();
            assert!(err.contains(expected), "{yaml}\n=> {err}");
            assert!(err.contains("case.yaml"), "the error names the file: {err}");
        }
    }

    const TOKEN_PROVIDER: &str = "kind: CredentialProviderConfig\napiVersion: kubelet.config.k8s.io/v1\nproviders:\n  - name: acr\n    matchImages: [x.io]\n    defaultCacheDuration: 1h\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n";

    /// `tokenAttributes` is validated as the kubelet's `validateCredentialProviderConfig`: every
    /// problem named with its provider and field.
    #[test]
    fn token_attributes_are_validated_as_the_kubelet_does() {
        let dir = tempfile::tempdir().unwrap();
        let good = format!(
            "{TOKEN_PROVIDER}    tokenAttributes:\n      serviceAccountTokenAudience: registry.example\n      cacheType: Token\n      requireServiceAccount: true\n      requiredServiceAccountAnnotationKeys: [example.io/identity-id, Example.IO/Type]\n      optionalServiceAccountAnnotationKeys: [example.io/optional]\n"
        );
        let providers = load_config(&write(dir.path(), "good.yaml", &good)).unwrap();
        assert_eq!(
            providers[0].token_attributes,
            Some(TokenAttributes {
                audience: "registry.example".into(),
                cache_type: TokenCacheType::Token,
                require_service_account: true,
                required_annotation_keys: vec![
                    "example.io/identity-id".into(),
                    "Example.IO/Type".into()
                ],
                optional_annotation_keys: vec!["example.io/optional".into()],
            })
        );
        let minimal = format!(
            "{TOKEN_PROVIDER}    tokenAttributes: {{serviceAccountTokenAudience: a, cacheType: ServiceAccount, requireServiceAccount: false}}\n"
        );
        let providers = load_config(&write(dir.path(), "minimal.yaml", &minimal)).unwrap();
        let t = providers[0].token_attributes.as_ref().unwrap();
        assert_eq!(
            (t.cache_type, t.require_service_account),
            (TokenCacheType::ServiceAccount, false)
        );
        // Without tokenAttributes: none.
        let plain = load_config(&write(dir.path(), "plain.yaml", TOKEN_PROVIDER)).unwrap();
        assert_eq!(plain[0].token_attributes, None);

        let attrs = |body: &str| format!("{TOKEN_PROVIDER}    tokenAttributes: {{{body}}}\n");
        let base = "serviceAccountTokenAudience: a, cacheType: Token, requireServiceAccount: true";
        let cases: Vec<(String, &str)> = vec![
            (
                attrs("cacheType: Token, requireServiceAccount: true"),
                "tokenAttributes.serviceAccountTokenAudience is required",
            ),
            (
                attrs("serviceAccountTokenAudience: a, requireServiceAccount: true"),
                "tokenAttributes.cacheType is required to be set when tokenAttributes is specified. Supported values are: ServiceAccount, Token",
            ),
            (
                attrs(
                    "serviceAccountTokenAudience: a, cacheType: Pod, requireServiceAccount: true",
                ),
                "tokenAttributes.cacheType `Pod` is not supported: supported values are ServiceAccount, Token",
            ),
            (
                attrs("serviceAccountTokenAudience: a, cacheType: Token"),
                "tokenAttributes.requireServiceAccount is required",
            ),
            (
                attrs(
                    "serviceAccountTokenAudience: a, cacheType: Token, requireServiceAccount: false, requiredServiceAccountAnnotationKeys: [a.io/b]",
                ),
                "tokenAttributes.requiredServiceAccountAnnotationKeys: requireServiceAccount cannot be false when requiredServiceAccountAnnotationKeys is set",
            ),
            (
                attrs(&format!(
                    "{base}, requiredServiceAccountAnnotationKeys: [a.io/b, a.io/b]"
                )),
                "tokenAttributes.requiredServiceAccountAnnotationKeys: duplicate key `a.io/b`",
            ),
            (
                attrs(&format!(
                    "{base}, optionalServiceAccountAnnotationKeys: [c, c]"
                )),
                "tokenAttributes.optionalServiceAccountAnnotationKeys: duplicate key `c`",
            ),
            (
                attrs(&format!(
                    "{base}, requiredServiceAccountAnnotationKeys: [a.io/b, x], optionalServiceAccountAnnotationKeys: [x, a.io/b]"
                )),
                "tokenAttributes: annotation keys cannot be both required and optional: `a.io/b`, `x`",
            ),
            (
                attrs(&format!(
                    "{base}, requiredServiceAccountAnnotationKeys: ['a.io/b/c']"
                )),
                "`a.io/b/c`: a qualified name must consist of",
            ),
            (
                attrs(&format!(
                    "{base}, optionalServiceAccountAnnotationKeys: ['/b']"
                )),
                "`/b`: prefix part must be non-empty",
            ),
            (
                attrs(&format!(
                    "{base}, optionalServiceAccountAnnotationKeys: ['a.io/']"
                )),
                "`a.io/`: name part must be non-empty",
            ),
            (
                attrs(&format!(
                    "{base}, optionalServiceAccountAnnotationKeys: ['a_b.io/c']"
                )),
                "`a_b.io/c`: prefix part a lowercase RFC 1123 subdomain",
            ),
            (
                attrs(&format!(
                    "{base}, optionalServiceAccountAnnotationKeys: ['-x']"
                )),
                "`-x`: name part a qualified name must consist of",
            ),
            (
                attrs(&format!(
                    "{base}, optionalServiceAccountAnnotationKeys: ['{}']",
                    "n".repeat(64)
                )),
                "name part must be no more than 63 characters",
            ),
            (
                format!(
                    "{}    tokenAttributes: {{{base}}}\n",
                    TOKEN_PROVIDER.replace(
                        "apiVersion: credentialprovider.kubelet.k8s.io/v1\n",
                        "apiVersion: credentialprovider.kubelet.k8s.io/v1beta1\n"
                    )
                ),
                "tokenAttributes is only supported for credentialprovider.kubelet.k8s.io/v1 API version, not `credentialprovider.kubelet.k8s.io/v1beta1`",
            ),
        ];
        for (yaml, expected) in cases {
            let path = write(dir.path(), "case.yaml", &yaml);
            let err = load_config(&path).unwrap_err().to_string();
            assert!(err.contains(expected), "{yaml}\n=> {err}");
            assert!(
                err.contains("case.yaml: providers[0] (`acr`): "),
                "the error names the file and the provider: {err}"
            );
        }
        // A field the kubelet does not know: the file is refused (strict decoding), naming it.
        let path = write(dir.path(), "case.yaml", &attrs(&format!("{base}, typo: 1")));
        let err = load_config(&path).unwrap_err().to_string();
        assert!(
            err.contains("case.yaml") && err.contains("unknown field `typo`"),
            "{err}"
        );
        // Every problem at once.
        let path = write(dir.path(), "case.yaml", &attrs("cacheType: Nope"));
        let err = load_config(&path).unwrap_err().to_string();
        for expected in [
            "serviceAccountTokenAudience is required",
            "requireServiceAccount is required",
            "cacheType `Nope`",
        ] {
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn qualified_names_as_apimachinery() {
        for ok in ["a", "a.io/b", "example.com/My_Name-1", "1.2/x", "x.y"] {
            assert!(
                qualified_name_problems(ok).is_empty(),
                "{ok}: {:?}",
                qualified_name_problems(ok)
            );
        }
        for bad in [
            "", "a/b/c", "/a", "a/", "-a", "a-", "A.io/b", "a..b/c", "a b",
        ] {
            assert!(!qualified_name_problems(bad).is_empty(), "{bad}");
        }
    }

    /// A 1 MiB anchor referenced 1,000 times would build 1 GiB; the document is refused once it
    /// passes 16 MiB, and the error names the file.
    #[test]
    fn an_alias_bomb_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut yaml = format!(
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  - name: a\n    matchImages: [x.io]\n    defaultCacheDuration: 1h\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n    args:\n      - &big {}\n",
            "x".repeat(1 << 20)
        );
        for _ in 0..1000 {
            yaml.push_str("      - *big\n");
        }
        let path = write(dir.path(), "bomb.yaml", &yaml);
        let err = load_config(&path).unwrap_err().to_string();
        assert!(
            err.contains("bomb.yaml") && err.contains("expands to more than 16 MiB"),
            "{err}"
        );
        assert!(err.len() < 500, "the error does not quote the file: {err}");
    }
}
