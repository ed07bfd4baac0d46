//! The watchdog behind `/healthz`, end to end with the real agent.
//!
//! - While it serves, `/healthz` is 200 and its JSON body names every watched loop (the pre-pull
//!   loop, the canary scheduler; the node reporter in cluster mode) with its last beat and bound.
//! - A real stall: the API server accepts the node reporter's writes and never answers (kube-rs
//!   sets no read timeout, so the write waits forever). Past the node reporter's own bound
//!   (`--condition-heartbeat` + `--watchdog-grace`), `/healthz` turns 503 naming `node-reporter`
//!   and why, while the process itself stays up (the kubelet's liveness probe restarts it).
//!
//! A panicking task ends the agent with an error naming it: unit-tested in `daemon::watchdog`
//! (no input is known to make a loop panic, which is the point).

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate_testenv::apiserver::objects;
use pullgate_testenv::cluster::Cluster;
use pullgate_testenv::http;
use pullgate_testenv::process::{free_port, wait_until};
use pullgate_testenv::{ImageSpec, PASSWORD, RunningAgent, TestEnv};
use serde_json::{Value, json};
use std::time::Duration;

fn healthz(port: u16) -> Option<(u16, Value)> {
    let (code, body) = http::get(port, "/healthz")?;
    Some((code, serde_json::from_str(&body).ok()?))
}

/// Waits for `/healthz` to answer `code` and satisfy `check`; the last answer.
fn wait_healthz(
    port: u16,
    what: &str,
    code: u16,
    agent: &RunningAgent,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = None;
    wait_until(what, Duration::from_secs(60), || {
        last = healthz(port);
        last.as_ref().is_some_and(|(c, b)| *c == code && check(b))
    })
    .unwrap_or_else(|e| panic!("{e}\nlast /healthz: {last:?}\nstderr:\n{}", agent.stderr()));
    last.unwrap().1
}

fn task<'a>(body: &'a Value, name: &str) -> Option<&'a Value> {
    body["tasks"].as_array()?.iter().find(|t| t["task"] == name)
}

fn running(body: &Value, name: &str) -> bool {
    task(body, name).is_some_and(|t| {
        t["state"] == "running" && t["last_beat_ms_ago"].is_u64() && t["bound_ms"].is_u64()
    })
}

#[test]
fn healthz_reports_every_loop_with_its_last_beat_while_serving() {
    let env = TestEnv::started();
    let image = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    env.write_regcred("team").unwrap();
    env.write_pullset("team", "critical", &[&image.by_tag], &["regcred"])
        .unwrap();
    let port = free_port().unwrap();
    let agent = env.daemon(&["--metrics-addr", &format!("127.0.0.1:{port}")]);
    let pulled = image.by_tag.clone();
    agent
        .wait_for("the first pull", Duration::from_secs(60), 1, |l| {
            l["kind"] == "prepull" && l["image"] == pulled.as_str() && l["verdict"] == "Ok"
        })
        .unwrap();
    let body = wait_healthz(port, "/healthz 200 with both loops", 200, &agent, |b| {
        running(b, "prepull") && running(b, "canary-scheduler")
    });
    assert_eq!(body["status"], "ok", "{body}");
    assert!(body.get("unhealthy").is_none(), "{body}");
    // Standalone: no node reporter to watch.
    assert!(task(&body, "node-reporter").is_none(), "{body}");
    // The bounds come from the loops' own flags (defaults: minutes, not seconds).
    assert!(
        task(&body, "prepull").unwrap()["bound_ms"]
            .as_u64()
            .unwrap()
            > 60_000,
        "{body}"
    );

    let (stdout, stderr) = agent.finish();
    env.assert_no_leak(&[&stdout, &stderr], &[PASSWORD]);
}

#[test]
fn a_node_reporter_stuck_on_a_write_fails_healthz_naming_it() {
    let cluster = Cluster::start(&[]);
    let image = cluster.env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    cluster.api.apply(cluster.secret(PASSWORD));
    cluster.api.apply(objects::pullset(
        "team",
        "critical",
        &[&image.by_tag],
        json!({"imagePullSecrets": [{"name": "regcred"}]}),
    ));
    let port = free_port().unwrap();
    // The node reporter's bound: its 2 s heartbeat + 2 s grace.
    let agent = cluster.agent(&[
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--condition-heartbeat",
        "2s",
        "--watchdog-grace",
        "2s",
    ]);
    cluster.wait_condition(
        "CriticalImagesReady",
        "True",
        Duration::from_secs(90),
        &agent,
    );
    let body = wait_healthz(
        port,
        "/healthz 200 with all three loops",
        200,
        &agent,
        |b| running(b, "prepull") && running(b, "canary-scheduler") && running(b, "node-reporter"),
    );
    assert_eq!(
        task(&body, "node-reporter").unwrap()["bound_ms"],
        4000,
        "{body}"
    );

    // The API server now takes writes and never answers them: the next heartbeat write hangs.
    cluster.api.hang_writes(true);
    let body = wait_healthz(
        port,
        "/healthz 503 naming the node reporter",
        503,
        &agent,
        |b| b["unhealthy"]["task"] == "node-reporter",
    );
    assert_eq!(body["status"], "unhealthy", "{body}");
    let why = body["unhealthy"]["why"].as_str().unwrap();
    assert!(
        why.starts_with("no progress for ") && why.contains("over its bound of 4s"),
        "{body}"
    );
    assert_eq!(task(&body, "node-reporter").unwrap()["state"], "stalled");
    // The other loops are fine, and the process is up: the probe is what restarts it.
    assert!(running(&body, "prepull"), "{body}");
    agent.assert_alive("with the node reporter stuck");
    assert!(
        cluster
            .api
            .requests()
            .iter()
            .any(|r| r.ends_with("(never answered)")),
        "no write reached the hanging API server"
    );

    // The API server answers again: the hung write gives up after its own deadline, the retry
    // goes through, and the node reporter is healthy again (without a write deadline it would
    // wait for the lost answer forever).
    cluster.api.hang_writes(false);
    wait_healthz(
        port,
        "/healthz 200 again once writes are answered",
        200,
        &agent,
        |b| running(b, "node-reporter"),
    );
    assert!(
        agent
            .stderr()
            .contains("no answer from the API server within 30s"),
        "the hung write did not time out"
    );

    let (stdout, stderr) = agent.finish();
    assert!(!stderr.contains("panicked"), "{stderr}");
    cluster.assert_no_leak(&[&stdout, &stderr], &[PASSWORD]);
}
