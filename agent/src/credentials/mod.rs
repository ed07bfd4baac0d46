//! Which credentials a pull of an image would use, and what went wrong on the way.
//!
//! The seam is [`CredentialResolver`]: the pre-pull engine and the canaries ask it for the ordered
//! candidates and the findings (missing, mistyped, malformed secrets) for one PullSet and one image.
//! [`ExactHostResolver`] is the first version (exact registry host match); a kubelet-compatible
//! keyring replaces it behind the same trait.

pub mod dockerconfig;
mod exact_host;

pub use exact_host::ExactHostResolver;

use crate::image_ref::ImageRef;
use crate::inventory::{Inventory, ObjectKey};
use crate::pullset::ValidPullSet;
use crate::verdict::Verdict;
use secrecy::SecretString;
use std::fmt;

/// Where a credential came from: named, never shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// A key of a pull secret.
    PullSecret { secret: ObjectKey, key: String },
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::PullSecret { secret, key } => write!(f, "secret {secret} key {key}"),
        }
    }
}

/// A credential to try, in order.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub source: CredentialSource,
    pub username: String,
    /// Redacted in `Debug`; exposed only to the adapter that sends it to a runtime or registry.
    pub password: SecretString,
}

/// Something resolution noticed that explains a failure if the pull then fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub verdict: Verdict,
    pub message: String,
}

/// The answer for one PullSet and one image.
#[derive(Clone, Debug, Default)]
pub struct Resolution {
    /// In the order the kubelet would try them. Empty: an anonymous pull.
    pub candidates: Vec<Candidate>,
    pub findings: Vec<Finding>,
}

impl Resolution {
    /// The verdict and message to report when the pull failed with `failure` after every candidate
    /// (or the anonymous attempt). An auth failure with no candidate is explained by the finding
    /// that caused it (a missing secret, say); an auth failure with candidates stands, with the
    /// findings appended; any other failure (network, runtime) stands alone.
    pub fn explain_failure(&self, failure: Verdict, message: &str) -> (Verdict, String) {
        let auth_like = matches!(failure, Verdict::Unauthorized | Verdict::NotFound);
        if auth_like
            && self.candidates.is_empty()
            && let Some(finding) = self.most_telling_finding()
        {
            return (
                finding.verdict,
                format!("{} (anonymous pull failed: {message})", finding.message),
            );
        }
        if self.findings.is_empty() || !auth_like {
            (failure, message.to_string())
        } else {
            let notes: Vec<&str> = self.findings.iter().map(|f| f.message.as_str()).collect();
            (failure, format!("{message}; also: {}", notes.join("; ")))
        }
    }

    /// Findings in the order an engineer should look at them.
    fn most_telling_finding(&self) -> Option<&Finding> {
        const ORDER: [Verdict; 6] = [
            Verdict::ServiceAccountNotFound,
            Verdict::SecretNotFound,
            Verdict::SecretWrongType,
            Verdict::SecretMalformed,
            Verdict::HostMismatch,
            Verdict::NoCredentials,
        ];
        ORDER
            .iter()
            .find_map(|v| self.findings.iter().find(|f| f.verdict == *v))
    }
}

/// Resolves the credentials for one image of one PullSet.
pub trait CredentialResolver: Send + Sync {
    fn resolve(
        &self,
        inventory: &Inventory,
        pullset: &ValidPullSet,
        image: &ImageRef,
    ) -> Resolution;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(verdict: Verdict) -> Finding {
        Finding {
            verdict,
            message: format!("finding {verdict}"),
        }
    }

    #[test]
    fn explain_failure_table() {
        let candidate = Candidate {
            source: CredentialSource::PullSecret {
                secret: ObjectKey::new("ns", "s"),
                key: "r.io".into(),
            },
            username: "u".into(),
            password: SecretString::from("p"),
        };
        let cases: Vec<(Vec<Finding>, bool, Verdict, Verdict)> = vec![
            (vec![], false, Verdict::Unauthorized, Verdict::Unauthorized),
            (
                vec![finding(Verdict::NoCredentials)],
                false,
                Verdict::Unauthorized,
                Verdict::NoCredentials,
            ),
            (
                vec![
                    finding(Verdict::NoCredentials),
                    finding(Verdict::SecretNotFound),
                ],
                false,
                Verdict::Unauthorized,
                Verdict::SecretNotFound,
            ),
            (
                vec![finding(Verdict::SecretWrongType)],
                false,
                Verdict::NotFound,
                Verdict::SecretWrongType,
            ),
            (
                vec![finding(Verdict::SecretNotFound)],
                false,
                Verdict::Network,
                Verdict::Network,
            ),
            (
                vec![finding(Verdict::SecretNotFound)],
                true,
                Verdict::Unauthorized,
                Verdict::Unauthorized,
            ),
            (
                vec![
                    finding(Verdict::ServiceAccountNotFound),
                    finding(Verdict::HostMismatch),
                ],
                false,
                Verdict::Unauthorized,
                Verdict::ServiceAccountNotFound,
            ),
        ];
        for (findings, with_candidate, failure, expected) in cases {
            let r = Resolution {
                candidates: if with_candidate {
                    vec![candidate.clone()]
                } else {
                    vec![]
                },
                findings: findings.clone(),
            };
            let (verdict, message) = r.explain_failure(failure, "registry said no");
            assert_eq!(verdict, expected, "{findings:?} {failure}");
            assert!(message.contains("registry said no"), "{message}");
        }
    }
}
