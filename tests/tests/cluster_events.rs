//! Events as a real API server takes them, end to end (the test API server validates
//! events.k8s.io/v1 Events with the rules ported from the real server's
//! `pkg/apis/core/validation/events.go`):
//!
//! - a PullSet with a 250-character name on a node with a 200-character name: every Event is
//!   accepted (a name within 253 characters, a `reportingInstance` within 128), created with the
//!   field manager `pullgate`, and every request carries `User-Agent: pullgate/<version>`;
//! - a repeat with a new note (the same image failing with the same verdict, its note now saying
//!   how many earlier Events the per-node budget dropped) is an Event carrying the new note: a note is immutable on a real server, so it is a
//!   new Event, never a patch of the old one.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate_testenv::apiserver::objects;
use pullgate_testenv::cluster::Cluster;
use pullgate_testenv::{Agent, ImageSpec, PASSWORD};
use serde_json::json;
use std::time::Duration;

#[test]
fn events_about_long_names_are_accepted_and_name_pullgate() {
    let cluster = Cluster::start(&[]);
    let node = format!("node-{}", "n".repeat(195));
    assert_eq!(node.len(), 200);
    let pullset = format!("ps-{}", "p".repeat(247));
    assert_eq!(pullset.len(), 250);
    cluster.api.apply(objects::node(
        &node,
        &[("pullgate.io/not-ready", "NoSchedule")],
    ));
    let image = cluster.env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    cluster.api.apply(cluster.secret(PASSWORD));
    cluster.api.apply(objects::pullset(
        "team",
        &pullset,
        &[&image.by_tag],
        json!({"gate": true, "imagePullSecrets": [{"name": "regcred"}],
               "canary": {"onRotation": true, "depth": "manifest"}}),
    ));
    let agent = Agent::cluster(&cluster.kubeconfig(), &cluster.env.containerd.endpoint())
        .args(&["--insecure-registry", &cluster.env.registry.host()])
        .args(&["--node-name", &node, "--rotation-jitter", "0s"])
        .spawn()
        .unwrap();

    let pulled = cluster.wait_event("PrePulled", Duration::from_secs(90), &agent);
    assert_eq!(pulled["regarding"]["name"], pullset.as_str());
    let name = pulled["metadata"]["name"].as_str().unwrap();
    assert!(name.len() <= 253, "{name}");
    assert!(name.starts_with("ps-ppp"), "{name}");
    let instance = pulled["reportingInstance"].as_str().unwrap();
    assert!(instance.len() <= 128, "{instance}");
    assert!(instance.starts_with("node-nnn"), "{instance}");
    // The Node's own Event, named after the 200-character node.
    let opened = cluster.wait_event("GateOpened", Duration::from_secs(60), &agent);
    assert_eq!(opened["regarding"]["name"], node.as_str());
    assert!(opened["metadata"]["name"].as_str().unwrap().len() <= 253);

    // Every Event write names the field manager; every request says who sends it.
    let event_writes: Vec<String> = cluster
        .api
        .requests()
        .into_iter()
        .filter(|r| {
            r.starts_with("POST /apis/events.k8s.io/")
                || r.starts_with("PATCH /apis/events.k8s.io/")
        })
        .collect();
    assert!(
        !event_writes.is_empty()
            && event_writes
                .iter()
                .all(|r| r.contains("fieldManager=pullgate")),
        "{event_writes:?}"
    );
    let agents = cluster.api.user_agents();
    let want = format!("pullgate/{}", env!("CARGO_PKG_VERSION"));
    assert!(
        !agents.is_empty() && agents.iter().all(|a| *a == want),
        "want {want}: {agents:?}"
    );
    let (_stdout, stderr) = agent.finish();
    // No write was refused as invalid (a bare "422" would also match a timestamp or a port).
    assert!(
        !stderr.contains("event rejected") && !stderr.contains("is invalid"),
        "{stderr}"
    );
}

#[test]
fn a_repeat_with_a_new_note_carries_it() {
    let cluster = Cluster::start(&[]);
    let image = cluster.env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    cluster.api.apply(cluster.secret("a-stale-password"));
    cluster.api.apply(objects::pullset(
        "team",
        "critical",
        &[&image.by_tag],
        json!({"imagePullSecrets": [{"name": "regcred"}]}),
    ));
    // Every pass fails the same way (one aggregation key); the budget drops some repeats, and
    // the next one that passes says so in its note: a repeat with a new note.
    let agent = cluster.agent(&[
        "--recheck-interval",
        "1s",
        "--event-burst",
        "1",
        "--event-refill",
        "3s",
    ]);
    let dropped = |note: &str| note.contains("earlier events not sent");
    let events = cluster
        .api
        .wait(
            "a PrePullFailed whose note says what the budget dropped",
            Duration::from_secs(60),
            |api| {
                let events = api.events("PrePullFailed");
                events
                    .iter()
                    .any(|e| dropped(e["note"].as_str().unwrap_or("")))
                    .then_some(events)
            },
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n{:?}\nstderr:\n{}",
                cluster.api.events("PrePullFailed"),
                agent.stderr()
            )
        });
    // The first note is kept in its own Event (a note is immutable on a real server).
    assert!(
        events
            .iter()
            .any(|e| !dropped(e["note"].as_str().unwrap_or(""))),
        "{events:?}"
    );
    let (_stdout, stderr) = agent.finish();
    // No write was refused as invalid (a bare "422" would also match a timestamp or a port).
    assert!(
        !stderr.contains("event rejected") && !stderr.contains("is invalid"),
        "{stderr}"
    );
}
