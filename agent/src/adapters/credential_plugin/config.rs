//! The kubelet's `CredentialProviderConfig` file (or directory of files), validated as the kubelet
//! validates it, and Go's duration syntax. YAML goes through the one bound on what a document may
//! build ([`crate::adapters::files::yaml_bound`]), so aliases cannot blow a small file up.

use super::PluginError;
use crate::adapters::files::manifests::MAX_FILE_BYTES;
use crate::adapters::files::yaml_bound::{Expansion, MAX_DOCUMENT_EXPANDED_BYTES};
use crate::decide::credentials::keyring::SchemelessUrl;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

const CONFIG_GROUP: &str = "kubelet.config.k8s.io";
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
    /// Service-account token mode (behind a kubelet feature gate): not supported.
    #[serde(default)]
    token_attributes: Option<serde_json::Value>,
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
            match validate_provider(p) {
                Ok(Some(p)) => providers.push(p),
                Ok(None) => {}
                Err(e) => problems.push(format!("{}: providers[{i}]: {e}", file.display())),
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

fn validate_provider(p: ProviderFile) -> Result<Option<ProviderConfig>, String> {
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
    if !problems.is_empty() {
        return Err(problems.join(", "));
    }
    if p.token_attributes.is_some() {
        tracing::warn!(provider = %p.name, "tokenAttributes (service-account token mode) is not supported; provider skipped");
        return Ok(None);
    }
    Ok(Some(ProviderConfig {
        name: p.name,
        match_images: p.match_images,
        default_cache_duration,
        api_version: p.api_version,
        args: p.args,
        env: p.env.into_iter().map(|e| (e.name, e.value)).collect(),
    }))
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
