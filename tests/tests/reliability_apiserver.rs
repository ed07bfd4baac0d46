//! Reliability, the API server: answering 500s, cutting every watch and compacting its history, in
//! cycles; and a PullSet created with its Secret, which must not be judged before the Secret is
//! read. The agent stays up, stays bounded in memory (a generous cap on the process's `VmHWM`, a
//! resource bound, never a timing), and loses no edit.
//!
//! Covered elsewhere: the API server away for a while (`cluster_node_apiserver.rs`).

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate_testenv::agent::MEMORY_CAP_KIB;
use pullgate_testenv::apiserver::{ApiServer, objects};
use pullgate_testenv::cluster::{Cluster, NODE};
use pullgate_testenv::process::wait_until;
use pullgate_testenv::{ImageSpec, PASSWORD, USER};
use serde_json::{Value, json};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// 3. The API server failing, cutting watches and compacting, in cycles.

#[test]
fn an_api_server_storm_of_500s_cut_watches_and_410s_is_ridden_out() {
    let mut cluster = Cluster::start(&[]);
    let host = cluster.env.registry.host();
    let first = cluster.env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let late = cluster
        .env
        .push(&ImageSpec::new("team/late", "v1"))
        .unwrap();
    cluster.api.apply(objects::pull_secret(
        "team", "regcred", &host, USER, PASSWORD,
    ));
    cluster.api.apply(objects::pullset(
        "team",
        "critical",
        &[&first.by_tag],
        json!({"imagePullSecrets": [{"name": "regcred"}]}),
    ));
    let agent = cluster.agent(&["--condition-heartbeat", "1s", "--recheck-interval", "5s"]);
    let condition = |api: &ApiServer| api.node_condition(NODE, "CriticalImagesReady");
    cluster
        .api
        .wait("CriticalImagesReady=True", Duration::from_secs(90), |api| {
            condition(api).filter(|c| c["status"] == "True")
        })
        .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));

    // The storm: bursts of 500s, the server going away (every watch cut) and coming back with
    // its history compacted after a change, so that resuming watches get `410 Gone`. Each step
    // waits until the agent has felt it: its requests answered with the 500s (the rest of the
    // burst meets it after the restart), a watch failure logged while the server is away,
    // requests from the agent again once it is back.
    let watch_failures = || agent.stderr().matches("watch failed; retrying").count();
    let or_stderr = |e: anyhow::Error| -> ! { panic!("{e}\nstderr:\n{}", agent.stderr()) };
    for round in 0..4 {
        cluster.api.fail_next(30);
        cluster
            .api
            .wait(
                &format!("round {round}: the agent answered with injected 500s"),
                Duration::from_secs(60),
                |api| (api.pending_failures() < 30).then_some(()),
            )
            .unwrap_or_else(|e| or_stderr(e));
        let failures = watch_failures();
        cluster.api.stop();
        cluster
            .api
            .apply(objects::node(&format!("noise-{round}"), &[]));
        cluster.api.compact();
        wait_until(
            &format!("round {round}: a watch failure while the server is away"),
            Duration::from_secs(60),
            || watch_failures() > failures,
        )
        .unwrap_or_else(|e| or_stderr(e));
        let seen = cluster.api.requests().len();
        cluster.api.restart().unwrap();
        cluster
            .api
            .wait(
                &format!("round {round}: the agent back at the server"),
                Duration::from_secs(60),
                |api| (api.requests().len() > seen).then_some(()),
            )
            .unwrap_or_else(|e| or_stderr(e));
    }
    cluster.api.fail_next(0);
    agent.assert_alive("API server storm");
    let after_storm = condition(&cluster.api).unwrap();

    // An edit after the storm is seen: a new Secret and a new PullSet, pre-pulled with it.
    cluster.api.apply(objects::pull_secret(
        "team", "regcred2", &host, USER, PASSWORD,
    ));
    cluster.api.apply(objects::pullset(
        "team",
        "late",
        &[&late.by_tag],
        json!({"imagePullSecrets": [{"name": "regcred2"}]}),
    ));
    agent
        .wait_for(
            "the PullSet created after the storm pre-pulled",
            Duration::from_secs(120),
            1,
            |l| {
                l["kind"] == "prepull"
                    && l["pullset"] == "late"
                    && l["image"] == late.by_tag.as_str()
                    && l["verdict"] == "Ok"
                    && l["action"] == "pulled"
            },
        )
        .unwrap();
    // (Whether it is judged before its Secret is read is the business of the next test.)
    let pulled =
        agent.first(|l| l["kind"] == "prepull" && l["pullset"] == "late" && l["verdict"] == "Ok");
    assert_eq!(
        pulled["credential"],
        format!("secret team/regcred2 key {host}"),
        "{pulled}"
    );
    // The Node is written again: its PrePulled Event, and conditions with fresh heartbeats.
    cluster
        .api
        .wait(
            "the PrePulled Event of the late image",
            Duration::from_secs(60),
            |api| {
                api.events("PrePulled")
                    .into_iter()
                    .find(|e| e["note"].as_str().is_some_and(|n| n.contains(&late.by_tag)))
            },
        )
        .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));
    cluster
        .api
        .wait(
            "a heartbeat after the storm",
            Duration::from_secs(30),
            |api| {
                condition(api).filter(|c| {
                    c["status"] == "True"
                        && c["lastHeartbeatTime"] != after_storm["lastHeartbeatTime"]
                })
            },
        )
        .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));

    // It was a storm (failed requests and broken watches were retried)…
    let stderr = agent.stderr();
    assert!(stderr.contains("watch failed; retrying"), "{stderr}");
    let requests = cluster.api.requests();
    let pullset_lists = requests
        .iter()
        .filter(|r| {
            r.starts_with("GET /apis/pullgate.io/v1alpha1/pullsets") && !r.contains("watch=true")
        })
        .count();
    assert!(
        pullset_lists > 1,
        "PullSets were never re-listed: {requests:#?}"
    );
    // …and least privilege held through every re-list: Secrets only by name, in their namespace.
    for r in requests.iter().filter(|r| r.contains("/secrets")) {
        assert!(
            r.contains("/namespaces/team/secrets") && r.contains("metadata.name"),
            "a Secret request that is not by name: {r}"
        );
    }
    agent.assert_up_and_bounded(MEMORY_CAP_KIB, "API server storm");
    let (stdout, stderr) = agent.finish();
    cluster.assert_no_leak(&[&stdout, &stderr], &[PASSWORD]);
}

/// Found by the storm test: an edit through the API is a PullSet and the Secret it names, created
/// together (`kubectl apply -f` of both). The agent must not judge the PullSet before it has read
/// the Secret: a `SecretNotFound` for a Secret that exists is a wrong verdict, with a Warning Event
/// on the PullSet, a `CanaryFailed`, an anonymous pull sent to the registry, and the Node's
/// conditions flipping to False and back.
#[test]
fn a_pullset_created_with_its_secret_is_not_judged_before_the_secret_is_read() {
    let cluster = Cluster::start(&[]);
    let (env, api) = (&cluster.env, &cluster.api);
    let host = env.registry.host();
    let first = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let late = env.push(&ImageSpec::new("team/late", "v1")).unwrap();
    api.apply(objects::pull_secret(
        "team", "regcred", &host, USER, PASSWORD,
    ));
    api.apply(objects::pullset(
        "team",
        "critical",
        &[&first.by_tag],
        json!({"imagePullSecrets": [{"name": "regcred"}],
               "canary": {"depth": "manifest"}}),
    ));
    let agent = cluster.agent(&["--rotation-jitter", "0s", "--recheck-interval", "1h"]);
    agent
        .wait_for("both conditions True", Duration::from_secs(90), 2, |l| {
            l["kind"] == "condition" && l["status"] == "True"
        })
        .unwrap();

    // The Secret first, then the PullSet naming it, as `kubectl apply` sends them.
    api.apply(objects::pull_secret(
        "team", "regcred2", &host, USER, PASSWORD,
    ));
    api.apply(objects::pullset(
        "team",
        "late",
        &[&late.by_tag],
        json!({"imagePullSecrets": [{"name": "regcred2"}],
               "canary": {"depth": "manifest"}}),
    ));
    let of_late = |kind: &'static str| move |l: &Value| l["kind"] == kind && l["pullset"] == "late";
    agent
        .wait_for("the late set pre-pulled", Duration::from_secs(60), 1, |l| {
            of_late("prepull")(l) && l["verdict"] == "Ok"
        })
        .unwrap();
    agent
        .wait_for(
            "the late set canaried Ok",
            Duration::from_secs(60),
            1,
            |l| of_late("canary")(l) && l["verdict"] == "Ok",
        )
        .unwrap();
    // A set applied after it, once pre-pulled and canaried, marks that everything the late set
    // set off is out: the pass that judged it has ended (its conditions written), and its canary
    // verdicts are in. Wrong verdicts and flips would be among the lines before the marker's.
    api.apply(objects::pullset(
        "team",
        "marker",
        &[&late.by_tag],
        json!({"imagePullSecrets": [{"name": "regcred2"}],
               "canary": {"depth": "manifest"}}),
    ));
    let of_marker =
        |kind: &'static str| move |l: &Value| l["kind"] == kind && l["pullset"] == "marker";
    agent
        .wait_for(
            "the marker set pre-pulled",
            Duration::from_secs(60),
            1,
            of_marker("prepull"),
        )
        .unwrap();
    agent
        .wait_for(
            "the marker set canaried",
            Duration::from_secs(60),
            1,
            of_marker("canary"),
        )
        .unwrap();
    let lines = agent.lines();
    let wrong: Vec<&Value> = lines
        .iter()
        .filter(|l| (of_late("prepull")(l) || of_late("canary")(l)) && l["verdict"] != "Ok")
        .collect();
    let flips: Vec<&Value> = lines
        .iter()
        .filter(|l| l["kind"] == "condition" && l["status"] == "False")
        .collect();
    assert!(
        wrong.is_empty() && flips.is_empty(),
        "judged before its Secret was read:\n{wrong:#?}\nconditions:\n{flips:#?}"
    );
    let pulled = agent.first(of_late("prepull"));
    assert_eq!(
        (pulled["action"].as_str(), pulled["credential"].as_str()),
        (
            Some("pulled"),
            Some(format!("secret team/regcred2 key {host}").as_str())
        ),
        "{pulled}"
    );
    assert!(
        api.events("PrePullFailed").is_empty(),
        "{:#?}",
        api.events("PrePullFailed")
    );
    assert!(
        api.events("CanaryFailed").is_empty(),
        "{:#?}",
        api.events("CanaryFailed")
    );
    agent.assert_up_and_bounded(MEMORY_CAP_KIB, "PullSet and Secret together");
    let (stdout, stderr) = agent.finish();
    cluster.assert_no_leak(&[&stdout, &stderr], &[PASSWORD]);
}
