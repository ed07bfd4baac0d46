//! What the agent needs from a container runtime, as traits the agent owns, and what a runtime's
//! error means. The CRI adapter implements [`ImageRuntime`] and hands over the runtime's own words
//! as a [`RuntimeFailure`]; [`RuntimeFailure::verdict`] is the one place that turns them into a
//! [`Verdict`], for the pre-pull engine and the runtime canary alike. Neither ever sees a CRI type.

use crate::model::verdict::Verdict;
use futures::future::BoxFuture;
use secrecy::SecretString;
use std::time::Duration;

/// An image the runtime holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PresentImage {
    /// The runtime's image id (`sha256:…` of the config for containerd).
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Size in bytes, as the runtime reports it (0 when unknown).
    pub size: u64,
}

impl PresentImage {
    /// The repo digest for `name` (`registry/repository`), else the first one.
    pub fn repo_digest_for(&self, name: &str) -> Option<String> {
        self.repo_digests
            .iter()
            .find(|d| d.split_once('@').is_some_and(|(n, _)| n == name))
            .or_else(|| self.repo_digests.first())
            .cloned()
    }
}

/// Space on the runtime's image filesystem: `ImageFsInfo` names it, the file system's own
/// counters (statvfs) give its size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageFsSpace {
    /// Bytes an unprivileged writer may still use.
    pub free_bytes: u64,
    pub capacity_bytes: u64,
}

/// Credentials for one pull, borrowed from a resolved candidate.
#[derive(Debug)]
pub struct PullAuth<'a> {
    pub username: &'a str,
    pub password: &'a SecretString,
}

/// Why a runtime call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeFailure {
    /// The runtime's socket is missing, refuses, or the connection broke.
    #[error("cannot reach CRI at {endpoint}: {cause}")]
    Unreachable { endpoint: String, cause: String },
    /// The call did not finish within its deadline.
    #[error("CRI {operation} did not finish within {}", humantime::format_duration(*after))]
    DeadlineExceeded {
        operation: &'static str,
        after: Duration,
    },
    /// The runtime answered `operation` with an error: its own message.
    #[error("{message}")]
    Rejected {
        operation: &'static str,
        message: String,
    },
}

impl RuntimeFailure {
    /// What the failure means: a runtime that cannot be reached or does not answer in time is a
    /// `RuntimeError`; a rejection is judged by the runtime's own message ([`classify_pull_error`]).
    pub fn verdict(&self) -> Verdict {
        match self {
            Self::Unreachable { .. } | Self::DeadlineExceeded { .. } => Verdict::RuntimeError,
            Self::Rejected { message, .. } => classify_pull_error(message),
        }
    }
}

/// The image side of a container runtime: what the pre-pull engine drives and what the runtime
/// canary pulls through. containerd resolves the reference against the registry on every
/// `PullImage`, cached image or not, so a pull exercises the credential through the node's real
/// path (mirrors, proxies, CAs); nothing is ever removed through this trait.
pub trait ImageRuntime: Send + Sync + 'static {
    /// Every image the runtime holds (one call, for a whole pass).
    fn list_images(&self) -> BoxFuture<'_, Result<Vec<PresentImage>, RuntimeFailure>>;
    /// The image if present.
    fn image_status<'a>(
        &'a self,
        image: &'a str,
    ) -> BoxFuture<'a, Result<Option<PresentImage>, RuntimeFailure>>;
    /// Pulls the image; returns the runtime's image id.
    fn pull_image<'a>(
        &'a self,
        image: &'a str,
        auth: Option<PullAuth<'a>>,
    ) -> BoxFuture<'a, Result<String, RuntimeFailure>>;
    /// The space on the image filesystem the runtime pulls into; `None` when it cannot be told.
    fn image_fs(&self) -> BoxFuture<'_, Result<Option<ImageFsSpace>, RuntimeFailure>>;
}

/// The runtime's registry routing, as its configuration says (containerd's `hosts.toml`;
/// implemented by the `containerd_config` adapter).
pub trait RegistryMirrors: Send + Sync {
    /// The hosts other than `registry` itself that the runtime tries for `registry` (mirrors,
    /// peer caches), in the configuration's order; none when unconfigured or unreadable.
    fn mirrors(&self, registry: &str) -> Vec<String>;
}

/// Classifies the error message a container runtime returned for `PullImage`.
///
/// containerd reports registry failures as text inside a gRPC `Unknown` status, and the text
/// differs by release line: 1.6 says `failed to resolve reference "…": pulling from host … failed
/// with status code [manifests v1]: 401 Unauthorized`, 1.7 `… unexpected status from HEAD request
/// to …: 401 Unauthorized`, and 2.1, whose CRI pulls through the transfer service, `failed to
/// resolve image: …`. The integration test `runtime_versions` pins every phrase below against each
/// of the three, so a release that rewords one fails CI for that release. CRI-O's phrases (from
/// containers/image's code; CRI-O is not run here) are matched where they are unambiguous.
/// Anything unrecognised is a `RuntimeError`, never a guess.
pub fn classify_pull_error(message: &str) -> Verdict {
    let m = message.to_ascii_lowercase();
    let has = |needle: &str| m.contains(needle);

    // Authorisation: a 401/403 from the registry, or the resolver's own auth errors. Before
    // NotFound: registries answer "denied" for a repository that is private as for one that is
    // missing, and the node cannot tell them apart either.
    if has("401 unauthorized")
        || has("403 forbidden")
        || has("unauthorized: ")
        || has("authorization failed")
        || has("failed to fetch anonymous token")
        || has("failed to fetch oauth token")
        || has("requested access to the resource is denied")
        || has("no basic auth credentials")
        // containers/image (CRI-O): distribution's default texts and unparsed 401/403 bodies.
        || has("authentication required")
        || has("invalid username/password")
        || has(": denied: ")
        || has("statuscode: 401")
        || has("statuscode: 403")
    {
        return Verdict::Unauthorized;
    }
    if has("429 too many requests")
        || has("toomanyrequests")
        || has("too many requests")
        || has("statuscode: 429")
    {
        return Verdict::RateLimited;
    }
    // Absent repository, tag or digest. containerd's resolver says `<ref>: not found` after
    // `failed to resolve reference` (1.x) or `failed to resolve image` (2.x, transfer service).
    if ((has("failed to resolve reference") || has("failed to resolve image"))
        && has(": not found"))
        || has("manifest unknown")
        || has("name unknown")
        || has("404 not found")
        || has("blob unknown")
        || has("repository name not known to registry")
        || has("statuscode: 404")
    {
        return Verdict::NotFound;
    }
    if has("unexpected commit digest")
        || has("digest mismatch")
        || has("unexpected digest")
        || has("content digest") && has("not match")
        // containers/image (CRI-O): layer, manifest, config and DiffID verification.
        || has("digest did not match")
        || has("does not match provided manifest digest")
        || has("digest") && has("does not match expected")
        || has("does not match config's diffid")
    {
        return Verdict::DigestMismatch;
    }
    // Transport-level failures between the runtime and the registry.
    if has("connection refused")
        || has("no such host")
        || has("i/o timeout")
        || has("network is unreachable")
        || has("no route to host")
        || has("connection reset by peer")
        || has("tls: ")
        || has("x509: ")
        || has("tls handshake timeout")
        || has("server gave http response to https client")
        || has("dial tcp")
        || has("eof") && (has("pulling from host") || has("failed to do request"))
        || has("context deadline exceeded")
            && (has("resolve") || has("dial") || has("pulling from host"))
        || has("502 bad gateway")
        || has("503 service unavailable")
        || has("504 gateway timeout")
        || has("registryunavailable")
    {
        return Verdict::Network;
    }
    Verdict::RuntimeError
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_table() {
        let cases = [
            // containerd 1.6, basic auth with a wrong password.
            (
                r#"failed to pull and unpack image "127.0.0.1:5000/app:v1": failed to resolve reference "127.0.0.1:5000/app:v1": pulling from host 127.0.0.1:5000 failed with status code [manifests v1]: 401 Unauthorized"#,
                Verdict::Unauthorized,
            ),
            (
                r#"failed to pull and unpack image "r.io/a:v1": failed to resolve reference "r.io/a:v1": failed to authorize: failed to fetch oauth token: unexpected status: 401 Unauthorized"#,
                Verdict::Unauthorized,
            ),
            (
                r#"failed to pull and unpack image "r.io/a:v1": failed to resolve reference "r.io/a:v1": failed to authorize: failed to fetch anonymous token: unexpected status: 403 Forbidden"#,
                Verdict::Unauthorized,
            ),
            (
                r#"failed to pull and unpack image "127.0.0.1:5000/app:nope": failed to resolve reference "127.0.0.1:5000/app:nope": 127.0.0.1:5000/app:nope: not found"#,
                Verdict::NotFound,
            ),
            (
                r#"rpc error: failed to copy: httpReadSeeker: failed open: content at https://r.io/v2/a/blobs/sha256:ab not found: not found... manifest unknown"#,
                Verdict::NotFound,
            ),
            (
                r#"failed to pull and unpack image "127.0.0.1:5000/app:v1": failed to resolve reference "127.0.0.1:5000/app:v1": failed to do request: Head "http://127.0.0.1:5000/v2/app/manifests/v1": dial tcp 127.0.0.1:5000: connect: connection refused"#,
                Verdict::Network,
            ),
            (
                r#"failed to resolve reference "nope.invalid/a:v1": failed to do request: Head "https://nope.invalid/v2/a/manifests/v1": dial tcp: lookup nope.invalid: no such host"#,
                Verdict::Network,
            ),
            (
                r#"failed to do request: Head "https://r.io/v2/": tls: failed to verify certificate: x509: certificate signed by unknown authority"#,
                Verdict::Network,
            ),
            (
                r#"failed to pull and unpack image "docker.io/library/a:1": failed to copy: httpReadSeeker: failed open: unexpected status code https://registry-1.docker.io/v2/library/a/manifests/sha256:1: 429 Too Many Requests - Server message: toomanyrequests: You have reached your pull rate limit."#,
                Verdict::RateLimited,
            ),
            (
                r#"failed to pull and unpack image "r.io/a:1": failed to extract layer sha256:1: failed to unpack: unexpected commit digest sha256:2, expected sha256:1: failed precondition"#,
                Verdict::DigestMismatch,
            ),
            (
                r#"failed to pull and unpack image "r.io/a:1": failed to prepare extraction snapshot: no space left on device"#,
                Verdict::RuntimeError,
            ),
            ("", Verdict::RuntimeError),
        ];
        for (message, expected) in cases {
            assert_eq!(classify_pull_error(message), expected, "{message}");
            let rejected = RuntimeFailure::Rejected {
                operation: "PullImage",
                message: message.into(),
            };
            assert_eq!(rejected.verdict(), expected, "{message}");
            assert_eq!(rejected.to_string(), message);
        }
    }

    /// Messages captured from containerd 1.7.24 and 2.1.9 by the `runtime_versions` integration
    /// test (which pins them live), ports and digests shortened.
    #[test]
    fn containerd_1_7_and_2_1_words() {
        let cases = [
            (
                r#"failed to pull and unpack image "127.0.0.1:5000/app:v1": failed to resolve reference "127.0.0.1:5000/app:v1": unexpected status from HEAD request to http://127.0.0.1:5000/v2/app/manifests/v1: 401 Unauthorized"#,
                Verdict::Unauthorized,
            ),
            (
                r#"failed to pull and unpack image "127.0.0.1:5000/app:v1": failed to resolve image: unexpected status from HEAD request to http://127.0.0.1:5000/v2/app/manifests/v1: 401 Unauthorized"#,
                Verdict::Unauthorized,
            ),
            (
                r#"failed to pull and unpack image "127.0.0.1:5000/app:v1": failed to resolve image: pull access denied, repository does not exist or may require authorization: authorization failed: no basic auth credentials"#,
                Verdict::Unauthorized,
            ),
            (
                r#"failed to pull and unpack image "127.0.0.1:5000/app:v1": failed to resolve image: unexpected status from HEAD request to http://127.0.0.1:5000/v2/app/manifests/v1: 403 Forbidden"#,
                Verdict::Unauthorized,
            ),
            (
                r#"failed to pull and unpack image "127.0.0.1:5000/app:absent": failed to resolve image: 127.0.0.1:5000/app:absent: not found"#,
                Verdict::NotFound,
            ),
            (
                r#"failed to pull and unpack image "127.0.0.1:5000/app@sha256:00": failed to resolve image: 127.0.0.1:5000/app@sha256:00: not found"#,
                Verdict::NotFound,
            ),
            (
                r#"failed to pull and unpack image "127.0.0.1:5000/app:v1": failed to resolve image: unexpected status from HEAD request to http://127.0.0.1:5000/v2/app/manifests/v1: 429 Too Many Requests"#,
                Verdict::RateLimited,
            ),
            (
                r#"failed to pull and unpack image "127.0.0.1:5000/app:v1": failed to resolve image: unexpected status from HEAD request to http://127.0.0.1:5000/v2/app/manifests/v1: 503 Service Unavailable"#,
                Verdict::Network,
            ),
            (
                r#"failed to pull and unpack image "127.0.0.1:5000/app:v1": failed to resolve image: failed to do request: Head "http://127.0.0.1:5000/v2/app/manifests/v1": dial tcp 127.0.0.1:5000: connect: connection refused"#,
                Verdict::Network,
            ),
            (
                r#"failed to pull and unpack image "127.0.0.1:5000/app:v1": failed to resolve image: failed to do request: Head "https://127.0.0.1:5000/v2/app/manifests/v1": tls: failed to verify certificate: x509: certificate signed by unknown authority"#,
                Verdict::Network,
            ),
            (
                r#"failed to pull and unpack image "127.0.0.1:5000/app:v1": failed to resolve image: failed to do request: Head "http://127.0.0.1:5000/v2/app/manifests/v1": read tcp 127.0.0.1:40000->127.0.0.1:5000: read: connection reset by peer"#,
                Verdict::Network,
            ),
            (
                r#"failed to pull and unpack image "127.0.0.1:5000/corrupt:v1": failed commit on ref "layer-sha256:b6": unexpected commit digest sha256:3c, expected sha256:b6: failed precondition"#,
                Verdict::DigestMismatch,
            ),
            // 2.x without a snapshotter to unpack into: the node's configuration, not the registry.
            (
                r#"failed to pull and unpack image "127.0.0.1:5000/app:v1": unable to initialize unpacker: no unpack platforms defined"#,
                Verdict::RuntimeError,
            ),
        ];
        for (message, expected) in cases {
            assert_eq!(classify_pull_error(message), expected, "{message}");
        }
    }

    /// CRI-O's words, read from its code and containers/image's (not run here): CRI-O returns
    /// the Go error as an `Unknown` status; containers/image wraps it in `initializing source
    /// docker://…` and shortens distribution's error bodies to their default texts
    /// (`docker/errors.go`, `docker/distribution_error.go`, `copy/digesting_reader.go`).
    #[test]
    fn cri_o_words() {
        let cases = [
            (
                "initializing source docker://127.0.0.1:5000/app:v1: reading manifest v1 in 127.0.0.1:5000/app: authentication required",
                Verdict::Unauthorized,
            ),
            (
                "initializing source docker://r.io/a:v1: unable to retrieve auth token: invalid username/password: authentication required",
                Verdict::Unauthorized,
            ),
            (
                "initializing source docker://docker.io/acme/private:v1: reading manifest v1 in docker.io/acme/private: requested access to the resource is denied",
                Verdict::Unauthorized,
            ),
            (
                "initializing source docker://ghcr.io/acme/app:v1: reading manifest v1 in ghcr.io/acme/app: denied: permission_denied: The token provided does not match expected scopes.",
                Verdict::Unauthorized,
            ),
            (
                r#"initializing source docker://r.io/a:v1: reading manifest v1 in r.io/a: StatusCode: 403, "<html><body>Forbidden</body></html>""#,
                Verdict::Unauthorized,
            ),
            (
                "initializing source docker://r.io/a:v1: Requesting bearer token: received unexpected HTTP status: 403 Forbidden",
                Verdict::Unauthorized,
            ),
            (
                "initializing source docker://127.0.0.1:5000/app:nope: reading manifest nope in 127.0.0.1:5000/app: manifest unknown",
                Verdict::NotFound,
            ),
            (
                "unable to pull image or OCI artifact: pull image err: initializing source docker://127.0.0.1:5000/app:nope: reading manifest nope in 127.0.0.1:5000/app: manifest unknown; artifact err: image reference: get manifest from ref: create image source: reading manifest nope in 127.0.0.1:5000/app: manifest unknown",
                Verdict::NotFound,
            ),
            (
                "initializing source docker://127.0.0.1:5000/nope:v1: reading manifest v1 in 127.0.0.1:5000/nope: repository name not known to registry",
                Verdict::NotFound,
            ),
            (
                r#"initializing source docker://r.io/a:v1: reading manifest v1 in r.io/a: StatusCode: 404, "404 page not found\n""#,
                Verdict::NotFound,
            ),
            (
                "reading blob sha256:aaaa: fetching blob: blob unknown to registry",
                Verdict::NotFound,
            ),
            (
                "initializing source docker://docker.io/library/a:1: reading manifest 1 in docker.io/library/a: toomanyrequests: You have reached your pull rate limit.",
                Verdict::RateLimited,
            ),
            (
                "initializing source docker://r.io/a:1: too many requests to registry",
                Verdict::RateLimited,
            ),
            (
                r#"RegistryUnavailable: unable to pull image: initializing source docker://127.0.0.1:5000/app:v1: pinging container registry 127.0.0.1:5000: Get "https://127.0.0.1:5000/v2/": dial tcp 127.0.0.1:5000: connect: connection refused"#,
                Verdict::Network,
            ),
            (
                r#"initializing source docker://r.io/a:v1: pinging container registry r.io: Get "https://r.io/v2/": net/http: TLS handshake timeout"#,
                Verdict::Network,
            ),
            (
                "initializing source docker://r.io/a:v1: pinging container registry r.io: received unexpected HTTP status: 503 Service Unavailable",
                Verdict::Network,
            ),
            (
                r#"writing blob: storing blob to file "/var/lib/containers/storage/overlay/tmp/x/1": happened during read: Digest did not match, expected sha256:aaaa, got sha256:bbbb"#,
                Verdict::DigestMismatch,
            ),
            (
                "determining manifest MIME type for docker://r.io/a@sha256:aaaa: Manifest does not match provided manifest digest sha256:aaaa",
                Verdict::DigestMismatch,
            ),
            (
                "Download config.json digest sha256:bbbb does not match expected sha256:aaaa",
                Verdict::DigestMismatch,
            ),
            // A 500 is the registry's own failure, with no verdict of its own: not guessed.
            (
                "initializing source docker://r.io/a:v1: reading manifest v1 in r.io/a: received unexpected HTTP status: 500 Internal Server Error",
                Verdict::RuntimeError,
            ),
        ];
        for (message, expected) in cases {
            assert_eq!(classify_pull_error(message), expected, "{message}");
        }
    }

    #[test]
    fn a_runtime_that_cannot_answer_is_a_runtime_error() {
        let failures = [
            RuntimeFailure::Unreachable {
                endpoint: "unix:///run/containerd/containerd.sock".into(),
                // Words that would classify as Network if they were the runtime's own.
                cause: "connection refused".into(),
            },
            RuntimeFailure::DeadlineExceeded {
                operation: "PullImage",
                after: Duration::from_secs(900),
            },
        ];
        for failure in failures {
            assert_eq!(failure.verdict(), Verdict::RuntimeError, "{failure}");
        }
    }
}

#[cfg(test)]
pub mod fake;
