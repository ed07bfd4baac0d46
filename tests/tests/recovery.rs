//! The agent survives a runtime restart, an unreachable runtime, images removed behind its back,
//! and picks up edited manifests without a restart. Real containerd, real registry.

use pullgate::decide::runtime::ImageRuntime as _;
use pullgate_testenv::process::wait_until;
use pullgate_testenv::{ImageSpec, PASSWORD, TestEnv, block_on};
use std::time::Duration;

const MIB: usize = 1024 * 1024;

fn env() -> TestEnv {
    TestEnv::started()
}

#[test]
fn a_containerd_restart_in_the_middle_of_a_pass_is_survived() {
    let mut env = env();
    let images: Vec<_> = (0..12)
        .map(|i| {
            env.push(&ImageSpec::new(&format!("big/app{i}"), "v1").with_layers(&[8 * MIB, 8 * MIB]))
                .unwrap()
        })
        .collect();
    let refs: Vec<&str> = images.iter().map(|i| i.by_tag.as_str()).collect();
    env.write_regcred("big").unwrap();
    env.write_pullset("big", "all", &refs, &["regcred"])
        .unwrap();

    let mut agent = env
        .agent()
        .args(&["--max-parallel-pulls", "2"])
        .spawn_once()
        .unwrap();
    // Restart as soon as the first image is in: the others are queued or in flight.
    agent
        .wait_for("first pre-pull outcome", Duration::from_secs(120), 1, |l| {
            l["kind"] == "prepull"
        })
        .unwrap();
    env.containerd.stop();
    // Started again once the agent has felt the outage (the same lines are asserted below).
    let felt = || {
        let stderr = agent.stderr();
        stderr.contains("CRI unreachable; reconnecting")
            || stderr.contains("transient failure; retrying")
    };
    wait_until(
        "the agent to feel the runtime gone",
        Duration::from_secs(60),
        felt,
    )
    .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));
    env.containerd.start_again().unwrap();

    let code = agent.wait_exit(Duration::from_secs(240)).unwrap();
    let lines = agent.lines();
    let stderr = agent.stderr();
    assert_eq!(
        code,
        Some(0),
        "stdout:\n{}\nstderr:\n{stderr}",
        agent.stdout()
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["kind"] == "prepull" && l["verdict"] == "Ok")
            .count(),
        12
    );
    // The restart was seen and ridden out.
    assert!(
        stderr.contains("CRI unreachable; reconnecting")
            || stderr.contains("transient failure; retrying"),
        "the restart did not hit the pass:\n{stderr}"
    );
    let present = block_on(async { env.containerd.cri().list_images().await }).unwrap();
    for image in &images {
        assert!(
            present.iter().any(|p| p.repo_tags.contains(&image.by_tag)),
            "{} missing",
            image.by_tag
        );
    }
    env.assert_no_leak(&[&agent.stdout(), &stderr], &[PASSWORD]);
}

#[test]
fn an_unreachable_runtime_is_a_clear_runtime_error_not_a_crash() {
    let env = env();
    let a = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    env.write_pullset("team", "s", &[&a.by_tag], &[]).unwrap();
    let missing = format!(
        "unix://{}/nothing-here.sock",
        env.manifests.path().display()
    );
    let run = pullgate_testenv::Agent::new(env.manifests.path(), &missing)
        .args(&["--cri-reconnect-budget", "1s", "--pull-attempts", "2"])
        .run_once(Duration::from_secs(60))
        .unwrap();
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let o = run.prepull(&a.by_tag);
    assert_eq!(o["verdict"], "RuntimeError");
    // The first call (`ListImages`) finds the runtime gone: the pass stops there and says why.
    assert_eq!(
        o["message"],
        format!(
            "not attempted: the pass stopped early because the container runtime is unreachable (cannot reach CRI at {missing}: socket does not exist); the next pass retries"
        )
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

#[test]
fn an_image_removed_behind_the_agents_back_is_pulled_again() {
    let env = env();
    let a = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    env.write_regcred("team").unwrap();
    env.write_pullset("team", "s", &[&a.by_tag], &["regcred"])
        .unwrap();
    let agent = env.daemon(&["--recheck-interval", "1s"]);
    let pulled = |l: &serde_json::Value| {
        l["image"] == a.by_tag.as_str() && l["action"] == "pulled" && l["verdict"] == "Ok"
    };
    agent
        .wait_for("first pull", Duration::from_secs(60), 1, pulled)
        .unwrap();
    agent
        .wait_for(
            "a re-check that finds it present",
            Duration::from_secs(30),
            1,
            |l| l["action"] == "present",
        )
        .unwrap();

    // The kubelet's image GC (or an operator) removes it.
    block_on(async { env.containerd.cri().remove_image(&a.by_tag).await }).unwrap();
    agent
        .wait_for("the image pulled again", Duration::from_secs(60), 2, pulled)
        .unwrap();
    let present = block_on(async { env.containerd.cri().list_images().await }).unwrap();
    assert!(present.iter().any(|p| p.repo_tags.contains(&a.by_tag)));
    let (stdout, stderr) = agent.finish();
    env.assert_no_leak(&[&stdout, &stderr], &[PASSWORD]);
}

#[test]
fn an_edited_manifest_takes_effect_without_a_restart() {
    let env = env();
    let a = env.push(&ImageSpec::new("team/first", "v1")).unwrap();
    let b = env.push(&ImageSpec::new("team/second", "v1")).unwrap();
    env.write_regcred("team").unwrap();
    env.write_pullset("team", "s", &[&a.by_tag], &["regcred"])
        .unwrap();
    let agent = env.daemon(&["--recheck-interval", "1h"]);
    agent
        .wait_for("first image", Duration::from_secs(60), 1, |l| {
            l["image"] == a.by_tag.as_str() && l["verdict"] == "Ok"
        })
        .unwrap();

    env.write_pullset("team", "s", &[&a.by_tag, &b.by_tag], &["regcred"])
        .unwrap();
    agent
        .wait_for("the added image", Duration::from_secs(60), 1, |l| {
            l["image"] == b.by_tag.as_str() && l["verdict"] == "Ok"
        })
        .unwrap();

    // A broken edit is reported and the last good objects keep being served.
    env.write_manifest("broken.yaml", "kind: [").unwrap();
    agent
        .wait_for(
            "the broken file reported",
            Duration::from_secs(30),
            1,
            |l| {
                l["kind"] == "source"
                    && l["file"]
                        .as_str()
                        .is_some_and(|f| f.ends_with("broken.yaml"))
            },
        )
        .unwrap();
    let (stdout, stderr) = agent.finish();
    env.assert_no_leak(&[&stdout, &stderr], &[PASSWORD]);
}
