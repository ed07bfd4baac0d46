//! The manifests' RBAC, enforced: the test API server holds the ClusterRole and its binding as
//! `manifests/base` renders them and the Role and RoleBinding of `overlays/example/team-payments`
//! (Secret `regcred`, ServiceAccount `payment-api-sa`, by `resourceNames`), and authorizes every
//! request of the agent by them (`ApiServer::enforce_rbac`). The agent, in cluster mode against
//! a real containerd and registry:
//!
//! - pulls the PullSet whose ServiceAccount and Secret the Role names (its by-name watches of
//!   both were authorized by `resourceNames`), writes its conditions and Events and removes the
//!   taint (nodes, nodes/status, events, pullsets: the ClusterRole covers them);
//! - reports `Forbidden` for a PullSet naming a Secret the Role does not name, and for one in a
//!   namespace given the bare `namespace-access` unpatched (its placeholder names grant nothing);
//! - is denied nothing else: the stand-in's denials name only those two Secrets.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate_testenv::apiserver::{AGENT_USER, objects};
use pullgate_testenv::cluster::{Cluster, NODE};
use pullgate_testenv::kustomize::render;
use pullgate_testenv::{ImageSpec, PASSWORD, RunningAgent, USER};
use serde_json::json;
use std::time::Duration;

const NAMESPACE: &str = "team-payments";
/// Where the bare `namespace-access` is applied, its placeholder names left as they are.
const UNPATCHED: &str = "team-unpatched";
const TAINT: &str = "pullgate.io/not-ready";

/// The RBAC objects of a rendering, as the API server would store them; those without a
/// namespace of their own put in `namespace` when given (`kubectl apply -n`).
fn apply_rbac(cluster: &Cluster, dir: &str, namespace: Option<&str>) -> usize {
    let objs: Vec<_> = render(dir)
        .into_iter()
        .filter(|o| o.api_version() == "rbac.authorization.k8s.io/v1")
        .collect();
    for o in &objs {
        let mut value = o.value.clone();
        if let Some(ns) = namespace
            && value["metadata"]["namespace"].is_null()
        {
            value["metadata"]["namespace"] = json!(ns);
        }
        cluster.api.apply(value);
    }
    objs.len()
}

/// Waits for the `PrePullFailed` Event on PullSet `namespace/name` and checks it says Forbidden.
fn wait_forbidden(cluster: &Cluster, namespace: &str, name: &str, agent: &RunningAgent) {
    let failed = cluster
        .api
        .wait(
            &format!("a PrePullFailed Event on PullSet {namespace}/{name}"),
            Duration::from_secs(90),
            |api| {
                api.events("PrePullFailed").into_iter().find(|e| {
                    e["regarding"]["namespace"] == namespace && e["regarding"]["name"] == name
                })
            },
        )
        .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));
    let note = failed["note"].as_str().unwrap();
    assert!(
        note.contains("Forbidden") && note.contains(namespace),
        "{failed}"
    );
}

#[test]
fn the_manifests_grant_the_agent_what_it_does_and_secrets_only_by_name() {
    let cluster = Cluster::start(&[(TAINT, "NoSchedule")]);
    let host = cluster.env.registry.host();
    let app = cluster
        .env
        .push(&ImageSpec::new("payments/api", "v1"))
        .unwrap();
    let other = cluster
        .env
        .push(&ImageSpec::new("payments/batch", "v1"))
        .unwrap();

    // base: the ClusterRole and its binding; the team: its Role and RoleBinding.
    assert_eq!(apply_rbac(&cluster, "base", None), 2);
    assert_eq!(
        apply_rbac(&cluster, "overlays/example/team-payments", None),
        2
    );
    // The bare opt-in, unpatched (its placeholder names), in another namespace.
    assert_eq!(apply_rbac(&cluster, "namespace-access", Some(UNPATCHED)), 2);
    cluster.api.enforce_rbac();

    cluster.api.apply(objects::pull_secret(
        NAMESPACE, "regcred", &host, USER, PASSWORD,
    ));
    cluster.api.apply(objects::pull_secret(
        NAMESPACE,
        "batch-cred",
        &host,
        USER,
        PASSWORD,
    ));
    cluster
        .api
        .apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "payment-api-sa", "namespace": NAMESPACE},
        "imagePullSecrets": [{"name": "regcred"}]}));
    cluster.api.apply(objects::pullset(
        NAMESPACE,
        "granted",
        &[&app.by_tag],
        json!({"gate": true, "serviceAccountName": "payment-api-sa"}),
    ));
    let agent = cluster.agent(&["--gate-namespaces", NAMESPACE]);

    // Granted: pulled, conditions written, taint removed.
    cluster
        .api
        .wait("the taint removed", Duration::from_secs(90), |api| {
            (!api.node_taints(NODE).contains(&TAINT.to_string())).then_some(())
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}\ndenials: {:#?}\nstderr:\n{}",
                cluster.api.rbac_denials(),
                agent.stderr()
            )
        });
    assert_eq!(
        cluster.condition("CriticalImagesReady"),
        Some(("True".into(), "Ok".into()))
    );
    let pulled = cluster.wait_event("PrePulled", Duration::from_secs(30), &agent);
    assert_eq!(pulled["regarding"]["name"], "granted");
    // Both objects were watched by name, and so authorized by resourceNames alone.
    let requests = cluster.api.requests();
    for (plural, name) in [
        ("secrets", "regcred"),
        ("serviceaccounts", "payment-api-sa"),
    ] {
        let path = format!("GET /api/v1/namespaces/{NAMESPACE}/{plural}?");
        assert!(
            requests.iter().any(|r| r.starts_with(&path)
                && r.contains("watch=true")
                && r.contains(&format!("metadata.name%3D{name}"))),
            "no by-name watch of {plural} {name}: {requests:#?}"
        );
    }
    assert!(
        cluster.api.rbac_denials().is_empty(),
        "{:#?}",
        cluster.api.rbac_denials()
    );

    // Not granted: a Secret the Role does not name.
    cluster.api.apply(objects::pullset(
        NAMESPACE,
        "ungranted",
        &[&other.by_tag],
        json!({"gate": true, "imagePullSecrets": [{"name": "batch-cred"}]}),
    ));
    wait_forbidden(&cluster, NAMESPACE, "ungranted", &agent);

    // The unpatched opt-in grants nothing usable: its namespace's Secret is Forbidden too.
    cluster.api.apply(objects::pull_secret(
        UNPATCHED, "regcred", &host, USER, PASSWORD,
    ));
    cluster.api.apply(objects::pullset(
        UNPATCHED,
        "unpatched",
        &[&other.by_tag],
        json!({"gate": true, "imagePullSecrets": [{"name": "regcred"}]}),
    ));
    wait_forbidden(&cluster, UNPATCHED, "unpatched", &agent);

    // The only denials: those two Secrets, read by name in their namespaces.
    let denials = cluster.api.rbac_denials();
    let denied = |name: &str, namespace: &str| {
        let words = |verb: &str| {
            format!(
                "secrets \"{name}\" is forbidden: User \"{AGENT_USER}\" cannot {verb} resource \"secrets\" in API group \"\" in the namespace \"{namespace}\""
            )
        };
        ["get", "list", "watch"].map(words)
    };
    let expected: Vec<String> = denied("batch-cred", NAMESPACE)
        .into_iter()
        .chain(denied("regcred", UNPATCHED))
        .collect();
    for denial in &denials {
        assert!(
            expected.contains(denial),
            "a denial other than Secrets {NAMESPACE}/batch-cred and {UNPATCHED}/regcred: {denials:#?}"
        );
    }
    for secret in ["\"batch-cred\"", "\"regcred\""] {
        assert!(
            denials.iter().any(|d| d.contains(secret)),
            "Secret {secret} was never denied: {denials:#?}"
        );
    }
    let (_stdout, stderr) = agent.finish();
    assert!(
        stderr.contains("batch-cred"),
        "the agent should log the Forbidden Secret:\n{stderr}"
    );
}
