//! What a canary outcome warns about, typed: event policy matches on the kind, and the text is
//! made in one place ([`Display`](std::fmt::Display)), the same in the JSON lines, the local API,
//! `pullgate check` and Events. Never carries a credential: candidates are named by source, and
//! messages are scrubbed before they get here.

use crate::model::time::rfc3339_seconds;
use crate::model::verdict::Verdict;
use serde::Serialize;
use std::fmt;
use std::time::SystemTime;

/// One warning on a canary outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CanaryWarning {
    /// A candidate tried before the one that decided the outcome failed (a fallback never hides a
    /// broken secret).
    CredentialFailing {
        /// The candidate, by source (`secret ns/name key K`), or `anonymous`.
        credential: String,
        verdict: Verdict,
        message: String,
    },
    /// The credential that worked expires within the warning window.
    ExpiringSoon { at: SystemTime },
    /// The credential that worked says it has expired, yet the registry accepted it.
    ExpiryPassed,
    /// The runtime routes the registry through mirrors or peer caches (runtime canaries only).
    MirrorInPath {
        registry: String,
        mirrors: Vec<String>,
    },
    /// The registry-direct canary walked the hosts containerd uses for the registry, in its
    /// order: one answered the pull (the node's answer), and others would fail a pull that
    /// reaches them — a broken mirror the next host masks, or a host after the answering one
    /// (the upstream) refusing what the mirror serves from its cache.
    MirrorMasks {
        registry: String,
        /// The host that served the pull, as the node's pull would be served.
        answered: String,
        /// Hosts tried before it, which failed (the node fell through them).
        before: Vec<HostVerdict>,
        /// Hosts after it that fail (the node does not reach them while `answered` serves).
        after: Vec<HostVerdict>,
    },
    /// Every host containerd uses for the registry failed, not all in the same way: the outcome
    /// carries the error the node reports (containerd's rule), this the others'.
    HostsDisagree {
        registry: String,
        /// The host whose error the node reports.
        reported: String,
        others: Vec<HostVerdict>,
    },
    /// A `full` canary's blob declares more bytes than are left of the canary's byte budget
    /// (`--max-canary-bytes`): checked by `HEAD` only, not downloaded.
    NotDownloaded {
        /// The blob's digest.
        blob: String,
        /// Its declared size.
        size: u64,
        /// What was left of the budget.
        left: u64,
        /// The budget.
        budget: u64,
    },
}

/// One host's verdict in a registry-direct walk (scrubbed before it gets here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostVerdict {
    /// `host[:port]`.
    pub host: String,
    pub verdict: Verdict,
    pub message: String,
}

impl fmt::Display for HostVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}: {}", self.host, self.verdict)
        } else {
            write!(f, "{}: {}: {}", self.host, self.verdict, self.message)
        }
    }
}

fn join(hosts: &[HostVerdict]) -> String {
    hosts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl CanaryWarning {
    /// Whether this warns that the credential expires (an Event of its own).
    pub fn is_expiry(&self) -> bool {
        matches!(self, Self::ExpiringSoon { .. } | Self::ExpiryPassed)
    }

    /// Whether this warns that a host the runtime uses fails while another serves the pull (an
    /// Event of its own).
    pub fn is_masked_host(&self) -> bool {
        matches!(self, Self::MirrorMasks { .. })
    }
}

impl fmt::Display for CanaryWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CredentialFailing {
                credential,
                verdict,
                message,
            } => write!(f, "CredentialFailing: {credential}: {verdict}: {message}"),
            Self::ExpiringSoon { at } => write!(
                f,
                "ExpiringSoon: the credential expires at {}",
                rfc3339_seconds(*at)
            ),
            Self::ExpiryPassed => f.write_str(
                "ExpiringSoon: the credential's own expiry has passed, yet the registry accepted it",
            ),
            Self::MirrorInPath { registry, mirrors } => write!(
                f,
                "MirrorInPath: the runtime routes {registry} through {}; a mirror may serve cached content without checking credentials, so only the registry-direct canary proves them",
                mirrors.join(", ")
            ),
            Self::MirrorMasks {
                registry,
                answered,
                before,
                after,
            } => {
                write!(f, "MirrorMasks: the node pulls {registry} through {answered}")?;
                if !before.is_empty() {
                    write!(
                        f,
                        "; tried before it and fell through: {}",
                        join(before)
                    )?;
                }
                if !after.is_empty() {
                    write!(f, "; not reached while it answers: {}", join(after))?;
                }
                f.write_str(
                    "; pods still start, but a pull that reaches a failing host fails (a broken mirror, or a credential refused upstream while a mirror serves its cache)",
                )
            }
            Self::HostsDisagree {
                registry,
                reported,
                others,
            } => write!(
                f,
                "HostsDisagree: every host for {registry} failed; the node reports {reported}'s error; the others: {}",
                join(others)
            ),
            Self::NotDownloaded {
                blob,
                size,
                left,
                budget,
            } => write!(
                f,
                "NotDownloaded: blob {blob} declares {size} bytes, more than the {left} left of the canary's {budget}-byte budget (--max-canary-bytes): checked by HEAD only, not downloaded"
            ),
        }
    }
}

/// As its text: the JSON lines carry warnings as strings.
impl Serialize for CanaryWarning {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn text_table() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let cases = [
            (
                CanaryWarning::CredentialFailing {
                    credential: "secret ns/old key r.io".into(),
                    verdict: Verdict::Unauthorized,
                    message: "401 Unauthorized".into(),
                },
                "CredentialFailing: secret ns/old key r.io: Unauthorized: 401 Unauthorized",
                false,
            ),
            (
                CanaryWarning::ExpiringSoon { at },
                "ExpiringSoon: the credential expires at 2023-11-14T22:13:20Z",
                true,
            ),
            (
                CanaryWarning::ExpiryPassed,
                "ExpiringSoon: the credential's own expiry has passed, yet the registry accepted it",
                true,
            ),
            (
                CanaryWarning::MirrorInPath {
                    registry: "r.io".into(),
                    mirrors: vec!["cache.local:5000".into(), "peer.local".into()],
                },
                "MirrorInPath: the runtime routes r.io through cache.local:5000, peer.local; a mirror may serve cached content without checking credentials, so only the registry-direct canary proves them",
                false,
            ),
            (
                CanaryWarning::MirrorMasks {
                    registry: "r.io".into(),
                    answered: "cache.local:5000".into(),
                    before: vec![],
                    after: vec![HostVerdict {
                        host: "r.io".into(),
                        verdict: Verdict::Unauthorized,
                        message: "authentication failed: token service said 401".into(),
                    }],
                },
                "MirrorMasks: the node pulls r.io through cache.local:5000; not reached while it answers: r.io: Unauthorized: authentication failed: token service said 401; pods still start, but a pull that reaches a failing host fails (a broken mirror, or a credential refused upstream while a mirror serves its cache)",
                false,
            ),
            (
                CanaryWarning::MirrorMasks {
                    registry: "r.io".into(),
                    answered: "r.io".into(),
                    before: vec![
                        HostVerdict {
                            host: "cache.local:5000".into(),
                            verdict: Verdict::Network,
                            message: "connection refused".into(),
                        },
                        HostVerdict {
                            host: "peer.local".into(),
                            verdict: Verdict::NotFound,
                            message: String::new(),
                        },
                    ],
                    after: vec![],
                },
                "MirrorMasks: the node pulls r.io through r.io; tried before it and fell through: cache.local:5000: Network: connection refused; peer.local: NotFound; pods still start, but a pull that reaches a failing host fails (a broken mirror, or a credential refused upstream while a mirror serves its cache)",
                false,
            ),
            (
                CanaryWarning::HostsDisagree {
                    registry: "r.io".into(),
                    reported: "cache.local:5000".into(),
                    others: vec![HostVerdict {
                        host: "r.io".into(),
                        verdict: Verdict::Unauthorized,
                        message: "401".into(),
                    }],
                },
                "HostsDisagree: every host for r.io failed; the node reports cache.local:5000's error; the others: r.io: Unauthorized: 401",
                false,
            ),
            (
                CanaryWarning::NotDownloaded {
                    blob: "sha256:ab".into(),
                    size: 1 << 50,
                    left: (1 << 30) - 1000,
                    budget: 1 << 30,
                },
                "NotDownloaded: blob sha256:ab declares 1125899906842624 bytes, more than the 1073740824 left of the canary's 1073741824-byte budget (--max-canary-bytes): checked by HEAD only, not downloaded",
                false,
            ),
        ];
        for (warning, text, expiry) in cases {
            assert_eq!(warning.to_string(), text);
            assert_eq!(serde_json::to_value(&warning).unwrap(), text);
            assert_eq!(warning.is_expiry(), expiry, "{text}");
            assert_eq!(
                warning.is_masked_host(),
                text.starts_with("MirrorMasks:"),
                "{text}"
            );
        }
    }
}
