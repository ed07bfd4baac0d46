//! Registry-direct adapter: the only module that knows `reqwest`.
//!
//! A canary talks to the registry as a clean-cache pull would, never touching the node's image
//! store: [`auth`] runs the authentication (Basic, or the distribution token flow with the
//! registry's token service), then [`session`] makes the requests, with limits a daemon needs: a
//! manifest larger than 4 MiB, a token answer larger than 1 MiB, a redirect loop, a stalled or slow
//! server, a plain-HTTP token realm for an HTTPS registry are errors with a verdict, not hangs,
//! unbounded memory or a request sent; and every probe has one overall deadline
//! (`--canary-timeout`). What a registry or a realm sends back is shown only as its distribution
//! error code and a short cleaned message ([`body`]).
//!
//! Hosts: a probe walks the hosts containerd uses for the registry (its `hosts.toml`, in order,
//! by capability), a [`Session`] per host, by containerd's fall-through and error rule
//! (`decide::canary::hosts_walk`): the node's answer is the first host that serves it, or the
//! error containerd reports when none does; the hosts after it are asked at `manifest` depth, so
//! that an upstream refusing what a mirror serves is reported ([`RegistryClient::probe_walk`]).
//!
//! Depths: `manifest` sends `HEAD` for the manifest (for an index, also for the node's
//! platform's, whose digest it reads from the index body); `blobs` also reads the manifest and
//! sends `HEAD` for the config and every layer; `full` downloads every blob, streaming, and
//! verifies size and sha256 — nothing is written to disk — within a byte budget per probe
//! (`--max-canary-bytes`): a blob over what is left of it is checked by `HEAD` only, with a
//! warning.
//!
//! No quota spent where none is needed: registries (Docker Hub first) meter manifest `GET`s, not
//! `HEAD`s. A body addressed by digest is fetched once and kept in the client's
//! [`ManifestCache`] (shared by every probe of the process); a later probe `HEAD`s the manifest
//! (with its credential: the cache proves nothing about who may read) and reads the body from
//! the cache. A tag is resolved by its `HEAD` every time (tags move): the `Docker-Content-Digest`
//! it names now picks the body, cached by that digest or fetched by it, as containerd's content
//! store does; a tag's name is never a cache key. A registry that answers `HEAD` with 405, or a
//! tag's `HEAD` without `Docker-Content-Digest`, gets a `GET`, as containerd does.

mod auth;
mod body;
#[cfg(test)]
mod loopback_tests;
mod session;
mod tls;
#[cfg(test)]
mod walk_tests;

use crate::adapters::containerd_config::RuntimeRegistry;
use crate::decide::canary::hosts_walk::{self, HostAttempt, NodeAnswer, RequestKind};
use crate::decide::canary::manifest_cache::{self, ManifestCache};
use crate::decide::canary::runner::Walk;
use crate::decide::canary::warning::{CanaryWarning, HostVerdict};
use crate::decide::registry_hosts::{self, Dialect, Host, TlsSettings};
use crate::model::image_ref::ImageRef;
use crate::model::pullset::CanaryDepth;
use crate::model::verdict::Verdict;
use secrecy::SecretString;
use serde::Deserialize;
use session::Session;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// An `os/architecture[/variant]` platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of this host, in OCI names.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        Self {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: None,
        }
    }
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Self {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Self {
                    os: os.to_string(),
                    architecture: arch.to_string(),
                    variant: Some(variant.to_string()),
                })
            }
            _ => Err(format!(
                "invalid platform `{s}`: expected os/arch[/variant], e.g. linux/amd64"
            )),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The default of [`RegistryConfig::min_blob_rate`]: 256 KiB/s (a 1 GiB layer may take 68 min).
pub const MIN_BLOB_RATE: u64 = 256 * 1024;

/// How long a blob of `size` bytes may take to download: `base`, plus its size at `rate`.
pub fn blob_deadline(base: Duration, size: u64, rate: u64) -> Duration {
    base.saturating_add(Duration::from_secs(size / rate.max(1)))
}

/// The default of [`RegistryConfig::canary_timeout`] (`--canary-timeout`).
pub const CANARY_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// The default of [`RegistryConfig::max_canary_bytes`] (`--max-canary-bytes`): 1 GiB.
pub const MAX_CANARY_BYTES: u64 = 1 << 30;

/// A number of bytes, as flags spell it: `1073741824`, `512MiB`, `1GiB`, `2TiB` (also `KiB`; `k`,
/// `M`, `G`, `T` and `KB`, `MB`, `GB`, `TB` as their binary units, which is what they mean for
/// image sizes here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteCount(pub u64);

impl FromStr for ByteCount {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let shift = match unit.trim() {
            "" | "B" => 0,
            "k" | "K" | "KB" | "KiB" => 10,
            "M" | "MB" | "MiB" => 20,
            "G" | "GB" | "GiB" => 30,
            "T" | "TB" | "TiB" => 40,
            _ => {
                return Err(format!(
                    "invalid size `{s}`: expected bytes, or a number with KiB, MiB, GiB or TiB"
                ));
            }
        };
        let n: u64 = digits.parse().map_err(|_| {
            format!("invalid size `{s}`: expected bytes, or a number with KiB, MiB, GiB or TiB")
        })?;
        n.checked_mul(1u64 << shift)
            .map(ByteCount)
            .ok_or_else(|| format!("invalid size `{s}`: too large"))
    }
}

/// Limits and transport settings.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Registries (`host[:port]`) reached over plain HTTP.
    pub plain_http: Vec<String>,
    pub max_manifest_bytes: usize,
    /// Longest wait for any read (a stalled server fails after this).
    pub read_timeout: Duration,
    /// Longest time for a whole manifest or `HEAD` request (a trickling server fails after this).
    pub request_timeout: Duration,
    /// The slowest average rate a `full` canary accepts for a blob: each download must end within
    /// `request_timeout` plus the blob's size at this rate (a registry that trickles fails after it).
    pub min_blob_rate: u64,
    pub connect_timeout: Duration,
    pub max_redirects: usize,
    pub platform: Platform,
    /// The deadline of one probe, from its first request to its last byte: a registry or token
    /// service that never answers, or a manifest of very many blobs, ends there.
    pub canary_timeout: Duration,
    /// The most bytes one `full` probe downloads (manifests included); a blob over what is left is
    /// checked by `HEAD` only.
    pub max_canary_bytes: u64,
    /// PEM certificates trusted besides the built-in roots (`--registry-ca-file`).
    pub extra_roots: Vec<reqwest::Certificate>,
    /// containerd's registry configuration (`--runtime-registry-config`, or the `config_path`
    /// the runtime reported): each registry is reached as its `hosts.toml` says, else as
    /// containerd's defaults say (no roots: the defaults for every registry).
    pub runtime_registry: RuntimeRegistry,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            plain_http: Vec::new(),
            max_manifest_bytes: 4 << 20,
            read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            min_blob_rate: MIN_BLOB_RATE,
            connect_timeout: Duration::from_secs(10),
            max_redirects: 5,
            platform: Platform::host(),
            canary_timeout: CANARY_TIMEOUT,
            max_canary_bytes: MAX_CANARY_BYTES,
            extra_roots: Vec::new(),
            runtime_registry: RuntimeRegistry {
                roots: Vec::new(),
                dialect: Dialect::V2,
                legacy: None,
            },
        }
    }
}

/// What a successful probe saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Probe {
    /// Digest of the manifest for this node's platform.
    pub manifest_digest: String,
    /// Config and layers checked (`blobs`, `full`).
    pub blobs: usize,
    /// Bytes downloaded and verified (`full`), plus manifests.
    pub bytes: u64,
    /// HTTP requests sent to the registry (the auth flow's included).
    pub requests: u32,
    /// What the canary should say besides its verdict (a blob over the byte budget).
    pub warnings: Vec<CanaryWarning>,
}

/// Why a probe failed; never carries a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("{what}: HTTP {status}{}: {message}", code.as_ref().map(|c| format!(" {c}")).unwrap_or_default())]
    Status {
        what: String,
        status: u16,
        code: Option<String>,
        message: String,
    },
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("{what}: {cause}")]
    Transport { what: String, cause: String },
    #[error("{what}: larger than the {limit}-byte limit")]
    TooLarge { what: String, limit: usize },
    #[error("{what}: more than {limit} redirects (a redirect loop?)")]
    Redirects { what: String, limit: usize },
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{what}: {message}")]
    BadManifest { what: String, message: String },
    #[error("the index has no manifest for platform {platform}")]
    NoPlatform { platform: String },
    #[error(
        "registry {registry} is reached over HTTPS but names a plain-HTTP token realm ({realm}): refused, no request sent to it"
    )]
    InsecureRealm { registry: String, realm: String },
    #[error(
        "registry {registry}: the canary did not finish within {} (stopped during {during}; see --canary-timeout)",
        humantime::format_duration(*limit)
    )]
    CanaryTimeout {
        registry: String,
        limit: Duration,
        during: String,
    },
    #[error(
        "registry {registry}: no host in the runtime's configuration has the {capabilities} capabilities (containerd: no resolve hosts: not found)"
    )]
    NoHost {
        registry: String,
        capabilities: &'static str,
    },
    #[error("--registry-ca-file {}: {cause}", path.display())]
    CaFile { path: PathBuf, cause: String },
    #[error("hosts.toml `{setting}` {}: {cause}", path.display())]
    TlsFile {
        setting: &'static str,
        path: PathBuf,
        cause: String,
    },
    #[error("{what}: TLS with {host} failed: {} ({cause}); {}", failure.what(), failure.fix())]
    Tls {
        what: String,
        host: String,
        failure: tls::TlsFailure,
        cause: String,
    },
}

impl RegistryError {
    /// The verdict this failure means.
    pub fn verdict(&self) -> Verdict {
        match self {
            RegistryError::Status { status, code, .. } => classify_status(*status, code.as_deref()),
            RegistryError::Auth(_) => Verdict::Unauthorized,
            RegistryError::Transport { .. }
            | RegistryError::Tls { .. }
            | RegistryError::Redirects { .. }
            | RegistryError::CanaryTimeout { .. } => Verdict::Network,
            RegistryError::DigestMismatch { .. } | RegistryError::SizeMismatch { .. } => {
                Verdict::DigestMismatch
            }
            RegistryError::NoPlatform { .. } | RegistryError::NoHost { .. } => Verdict::NotFound,
            RegistryError::TooLarge { .. }
            | RegistryError::BadManifest { .. }
            | RegistryError::InsecureRealm { .. }
            | RegistryError::CaFile { .. }
            | RegistryError::TlsFile { .. } => Verdict::RuntimeError,
        }
    }
}

/// A registry's answer, by HTTP status and distribution error code.
pub fn classify_status(status: u16, code: Option<&str>) -> Verdict {
    match (status, code) {
        (_, Some("TOOMANYREQUESTS")) | (429, _) => Verdict::RateLimited,
        (_, Some("UNAUTHORIZED" | "DENIED")) | (401 | 403, _) => Verdict::Unauthorized,
        (_, Some("MANIFEST_UNKNOWN" | "NAME_UNKNOWN" | "BLOB_UNKNOWN")) | (404, _) => {
            Verdict::NotFound
        }
        (500..=599, _) => Verdict::Network,
        _ => Verdict::RuntimeError,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    manifests: Option<Vec<IndexEntry>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

#[derive(Deserialize)]
struct IndexEntry {
    digest: String,
    #[serde(default)]
    platform: Option<IndexPlatform>,
}

#[derive(Deserialize)]
struct IndexPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize, Clone)]
struct Descriptor {
    digest: String,
    size: u64,
}

/// Probes registries directly.
#[derive(Clone)]
pub struct RegistryClient {
    config: RegistryConfig,
    /// The client of the built-in roots (and `--registry-ca-file`), no client certificate.
    http: reqwest::Client,
    /// A client per host TLS setting of the runtime's configuration.
    clients: std::sync::Arc<tls::Clients>,
    /// Manifest bodies by digest, for every probe of this client and its clones.
    manifests: std::sync::Arc<std::sync::Mutex<ManifestCache>>,
}

/// Where one host's probe sends its requests: that host as containerd reaches it.
pub(crate) struct Route {
    pub origin: String,
    /// The API root (`/v2`, or what `server` / `override_path` say).
    pub path: String,
    pub host: String,
    pub plain_http: bool,
    /// HTTPS first; plain HTTP when the answer is not TLS.
    pub http_fallback: bool,
    pub http: reqwest::Client,
    /// `header` of the hosts.toml, marked sensitive.
    pub headers: reqwest::header::HeaderMap,
    /// The same values, to scrub from anything a registry echoes (one may be a credential).
    pub header_secrets: Vec<SecretString>,
}

/// A credential for one probe.
#[derive(Clone, Copy)]
pub struct ProbeAuth<'a> {
    pub username: &'a str,
    pub password: &'a SecretString,
}

impl RegistryClient {
    pub fn new(config: RegistryConfig) -> Result<Self, RegistryError> {
        let http = build_client(&config, None)?;
        let manifests = ManifestCache::new(manifest_cache::Bounds {
            body_bytes: config.max_manifest_bytes,
            ..manifest_cache::Bounds::default()
        });
        Ok(Self {
            config,
            http,
            clients: std::sync::Arc::default(),
            manifests: std::sync::Arc::new(std::sync::Mutex::new(manifests)),
        })
    }

    /// The cached body of the manifest `digest` names.
    fn cached_manifest(&self, digest: &str) -> Option<std::sync::Arc<[u8]>> {
        self.manifests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(digest)
    }

    /// Keeps `body` as the manifest `digest` names, once it hashes to it (a tag is never kept).
    fn remember_manifest(&self, digest: &str, body: &[u8]) {
        let kept = self
            .manifests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(digest, body);
        if let Err(why) = kept {
            tracing::debug!(%why, "manifest body not cached");
        }
    }

    /// The same client reaching registries as this containerd configuration says.
    pub fn with_runtime_registry(mut self, runtime_registry: RuntimeRegistry) -> Self {
        self.config.runtime_registry = runtime_registry;
        self
    }

    /// The client the registry flags describe (`--insecure-registry`, `--platform`,
    /// `--registry-timeout`, `--canary-timeout`, `--max-canary-bytes`, `--registry-ca-file`), for
    /// `pullgate run` and the one-shot commands alike.
    pub fn from_args(args: &crate::cli::RegistryArgs) -> Result<Self, RegistryError> {
        let extra_roots = match &args.registry_ca_file {
            Some(path) => read_roots(path)?,
            None => Vec::new(),
        };
        Self::new(RegistryConfig {
            plain_http: args.insecure_registries.clone(),
            platform: args.platform.clone().unwrap_or_else(Platform::host),
            request_timeout: *args.registry_timeout,
            canary_timeout: *args.canary_timeout,
            max_canary_bytes: args.max_canary_bytes.0,
            extra_roots,
            runtime_registry: RuntimeRegistry {
                roots: args.runtime_registry_config.iter().cloned().collect(),
                dialect: Dialect::V2,
                legacy: None,
            },
            ..RegistryConfig::default()
        })
    }

    fn plain_http(&self, registry: &str) -> bool {
        self.config.plain_http.iter().any(|h| h == registry)
    }

    /// The hosts this probe walks for `registry`, in containerd's order
    /// (`decide::registry_hosts`): the runtime's configuration, or its defaults; with
    /// `--insecure-registry` the registry's own entries are replaced by the registry itself over
    /// plain HTTP (its mirrors stay in front of it).
    fn hosts(&self, registry: &str) -> Vec<Host> {
        let (mut hosts, problem) = self.config.runtime_registry.hosts(registry);
        if let Some(problem) = problem {
            let problem = crate::model::printable::printable_line(&problem.to_string());
            tracing::warn!(%registry, %problem, "the runtime's registry configuration is not used as written; containerd falls back the same way");
        }
        if hosts.is_empty() {
            hosts = registry_hosts::resolve(registry, None, Dialect::V2).unwrap_or_default();
        }
        if self.plain_http(registry) {
            let own = if registry == crate::model::image_ref::DOCKER_HUB {
                "registry-1.docker.io".to_string()
            } else {
                registry.to_string()
            };
            let upstream = hosts.last().map(|h| (h.scheme, h.host.clone()));
            hosts.retain(|h| Some((h.scheme, h.host.clone())) != upstream);
            hosts.push(Host {
                scheme: registry_hosts::Scheme::Http,
                host: own,
                path: "/v2".into(),
                capabilities: registry_hosts::Capabilities::ALL,
                tls: TlsSettings::default(),
                http_fallback: false,
                header: Vec::new(),
            });
        }
        hosts
    }

    fn route_to(&self, host: &Host) -> Result<Route, RegistryError> {
        let http = if host.tls == TlsSettings::default() {
            self.http.clone()
        } else {
            self.clients
                .get(&host.tls, |files| build_client(&self.config, Some(files)))?
        };
        let mut headers = reqwest::header::HeaderMap::new();
        let mut header_secrets = Vec::new();
        for (name, values) in &host.header {
            let Ok(name) = reqwest::header::HeaderName::from_bytes(name.as_bytes()) else {
                tracing::warn!(header = %crate::model::printable::printable_line(name), "hosts.toml `header`: not a valid header name, not sent");
                continue;
            };
            for value in values {
                header_secrets.push(SecretString::from(value.0.clone()));
                if let Ok(mut v) = reqwest::header::HeaderValue::from_str(&value.0) {
                    v.set_sensitive(true);
                    headers.append(name.clone(), v);
                }
            }
        }
        Ok(Route {
            origin: host.origin(),
            path: host.path.trim_end_matches('/').to_string(),
            host: host.host.clone(),
            plain_http: host.scheme == registry_hosts::Scheme::Http,
            http_fallback: host.http_fallback,
            http,
            headers,
            header_secrets,
        })
    }

    /// Probes `image` at `depth` with `auth` (or anonymously), within the canary's deadline: past
    /// it, the probe stops and says what it was doing. The node's answer; [`Self::probe_walk`]
    /// also says which hosts answered how.
    pub async fn probe(
        &self,
        image: &ImageRef,
        auth: Option<ProbeAuth<'_>>,
        depth: CanaryDepth,
    ) -> Result<Probe, RegistryError> {
        self.probe_walk(image, auth, depth).await.0
    }

    /// Walks the hosts containerd would use for `image`, in its order and by its rule
    /// (`decide::canary::hosts_walk`), a [`Session`] per host (each with its own
    /// authentication), all within one canary deadline. The node's answer is the first host that
    /// serves the probe, or the error containerd reports when none does; the hosts after the one
    /// that answered are probed too, at `manifest` depth, so that an upstream refusing what a
    /// mirror serves is told. An endpoint (origin and API root) is asked once: containerd asks a
    /// second entry for it again (a `[host]` table and the `server` naming the same URL), and
    /// would get the same answer but when the two entries' TLS settings differ.
    pub async fn probe_walk(
        &self,
        image: &ImageRef,
        auth: Option<ProbeAuth<'_>>,
        depth: CanaryDepth,
    ) -> (Result<Probe, RegistryError>, Walk) {
        let registry = image.registry.as_str();
        let hosts = self.hosts(registry);
        let kind = if image.digest.is_some() {
            RequestKind::ByDigest
        } else {
            RequestKind::ByTag
        };
        let order = hosts_walk::candidates(&hosts, kind);
        if order.is_empty() {
            let e = RegistryError::NoHost {
                registry: registry.to_string(),
                capabilities: match kind {
                    RequestKind::ByTag => "pull and resolve",
                    RequestKind::ByDigest => "pull",
                },
            };
            return (Err(e), Walk::default());
        }
        let limit = self.config.canary_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        let mut results: Vec<(String, Result<Probe, RegistryError>)> = Vec::new();
        let mut attempts: Vec<HostAttempt> = Vec::new();
        let mut requests = 0u32;
        let mut answered = false;
        let mut tried: Vec<(String, String)> = Vec::new();
        for i in order {
            let host = &hosts[i];
            let endpoint = (host.origin(), host.path.clone());
            if tried.contains(&endpoint) {
                continue;
            }
            tried.push(endpoint);
            let depth = if answered {
                CanaryDepth::Manifest
            } else {
                depth
            };
            let result = self.probe_host(image, host, auth, depth, deadline).await;
            requests = requests.saturating_add(match &result {
                Ok(p) => p.requests,
                Err((_, sent)) => *sent,
            });
            let result = result.map_err(|(e, _)| e);
            let attempt = attempt_of(&result);
            // Past the deadline, or a failure that ends containerd's walk: no further host.
            let mut stop = matches!(result, Err(RegistryError::CanaryTimeout { .. }));
            if !answered {
                attempts.push(attempt);
                if attempt == HostAttempt::Answered {
                    answered = true;
                } else {
                    stop |= !hosts_walk::falls_through(attempt);
                }
            }
            results.push((host.host.clone(), result));
            if stop {
                break;
            }
        }
        let node = match hosts_walk::node_answer(self.config.runtime_registry.dialect, &attempts) {
            NodeAnswer::Answered(i) | NodeAnswer::Failed(i) => i,
            // `order` is not empty, so a host was tried.
            NodeAnswer::NoHost => 0,
        };
        let walk = Walk {
            hosts: results
                .iter()
                .map(|(host, r)| HostVerdict {
                    host: host.clone(),
                    verdict: r
                        .as_ref()
                        .map_or_else(RegistryError::verdict, |_| Verdict::Ok),
                    message: r
                        .as_ref()
                        .err()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                })
                .collect(),
            node: Some(node),
        };
        let result = match results.into_iter().nth(node) {
            Some((_, Ok(mut probe))) => {
                probe.requests = requests;
                Ok(probe)
            }
            Some((_, Err(e))) => Err(e),
            None => Err(RegistryError::NoHost {
                registry: registry.to_string(),
                capabilities: "pull",
            }),
        };
        (result, walk)
    }

    /// One host's probe, until `deadline`: the probe, or the error and the requests sent.
    async fn probe_host(
        &self,
        image: &ImageRef,
        host: &Host,
        auth: Option<ProbeAuth<'_>>,
        depth: CanaryDepth,
        deadline: tokio::time::Instant,
    ) -> Result<Probe, (RegistryError, u32)> {
        let registry = image.registry.as_str();
        let route = self.route_to(host).map_err(|e| (e, 0))?;
        let mut session = Session {
            client: self,
            registry: registry.to_string(),
            base: format!("{}{}/{}", route.origin, route.path, image.repository),
            route,
            authorization: None,
            token: None,
            stage: "the start".into(),
            probe: Probe::default(),
        };
        let result = tokio::time::timeout_at(deadline, session.run(image, auth, depth)).await;
        match result {
            Ok(Ok(())) => Ok(session.probe),
            Ok(Err(e)) => Err((e, session.probe.requests)),
            Err(_) => Err((
                RegistryError::CanaryTimeout {
                    registry: registry.to_string(),
                    limit: self.config.canary_timeout,
                    during: session.stage,
                },
                session.probe.requests,
            )),
        }
    }
}

/// How one host's probe ended, in containerd's terms (`decide::canary::hosts_walk`).
fn attempt_of(result: &Result<Probe, RegistryError>) -> HostAttempt {
    match result {
        Ok(_) => HostAttempt::Answered,
        Err(e) => match e {
            // A 401 after the credential was sent is containerd's `ErrInvalidAuthorization`.
            RegistryError::Status { status: 401, .. } | RegistryError::Auth(_) => {
                HostAttempt::TransportOrAuth
            }
            RegistryError::Status { status: 404, .. } => HostAttempt::NotFound,
            RegistryError::Status { status, .. } => HostAttempt::Status(*status),
            RegistryError::Transport { .. }
            | RegistryError::Tls { .. }
            | RegistryError::Redirects { .. }
            | RegistryError::InsecureRealm { .. }
            | RegistryError::CanaryTimeout { .. } => HostAttempt::TransportOrAuth,
            RegistryError::TooLarge { .. } => HostAttempt::TooLarge,
            RegistryError::DigestMismatch { .. }
            | RegistryError::SizeMismatch { .. }
            | RegistryError::BadManifest { .. }
            | RegistryError::NoPlatform { .. }
            | RegistryError::CaFile { .. }
            | RegistryError::TlsFile { .. }
            | RegistryError::NoHost { .. } => HostAttempt::Final,
        },
    }
}

impl Session<'_> {
    async fn run(
        &mut self,
        image: &ImageRef,
        auth: Option<ProbeAuth<'_>>,
        depth: CanaryDepth,
    ) -> Result<(), RegistryError> {
        self.authenticate(&image.repository, auth).await?;

        let reference = match (&image.digest, &image.tag) {
            (Some(d), _) => d.clone(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        };
        let (mut manifest_digest, mut manifest) = self
            .resolve(&reference, image.digest.as_deref(), depth)
            .await?;
        if let Some(entries) = manifest.as_ref().and_then(|m| m.manifests.as_ref()) {
            let platform = &self.client.config.platform;
            let chosen = entries
                .iter()
                .find(|e| {
                    e.platform.as_ref().is_some_and(|p| {
                        p.os == platform.os
                            && p.architecture == platform.architecture
                            && (platform.variant.is_none() || p.variant == platform.variant)
                    })
                })
                .ok_or_else(|| RegistryError::NoPlatform {
                    platform: platform.to_string(),
                })?;
            let chosen_digest = chosen.digest.clone();
            (manifest_digest, manifest) = self
                .resolve(&chosen_digest, Some(&chosen_digest), depth)
                .await?;
        }
        self.probe.manifest_digest.clone_from(&manifest_digest);
        let Some(manifest) = manifest else {
            // `manifest` depth, an image manifest by its media type: the `HEAD` proved it.
            return Ok(());
        };
        if manifest.schema_version == Some(1) {
            return Err(RegistryError::BadManifest {
                what: format!("manifest {reference}"),
                message: "schema 1 manifests are not supported by current runtimes".into(),
            });
        }
        let (Some(config), Some(layers)) = (manifest.config, manifest.layers) else {
            return Err(RegistryError::BadManifest {
                what: format!("manifest {manifest_digest}"),
                message: "no config or layers".into(),
            });
        };
        let blobs: Vec<Descriptor> = std::iter::once(config).chain(layers).collect();
        match depth {
            CanaryDepth::Manifest => {}
            CanaryDepth::Blobs => {
                for blob in &blobs {
                    self.head_blob(blob).await?;
                }
            }
            CanaryDepth::Full => self.download_blobs(&blobs).await?,
        }
        Ok(())
    }

    /// One manifest, `reference` (`expected` its digest when it is one): its digest, and its
    /// parsed body unless `depth` needs none — a `manifest`-depth probe of a manifest that says
    /// by its media type that it is an image's, not an index, stops at the `HEAD`.
    async fn resolve(
        &mut self,
        reference: &str,
        expected: Option<&str>,
        depth: CanaryDepth,
    ) -> Result<(String, Option<Manifest>), RegistryError> {
        let want_body = depth != CanaryDepth::Manifest;
        let fetched = self.fetch(reference, expected, want_body).await?;
        let body = match fetched.body {
            Some(body) => body,
            None if fetched.media_type.as_deref().is_some_and(is_image_manifest) => {
                return Ok((fetched.digest, None));
            }
            // An index, or a media type that does not say: the body tells.
            None => self.body_of(&fetched.digest).await?,
        };
        Ok((fetched.digest, Some(parse_manifest(reference, &body)?)))
    }

    /// The requests for one manifest, as containerd's resolver and content store make them
    /// (`core/remotes/docker/resolver.go`, `fetcher.go`): the `HEAD` of the reference (this
    /// credential may read it, it exists, and — for a tag — the digest it names now, from
    /// `Docker-Content-Digest`), then, when `want_body`, the body of THAT digest: cached, else
    /// a `GET` by digest, verified and cached. A tag moved since the last probe names a new
    /// digest, whose body is fetched: a tag is never answered from the cache by its name. A
    /// digest-pinned reference whose body is wanted and not cached gets the `GET` alone (it
    /// proves what the `HEAD` would). Where a `HEAD` is not enough (see
    /// [`Session::head_manifest`]: a 405, a tag without the header), the `GET` of the reference.
    async fn fetch(
        &mut self,
        reference: &str,
        expected: Option<&str>,
        want_body: bool,
    ) -> Result<Fetched, RegistryError> {
        if want_body
            && let Some(digest) = expected
            && self.client.cached_manifest(digest).is_none()
        {
            return self.get_manifest(reference, expected).await;
        }
        let Some(head) = self.head_manifest(reference, expected).await? else {
            return self.get_manifest(reference, expected).await;
        };
        let body = if want_body {
            Some(self.body_of(&head.digest).await?)
        } else {
            None
        };
        Ok(Fetched { body, ..head })
    }

    /// The body of the manifest `digest` names, whose `HEAD` was answered: cached, else fetched
    /// by digest (verified, then cached).
    async fn body_of(&mut self, digest: &str) -> Result<std::sync::Arc<[u8]>, RegistryError> {
        if let Some(body) = self.client.cached_manifest(digest) {
            return Ok(body);
        }
        let fetched = self.get_manifest(digest, Some(digest)).await?;
        // `get_manifest` always reads the body.
        Ok(fetched
            .body
            .unwrap_or_else(|| std::sync::Arc::from(&[][..])))
    }

    /// `GET` a manifest (verified against `expected`), kept in the cache when addressed by
    /// digest.
    async fn get_manifest(
        &mut self,
        reference: &str,
        expected: Option<&str>,
    ) -> Result<Fetched, RegistryError> {
        let got = self.manifest(reference, expected).await?;
        if let Some(digest) = expected {
            self.client.remember_manifest(digest, &got.bytes);
        }
        Ok(Fetched {
            digest: got.digest,
            media_type: got.media_type,
            body: Some(std::sync::Arc::from(got.bytes)),
        })
    }
}

/// What the requests for one manifest told.
struct Fetched {
    digest: String,
    /// `Content-Type`, without parameters.
    media_type: Option<String>,
    body: Option<std::sync::Arc<[u8]>>,
}

/// Whether `media_type` names an image manifest (not an index, not schema 1).
fn is_image_manifest(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/vnd.oci.image.manifest.v1+json"
            | "application/vnd.docker.distribution.manifest.v2+json"
    )
}

/// The one builder: redirects never downgrading to plain HTTP, the deadlines, the roots
/// (built-in, `--registry-ca-file`, and a host's `ca`), a host's client certificate and
/// `skip_verify`.
fn build_client(
    config: &RegistryConfig,
    files: Option<&tls::TlsFiles>,
) -> Result<reqwest::Client, RegistryError> {
    let max_redirects = config.max_redirects;
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            // Never from HTTPS down to plain HTTP: the next hop could keep the credential
            // (reqwest keeps `Authorization` when host and port stay the same).
            let downgrade = attempt.url().scheme() == "http"
                && attempt.previous().iter().any(|u| u.scheme() == "https");
            if downgrade {
                let to = body::clean_message(&format!(
                    "{}{}",
                    attempt.url().host_str().unwrap_or(""),
                    attempt.url().path()
                ));
                attempt.error(body::Downgrade(to))
            } else if attempt.previous().len() > max_redirects {
                attempt.error("too many redirects")
            } else {
                attempt.follow()
            }
        }))
        .connect_timeout(config.connect_timeout)
        .read_timeout(config.read_timeout)
        .user_agent(concat!("pullgate/", env!("CARGO_PKG_VERSION")));
    for root in &config.extra_roots {
        builder = builder.add_root_certificate(root.clone());
    }
    if let Some(files) = files {
        for root in &files.roots {
            builder = builder.add_root_certificate(root.clone());
        }
        if let Some(identity) = &files.identity {
            builder = builder.identity(identity.clone());
        }
        if files.skip_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
    }
    builder.build().map_err(|e| RegistryError::Transport {
        what: "HTTP client".into(),
        cause: e.to_string(),
    })
}

fn parse_manifest(reference: &str, bytes: &[u8]) -> Result<Manifest, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::BadManifest {
        what: format!("manifest {reference}"),
        message: body::clean_message(&format!("not a manifest: {e}")),
    })
}

/// The certificates of a PEM file (`--registry-ca-file`).
fn read_roots(path: &Path) -> Result<Vec<reqwest::Certificate>, RegistryError> {
    let err = |cause: String| RegistryError::CaFile {
        path: path.to_path_buf(),
        cause,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let roots = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|_| err("not a PEM certificate bundle".into()))?;
    if roots.is_empty() {
        return Err(err("holds no certificate".into()));
    }
    Ok(roots)
}

impl crate::decide::canary::runner::RegistryProbe for RegistryClient {
    fn probe<'a>(
        &'a self,
        image: &'a ImageRef,
        candidate: Option<&'a crate::decide::credentials::Candidate>,
        depth: CanaryDepth,
    ) -> futures::future::BoxFuture<
        'a,
        Result<
            crate::decide::canary::runner::ProbeReport,
            crate::decide::canary::runner::ProbeFailure,
        >,
    > {
        Box::pin(async move {
            let auth = candidate.map(|c| ProbeAuth {
                username: &c.username,
                password: &c.password,
            });
            let (result, walk) = RegistryClient::probe_walk(self, image, auth, depth).await;
            result
                .map(|p| crate::decide::canary::runner::ProbeReport {
                    manifest_digest: p.manifest_digest,
                    blobs: p.blobs,
                    bytes: p.bytes,
                    requests: p.requests,
                    warnings: p.warnings,
                    walk: walk.clone(),
                })
                .map_err(|e| crate::decide::canary::runner::ProbeFailure {
                    verdict: e.verdict(),
                    message: e.to_string(),
                    walk,
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_deadlines_grow_with_size() {
        let base = Duration::from_secs(60);
        for (size, rate, want) in [
            (0, MIN_BLOB_RATE, 60),
            (1_000, MIN_BLOB_RATE, 60),
            (256 * 1024 * 10, MIN_BLOB_RATE, 70),
            (1 << 30, MIN_BLOB_RATE, 60 + 4096),
            (1_000, 0, 1_060),
            (u64::MAX, 1, u64::MAX),
        ] {
            let got = blob_deadline(base, size, rate);
            assert_eq!(got.as_secs(), want, "size {size} at {rate} B/s");
        }
    }

    #[test]
    fn status_classification() {
        for (status, code, expected) in [
            (401, None, Verdict::Unauthorized),
            (403, Some("DENIED"), Verdict::Unauthorized),
            (400, Some("UNAUTHORIZED"), Verdict::Unauthorized),
            (404, Some("MANIFEST_UNKNOWN"), Verdict::NotFound),
            (404, Some("NAME_UNKNOWN"), Verdict::NotFound),
            (404, None, Verdict::NotFound),
            (400, Some("BLOB_UNKNOWN"), Verdict::NotFound),
            (429, None, Verdict::RateLimited),
            (503, Some("TOOMANYREQUESTS"), Verdict::RateLimited),
            (500, None, Verdict::Network),
            (502, None, Verdict::Network),
            (418, None, Verdict::RuntimeError),
        ] {
            assert_eq!(classify_status(status, code), expected, "{status} {code:?}");
        }
    }

    #[test]
    fn platforms() {
        assert_eq!(
            "linux/arm64/v8"
                .parse::<Platform>()
                .unwrap()
                .variant
                .as_deref(),
            Some("v8")
        );
        assert_eq!(
            "linux/amd64".parse::<Platform>().unwrap().to_string(),
            "linux/amd64"
        );
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//".parse::<Platform>().is_err());
    }

    #[test]
    fn errors_map_to_verdicts() {
        let t = |what: &str| what.to_string();
        assert_eq!(RegistryError::Auth(t("x")).verdict(), Verdict::Unauthorized);
        assert_eq!(
            RegistryError::Redirects {
                what: t("m"),
                limit: 5
            }
            .verdict(),
            Verdict::Network
        );
        assert_eq!(
            RegistryError::DigestMismatch {
                what: t("b"),
                expected: t("a"),
                actual: t("b")
            }
            .verdict(),
            Verdict::DigestMismatch
        );
        assert_eq!(
            RegistryError::NoPlatform {
                platform: t("linux/s390x")
            }
            .verdict(),
            Verdict::NotFound
        );
    }
}
