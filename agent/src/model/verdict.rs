//! The verdict taxonomy shared by every path (pre-pull, canaries, reporters), and the rules that turn
//! a runtime's error into one. Pure code: the CRI adapter hands over the runtime's own message, this
//! module decides what it means.

use serde::Serialize;
use std::fmt;

/// What an attempt to get an image ended in. Never carries a credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Verdict {
    Ok,
    Unauthorized,
    NoCredentials,
    HostMismatch,
    SecretNotFound,
    SecretWrongType,
    SecretMalformed,
    ServiceAccountNotFound,
    NotFound,
    RateLimited,
    Network,
    DigestMismatch,
    RuntimeError,
    Expired,
    Forbidden,
}

impl Verdict {
    /// All verdicts, for exhaustive tables and metric pre-registration.
    pub const ALL: [Verdict; 15] = [
        Verdict::Ok,
        Verdict::Unauthorized,
        Verdict::NoCredentials,
        Verdict::HostMismatch,
        Verdict::SecretNotFound,
        Verdict::SecretWrongType,
        Verdict::SecretMalformed,
        Verdict::ServiceAccountNotFound,
        Verdict::NotFound,
        Verdict::RateLimited,
        Verdict::Network,
        Verdict::DigestMismatch,
        Verdict::RuntimeError,
        Verdict::Expired,
        Verdict::Forbidden,
    ];

    /// The CamelCase name used in JSON, Events, condition reasons and metric labels (bounded).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "Ok",
            Verdict::Unauthorized => "Unauthorized",
            Verdict::NoCredentials => "NoCredentials",
            Verdict::HostMismatch => "HostMismatch",
            Verdict::SecretNotFound => "SecretNotFound",
            Verdict::SecretWrongType => "SecretWrongType",
            Verdict::SecretMalformed => "SecretMalformed",
            Verdict::ServiceAccountNotFound => "ServiceAccountNotFound",
            Verdict::NotFound => "NotFound",
            Verdict::RateLimited => "RateLimited",
            Verdict::Network => "Network",
            Verdict::DigestMismatch => "DigestMismatch",
            Verdict::RuntimeError => "RuntimeError",
            Verdict::Expired => "Expired",
            Verdict::Forbidden => "Forbidden",
        }
    }

    pub fn is_ok(self) -> bool {
        self == Verdict::Ok
    }

    /// Whether retrying the same pull later can change the answer without anyone fixing anything.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Verdict::Network | Verdict::RateLimited | Verdict::RuntimeError
        )
    }

    /// One line for a human on call: what to check next.
    pub fn hint(self) -> &'static str {
        match self {
            Verdict::Ok => "nothing to do",
            Verdict::Unauthorized => {
                "the registry refused the credential: check that the pull secret's password or token is current and has pull access to this repository"
            }
            Verdict::NoCredentials => {
                "no pull secret covers this registry: add one to the PullSet's imagePullSecrets or to its ServiceAccount"
            }
            Verdict::HostMismatch => {
                "a pull secret exists but its registry key does not match the image's registry (port, scheme or path): fix the key in the secret"
            }
            Verdict::SecretNotFound => {
                "a referenced pull secret does not exist in the namespace: create it or fix the name"
            }
            Verdict::SecretWrongType => {
                "a referenced pull secret is not of type kubernetes.io/dockerconfigjson (or kubernetes.io/dockercfg): the kubelet ignores it"
            }
            Verdict::SecretMalformed => {
                "a referenced pull secret cannot be parsed (bad JSON, bad base64, or an auth without `user:password`): regenerate it"
            }
            Verdict::ServiceAccountNotFound => {
                "the ServiceAccount named by the PullSet does not exist in its namespace"
            }
            Verdict::NotFound => {
                "the registry has no such repository, tag or digest: check the image reference and that it was pushed"
            }
            Verdict::RateLimited => {
                "the registry is rate-limiting pulls: wait, authenticate, or use a mirror"
            }
            Verdict::Network => {
                "the registry could not be reached (DNS, connection, TLS or timeout): check the node's network path, proxy and CA configuration"
            }
            Verdict::DigestMismatch => {
                "the content served does not match its digest: check the registry's storage and any proxy in between"
            }
            Verdict::RuntimeError => {
                "the container runtime (or the registry) failed in an unexpected way or is unreachable: read the message, then check the runtime's health and its log"
            }
            Verdict::Expired => {
                "the credential has expired: rotate it (short-lived registry tokens must be refreshed)"
            }
            Verdict::Forbidden => {
                "pullgate may not read an object it needs (RBAC): grant get/list/watch on it in that namespace, e.g. by applying manifests/namespace-access there"
            }
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classifies the error message a container runtime returned for `PullImage`.
///
/// containerd reports registry failures as text inside a gRPC `Unknown` status, e.g.
/// `failed to pull and unpack image "…": failed to resolve reference "…": pulling from host … failed
/// with status code [manifests v1]: 401 Unauthorized`. The rules below match the phrases containerd's
/// remotes/docker resolver and fetcher produce (and CRI-O's equivalents); the integration tests pin
/// them against a real containerd. Anything unrecognised is a `RuntimeError`, never a guess.
pub fn classify_pull_error(message: &str) -> Verdict {
    let m = message.to_ascii_lowercase();
    let has = |needle: &str| m.contains(needle);

    // Authorisation: a 401/403 from the registry, or the resolver's own auth errors.
    if has("401 unauthorized")
        || has("403 forbidden")
        || has("unauthorized: ")
        || has("authorization failed")
        || has("failed to fetch anonymous token")
        || has("failed to fetch oauth token")
        || has("denied: requested access to the resource is denied")
        || has("no basic auth credentials")
    {
        return Verdict::Unauthorized;
    }
    if has("429 too many requests") || has("toomanyrequests") {
        return Verdict::RateLimited;
    }
    // Absent repository, tag or digest.
    if (has("failed to resolve reference") && has(": not found"))
        || has("manifest unknown")
        || has("name unknown")
        || has("404 not found")
        || has("blob unknown")
    {
        return Verdict::NotFound;
    }
    if has("unexpected commit digest")
        || has("digest mismatch")
        || has("unexpected digest")
        || has("content digest") && has("not match")
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
        || has("server gave http response to https client")
        || has("dial tcp")
        || has("eof") && has("pulling from host")
        || has("context deadline exceeded")
            && (has("resolve") || has("dial") || has("pulling from host"))
        || has("502 bad gateway")
        || has("503 service unavailable")
        || has("504 gateway timeout")
    {
        return Verdict::Network;
    }
    Verdict::RuntimeError
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_unique() {
        let mut names: Vec<_> = Verdict::ALL.iter().map(|v| v.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Verdict::ALL.len());
        for v in Verdict::ALL {
            assert_eq!(
                serde_json::to_value(v).unwrap(),
                serde_json::json!(v.as_str())
            );
            assert!(!v.hint().is_empty());
        }
    }

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
        }
    }

    #[test]
    fn only_network_like_verdicts_are_transient() {
        for v in Verdict::ALL {
            let expected = matches!(
                v,
                Verdict::Network | Verdict::RateLimited | Verdict::RuntimeError
            );
            assert_eq!(v.is_transient(), expected, "{v}");
        }
    }
}
