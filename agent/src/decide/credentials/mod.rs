//! Which credentials a pull of an image would use, and what went wrong on the way.
//!
//! The seam is [`CredentialResolver`]: the pre-pull engine and the canaries ask it for the ordered
//! candidates and the findings (missing, mistyped, malformed secrets) for one PullSet and one image.
//! [`KubeletResolver`] gives the kubelet's answer: the pod rule, its keyring rules, the node's
//! Docker config and credential-provider plugins, in that order. The plugins are reached through
//! [`CredentialPlugins`], which the adapter that runs them (`adapters::credential_plugin`)
//! implements: nothing here runs a process.

pub mod dockerconfig;
pub mod expiry;
pub mod keyring;
mod kubelet;
pub mod pull_secret;
pub mod sa_token;
pub mod shown_key;

pub use kubelet::{
    KubeletResolver, NodeDockerConfig, ParsedFile, parse_docker_config_file, pod_service_account,
    pull_secret_names, resolve_docker_config_files,
};
pub use sa_token::PodServiceAccount;

use crate::model::image_ref::ImageRef;
use crate::model::inventory::{Inventory, ObjectKey};
use crate::model::pullset::ValidPullSet;
use crate::model::verdict::Verdict;
use futures::future::BoxFuture;
use secrecy::SecretString;
use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

/// Where a credential came from: named, never shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// A key of a pull secret.
    PullSecret { secret: ObjectKey, key: String },
    /// A key of the node's Docker config file (or a file given on the command line).
    DockerConfig { path: PathBuf, key: String },
    /// A key a credential-provider plugin returned.
    Plugin { provider: String, key: String },
}

impl CredentialSource {
    /// The registry key as written: for matching, never for display (see [`Self::shown_key`]).
    pub fn key(&self) -> &str {
        match self {
            CredentialSource::PullSecret { key, .. }
            | CredentialSource::DockerConfig { key, .. }
            | CredentialSource::Plugin { key, .. } => key,
        }
    }

    /// The key as it may be shown ([`shown_key::shown_key`]): no userinfo, query or fragment, and
    /// nothing of a key that does not parse.
    pub fn shown_key(&self) -> shown_key::ShownKey {
        shown_key::shown_key(self.key())
    }

    /// The source without the key: `secret ns/name`, `file PATH`, `plugin NAME`.
    pub fn origin(&self) -> String {
        match self {
            CredentialSource::PullSecret { secret, .. } => format!("secret {secret}"),
            CredentialSource::DockerConfig { path, .. } => format!("file {}", path.display()),
            CredentialSource::Plugin { provider, .. } => format!("plugin {provider}"),
        }
    }
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} key {}", self.origin(), self.shown_key().text)
    }
}

/// A credential to try, in order.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub source: CredentialSource,
    pub username: String,
    /// Redacted in `Debug`; exposed only to the adapter that sends it to a runtime or registry.
    pub password: SecretString,
    /// Other secrets its source holds that are never sent (a Docker config entry's
    /// `identitytoken` and `registrytoken`): kept only to scrub them from messages.
    pub tokens: Vec<SecretString>,
    /// When the credential itself says it expires (a JWT's `exp`, an ECR token's expiration).
    pub expires_at: Option<SystemTime>,
}

impl Candidate {
    /// Every secret of this credential, for [`crate::decide::secret_scrub::scrub`]: the password
    /// (a plugin's token too) and the tokens. `scrub` also removes their base64 forms, so the
    /// `auth` field and an `Authorization: Basic` header are covered.
    pub fn secrets(&self) -> impl Iterator<Item = &SecretString> {
        std::iter::once(&self.password).chain(&self.tokens)
    }
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
    /// Set when the kubelet would fail the pull before trying anything (a used pull secret it
    /// cannot parse): no pull is attempted, and this is the verdict.
    pub blocked: Option<Finding>,
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
        const ORDER: [Verdict; 7] = [
            Verdict::Forbidden,
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

/// A credential-provider plugin run that failed, for the Node's Events: the plugin is the node's
/// configuration, so its failure (and what it wrote to stderr, scrubbed and cut short) is told on
/// the Node, never in a tenant's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginFailure {
    /// The provider's name in the kubelet's configuration.
    pub provider: String,
    /// What failed, as the plugin adapter words it (never a credential).
    pub error: String,
    /// The scrubbed, single-line excerpt of the plugin's stderr (empty when it wrote none).
    pub stderr: String,
}

/// Where plugin failures are reported (the daemon's Events); one-shot commands have none.
pub type PluginFailureSink = std::sync::Arc<dyn Fn(PluginFailure) + Send + Sync>;

/// A credential a credential-provider plugin returned, filed under its `auth` key.
#[derive(Clone, Debug)]
pub struct PluginCredential {
    pub provider: String,
    /// The `auth` key as the plugin wrote it.
    pub key: String,
    pub username: String,
    /// Redacted in `Debug`.
    pub password: SecretString,
    /// The ServiceAccount token the plugin was given (service-account token mode), never sent
    /// to a registry by pullgate: kept only to scrub it from messages.
    pub tokens: Vec<SecretString>,
}

/// One answer of the node's credential-provider plugins for one repository.
#[derive(Clone, Debug, Default)]
pub struct PluginAnswer {
    /// From every plugin that applies, in config order.
    pub credentials: Vec<PluginCredential>,
    /// One message per plugin that failed (the kubelet pulls without its credentials); it names
    /// the plugin and the image, never a credential.
    pub failures: Vec<String>,
    /// What else the plugins' run says: a provider in service-account token mode not invoked
    /// (`NoCredentials`, naming the ServiceAccount and the missing annotation or setting), or
    /// invoked without the token the kubelet would send (`Ok`).
    pub notes: Vec<Finding>,
}

/// The node's credential-provider plugins (the kubelet's `--image-credential-provider-config`), as
/// the resolver needs them.
pub trait CredentialPlugins: Send + Sync {
    /// The credentials for `repository` (`registry/repository`) pulled as `service_account`
    /// (the pod rule's ServiceAccount, for the providers in service-account token mode).
    fn credentials<'a>(
        &'a self,
        repository: &'a str,
        service_account: &'a PodServiceAccount,
    ) -> BoxFuture<'a, PluginAnswer>;
}

/// ServiceAccount tokens from the API server's TokenRequest API (`serviceaccounts/token`), for
/// the credential providers in service-account token mode; `adapters::kube::token_request`
/// implements it. Only cluster mode has one.
pub trait ServiceAccountTokens: Send + Sync {
    /// A token of `account` (whose UID is `uid`; empty: not checked) for `audience`, or why
    /// none could be had (naming the ServiceAccount, never a token).
    fn token<'a>(
        &'a self,
        account: &'a ObjectKey,
        uid: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<SecretString, String>>;
}

/// Resolves the credentials for one image of one PullSet.
pub trait CredentialResolver: Send + Sync {
    fn resolve<'a>(
        &'a self,
        inventory: &'a Inventory,
        pullset: &'a ValidPullSet,
        image: &'a ImageRef,
    ) -> BoxFuture<'a, Resolution>;
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
            tokens: vec![],
            expires_at: None,
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
                blocked: None,
            };
            let (verdict, message) = r.explain_failure(failure, "registry said no");
            assert_eq!(verdict, expected, "{findings:?} {failure}");
            assert!(message.contains("registry said no"), "{message}");
        }
    }
}
