//! One probe's requests: the authentication ([`super::auth`]), then bounded manifest and blob
//! requests, each under its own deadline (the whole probe is under the canary's, in
//! [`super::RegistryClient::probe`]). Counts what it sends and downloads, and names what it is
//! doing, so that a probe stopped at its deadline can say where. A manifest is asked for by
//! `HEAD` where that proves enough, by `GET` where its body is needed and not cached (the
//! choice is [`super::Session::run`]'s), with containerd's fallbacks from one to the other.

use super::auth::{self, Scheme};
use super::body::{
    ERROR_BODY_LIMIT, distribution_error, read_limited, read_prefix, reason, timed_out, transport,
};
use super::tls::TlsFailure;
use super::{
    Descriptor, Fetched, MANIFEST_TYPES, Probe, ProbeAuth, RegistryClient, RegistryError, Route,
    blob_deadline,
};
use crate::decide::canary::warning::CanaryWarning;
use crate::decide::secret_scrub::scrub;
use base64::Engine as _;
use futures::StreamExt as _;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use std::future::Future;
use std::time::Duration;

pub(super) struct Session<'a> {
    pub client: &'a RegistryClient,
    /// `host[:port]` as configured (what messages name).
    pub registry: String,
    /// Where the requests go (the registry's upstream as containerd reaches it).
    pub route: Route,
    /// `origin` + API root + `/REPOSITORY`.
    pub base: String,
    /// Marked sensitive: HTTP-layer `Debug` output never shows it.
    pub authorization: Option<reqwest::header::HeaderValue>,
    /// The bearer token, to scrub from any message.
    pub token: Option<SecretString>,
    /// What the probe is doing now (`the /v2/ ping`, `manifest v1`, `blob sha256:…`).
    pub stage: String,
    pub probe: Probe,
}

impl Session<'_> {
    /// `f` under `limit`: past it, `what` timed out.
    async fn bounded<T>(
        what: &str,
        limit: Duration,
        f: impl Future<Output = Result<T, RegistryError>>,
    ) -> Result<T, RegistryError> {
        tokio::time::timeout(limit, f)
            .await
            .unwrap_or_else(|_| Err(timed_out(what, limit)))
    }

    /// The challenge (`GET /v2/`), and the token when the registry uses a token service.
    pub async fn authenticate(
        &mut self,
        repository: &str,
        auth: Option<ProbeAuth<'_>>,
    ) -> Result<(), RegistryError> {
        let config = &self.client.config;
        let (limit, redirects) = (config.request_timeout, config.max_redirects);
        let basic = auth.map(|a| {
            sensitive(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    a.username,
                    a.password.expose_secret()
                ))
            ))
        });
        let basic = basic.transpose()?;

        let challenges = match self.ping(limit, redirects).await {
            // containerd's `NewHTTPFallback`: an HTTPS attempt answered in plain HTTP goes again
            // over plain HTTP (only for hosts it would do that for).
            Err(RegistryError::Tls {
                failure: TlsFailure::NotTls,
                ..
            }) if self.route.http_fallback => {
                self.route.origin = format!("http://{}", self.route.host);
                self.route.plain_http = true;
                self.base = self.base.replacen("https://", "http://", 1);
                self.ping(limit, redirects).await?
            }
            other => other?,
        };

        match auth::scheme_for(&self.registry, self.route.plain_http, &challenges)? {
            Scheme::Basic => self.authorization = basic,
            Scheme::Bearer { realm, service } => {
                self.stage = format!("the token service {}", auth::realm_name(&realm));
                self.probe.requests += 1;
                let what = format!("token service {}", auth::realm_name(&realm));
                let token = Self::bounded(
                    &what,
                    limit,
                    auth::fetch_token(
                        &self.route.http,
                        &realm,
                        service.as_deref(),
                        repository,
                        basic.as_ref(),
                        redirects,
                    ),
                )
                .await?;
                self.authorization = Some(sensitive(format!("Bearer {}", token.expose_secret()))?);
                self.token = Some(token);
            }
        }
        Ok(())
    }

    /// `GET /v2/` (the route's API root): the challenges of the answer.
    async fn ping(
        &mut self,
        limit: Duration,
        redirects: usize,
    ) -> Result<Vec<auth::Challenge>, RegistryError> {
        self.stage = "the /v2/ ping".into();
        self.probe.requests += 1;
        let what = format!("registry {}: /v2/", self.registry);
        let url = format!("{}{}/", self.route.origin, self.route.path);
        let request = self
            .route
            .http
            .get(&url)
            .headers(self.route.headers.clone());
        let host = self.route.host.clone();
        Self::bounded(&what, limit, async {
            let response = request
                .send()
                .await
                .map_err(|e| with_tls(transport(&what, &e, redirects), &host))?;
            // Only the challenge matters; the body is never read.
            Ok(response
                .headers()
                .get_all(reqwest::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(auth::parse_challenges)
                .collect::<Vec<_>>())
        })
        .await
    }

    fn request(&mut self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.probe.requests += 1;
        let mut request = self
            .route
            .http
            .request(method, url)
            .headers(self.route.headers.clone());
        if let Some(a) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, a.clone());
        }
        request
    }

    async fn send(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let response = request.send().await.map_err(|e| {
            with_tls(
                transport(what, &e, self.client.config.max_redirects),
                &self.route.host,
            )
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = read_prefix(response, ERROR_BODY_LIMIT).await;
        let (code, message) = distribution_error(&body);
        Err(RegistryError::Status {
            what: what.to_string(),
            status,
            code,
            message: message.map_or_else(|| reason(status), |m| self.scrub(&m)),
        })
    }

    /// `text` without the bearer token or a hosts.toml `header` value (a registry could echo
    /// them).
    fn scrub(&self, text: &str) -> String {
        scrub(text, self.token.iter().chain(&self.route.header_secrets))
    }

    /// GET a manifest (bounded), verifying its digest when one is expected.
    pub async fn manifest(
        &mut self,
        reference: &str,
        expected: Option<&str>,
    ) -> Result<ManifestBody, RegistryError> {
        let what = format!("manifest {reference}");
        self.stage.clone_from(&what);
        let limit = self.client.config.request_timeout;
        tokio::time::timeout(limit, self.manifest_inner(&what, reference, expected))
            .await
            .unwrap_or_else(|_| Err(timed_out(&what, limit)))
    }

    async fn manifest_inner(
        &mut self,
        what: &str,
        reference: &str,
        expected: Option<&str>,
    ) -> Result<ManifestBody, RegistryError> {
        let url = format!("{}/manifests/{reference}", self.base);
        let request = self
            .request(reqwest::Method::GET, &url)
            .header(reqwest::header::ACCEPT, MANIFEST_TYPES);
        let response = self.send(what, request).await?;
        let media_type = media_type(&response);
        let limit = self.client.config.max_manifest_bytes;
        if response
            .content_length()
            .is_some_and(|len| len > limit as u64)
        {
            return Err(RegistryError::TooLarge {
                what: what.to_string(),
                limit,
            });
        }
        let bytes = read_limited(what, response, limit, self.client.config.max_redirects).await?;
        self.probe.bytes += bytes.len() as u64;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if let Some(expected) = expected
            && expected.starts_with("sha256:")
            && expected != actual
        {
            return Err(RegistryError::DigestMismatch {
                what: what.to_string(),
                expected: expected.to_string(),
                actual,
            });
        }
        Ok(ManifestBody {
            bytes,
            digest: actual,
            media_type,
        })
    }

    /// `HEAD` a manifest (bounded, the same `Accept` as the `GET`): the credential may read it
    /// and it exists. Its digest is the one expected (a `Docker-Content-Digest` that differs is
    /// a mismatch), else the header's. `None` when only a `GET` can tell, as containerd's
    /// resolver decides (`core/remotes/docker/resolver.go`): a 405 (`retryRequest`: "registries
    /// which have not properly implemented the HEAD method for manifests endpoint" — distribution
    /// 2.2 behind token auth was one, distribution#1485), or a tag answered without a valid
    /// `Docker-Content-Digest` (the header is optional in the OCI distribution spec; registries
    /// serving manifests as static files send none).
    pub async fn head_manifest(
        &mut self,
        reference: &str,
        expected: Option<&str>,
    ) -> Result<Option<Fetched>, RegistryError> {
        let what = format!("manifest {reference}");
        self.stage.clone_from(&what);
        let limit = self.client.config.request_timeout;
        tokio::time::timeout(limit, self.head_manifest_inner(&what, reference, expected))
            .await
            .unwrap_or_else(|_| Err(timed_out(&what, limit)))
    }

    async fn head_manifest_inner(
        &mut self,
        what: &str,
        reference: &str,
        expected: Option<&str>,
    ) -> Result<Option<Fetched>, RegistryError> {
        let url = format!("{}/manifests/{reference}", self.base);
        let request = self
            .request(reqwest::Method::HEAD, &url)
            .header(reqwest::header::ACCEPT, MANIFEST_TYPES);
        let response = match self.send(what, request).await {
            Ok(response) => response,
            Err(RegistryError::Status { status: 405, .. }) => return Ok(None),
            Err(RegistryError::Status {
                status: status @ (401 | 403 | 404),
                code: None,
                message,
                ..
            }) => return Err(self.explain_refusal(what, &url, status, message).await),
            Err(e) => return Err(e),
        };
        // containerd refuses to resolve to a manifest over its limit, by the `HEAD`'s length.
        let limit = self.client.config.max_manifest_bytes;
        if response
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|len| len > limit as u64)
        {
            return Err(RegistryError::TooLarge {
                what: what.to_string(),
                limit,
            });
        }
        let media_type = media_type(&response);
        let header = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|d| is_digest(d))
            .map(str::to_string);
        let digest = match (expected, header) {
            (Some(expected), Some(actual)) if expected != actual => {
                return Err(RegistryError::DigestMismatch {
                    what: what.to_string(),
                    expected: expected.to_string(),
                    actual,
                });
            }
            (Some(expected), _) => expected.to_string(),
            (None, Some(actual)) => actual,
            (None, None) => return Ok(None),
        };
        Ok(Some(Fetched {
            digest,
            media_type,
            body: None,
        }))
    }

    /// A `HEAD` refused with `status` has no body to say why: a `GET` of the same URL lends its
    /// error code and message when it is refused alike, else the `HEAD`'s answer stands
    /// (containerd's `withGETErrorBody`, `core/remotes/docker/pusher.go`, does this for 403; here
    /// for 401 and 404 too, whose bodies name the cause. Never for a 429: a rate-limited registry
    /// gets no extra request).
    async fn explain_refusal(
        &mut self,
        what: &str,
        url: &str,
        status: u16,
        message: String,
    ) -> RegistryError {
        let request = self
            .request(reqwest::Method::GET, url)
            .header(reqwest::header::ACCEPT, MANIFEST_TYPES);
        match self.send(what, request).await {
            Err(RegistryError::Status {
                status: again,
                code,
                message,
                ..
            }) if again == status => RegistryError::Status {
                what: what.to_string(),
                status,
                code,
                message,
            },
            _ => RegistryError::Status {
                what: what.to_string(),
                status,
                code: None,
                message,
            },
        }
    }

    pub async fn head_blob(&mut self, blob: &Descriptor) -> Result<(), RegistryError> {
        let what = format!("blob {}", blob.digest);
        self.stage.clone_from(&what);
        let limit = self.client.config.request_timeout;
        tokio::time::timeout(limit, self.head_blob_inner(&what, blob))
            .await
            .unwrap_or_else(|_| Err(timed_out(&what, limit)))
    }

    async fn head_blob_inner(
        &mut self,
        what: &str,
        blob: &Descriptor,
    ) -> Result<(), RegistryError> {
        let url = format!("{}/blobs/{}", self.base, blob.digest);
        let request = self.request(reqwest::Method::HEAD, &url);
        let response = self.send(what, request).await?;
        if let Some(len) = response
            .content_length()
            .filter(|len| *len != 0 && *len != blob.size)
        {
            return Err(RegistryError::SizeMismatch {
                what: what.to_string(),
                expected: blob.size,
                actual: len,
            });
        }
        self.probe.blobs += 1;
        Ok(())
    }

    /// `full` depth: every blob downloaded and verified while the canary's byte budget lasts; a
    /// blob larger than what is left of it is checked by `HEAD` only, with a warning naming it.
    pub async fn download_blobs(&mut self, blobs: &[Descriptor]) -> Result<(), RegistryError> {
        let budget = self.client.config.max_canary_bytes;
        for blob in blobs {
            let left = budget.saturating_sub(self.probe.bytes);
            if blob.size > left {
                self.head_blob(blob).await?;
                self.probe.warnings.push(CanaryWarning::NotDownloaded {
                    blob: blob.digest.clone(),
                    size: blob.size,
                    left,
                    budget,
                });
            } else {
                self.download_blob(blob).await?;
            }
        }
        Ok(())
    }

    /// GET a blob, streaming through sha256; nothing is kept. Bounded in time by
    /// [`blob_deadline`], so a trickling registry cannot hold a `full` canary forever.
    async fn download_blob(&mut self, blob: &Descriptor) -> Result<(), RegistryError> {
        let what = format!("blob {}", blob.digest);
        self.stage.clone_from(&what);
        let config = &self.client.config;
        let limit = blob_deadline(config.request_timeout, blob.size, config.min_blob_rate);
        tokio::time::timeout(limit, self.download_blob_inner(&what, blob))
            .await
            .unwrap_or_else(|_| Err(timed_out(&what, limit)))
    }

    async fn download_blob_inner(
        &mut self,
        what: &str,
        blob: &Descriptor,
    ) -> Result<(), RegistryError> {
        let url = format!("{}/blobs/{}", self.base, blob.digest);
        let request = self.request(reqwest::Method::GET, &url);
        let response = self.send(what, request).await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| transport(what, &e, self.client.config.max_redirects))?;
            size += chunk.len() as u64;
            if size > blob.size {
                return Err(RegistryError::SizeMismatch {
                    what: what.to_string(),
                    expected: blob.size,
                    actual: size,
                });
            }
            hasher.update(&chunk);
        }
        if size != blob.size {
            return Err(RegistryError::SizeMismatch {
                what: what.to_string(),
                expected: blob.size,
                actual: size,
            });
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if blob.digest.starts_with("sha256:") && actual != blob.digest {
            return Err(RegistryError::DigestMismatch {
                what: what.to_string(),
                expected: blob.digest.clone(),
                actual,
            });
        }
        self.probe.blobs += 1;
        self.probe.bytes += size;
        Ok(())
    }
}

/// A manifest as a `GET` answered it.
pub(super) struct ManifestBody {
    pub bytes: Vec<u8>,
    /// Its sha256.
    pub digest: String,
    /// `Content-Type`, without parameters.
    pub media_type: Option<String>,
}

/// The `Content-Type` of `response`, without parameters.
fn media_type(response: &reqwest::Response) -> Option<String> {
    let value = response.headers().get(reqwest::header::CONTENT_TYPE)?;
    let value = value.to_str().ok()?;
    let bare = value.split(';').next().unwrap_or("").trim();
    (!bare.is_empty()).then(|| bare.to_ascii_lowercase())
}

/// `algorithm:hex`, as a registry's `Docker-Content-Digest` must be.
fn is_digest(text: &str) -> bool {
    match text.split_once(':') {
        Some((algorithm, hex)) => {
            !algorithm.is_empty()
                && algorithm
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
                && hex.len() >= 32
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
        }
        None => false,
    }
}

/// A transport failure that is a TLS one, named as such, with the host and the fix.
fn with_tls(e: RegistryError, host: &str) -> RegistryError {
    match e {
        RegistryError::Transport { what, cause } => match TlsFailure::of_cause(&cause) {
            Some(failure) => RegistryError::Tls {
                what,
                host: host.to_string(),
                failure,
                cause,
            },
            None => RegistryError::Transport { what, cause },
        },
        other => other,
    }
}

/// An `Authorization` value, marked sensitive; one that is not a valid header says so, without
/// its content.
fn sensitive(value: String) -> Result<reqwest::header::HeaderValue, RegistryError> {
    let mut v = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
        RegistryError::Auth(
            "the credential or token is not a valid HTTP header value (control characters?)".into(),
        )
    })?;
    v.set_sensitive(true);
    Ok(v)
}
