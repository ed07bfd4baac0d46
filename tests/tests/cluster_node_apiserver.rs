//! What cluster mode writes about a node when the API server is away or failing, end to end: the
//! agent runs as a real process against the test API server (real kube-rs client), a real
//! containerd and a real registry.
//!
//! - The API server away: pre-pulls go on, the Node cannot be written, and the latest state is
//!   written (and the Events held back are sent) when it is back.
//! - An API server failing every request at first: alive but not ready; then every failure is a
//!   JSON line while only the per-node Event budget reaches the API server, and the metrics tell
//!   the same story.
//! - No password anywhere: stdout, stderr, Events, the Node.
//!
//! The gate, the taint, the conditions and the Events of a healthy API server: `cluster_node.rs`.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate_testenv::agent::is_condition;
use pullgate_testenv::apiserver::objects;
use pullgate_testenv::cluster::Cluster;
use pullgate_testenv::process::{free_port, wait_until};
use pullgate_testenv::{ImageSpec, PASSWORD, http};
use serde_json::json;
use std::time::Duration;

/// No password in anything the agent wrote, the API server holds, or the runtime and registry logged.
fn assert_no_leak(cluster: &Cluster, stdout: &str, stderr: &str) {
    cluster.assert_no_leak(&[stdout, stderr], &[PASSWORD]);
}

/// Scrapes `/metrics` on `port` until `settled` holds; that scrape.
fn scrape_until(
    port: u16,
    what: &str,
    timeout: Duration,
    settled: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let mut last = String::new();
    wait_until(what, timeout, || {
        last = http::get(port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default();
        settled(&last)
    })
    .map_err(|e| anyhow::anyhow!("{e}\nlast scrape:\n{last}"))?;
    Ok(last)
}

/// The value of the metric line that starts with `prefix` (name and labels).
fn metric(metrics: &str, prefix: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
}

#[test]
fn with_the_api_server_away_pre_pulls_go_on_and_the_latest_state_is_written_when_it_is_back() {
    let mut cluster = Cluster::start(&[]);
    let app = cluster.env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let later = ImageSpec::new("team/later", "v1");
    let later_ref = format!("{}/team/later:v1", cluster.env.registry.host());
    cluster.api.apply(cluster.secret(PASSWORD));
    cluster.api.apply(objects::pullset(
        "team",
        "critical",
        &[&app.by_tag, &later_ref],
        json!({"gate": true, "imagePullSecrets": [{"name": "regcred"}]}),
    ));
    let agent = cluster.agent(&["--recheck-interval", "2s", "--pull-attempts", "1"]);
    cluster.wait_condition(
        "CriticalImagesReady",
        "False",
        Duration::from_secs(60),
        &agent,
    );
    assert_eq!(
        cluster.condition("CriticalImagesReady").map(|c| c.1),
        Some("NotFound".into())
    );

    // The API server goes away. Meanwhile the missing image appears in the registry.
    cluster.api.stop();
    cluster.env.push(&later).unwrap();
    // The server is still away: whatever the agent does now, it does during the outage.
    agent
        .wait_for(
            "the image pulled while the API server is away",
            Duration::from_secs(90),
            1,
            |l| l["kind"] == "prepull" && l["image"] == later_ref.as_str() && l["verdict"] == "Ok",
        )
        .unwrap();
    agent
        .wait_for(
            "CriticalImagesReady True decided while the API server is away",
            Duration::from_secs(30),
            1,
            |l| is_condition(l, "CriticalImagesReady", "True"),
        )
        .unwrap();
    // It tries to write the new state, and cannot.
    let write_failures = || {
        agent
            .stderr()
            .matches("node conditions not written; retrying")
            .count()
    };
    let failed = write_failures();
    wait_until(
        "a failed write of the Node while the API server is away",
        Duration::from_secs(90),
        || write_failures() > failed,
    )
    .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));
    assert_eq!(
        cluster.condition("CriticalImagesReady").map(|c| c.0),
        Some("False".into()),
        "nothing can be written while the server is away"
    );
    cluster.api.restart().unwrap();

    // Back: the latest state is written, and the Events held back are sent.
    cluster.wait_condition(
        "CriticalImagesReady",
        "True",
        Duration::from_secs(45),
        &agent,
    );
    let pulled = cluster.wait_event("PrePulled", Duration::from_secs(30), &agent);
    assert_eq!(pulled["regarding"]["name"], "critical");
    cluster
        .api
        .wait(
            "the PrePulled Event of the image pulled while away",
            Duration::from_secs(30),
            |api| {
                api.events("PrePulled")
                    .into_iter()
                    .find(|e| e["note"].as_str().is_some_and(|n| n.contains(&later_ref)))
            },
        )
        .unwrap();
    let (stdout, stderr) = agent.finish();
    assert_no_leak(&cluster, &stdout, &stderr);
}

#[test]
fn a_node_never_floods_the_api_server_and_its_probes_tell_ready_from_alive() {
    let cluster = Cluster::start(&[]);
    cluster.api.apply(cluster.secret(PASSWORD));
    let sets = 12;
    for i in 0..sets {
        let missing = format!("{}/team/missing-{i}:v1", cluster.env.registry.host());
        cluster.api.apply(objects::pullset(
            "team",
            &format!("set-{i}"),
            &[&missing],
            json!({"imagePullSecrets": [{"name": "regcred"}]}),
        ));
    }
    let port = free_port().unwrap();
    // The API server fails every request at first: alive, not ready.
    cluster.api.fail_next(u32::MAX);
    let agent = cluster.agent(&[
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        // Scraped without a token (the reviews are `metrics_auth.rs`'s concern).
        "--metrics-auth",
        "none",
        "--event-burst",
        "4",
        "--event-refill",
        "1h",
        "--pull-attempts",
        "1",
    ]);
    cluster
        .api
        .wait("/healthz", Duration::from_secs(30), |_| {
            (http::status(port, "/healthz") == Some(200)).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));
    // The failures are lifted only once the agent has met some of them.
    cluster
        .api
        .wait(
            "a request of the agent failed",
            Duration::from_secs(30),
            |api| (api.pending_failures() < u32::MAX).then_some(()),
        )
        .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));
    assert_eq!(http::status(port, "/readyz"), Some(503));
    cluster.api.fail_next(0);
    cluster
        .api
        .wait("/readyz", Duration::from_secs(60), |_| {
            (http::status(port, "/readyz") == Some(200)).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));

    // Every failure is a JSON line; only the budget's worth reaches the API server.
    agent
        .wait_for(
            "every failure reported",
            Duration::from_secs(30),
            sets,
            |l| l["kind"] == "event" && l["reason"] == "PrePullFailed",
        )
        .unwrap();
    let host = cluster.env.registry.host();
    let not_found = format!(
        r#"pullgate_prepull_outcomes_total{{registry="{host}",namespace="team",verdict="NotFound"}}"#
    );
    const SENT: &str = r#"pullgate_events_total{reason="PrePullFailed"}"#;
    // The agent has settled once its metrics account for every failure of the passes it has
    // finished (each pass fails once per PullSet): each one's Event sent (after the API server
    // took it) or dropped (over the budget).
    let metrics = scrape_until(
        port,
        "every failure's Event sent or dropped",
        Duration::from_secs(60),
        |metrics| {
            let failures = metric(metrics, &not_found).unwrap_or(0);
            let sent = metric(metrics, SENT).unwrap_or(0);
            let dropped = metric(metrics, "pullgate_events_dropped_total").unwrap_or(0);
            failures >= sets as u64
                && failures.is_multiple_of(sets as u64)
                && sent + dropped >= failures
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));
    let events = cluster.api.events("PrePullFailed");
    assert_eq!(events.len(), 4, "{events:?}");

    // The same story in the metrics (every pass counts; a PullSet gates by default).
    let value = |prefix: &str| -> u64 {
        metric(&metrics, prefix).unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
    };
    let failures = value(&not_found);
    assert!(
        failures >= sets as u64 && failures % sets as u64 == 0,
        "{failures}"
    );
    assert_eq!(value(SENT), 4);
    // Every failure is an Event decided; all but the budget's four were dropped.
    assert_eq!(value("pullgate_events_dropped_total"), failures - 4);
    assert_eq!(
        value(r#"pullgate_node_condition{condition="CriticalImagesReady",status="False"}"#),
        1
    );
    assert!(
        value(r#"pullgate_apiserver_errors_total{kind="5xx"}"#) > 0,
        "the failed requests at start are counted"
    );
    assert!(!metrics.contains(PASSWORD));
    let (stdout, stderr) = agent.finish();
    assert_no_leak(&cluster, &stdout, &stderr);
}

#[test]
fn a_throttling_api_server_is_retried_until_the_gate_opens() {
    let cluster = Cluster::start(&[("pullgate.io/not-ready", "NoSchedule")]);
    let image = cluster.env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    cluster.api.apply(cluster.secret(PASSWORD));
    cluster.api.apply(objects::pullset(
        "team",
        "critical",
        &[&image.by_tag],
        json!({"gate": true, "imagePullSecrets": [{"name": "regcred"}]}),
    ));
    // The first 20 requests are refused as an overloaded server refuses them: 429s, then 503s.
    cluster.api.throttle_next(10, 429, 1);
    let agent = cluster.agent(&["--rotation-jitter", "0s"]);
    cluster
        .api
        .wait("the 429s answered", Duration::from_secs(60), |api| {
            (api.pending_throttles() == 0).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));
    cluster.api.throttle_next(10, 503, 1);
    cluster
        .api
        .wait("the 503s answered", Duration::from_secs(60), |api| {
            (api.pending_throttles() == 0).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));
    // The steady state all the same: both conditions written, the taint lifted.
    cluster.wait_condition(
        "CriticalImagesReady",
        "True",
        Duration::from_secs(90),
        &agent,
    );
    cluster.wait_condition(
        "PullCredentialsValid",
        "True",
        Duration::from_secs(90),
        &agent,
    );
    cluster
        .api
        .wait("the taint lifted", Duration::from_secs(90), |api| {
            (!api
                .node_taints(pullgate_testenv::cluster::NODE)
                .contains(&"pullgate.io/not-ready".to_string()))
            .then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));
    let (stdout, stderr) = agent.finish();
    assert_no_leak(&cluster, &stdout, &stderr);
}
