//! Kubelet credential-provider exec plugins (`credentialprovider.kubelet.k8s.io/v1`), configured
//! with the kubelet's own file format and flags (`--image-credential-provider-config`,
//! `--image-credential-provider-bin-dir`).
//!
//! As the kubelet does: a provider applies when one of its `matchImages` matches the image
//! (`registry/repository`, keyring glob rules); its binary `BIN_DIR/NAME` runs with the configured
//! `args`, the agent's environment plus the configured `env`, a `CredentialProviderRequest` on stdin
//! and a one-minute timeout; the response must carry the configured `apiVersion` and kind
//! `CredentialProviderResponse`; it is cached per `cacheKeyType` (`Image`: the repository,
//! `Registry`: the host, `Global`) for `cacheDuration`, else `defaultCacheDuration` (0: not cached),
//! at most a day. The `auth` keys of every applicable provider go into one keyring with the usual
//! key rules. A failing plugin yields no credentials (the kubelet logs and pulls without them) and
//! a finding.
//!
//! Unlike the kubelet, a failure is cached too, with a capped, jittered backoff, and is the answer
//! until it elapses ([`cache`]); a timeout holds for every image of the provider, so that a pass
//! of 10,000 images behind a hung plugin waits out one timeout, not 10,000. Waiting for a plugin
//! (or for the provider's turn: one exec at a time per provider) ends at once when the agent shuts
//! down ([`CredentialProviders::with_cancel`]), and the plugin is killed.
//!
//! [`CredentialProviders`] implements the resolver's [`CredentialPlugins`] trait; [`kubelet_resolver`]
//! builds the node's resolver (its Docker config file and these plugins) from the flags, for
//! `pullgate run` and the one-shot commands alike. This is the only module that runs a process:
//! [`config`] (the config file), [`exec`] (one run), [`cache`], [`reaper`] (what plugins leave
//! behind).
//!
//! Bounds on a plugin (see [`exec`]): stdout and stderr are read as they come, at most
//! [`OUTPUT_CAP`] bytes each; a plugin that writes more is killed and its error says which stream,
//! never what it wrote. Each plugin runs in its own process group; when it times out, writes too
//! much or is cancelled, the whole group gets `SIGKILL` before the plugin is reaped (so the group's
//! id is still the plugin's), then the plugin is reaped: no grandchild it started survives it, even
//! one still holding its stdout (one that left the group with `setsid`/`setpgid` is its own
//! business, as is one a plugin that exited by itself left behind, as with the kubelet). In
//! `pullgate run` the agent is a child subreaper and reaps every such orphan once it exits
//! ([`reaper`]). A plugin's stderr goes to the agent's log only, as a short excerpt scrubbed of
//! the provider's configured `env` values and of the passwords it answered; never into an error,
//! which ends up in the PullSet's outcome.

pub mod cache;
pub mod config;
mod exec;
pub mod reaper;

pub use config::{ProviderConfig, load_config, parse_go_duration};
pub use exec::OUTPUT_CAP;

use crate::cli::NodeCredentialArgs;
use crate::decide::credentials::keyring::urls_match;
use crate::decide::credentials::{
    CredentialPlugins, KubeletResolver, NodeDockerConfig, PluginAnswer, PluginCredential,
    PluginFailure, PluginFailureSink,
};
use cache::{Cache, Lookup, Scope};
use exec::{RunFailure, RunFailureKind, run_plugin, stderr_excerpt};
use futures::future::BoxFuture;
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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
    /// A failure still in its backoff: the provider is not run; `last` is that failure's message.
    #[error(
        "credential provider {name} for image {image}: not run for another {}s after a failure: {last}",
        retry_in.as_secs().max(1)
    )]
    Backoff {
        name: String,
        image: String,
        last: String,
        retry_in: Duration,
    },
    #[error("credential provider {name} for image {image}: not run (the agent is shutting down)")]
    Cancelled { name: String, image: String },
}

impl PluginError {
    /// Where a failure holds while it backs off: one that says nothing about the image (the
    /// plugin hung, or cannot start) holds for the whole provider.
    fn scope(&self) -> Scope {
        match self {
            PluginError::Timeout { .. } | PluginError::Spawn { .. } => Scope::Provider,
            _ => Scope::Image,
        }
    }
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

/// The kubelet-compatible resolver with the node's own credentials, as the flags configure them:
/// the node's Docker config file, then the credential-provider plugins (their config is loaded and
/// their binaries checked now, as the kubelet does at start-up).
pub fn kubelet_resolver(args: &NodeCredentialArgs) -> Result<KubeletResolver, PluginError> {
    kubelet_resolver_until(args, CancellationToken::new())
}

/// [`kubelet_resolver`] whose plugin runs end (the plugin killed) when `cancel` is cancelled: for
/// `pullgate run`, with the token its signals cancel.
pub fn kubelet_resolver_until(
    args: &NodeCredentialArgs,
    cancel: CancellationToken,
) -> Result<KubeletResolver, PluginError> {
    kubelet_resolver_reporting(args, cancel, None)
}

/// [`kubelet_resolver_until`] that also tells `failures` of every plugin run that failed (the
/// daemon turns them into Events on the Node).
pub fn kubelet_resolver_reporting(
    args: &NodeCredentialArgs,
    cancel: CancellationToken,
    failures: Option<PluginFailureSink>,
) -> Result<KubeletResolver, PluginError> {
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
            )?
            .with_cancel(cancel)
            .with_failures(failures);
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
    cache: std::sync::Mutex<Cache>,
    /// One exec at a time per provider (the kubelet uses singleflight per image).
    running: HashMap<String, tokio::sync::Mutex<()>>,
    /// Ends every wait for a plugin, and the plugin.
    cancel: CancellationToken,
    /// Told of every plugin run that failed (not of cached failures, nor of cancellations).
    failures: Option<PluginFailureSink>,
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
            cache: std::sync::Mutex::new(Cache::default()),
            running,
            cancel: CancellationToken::new(),
            failures: None,
        })
    }

    /// Every plugin run that fails is also told to `failures`, with its scrubbed stderr excerpt.
    pub fn with_failures(mut self, failures: Option<PluginFailureSink>) -> Self {
        self.failures = failures;
        self
    }

    /// Once `cancel` is cancelled, no plugin is started and every wait for one ends at once, its
    /// plugin killed, with [`PluginError::Cancelled`] (never cached).
    pub fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
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
                    if matches!(
                        e,
                        PluginError::Backoff { .. } | PluginError::Cancelled { .. }
                    ) {
                        tracing::debug!(error = %e, "credential provider not run; pulling without its credentials");
                    } else {
                        tracing::warn!(error = %e, "credential provider failed; pulling without its credentials");
                    }
                    errors.push(e);
                }
            }
        }
        (credentials, errors)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached answer, or the cached failure still backing off; `None`: run the provider.
    fn cached(
        &self,
        provider: &ProviderConfig,
        image: &str,
    ) -> Option<Result<Vec<PluginCredential>, PluginError>> {
        match self.cache().lookup(&provider.name, image, Instant::now()) {
            Lookup::Hit(credentials) => Some(Ok(credentials)),
            Lookup::Failing { last, retry_in } => Some(Err(PluginError::Backoff {
                name: provider.name.clone(),
                image: image.to_string(),
                last,
                retry_in,
            })),
            Lookup::Miss => None,
        }
    }

    fn cancelled(provider: &ProviderConfig, image: &str) -> PluginError {
        PluginError::Cancelled {
            name: provider.name.clone(),
            image: image.to_string(),
        }
    }

    async fn provide_one(
        &self,
        provider: &ProviderConfig,
        image: &str,
    ) -> Result<Vec<PluginCredential>, PluginError> {
        if let Some(done) = self.cached(provider, image) {
            return done;
        }
        if self.cancel.is_cancelled() {
            return Err(Self::cancelled(provider, image));
        }
        let _turn = match self.running.get(&provider.name) {
            Some(lock) => tokio::select! {
                () = self.cancel.cancelled() => return Err(Self::cancelled(provider, image)),
                turn = lock.lock() => Some(turn),
            },
            None => None,
        };
        // The run before ours may have answered, or failed for every image.
        if let Some(done) = self.cached(provider, image) {
            return done;
        }
        match self.fetch(provider, image).await {
            Ok((key, duration, credentials)) => {
                self.cache().answered(
                    &provider.name,
                    image,
                    key,
                    duration,
                    credentials.clone(),
                    Instant::now(),
                );
                Ok(credentials)
            }
            Err(e @ PluginError::Cancelled { .. }) => Err(e),
            Err(e) => {
                let delay = self.cache().failed(
                    &provider.name,
                    image,
                    e.scope(),
                    e.to_string(),
                    Instant::now(),
                );
                tracing::debug!(provider = %provider.name, %image, scope = ?e.scope(), retry_in = ?delay, "credential provider failure cached");
                Err(e)
            }
        }
    }

    /// One run of the provider for `image`: its answer's cache key, duration and credentials.
    async fn fetch(
        &self,
        provider: &ProviderConfig,
        image: &str,
    ) -> Result<(String, Duration, Vec<PluginCredential>), PluginError> {
        let response = self.exec(provider, image).await?;
        let err_bad = || PluginError::BadResponse {
            name: provider.name.clone(),
            image: image.to_string(),
        };
        let key = cache::cache_key(&response.cache_key_type, image).ok_or_else(err_bad)?;
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
        Ok((key, duration, credentials))
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
        let output = run_plugin(
            command,
            format!("{request}\n").into_bytes(),
            self.timeout,
            &self.cancel,
        )
        .await;
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
        let answer = self.interpret(provider, image, &path, result);
        if let (Err(e), Some(failures)) = (&answer, &self.failures)
            && !matches!(e, PluginError::Cancelled { .. })
        {
            failures(PluginFailure {
                provider: provider.name.clone(),
                error: e.to_string(),
                stderr: excerpt,
            });
        }
        answer
    }

    /// What one plugin run's result means: its response, or the error that names what failed.
    fn interpret(
        &self,
        provider: &ProviderConfig,
        image: &str,
        path: &Path,
        result: Result<exec::PluginOutput, RunFailureKind>,
    ) -> Result<Response, PluginError> {
        let output = result.map_err(|kind| match kind {
            RunFailureKind::Spawn(source) => PluginError::Spawn {
                name: provider.name.clone(),
                image: image.to_string(),
                path: path.to_path_buf(),
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
            RunFailureKind::Cancelled => Self::cancelled(provider, image),
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
