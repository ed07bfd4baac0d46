//! Cluster mode against the test API server (real kube-rs client code), a real containerd and a
//! real registry: PullSets from the API, this node's labels, only the referenced Secrets and
//! ServiceAccounts watched by name, a 403 in one namespace reported while the others keep working.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate_testenv::apiserver::{ApiServer, objects};
use pullgate_testenv::{Agent, ImageSpec, PASSWORD, TestEnv, USER};
use serde_json::json;
use std::time::Duration;

fn pull_secret(namespace: &str, name: &str, host: &str) -> serde_json::Value {
    objects::pull_secret(namespace, name, host, USER, PASSWORD)
}

fn pullset(namespace: &str, name: &str, image: &str, spec: serde_json::Value) -> serde_json::Value {
    objects::pullset(namespace, name, &[image], spec)
}

#[test]
fn pullsets_from_the_api_server_are_pre_pulled_with_least_privilege() {
    let env = TestEnv::started();
    let host = env.registry.host();
    let app = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let gpu = env.push(&ImageSpec::new("ml/driver", "v1")).unwrap();
    let locked = env.push(&ImageSpec::new("locked/app", "v1")).unwrap();

    let api = ApiServer::start().unwrap();
    api.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "test-node", "labels": {"pool": "general"}},
                     "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}}));
    api.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "another-node"}}));
    api.apply(pull_secret("team", "regcred", &host));
    api.apply(pull_secret("team", "unreferenced", &host));
    api.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "builder", "namespace": "team"},
                     "imagePullSecrets": [{"name": "regcred"}]}));
    api.apply(pullset(
        "team",
        "critical",
        &app.by_tag,
        json!({"serviceAccountName": "builder"}),
    ));
    api.apply(pullset(
        "ml",
        "gpu-only",
        &gpu.by_tag,
        json!({"nodeSelector": {"pool": "gpu"}}),
    ));
    api.apply(pull_secret("locked", "regcred", &host));
    api.apply(pullset(
        "locked",
        "critical",
        &locked.by_tag,
        json!({"imagePullSecrets": [{"name": "regcred"}]}),
    ));
    api.forbid_namespace("locked");

    let kubeconfig = api.kubeconfig_file().unwrap();
    // Both namespaces may gate (the node's condition below counts their PullSets).
    let run = Agent::cluster(&kubeconfig.path(), &env.containerd.endpoint())
        .args(&["--gate-namespaces", "team,locked"])
        .run_once(Duration::from_secs(120))
        .unwrap();

    // The team's set is pulled with its ServiceAccount's secret, read from the API.
    let o = run.prepull(&app.by_tag);
    assert_eq!(
        o["verdict"], "Ok",
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert_eq!(o["credential"], format!("secret team/regcred key {host}"));
    // Not for this node.
    assert!(run.prepulls_of(&gpu.by_tag).is_empty());
    // The forbidden namespace is reported, naming it and the permission; it fails alone.
    let problem = run
        .lines
        .iter()
        .find(|l| l["kind"] == "source" && l["object"] == "Secret locked/regcred")
        .unwrap_or_else(|| panic!("no Forbidden problem:\n{}", run.stdout));
    let message = problem["message"].as_str().unwrap();
    assert!(
        message.starts_with("Forbidden")
            && message.contains("namespace locked")
            && message.contains("secrets"),
        "{message}"
    );
    let locked_outcome = run.prepull(&locked.by_tag);
    assert_eq!(locked_outcome["verdict"], "Forbidden", "{locked_outcome}");
    assert!(
        locked_outcome["message"]
            .as_str()
            .unwrap()
            .contains("namespace locked"),
        "{locked_outcome}"
    );
    assert_eq!(run.code, Some(1));
    // Its owners see it on their PullSet (Events are granted cluster-wide, Secrets are not).
    let events = api.list("events.k8s.io/v1", "events");
    let forbidden = events
        .iter()
        .find(|e| e["reason"] == "PrePullFailed" && e["regarding"]["namespace"] == "locked")
        .unwrap_or_else(|| panic!("no PrePullFailed Event in namespace locked: {events:?}"));
    assert_eq!(forbidden["metadata"]["namespace"], "locked");
    assert_eq!(forbidden["regarding"]["kind"], "PullSet");
    assert!(
        forbidden["note"].as_str().unwrap().contains("Forbidden"),
        "{forbidden}"
    );
    // The team's success is on its own PullSet; nothing about the locked namespace there.
    assert!(events.iter().any(|e| e["reason"] == "PrePulled"
        && e["regarding"]["namespace"] == "team"
        && e["metadata"]["namespace"] == "team"));

    // The node's conditions: ours added by type, the kubelet's untouched.
    let node = api.get("v1", "nodes", "", "test-node").unwrap();
    let conditions: Vec<(String, String, String)> = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap().into(),
                c["status"].as_str().unwrap().into(),
                c["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        conditions,
        [
            (
                "Ready".to_string(),
                "True".to_string(),
                "KubeletReady".to_string()
            ),
            (
                "CriticalImagesReady".to_string(),
                "False".to_string(),
                "Forbidden".to_string()
            )
        ],
        "{node}"
    );
    assert!(
        api.requests()
            .iter()
            .any(|r| r.starts_with("PATCH /api/v1/nodes/test-node/status"))
    );

    // Least privilege: Secrets and ServiceAccounts only by name in their namespace; never a
    // cluster-wide Secret list or watch; this Node only.
    let requests = api.requests();
    let secret_requests: Vec<&String> =
        requests.iter().filter(|r| r.contains("/secrets")).collect();
    assert!(!secret_requests.is_empty());
    for r in &secret_requests {
        assert!(
            r.contains("/namespaces/") && r.contains("fieldSelector=metadata.name"),
            "{r}"
        );
        assert!(!r.contains("unreferenced"), "{r}");
    }
    for r in requests
        .iter()
        .filter(|r| r.starts_with("GET") && r.contains("/nodes"))
    {
        assert!(
            r.contains("fieldSelector=metadata.name%3Dtest-node")
                || r.contains("fieldSelector=metadata.name=test-node")
                || r.starts_with("GET /api/v1/nodes/test-node"),
            "{r}"
        );
    }
    env.assert_no_leak(&[&api.dump()], &[PASSWORD]);
    env.assert_no_leak(&[&run.stdout, &run.stderr], &[PASSWORD]);
}
