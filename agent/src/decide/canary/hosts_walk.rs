//! How containerd walks a registry's hosts for one pull, so the registry-direct canary can walk
//! them the same way and give the node's answer. Ported from containerd's
//! `core/remotes/docker/resolver.go` (`dockerResolver.Resolve`, `request.retryRequest`) and
//! `core/remotes/docker/fetcher.go` (`dockerFetcher.Fetch`), tags `v1.6.20`, `v1.7.24`, `v2.1.9`:
//!
//! - **Which hosts**: a reference by tag is resolved on the hosts with both `pull` and `resolve`;
//!   one by digest on the hosts with `pull` (`filterHosts(caps)`), in `hosts.toml` order. Content
//!   (manifests by digest, blobs) is fetched from the hosts in order, first success wins.
//! - **When it moves on**: after a transport error (connection refused, TLS, a timeout), a failed
//!   authorization (the token service refused, or a `401` the authorizer cannot answer:
//!   `ErrInvalidAuthorization`), a `404`, and any other status above 399 (`403`, `429`, `5xx` —
//!   a `5xx` is retried once on the last host only). A status from 300 to 399 that is not
//!   followed ends the walk with that error; so does anything after a host answered (a manifest
//!   that is not for this platform, a digest mismatch).
//! - **Which error the node reports when every host failed** ([`Dialect`]): 1.6 and 1.7 the
//!   first error that is not a `404`, else "not found"; 2.x the one that came furthest
//!   (`firstErrPriority`: a manifest over the size limit, then a status above 399, then a `404`,
//!   then a transport or authorization error), the first of its rank.
//!
//! The canary's per-host request sequence is coarser than containerd's (it resolves and fetches
//! on one host): a `404` for a blob on a mirror falls through to the next host whole, where
//! containerd would have resolved on the mirror and fetched that blob from the next host. The
//! answer — which host serves the pull, or which error the node sees — is the same.

use crate::decide::registry_hosts::{Dialect, Host};

/// What one pull asks of the hosts first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// A reference by tag: resolved on `pull` + `resolve` hosts.
    ByTag,
    /// A reference by digest: `pull` hosts.
    ByDigest,
}

/// The hosts containerd tries for `kind`, in order (indexes into `hosts`).
pub fn candidates(hosts: &[Host], kind: RequestKind) -> Vec<usize> {
    hosts
        .iter()
        .enumerate()
        .filter(|(_, h)| match kind {
            RequestKind::ByTag => h.capabilities.pull && h.capabilities.resolve,
            RequestKind::ByDigest => h.capabilities.pull,
        })
        .map(|(i, _)| i)
        .collect()
}

/// How one host's attempt ended, in containerd's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAttempt {
    /// The host served the pull.
    Answered,
    /// Connection, TLS, timeout, or authorization failed (the token service refused, a `401`
    /// after the credential was sent).
    TransportOrAuth,
    /// `404`.
    NotFound,
    /// Another status above 399 (`403`, `429`, `5xx`).
    Status(u16),
    /// A manifest over containerd's size limit.
    TooLarge,
    /// A failure that ends the walk: a status below 400 not followed, or a failure after the
    /// host answered (wrong platform, digest mismatch, a broken configuration).
    Final,
}

/// Whether containerd moves on to the next host after `attempt`.
pub fn falls_through(attempt: HostAttempt) -> bool {
    match attempt {
        HostAttempt::Answered | HostAttempt::Final => false,
        HostAttempt::Status(status) => status > 399,
        HostAttempt::TransportOrAuth | HostAttempt::NotFound | HostAttempt::TooLarge => true,
    }
}

/// The node's answer over the attempts, in host order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeAnswer {
    /// This host served the pull.
    Answered(usize),
    /// The pull fails with this host's error.
    Failed(usize),
    /// No host was tried (none has the capability): containerd says "not found".
    NoHost,
}

/// The node's answer: the first host that answered, the first that ended the walk, or — every
/// host fell through — the error containerd reports for the `dialect`.
pub fn node_answer(dialect: Dialect, attempts: &[HostAttempt]) -> NodeAnswer {
    for (i, attempt) in attempts.iter().enumerate() {
        match attempt {
            HostAttempt::Answered => return NodeAnswer::Answered(i),
            a if !falls_through(*a) => return NodeAnswer::Failed(i),
            _ => {}
        }
    }
    if attempts.is_empty() {
        return NodeAnswer::NoHost;
    }
    let reported = match dialect {
        // `firstErr`: the first error that is not a 404; all 404s: "not found" (the first).
        Dialect::V1_6 | Dialect::V1_7 => attempts
            .iter()
            .position(|a| *a != HostAttempt::NotFound)
            .unwrap_or(0),
        // `firstErrPriority`: the highest rank, the first of it (`<` keeps the first).
        Dialect::V2 => {
            let mut best = 0;
            for (i, a) in attempts.iter().enumerate() {
                if rank(*a) > rank(attempts[best]) {
                    best = i;
                }
            }
            best
        }
    };
    NodeAnswer::Failed(reported)
}

/// containerd 2.x's `firstErrPriority` of a failure.
fn rank(attempt: HostAttempt) -> u8 {
    match attempt {
        HostAttempt::TransportOrAuth => 1,
        HostAttempt::NotFound => 2,
        HostAttempt::Status(_) => 3,
        HostAttempt::TooLarge => 4,
        HostAttempt::Answered | HostAttempt::Final => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::registry_hosts::{Capabilities, Scheme, TlsSettings};
    use HostAttempt::{Answered, Final, NotFound, Status, TooLarge, TransportOrAuth as Auth};

    #[test]
    fn what_falls_through() {
        for (attempt, want) in [
            (Answered, false),
            (Auth, true),
            (NotFound, true),
            (Status(401), true),
            (Status(403), true),
            (Status(429), true),
            (Status(500), true),
            (Status(503), true),
            (Status(308), false),
            (Status(399), false),
            (TooLarge, true),
            (Final, false),
        ] {
            assert_eq!(falls_through(attempt), want, "{attempt:?}");
        }
    }

    #[test]
    fn the_node_answer_per_release_line() {
        use NodeAnswer::{Answered as A, Failed as F, NoHost};
        for (name, attempts, v1, v2) in [
            ("nothing tried", vec![], NoHost, NoHost),
            ("the mirror serves", vec![Answered, Auth], A(0), A(0)),
            (
                "a stopped mirror, the upstream serves",
                vec![Auth, Answered],
                A(1),
                A(1),
            ),
            (
                "a mirror's 500, the upstream serves",
                vec![Status(500), Answered],
                A(1),
                A(1),
            ),
            (
                "a mirror's 404, the upstream serves",
                vec![NotFound, Answered],
                A(1),
                A(1),
            ),
            (
                "a failure after answering ends the walk",
                vec![Final, Answered],
                F(0),
                F(0),
            ),
            (
                "an unfollowed redirect ends the walk",
                vec![Status(302), Answered],
                F(0),
                F(0),
            ),
            // The mirror has not the image, the upstream refuses the credential: 1.x reports
            // the refusal, 2.x the 404 (seen in tests/tests/registry_mirror.rs).
            ("404 then refused", vec![NotFound, Auth], F(1), F(0)),
            ("refused then 404", vec![Auth, NotFound], F(0), F(1)),
            (
                "all 404: not found, the first",
                vec![NotFound, NotFound],
                F(0),
                F(0),
            ),
            (
                "403 outranks a transport error on 2.x",
                vec![Auth, Status(403)],
                F(0),
                F(1),
            ),
            (
                "the first of a rank",
                vec![Status(500), Status(403)],
                F(0),
                F(0),
            ),
            (
                "too large outranks all",
                vec![Status(403), TooLarge],
                F(0),
                F(1),
            ),
            ("one host", vec![Auth], F(0), F(0)),
        ] {
            assert_eq!(node_answer(Dialect::V1_6, &attempts), v1, "1.6: {name}");
            assert_eq!(node_answer(Dialect::V1_7, &attempts), v1, "1.7: {name}");
            assert_eq!(node_answer(Dialect::V2, &attempts), v2, "2.x: {name}");
        }
    }

    fn host(name: &str, pull: bool, resolve: bool) -> Host {
        Host {
            scheme: Scheme::Https,
            host: name.into(),
            path: "/v2".into(),
            capabilities: Capabilities {
                pull,
                resolve,
                ..Capabilities::default()
            },
            tls: TlsSettings::default(),
            http_fallback: false,
            header: Vec::new(),
        }
    }

    #[test]
    fn candidates_by_capability() {
        let hosts = [
            host("pull-only", true, false),
            host("mirror", true, true),
            host("resolve-only", false, true),
            host("upstream", true, true),
        ];
        assert_eq!(candidates(&hosts, RequestKind::ByTag), [1, 3]);
        assert_eq!(candidates(&hosts, RequestKind::ByDigest), [0, 1, 3]);
        assert!(candidates(&[], RequestKind::ByTag).is_empty());
    }
}
