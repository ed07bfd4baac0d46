//! What cluster mode writes about a node, end to end: the agent runs as a real process against the
//! test API server (real kube-rs client), a real containerd and a real registry.
//!
//! - A node that joins tainted gets its images, both conditions True and its taint removed, while
//!   the kubelet's `Ready` condition and an unrelated taint survive untouched.
//! - The gate timeout removes the taint anyway (`GateTimedOut`), or keeps it with `keep`.
//! - A rotated registry password is a `CanaryFailed` Event on the PullSet and
//!   `PullCredentialsValid=False` on the Node although the image is cached; the Secret updated
//!   through the API is `CanaryRecovered` and True again.
//! - No password anywhere: stdout, stderr, Events, the Node.
//!
//! The node against an API server that is away or failing: `cluster_node_apiserver.rs`.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate_testenv::apiserver::{ApiServer, objects};
use pullgate_testenv::cluster::{Cluster, NODE};
use pullgate_testenv::{ImageSpec, PASSWORD, USER};
use serde_json::json;
use std::time::Duration;

const TAINT: &str = "pullgate.io/not-ready";
const OTHER_TAINT: &str = "example.com/dedicated";
const ROTATED: &str = "pg-Rotated-Passw0rd-7e1f";

/// No password in anything the agent wrote, the API server holds, or the runtime and registry logged.
fn assert_no_leak(cluster: &Cluster, stdout: &str, stderr: &str) {
    cluster.assert_no_leak(&[stdout, stderr], &[PASSWORD, ROTATED]);
}

fn taints_of(api: &ApiServer) -> Vec<String> {
    api.node_taints(NODE)
}

#[test]
fn a_node_that_joins_tainted_gets_its_images_and_loses_only_its_taint() {
    let cluster = Cluster::start(&[(OTHER_TAINT, "NoSchedule"), (TAINT, "NoSchedule")]);
    let image = cluster.env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    cluster.api.apply(cluster.secret(PASSWORD));
    cluster.api.apply(objects::pullset(
        "team",
        "critical",
        &[&image.by_tag],
        json!({"gate": true, "imagePullSecrets": [{"name": "regcred"}],
               "canary": {"onRotation": true, "depth": "manifest"}}),
    ));
    let agent = cluster.agent(&["--rotation-jitter", "0s", "--condition-heartbeat", "1s"]);

    cluster
        .api
        .wait("the taint removed", Duration::from_secs(90), |api| {
            (!taints_of(api).contains(&TAINT.to_string())).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));
    // Removed only after both conditions were True.
    assert_eq!(
        cluster.condition("CriticalImagesReady"),
        Some(("True".into(), "Ok".into()))
    );
    assert_eq!(
        cluster.condition("PullCredentialsValid"),
        Some(("True".into(), "Ok".into()))
    );
    // The unrelated taint and the kubelet's condition are untouched.
    assert_eq!(taints_of(&cluster.api), [OTHER_TAINT]);
    let ready = cluster.api.node_condition(NODE, "Ready").unwrap();
    assert_eq!(
        (
            &ready["status"],
            &ready["reason"],
            &ready["lastHeartbeatTime"]
        ),
        (
            &json!("True"),
            &json!("KubeletReady"),
            &json!("2026-01-01T00:00:00Z")
        )
    );
    // The taint went with a JSON patch that tests the element before removing it.
    let patches: Vec<String> = cluster
        .api
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH /api/v1/nodes/test-node") && !r.contains("/status"))
        .collect();
    assert_eq!(patches.len(), 1, "{patches:?}");
    // Every write about the Node names pullgate as its field manager.
    let node_patches: Vec<String> = cluster
        .api
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH /api/v1/nodes/"))
        .collect();
    assert!(
        !node_patches.is_empty()
            && node_patches
                .iter()
                .all(|r| r.contains("fieldManager=pullgate")),
        "{node_patches:?}"
    );

    // Heartbeats refresh lastHeartbeatTime; lastTransitionTime stays at the flip.
    let first = cluster
        .api
        .node_condition(NODE, "CriticalImagesReady")
        .unwrap();
    let later = cluster
        .api
        .wait("a heartbeat", Duration::from_secs(10), |api| {
            api.node_condition(NODE, "CriticalImagesReady")
                .filter(|c| c["lastHeartbeatTime"] != first["lastHeartbeatTime"])
        })
        .unwrap();
    assert_eq!(later["lastTransitionTime"], first["lastTransitionTime"]);
    assert_eq!(later["status"], "True");

    // Events: GateOpened on the Node, PrePulled on the PullSet, from pullgate on this node.
    let opened = cluster.wait_event("GateOpened", Duration::from_secs(10), &agent);
    assert_eq!(opened["regarding"]["kind"], "Node");
    assert_eq!(opened["regarding"]["name"], NODE);
    // As the kubelet does (and `kubectl describe node` searches): the Node's name as its UID.
    assert_eq!(opened["regarding"]["uid"], NODE);
    assert_eq!(opened["metadata"]["namespace"], "default");
    assert_eq!(opened["reportingController"], "pullgate.io/agent");
    assert_eq!(opened["reportingInstance"], NODE);
    assert_eq!(opened["type"], "Normal");
    assert!(opened["note"].as_str().unwrap().contains(TAINT), "{opened}");
    let pulled = cluster.wait_event("PrePulled", Duration::from_secs(10), &agent);
    assert_eq!(pulled["regarding"]["kind"], "PullSet");
    assert_eq!(pulled["regarding"]["namespace"], "team");
    assert_eq!(pulled["metadata"]["namespace"], "team");
    assert!(
        pulled["note"].as_str().unwrap().contains(&image.by_tag),
        "{pulled}"
    );
    let (stdout, stderr) = agent.finish();
    assert_no_leak(&cluster, &stdout, &stderr);
}

#[test]
fn a_taint_with_fields_the_agent_does_not_know_is_still_removed() {
    let cluster = Cluster::start(&[]);
    // As a newer API server may write it: a field this agent's Kubernetes types do not have.
    let mut node = objects::node(NODE, &[]);
    node["spec"]["taints"] = json!([{"key": TAINT, "effect": "NoSchedule",
        "timeAdded": "2026-01-01T00:00:00Z", "futureField": "from a newer server"}]);
    cluster.api.apply(node);
    let image = cluster.env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    cluster.api.apply(cluster.secret(PASSWORD));
    cluster.api.apply(objects::pullset(
        "team",
        "critical",
        &[&image.by_tag],
        json!({"gate": true, "imagePullSecrets": [{"name": "regcred"}]}),
    ));
    let agent = cluster.agent(&["--condition-heartbeat", "1s"]);
    // The patch tests only the key and effect: a test of the whole element as read (without
    // `futureField`) would fail on every try, and the node would stay tainted.
    cluster
        .api
        .wait("the taint removed", Duration::from_secs(90), |api| {
            (!taints_of(api).contains(&TAINT.to_string())).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));
    let (stdout, stderr) = agent.finish();
    assert_no_leak(&cluster, &stdout, &stderr);
}

#[test]
fn the_gate_timeout_removes_the_taint_anyway_or_keeps_it_when_told() {
    for (action, removed) in [("remove", true), ("keep", false)] {
        let cluster = Cluster::start(&[(TAINT, "NoSchedule")]);
        // A gated image that does not exist: the gate cannot open.
        let missing = format!("{}/team/never-pushed:v1", cluster.env.registry.host());
        cluster.api.apply(cluster.secret(PASSWORD));
        cluster.api.apply(objects::pullset(
            "team",
            "critical",
            &[&missing],
            json!({"gate": true, "imagePullSecrets": [{"name": "regcred"}]}),
        ));
        let agent = cluster.agent(&[
            "--gate-timeout",
            "3s",
            "--gate-timeout-action",
            action,
            "--pull-attempts",
            "1",
            "--recheck-interval",
            "1s",
        ]);
        let event = cluster.wait_event("GateTimedOut", Duration::from_secs(60), &agent);
        assert_eq!(event["type"], "Warning", "{event}");
        assert_eq!(event["regarding"]["kind"], "Node");
        let note = event["note"].as_str().unwrap();
        assert!(note.contains("CriticalImagesReady is False"), "{note}");
        if removed {
            assert!(note.starts_with("removed taint"), "{note}");
            cluster
                .api
                .wait("the taint removed", Duration::from_secs(30), |api| {
                    taints_of(api).is_empty().then_some(())
                })
                .unwrap();
        } else {
            assert!(note.starts_with("kept taint"), "{note}");
            // Kept: still there after two more passes have failed, and the timeout is announced
            // once (one decision in the agent's lines, one Event on the API server).
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
            assert_eq!(taints_of(&cluster.api), [TAINT], "{action}");
            let decided =
                |l: &serde_json::Value| l["kind"] == "event" && l["reason"] == "GateTimedOut";
            assert_eq!(agent.count(decided), 1, "{}", agent.stdout());
            assert_eq!(cluster.api.events("GateTimedOut").len(), 1);
        }
        assert_eq!(
            cluster.condition("CriticalImagesReady").map(|c| c.0),
            Some("False".into())
        );
        let failed = cluster.wait_event("PrePullFailed", Duration::from_secs(10), &agent);
        assert_eq!(failed["regarding"]["name"], "critical");
        let (stdout, stderr) = agent.finish();
        assert_no_leak(&cluster, &stdout, &stderr);
    }
}

#[test]
fn a_rotated_password_is_an_event_on_the_pullset_and_a_condition_on_the_node() {
    let mut cluster = Cluster::start(&[]);
    let image = cluster.env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    cluster.api.apply(cluster.secret(PASSWORD));
    cluster.api.apply(objects::pullset(
        "team",
        "critical",
        &[&image.by_tag],
        json!({"imagePullSecrets": [{"name": "regcred"}],
               "canary": {"schedule": "*/2 * * * * *", "jitter": "0s", "onRotation": true, "depth": "manifest"}}),
    ));
    let agent = cluster.agent(&["--rotation-jitter", "0s", "--recheck-interval", "1h"]);
    cluster.wait_condition(
        "CriticalImagesReady",
        "True",
        Duration::from_secs(60),
        &agent,
    );
    cluster.wait_condition(
        "PullCredentialsValid",
        "True",
        Duration::from_secs(30),
        &agent,
    );

    // The registry's password rotates; the Secret is not updated; the image stays cached.
    // The registry restarts to take the new password: a canary in that window may see it down
    // (`Network`) before one sees the rotation; the condition settles on `Unauthorized`.
    cluster.env.registry.set_password(USER, ROTATED).unwrap();
    cluster
        .api
        .wait(
            "PullCredentialsValid=False (Unauthorized)",
            Duration::from_secs(60),
            |_| {
                cluster
                    .condition("PullCredentialsValid")
                    .filter(|c| *c == ("False".to_string(), "Unauthorized".to_string()))
            },
        )
        .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));
    let failed = cluster.wait_event("CanaryFailed", Duration::from_secs(10), &agent);
    assert_eq!(failed["type"], "Warning");
    assert_eq!(failed["regarding"]["kind"], "PullSet");
    assert_eq!(failed["regarding"]["name"], "critical");
    assert_eq!(failed["metadata"]["namespace"], "team");
    assert!(
        failed["note"].as_str().unwrap().contains("Unauthorized"),
        "{failed}"
    );
    // Still cached: the images condition does not flip.
    assert_eq!(
        cluster.condition("CriticalImagesReady").map(|c| c.0),
        Some("True".into())
    );
    // Repeats (every 2 s) are aggregated into the one Event's series, not re-created.
    cluster
        .api
        .wait("a CanaryFailed series", Duration::from_secs(20), |api| {
            let events = api.events("CanaryFailed");
            (events.len() == 1 && events[0]["series"]["count"].as_i64() >= Some(2)).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{:?}", cluster.api.events("CanaryFailed")));

    // The Secret is updated through the API: recovered, True again.
    cluster.api.apply(cluster.secret(ROTATED));
    cluster.wait_condition(
        "PullCredentialsValid",
        "True",
        Duration::from_secs(15),
        &agent,
    );
    let recovered = cluster.wait_event("CanaryRecovered", Duration::from_secs(10), &agent);
    assert_eq!(recovered["type"], "Normal");
    assert_eq!(recovered["regarding"]["name"], "critical");
    let (stdout, stderr) = agent.finish();
    assert_no_leak(&cluster, &stdout, &stderr);
}
