//! The verdict taxonomy shared by every path (pre-pull, canaries, reporters): names, hints and
//! which verdicts are transient. Turning a runtime's error into one is
//! `decide::runtime::RuntimeFailure::verdict`; a registry's, the registry adapter's probe.

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
    /// The pull was not started: the image filesystem's free space is at or below the headroom
    /// (`--min-free-disk`). Retried next pass, not within one.
    DiskPressure,
}

impl Verdict {
    /// All verdicts, for exhaustive tables and metric pre-registration.
    pub const ALL: [Verdict; 16] = [
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
        Verdict::DiskPressure,
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
            Verdict::DiskPressure => "DiskPressure",
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
            Verdict::DiskPressure => {
                "free space on the node's image filesystem or raise --min-free-disk"
            }
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
