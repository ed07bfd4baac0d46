//! Reliability, the runtime: containerd killed (SIGKILL) under a running daemon, then started
//! again. The agent stays up, stays bounded in memory (a generous cap on the process's `VmHWM`, a
//! resource bound, never a timing), reports the right verdict as a JSON line, recovers by itself,
//! and loses no state.
//!
//! Covered elsewhere: a containerd restart in the middle of a `--once` pass and an unreachable
//! runtime (`recovery.rs`). The other bad days: `reliability_registry.rs`,
//! `reliability_apiserver.rs`, `reliability_input.rs`.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate::decide::runtime::ImageRuntime as _;
use pullgate_testenv::agent::{MEMORY_CAP_KIB, is_condition};
use pullgate_testenv::{ImageSpec, PASSWORD, TestEnv, block_on};
use serde_json::Value;
use std::time::Duration;

#[test]
fn containerd_killed_under_the_daemon_is_reported_then_recovered_by_itself() {
    let mut env = TestEnv::started();
    let image = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    env.write_regcred("team").unwrap();
    env.write_pullset("team", "critical", &[&image.by_tag], &["regcred"])
        .unwrap();
    let agent = env.daemon(&[
        "--recheck-interval",
        "2s",
        "--cri-reconnect-budget",
        "1s",
        "--cri-timeout",
        "3s",
        "--pull-attempts",
        "2",
    ]);
    let of_image = |verdict: &'static str| {
        let image = image.by_tag.clone();
        move |l: &Value| {
            l["kind"] == "prepull" && l["image"] == image.as_str() && l["verdict"] == verdict
        }
    };
    agent
        .wait_for("the first pull", Duration::from_secs(60), 1, of_image("Ok"))
        .unwrap();
    agent
        .wait_for("images ready", Duration::from_secs(10), 1, |l| {
            is_condition(l, "CriticalImagesReady", "True")
        })
        .unwrap();

    // containerd crashes (SIGKILL: no clean shutdown, its socket file left behind).
    env.containerd.kill();
    agent
        .wait_for(
            "a RuntimeError while containerd is down",
            Duration::from_secs(60),
            1,
            of_image("RuntimeError"),
        )
        .unwrap();
    let down = agent.last(of_image("RuntimeError"));
    assert_eq!(down["action"], "failed", "{down}");
    assert!(
        down["message"]
            .as_str()
            .unwrap()
            .contains(&format!("CRI at {}", env.containerd.endpoint())),
        "{down}"
    );
    agent
        .wait_for(
            "CriticalImagesReady False",
            Duration::from_secs(10),
            1,
            |l| is_condition(l, "CriticalImagesReady", "False") && l["reason"] == "RuntimeError",
        )
        .unwrap();
    // A few passes against the dead runtime: still up, nothing pulled behind anyone's back.
    let failures = agent.count(of_image("RuntimeError"));
    agent
        .wait_for(
            "more passes against the dead runtime",
            Duration::from_secs(60),
            failures + 2,
            of_image("RuntimeError"),
        )
        .unwrap();
    agent.assert_alive("against the dead runtime");

    // containerd comes back with its state: the agent finds the image again without help.
    env.containerd.start_again().unwrap();
    let oks = agent.count(of_image("Ok"));
    agent
        .wait_for(
            "the image Ok again after the restart",
            Duration::from_secs(60),
            oks + 1,
            of_image("Ok"),
        )
        .unwrap();
    agent
        .wait_for(
            "CriticalImagesReady True again",
            Duration::from_secs(10),
            2,
            |l| is_condition(l, "CriticalImagesReady", "True"),
        )
        .unwrap();
    let present = block_on(async { env.containerd.cri().list_images().await }).unwrap();
    assert!(
        present.iter().any(|p| p.repo_tags.contains(&image.by_tag)),
        "{present:?}"
    );
    agent.assert_up_and_bounded(MEMORY_CAP_KIB, "containerd killed");
    let (stdout, stderr) = agent.finish();
    assert!(!stderr.contains("panicked"), "{stderr}");
    env.assert_no_leak(&[&stdout, &stderr], &[PASSWORD]);
}
