//! The readiness gate in cluster mode counts only PullSets from `--gate-namespaces`: a tenant's
//! `gate: true` PullSet whose image can never be pulled does not keep the node tainted; it is
//! told so (a `GateNotAllowed` Event on it) and the `GateOpened` Event on the Node names it. With
//! its namespace allowed, the same PullSet holds the taint.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate_testenv::apiserver::objects;
use pullgate_testenv::cluster::{Cluster, NODE};
use pullgate_testenv::{ImageSpec, PASSWORD};
use serde_json::json;
use std::time::Duration;

const TAINT: &str = "pullgate.io/not-ready";

/// A node joining tainted; `team/critical` (its image pushed, its Secret good) and
/// `tenant/hog` (an image that was never pushed), both `gate: true`.
fn cluster() -> (Cluster, String) {
    let cluster = Cluster::start(&[(TAINT, "NoSchedule")]);
    let image = cluster.env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    cluster.api.apply(cluster.secret(PASSWORD));
    cluster.api.apply(objects::pullset(
        "team",
        "critical",
        &[&image.by_tag],
        json!({"gate": true, "imagePullSecrets": [{"name": "regcred"}]}),
    ));
    let missing = format!("{}/tenant/never-pushed:v1", cluster.env.registry.host());
    cluster.api.apply(objects::pullset(
        "tenant",
        "hog",
        &[&missing],
        json!({"gate": true}),
    ));
    (cluster, image.by_tag)
}

#[test]
fn a_tenants_gating_pullset_outside_the_gate_namespaces_does_not_hold_the_taint() {
    let (cluster, _) = cluster();
    let agent = cluster.agent(&[
        "--gate-namespaces",
        "kube-system,team",
        "--pull-attempts",
        "1",
        "--recheck-interval",
        "1s",
        "--condition-heartbeat",
        "1s",
    ]);
    // Removed although tenant/hog's image can never be pulled, long before the 10 min timeout.
    let opened = cluster.wait_event("GateOpened", Duration::from_secs(90), &agent);
    let note = opened["note"].as_str().unwrap();
    assert!(
        note.ends_with(
            "; not counted (gate: true outside --gate-namespaces kube-system,team): tenant/hog"
        ),
        "{note}"
    );
    cluster
        .api
        .wait("the taint removed", Duration::from_secs(30), |api| {
            (!api.node_taints(NODE).contains(&TAINT.to_string())).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));
    assert!(cluster.api.events("GateTimedOut").is_empty());
    // The condition the gate waited for says what it did not count.
    let ready = cluster
        .api
        .node_condition(NODE, "CriticalImagesReady")
        .unwrap();
    assert_eq!(ready["status"], "True", "{ready}");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.ends_with(
            "; not counted (gate: true outside --gate-namespaces kube-system,team): tenant/hog"
        ),
        "{message}"
    );
    // Told to the tenant on its PullSet, naming no other namespace's objects.
    let told = cluster.wait_event("GateNotAllowed", Duration::from_secs(30), &agent);
    assert_eq!(told["type"], "Warning", "{told}");
    assert_eq!(told["regarding"]["kind"], "PullSet", "{told}");
    assert_eq!(told["regarding"]["namespace"], "tenant", "{told}");
    assert_eq!(told["regarding"]["name"], "hog", "{told}");
    let note = told["note"].as_str().unwrap();
    assert!(
        note.contains("namespace tenant is not one a cluster admin allowed"),
        "{note}"
    );
    assert!(note.contains("--gate-namespaces"), "{note}");
    assert!(
        !note.contains("team") && !note.contains("kube-system"),
        "{note}"
    );
    // Its image is still pre-pulled (and fails): the tenant sees why on its PullSet.
    let failed = cluster.wait_event("PrePullFailed", Duration::from_secs(30), &agent);
    assert_eq!(failed["regarding"]["name"], "hog", "{failed}");
    // Told once, not on every pass: two more failed passes later, still one Event, no series.
    let failures = |l: &serde_json::Value| l["kind"] == "prepull" && l["verdict"] != "Ok";
    let seen = agent.count(failures);
    agent
        .wait_for(
            "two more failed passes",
            Duration::from_secs(60),
            seen + 2,
            failures,
        )
        .unwrap();
    let told = cluster.api.events("GateNotAllowed");
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(
        told[0].get("series").is_none_or(|s| s.is_null()),
        "{told:?}"
    );
    let (stdout, stderr) = agent.finish();
    cluster.assert_no_leak(&[&stdout, &stderr], &[PASSWORD]);
}

#[test]
fn with_the_tenants_namespace_allowed_its_gating_pullset_holds_the_taint() {
    let (cluster, _) = cluster();
    let agent = cluster.agent(&[
        "--gate-namespaces",
        "team,tenant",
        "--pull-attempts",
        "1",
        "--recheck-interval",
        "1s",
    ]);
    cluster.wait_condition(
        "CriticalImagesReady",
        "False",
        Duration::from_secs(90),
        &agent,
    );
    let failures = |l: &serde_json::Value| {
        l["kind"] == "prepull" && l["pullset"] == "hog" && l["verdict"] != "Ok"
    };
    agent
        .wait_for(
            "three failed passes of tenant/hog",
            Duration::from_secs(90),
            3,
            failures,
        )
        .unwrap();
    assert_eq!(cluster.api.node_taints(NODE), [TAINT]);
    assert!(cluster.api.events("GateOpened").is_empty());
    assert!(cluster.api.events("GateNotAllowed").is_empty());
    let (stdout, stderr) = agent.finish();
    cluster.assert_no_leak(&[&stdout, &stderr], &[PASSWORD]);
}
