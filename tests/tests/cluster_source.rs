//! The cluster source against the test API server: only the objects of PullSets that select this
//! node are watched (and a relabelled node starts watching them); a Secret deleted while the
//! watch was down is forgotten after the relist a `410 Gone` forces; and the kubelet's status
//! updates (heartbeats, `status.images`) start no pass, while a label change does; a PullSet with
//! only its required fields and `null`s is read back with the CRD's defaults and pre-pulled; a
//! field of a newer CRD the server keeps is one bad PullSet, the others kept.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate_testenv::apiserver::objects;
use pullgate_testenv::cluster::{Cluster, NODE};
use pullgate_testenv::kubelet_sim::KubeletSim;
use pullgate_testenv::{ImageSpec, PASSWORD, USER};
use serde_json::{Value, json};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

/// Adds `pool=VALUE` to the Node's labels, keeping everything else it holds.
fn relabel(cluster: &Cluster, pool: &str) {
    let mut node = cluster.api.get("v1", "nodes", "", NODE).unwrap();
    node["metadata"]["labels"]["pool"] = json!(pool);
    cluster.api.apply(node);
}

fn prepull_of<'a>(image: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |l: &Value| l["kind"] == "prepull" && l["image"] == image
}

#[test]
fn only_pullsets_selecting_this_node_are_watched_and_a_relabel_starts_watching() {
    let cluster = Cluster::start(&[]);
    let (env, api) = (&cluster.env, &cluster.api);
    let host = env.registry.host();
    let app = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let gpu = env.push(&ImageSpec::new("ml/driver", "v1")).unwrap();
    api.apply(cluster.secret(PASSWORD));
    api.apply(objects::pull_secret(
        "ml", "gpu-cred", &host, USER, PASSWORD,
    ));
    api.apply(objects::pullset(
        "team",
        "critical",
        &[&app.by_tag],
        json!({"imagePullSecrets": [{"name": "regcred"}]}),
    ));
    api.apply(objects::pullset(
        "ml",
        "gpu-only",
        &[&gpu.by_tag],
        json!({"nodeSelector": {"pool": "gpu"}, "imagePullSecrets": [{"name": "gpu-cred"}]}),
    ));
    let agent = cluster.agent(&["--recheck-interval", "1h"]);
    agent
        .wait_for("the team's set pre-pulled", LONG, 1, |l| {
            prepull_of(&app.by_tag)(l) && l["verdict"] == "Ok"
        })
        .unwrap();
    let about_gpu = |r: &String| r.contains("gpu-cred") || r.contains("/namespaces/ml/");
    let early: Vec<String> = api.requests().into_iter().filter(about_gpu).collect();
    assert!(
        early.is_empty(),
        "a Secret of a PullSet aimed at another pool was read: {early:#?}"
    );
    assert_eq!(agent.count(prepull_of(&gpu.by_tag)), 0);

    relabel(&cluster, "gpu");
    agent
        .wait_for("the gpu set pre-pulled", LONG, 1, prepull_of(&gpu.by_tag))
        .unwrap();
    let pulled = agent.first(prepull_of(&gpu.by_tag));
    assert_eq!(
        (pulled["verdict"].as_str(), pulled["credential"].as_str()),
        (
            Some("Ok"),
            Some(format!("secret ml/gpu-cred key {host}").as_str())
        ),
        "{pulled}\nstderr:\n{}",
        agent.stderr()
    );
    assert!(api.requests().iter().any(|r| r.contains("gpu-cred")));
    let (stdout, stderr) = agent.finish();
    cluster.assert_no_leak(&[&stdout, &stderr], &[PASSWORD]);
}

#[test]
fn a_secret_deleted_while_the_watch_was_down_is_forgotten_after_the_relist() {
    let mut cluster = Cluster::start(&[]);
    let app = cluster.env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    cluster.api.apply(cluster.secret(PASSWORD));
    cluster.api.apply(objects::pullset(
        "team",
        "critical",
        &[&app.by_tag],
        json!({"imagePullSecrets": [{"name": "regcred"}], "canary": {"depth": "manifest"}}),
    ));
    let agent = cluster.agent(&["--recheck-interval", "1h", "--rotation-jitter", "0s"]);
    let canary = |verdict: &'static str| {
        move |l: &Value| {
            l["kind"] == "canary" && l["pullset"] == "critical" && l["verdict"] == verdict
        }
    };
    agent
        .wait_for("the set canaried Ok", LONG, 1, canary("Ok"))
        .unwrap();

    // Away long enough for the server to compact: resuming gets 410 Gone, and the watch relists.
    cluster.api.stop();
    cluster.api.delete("v1", "secrets", "team", "regcred");
    cluster.api.compact();
    cluster.api.restart().unwrap();

    agent
        .wait_for(
            "a canary finding the Secret gone",
            LONG,
            1,
            canary("SecretNotFound"),
        )
        .unwrap_or_else(|e| panic!("{e}\nrequests: {:#?}", cluster.api.requests()));
    let (stdout, stderr) = agent.finish();
    cluster.assert_no_leak(&[&stdout, &stderr], &[PASSWORD]);
}

#[test]
fn kubelet_status_updates_start_no_pass_and_a_label_change_does() {
    let cluster = Cluster::start(&[]);
    let (env, api) = (&cluster.env, &cluster.api);
    let app = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    // A failing credential: every pass tries the registry again with it (a lockout risk).
    api.apply(cluster.secret("wrong-password"));
    api.apply(objects::pullset(
        "team",
        "critical",
        &[&app.by_tag],
        json!({"imagePullSecrets": [{"name": "regcred"}]}),
    ));
    let agent = cluster.agent(&["--recheck-interval", "1h"]);
    agent
        .wait_for("the first pass", LONG, 1, prepull_of(&app.by_tag))
        .unwrap();
    let first = agent.first(prepull_of(&app.by_tag));
    assert_eq!(first["verdict"], "Unauthorized", "{first}");

    // 25 heartbeats, each a new resourceVersion, Ready's lastHeartbeatTime and status.images.
    let kubelet = KubeletSim::start(&api.url(), NODE, Duration::from_millis(200));
    kubelet.wait_patches(25, LONG);
    let node = api.get("v1", "nodes", "", NODE).unwrap();
    assert!(
        node["status"]["images"]
            .as_array()
            .is_some_and(|i| !i.is_empty()),
        "the simulator's images are on the Node: {node}"
    );
    let passes = agent.count(prepull_of(&app.by_tag));
    assert!(
        passes <= 2,
        "{passes} passes for {} heartbeats:\n{}",
        kubelet.patches(),
        agent.stdout()
    );

    // What pullgate reads from the Node changed: a pass starts.
    relabel(&cluster, "general");
    agent
        .wait_for(
            "a pass after the label change",
            LONG,
            passes + 1,
            prepull_of(&app.by_tag),
        )
        .unwrap();
    drop(kubelet);
    let (stdout, stderr) = agent.finish();
    cluster.assert_no_leak(&[&stdout, &stderr], &["wrong-password"]);
}

#[test]
fn a_pullset_the_agent_cannot_decode_is_reported_and_the_others_are_kept() {
    let cluster = Cluster::start(&[]);
    let (env, api) = (&cluster.env, &cluster.api);
    let app = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let newer = env.push(&ImageSpec::new("team/newer", "v1")).unwrap();
    api.apply(cluster.secret(PASSWORD));
    api.apply(objects::pullset(
        "team",
        "critical",
        &[&app.by_tag],
        json!({"imagePullSecrets": [{"name": "regcred"}]}),
    ));
    // A field of a newer CRD, as during a rollout of a new version: the server, pruning by the
    // newer CRD, keeps it; the agent does not know it.
    api.apply(objects::pullset_crd_with_spec_field(
        "priority",
        json!({"type": "string"}),
    ));
    api.apply(objects::pullset(
        "team",
        "from-the-future",
        &[&newer.by_tag],
        json!({"imagePullSecrets": [{"name": "regcred"}], "priority": "high"}),
    ));
    let run = pullgate_testenv::Agent::cluster(&cluster.kubeconfig(), &env.containerd.endpoint())
        .args(&["--insecure-registry", &env.registry.host()])
        .run_once(LONG)
        .unwrap();
    assert_eq!(
        run.prepull(&app.by_tag)["verdict"],
        "Ok",
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    assert!(run.prepulls_of(&newer.by_tag).is_empty());
    let problem = run
        .lines
        .iter()
        .find(|l| l["kind"] == "source" && l["object"] == "PullSet team/from-the-future")
        .unwrap_or_else(|| panic!("the bad PullSet is not reported:\n{}", run.stdout));
    assert_eq!(problem["field"], "spec.priority", "{problem}");
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `priority`"),
        "{problem}"
    );
    cluster.assert_no_leak(&[&run.stdout, &run.stderr], &[PASSWORD]);
}

#[test]
fn a_forbidden_secret_is_retried_at_the_capped_pace_not_at_full_rate() {
    let cluster = Cluster::start(&[]);
    let (env, api) = (&cluster.env, &cluster.api);
    let host = env.registry.host();
    let locked = env.push(&ImageSpec::new("locked/app", "v1")).unwrap();
    api.apply(objects::pull_secret(
        "locked", "regcred", &host, USER, PASSWORD,
    ));
    api.apply(objects::pullset(
        "locked",
        "critical",
        &[&locked.by_tag],
        json!({"imagePullSecrets": [{"name": "regcred"}]}),
    ));
    api.forbid_namespace("locked");
    let agent = cluster.agent(&["--recheck-interval", "1h"]);
    agent
        .wait_for("the Forbidden problem", LONG, 1, |l| {
            l["kind"] == "source" && l["object"] == "Secret locked/regcred"
        })
        .unwrap();
    let asked = || {
        api.requests()
            .iter()
            .filter(|r| r.contains("/namespaces/locked/secrets"))
            .count()
    };
    let first = asked();
    // A window of 50 kubelet heartbeats (10 s or more): kube's default backoff would have asked
    // again at least twice (0.8–1.6 s, then 1.6–3.2 s); the cap waits a minute or more.
    let kubelet = KubeletSim::start(&api.url(), NODE, Duration::from_millis(200));
    kubelet.wait_patches(50, LONG);
    let later = asked();
    assert!(
        later <= first + 1,
        "{} requests for the forbidden Secret in {} heartbeats (first {first}):\n{:#?}",
        later - first,
        kubelet.patches(),
        api.requests()
    );
    agent.assert_alive("a forbidden namespace");
    drop(kubelet);
    let (stdout, stderr) = agent.finish();
    cluster.assert_no_leak(&[&stdout, &stderr], &[PASSWORD]);
}

#[test]
fn a_pullset_with_nulls_and_unknown_fields_is_read_back_with_the_crds_defaults_and_pre_pulled() {
    let cluster = Cluster::start(&[]);
    let (env, api) = (&cluster.env, &cluster.api);
    let app = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    api.apply(cluster.secret(PASSWORD));
    // As a template renders empty values: `null`s the agent's own types refuse (a `bool`, a
    // list, a map, the canary's depth), and a field no CRD has. The server prunes and defaults.
    api.apply(objects::pullset(
        "team",
        "templated",
        &[&app.by_tag],
        json!({"imagePullSecrets": [{"name": "regcred"}], "gate": null, "prePull": null,
               "nodeSelector": null, "canary": {"depth": null, "runtime": null},
               "renderedBy": "helm"}),
    ));
    let run = pullgate_testenv::Agent::cluster(&cluster.kubeconfig(), &env.containerd.endpoint())
        .args(&["--insecure-registry", &env.registry.host()])
        .run_once(LONG)
        .unwrap();
    let problems: Vec<&Value> = run.lines.iter().filter(|l| l["kind"] == "source").collect();
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(
        run.prepull(&app.by_tag)["verdict"],
        "Ok",
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    let stored = api
        .get("pullgate.io/v1alpha1", "pullsets", "team", "templated")
        .unwrap();
    assert_eq!(
        stored["spec"],
        json!({"images": [{"image": app.by_tag}], "imagePullSecrets": [{"name": "regcred"}],
               "gate": true, "prePull": true,
               "canary": {"depth": "manifest", "runtime": false, "onRotation": true}}),
        "{stored}"
    );
    cluster.assert_no_leak(&[&run.stdout, &run.stderr], &[PASSWORD]);
}
