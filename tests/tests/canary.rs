//! Registry-direct canaries against the real registry: every verdict produced for real, the
//! masking case (an image cached on the node while its credential no longer works), and `full`
//! depth verifying digests without writing anything.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate::decide::runtime::ImageRuntime as _;
use pullgate_testenv::agent::pullgate_binary;
use pullgate_testenv::manifests::{pull_secret, pullset};
use pullgate_testenv::process::output_within;
use pullgate_testenv::{ImageSpec, PASSWORD, TestEnv, USER, WRONG_PASSWORD, block_on};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn env() -> TestEnv {
    TestEnv::started()
}

struct Checked {
    code: Option<i32>,
    outcomes: Vec<Value>,
    stdout: String,
    stderr: String,
}

/// `pullgate check IMAGES --manifests DIR -n team --pullset SET --depth DEPTH --json`.
fn check(env: &TestEnv, set: &str, images: &[&str], depth: &str, cwd: &Path) -> Checked {
    check_with(env, set, images, depth, cwd, &[])
}

fn check_with(
    env: &TestEnv,
    set: &str,
    images: &[&str],
    depth: &str,
    cwd: &Path,
    extra: &[&str],
) -> Checked {
    let mut command = Command::new(pullgate_binary().unwrap());
    command
        .current_dir(cwd)
        .env("TMPDIR", cwd)
        .arg("check")
        .args(images)
        .args(["--json", "--depth", depth, "-n", "team", "--pullset", set])
        .args(extra)
        .args(["--insecure-registry", &env.registry.host(), "--manifests"])
        .arg(env.manifests.path());
    let out = output_within(command, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e:#}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Checked {
        code: out.status.code(),
        outcomes: stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn seed(env: &TestEnv) -> pullgate_testenv::PushedImage {
    let image = env
        .push(&ImageSpec::new("team/app", "v1").with_layers(&[300_000, 200_000]))
        .unwrap();
    let host = env.registry.host();
    env.write_manifest(
        "secrets.yaml",
        &[
            pull_secret("team", "right", &host, USER, PASSWORD),
            pull_secret("team", "wrong", &host, USER, WRONG_PASSWORD),
        ]
        .join("---\n"),
    )
    .unwrap();
    env.write_manifest(
        "sets.yaml",
        &[
            pullset("team", "good", &[&image.by_tag], &["right"]),
            pullset("team", "bad", &[&image.by_tag], &["wrong"]),
            pullset("team", "stale-first", &[&image.by_tag], &["wrong", "right"]),
        ]
        .join("---\n"),
    )
    .unwrap();
    image
}

#[test]
fn every_depth_succeeds_and_full_verifies_without_writing() {
    let env = env();
    let image = seed(&env);
    let scratch = tempfile::tempdir().unwrap();
    for (depth, blobs) in [("manifest", 0), ("blobs", 3), ("full", 3)] {
        let c = check(&env, "good", &[&image.by_tag], depth, scratch.path());
        assert_eq!(c.code, Some(0), "{depth}: {}\n{}", c.stdout, c.stderr);
        let o = &c.outcomes[0];
        assert_eq!(
            (o["verdict"].as_str(), o["depth"].as_str()),
            (Some("Ok"), Some(depth)),
            "{o}"
        );
        assert_eq!(o["manifest_digest"], image.digest.as_str());
        assert_eq!(
            o["credential"],
            format!("secret team/right key {}", env.registry.host())
        );
        assert_eq!(o["trigger"], "manual");
        if depth == "full" {
            assert!(o["bytes"].as_u64().unwrap() > 500_000, "{o}");
            assert!(
                o["message"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("{blobs} blob(s) downloaded and verified")),
                "{o}"
            );
        } else if depth == "blobs" {
            assert!(
                o["message"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("{blobs} blob(s)")),
                "{o}"
            );
        }
        env.assert_no_leak(&[&c.stdout, &c.stderr], &[PASSWORD, WRONG_PASSWORD]);
    }
    // Nothing written: not in the working or temp directory, not in the runtime's store.
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
    let present = block_on(async { env.containerd.cri().list_images().await }).unwrap();
    assert!(present.is_empty(), "{present:?}");
}

#[test]
fn verdicts_for_real_failures() {
    let mut env = env();
    let image = seed(&env);
    let scratch = tempfile::tempdir().unwrap();
    let host = env.registry.host();
    let absent = format!("{host}/team/app:nope");

    let c = check(&env, "bad", &[&image.by_tag], "manifest", scratch.path());
    assert_eq!(c.code, Some(1));
    assert_eq!(c.outcomes[0]["verdict"], "Unauthorized", "{}", c.stdout);
    assert!(c.outcomes[0]["hint"].as_str().is_some());

    let c = check(&env, "good", &[&absent], "manifest", scratch.path());
    assert_eq!(c.outcomes[0]["verdict"], "NotFound", "{}", c.stdout);

    // A fallback never hides the broken secret.
    let c = check(
        &env,
        "stale-first",
        &[&image.by_tag],
        "manifest",
        scratch.path(),
    );
    assert_eq!(c.outcomes[0]["verdict"], "Ok", "{}", c.stdout);
    let warning = c.outcomes[0]["warnings"][0].as_str().unwrap();
    assert!(
        warning.starts_with(&format!(
            "CredentialFailing: secret team/wrong key {host}: Unauthorized"
        )),
        "{warning}"
    );

    // A corrupted blob passes `manifest` and `blobs` and fails `full`.
    let layer = env.registry.blob_path(&image.layer_digests[0]);
    let mut bytes = std::fs::read(&layer).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&layer, bytes).unwrap();
    assert_eq!(
        check(&env, "good", &[&image.by_tag], "blobs", scratch.path()).outcomes[0]["verdict"],
        "Ok"
    );
    let c = check(&env, "good", &[&image.by_tag], "full", scratch.path());
    assert_eq!(c.outcomes[0]["verdict"], "DigestMismatch", "{}", c.stdout);

    env.registry.stop();
    let c = check(&env, "good", &[&image.by_tag], "manifest", scratch.path());
    assert_eq!(c.outcomes[0]["verdict"], "Network", "{}", c.stdout);
    assert!(
        c.outcomes[0]["message"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("connection refused"),
        "{}",
        c.stdout
    );
    env.assert_no_leak(&[&c.stdout, &c.stderr], &[PASSWORD, WRONG_PASSWORD]);
}

#[test]
fn an_expired_jwt_credential_is_expired() {
    use base64::Engine as _;
    let env = env();
    let image = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let jwt = format!(
        "{}.{}.sig",
        b64(r#"{"alg":"RS256"}"#),
        b64(r#"{"exp":1600000000,"sub":"ci"}"#)
    );
    env.write_manifest(
        "s.yaml",
        &pull_secret(
            "team",
            "token",
            &env.registry.host(),
            "oauth2accesstoken",
            &jwt,
        ),
    )
    .unwrap();
    env.write_manifest(
        "p.yaml",
        &pullset("team", "jwt", &[&image.by_tag], &["token"]),
    )
    .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let c = check(&env, "jwt", &[&image.by_tag], "manifest", scratch.path());
    assert_eq!(c.outcomes[0]["verdict"], "Expired", "{}", c.stdout);
    assert_eq!(c.outcomes[0]["expires_at"], Value::Null);
    assert!(
        c.outcomes[0]["message"]
            .as_str()
            .unwrap()
            .contains("has expired"),
        "{}",
        c.stdout
    );
    env.assert_no_leak(&[&c.stdout, &c.stderr], &[&jwt]);
}

#[test]
fn a_rotated_password_is_caught_although_the_image_is_cached() {
    let mut env = env();
    let image = seed(&env);
    // The node has the image: pre-pulled with the credential that works today.
    let run = env.agent().run_once(Duration::from_secs(120)).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let endpoint = env.containerd.endpoint();
    let before = check_with(
        &env,
        "good",
        &[&image.by_tag],
        "manifest",
        scratch.path(),
        &["--runtime", "--cri-endpoint", &endpoint],
    );
    assert_eq!(before.code, Some(0), "{}\n{}", before.stdout, before.stderr);
    assert_eq!(before.outcomes[1]["path"], "runtime");
    // Each PullSet is judged by its own credentials: `bad` (only the wrong Secret) fails even
    // though the others pulled the image.
    let verdicts: Vec<(String, String)> = run
        .prepulls_of(&image.by_tag)
        .iter()
        .map(|o| {
            (
                o["pullset"].as_str().unwrap().to_string(),
                o["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (pullset, verdict) in [
        ("bad", "Unauthorized"),
        ("good", "Ok"),
        ("stale-first", "Ok"),
    ] {
        assert!(
            verdicts.contains(&(pullset.to_string(), verdict.to_string())),
            "{pullset} {verdict}: {verdicts:?}\n{}",
            run.stdout
        );
    }

    // The registry's password is rotated; the Secret is not updated.
    env.registry
        .set_password(USER, "pg-Rotated-Passw0rd-9e8d")
        .unwrap();

    // The node cache does not mask it: a new agent's pre-pull pass finds the image present and
    // still resolves it again with each PullSet's own credential...
    let masked = env.agent().run_once(Duration::from_secs(120)).unwrap();
    let good = masked
        .prepulls_of(&image.by_tag)
        .into_iter()
        .find(|o| o["pullset"] == "good")
        .unwrap()
        .clone();
    assert_eq!(good["verdict"].as_str(), Some("Unauthorized"), "{good}");
    // ...and so do the canaries: registry-direct, and through the runtime, which re-resolves the
    // reference with the credential even though the image is in its store.
    let scratch = tempfile::tempdir().unwrap();
    let endpoint = env.containerd.endpoint();
    let c = check_with(
        &env,
        "good",
        &[&image.by_tag],
        "manifest",
        scratch.path(),
        &["--runtime", "--cri-endpoint", &endpoint],
    );
    assert_eq!(c.code, Some(1));
    assert_eq!(
        (
            c.outcomes[0]["path"].as_str(),
            c.outcomes[0]["verdict"].as_str()
        ),
        (Some("registry"), Some("Unauthorized")),
        "{}",
        c.stdout
    );
    assert_eq!(
        (
            c.outcomes[1]["path"].as_str(),
            c.outcomes[1]["verdict"].as_str()
        ),
        (Some("runtime"), Some("Unauthorized")),
        "{}",
        c.stdout
    );
    // Nothing was removed from the node.
    let present = block_on(async { env.containerd.cri().list_images().await }).unwrap();
    assert!(present.iter().any(|p| p.repo_tags.contains(&image.by_tag)));
    env.assert_no_leak(
        &[&c.stdout, &c.stderr, &masked.stdout, &masked.stderr],
        &[PASSWORD, "pg-Rotated-Passw0rd-9e8d"],
    );
}

#[test]
fn a_misbehaving_registry_gets_a_verdict_not_a_hang() {
    use pullgate_testenv::proxy::{Mode, Proxy};
    let env = env();
    let image = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let proxy = Proxy::start(&env.registry.host()).unwrap();
    let via = format!("{}/team/app:v1", proxy.host());
    env.write_manifest(
        "s.yaml",
        &pull_secret("team", "right", &proxy.host(), USER, PASSWORD),
    )
    .unwrap();
    env.write_manifest("p.yaml", &pullset("team", "good", &[&via], &["right"]))
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    // A verdict, not a hang: each check has a deadline (how long it takes is the benchmarks'
    // business; the bound the agent promises is --registry-timeout, checked in the messages).
    let run = |depth: &str| {
        let mut command = Command::new(pullgate_binary().unwrap());
        command
            .current_dir(scratch.path())
            .args([
                "check",
                &via,
                "--json",
                "--depth",
                depth,
                "-n",
                "team",
                "--pullset",
                "good",
            ])
            .args([
                "--insecure-registry",
                &proxy.host(),
                "--registry-timeout",
                "2s",
                "--manifests",
            ])
            .arg(env.manifests.path());
        let out = output_within(command, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("depth {depth}: {e:#}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        serde_json::from_str::<Value>(stdout.lines().next().unwrap_or("null")).unwrap()
    };

    // Through the proxy, untouched: Ok, and the requests each depth costs are counted.
    let mut cost = Vec::new();
    for depth in ["manifest", "blobs", "full"] {
        proxy.reset_count();
        let o = run(depth);
        assert_eq!(o["verdict"], "Ok", "{o}");
        assert_eq!(o["manifest_digest"], image.digest.as_str());
        cost.push((depth, proxy.requests(), o["requests"].as_u64().unwrap()));
    }
    // The agent's own count matches what the registry served; each depth costs more.
    for (depth, served, counted) in &cost {
        assert_eq!(served, counted, "{depth}: {cost:?}");
    }
    assert!(cost[0].1 < cost[1].1, "{cost:?}");

    // A trickled blob ends a `full` canary at --registry-timeout plus the blob's size at the
    // slowest accepted rate (a few bytes here: 2 s).
    for (mode, depth, verdict, text) in [
        // A `HEAD`'s 429 has no body, and a rate-limited registry gets no further request; a
        // tag is resolved by its `HEAD` at every depth.
        (Mode::TooManyRequests, "manifest", "RateLimited", "HTTP 429"),
        (Mode::TooManyRequests, "blobs", "RateLimited", "HTTP 429"),
        (Mode::RedirectLoop, "manifest", "Network", "redirect"),
        (Mode::Trickle, "manifest", "Network", "timed out after 2s"),
        (Mode::TrickleBlobs, "full", "Network", "timed out after 2s"),
    ] {
        proxy.set_mode(mode);
        let o = run(depth);
        assert_eq!(o["verdict"], verdict, "{mode:?}: {o}");
        assert!(
            o["message"].as_str().unwrap().contains(text),
            "{mode:?}: {o}"
        );
        if mode == Mode::TrickleBlobs {
            assert!(
                o["message"].as_str().unwrap().contains("blob sha256:"),
                "{o}"
            );
        }
    }
}
