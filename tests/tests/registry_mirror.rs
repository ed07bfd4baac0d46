//! A pull-through mirror as production runs one: a second distribution registry in `proxy` mode
//! (its own upstream credential, no auth of its own) in front of a private registry, listed first
//! in the node's `hosts.toml`.
//!
//! The upstream uses token auth (the test token server), as Docker Hub, GHCR, Harbor and Quay do:
//! distribution 2.8's proxy authorizes its upstream requests with a token handler only
//! (`registry/proxy/proxyregistry.go`: `auth.NewAuthorizer(…, auth.NewTokenHandlerWithOptions(…))`,
//! no basic handler), and in front of an htpasswd upstream it answers every uncached request
//! `500 unauthorized: authentication required` (seen with 2.8.2). Pre-pull goes through it; the runtime canary names it
//! (`MirrorInPath`); after a rotation of the upstream password with the image cached on the
//! mirror, the node's pull still works through the mirror, and what each canary says is pinned;
//! the same rotation before the mirror has the image fails both ways (containerd falls through
//! the mirror's 404 to the upstream, which refuses; 2.1 then says `not found`, 1.x the refusal).
//! The registry-direct canary walks the hosts as containerd does (`decide::canary::hosts_walk`):
//! it names the host that answered and, when hosts differ, each one's verdict (`MirrorMasks`,
//! `HostsDisagree`); a stopped mirror and one answering `500` are masked by the upstream and
//! reported.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate_testenv::both_paths::BothPaths as Checked;
use pullgate_testenv::hostile_server::{HostileServer, Reply};
use pullgate_testenv::manifests::{pull_secret, pullset};
use pullgate_testenv::token_server::{Grant, TokenServer};
use pullgate_testenv::{
    Agent, Containerd, ImageSpec, PASSWORD, PushedImage, Registry, USER, assert_nowhere, block_on,
    images, password_forms,
};
use serde_json::Value;
use std::time::Duration;

const ROTATED: &str = "pg-Rotated-Upstream-Passw0rd-3d2e";

struct Env {
    tokens: TokenServer,
    upstream: Registry,
    mirror: Registry,
    containerd: Containerd,
    manifests: tempfile::TempDir,
    image: PushedImage,
}

/// The upstream (token auth, [`USER`]/[`PASSWORD`] on its token server), the mirror in front of
/// it pulling as the same user, containerd whose `hosts.toml` for the upstream lists the mirror first; `team/app`
/// pushed to the upstream; Secret `right` and PullSet `good` for it.
fn env() -> Env {
    let tokens = TokenServer::start(&[(
        USER,
        PASSWORD,
        vec![Grant::new("team/*", &["pull", "push"])],
    )])
    .unwrap();
    let upstream = Registry::start_token(&tokens).unwrap();
    let mirror = Registry::start_proxy(&upstream.host(), USER, PASSWORD).unwrap();
    let containerd = Containerd::start(&[upstream.host()]).unwrap();
    write_hosts_toml(&containerd, &upstream, &mirror.host());
    let image = block_on(images::push(
        &upstream.host(),
        USER,
        PASSWORD,
        &ImageSpec::new("team/app", "v1"),
    ))
    .unwrap();
    let manifests = tempfile::Builder::new()
        .prefix("pullgate-manifests-")
        .tempdir()
        .unwrap();
    std::fs::write(
        manifests.path().join("secret.yaml"),
        pull_secret("team", "right", &upstream.host(), USER, PASSWORD),
    )
    .unwrap();
    std::fs::write(
        manifests.path().join("set.yaml"),
        pullset("team", "good", &[&image.by_tag], &["right"]),
    )
    .unwrap();
    Env {
        tokens,
        upstream,
        mirror,
        containerd,
        manifests,
        image,
    }
}

/// containerd reads `config_path` at every pull: `mirror` first, the upstream as `server`.
fn write_hosts_toml(containerd: &Containerd, upstream: &Registry, mirror: &str) {
    std::fs::write(
        containerd
            .registry_config_dir()
            .join(upstream.host())
            .join("hosts.toml"),
        format!(
            "server = \"http://{up}\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            up = upstream.host(),
        ),
    )
    .unwrap();
}

/// `pullgate check IMAGE --runtime --runtime-registry-config DIR`: both paths, `manifest` depth.
fn check(env: &Env) -> Checked {
    let mut args: Vec<std::ffi::OsString> =
        ["--depth", "manifest", "-n", "team", "--pullset", "good"]
            .map(Into::into)
            .into();
    args.extend(["--cri-endpoint".into(), env.containerd.endpoint().into()]);
    args.extend([
        "--runtime-registry-config".into(),
        env.containerd.registry_config_dir().into(),
    ]);
    args.extend(["--insecure-registry".into(), env.upstream.host().into()]);
    args.extend(["--manifests".into(), env.manifests.path().into()]);
    Checked::check(&env.image.by_tag, args)
}

/// The runtime outcome's `MirrorInPath` warning names the mirror.
fn names_the_mirror(env: &Env, runtime: &Value) -> bool {
    runtime["warnings"].as_array().is_some_and(|ws| {
        ws.iter().any(|w| {
            w.as_str().is_some_and(|w| {
                w.starts_with("MirrorInPath:")
                    && w.contains(&format!(
                        "routes {} through {}",
                        env.upstream.host(),
                        env.mirror.host()
                    ))
            })
        })
    })
}

/// The text of `outcome`'s first warning starting with `prefix`.
fn warning(outcome: &Value, prefix: &str) -> Option<String> {
    outcome["warnings"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find(|w| w.starts_with(prefix))
        .map(str::to_string)
}

#[test]
fn through_a_pull_through_mirror_pre_pull_and_canaries_agree_and_the_mirror_is_named() {
    let env = env();
    let run = Agent::new(env.manifests.path(), &env.containerd.endpoint())
        .args(&["--insecure-registry", &env.upstream.host()])
        .run_once(Duration::from_secs(120))
        .unwrap();
    assert_eq!(
        run.prepull(&env.image.by_tag)["verdict"],
        "Ok",
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    // The node's pull went through the mirror: it now holds the image's blobs.
    for digest in env
        .image
        .layer_digests
        .iter()
        .chain([&env.image.config_digest])
    {
        assert!(
            env.mirror.blob_path(digest).is_file(),
            "the mirror did not cache {digest}\nmirror log:\n{}",
            env.mirror.log()
        );
    }

    let c = check(&env);
    assert_eq!(
        c.verdicts(),
        ("Ok".into(), "Ok".into()),
        "{}\n{}",
        c.stdout,
        c.stderr
    );
    assert!(names_the_mirror(&env, &c.runtime), "{}", c.runtime);
    // The registry-direct canary went where the node's pull went: the mirror, first in
    // hosts.toml; the upstream, asked too, agrees: no host warning.
    assert_eq!(c.registry["host"], env.mirror.host(), "{}", c.registry);
    assert_eq!(warning(&c.registry, "MirrorMasks:"), None, "{}", c.registry);
    assert_no_leak(
        &env,
        &[&run.stdout, &run.stderr, &c.stdout, &c.stderr],
        &[PASSWORD],
    );
}

#[test]
fn an_upstream_rotation_with_the_image_on_the_mirror_what_each_canary_says() {
    let env = env();
    Agent::new(env.manifests.path(), &env.containerd.endpoint())
        .args(&["--insecure-registry", &env.upstream.host()])
        .run_once(Duration::from_secs(120))
        .unwrap()
        .assert_code(0);
    // The upstream's password is rotated; neither the Secret nor the mirror's configuration is.
    env.tokens.set_password(USER, ROTATED);
    let c = check(&env);
    // The node's answer: the mirror serves what it cached, asking for no credential, so a pull
    // by the node still works. The runtime canary reports that, and names the mirror.
    assert_eq!(
        c.runtime["verdict"],
        "Ok",
        "{}\n{}\ncontainerd log:\n{}",
        c.stdout,
        c.stderr,
        env.containerd.log()
    );
    assert!(names_the_mirror(&env, &c.runtime), "{}", c.runtime);
    // The registry-direct canary walks the hosts as containerd does: the mirror answers first,
    // so its verdict is the node's `Ok`, naming the mirror; it also asks the upstream, which
    // refuses the old password, and says so: pods still start, but the credential is broken
    // upstream (a node without this mirror, or the mirror's cache expiring, fails).
    assert_eq!(c.registry["verdict"], "Ok", "{}\n{}", c.stdout, c.stderr);
    assert_eq!(c.registry["host"], env.mirror.host(), "{}", c.registry);
    let masks = warning(&c.registry, "MirrorMasks:")
        .unwrap_or_else(|| panic!("no MirrorMasks warning: {}", c.registry));
    assert!(
        masks.contains(&format!(
            "the node pulls {up} through {mirror}; not reached while it answers: {up}: Unauthorized:",
            up = env.upstream.host(),
            mirror = env.mirror.host()
        )),
        "{masks}"
    );
    assert_no_leak(&env, &[&c.stdout, &c.stderr], &[PASSWORD, ROTATED]);
}

/// Fails when a password (as written or as Basic auth) or an issued token occurs in `outputs` or
/// in the containerd, upstream, mirror or token-server log.
fn assert_no_leak(env: &Env, outputs: &[&str], passwords: &[&str]) {
    let logs = [
        ("containerd log", env.containerd.log()),
        ("upstream log", env.upstream.log()),
        ("mirror log", env.mirror.log()),
        ("token server log", env.tokens.log()),
    ];
    let mut secrets: Vec<(&str, String)> = Vec::new();
    for password in passwords {
        secrets.extend(password_forms(USER, password));
    }
    for signature in env.tokens.issued_signatures().unwrap() {
        secrets.push(("token", signature));
    }
    let mut sources: Vec<(&str, &str)> = outputs.iter().map(|o| ("agent output", *o)).collect();
    sources.extend(logs.iter().map(|(place, text)| (*place, text.as_str())));
    assert_nowhere(&sources, &secrets);
}

#[test]
fn an_upstream_rotation_before_the_mirror_has_the_image_what_each_canary_says() {
    let env = env();
    // Nothing pulled yet: neither the node nor the mirror holds the image. The upstream's
    // password is rotated; neither the Secret nor the mirror's configuration is.
    env.tokens.set_password(USER, ROTATED);
    let c = check(&env);
    eprintln!("registry-direct: {}\nruntime: {}", c.registry, c.runtime);
    assert!(names_the_mirror(&env, &c.runtime), "{}", c.runtime);
    // The node's answer: the mirror, whose own upstream credential is stale too, cannot fetch the
    // tag (404) and containerd falls through to the upstream (`server`), which refuses. What the
    // node then says depends on its release line (`decide::canary::hosts_walk`), and both
    // canaries report just that: 1.x returns the first error that is not a 404, the upstream's
    // refusal (`failed to authorize: … 401`): `Unauthorized`; 2.1 returns the error that came
    // furthest, the mirror's 404 over the upstream's authorization failure: `NotFound`. The
    // registry-direct canary names the host whose error it is and gives the other's verdict.
    let (node, reported, other, other_verdict) = if env.containerd.release().is_v2() {
        (
            "NotFound",
            env.mirror.host(),
            env.upstream.host(),
            "Unauthorized",
        )
    } else {
        (
            "Unauthorized",
            env.upstream.host(),
            env.mirror.host(),
            "NotFound",
        )
    };
    assert_eq!(
        c.runtime["verdict"],
        node,
        "containerd {}\n{}\n{}\ncontainerd log:\n{}",
        env.containerd.version(),
        c.stdout,
        c.stderr,
        env.containerd.log()
    );
    assert_eq!(
        c.registry["verdict"],
        node,
        "containerd {}\n{}\n{}",
        env.containerd.version(),
        c.stdout,
        c.stderr
    );
    assert_eq!(c.registry["host"], reported, "{}", c.registry);
    let disagree = warning(&c.registry, "HostsDisagree:")
        .unwrap_or_else(|| panic!("no HostsDisagree warning: {}", c.registry));
    assert!(
        disagree.contains(&format!(
            "the node reports {reported}'s error; the others: {other}: {other_verdict}"
        )),
        "{disagree}"
    );
    assert_no_leak(&env, &[&c.stdout, &c.stderr], &[PASSWORD, ROTATED]);
}

#[test]
fn a_stopped_mirror_in_front_of_a_working_upstream_is_masked_and_reported() {
    let env = env();
    // The mirror listed first is gone: its port refuses connections. containerd falls through to
    // the upstream, which serves the pull.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
    };
    write_hosts_toml(&env.containerd, &env.upstream, &dead);
    let c = check(&env);
    assert_eq!(
        c.verdicts(),
        ("Ok".into(), "Ok".into()),
        "{}\n{}\ncontainerd log:\n{}",
        c.stdout,
        c.stderr,
        env.containerd.log()
    );
    assert_eq!(c.registry["host"], env.upstream.host(), "{}", c.registry);
    let masks = warning(&c.registry, "MirrorMasks:")
        .unwrap_or_else(|| panic!("no MirrorMasks warning: {}", c.registry));
    assert!(
        masks.contains(&format!(
            "the node pulls {up} through {up}; tried before it and fell through: {dead}: Network:",
            up = env.upstream.host(),
        )),
        "{masks}"
    );
    assert_no_leak(&env, &[&c.stdout, &c.stderr], &[PASSWORD]);
}

#[test]
fn a_mirror_answering_500_in_front_of_a_working_upstream_is_masked_and_reported() {
    let env = env();
    // A mirror that answers every request `500` (an overloaded or misconfigured cache).
    let broken = HostileServer::start(|_| {
        Reply::new(
            "500 Internal Server Error",
            &[("Content-Type", "application/json")],
            r#"{"errors":[{"code":"UNKNOWN","message":"cache unavailable"}]}"#,
        )
    })
    .unwrap();
    write_hosts_toml(&env.containerd, &env.upstream, &broken.host());
    let c = check(&env);
    assert_eq!(
        c.verdicts(),
        ("Ok".into(), "Ok".into()),
        "{}\n{}\ncontainerd log:\n{}",
        c.stdout,
        c.stderr,
        env.containerd.log()
    );
    assert_eq!(c.registry["host"], env.upstream.host(), "{}", c.registry);
    let masks = warning(&c.registry, "MirrorMasks:")
        .unwrap_or_else(|| panic!("no MirrorMasks warning: {}", c.registry));
    assert!(
        masks.contains(&format!(
            "the node pulls {up} through {up}; tried before it and fell through: {mirror}: Network:",
            up = env.upstream.host(),
            mirror = broken.host()
        )),
        "{masks}"
    );
}
