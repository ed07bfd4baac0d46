//! Kubelet credential-provider exec plugins (`credentialprovider.kubelet.k8s.io/v1`), configured
//! with the kubelet's own file format and flags (`--image-credential-provider-config`,
//! `--image-credential-provider-bin-dir`).
//!
//! As the kubelet does: a provider applies when one of its `matchImages` matches the image
//! (`registry/repository`, keyring glob rules); its binary `BIN_DIR/NAME` runs with the configured
//! `args`, the agent's environment plus the configured `env`, a `CredentialProviderRequest` on stdin
//! and a one-minute timeout; the response must carry the configured `apiVersion` and kind
//! `CredentialProviderResponse`; it is cached per `cacheKeyType` (`Image`: the repository,
//! `Registry`: the host, `Global`) for `cacheDuration`, else `defaultCacheDuration` (0: not cached).
//! The `auth` keys of every applicable provider go into one keyring with the usual key rules. A
//! failing plugin yields no credentials (the kubelet logs and pulls without them) and a finding.
//!
//! [`CredentialProviders`] implements the resolver's [`CredentialPlugins`] trait; [`kubelet_resolver`]
//! builds the node's resolver (its Docker config file and these plugins) from the flags, for
//! `pullgate run` and the one-shot commands alike. This is the only module that runs a process.
//!
//! Bounds on a plugin (see [`run_plugin`]): stdout and stderr are read as they come, at most
//! [`OUTPUT_CAP`] bytes each; a plugin that writes more is killed and its error says which stream,
//! never what it wrote. Each plugin runs in its own process group; when it times out or writes too
//! much, the whole group gets `SIGKILL` before the plugin is reaped (so the group's id is still
//! the plugin's), then the plugin is reaped: no grandchild it started survives it, even one still
//! holding its stdout (one that left the group with `setsid`/`setpgid` is its own business, as is
//! one a plugin that exited by itself left behind, as with the kubelet). A plugin's stderr goes to
//! the agent's log only, as a short excerpt scrubbed of the provider's configured `env` values and
//! of the passwords it answered; never into an error, which ends up in the PullSet's outcome.

use crate::cli::NodeCredentialArgs;
use crate::decide::credentials::keyring::{SchemelessUrl, urls_match};
use crate::decide::credentials::{
    CredentialPlugins, KubeletResolver, NodeDockerConfig, PluginAnswer, PluginCredential,
};
use futures::future::BoxFuture;
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};

const CONFIG_GROUP: &str = "kubelet.config.k8s.io";
const PLUGIN_API_VERSIONS: [&str; 3] = [
    "credentialprovider.kubelet.k8s.io/v1",
    "credentialprovider.kubelet.k8s.io/v1beta1",
    "credentialprovider.kubelet.k8s.io/v1alpha1",
];
const GLOBAL_CACHE_KEY: &str = "<global>";
/// The most a plugin may write to stdout, and to stderr (a credential response is a few KiB).
pub const OUTPUT_CAP: usize = 1 << 20;
/// The most of a plugin's stderr that goes into the agent's log, in characters.
const STDERR_EXCERPT_CHARS: usize = 300;

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(
        "--image-credential-provider-bin-dir is required with --image-credential-provider-config"
    )]
    NoBinDir,
    #[error("credential provider config {}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("credential provider bin dir {}: {source}", path.display())]
    BinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("credential provider plugin binary {} does not exist", path.display())]
    MissingBinary { path: PathBuf },
    #[error("credential provider {name} for image {image}: cannot start {}: {source}", path.display())]
    Spawn {
        name: String,
        image: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("credential provider {name} for image {image}: timed out after {}", humantime::format_duration(*after))]
    Timeout {
        name: String,
        image: String,
        after: Duration,
    },
    /// What the plugin wrote to stderr is in the agent's log, not here: this message reaches the
    /// PullSet's outcome.
    #[error(
        "credential provider {name} for image {image}: exited with {status} (its stderr, if any, is in the agent's log)"
    )]
    Exit {
        name: String,
        image: String,
        status: String,
    },
    #[error(
        "credential provider {name} for image {image}: plugin {name} wrote more than 1 MiB to {stream}; killed"
    )]
    TooMuchOutput {
        name: String,
        image: String,
        stream: &'static str,
    },
    #[error(
        "credential provider {name} for image {image}: error decoding the response from stdout"
    )]
    BadResponse { name: String, image: String },
    #[error(
        "credential provider {name} for image {image}: response apiVersion `{actual}` does not match the configured `{expected}`"
    )]
    WrongApiVersion {
        name: String,
        image: String,
        expected: String,
        actual: String,
    },
}

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
        let text = std::fs::read_to_string(&file)
            .map_err(|e| config_error(format!("{}: {e}", file.display())))?;
        let parsed: ConfigFile = serde_yaml::from_str(&text)
            .map_err(|e| config_error(format!("{}: {e}", file.display())))?;
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

/// Go's `time.ParseDuration` for non-negative values: `300ms`, `1.5h`, `2h45m`, `0`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
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
        rest = &rest[unit_end..];
    }
    Some(Duration::from_nanos(total as u64))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Response {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    kind: String,
    cache_key_type: String,
    #[serde(default)]
    cache_duration: Option<String>,
    #[serde(default)]
    auth: BTreeMap<String, ResponseAuth>,
    /// v1 field for service-account mode; accepted and unused.
    #[serde(default, rename = "serviceAccountTokenCacheType")]
    _sa_cache_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseAuth {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

#[derive(Clone)]
struct Cached {
    expires: Instant,
    credentials: Vec<PluginCredential>,
}

/// The kubelet-compatible resolver with the node's own credentials, as the flags configure them:
/// the node's Docker config file, then the credential-provider plugins (their config is loaded and
/// their binaries checked now, as the kubelet does at start-up).
pub fn kubelet_resolver(args: &NodeCredentialArgs) -> Result<KubeletResolver, PluginError> {
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
                .ok_or(PluginError::NoBinDir)?;
            let providers = CredentialProviders::new(
                load_config(config)?,
                bin_dir,
                **credential_provider_timeout,
            )?;
            Some(Arc::new(providers) as Arc<dyn CredentialPlugins>)
        }
        None => None,
    };
    Ok(KubeletResolver::new(
        node_docker_config.clone().map(|path| {
            Arc::new(crate::adapters::files::docker_config::NodeDockerConfigFile::new(path))
                as Arc<dyn NodeDockerConfig>
        }),
        plugins,
    ))
}

/// The configured providers, their binaries and their response cache.
pub struct CredentialProviders {
    providers: Vec<ProviderConfig>,
    bin_dir: PathBuf,
    timeout: Duration,
    cache: std::sync::Mutex<HashMap<(String, String), Cached>>,
    /// One exec at a time per provider (the kubelet uses singleflight per image).
    running: HashMap<String, tokio::sync::Mutex<()>>,
}

impl CredentialProviders {
    /// Checks that the bin dir and every provider's binary exist, as the kubelet does at start-up.
    pub fn new(
        providers: Vec<ProviderConfig>,
        bin_dir: &Path,
        timeout: Duration,
    ) -> Result<Self, PluginError> {
        std::fs::metadata(bin_dir).map_err(|source| PluginError::BinDir {
            path: bin_dir.to_path_buf(),
            source,
        })?;
        for p in &providers {
            let path = bin_dir.join(&p.name);
            if !path.is_file() {
                return Err(PluginError::MissingBinary { path });
            }
        }
        let running = providers
            .iter()
            .map(|p| (p.name.clone(), tokio::sync::Mutex::new(())))
            .collect();
        Ok(Self {
            providers,
            bin_dir: bin_dir.to_path_buf(),
            timeout,
            cache: std::sync::Mutex::new(HashMap::new()),
            running,
        })
    }

    /// Credentials of every provider that applies to `image` (`registry/repository`), in config
    /// order, and the error of each provider that failed.
    pub async fn provide(&self, image: &str) -> (Vec<PluginCredential>, Vec<PluginError>) {
        let mut credentials = Vec::new();
        let mut errors = Vec::new();
        for provider in &self.providers {
            if !provider.match_images.iter().any(|m| urls_match(m, image)) {
                continue;
            }
            match self.provide_one(provider, image).await {
                Ok(c) => credentials.extend(c),
                Err(e) => {
                    tracing::warn!(error = %e, "credential provider failed; pulling without its credentials");
                    errors.push(e);
                }
            }
        }
        (credentials, errors)
    }

    fn cached(&self, provider: &str, image: &str) -> Option<Vec<PluginCredential>> {
        let cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let registry = image.split('/').next().unwrap_or(image);
        [image, registry, GLOBAL_CACHE_KEY]
            .iter()
            .filter_map(|k| cache.get(&(provider.to_string(), (*k).to_string())))
            .find(|c| Instant::now() < c.expires)
            .map(|c| c.credentials.clone())
    }

    async fn provide_one(
        &self,
        provider: &ProviderConfig,
        image: &str,
    ) -> Result<Vec<PluginCredential>, PluginError> {
        if let Some(hit) = self.cached(&provider.name, image) {
            return Ok(hit);
        }
        let _turn = match self.running.get(&provider.name) {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        if let Some(hit) = self.cached(&provider.name, image) {
            return Ok(hit);
        }
        let response = self.exec(provider, image).await?;
        let err_bad = || PluginError::BadResponse {
            name: provider.name.clone(),
            image: image.to_string(),
        };
        let cache_key = match response.cache_key_type.as_str() {
            "Image" => image.to_string(),
            "Registry" => image.split('/').next().unwrap_or(image).to_string(),
            "Global" => GLOBAL_CACHE_KEY.to_string(),
            _ => return Err(err_bad()),
        };
        let duration = match response.cache_duration.as_deref() {
            Some(d) => parse_go_duration(d).ok_or_else(err_bad)?,
            None => provider.default_cache_duration,
        };
        let credentials: Vec<PluginCredential> = response
            .auth
            .into_iter()
            .map(|(key, auth)| PluginCredential {
                provider: provider.name.clone(),
                key,
                username: auth.username,
                password: SecretString::from(auth.password),
            })
            .collect();
        if !duration.is_zero() {
            self.cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(
                    (provider.name.clone(), cache_key),
                    Cached {
                        expires: Instant::now() + duration,
                        credentials: credentials.clone(),
                    },
                );
        }
        Ok(credentials)
    }

    async fn exec(&self, provider: &ProviderConfig, image: &str) -> Result<Response, PluginError> {
        let path = self.bin_dir.join(&provider.name);
        let request = serde_json::json!({
            "kind": "CredentialProviderRequest",
            "apiVersion": provider.api_version,
            "image": image,
        });
        let mut command = tokio::process::Command::new(&path);
        command
            .args(&provider.args)
            .envs(provider.env.iter().map(|(k, v)| (k, v)));
        let output = run_plugin(command, format!("{request}\n").into_bytes(), self.timeout).await;
        let (stderr, result) = match output {
            Ok(output) => (output.stderr.clone(), Ok(output)),
            Err(RunFailure { stderr, kind }) => (stderr, Err(kind)),
        };
        // The configured env may hold a secret the plugin echoes; its answer's passwords too.
        let answered: Vec<String> = result
            .as_ref()
            .ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .and_then(|v| v.get("auth")?.as_object().cloned())
            .into_iter()
            .flatten()
            .filter_map(|(_, a)| Some(a.get("password")?.as_str()?.to_string()))
            .collect();
        let secrets: Vec<SecretString> = provider
            .env
            .iter()
            .map(|(_, v)| v.clone())
            .chain(answered)
            .map(SecretString::from)
            .collect();
        let excerpt = stderr_excerpt(&stderr, &secrets);
        let failed = !result.as_ref().is_ok_and(|o| o.status.success());
        if !excerpt.is_empty() {
            if failed {
                tracing::warn!(provider = %provider.name, %image, stderr = %excerpt, "credential provider plugin stderr");
            } else {
                tracing::debug!(provider = %provider.name, %image, stderr = %excerpt, "credential provider plugin stderr");
            }
        }
        let output = result.map_err(|kind| match kind {
            RunFailureKind::Spawn(source) => PluginError::Spawn {
                name: provider.name.clone(),
                image: image.to_string(),
                path: path.clone(),
                source,
            },
            RunFailureKind::Timeout => PluginError::Timeout {
                name: provider.name.clone(),
                image: image.to_string(),
                after: self.timeout,
            },
            RunFailureKind::TooMuchOutput(stream) => PluginError::TooMuchOutput {
                name: provider.name.clone(),
                image: image.to_string(),
                stream,
            },
        })?;
        if !output.status.success() {
            return Err(PluginError::Exit {
                name: provider.name.clone(),
                image: image.to_string(),
                status: output.status.to_string(),
            });
        }
        let value: serde_json::Value =
            serde_json::from_slice(&output.stdout).map_err(|_| PluginError::BadResponse {
                name: provider.name.clone(),
                image: image.to_string(),
            })?;
        let actual = value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        if actual != provider.api_version {
            return Err(PluginError::WrongApiVersion {
                name: provider.name.clone(),
                image: image.to_string(),
                expected: provider.api_version.clone(),
                actual,
            });
        }
        let response: Response =
            serde_json::from_value(value).map_err(|_| PluginError::BadResponse {
                name: provider.name.clone(),
                image: image.to_string(),
            })?;
        if response.kind != "CredentialProviderResponse" {
            return Err(PluginError::BadResponse {
                name: provider.name.clone(),
                image: image.to_string(),
            });
        }
        Ok(response)
    }
}

/// What a plugin run produced.
struct PluginOutput {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// A plugin run that did not finish on its own, with what the plugin wrote to stderr by then.
struct RunFailure {
    stderr: Vec<u8>,
    kind: RunFailureKind,
}

enum RunFailureKind {
    /// Could not start, feed or wait for the process.
    Spawn(std::io::Error),
    Timeout,
    /// `stdout` or `stderr`: more than [`OUTPUT_CAP`] bytes.
    TooMuchOutput(&'static str),
}

/// Runs a plugin in its own process group: writes `stdin`, reads stdout and stderr up to
/// [`OUTPUT_CAP`] each, and waits for it to exit, all within `timeout`. When it times out or writes
/// too much (or this future is dropped), its process group is killed while the plugin is not yet
/// reaped, then the plugin is reaped.
async fn run_plugin(
    mut command: tokio::process::Command,
    stdin: Vec<u8>,
    timeout: Duration,
) -> Result<PluginOutput, RunFailure> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| RunFailure {
            stderr: Vec::new(),
            kind: RunFailureKind::Spawn(e),
        })?;
    // Its own group's id is its pid (`process_group(0)`); `id()` is `Some` until it is reaped.
    let mut group = GroupKill(child.id().and_then(|id| libc::pid_t::try_from(id).ok()));
    let stdin_pipe = child.stdin.take();
    let stdout_pipe = child.stdout.take();
    let stderr_pipe = child.stderr.take();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let talk = async {
        if let Some(mut pipe) = stdin_pipe {
            // A plugin that does not read its stdin is its own business; its answer still counts.
            let _ = pipe.write_all(&stdin).await;
            // Dropped here: the plugin sees the end of its input.
        }
        // To the end of both pipes first: a grandchild still holding one keeps the plugin
        // unfinished (and killable as a group) until the deadline.
        tokio::try_join!(
            read_capped(stdout_pipe, "stdout", &mut stdout),
            read_capped(stderr_pipe, "stderr", &mut stderr),
        )?;
        child.wait().await.map_err(RunFailureKind::Spawn)
    };
    let outcome = match tokio::time::timeout(timeout, talk).await {
        Ok(Ok(status)) => {
            // Reaped: its pid, hence the group's id, may be reused now. Nothing more to kill.
            group.0 = None;
            Ok(status)
        }
        Ok(Err(kind)) => Err(kind),
        Err(_) => Err(RunFailureKind::Timeout),
    };
    let status = match outcome {
        Ok(status) => status,
        Err(kind) => {
            // Not reaped yet (its `wait` did not complete), so the group's id is still its own.
            group.kill();
            // In case the plugin left its own group.
            let _ = child.start_kill();
            let _ = child.wait().await;
            group.0 = None;
            return Err(RunFailure { stderr, kind });
        }
    };
    Ok(PluginOutput {
        status,
        stdout,
        stderr,
    })
}

/// Reads `pipe` to its end into `buf`, as it comes, but never more than [`OUTPUT_CAP`] bytes.
async fn read_capped(
    pipe: Option<impl AsyncRead + Unpin>,
    stream: &'static str,
    buf: &mut Vec<u8>,
) -> Result<(), RunFailureKind> {
    let Some(pipe) = pipe else { return Ok(()) };
    // One byte over the cap tells an overflow from an answer of exactly the cap.
    pipe.take(OUTPUT_CAP as u64 + 1)
        .read_to_end(buf)
        .await
        .map_err(RunFailureKind::Spawn)?;
    if buf.len() > OUTPUT_CAP {
        buf.truncate(OUTPUT_CAP);
        return Err(RunFailureKind::TooMuchOutput(stream));
    }
    Ok(())
}

/// Kills the process group of a plugin that is not reaped yet, when asked or when dropped (the
/// plugin's future cancelled); `None` once the plugin is reaped, as its pid may then be reused.
struct GroupKill(Option<libc::pid_t>);

impl GroupKill {
    fn kill(&self) {
        let Some(pgid) = self.0.filter(|p| *p > 1) else {
            return;
        };
        // std and tokio can signal one process, not a group. ESRCH (no member left) is fine.
        #[allow(unsafe_code)]
        // SAFETY: kill(2) touches no memory; -pgid names the group of our child, which is not
        // reaped yet (so no other group can have that id) and is never 0 or 1 (filtered above).
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A short, single-line excerpt of a plugin's stderr for the agent's log: lossy UTF-8, control
/// characters as spaces, at most [`STDERR_EXCERPT_CHARS`] characters, every `secrets` value (of 4
/// characters or more) replaced. Empty when the plugin wrote nothing but whitespace.
fn stderr_excerpt(stderr: &[u8], secrets: &[SecretString]) -> String {
    // Scrubbed before it is cut, so that no secret survives in part at the cut.
    let text: String = String::from_utf8_lossy(stderr)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let scrubbed = crate::decide::secret_scrub::scrub(text.trim(), secrets);
    let mut excerpt: String = scrubbed.chars().take(STDERR_EXCERPT_CHARS).collect();
    if excerpt.len() < scrubbed.len() {
        excerpt.push('…');
    }
    excerpt
}

impl CredentialPlugins for CredentialProviders {
    fn credentials<'a>(&'a self, repository: &'a str) -> BoxFuture<'a, PluginAnswer> {
        Box::pin(async move {
            let (credentials, errors) = self.provide(repository).await;
            PluginAnswer {
                credentials,
                failures: errors.iter().map(ToString::to_string).collect(),
            }
        })
    }
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
            ("10", None),
            ("", None),
            ("-1h", None),
            ("5d", None),
        ] {
            assert_eq!(parse_go_duration(input), expected, "{input}");
        }
    }

    #[test]
    fn stderr_excerpts_are_short_single_line_and_scrubbed() {
        let secrets = [
            SecretString::from("env-Token-1234"),
            SecretString::from("abc"),
        ];
        let long = "x".repeat(1000);
        for (input, expected) in [
            ("", String::new()),
            ("  \n\t ", String::new()),
            (
                "token env-Token-1234 refused\nretry\x1b[31m",
                "token [REDACTED] refused retry [31m".to_string(),
            ),
            (
                "abc is too short to scrub",
                "abc is too short to scrub".into(),
            ),
            (long.as_str(), format!("{}…", "x".repeat(300))),
        ] {
            assert_eq!(
                stderr_excerpt(input.as_bytes(), &secrets),
                expected,
                "{input:?}"
            );
        }
        // Invalid UTF-8 and a secret at the cut: lossy, and no part of the secret survives.
        let mut bytes = vec![0xff];
        bytes.extend("y".repeat(295).bytes());
        bytes.extend(b"env-Token-1234");
        let excerpt = stderr_excerpt(&bytes, &secrets);
        assert!(excerpt.starts_with('\u{fffd}'), "{excerpt}");
        assert!(!excerpt.contains("env-T"), "{excerpt}");
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
        ];
        for (yaml, expected) in cases {
            let path = write(dir.path(), "case.yaml", yaml);
            let err = load_config(&path).unwrap_err().to_string();
            assert!(err.contains(expected), "{yaml}\n=> {err}");
        }
    }
}
