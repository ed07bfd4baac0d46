//! The registry-direct canary reaches each registry the way containerd does: the `config_path`
//! the runtime reports (or `--runtime-registry-config`), each registry's `hosts.toml`, and
//! containerd's defaults — with no `--insecure-registry` — so that after a rotation both canary
//! paths say `Unauthorized` instead of the registry-direct one failing on TLS.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate::adapters::containerd_config::RuntimeRegistry;
use pullgate_testenv::containerd::{Options, Release};
use pullgate_testenv::manifests::{canaried_pullset, pull_secret};
use pullgate_testenv::{Agent, Containerd, ImageSpec, PASSWORD, Registry, USER, block_on, images};
use serde_json::Value;
use std::time::Duration;

const ROTATED: &str = "pg-Rotated-Passw0rd-hosts-61b0";

/// What the verbose CRI `Status` carries of the registry configuration, per release line: 1.6
/// and 1.7 send the CRI plugin's whole configuration, `registry.configPath` included; 2.1 sends
/// the runtime plugin's only (the registry settings moved to `io.containerd.cri.v1.images`, which
/// `Status` does not report), so the agent cannot discover it there.
#[test]
fn the_runtime_reports_its_registry_config_path_on_1_x_only() {
    let containerd = Containerd::start(&["127.0.0.1:5999".to_string()]).unwrap();
    let config = block_on(async { containerd.cri().status_config().await.unwrap() })
        .expect("containerd's verbose Status carries a `config` entry on every line");
    let json: Value = serde_json::from_str(&config).unwrap();
    let dir = containerd.registry_config_dir();
    let roots = RuntimeRegistry::roots_from_cri_config(&config).unwrap();
    match containerd.release() {
        Release::V1_6 | Release::V1_7 => {
            assert_eq!(
                json["registry"]["configPath"].as_str(),
                Some(dir.to_str().unwrap()),
                "{}",
                json["registry"]
            );
            assert_eq!(roots, Some(vec![dir]));
        }
        Release::V2_1 => {
            assert!(json.get("registry").is_none(), "{}", json);
            assert!(
                json.get("containerdRootDir").is_some(),
                "not the CRI configuration: {json}"
            );
            assert_eq!(roots, None);
        }
    }
}

/// The opening scenario. The registry speaks plain HTTP with htpasswd; containerd reaches
/// it only through `hosts.toml` `server = "http://…"`; the agent gets no registry flag at all.
/// On 1.6 and 1.7 the image is named by a name only the hosts.toml routes
/// (`pullgate-alias.invalid:PORT` → `http://127.0.0.1:PORT`), which the agent can only reach by
/// reading the `config_path` the runtime reported. On 2.1, which does not report it, the name is
/// the loopback address itself, reached through containerd's own loopback default (HTTPS first,
/// then plain HTTP), and the agent says in its log that the `config_path` was not reported.
#[test]
fn a_plain_http_registry_routed_by_hosts_toml_agrees_after_a_rotation_without_any_flag() {
    let mut registry = Registry::start(&[(USER, PASSWORD)]).unwrap();
    let alias = format!("pullgate-alias.invalid:{}", registry.port());
    let release = Release::from_env();
    let name = if release.is_v2() {
        registry.host()
    } else {
        alias.clone()
    };
    let containerd = Containerd::start_with(
        &[registry.host()],
        &Options {
            routes: vec![(
                alias.clone(),
                format!("http://{}", registry.host()),
                String::new(),
            )],
            ..Options::default()
        },
    )
    .unwrap();
    let pushed = block_on(images::push(
        &registry.host(),
        USER,
        PASSWORD,
        &ImageSpec::new("team/app", "v1"),
    ))
    .unwrap();
    let image = pushed.by_tag.replace(&registry.host(), &name);
    let manifests = tempfile::tempdir().unwrap();
    std::fs::write(
        manifests.path().join("secret.yaml"),
        pull_secret("team", "regcred", &name, USER, PASSWORD),
    )
    .unwrap();
    std::fs::write(
        manifests.path().join("set.yaml"),
        canaried_pullset(
            "team",
            "critical",
            &image,
            &["regcred"],
            "schedule: '*/2 * * * * *', jitter: 0s, depth: manifest, runtime: true",
        ),
    )
    .unwrap();
    // No --insecure-registry, no --runtime-registry-config.
    let agent = Agent::new(manifests.path(), &containerd.endpoint())
        .args(&["--rotation-jitter", "0s", "--recheck-interval", "1h"])
        .spawn()
        .unwrap();
    let canary = |path: &'static str, verdict: &'static str| {
        move |l: &Value| l["kind"] == "canary" && l["path"] == path && l["verdict"] == verdict
    };
    agent
        .wait_for("pre-pull", Duration::from_secs(90), 1, |l| {
            l["kind"] == "prepull" && l["verdict"] == "Ok"
        })
        .unwrap();
    agent
        .wait_for(
            "a registry-direct canary Ok",
            Duration::from_secs(60),
            1,
            canary("registry", "Ok"),
        )
        .unwrap();
    agent
        .wait_for(
            "a runtime canary Ok",
            Duration::from_secs(60),
            1,
            canary("runtime", "Ok"),
        )
        .unwrap();

    // The password rotates; the Secret is not updated; the image stays cached.
    registry.set_password(USER, ROTATED).unwrap();
    agent
        .wait_for(
            "the registry-direct canary Unauthorized",
            Duration::from_secs(90),
            1,
            canary("registry", "Unauthorized"),
        )
        .unwrap();
    agent
        .wait_for(
            "the runtime canary Unauthorized",
            Duration::from_secs(90),
            1,
            canary("runtime", "Unauthorized"),
        )
        .unwrap();
    let (stdout, stderr) = agent.finish();
    // No registry-direct canary ever failed on TLS or the network: it reached the registry as the
    // runtime did, every time (a canary during the registry's restart may see it down, as
    // `Network` naming the refused connection, never TLS).
    for line in stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        if line["kind"] == "canary" && line["path"] == "registry" {
            let message = line["message"].as_str().unwrap_or_default();
            assert!(
                !message.contains("TLS") && !message.contains("InvalidContentType"),
                "{line}"
            );
        }
    }
    if release.is_v2() {
        assert!(
            stderr.contains("the runtime reports no registry config_path"),
            "{stderr}"
        );
    } else {
        assert!(
            stderr.contains("config_path reported by the runtime"),
            "{stderr}"
        );
    }
    for secret in [PASSWORD, ROTATED] {
        for (what, text) in [
            ("stdout", stdout.as_str()),
            ("stderr", stderr.as_str()),
            ("containerd log", &containerd.log()),
            ("registry log", &registry.log()),
        ] {
            assert!(!text.contains(secret), "a password leaked into the {what}");
            assert!(
                !text.contains(&pullgate_testenv::basic_auth(USER, secret)),
                "a Basic credential leaked into the {what}"
            );
        }
    }
}
