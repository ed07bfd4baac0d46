//! Registry-direct adapter: the only module that knows `oci-client` and `reqwest`.
//!
//! A canary talks to the registry as a clean-cache pull would, never touching the node's image
//! store: `oci-client` runs the authentication flows (basic, and the bearer-token dance with the
//! registry's token service), then the requests are made here, with limits a daemon needs: a
//! manifest larger than 4 MiB, a redirect loop, a stalled or slow server are errors with a verdict,
//! not hangs or unbounded memory.
//!
//! Depths: `manifest` resolves the reference and fetches the manifest (for an index, the node's
//! platform's); `blobs` also sends `HEAD` for the config and every layer; `full` downloads every
//! blob, streaming, and verifies size and sha256 — nothing is written to disk.

use crate::model::image_ref::ImageRef;
use crate::model::pullset::CanaryDepth;
use crate::model::verdict::Verdict;
use base64::Engine as _;
use futures::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::fmt;
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
}

impl RegistryError {
    /// The verdict this failure means.
    pub fn verdict(&self) -> Verdict {
        match self {
            RegistryError::Status { status, code, .. } => classify_status(*status, code.as_deref()),
            RegistryError::Auth(_) => Verdict::Unauthorized,
            RegistryError::Transport { .. } | RegistryError::Redirects { .. } => Verdict::Network,
            RegistryError::DigestMismatch { .. } | RegistryError::SizeMismatch { .. } => {
                Verdict::DigestMismatch
            }
            RegistryError::NoPlatform { .. } => Verdict::NotFound,
            RegistryError::TooLarge { .. } | RegistryError::BadManifest { .. } => {
                Verdict::RuntimeError
            }
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
struct ErrorEnvelope {
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
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
    http: reqwest::Client,
}

/// A credential for one probe.
pub struct ProbeAuth<'a> {
    pub username: &'a str,
    pub password: &'a SecretString,
}

struct Session<'a> {
    client: &'a RegistryClient,
    base: String,
    /// Marked sensitive: HTTP-layer `Debug` output never shows it.
    authorization: Option<reqwest::header::HeaderValue>,
    probe: Probe,
}

impl RegistryClient {
    pub fn new(config: RegistryConfig) -> Result<Self, RegistryError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(config.max_redirects))
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .user_agent(concat!("pullgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RegistryError::Transport {
                what: "HTTP client".into(),
                cause: e.to_string(),
            })?;
        Ok(Self { config, http })
    }

    /// The client the registry flags describe (`--insecure-registry`, `--platform`,
    /// `--registry-timeout`), for `pullgate run` and the one-shot commands alike.
    pub fn from_args(args: &crate::cli::RegistryArgs) -> Result<Self, RegistryError> {
        Self::new(RegistryConfig {
            plain_http: args.insecure_registries.clone(),
            platform: args.platform.clone().unwrap_or_else(Platform::host),
            request_timeout: *args.registry_timeout,
            ..RegistryConfig::default()
        })
    }

    fn scheme(&self, registry: &str) -> &'static str {
        if self.config.plain_http.iter().any(|h| h == registry) {
            "http"
        } else {
            "https"
        }
    }

    /// Probes `image` at `depth` with `auth` (or anonymously).
    pub async fn probe(
        &self,
        image: &ImageRef,
        auth: Option<ProbeAuth<'_>>,
        depth: CanaryDepth,
    ) -> Result<Probe, RegistryError> {
        let registry = image.registry.as_str();
        // Docker Hub is served by registry-1.docker.io.
        let host = if registry == crate::model::image_ref::DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            registry
        };
        let mut session = Session {
            client: self,
            base: format!("{}://{host}/v2/{}", self.scheme(registry), image.repository),
            authorization: None,
            probe: Probe::default(),
        };
        session.authenticate(image, auth).await?;

        let reference = match (&image.digest, &image.tag) {
            (Some(d), _) => d.clone(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        };
        let (bytes, digest) = session
            .manifest(&reference, image.digest.as_deref())
            .await?;
        let mut manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::BadManifest {
                what: format!("manifest {reference}"),
                message: format!("not a manifest: {e}"),
            })?;
        let mut manifest_digest = digest;
        if let Some(entries) = &manifest.manifests {
            let platform = &self.config.platform;
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
            let (bytes, _) = session
                .manifest(&chosen_digest, Some(&chosen_digest))
                .await?;
            manifest = serde_json::from_slice(&bytes).map_err(|e| RegistryError::BadManifest {
                what: format!("manifest {chosen_digest}"),
                message: format!("not a manifest: {e}"),
            })?;
            manifest_digest = chosen_digest;
        }
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
        session.probe.manifest_digest = manifest_digest;
        let blobs: Vec<Descriptor> = std::iter::once(config).chain(layers).collect();
        match depth {
            CanaryDepth::Manifest => {}
            CanaryDepth::Blobs => {
                for blob in &blobs {
                    session.head_blob(blob).await?;
                }
            }
            CanaryDepth::Full => {
                for blob in &blobs {
                    session.download_blob(blob).await?;
                }
            }
        }
        Ok(session.probe)
    }
}

impl Session<'_> {
    async fn authenticate(
        &mut self,
        image: &ImageRef,
        auth: Option<ProbeAuth<'_>>,
    ) -> Result<(), RegistryError> {
        // A fresh client per probe: a token cached before a rotation must not hide it.
        let oci = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.client.config.plain_http.clone()),
            ..ClientConfig::default()
        });
        let reference: Reference =
            image
                .pull_reference()
                .parse()
                .map_err(|e| RegistryError::BadManifest {
                    what: image.to_string(),
                    message: format!("reference not accepted: {e}"),
                })?;
        let registry_auth = match &auth {
            Some(a) => RegistryAuth::Basic(
                a.username.to_string(),
                a.password.expose_secret().to_string(),
            ),
            None => RegistryAuth::Anonymous,
        };
        // The challenge request, and the token request when the registry uses a token service.
        self.probe.requests += 1;
        let token = oci
            .auth(&reference, &registry_auth, RegistryOperation::Pull)
            .await
            .map_err(from_oci)?;
        let header = match (token, &auth) {
            (Some(token), _) => {
                self.probe.requests += 1;
                Some(format!("Bearer {token}"))
            }
            (None, Some(a)) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    a.username,
                    a.password.expose_secret()
                ))
            )),
            (None, None) => None,
        };
        self.authorization = header
            .and_then(|h| reqwest::header::HeaderValue::from_str(&h).ok())
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        Ok(())
    }

    fn request(&mut self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.probe.requests += 1;
        let mut request = self.client.http.request(method, url);
        if let Some(a) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, a.clone());
        }
        request
    }

    async fn send(
        &mut self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let response = request
            .send()
            .await
            .map_err(|e| transport(what, &e, self.client.config.max_redirects))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = read_limited(what, response, 64 * 1024, self.client.config.max_redirects)
            .await
            .unwrap_or_default();
        let envelope: Option<ErrorEnvelope> = serde_json::from_slice(&body).ok();
        let first = envelope.and_then(|e| e.errors.into_iter().next());
        Err(RegistryError::Status {
            what: what.to_string(),
            status,
            code: first
                .as_ref()
                .map(|e| e.code.clone())
                .filter(|c| !c.is_empty()),
            message: first
                .map(|e| e.message)
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| {
                    reqwest::StatusCode::from_u16(status)
                        .ok()
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("error")
                        .to_string()
                }),
        })
    }

    /// GET a manifest (bounded), verifying its digest when one is expected.
    async fn manifest(
        &mut self,
        reference: &str,
        expected: Option<&str>,
    ) -> Result<(Vec<u8>, String), RegistryError> {
        let what = format!("manifest {reference}");
        let limit = self.client.config.request_timeout;
        tokio::time::timeout(limit, self.manifest_inner(reference, expected))
            .await
            .unwrap_or_else(|_| Err(timed_out(&what, limit)))
    }

    async fn manifest_inner(
        &mut self,
        reference: &str,
        expected: Option<&str>,
    ) -> Result<(Vec<u8>, String), RegistryError> {
        let what = format!("manifest {reference}");
        let url = format!("{}/manifests/{reference}", self.base);
        let request = self
            .request(reqwest::Method::GET, &url)
            .header(reqwest::header::ACCEPT, MANIFEST_TYPES);
        let response = self.send(&what, request).await?;
        let limit = self.client.config.max_manifest_bytes;
        if response
            .content_length()
            .is_some_and(|len| len > limit as u64)
        {
            return Err(RegistryError::TooLarge { what, limit });
        }
        let bytes = read_limited(&what, response, limit, self.client.config.max_redirects).await?;
        self.probe.bytes += bytes.len() as u64;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if let Some(expected) = expected
            && expected.starts_with("sha256:")
            && expected != actual
        {
            return Err(RegistryError::DigestMismatch {
                what,
                expected: expected.to_string(),
                actual,
            });
        }
        Ok((bytes, actual))
    }

    async fn head_blob(&mut self, blob: &Descriptor) -> Result<(), RegistryError> {
        let what = format!("blob {}", blob.digest);
        let limit = self.client.config.request_timeout;
        tokio::time::timeout(limit, self.head_blob_inner(blob))
            .await
            .unwrap_or_else(|_| Err(timed_out(&what, limit)))
    }

    async fn head_blob_inner(&mut self, blob: &Descriptor) -> Result<(), RegistryError> {
        let what = format!("blob {}", blob.digest);
        let url = format!("{}/blobs/{}", self.base, blob.digest);
        let request = self.request(reqwest::Method::HEAD, &url);
        let response = self.send(&what, request).await?;
        if let Some(len) = response
            .content_length()
            .filter(|len| *len != 0 && *len != blob.size)
        {
            return Err(RegistryError::SizeMismatch {
                what,
                expected: blob.size,
                actual: len,
            });
        }
        self.probe.blobs += 1;
        Ok(())
    }

    /// GET a blob, streaming through sha256; nothing is kept. Bounded in time by
    /// [`blob_deadline`], so a trickling registry cannot hold a `full` canary forever.
    async fn download_blob(&mut self, blob: &Descriptor) -> Result<(), RegistryError> {
        let what = format!("blob {}", blob.digest);
        let config = &self.client.config;
        let limit = blob_deadline(config.request_timeout, blob.size, config.min_blob_rate);
        tokio::time::timeout(limit, self.download_blob_inner(blob))
            .await
            .unwrap_or_else(|_| Err(timed_out(&what, limit)))
    }

    async fn download_blob_inner(&mut self, blob: &Descriptor) -> Result<(), RegistryError> {
        let what = format!("blob {}", blob.digest);
        let url = format!("{}/blobs/{}", self.base, blob.digest);
        let request = self.request(reqwest::Method::GET, &url);
        let response = self.send(&what, request).await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| transport(&what, &e, self.client.config.max_redirects))?;
            size += chunk.len() as u64;
            if size > blob.size {
                return Err(RegistryError::SizeMismatch {
                    what,
                    expected: blob.size,
                    actual: size,
                });
            }
            hasher.update(&chunk);
        }
        if size != blob.size {
            return Err(RegistryError::SizeMismatch {
                what,
                expected: blob.size,
                actual: size,
            });
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if blob.digest.starts_with("sha256:") && actual != blob.digest {
            return Err(RegistryError::DigestMismatch {
                what,
                expected: blob.digest.clone(),
                actual,
            });
        }
        self.probe.blobs += 1;
        self.probe.bytes += size;
        Ok(())
    }
}

async fn read_limited(
    what: &str,
    response: reqwest::Response,
    limit: usize,
    redirects: usize,
) -> Result<Vec<u8>, RegistryError> {
    let mut out = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| transport(what, &e, redirects))?;
        if out.len() + chunk.len() > limit {
            return Err(RegistryError::TooLarge {
                what: what.to_string(),
                limit,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn timed_out(what: &str, limit: Duration) -> RegistryError {
    RegistryError::Transport {
        what: what.to_string(),
        cause: format!(
            "timed out after {} (a slow or stalled registry)",
            humantime::format_duration(limit)
        ),
    }
}

/// A transport failure, with its innermost cause (`Connection refused`, `dns error`…).
fn transport(what: &str, e: &reqwest::Error, redirects: usize) -> RegistryError {
    if e.is_redirect() {
        return RegistryError::Redirects {
            what: what.to_string(),
            limit: redirects,
        };
    }
    let mut cause = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if e.is_timeout() {
        cause = format!("timed out ({cause})");
    }
    RegistryError::Transport {
        what: what.to_string(),
        cause,
    }
}

fn from_oci(e: OciDistributionError) -> RegistryError {
    match e {
        OciDistributionError::AuthenticationFailure(m) => RegistryError::Auth(m),
        OciDistributionError::UnauthorizedError { .. } => RegistryError::Status {
            what: "authentication".into(),
            status: 401,
            code: None,
            message: "unauthorized".into(),
        },
        OciDistributionError::RequestError(e) => transport("authentication", &e, 0),
        OciDistributionError::ServerError { code, message, .. } => RegistryError::Status {
            what: "authentication".into(),
            status: code,
            code: None,
            message,
        },
        OciDistributionError::RegistryError { envelope, .. } => {
            let first = envelope.errors.first();
            RegistryError::Status {
                what: "authentication".into(),
                status: 0,
                // The distribution spec's own spelling (`MANIFEST_UNKNOWN`), as `classify_status` reads it.
                code: first
                    .and_then(|e| serde_json::to_value(&e.code).ok())
                    .and_then(|v| v.as_str().map(str::to_string)),
                message: first.map(|e| e.message.clone()).unwrap_or_default(),
            }
        }
        other => RegistryError::Auth(other.to_string()),
    }
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
            RegistryClient::probe(self, image, auth, depth)
                .await
                .map(|p| crate::decide::canary::runner::ProbeReport {
                    manifest_digest: p.manifest_digest,
                    blobs: p.blobs,
                    bytes: p.bytes,
                    requests: p.requests,
                })
                .map_err(|e| crate::decide::canary::runner::ProbeFailure {
                    verdict: e.verdict(),
                    message: e.to_string(),
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
