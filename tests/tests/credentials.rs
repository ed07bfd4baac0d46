//! The credential the kubelet would pick is the one that works against a real registry, and
//! `pullgate auth resolve` shows the same order.

use pullgate_testenv::manifests::{pull_secret, pullset};
use pullgate_testenv::{ImageSpec, PASSWORD, TestEnv, USER, WRONG_PASSWORD};
use std::process::Command;
use std::time::Duration;

const ONCE: Duration = Duration::from_secs(120);

#[test]
fn the_kubelets_pick_among_key_spellings_is_the_one_that_succeeds() {
    let env = TestEnv::started();
    let image = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let other = env.push(&ImageSpec::new("ops/tool", "v1")).unwrap();
    let host = env.registry.host();
    env.write_manifest(
        "secrets.yaml",
        &[
            // Same registry, different spellings and passwords.
            pull_secret(
                "team",
                "host-wrong",
                &format!("https://{host}/v1/"),
                USER,
                WRONG_PASSWORD,
            ),
            pull_secret(
                "team",
                "team-right",
                &format!("{host}/team"),
                USER,
                PASSWORD,
            ),
            pull_secret(
                "team",
                "app-wrong",
                &format!("http://{host}/v2/team/app"),
                USER,
                WRONG_PASSWORD,
            ),
            pull_secret("team", "host-right", &host, USER, PASSWORD),
        ]
        .join("---\n"),
    )
    .unwrap();
    env.write_manifest(
        "sets.yaml",
        &[
            // Listed order puts the wrong one first; the kubelet's key order puts `host/team` first.
            pullset(
                "team",
                "path-beats-host",
                &[&image.by_tag],
                &["host-wrong", "team-right"],
            ),
            // Here the kubelet's order tries the wrong, more specific key first, then falls back.
            pullset(
                "team",
                "falls-back",
                &[&other.by_tag],
                &["host-right", "app-wrong"],
            ),
        ]
        .join("---\n"),
    )
    .unwrap();

    let run = env.agent().run_once(ONCE).unwrap();
    run.assert_code(0);
    let picked = run.prepull(&image.by_tag);
    assert_eq!(
        picked["credential"],
        format!("secret team/team-right key {host}/team")
    );
    assert!(
        picked.get("warnings").is_none(),
        "the wrong key must not have been tried: {picked}"
    );

    // `ops/tool` matches only `host` (the `team/app` path does not prefix it): one candidate.
    let tool = run.prepull(&other.by_tag);
    assert_eq!(
        tool["credential"],
        format!("secret team/host-right key {host}")
    );

    // The CLI shows the same order for the first set, and never a password.
    let out = Command::new(pullgate_testenv::agent::pullgate_binary().unwrap())
        .args([
            "auth",
            "resolve",
            &image.by_tag,
            "--json",
            "-n",
            "team",
            "--pullset",
            "path-beats-host",
            "--manifests",
        ])
        .arg(env.manifests.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let order: Vec<&str> = report["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["source"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["secret team/team-right", "secret team/host-wrong"]);
    assert_eq!(
        report["candidates"][1]["key"],
        format!("https://{host}/v1/")
    );
    env.assert_no_leak(
        &[&run.stdout, &run.stderr, &stdout],
        &[PASSWORD, WRONG_PASSWORD],
    );
}

#[test]
fn the_more_specific_wrong_key_is_tried_first_and_reported() {
    let env = TestEnv::started();
    let image = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let host = env.registry.host();
    env.write_manifest(
        "secrets.yaml",
        &[
            pull_secret("team", "host-right", &host, USER, PASSWORD),
            pull_secret(
                "team",
                "app-wrong",
                &format!("http://{host}/v2/team/app"),
                USER,
                WRONG_PASSWORD,
            ),
        ]
        .join("---\n"),
    )
    .unwrap();
    env.write_pullset("team", "s", &[&image.by_tag], &["host-right", "app-wrong"])
        .unwrap();
    let run = env.agent().run_once(ONCE).unwrap();
    run.assert_code(0);
    let o = run.prepull(&image.by_tag);
    assert_eq!(
        o["credential"],
        format!("secret team/host-right key {host}")
    );
    let warnings = o["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{o}");
    let w = warnings[0].as_str().unwrap();
    assert!(
        w.starts_with(&format!(
            "secret team/app-wrong key http://{host}/v2/team/app failed: Unauthorized"
        )),
        "{w}"
    );
    env.assert_no_leak(&[&run.stdout, &run.stderr], &[PASSWORD, WRONG_PASSWORD]);
}
