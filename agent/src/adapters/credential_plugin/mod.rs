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
//! Service-account token mode (KEP-4412, a provider with `tokenAttributes`): as the kubelet, for
//! the pod rule's ServiceAccount, [`crate::decide::credentials::sa_token`] decides whether the
//! provider is invoked and with which annotations; the token comes from
//! [`ServiceAccountTokens`] (cluster mode: `adapters::kube::token_request`) and goes into the
//! request's `serviceAccountToken` only (stdin: never logged, scrubbed from the plugin's stderr
//! and from every message through the candidate's secret set); the answer is cached under the
//! `cacheKeyType` key plus the ServiceAccount part of the key (a keyed HMAC; with `cacheType:
//! Token` over the token too); an answer that echoes the token as a password is refused unless
//! `cacheType` is `Token`, as the kubelet does.
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
use crate::decide::audit::fingerprint::FingerprintKey;
use crate::decide::credentials::keyring::urls_match;
use crate::decide::credentials::sa_token::{self, Plan, TokenCacheType};
use crate::decide::credentials::{
    CredentialPlugins, Finding, KubeletResolver, NodeDockerConfig, PluginAnswer, PluginCredential,
    PluginFailure, PluginFailureSink, PodServiceAccount, ServiceAccountTokens,
};
use crate::model::inventory::ObjectKey;
use crate::model::verdict::Verdict;
use cache::{Cache, Lookup, Scope};
use exec::{RunFailure, RunFailureKind, run_plugin, stderr_excerpt};
use futures::future::BoxFuture;
use secrecy::{ExposeSecret as _, SecretString};
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
    /// Service-account token mode: the TokenRequest failed (`why` names the ServiceAccount and
    /// the API server's answer, never a token).
    #[error(
        "credential provider {name} for image {image}: not invoked: no token of ServiceAccount {account}: {why}"
    )]
    Token {
        name: String,
        image: String,
        account: ObjectKey,
        why: String,
    },
    /// Service-account token mode: the plugin answered the token it was given as a password,
    /// which the kubelet refuses unless `cacheType` is `Token`.
    #[error(
        "credential provider {name} for image {image}: answered the ServiceAccount token as a password, which the kubelet refuses with tokenAttributes.cacheType {cache_type} (only Token allows it)"
    )]
    TokenEchoed {
        name: String,
        image: String,
        cache_type: TokenCacheType,
    },
    #[error("cannot draw a random key for the credential provider cache: {0}")]
    Random(std::io::Error),
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
    kubelet_resolver_with(args, cancel, failures, None)
}

/// [`kubelet_resolver`] with `tokens` for the providers in service-account token mode (one-shot
/// commands reading the cluster).
pub fn kubelet_resolver_with_tokens(
    args: &NodeCredentialArgs,
    tokens: Option<Arc<dyn ServiceAccountTokens>>,
) -> Result<KubeletResolver, PluginError> {
    kubelet_resolver_with(args, CancellationToken::new(), None, tokens)
}

/// Whether the configured providers (if any) include one in service-account token mode: then the
/// cluster source also watches the ServiceAccount of each PullSet with its own
/// `imagePullSecrets`, which the pod rule alone would not read.
pub fn uses_service_account_tokens(args: &NodeCredentialArgs) -> Result<bool, PluginError> {
    match &args.image_credential_provider_config {
        Some(config) => Ok(load_config(config)?
            .iter()
            .any(|p| p.token_attributes.is_some())),
        None => Ok(false),
    }
}

/// The resolver of [`kubelet_resolver_reporting`], its providers in service-account token mode
/// given their tokens by `tokens` (cluster mode; `None`: they run as standalone mode allows).
pub fn kubelet_resolver_with(
    args: &NodeCredentialArgs,
    cancel: CancellationToken,
    failures: Option<PluginFailureSink>,
    tokens: Option<Arc<dyn ServiceAccountTokens>>,
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
            .with_failures(failures)
            .with_tokens(tokens);
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
    /// ServiceAccount tokens for the providers in service-account token mode (cluster mode).
    tokens: Option<Arc<dyn ServiceAccountTokens>>,
    /// Keys the ServiceAccount part of cache keys (a token among it): drawn for this process.
    cache_key: FingerprintKey,
}

/// What one provider is run with: the ServiceAccount token and annotations of service-account
/// token mode, and the ServiceAccount part of its cache key (empty otherwise).
#[derive(Default)]
struct Run {
    token: Option<SecretString>,
    annotations: BTreeMap<String, String>,
    account_key: String,
    cache_type: Option<TokenCacheType>,
}

/// What the providers gave for one image: credentials in config order, the error of each
/// provider that failed, and the notes of those in service-account token mode (not invoked, or
/// invoked without a token).
#[derive(Debug, Default)]
pub struct Provided {
    pub credentials: Vec<PluginCredential>,
    pub errors: Vec<PluginError>,
    pub notes: Vec<Finding>,
}

/// 32 bytes from the kernel's CSPRNG: the per-process key of the cache keys.
fn draw_cache_key() -> std::io::Result<FingerprintKey> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(FingerprintKey::from_bytes(bytes))
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
            tokens: None,
            cache_key: draw_cache_key().map_err(PluginError::Random)?,
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

    /// The providers in service-account token mode get their tokens from `tokens` (cluster
    /// mode); without, those that require a ServiceAccount are not invoked and say so.
    pub fn with_tokens(mut self, tokens: Option<Arc<dyn ServiceAccountTokens>>) -> Self {
        self.tokens = tokens;
        self
    }

    /// Whether any provider runs in service-account token mode.
    pub fn uses_service_account_tokens(&self) -> bool {
        self.providers.iter().any(|p| p.token_attributes.is_some())
    }

    /// Credentials of every provider that applies to `image` (`registry/repository`), in config
    /// order, and the error of each provider that failed, for a pull without a ServiceAccount.
    pub async fn provide(&self, image: &str) -> (Vec<PluginCredential>, Vec<PluginError>) {
        let provided = self.provide_as(image, &PodServiceAccount::None).await;
        (provided.credentials, provided.errors)
    }

    /// Credentials of every provider that applies to `image` for a pull as `service_account`.
    pub async fn provide_as(&self, image: &str, service_account: &PodServiceAccount) -> Provided {
        let mut provided = Provided::default();
        for provider in &self.providers {
            if !provider.match_images.iter().any(|m| urls_match(m, image)) {
                continue;
            }
            let run = match self
                .run_for(provider, image, service_account, &mut provided.notes)
                .await
            {
                Ok(Some(run)) => run,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "credential provider not run; pulling without its credentials");
                    provided.errors.push(e);
                    continue;
                }
            };
            match self.provide_one(provider, image, &run).await {
                Ok(c) => provided.credentials.extend(c),
                Err(e) => {
                    if matches!(
                        e,
                        PluginError::Backoff { .. } | PluginError::Cancelled { .. }
                    ) {
                        tracing::debug!(error = %e, "credential provider not run; pulling without its credentials");
                    } else {
                        tracing::warn!(error = %e, "credential provider failed; pulling without its credentials");
                    }
                    provided.errors.push(e);
                }
            }
        }
        provided
    }

    /// What `provider` runs with for a pull as `service_account`: `None` when the kubelet would
    /// not invoke it (the note pushed), an error when its token cannot be had.
    async fn run_for(
        &self,
        provider: &ProviderConfig,
        image: &str,
        service_account: &PodServiceAccount,
        notes: &mut Vec<Finding>,
    ) -> Result<Option<Run>, PluginError> {
        let Some(attributes) = &provider.token_attributes else {
            return Ok(Some(Run::default()));
        };
        let tokens = self.tokens.as_ref();
        match sa_token::plan(
            &provider.name,
            attributes,
            service_account,
            tokens.is_some(),
        ) {
            Plan::NotInvoked(note) => {
                tracing::debug!(%note, %image, "credential provider not invoked");
                notes.push(Finding {
                    verdict: Verdict::NoCredentials,
                    message: note,
                });
                Ok(None)
            }
            Plan::WithoutToken { note } => {
                notes.extend(note.map(|message| Finding {
                    verdict: Verdict::Ok,
                    message,
                }));
                Ok(Some(Run::default()))
            }
            Plan::WithToken {
                account,
                uid,
                annotations,
            } => {
                let Some(tokens) = tokens else {
                    // `plan` gives a token only when there is a source of them.
                    return Ok(None);
                };
                let token = tokens
                    .token(&account, &uid, &attributes.audience)
                    .await
                    .map_err(|why| PluginError::Token {
                        name: provider.name.clone(),
                        image: image.to_string(),
                        account: account.clone(),
                        why,
                    })?;
                let account_key = sa_token::account_cache_key(
                    &self.cache_key,
                    attributes.cache_type,
                    &account,
                    &uid,
                    &annotations,
                    &token,
                );
                Ok(Some(Run {
                    token: Some(token),
                    annotations,
                    account_key,
                    cache_type: Some(attributes.cache_type),
                }))
            }
        }
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
        run: &Run,
    ) -> Option<Result<Vec<PluginCredential>, PluginError>> {
        match self
            .cache()
            .lookup_as(&provider.name, image, &run.account_key, Instant::now())
        {
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
        run: &Run,
    ) -> Result<Vec<PluginCredential>, PluginError> {
        if let Some(done) = self.cached(provider, image, run) {
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
        if let Some(done) = self.cached(provider, image, run) {
            return done;
        }
        match self.fetch(provider, image, run).await {
            Ok((key, duration, credentials)) => {
                self.cache().answered_as(
                    &provider.name,
                    image,
                    &run.account_key,
                    key,
                    duration,
                    credentials.clone(),
                    Instant::now(),
                );
                Ok(credentials)
            }
            Err(e @ PluginError::Cancelled { .. }) => Err(e),
            Err(e) => {
                let delay = self.cache().failed_as(
                    &provider.name,
                    image,
                    &run.account_key,
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
        run: &Run,
    ) -> Result<(String, Duration, Vec<PluginCredential>), PluginError> {
        let response = self.exec(provider, image, run).await?;
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
                tokens: run.token.iter().cloned().collect(),
            })
            .collect();
        if let (Some(token), Some(cache_type)) = (&run.token, run.cache_type)
            && sa_token::echoes_token(cache_type, token, credentials.iter().map(|c| &c.password))
        {
            return Err(PluginError::TokenEchoed {
                name: provider.name.clone(),
                image: image.to_string(),
                cache_type,
            });
        }
        Ok((key, duration, credentials))
    }

    async fn exec(
        &self,
        provider: &ProviderConfig,
        image: &str,
        run: &Run,
    ) -> Result<Response, PluginError> {
        let path = self.bin_dir.join(&provider.name);
        let mut request = serde_json::json!({
            "kind": "CredentialProviderRequest",
            "apiVersion": provider.api_version,
            "image": image,
        });
        // As the kubelet's v1 request: both fields omitted when empty.
        if let Some(token) = &run.token {
            request["serviceAccountToken"] = serde_json::Value::from(token.expose_secret());
        }
        if !run.annotations.is_empty() {
            request["serviceAccountAnnotations"] = serde_json::json!(run.annotations);
        }
        // The request may hold a token: it goes to the plugin's stdin only, never to a log.
        let stdin = format!("{request}\n").into_bytes();
        drop(request);
        let mut command = tokio::process::Command::new(&path);
        command
            .args(&provider.args)
            .envs(provider.env.iter().map(|(k, v)| (k, v)));
        let output = run_plugin(command, stdin, self.timeout, &self.cancel).await;
        let (stderr, result) = match output {
            Ok(output) => (output.stderr.clone(), Ok(output)),
            Err(RunFailure { stderr, kind }) => (stderr, Err(kind)),
        };
        // The configured env may hold a secret the plugin echoes; its answer's passwords and
        // the ServiceAccount token it was given too.
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
            .chain(run.token.iter().cloned())
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
    fn credentials<'a>(
        &'a self,
        repository: &'a str,
        service_account: &'a PodServiceAccount,
    ) -> BoxFuture<'a, PluginAnswer> {
        Box::pin(async move {
            let provided = self.provide_as(repository, service_account).await;
            PluginAnswer {
                credentials: provided.credentials,
                failures: provided.errors.iter().map(ToString::to_string).collect(),
                notes: provided.notes,
            }
        })
    }
}
