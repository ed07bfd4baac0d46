//! Pre-pull against a real containerd and a real registry (see tests/src/lib.rs).

use pullgate::decide::runtime::ImageRuntime as _;
use pullgate_testenv::manifests::{pull_secret, pullset};
use pullgate_testenv::{ImageSpec, PASSWORD, TestEnv, USER, WRONG_PASSWORD, block_on};
use std::time::Duration;

const ONCE: Duration = Duration::from_secs(120);

fn env() -> TestEnv {
    TestEnv::started()
}

#[test]
fn private_images_are_pulled_by_tag_and_by_digest() {
    let env = env();
    let a = env
        .push(&ImageSpec::new("team/app-a", "v1").with_layers(&[100_000, 50_000]))
        .unwrap();
    let b = env.push(&ImageSpec::new("team/app-b", "v2")).unwrap();
    env.write_regcred("team").unwrap();
    env.write_pullset("team", "critical", &[&a.by_tag, &b.by_digest], &["regcred"])
        .unwrap();

    let run = env.agent().run_once(ONCE).unwrap();
    run.assert_code(0);

    let oa = run.prepull(&a.by_tag);
    assert_eq!(oa["verdict"], "Ok");
    assert_eq!(oa["action"], "pulled");
    assert_eq!(oa["namespace"], "team");
    assert_eq!(oa["pullset"], "critical");
    assert_eq!(oa["node"], "test-node");
    assert_eq!(oa["image_ref"], a.config_digest.as_str());
    assert_eq!(oa["repo_digest"], a.by_digest.as_str());
    assert_eq!(
        oa["credential"],
        "secret team/regcred key 127.0.0.1:".to_string() + &env.registry.port().to_string()
    );
    assert!(oa["duration_ms"].is_u64());
    let ob = run.prepull(&b.by_digest);
    assert_eq!(
        (ob["verdict"].as_str(), ob["repo_digest"].as_str()),
        (Some("Ok"), Some(b.by_digest.as_str()))
    );

    // The runtime has them, with the expected digests.
    let images = block_on(async { env.containerd.cri().list_images().await }).unwrap();
    for pushed in [&a, &b] {
        let found = images
            .iter()
            .find(|i| i.repo_digests.contains(&pushed.by_digest))
            .unwrap_or_else(|| panic!("{} not in ListImages: {images:?}", pushed.by_digest));
        assert_eq!(found.id, pushed.config_digest);
    }
    assert!(images.iter().any(|i| i.repo_tags.contains(&a.by_tag)));

    // A second pass finds them present and pulls nothing.
    let again = env.agent().run_once(ONCE).unwrap();
    assert_eq!(again.code, Some(0));
    assert_eq!(again.prepull(&a.by_tag)["action"], "present");
    env.assert_no_leak(
        &[&run.stdout, &run.stderr, &again.stdout, &again.stderr],
        &[PASSWORD],
    );
}

#[test]
fn a_wrong_password_is_unauthorized_and_an_absent_tag_is_not_found() {
    let env = env();
    let a = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let host = env.registry.host();
    env.write_manifest(
        "secrets.yaml",
        &format!(
            "{}---\n{}",
            pull_secret("team", "wrong", &host, USER, WRONG_PASSWORD),
            pull_secret("team", "right", &host, USER, PASSWORD)
        ),
    )
    .unwrap();
    let absent = format!("{host}/team/app:does-not-exist");
    env.write_manifest(
        "sets.yaml",
        &format!(
            "{}---\n{}",
            pullset("team", "bad-password", &[&a.by_tag], &["wrong"]),
            pullset("team", "bad-tag", &[&absent], &["right"])
        ),
    )
    .unwrap();

    let run = env.agent().run_once(ONCE).unwrap();
    run.assert_code(1);
    let unauthorized = run.prepull(&a.by_tag);
    assert_eq!(unauthorized["verdict"], "Unauthorized", "{unauthorized}");
    assert!(unauthorized["hint"].as_str().unwrap().contains("password"));
    assert_eq!(
        unauthorized["credential"],
        format!("secret team/wrong key {host}")
    );
    // Auth failures are not retried as if transient: ImageStatus + one pull.
    assert_eq!(unauthorized["attempts"], 2);
    let not_found = run.prepull(&absent);
    assert_eq!(not_found["verdict"], "NotFound", "{not_found}");
    env.assert_no_leak(&[&run.stdout, &run.stderr], &[PASSWORD, WRONG_PASSWORD]);
}

#[test]
fn a_stopped_registry_is_a_network_failure() {
    let mut env = env();
    let a = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    env.write_regcred("team").unwrap();
    env.write_pullset("team", "s", &[&a.by_tag], &["regcred"])
        .unwrap();
    env.registry.stop();

    let run = env
        .agent()
        .args(&["--pull-attempts", "2"])
        .run_once(ONCE)
        .unwrap();
    assert_eq!(run.code, Some(1));
    let o = run.prepull(&a.by_tag);
    assert_eq!(o["verdict"], "Network", "{o}");
    assert!(
        o["message"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{o}"
    );
    // Transient: retried (ImageStatus + 2 pulls).
    assert_eq!(o["attempts"], 3);
    env.assert_no_leak(&[&run.stdout, &run.stderr], &[PASSWORD]);
}

#[test]
fn bad_objects_are_reported_with_file_and_field_and_valid_sets_still_pull() {
    let env = env();
    let a = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let host = env.registry.host();
    env.write_regcred("team").unwrap();
    env.write_manifest(
        "good.yaml",
        &pullset("team", "good", &[&a.by_tag], &["regcred"]),
    )
    .unwrap();
    env.write_manifest(
        "broken.yaml",
        "apiVersion: pullgate.io/v1alpha1\nkind: PullSet\nmetadata: {name: x\nspec: [",
    )
    .unwrap();
    env.write_manifest(
        "opaque.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: opaque, namespace: team}}\ntype: Opaque\nstringData:\n  password: {PASSWORD}\n---\n{}",
            pullset("team", "uses-opaque", &[&format!("{host}/team/app:v1")], &["opaque"])
        ),
    )
    .unwrap();

    let run = env.agent().run_once(ONCE).unwrap();
    // Source problems make a bootstrap pass fail, but never stop the valid sets.
    assert_eq!(run.code, Some(1));
    let problems: Vec<_> = run.lines.iter().filter(|l| l["kind"] == "source").collect();
    let broken = problems
        .iter()
        .find(|p| p["file"].as_str().unwrap().ends_with("broken.yaml"))
        .unwrap_or_else(|| panic!("broken.yaml not reported: {problems:?}"));
    assert_eq!(broken["document"], 0);
    assert!(broken["message"].as_str().unwrap().contains("invalid YAML"));
    let opaque = problems
        .iter()
        .find(|p| p["file"].as_str().unwrap().ends_with("opaque.yaml"))
        .unwrap_or_else(|| panic!("opaque.yaml not reported: {problems:?}"));
    assert_eq!(
        (opaque["field"].as_str(), opaque["object"].as_str()),
        (Some("type"), Some("Secret team/opaque"))
    );

    let outcomes = run.prepulls_of(&a.by_tag);
    let good = outcomes.iter().find(|o| o["pullset"] == "good").unwrap();
    assert_eq!(good["verdict"], "Ok");
    // The set naming the Opaque secret shares the image, which `good` pulled; on its own it would
    // fail with SecretWrongType (covered by the unit tables).
    assert!(outcomes.iter().any(|o| o["pullset"] == "uses-opaque"));
    env.assert_no_leak(&[&run.stdout, &run.stderr], &[PASSWORD]);
}

#[test]
fn a_secret_of_the_wrong_type_is_the_verdict_when_the_pull_fails() {
    let env = env();
    let a = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    env.write_manifest(
        "opaque.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: opaque, namespace: team}}\ntype: Opaque\nstringData:\n  .dockerconfigjson: '{{}}'\n---\n{}",
            pullset("team", "uses-opaque", &[&a.by_tag], &["opaque"])
        ),
    )
    .unwrap();
    let run = env.agent().run_once(ONCE).unwrap();
    let o = run.prepull(&a.by_tag);
    assert_eq!(o["verdict"], "SecretWrongType", "{o}");
    assert!(
        o["message"].as_str().unwrap().contains("team/opaque"),
        "{o}"
    );
    // With the runtime's own words for the failed anonymous pull (they differ by release).
    assert!(
        o["message"]
            .as_str()
            .unwrap()
            .contains("(anonymous pull failed: failed to pull and unpack image"),
        "{o}"
    );
    assert_eq!(o["credential"], "anonymous");
}
