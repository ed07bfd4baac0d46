//! Each PullSet is judged by its own credentials, against a real containerd and an htpasswd
//! registry: two namespaces name one image, alpha with a good Secret and beta with a stale
//! password. The image is downloaded once, beta fails by its own credential (also when the image
//! is already on the node, digest-pinned), and nothing beta is told names alpha.

use pullgate::decide::runtime::ImageRuntime as _;
use pullgate_testenv::manifests::{pull_secret, pullset};
use pullgate_testenv::{ImageSpec, PASSWORD, TestEnv, USER, WRONG_PASSWORD, block_on};
use serde_json::Value;
use std::time::Duration;

const ONCE: Duration = Duration::from_secs(120);

fn outcome<'a>(outcomes: &[&'a Value], namespace: &str) -> &'a Value {
    outcomes
        .iter()
        .find(|o| o["namespace"] == namespace)
        .unwrap_or_else(|| panic!("no outcome for {namespace}: {outcomes:?}"))
}

fn two_tenants(env: &TestEnv, image: &str) {
    let host = env.registry.host();
    env.write_manifest(
        "tenants.yaml",
        &[
            pull_secret("alpha", "alpha-cred", &host, USER, PASSWORD),
            pull_secret("beta", "beta-cred", &host, USER, WRONG_PASSWORD),
            pullset("alpha", "a", &[image], &["alpha-cred"]),
            pullset("beta", "b", &[image], &["beta-cred"]),
        ]
        .join("---\n"),
    )
    .expect("the manifests are written");
}

fn assert_judged_apart(env: &TestEnv, image: &str, alpha_action: &str) {
    let run = env.agent().run_once(ONCE).expect("run --once ends");
    run.assert_code(1);
    let outcomes = run.prepulls_of(image);
    let alpha = outcome(&outcomes, "alpha");
    assert_eq!(
        (alpha["verdict"].as_str(), alpha["action"].as_str()),
        (Some("Ok"), Some(alpha_action)),
        "{alpha}"
    );
    let beta = outcome(&outcomes, "beta");
    assert_eq!(beta["verdict"], "Unauthorized", "{beta}");
    assert_eq!(
        beta["credential"],
        format!("secret beta/beta-cred key {}", env.registry.host())
    );
    let told = beta.to_string();
    assert!(!told.contains("alpha"), "beta is told of alpha: {told}");
    assert!(!alpha.to_string().contains("beta"), "{alpha}");
    env.assert_no_leak(&[&run.stdout, &run.stderr], &[PASSWORD, WRONG_PASSWORD]);
}

#[test]
fn a_stale_password_fails_its_own_namespace_even_when_another_namespace_pulled_the_image() {
    let env = TestEnv::started();
    let pushed = env.push(&ImageSpec::new("shared/app", "v1")).unwrap();
    two_tenants(&env, &pushed.by_tag);
    assert_judged_apart(&env, &pushed.by_tag, "pulled");
    let images = block_on(async { env.containerd.cri().list_images().await }).unwrap();
    assert!(
        images.iter().any(|i| i.repo_tags.contains(&pushed.by_tag)),
        "alpha's pull left the image on the node: {images:?}"
    );
}

#[test]
fn a_digest_pinned_image_already_on_the_node_does_not_hide_a_stale_password() {
    let env = TestEnv::started();
    let pushed = env.push(&ImageSpec::new("shared/pinned", "v1")).unwrap();
    // Put the image on the node first, as a pod or an earlier pass would have.
    env.write_regcred("alpha").unwrap();
    env.write_pullset("alpha", "a", &[&pushed.by_digest], &["regcred"])
        .unwrap();
    env.agent().run_once(ONCE).unwrap().assert_code(0);
    for file in std::fs::read_dir(env.manifests.path()).unwrap() {
        std::fs::remove_file(file.unwrap().path()).unwrap();
    }

    two_tenants(&env, &pushed.by_digest);
    assert_judged_apart(&env, &pushed.by_digest, "present");
}
