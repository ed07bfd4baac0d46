//! What is gone is forgotten: an image removed from its PullSet takes its canary verdict out of
//! `PullCredentialsValid`, and a deleted PullSet takes its metric series (the credential-expiry
//! gauge included) with it. Against a real registry, containerd and the real daemon.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use base64::Engine as _;
use pullgate_testenv::manifests::pull_secret;
use pullgate_testenv::process::{free_port, wait_until};
use pullgate_testenv::{Containerd, ImageSpec, PASSWORD, Registry, TestEnv, USER, http};
use serde_json::Value;
use std::time::Duration;

const JWT_USER: &str = "oauth2accesstoken";

/// A JWT-shaped password whose `exp` is 2030-03-17T17:46:40Z.
fn jwt() -> String {
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.sig",
        b64(r#"{"alg":"RS256"}"#),
        b64(r#"{"exp":1900000000,"sub":"ci"}"#)
    )
}

fn pullset(images: &[&str]) -> String {
    let images: Vec<String> = images.iter().map(|i| format!("{{image: '{i}'}}")).collect();
    format!(
        "apiVersion: pullgate.io/v1alpha1\nkind: PullSet\nmetadata: {{name: s, namespace: team}}\nspec:\n  imagePullSecrets: [{{name: token}}]\n  images: [{}]\n  canary: {{jitter: 0s, depth: manifest}}\n",
        images.join(", ")
    )
}

/// Scrapes `/metrics` until `settled` holds.
fn scrape_until(port: u16, what: &str, settled: impl Fn(&str) -> bool) {
    let mut last = String::new();
    wait_until(what, Duration::from_secs(60), || {
        last = http::get(port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default();
        settled(&last)
    })
    .unwrap_or_else(|e| panic!("{e}\nlast scrape:\n{last}"));
}

#[test]
fn an_image_or_pullset_that_is_gone_leaves_no_verdict_and_no_series_behind() {
    let jwt = jwt();
    let registry = Registry::start(&[(USER, PASSWORD), (JWT_USER, &jwt)]).unwrap();
    let containerd = Containerd::start(&[registry.host()]).unwrap();
    let manifests = tempfile::tempdir().unwrap();
    let env = TestEnv {
        registry,
        containerd,
        manifests,
    };
    let host = env.registry.host();
    let app = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let missing = format!("{host}/team/missing:v1");
    env.write_manifest(
        "secret.yaml",
        &pull_secret("team", "token", &host, JWT_USER, &jwt),
    )
    .unwrap();
    env.write_manifest("set.yaml", &pullset(&[&app.by_tag, &missing]))
        .unwrap();
    let port = free_port().unwrap();
    let agent = env
        .agent()
        .canary_defaults(&host)
        .args(&[
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--pull-attempts",
            "1",
        ])
        .spawn()
        .unwrap();
    let credentials = |status: &'static str| {
        move |l: &Value| {
            l["kind"] == "condition" && l["type"] == "PullCredentialsValid" && l["status"] == status
        }
    };
    agent
        .wait_for(
            "the missing image failing its canary",
            Duration::from_secs(60),
            1,
            credentials("False"),
        )
        .unwrap();
    let gauge = r#"pullgate_credential_expiry_timestamp_seconds{namespace="team",pullset="s""#;
    scrape_until(port, "the expiry gauge of the image that works", |m| {
        m.lines()
            .any(|l| l.starts_with(gauge) && l.contains("} 1900000000"))
    });

    // The failing image leaves the PullSet: its verdict leaves the condition with it.
    env.write_manifest("set.yaml", &pullset(&[&app.by_tag]))
        .unwrap();
    agent
        .wait_for(
            "credentials valid once the failing image is gone",
            Duration::from_secs(60),
            1,
            credentials("True"),
        )
        .unwrap();

    // The PullSet is deleted: nothing of it stays exported.
    std::fs::remove_file(env.manifests.path().join("set.yaml")).unwrap();
    scrape_until(port, "no series of the deleted PullSet", |m| {
        !m.is_empty() && !m.contains(r#"namespace="team""#)
    });
    env.assert_no_leak(&[&agent.stdout(), &agent.stderr()], &[PASSWORD, &jwt]);
}
