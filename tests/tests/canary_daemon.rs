//! The daemon's canaries: start-up, schedule and rotation triggers, and the node-level conditions,
//! against a real registry whose password really rotates while the image stays cached.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate_testenv::manifests::pull_secret;
use pullgate_testenv::{PASSWORD, TestEnv, USER};
use serde_json::Value;
use std::time::Duration;

const ROTATED: &str = "pg-Rotated-Passw0rd-4c5d";

#[test]
fn rotation_is_caught_with_the_image_cached_and_the_fix_is_seen_by_a_rotation_canary() {
    let mut env = TestEnv::started();
    let image = env
        .seed_canaried("schedule: '*/2 * * * * *', jitter: 0s, depth: manifest")
        .unwrap();
    let host = env.registry.host();
    // Not for this node (its labels do not match): never canaried here.
    env.write_manifest(
        "elsewhere.yaml",
        &format!(
            "apiVersion: pullgate.io/v1alpha1\nkind: PullSet\nmetadata: {{name: gpu-only, namespace: team}}\nspec:\n  nodeSelector: {{pool: gpu}}\n  imagePullSecrets: [{{name: regcred}}]\n  images: [{{image: '{}'}}]\n  canary: {{schedule: '*/2 * * * * *', jitter: 0s}}\n",
            image.by_tag
        ),
    )
    .unwrap();
    let agent = env.agent().canary_defaults(&host).spawn().unwrap();
    let canary =
        |verdict: &'static str| move |l: &Value| l["kind"] == "canary" && l["verdict"] == verdict;
    let condition = |type_: &'static str, status: &'static str| {
        move |l: &Value| l["kind"] == "condition" && l["type"] == type_ && l["status"] == status
    };
    agent
        .wait_for("pre-pull", Duration::from_secs(60), 1, |l| {
            l["kind"] == "prepull" && l["verdict"] == "Ok"
        })
        .unwrap();
    agent
        .wait_for(
            "images ready",
            Duration::from_secs(10),
            1,
            condition("CriticalImagesReady", "True"),
        )
        .unwrap();
    agent
        .wait_for("start-up canary", Duration::from_secs(30), 1, |l| {
            canary("Ok")(l) && l["trigger"] == "startup"
        })
        .unwrap();
    agent
        .wait_for(
            "credentials valid",
            Duration::from_secs(10),
            1,
            condition("PullCredentialsValid", "True"),
        )
        .unwrap();

    // The registry's password rotates; the Secret is not updated; the image stays cached.
    env.registry.set_password(USER, ROTATED).unwrap();
    agent
        .wait_for(
            "the canary failing",
            Duration::from_secs(60),
            1,
            canary("Unauthorized"),
        )
        .unwrap();
    // The registry restarts to take the new password: a canary in that window may see it down
    // (`Network`) before one sees the rotation; the condition settles on `Unauthorized`.
    agent
        .wait_for(
            "credentials invalid: Unauthorized",
            Duration::from_secs(30),
            1,
            |l| condition("PullCredentialsValid", "False")(l) && l["reason"] == "Unauthorized",
        )
        .unwrap();
    let bad = agent
        .lines()
        .into_iter()
        .find(|l| canary("Unauthorized")(l))
        .unwrap();
    assert_eq!(bad["trigger"], "schedule", "{bad}");

    // The Secret is fixed: a canary triggered by the rotation itself reports Ok (how soon is
    // measured by `cargo xtask bench canary`, not here).
    let oks_before = agent.count(canary("Ok"));
    env.write_manifest(
        "secret.yaml",
        &pull_secret("team", "regcred", &host, USER, ROTATED),
    )
    .unwrap();
    agent
        .wait_for(
            "a canary after the fix",
            Duration::from_secs(60),
            oks_before + 1,
            canary("Ok"),
        )
        .unwrap();
    agent
        .wait_for(
            "the rotation canary after the fix",
            Duration::from_secs(60),
            1,
            |l| canary("Ok")(l) && l["trigger"] == "rotation",
        )
        .unwrap();
    agent
        .wait_for(
            "credentials valid again",
            Duration::from_secs(60),
            2,
            condition("PullCredentialsValid", "True"),
        )
        .unwrap();
    let (stdout, stderr) = agent.finish();
    let triggers: Vec<String> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["kind"] == "canary")
        .map(|l| l["trigger"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(triggers.iter().any(|t| t == "rotation"), "{triggers:?}");
    assert!(
        !stdout.contains("\"pullset\":\"gpu-only\""),
        "a PullSet for other nodes was acted on here"
    );
    env.assert_no_leak(&[&stdout, &stderr], &[PASSWORD, ROTATED]);
}
