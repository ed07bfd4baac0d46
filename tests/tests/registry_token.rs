//! A registry with token auth, the flow of Docker Hub, GHCR, Harbor and Quay: the distribution
//! registry (`auth: token`) and the test crate's token server, which checks the Basic password and
//! signs the JWTs the registry verifies. Pre-pull, the registry-direct canary and the runtime
//! canary agree; a password rotated on the token server is caught with the image cached on the
//! node; a user without the repository's scope gets the node's own answer; no password and no
//! issued token shows in any output or log.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate_testenv::both_paths::BothPaths as Checked;
use pullgate_testenv::manifests::{pull_secret, pullset};
use pullgate_testenv::token_server::{Grant, TokenServer};
use pullgate_testenv::{
    Agent, Containerd, ImageSpec, PASSWORD, PushedImage, Registry, USER, assert_nowhere, block_on,
    images, password_forms,
};
use std::time::Duration;

/// A user the token server knows, allowed to pull only from `other/*`.
const OUTSIDER: &str = "outsider";
const OUTSIDER_PASSWORD: &str = "pg-Outsider-Passw0rd-4e5f6a";
const ROTATED: &str = "pg-Rotated-Token-Passw0rd-8c7b";

struct Env {
    tokens: TokenServer,
    registry: Registry,
    containerd: Containerd,
    manifests: tempfile::TempDir,
    image: PushedImage,
}

/// Token server, registry trusting it, containerd with a `hosts.toml` for the registry; `team/app`
/// pushed as [`USER`]; Secrets `right` ([`USER`]) and `outsider`; PullSets `good` and `noscope`.
fn env() -> Env {
    let tokens = TokenServer::start(&[
        (
            USER,
            PASSWORD,
            vec![Grant::new("team/*", &["pull", "push"])],
        ),
        (
            OUTSIDER,
            OUTSIDER_PASSWORD,
            vec![Grant::new("other/*", &["pull"])],
        ),
    ])
    .unwrap();
    let registry = Registry::start_token(&tokens).unwrap();
    let containerd = Containerd::start(&[registry.host()]).unwrap();
    let image = block_on(images::push(
        &registry.host(),
        USER,
        PASSWORD,
        &ImageSpec::new("team/app", "v1"),
    ))
    .unwrap();
    let manifests = tempfile::Builder::new()
        .prefix("pullgate-manifests-")
        .tempdir()
        .unwrap();
    let host = registry.host();
    std::fs::write(
        manifests.path().join("secrets.yaml"),
        [
            pull_secret("team", "right", &host, USER, PASSWORD),
            pull_secret("team", "outsider", &host, OUTSIDER, OUTSIDER_PASSWORD),
        ]
        .join("---\n"),
    )
    .unwrap();
    std::fs::write(
        manifests.path().join("sets.yaml"),
        [
            pullset("team", "good", &[&image.by_tag], &["right"]),
            pullset("team", "noscope", &[&image.by_tag], &["outsider"]),
        ]
        .join("---\n"),
    )
    .unwrap();
    Env {
        tokens,
        registry,
        containerd,
        manifests,
        image,
    }
}

/// `pullgate check IMAGE --runtime` for PullSet `set`: both canary paths, `manifest` depth.
fn check(env: &Env, set: &str) -> Checked {
    let mut args: Vec<std::ffi::OsString> = ["--depth", "manifest", "-n", "team", "--pullset", set]
        .map(Into::into)
        .into();
    args.extend(["--cri-endpoint".into(), env.containerd.endpoint().into()]);
    args.extend(["--insecure-registry".into(), env.registry.host().into()]);
    args.extend(["--manifests".into(), env.manifests.path().into()]);
    Checked::check(&env.image.by_tag, args)
}

/// Fails when a password (as written or as Basic auth) or an issued token occurs in `outputs`
/// or in the containerd, registry or token-server log.
fn assert_no_leak(env: &Env, outputs: &[&str], passwords: &[(&str, &str)]) {
    let logs = [
        ("containerd log", env.containerd.log()),
        ("registry log", env.registry.log()),
        ("token server log", env.tokens.log()),
    ];
    let mut secrets: Vec<(&str, String)> = Vec::new();
    for (user, password) in passwords {
        secrets.extend(password_forms(user, password));
    }
    for signature in env.tokens.issued_signatures().unwrap() {
        secrets.push(("token", signature));
    }
    let mut sources: Vec<(&str, &str)> = outputs.iter().map(|o| ("agent output", *o)).collect();
    sources.extend(logs.iter().map(|(place, text)| (*place, text.as_str())));
    assert_nowhere(&sources, &secrets);
}

#[test]
fn token_auth_pre_pull_and_both_canaries_agree_and_a_rotation_is_caught_cached() {
    let env = env();
    let agent = Agent::new(env.manifests.path(), &env.containerd.endpoint());
    let run = agent
        .args(&["--insecure-registry", &env.registry.host()])
        .run_once(Duration::from_secs(120))
        .unwrap();
    let good = run
        .prepulls_of(&env.image.by_tag)
        .into_iter()
        .find(|o| o["pullset"] == "good")
        .cloned()
        .unwrap_or_else(|| panic!("no pre-pull of good\n{}\n{}", run.stdout, run.stderr));
    assert_eq!(good["verdict"], "Ok", "{good}\n{}", run.stderr);
    // Each PullSet is judged by its own credential: the outsider's token lacks the scope, so
    // `noscope` is refused although the image is now on the node.
    let noscope = run
        .prepulls_of(&env.image.by_tag)
        .into_iter()
        .find(|o| o["pullset"] == "noscope")
        .cloned()
        .unwrap_or_else(|| panic!("no pre-pull of noscope\n{}\n{}", run.stdout, run.stderr));
    assert_eq!(noscope["verdict"], "Unauthorized", "{noscope}");
    // The token server granted pulls: the node's pull went through the token flow.
    assert!(
        env.tokens
            .log()
            .contains("granted=[repository:team/app:pull]"),
        "{}",
        env.tokens.log()
    );

    let before = check(&env, "good");
    assert_eq!(
        before.verdicts(),
        ("Ok".into(), "Ok".into()),
        "{}\n{}",
        before.stdout,
        before.stderr
    );
    assert_eq!(
        before.registry["manifest_digest"],
        env.image.digest.as_str()
    );

    // Rotation on the token server, the Secret not updated; the image stays cached on the node.
    env.tokens.set_password(USER, ROTATED);
    let after = check(&env, "good");
    assert_eq!(
        after.verdicts(),
        ("Unauthorized".into(), "Unauthorized".into()),
        "{}\n{}",
        after.stdout,
        after.stderr
    );
    assert!(
        env.tokens.log().contains("user=pullgate") && env.tokens.log().contains("-> 401"),
        "{}",
        env.tokens.log()
    );
    let present = block_on(async {
        use pullgate::decide::runtime::ImageRuntime as _;
        env.containerd.cri().list_images().await
    })
    .unwrap();
    assert!(
        present
            .iter()
            .any(|p| p.repo_tags.contains(&env.image.by_tag)),
        "the image is still cached on the node"
    );
    assert_no_leak(
        &env,
        &[
            &run.stdout,
            &run.stderr,
            &before.stdout,
            &before.stderr,
            &after.stdout,
            &after.stderr,
        ],
        &[(USER, PASSWORD), (USER, ROTATED)],
    );
}

#[test]
fn a_user_without_the_repository_scope_gets_the_nodes_answer() {
    let env = env();
    let c = check(&env, "noscope");
    // The token server authenticated the user but granted nothing for team/app.
    assert!(
        env.tokens
            .log()
            .contains("user=outsider service=pullgate-test-registry asked=[repository:team/app:pull] -> 200 granted=[]"),
        "{}",
        env.tokens.log()
    );
    eprintln!("registry-direct: {}\nruntime: {}", c.registry, c.runtime);
    let (registry, runtime) = c.verdicts();
    assert_eq!(
        registry,
        runtime,
        "the registry-direct canary and the node disagree\n{}\n{}\ncontainerd log:\n{}",
        c.stdout,
        c.stderr,
        env.containerd.log()
    );
    assert_eq!(registry, "Unauthorized", "{}", c.stdout);
    // containerd (1.6 and 2.1 alike) quotes the registry's challenge: the token lacked the scope.
    assert!(
        c.runtime["message"]
            .as_str()
            .unwrap_or("")
            .contains("insufficient_scope"),
        "{}",
        c.runtime
    );
    // The registry said why: the token lacks the scope.
    assert!(
        c.registry["message"]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
            .contains("unauthorized"),
        "{}",
        c.registry
    );
    assert_no_leak(
        &env,
        &[&c.stdout, &c.stderr],
        &[(USER, PASSWORD), (OUTSIDER, OUTSIDER_PASSWORD)],
    );
}

#[test]
fn an_expired_token_is_refused_by_the_registry_and_both_canaries_say_so() {
    let env = env();
    // Tokens issued as if ten minutes ago, living five: expired beyond the registry's 60 s
    // leeway (`token.go`'s `Leeway`) the moment they are handed out. The password is right.
    env.tokens.set_expires_in(Duration::from_secs(300));
    env.tokens.set_issued_ago(Duration::from_secs(600));
    let c = check(&env, "good");
    eprintln!("registry-direct: {}\nruntime: {}", c.registry, c.runtime);
    assert!(
        env.tokens.log().contains("user=pullgate") && env.tokens.log().contains("-> 200"),
        "{}",
        env.tokens.log()
    );
    assert_eq!(
        c.verdicts(),
        ("Unauthorized".into(), "Unauthorized".into()),
        "{}\n{}\nregistry log:\n{}",
        c.stdout,
        c.stderr,
        env.registry.log()
    );
    // The registry refused the token itself, not the password (which the token server took).
    assert!(
        c.runtime["message"]
            .as_str()
            .unwrap_or("")
            .contains("invalid_token"),
        "{}",
        c.runtime
    );
    // Fresh tokens again: the same credential works (it was the token's age, nothing else).
    env.tokens.set_issued_ago(Duration::ZERO);
    let again = check(&env, "good");
    assert_eq!(
        again.verdicts(),
        ("Ok".into(), "Ok".into()),
        "{}\n{}",
        again.stdout,
        again.stderr
    );
    assert_no_leak(
        &env,
        &[&c.stdout, &c.stderr, &again.stdout, &again.stderr],
        &[(USER, PASSWORD)],
    );
}
